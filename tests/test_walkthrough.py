"""The README's "Your own machine" walk-through, end to end, as a user types it (real subprocesses):

record → asd-train fit (normal-only, default recipe) → copy the bundle → enroll on site → run → rollback.

A wav file stands in for the microphone array (2 channels); the machine is the synthetic hum of
``tests.bundle_factory``, its fault a rattle. The site hears the machine 6 dB quieter than the
recordings the model was trained on (another mounting point): enrollment re-fits for it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from edge_asd.audio import read_wav, write_wav
from tests.bundle_factory import TINY_SR, _machine_tone

REPO = Path(__file__).resolve().parents[1]
CHANNELS = 2
PERIOD_S = 5.0


def cli(module: str, *args: object, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)


def machine_audio(seconds: float, *, seed: int, anomaly: bool = False, gain_db: float = 0.0) -> np.ndarray:
    """``(n, CHANNELS)`` float32: the synthetic machine, one clip's generator call per 2 s."""
    rng = np.random.default_rng(seed)
    parts = [_machine_tone(rng, 2.0, TINY_SR, anomaly=anomaly) for _ in range(int(round(seconds / 2.0)))]
    x = np.concatenate(parts) * 10 ** (gain_db / 20)
    return np.repeat(x[:, None], CHANNELS, axis=1).astype(np.float32)


def test_record_fit_auto_enroll_run_rollback(tmp_path: Path) -> None:
    profile = tmp_path / "pump.toml"
    profile.write_text(f"""
[device]
id = "pump-07"
bundle = "bundle"

[input]
kind = "microphone"
channels = {CHANNELS}
sample_rate_hz = {TINY_SR}

[alarm]
period_s = {PERIOD_S}
onset_k = 2
onset_n = 3
recovery_m = 2

[store]
path = "events.sqlite"
""")
    # 1. record 120 s of normal sound on the device (the wav file stands in for the array)
    write_wav(tmp_path / "mic.wav", machine_audio(120, seed=1), TINY_SR)
    data = tmp_path / "pump07"
    rec = cli("edge_asd", "record", data, "--config", profile, "--input", tmp_path / "mic.wav", "--seconds", 120)
    assert rec.returncode == 0, rec.stderr[-2000:]
    clips = sorted((data / "normal").glob("*.wav"))
    assert len(clips) == 12 and all(read_wav(c)[0].shape == (10 * TINY_SR, CHANNELS) for c in clips)

    # 2. on the desktop: normal-only training with the default recipe
    factory = tmp_path / "desk" / "bundle"
    fit = cli("trainer", "fit", data, "--epochs", "3", "--cache-dir", tmp_path / "cache", "--out", factory)
    assert fit.returncode == 0, fit.stderr[-3000:]
    meta = json.loads((factory / "bundle.json").read_text())
    assert meta["provenance"]["protocol"] == "normal-only"
    assert meta["provenance"]["recipe"]["name"] == "short-conv-ae"
    assert meta["threshold"]["source"] == "training"

    # 3. copy the bundle to the device, 4. enroll where the device is mounted (the machine 6 dB quieter there)
    bundle = tmp_path / "device" / "bundle"
    shutil.copytree(factory, bundle)
    write_wav(tmp_path / "site.wav", machine_audio(60, seed=2, gain_db=-6), TINY_SR)
    enroll = cli("edge_asd", "enroll", bundle, "--config", profile, "--input", tmp_path / "site.wav", "--seconds", 60)
    assert enroll.returncode == 0, enroll.stderr[-2000:]
    enrolled = json.loads((bundle / "bundle.json").read_text())
    assert enrolled["normalization"] != meta["normalization"] and enrolled["threshold"]["period_s"] == PERIOD_S
    info = cli("edge_asd", "info", bundle, "--no-model", timeout=120)
    assert info.returncode == 0 and "factory" in info.stdout and "site" in info.stdout

    # 5. run: normal, a lasting fault, normal again, all at the site's level
    stream = tmp_path / "stream"
    stream.mkdir()
    write_wav(stream / "1_normal.wav", machine_audio(30, seed=3, gain_db=-6), TINY_SR)
    write_wav(stream / "2_fault.wav", machine_audio(30, seed=4, anomaly=True, gain_db=-6), TINY_SR)
    write_wav(stream / "3_normal.wav", machine_audio(30, seed=5, gain_db=-6), TINY_SR)
    run = cli("edge_asd", "run", "--config", profile, "--bundle", bundle, "--input", stream, "--db", tmp_path / "events.sqlite",
              "--fast", timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "never calibrated or enrolled" not in run.stderr  # enrolled: no warning
    events = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    kinds = [(e["kind"], e["stream_time_s"]) for e in events if e.get("type") == "event"]
    onsets = [t for k, t in kinds if k == "onset"]
    recoveries = [t for k, t in kinds if k == "back_to_normal"]
    assert len(onsets) == 1 and 30 < onsets[0] <= 60, kinds  # within the fault, none in the normal stretches
    assert len(recoveries) == 1 and recoveries[0] > 60, kinds

    # 6. rollback: the factory values, exactly as exported
    back = cli("edge_asd", "enroll", bundle, "--rollback", timeout=120)
    assert back.returncode == 0, back.stderr[-2000:]
    restored = json.loads((bundle / "bundle.json").read_text())
    for key in ("normalization", "score_scaling", "threshold"):
        assert json.dumps(restored[key], sort_keys=True) == json.dumps(meta[key], sort_keys=True)
