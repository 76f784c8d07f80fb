"""Enrollment on site, score scaling (bundle schema 2), the exported threshold, rollback, and the
service's start-up checks of the threshold. Real bundles, real wav files, real TFLite."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_asd.audio import read_wav, write_wav
from edge_asd.audio.sources import FileListSource
from edge_asd.scoring.bundle import SCHEMA_VERSION, ScoreScaling, Threshold, read_bundle, update_threshold
from edge_asd.decision.calibration import score_periods
from edge_asd.scoring.detector import Detector
from edge_asd.errors import ParameterError, SignalQualityError
from edge_asd.decision.signal_quality import SignalStats, check_enrollment_audio, clipped_fraction, dc_offset, rms_dbfs
from tests.device_helpers import REPO, SR, copy_bundle, device_env, edge_asd, machine_clips, service_toml

ACTIVE_SECTIONS = ("normalization", "score_scaling", "threshold")
QUIET = 0.2
"""Level of the quiet bundle's training clips (peak 0.1): +12 dB still fits below full scale."""
GAIN_DB = 12.0


def tone_clips(folder: Path, n: int, *, seed: int, duration_s: float, gain: float = 1.0, channels: int = 1) -> list[Path]:
    """``n`` normal machine clips (the bundle factory's hum), scaled by ``gain``."""
    from tests.bundle_factory import _machine_tone

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        x = _machine_tone(rng, duration_s, SR, anomaly=False) * gain
        path = folder / f"{i:03d}.wav"
        write_wav(path, np.repeat(x[:, None], channels, axis=1), SR)
        out.append(path)
    return out


def sections(bundle: Path) -> dict[str, str]:
    """The JSON text of what the detector reads, as written (indent 2, as write_bundle)."""
    data = json.loads((bundle / "bundle.json").read_text())
    return {k: json.dumps(data[k], indent=2) for k in ACTIVE_SECTIONS}


def assert_clean_failure(result: subprocess.CompletedProcess, *needles: str) -> None:
    # run exits 78 on a configuration or bundle error (the unit does not restart on it), the others 1.
    code = 78 if result.args[3:4] == ["run"] else 1
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


@pytest.fixture(scope="module")
def quiet_bundle(tmp_path_factory) -> Path:
    """A conv-ae trained on 48 quiet 10 s normal clips: 12 held out for validation, i.e. 120 s,
    12 periods of the default 10 s: enough for the exported threshold's gamma fit."""
    from tests.bundle_factory import make_bundle

    root = tmp_path_factory.mktemp("quiet")
    wavs = tone_clips(root / "wavs", 48, seed=11, duration_s=10.0, gain=QUIET)
    return make_bundle(root / "train", train_wavs=wavs)


# -- signal checks ------------------------------------------------------------------------------


def test_signal_figures_and_checks():
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal((16000, 2))).astype(np.float32)
    assert rms_dbfs(x) == pytest.approx([-20.0, -20.0], abs=0.2)
    assert clipped_fraction(x) == 0.0 and np.abs(dc_offset(x)).max() < 0.01
    stats = SignalStats(2)
    for start in range(0, 16000, 1000):  # block sums equal the whole
        stats.update(x[start : start + 1000])
    s = stats.summary()
    assert s.rms_dbfs == pytest.approx(float(rms_dbfs(x).mean()), abs=0.01) and s.n_samples == 16000
    check_enrollment_audio(s, where="ok.wav")
    flat = x.copy()
    flat[:, 1] = 0.25  # stuck at a DC value: loud, but no signal
    stats = SignalStats(2)
    stats.update(flat)
    with pytest.raises(SignalQualityError, match=r"dead.wav: channel\(s\) 1 of 2 are flat-lined"):
        check_enrollment_audio(stats.summary(), where="dead.wav")


# -- schema and export --------------------------------------------------------------------------


def test_schema_1_bundle_loads_and_scores_as_before(tiny_bundle, tiny_wavs, tmp_path):
    old = tmp_path / "schema1"
    shutil.copytree(tiny_bundle, old)
    meta = json.loads((old / "bundle.json").read_text())
    assert meta["schema_version"] == SCHEMA_VERSION == 2
    scaling = ScoreScaling.from_dict(meta["score_scaling"])
    for key in ("score_scaling", "enrollment"):
        del meta[key]
    del meta["threshold"]["calibrated_for"]
    meta["schema_version"] = 1
    (old / "bundle.json").write_text(json.dumps(meta, indent=2))

    b1 = read_bundle(old)
    assert b1.schema_version == 1 and b1.score_scaling == ScoreScaling(mean=0.0, std=1.0) and b1.enrollment is None
    samples, sr = read_wav(tiny_wavs["normal"][0])
    raw = Detector(b1).score_clip(samples, sr=sr)
    scaled = Detector.from_bundle(tiny_bundle).score_clip(samples, sr=sr)
    # Schema 1 scores are the raw scores; schema 2 reports them standardised.
    assert scaled == pytest.approx((raw - scaling.mean) / scaling.std, rel=1e-9, abs=1e-12)
    info = edge_asd("info", old, "--no-model")
    assert info.returncode == 0, info.stderr
    assert "(schema 1)" in info.stdout and "enrollment none" in info.stdout
    with pytest.raises(Exception, match="never enrolled"):
        from edge_asd.decision.enrollment import rollback_bundle

        rollback_bundle(old)


def test_bad_score_scaling_is_a_bundle_error_naming_bundle_json(tiny_bundle, tmp_path):
    from edge_asd.errors import BundleError

    path = tmp_path / "b"
    shutil.copytree(tiny_bundle, path)
    meta = json.loads((path / "bundle.json").read_text())
    meta["score_scaling"]["std"] = 0.0
    (path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"bundle.json: invalid content \(score_scaling"):
        read_bundle(path)
    meta["score_scaling"]["std"] = 1.0
    meta["enrollment"]["active"] = "site"  # no site record
    (path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="bundle.json: invalid 'enrollment' record"):
        read_bundle(path)


def test_new_bundle_has_score_scaling_and_a_threshold_fitted_for_one_false_alarm_a_week(quiet_bundle, tmp_path):
    b = read_bundle(quiet_bundle)
    assert b.score_scaling.std > 0 and b.score_scaling != ScoreScaling()
    t = b.threshold
    assert t.source == "training" and t.method == "gamma-tail-fit", t.details.get("statement")
    assert t.details["device_false_alarms_per_day"] == pytest.approx(1 / 7)
    # The evidence rule takes half the device's rate; too few validation periods for it: all for the threshold.
    share = 1.0 if t.evidence is None else 0.5
    assert t.false_alarms_per_day == pytest.approx(share / 7) and t.period_s == 10.0 and t.details["n_periods"] >= 10
    if t.evidence is None:
        assert "too few for the evidence rule" in t.details["evidence_note"]
    assert b.enrollment is not None and b.enrollment.active == "factory" and b.enrollment.site is None
    assert b.enrollment.factory.threshold == t and b.enrollment.factory.score_scaling == b.score_scaling
    # Standardised: normal window scores of unseen clips sit near 0 in units of one std.
    clips = tone_clips(tmp_path / "fresh", 3, seed=99, duration_s=10.0, gain=QUIET)
    det = Detector(b)
    window_scores = np.concatenate([det.score_windows(__import__("edge_asd.frontend", fromlist=["x"]).compute_features(
        read_wav(c)[0], b.features)) for c in clips])
    assert abs(window_scores.mean()) < 1.0 and 0.3 < window_scores.std() < 3.0
    info = edge_asd("info", quiet_bundle)
    assert info.returncode == 0, info.stderr
    assert f"{t.false_alarms_per_day:g}/day at 10 s periods" in info.stdout and "bootstrap interval" in info.stdout
    assert ("evidence   none: " in info.stdout) == (t.evidence is None)
    assert "score scale mean" in info.stdout and "enrollment active: factory" in info.stdout


def test_tiny_validation_set_gives_a_provisional_threshold_that_says_so(tiny_bundle):
    t = read_bundle(tiny_bundle).threshold
    assert t.method == "provisional-max-plus-margin" and t.false_alarms_per_day is None
    assert "provisional: too little validation audio, calibrate or enroll on site" in t.details["statement"]


def test_file_list_source_plays_files_in_order(tiny_wavs):
    files = [tiny_wavs["normal"][1], tiny_wavs["normal"][0]]
    played = np.concatenate(list(FileListSource(files, block_size=777).blocks()))
    expected = np.concatenate([read_wav(f)[0] for f in files])
    np.testing.assert_array_equal(played, expected)


# -- enrollment ---------------------------------------------------------------------------------


def exceedances(bundle: Path, clips: list[Path], *, period_s: float) -> tuple[int, int]:
    """Periods of ``clips`` (played as one stream, as the service would) above the bundle's threshold."""
    det = Detector.from_bundle(bundle)
    scores, _ = score_periods(det, FileListSource(clips, sr=det.config.sr), period_s=period_s)
    return int((scores > det.threshold_).sum()), int(scores.size)


def test_enroll_on_gain_shifted_audio_then_rollback(quiet_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(quiet_bundle, bundle)
    factory = sections(bundle)
    factory_text = (bundle / "bundle.json").read_text()
    gain = QUIET * 10 ** (GAIN_DB / 20)
    site = tone_clips(tmp_path / "site", 12, seed=5, duration_s=4.0, gain=gain)
    heldout = tone_clips(tmp_path / "heldout", 8, seed=6, duration_s=4.0, gain=gain)
    probe, probe_sr = read_wav(tone_clips(tmp_path / "probe", 1, seed=7, duration_s=4.0, gain=QUIET)[0])
    probe_before = Detector.from_bundle(bundle).score_clip(probe, sr=probe_sr)
    before, n = exceedances(bundle, heldout, period_s=2.0)

    dry = edge_asd("enroll", bundle, "--input", site[0].parent, "--seconds", "60", "--period-s", "2", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "dry run" in dry.stdout and (bundle / "bundle.json").read_text() == factory_text

    result = edge_asd("enroll", bundle, "--input", site[0].parent, "--seconds", "60", "--period-s", "2")
    assert result.returncode == 0, result.stderr
    assert "48.0 s of audio, 24 periods" in result.stdout and "bootstrap interval" in result.stdout
    after, n_after = exceedances(bundle, heldout, period_s=2.0)
    assert n == n_after == 16
    assert after < before, (before, after)  # the +12 dB site no longer looks anomalous
    assert before >= n // 2 and after <= 2, (before, after)

    data = json.loads((bundle / "bundle.json").read_text())
    e = data["enrollment"]
    assert e["active"] == "site" and data["schema_version"] == 2
    for key in ACTIVE_SECTIONS:  # factory values kept as exported; site values active
        assert json.dumps(e["factory"][key], indent=2) == factory[key]
        assert e["site"][key] == (data[key] if key != "threshold" else e["site"][key])
    assert e["site"]["normalization"] == data["normalization"] and e["site"]["score_scaling"] == data["score_scaling"]
    # +12 dB moves every band's mean up by about 12 dB; the spread of each band stays.
    shift = np.subtract(data["normalization"]["mean"], e["factory"]["normalization"]["mean"])
    assert np.median(shift) == pytest.approx(GAIN_DB, abs=1.0)
    thr = data["threshold"]
    assert thr["source"] == "enrollment" and thr["period_s"] == 2.0
    # 24 periods are too few for the evidence rule: it is not guessed, the record says what it needs,
    # and the threshold takes the whole default rate of one false alarm a week.
    assert thr["evidence"] is None and ">= 30 periods, i.e. >= 60 s at 2 s periods" in thr["details"]["evidence_note"]
    assert thr["false_alarms_per_day"] == pytest.approx(1 / 7)
    assert thr["calibrated_for"] == {"period_s": 2.0, "model": "int8", "class_label": None, "n_channels": 1}
    assert thr["history"][-1]["source"] == "training"
    audio = e["site"]["audio"]
    assert audio["periods"] == 24 and audio["seconds"] == pytest.approx(48.0) and audio["input"] == str(site[0].parent)
    assert audio["signal"]["clipped_fraction"] == 0 and -40 < audio["signal"]["rms_dbfs"] < -10
    # What the sensor and machine-state monitors learn from: the site frames' level (its mean is the
    # site normalisation's mean of means) and, for one channel, no channel correlation.
    levels = audio["quality"]["frame_level_db"]
    assert levels["mean"] == pytest.approx(np.mean(data["normalization"]["mean"]), abs=1e-3) and levels["p01"] < levels["mean"]
    assert audio["quality"]["channel_correlation_p05"] is None
    from edge_asd.scoring.bundle import read_bundle
    from edge_asd.decision.machine_state import MachineStateConfig, resolve_gate

    gate = resolve_gate(MachineStateConfig(), read_bundle(bundle, verify_files=False))
    assert "learned at enroll" in gate.source or "enrolled site" in gate.source, gate
    assert audio["factory_on_site"]["periods_above_threshold"] > 0

    info = edge_asd("info", bundle, "--no-model")
    assert info.returncode == 0, info.stderr
    assert "enrollment active: site" in info.stdout
    assert "  factory  normalisation" in info.stdout and "  site     normalisation" in info.stdout
    assert f"{1 / 7:g}/day at 2 s periods" in info.stdout and "enrolled " in info.stdout

    back = edge_asd("enroll", bundle, "--rollback")
    assert back.returncode == 0, back.stderr
    assert sections(bundle) == factory  # byte for byte what the detector reads
    rolled = json.loads((bundle / "bundle.json").read_text())
    assert rolled["enrollment"]["active"] == "factory" and rolled["enrollment"]["site"] is None
    assert [h["event"] for h in rolled["enrollment"]["history"]] == ["rollback"]
    assert Detector.from_bundle(bundle).score_clip(probe, sr=probe_sr) == probe_before  # exactly
    assert exceedances(bundle, heldout, period_s=2.0) == (before, n)


def test_enroll_a_schema_1_bundle_keeps_its_values_as_factory(tiny_bundle, tmp_path):
    from edge_asd.config import InputConfig
    from edge_asd.decision.enrollment import enroll_bundle, rollback_bundle

    path = tmp_path / "schema1"
    shutil.copytree(tiny_bundle, path)
    meta = json.loads((path / "bundle.json").read_text())
    del meta["score_scaling"], meta["enrollment"], meta["threshold"]["calibrated_for"]
    meta["schema_version"] = 1
    (path / "bundle.json").write_text(json.dumps(meta, indent=2))
    clips = tone_clips(tmp_path / "site", 6, seed=3, duration_s=2.0, gain=0.8)
    inp = InputConfig(kind="folder", path=clips[0].parent)
    result = enroll_bundle(path, inp, seconds=60, period_s=1.0)
    b = read_bundle(path)
    assert b.schema_version == 2 and b.enrollment.active == "site" and result.n_periods == 12
    assert b.enrollment.factory.score_scaling == ScoreScaling() and b.enrollment.factory.threshold.source == "training"
    rollback_bundle(path)
    assert read_bundle(path).score_scaling == ScoreScaling()


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    t = np.arange(12 * SR) / SR
    good = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)
    files = {}
    files["silent"] = tmp / "silent.wav"
    write_wav(files["silent"], np.zeros(12 * SR, np.float32), SR)
    files["clipped"] = tmp / "clipped.wav"
    write_wav(files["clipped"], np.clip(good * 20, -1, 1), SR)
    files["rate"] = tmp / "8k.wav"
    write_wav(files["rate"], good[::2], SR // 2)
    files["stereo"] = tmp / "stereo.wav"
    write_wav(files["stereo"], np.stack([good, good], axis=1), SR)
    files["dead"] = tmp / "dead_channel.wav"
    write_wav(files["dead"], np.stack([good, np.zeros_like(good)], axis=1), SR)
    files["short"] = tmp / "short.wav"
    write_wav(files["short"], good[: 3 * SR], SR)
    files["toml2"] = tmp / "two.toml"
    files["toml2"].write_text("[input]\nchannels = 2\n")
    return files


@pytest.mark.parametrize(
    "case, needles",
    [
        ("silent", ["silent.wav: the audio is silent", "dBFS"]),
        ("clipped", ["clipped.wav:", "% of the samples are clipped", "lower the capture gain"]),
        ("rate", ["8k.wav: recorded at 8000 Hz", "upsampling cannot create the missing band"]),
        ("stereo", ["stereo.wav: has 2 channel(s) but the profile captures 1"]),
        ("dead", ["dead_channel.wav: channel(s) 1 of 2 are flat-lined"]),
        ("short", ["short.wav: 3.0 s of audio is too little to enroll", ">= 10 s"]),
    ],
)
def test_enroll_refuses_bad_audio_naming_the_file(tmp_path, bad_inputs, case, needles):
    bundle = copy_bundle(tmp_path)
    before = (bundle / "bundle.json").read_text()
    extra = ["--config", bad_inputs["toml2"]] if case == "dead" else []
    result = edge_asd("enroll", bundle, "--input", bad_inputs[case], "--period-s", "1", "--seconds", "60", *extra)
    assert_clean_failure(result, *needles)
    assert (bundle / "bundle.json").read_text() == before


def test_enroll_rejects_a_microphone_recording_too_short_before_recording(tmp_path):
    from edge_asd.config import InputConfig
    from edge_asd.decision.enrollment import enroll_bundle

    with pytest.raises(ParameterError, match=r"microphone 0: --seconds 30 is too little to enroll.*--seconds 100"):
        enroll_bundle(copy_bundle(tmp_path), InputConfig(kind="microphone", device=0), seconds=30, period_s=10.0)


# -- the service's start-up checks --------------------------------------------------------------


def test_run_warns_once_for_a_threshold_never_set_on_site(tmp_path, tiny_wavs):
    bundle = copy_bundle(tmp_path, threshold=None)  # the exported (training) threshold
    exported = read_bundle(bundle).threshold
    assert exported.source == "training" and exported.calibrated_for == {"period_s": 10.0, "model": "int8"}
    cfg = service_toml(tmp_path, bundle=bundle, inputs=tiny_wavs["normal"][0].parent, db=tmp_path / "e.sqlite", period_s=10.0)
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    env = device_env()
    env["NOTIFY_SOCKET"] = str(sock_path)
    try:
        result = subprocess.run([sys.executable, "-m", "edge_asd", "run", "--config", str(cfg)], capture_output=True,
                                text=True, timeout=120, env=env, cwd=REPO)
        sock.settimeout(2)
        messages = []
        while True:
            try:
                messages.append(sock.recv(4096).decode())
            except (TimeoutError, socket.timeout):
                break
    finally:
        sock.close()
    assert result.returncode == 0, result.stderr
    warning = "never calibrated or enrolled on site"
    assert result.stderr.count(warning) == 1 and "WARNING" in result.stderr
    ready = [m for m in messages if m.startswith("READY=1")]
    assert len(ready) == 1 and warning in ready[0] and "STATUS=listening" in ready[0]
    # A threshold set on site: no warning.
    update_threshold(bundle, Threshold(value=3.0, method="gamma-tail-fit", source="device"))
    quiet = edge_asd("run", "--config", cfg)
    assert quiet.returncode == 0 and warning not in quiet.stderr


def test_run_refuses_a_threshold_calibrated_for_another_setting(tmp_path, tiny_wavs):
    bundle = copy_bundle(tmp_path)
    cfg = service_toml(tmp_path, bundle=bundle, inputs=tiny_wavs["normal"][0].parent, db=tmp_path / "e.sqlite", period_s=1.0)
    for key, value, needle in [("period_s", 10.0, "for period_s 10.0 but this configuration runs period_s 1.0"),
                               ("model", "float", "for model 'float' but this configuration runs model 'int8'"),
                               ("n_channels", 8, "for n_channels 8 but this configuration runs n_channels 1")]:
        record = {"period_s": 1.0, "model": "int8", "class_label": None, "n_channels": 1, key: value}
        update_threshold(bundle, Threshold(value=3.0, method="gamma-tail-fit", source="device", calibrated_for=record))
        assert_clean_failure(edge_asd("run", "--config", cfg), "bundle.json: the threshold was set", needle, "re-run 'edge-asd calibrate'")
    update_threshold(bundle, Threshold(value=3.0, method="gamma-tail-fit", source="device",
                                       calibrated_for={"period_s": 1.0, "model": "int8", "class_label": None, "n_channels": 1}))
    ok = edge_asd("run", "--config", cfg)
    assert ok.returncode == 0, ok.stderr


def test_selective_enrollment_scores_the_lower_of_site_and_factory_and_fits_the_threshold_on_it(tmp_path, tiny_wavs):
    """``enroll --selective``: a window's score is min(site score, factory score), the threshold is
    fitted on those scores, the streaming path agrees with the offline one, and rollback ends it."""
    import dataclasses

    from edge_asd.audio import read_wav
    from edge_asd.scoring.detector import Detector
    from edge_asd.frontend import compute_features
    from edge_asd.service import StreamingScorer

    bundle = copy_bundle(tmp_path)
    site = tmp_path / "site"
    machine_clips(site, ["normal"] * 12, duration_s=2.0, seed=7)
    factory = read_bundle(bundle)
    result = edge_asd("enroll", bundle, "--input", site, "--seconds", "24", "--period-s", "2", "--selective")
    assert result.returncode == 0, result.stderr
    enrolled = read_bundle(bundle)
    assert enrolled.enrollment.selective and enrolled.enrollment.active == "site"
    assert "selective" in edge_asd("info", bundle).stdout

    audio = read_wav(tiny_wavs["anomaly"][0])[0]
    frames = compute_features(audio, enrolled.features)
    selective = Detector(enrolled)
    assert selective.selective
    site_only = Detector(enrolled, selective_with=None)
    factory_only = Detector(dataclasses.replace(enrolled, normalization=factory.normalization,
                                                score_scaling=factory.score_scaling), selective_with=None)
    expected = np.minimum(site_only.score_windows(frames), factory_only.score_windows(frames))
    got = selective.score_windows(frames)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert (got < site_only.score_windows(frames)).any() or (got < factory_only.score_windows(frames)).any()
    streaming = StreamingScorer(selective, n_channels=1)
    stream = [s for block in np.array_split(audio.reshape(-1, 1), 7) for _, s in streaming.push(block)]
    np.testing.assert_allclose(stream, got[: len(stream)], rtol=1e-6)

    # The threshold is fitted on the selective period scores of the site audio, not on the site-only ones.
    from edge_asd.audio.sources import open_source
    from edge_asd.decision.calibration import fit_alarm_rules
    from edge_asd.config import InputConfig

    inp = InputConfig(kind="folder", path=site, channels=1, realtime=False)
    periods = {name: score_periods(det, open_source(inp, sr=SR, realtime=False), period_s=2.0)[0]
               for name, det in (("selective", selective), ("site", site_only))}
    assert (periods["selective"] <= periods["site"] + 1e-9).all() and (periods["selective"] < periods["site"]).any()
    assert enrolled.threshold.source == "enrollment"
    assert enrolled.threshold.value == pytest.approx(fit_alarm_rules(periods["selective"], period_s=2.0).threshold.threshold, rel=1e-6)
    rolled = edge_asd("enroll", bundle, "--rollback")
    assert rolled.returncode == 0, rolled.stderr
    back = read_bundle(bundle)
    assert not back.enrollment.selective and back.enrollment.active == "factory"
    assert not Detector(back).selective
