"""The device CLI on bad input (clear one-line errors, no traceback, no segfault), --help, and
the device path never importing TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.device_helpers import REPO, SEPARATING_THRESHOLD, copy_bundle, device_env, edge_asd, machine_clips, service_toml


def assert_clean_failure(result: subprocess.CompletedProcess, *needles: str, code: int = 1) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return machine_clips(tmp_path_factory.mktemp("clips"), ["normal", "anomaly"])


@pytest.mark.parametrize("command", ["run", "calibrate", "enroll", "score", "devices", "info", "bench", "features", "record", "status"])
def test_help_everywhere(command):
    result = edge_asd(command, "--help", timeout=60)
    assert result.returncode == 0 and "Usage:" in result.stdout


def test_score_writes_csv_one_row_per_clip(tmp_path, clip):
    bundle = copy_bundle(tmp_path)
    out = tmp_path / "scores.csv"
    result = edge_asd("score", bundle, clip[0].parent, "--csv", out)
    assert result.returncode == 0, result.stderr
    rows = out.read_text().splitlines()
    assert rows[0] == "file,score,decision,quality" and len(rows) == 3
    decisions = {r.split(",")[0].rsplit("_", 1)[-1]: int(r.split(",")[2]) for r in rows[1:]}
    assert decisions == {"normal.wav": 0, "anomaly.wav": 1}


def test_missing_bundle(clip):
    assert_clean_failure(edge_asd("score", "/nonexistent/bundle", clip[0]), "no such bundle directory")


def test_bundle_front_end_mismatch(tmp_path, clip):
    bundle = copy_bundle(tmp_path)
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["features"]["n_mels"] = 64  # the model and statistics were made for 32 bands
    (bundle / "bundle.json").write_text(json.dumps(meta))
    assert_clean_failure(edge_asd("score", bundle, clip[0]), "features per frame")


def test_corrupt_tflite(tmp_path, clip):
    bundle = copy_bundle(tmp_path)
    (bundle / "model_int8.tflite").write_bytes(b"\x00garbage" * 100)
    assert_clean_failure(edge_asd("score", bundle, clip[0]), "does not match the digest")
    meta = json.loads((bundle / "bundle.json").read_text())
    # Its digest recorded (as a tool that made a broken model would): the interpreter itself must refuse it cleanly.
    import hashlib

    meta["model"]["sha256"]["int8"] = hashlib.sha256((bundle / "model_int8.tflite").read_bytes()).hexdigest()
    (bundle / "bundle.json").write_text(json.dumps(meta))
    assert_clean_failure(edge_asd("score", bundle, clip[0]), "not a loadable TFLite model")
    # Without digests nothing would be checked: refused.
    meta["model"]["sha256"] = {}
    (bundle / "bundle.json").write_text(json.dumps(meta))
    assert_clean_failure(edge_asd("score", bundle, clip[0]), "records no sha256 for model_int8.tflite")


def test_unreadable_clip_is_an_error_not_a_zero_score(tmp_path, clip):
    bundle = copy_bundle(tmp_path)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF0000WAVEfmt ")
    result = edge_asd("score", bundle, clip[0], broken)
    assert_clean_failure(result, "broken.wav", "1 of 2 file(s)")
    assert "broken.wav" not in result.stdout


def test_bad_toml(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[alarm]\nonset_k = 'three'\n")
    # run: 78 (EX_CONFIG) for a configuration error, which the systemd unit does not restart on.
    assert_clean_failure(edge_asd("run", "--config", cfg), "alarm.onset_k", "expected an integer", code=78)
    cfg.write_text("[alarm\n")
    assert_clean_failure(edge_asd("run", "--config", cfg), "invalid TOML", code=78)
    assert_clean_failure(edge_asd("calibrate", "b", "--config", cfg), "invalid TOML")  # other commands: 1


def test_no_audio_device(tmp_path):
    """This machine has no sound card: 'devices' says so, 'run' on a microphone fails cleanly."""
    result = edge_asd("devices")
    if "no audio input devices" not in result.stdout:
        pytest.skip("this machine has a capture device")
    assert result.returncode == 0
    bundle = copy_bundle(tmp_path)
    cfg = service_toml(tmp_path, bundle=bundle, inputs=tmp_path, db=tmp_path / "e.sqlite")
    assert_clean_failure(edge_asd("run", "--config", cfg, "--input", "mic"), "no audio input devices found")
    assert_clean_failure(edge_asd("run", "--config", cfg, "--input", "mic:3"), "no audio input devices found")


FAKE_PYAUDIO = textwrap.dedent('''
    """A stand-in for pyaudio with two devices; opening anything out of range "segfaults"."""
    import os
    paInt16 = 8
    paInputOverflowed = -9981
    class PyAudio:
        def get_device_count(self):
            return 2
        def get_device_info_by_index(self, i):
            if not 0 <= i < 2:
                os._exit(139)  # what PortAudio does with a bad index
            return {"index": i, "name": ["Built-in Output", "USB Array TAMAGO"][i],
                    "maxInputChannels": [0, 8][i], "defaultSampleRate": 16000.0}
        def get_default_input_device_info(self):
            return self.get_device_info_by_index(1)
        def open(self, *, input_device_index, **kwargs):
            if not 0 <= input_device_index < 2:
                os._exit(139)
            raise OSError(-9996, "Invalid input device (fake)")
        def terminate(self):
            pass
''')


def test_device_index_out_of_range_is_checked_before_opening(tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "pyaudio.py").write_text(FAKE_PYAUDIO)
    env = device_env()
    env["PYTHONPATH"] = f"{fake}:{REPO}"
    listing = edge_asd("devices", env=env)
    assert listing.returncode == 0 and "1: USB Array TAMAGO (8 ch" in listing.stdout and "Output" not in listing.stdout
    bundle = copy_bundle(tmp_path)
    cfg = service_toml(tmp_path, bundle=bundle, inputs=tmp_path, db=tmp_path / "e.sqlite")
    result = edge_asd("run", "--config", cfg, "--input", "mic:7", env=env)
    assert_clean_failure(result, "index 7 is out of range", "2 device(s)")
    assert_clean_failure(edge_asd("run", "--config", cfg, "--input", "mic:0", env=env), "has no input channels")
    assert_clean_failure(edge_asd("run", "--config", cfg, "--input", "mic:Respeaker", env=env), "no input device named like")


def test_device_path_never_imports_tensorflow(tmp_path, clip):
    bundle = copy_bundle(tmp_path)
    code = textwrap.dedent(f'''
        import sys
        import edge_asd, edge_asd.cli, edge_asd.service, edge_asd.decision.calibration, edge_asd.events, edge_asd.config
        import edge_asd.decision.alarm, edge_asd.scoring.detector, edge_asd.scoring.runtime, edge_asd.audio.sources, edge_asd.audio.microphone
        from edge_asd.cli import main
        try:
            main(["score", {str(bundle)!r}, {str(clip[0])!r}])
        except SystemExit as exc:
            assert exc.code == 0, exc.code
        from edge_asd.scoring.detector import Detector
        assert Detector.from_bundle({str(bundle)!r}).model.runtime != "tensorflow"
        bad = sorted(m for m in sys.modules if m == "tensorflow" or m.startswith(("tensorflow.", "keras", "tf_keras")))
        assert not bad, bad
        print("no tensorflow")
    ''')
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=device_env(), cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "no tensorflow" in result.stdout


def test_info_and_bench(tmp_path):
    bundle = copy_bundle(tmp_path)
    info = edge_asd("info", bundle)
    assert info.returncode == 0, info.stderr
    assert "conv-ae" in info.stdout and f"threshold  {SEPARATING_THRESHOLD:g}" in info.stdout and "earlier" in info.stdout
    bench = edge_asd("bench", bundle, "--seconds", "2", "--repeats", "1")
    assert bench.returncode == 0, bench.stderr
    assert "real-time factor" in bench.stdout and "window latency" in bench.stdout
    # It says which kernels the front end ran: the ones scripts/setup compiled ahead of time, unless told otherwise.
    assert "kernels ahead-of-time" in bench.stdout, bench.stdout
    jit = edge_asd("bench", bundle, "--seconds", "2", "--repeats", "1", env={**device_env(), "EDGE_ASD_KERNELS": "jit"})
    assert jit.returncode == 0 and "kernels numba JIT" in jit.stdout, jit.stdout + jit.stderr


def test_systemd_unit_verifies_and_install_script_parses(tmp_path):
    import shutil

    unit = (REPO / "systemd" / "edge-asd.service").read_text()
    for needle in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "User=edge-asd", "SupplementaryGroups=audio",
                   "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "NUMBA_CACHE_DIR=/var/lib/edge-asd",
                   "/etc/edge-asd/", "RestartPreventExitStatus=78", "StartLimitBurst=", "MemoryMax=",
                   "SystemCallFilter=@system-service", "ProtectProc=invisible"):
        assert needle in unit
    assert subprocess.run(["bash", "-n", str(REPO / "systemd" / "install.sh")]).returncode == 0
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    # verify checks that ExecStart exists: point it at this checkout's entry point.
    local = tmp_path / "edge-asd.service"
    local.write_text(unit.replace("/opt/edge-asd/venv/bin/edge-asd", str(Path(sys.executable).parent / "edge-asd")))
    result = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "edge-asd.service" not in result.stderr, result.stderr  # no warnings about our unit
    # The exposure figure the README quotes (systemd's own 0-10 scale, lower is safer).
    security = subprocess.run([analyze, "security", "--offline=true", str(local)], capture_output=True, text=True, timeout=60)
    assert security.returncode == 0, security.stderr
    exposure = float(security.stdout.strip().splitlines()[-1].split("level for edge-asd.service:")[1].split()[0])
    assert exposure <= 2.0, security.stdout[-3000:]
