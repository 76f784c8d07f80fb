"""Ensemble bundles (issue 18, item 5): ``asd-train ensemble`` combines bundles; the device scores
every window with each int8 model, averages the standardised scores and standardises the average.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from edge_asd.audio import read_wav  # noqa: E402
from edge_asd.scoring.bundle import ENSEMBLE_SCHEMA_VERSION, read_bundle  # noqa: E402
from edge_asd.scoring.detector import Detector, window_view  # noqa: E402
from edge_asd.errors import BundleError, ParameterError  # noqa: E402
from edge_asd.frontend import compute_features  # noqa: E402
from tests.bundle_factory import make_bundle, make_wavs  # noqa: E402
from tests.device_helpers import REPO, device_env, edge_asd, machine_clips, service_toml  # noqa: E402
from trainer.ensemble import make_ensemble  # noqa: E402


@pytest.fixture(scope="module")
def parts(tmp_path_factory, tiny_bundle, tiny_wavs):
    """The session's conv-ae bundle, a second conv-ae (another seed, same frames and windows), a
    dense-ae (other windows) and normal clips neither saw."""
    root = tmp_path_factory.mktemp("ensemble")
    second = make_bundle(root / "seed1", train_wavs=tiny_wavs["normal"], seed=1)
    dense = make_bundle(root / "dense", kind="dense-ae", train_wavs=tiny_wavs["normal"])
    held_out = make_wavs(root / "held-out", n_normal=4, n_anomaly=2, seed=7)
    return {"primary": tiny_bundle, "second": second, "dense": dense, "normal": held_out["normal"],
            "anomaly": held_out["anomaly"], "root": root}


@pytest.fixture(scope="module")
def ensemble(parts):
    return make_ensemble([parts["primary"], parts["second"]], parts["root"] / "ensemble", parts["normal"]).path


def test_window_score_is_the_standardised_mean_of_the_members_scores(parts, ensemble):
    bundle = read_bundle(ensemble)
    assert bundle.schema_version == ENSEMBLE_SCHEMA_VERSION and len(bundle.ensemble.members) == 1
    assert json.loads((ensemble / "bundle.json").read_text())["schema_version"] == ENSEMBLE_SCHEMA_VERSION
    both = Detector(bundle)
    alone = [Detector.from_bundle(parts["primary"]), Detector.from_bundle(parts["second"])]
    samples, sr = read_wav(parts["anomaly"][0])
    frames = compute_features(samples, bundle.features)
    w = bundle.window
    raw = window_view(frames, n_frames=w.n_frames, hop_frames=w.hop_frames)
    scaling = bundle.ensemble.score_scaling
    expected = np.array([scaling.apply((a.score_raw_window(x) + b.score_raw_window(x)) / 2) for x in raw for a, b in [alone]])
    got = both.score_windows(frames)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert both.score_clip(samples, sr=sr) == pytest.approx(float(expected.mean()), rel=1e-12)
    # The two members are different models: the combination is not either one's score.
    assert not np.allclose(got, alone[0].score_windows(frames))
    # The ensemble's scale was fitted on the normal clips: their window scores are standardised.
    normal = np.concatenate([both.score_windows(compute_features(read_wav(p)[0], bundle.features)) for p in parts["normal"]])
    assert abs(normal.mean()) < 1e-6 and normal.std() == pytest.approx(1.0, rel=1e-6)
    assert bundle.threshold.source == "training" and np.isfinite(bundle.threshold.value)


def test_the_service_streams_an_ensemble_as_it_scores_clips(parts, ensemble, tmp_path):
    """edge-asd run and score in processes that never import TensorFlow: the period scores of a
    streamed file equal the windows the offline path scores, and score gives the clip score."""
    clip = parts["anomaly"][0]
    offline = Detector.from_bundle(ensemble)
    samples, sr = read_wav(clip)
    csv = tmp_path / "scores.csv"
    run = edge_asd("score", ensemble, clip, "--csv", csv)
    assert run.returncode == 0, run.stderr
    row = csv.read_text().splitlines()[1].split(",")
    assert float(row[1]) == pytest.approx(offline.score_clip(samples, sr=sr), rel=1e-5)
    bench = edge_asd("bench", ensemble, "--seconds", "2", "--repeats", "1")
    assert bench.returncode == 0 and "conv-ae + conv-ae" in bench.stdout, bench.stdout + bench.stderr
    info = edge_asd("info", ensemble)
    assert info.returncode == 0 and "ensemble   mean of 2 models" in info.stdout and "member   members/1" in info.stdout
    wavs = tmp_path / "wavs"
    machine_clips(wavs, ["normal", "anomaly", "normal"])
    # Its threshold was fitted at export for 10 s periods: at 1 s periods the service refuses it (exit 78) ...
    short = service_toml(tmp_path, bundle=ensemble, inputs=wavs, db=tmp_path / "events.sqlite")
    refused = subprocess.run([sys.executable, "-m", "edge_asd", "run", "--config", str(short)], capture_output=True,
                             text=True, env=device_env(), cwd=REPO, timeout=120)
    assert refused.returncode == 78 and "set (training" in refused.stderr and "period_s 10.0" in refused.stderr, refused.stderr
    cfg = service_toml(tmp_path, bundle=ensemble, inputs=wavs, db=tmp_path / "events.sqlite", period_s=10.0)
    proc = subprocess.run([sys.executable, "-m", "edge_asd", "run", "--config", str(cfg)], capture_output=True, text=True,
                          env=device_env(), cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    periods = [json.loads(x) for x in proc.stdout.splitlines() if '"type":"period"' in x]
    assert periods and all(p["score"] is None or np.isfinite(p["score"]) for p in periods)


def test_bad_ensembles_are_clear_errors(parts, ensemble, tmp_path):
    # Other windows: the frames of one window are not the other's.
    with pytest.raises(BundleError, match="window"):
        make_ensemble([parts["primary"], parts["dense"]], tmp_path / "x", parts["normal"])
    assert not (tmp_path / "x").exists() and not (tmp_path / ".x.partial").exists()
    with pytest.raises(ParameterError, match="at least two"):
        make_ensemble([parts["primary"]], tmp_path / "y", parts["normal"])
    with pytest.raises(ParameterError, match="already exists"):
        make_ensemble([parts["primary"], parts["second"]], ensemble, parts["normal"])
    # A member changed after the ensemble was built: named, with what to do.
    changed = tmp_path / "changed"
    shutil.copytree(ensemble, changed)
    meta = changed / "members" / "1" / "bundle.json"
    meta.write_text(meta.read_text().replace('"metrics": {}', '"metrics": {"edited": 1}'))
    with pytest.raises(BundleError, match=r"members/1/bundle.json: does not match the digest"):
        read_bundle(changed)
    # A member missing.
    gone = tmp_path / "gone"
    shutil.copytree(ensemble, gone)
    shutil.rmtree(gone / "members" / "1")
    with pytest.raises(BundleError, match="ensemble member missing"):
        read_bundle(gone)
    # A member's model file truncated: its own digest catches it.
    cut = tmp_path / "cut"
    shutil.copytree(ensemble, cut)
    model = cut / "members" / "1" / "model_int8.tflite"
    model.write_bytes(model.read_bytes()[:100])
    with pytest.raises(BundleError, match="model_int8.tflite: does not match"):
        read_bundle(cut)
    # enroll refuses ensembles with what to do instead; calibrate works on them.
    from edge_asd.config import InputConfig
    from edge_asd.decision.enrollment import enroll_bundle

    inp = InputConfig(kind="folder", path=parts["normal"][0].parent, channels=1, sample_rate_hz=16000, realtime=False)
    with pytest.raises(ParameterError, match="is an ensemble"):
        enroll_bundle(ensemble, inp, seconds=60, period_s=1.0)
    from edge_asd.decision.enrollment import rollback_bundle

    with pytest.raises(ParameterError, match="is an ensemble"):
        rollback_bundle(ensemble)


def test_asd_train_fit_then_ensemble_commands(parts, tmp_path):
    """The user's path: train a second recipe at the first bundle's frames and windows with
    asd-train fit's overrides, then combine the two with asd-train ensemble."""
    def asd_train(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "trainer", *map(str, args)], capture_output=True, text=True, cwd=REPO,
                              timeout=300)

    primary = read_bundle(parts["primary"])
    f, w = primary.features, primary.window
    second = tmp_path / "second"
    machine = tmp_path / "machine"
    make_wavs(machine, n_normal=10, n_anomaly=0, seed=3)  # asd-train fit asks for at least 10 clips
    # conv-ae's default windows are twice the tiny bundle's: the overrides bring them to the same frames.
    fit = asd_train("fit", machine, "--model", "conv-ae", "--seed", 1, "--features", f.kind,
                    "--n-fft", f.n_fft, "--hop-length", f.hop_length, "--n-mels", f.n_mels,
                    "--n-frames", w.n_frames, "--hop-frames", w.hop_frames, "--epochs", 1, "--no-evaluate", "--out", second)
    assert fit.returncode == 0, fit.stderr
    assert read_bundle(second).window == w
    out = tmp_path / "cli-ensemble"
    run = asd_train("ensemble", parts["primary"], second, "--normal", parts["normal"][0].parent, "--out", out)
    assert run.returncode == 0, run.stderr
    assert f"wrote {out}: 2 models (conv-ae, conv-ae)" in run.stdout
    bad = asd_train("ensemble", parts["primary"], parts["dense"], "--normal", parts["normal"][0].parent, "--out", tmp_path / "bad")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "window" in bad.stderr, bad.stderr
