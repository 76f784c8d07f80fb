"""Scoring back ends (issue 18 item 3): scikit-learn parity on the desktop and in a process that never
imports scikit-learn or TensorFlow, bundle round trips and bad files, enrollment's site bank and
rollback, and the device CLI with a back-end bundle. Real bundles, real TFLite, real npz files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_asd.scoring.backends import BACKEND_KINDS, KnnBackend, load_backend, save_backend
from edge_asd.scoring.bundle import BACKEND_SCHEMA_VERSION, SCHEMA_VERSION, file_sha256, read_bundle
from edge_asd.errors import BundleError
from tests.device_helpers import REPO, SR, device_env, edge_asd

RTOL = 1e-6
SITE_DURATION_S = 2.0


def _vectors(rng: np.random.Generator, n: int, d: int, shift: float = 0.0) -> np.ndarray:
    """Correlated, skewed vectors like log band errors (a Gaussian copula would do as well)."""
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    return rng.standard_normal((n, d)) @ mix + rng.gamma(2.0, 0.3, size=(n, d)) - 2.0 + shift


@pytest.fixture(scope="module")
def fitted():
    """Every kind fitted with scikit-learn on the same synthetic vectors (k-NN and selective
    Mahalanobis with a second domain), and query vectors off both domains."""
    from trainer.backends import fit_backend

    rng = np.random.default_rng(0)
    train, val, target = _vectors(rng, 3000, 12), _vectors(rng, 400, 12), _vectors(rng, 300, 12, shift=1.5)
    queries = np.concatenate([_vectors(rng, 100, 12), _vectors(rng, 100, 12, shift=1.5), 3 * _vectors(rng, 100, 12)])
    out = {kind: fit_backend(kind, train, val=val, target=target, seed=0) for kind in BACKEND_KINDS}
    out["knn-k5"] = fit_backend("knn", train, target=target, params={"k": 5})
    out["gmm-diag"] = fit_backend("gmm", train, val=val, params={"n_components": 3, "covariance_type": "diag"})
    return out, queries


def _close(ours: np.ndarray, ref: np.ndarray, kind: str) -> None:
    # A one-class SVM's decision values cross zero (its boundary), where a relative tolerance means
    # nothing: there the tolerance is relative to the sum of |dual coefficients| (the values' scale).
    atol = 0.0
    if kind.startswith("ocsvm"):
        atol = RTOL * 1e-3
    np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=atol)


def test_numpy_back_ends_match_scikit_learn_here_and_in_a_process_without_it(fitted, tmp_path):
    models, queries = fitted
    assert models["knn"].backend.site_bank is not None and models["selective-mahalanobis"].backend.target_mean is not None
    assert models["gmm"].fitted_on["n_components_chosen_by"].startswith("highest mean log-likelihood")
    for name, f in models.items():
        ref = f.reference_score(queries)
        _close(f.backend.score(queries), ref, name)
        _close(np.array([f.backend.score_one(q) for q in queries]), ref, name)  # one window at a time, as the device
        save_backend(f.backend, tmp_path / f"{name}.npz")
    np.save(tmp_path / "queries.npy", queries)
    # The device side: a fresh interpreter that loads the npz files and scores the same vectors.
    child = """
import json, sys
from pathlib import Path
import numpy as np
from edge_asd.scoring.backends import load_backend
root = Path(sys.argv[1])
q = np.load(root / "queries.npy", allow_pickle=False)
np.savez(root / "device_scores.npz", **{p.stem: load_backend(p).score(q) for p in root.glob("*.npz") if p.stem != "device_scores"})
print(json.dumps(sorted(m for m in ("sklearn", "tensorflow", "keras", "scipy") if m in sys.modules)))
"""
    run = subprocess.run([sys.executable, "-c", child, str(tmp_path)], capture_output=True, text=True, cwd=REPO, env=device_env(), timeout=60)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == []  # not even scipy: numpy alone
    with np.load(tmp_path / "device_scores.npz") as device:
        assert sorted(device.files) == sorted(models)
        for name, f in models.items():
            _close(device[name], f.reference_score(queries), name)


def test_back_end_file_errors_name_the_file(fitted, tmp_path):
    knn = fitted[0]["knn"].backend
    good = save_backend(knn, tmp_path / "good.npz")
    assert load_backend(good, dim=12).score(np.zeros((1, 12))).shape == (1,)
    with pytest.raises(BundleError, match=r"good\.npz.*12-dimensional.*gives 32"):
        load_backend(good, dim=32)
    cases = {
        "pickle": dict(kind=np.array("knn"), factory_bank=np.array([object()] * 3, dtype=object), k=np.array(1)),
        "nan": dict(kind=np.array("knn"), factory_bank=np.full((4, 12), np.nan), k=np.array(1)),
        "empty": dict(kind=np.array("knn"), factory_bank=np.zeros((0, 12)), k=np.array(1)),
        "kind": dict(kind=np.array("isolation-forest"), factory_bank=np.zeros((4, 12))),
        "missing": dict(kind=np.array("mahalanobis"), mean=np.zeros(12)),
        "shape": dict(kind=np.array("mahalanobis"), mean=np.zeros(12), precision=np.eye(11)),
        "k": dict(kind=np.array("knn"), factory_bank=np.zeros((4, 12)), k=np.array(9)),
    }
    expected = {"pickle": "pickled", "nan": "NaN", "empty": "empty", "kind": "unknown back end kind", "missing": "lacks the array 'precision'",
                "shape": "precision has shape", "k": "k = 9"}
    for name, arrays in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        with pytest.raises(BundleError, match=expected[name]) as err:
            load_backend(path)
        assert str(path) in str(err.value)
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(BundleError, match="not a readable npz"):
        load_backend(corrupt)
    with pytest.raises(BundleError, match="back end file missing"):
        load_backend(tmp_path / "absent.npz")


# -- real bundles ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def backend_bundles(tmp_path_factory, tiny_wavs, tiny_bundle):
    """The session's tiny conv-ae bundle with each back end attached (fitted on 3 normal clips, the
    4th as k-NN site bank / selective target, validation and threshold on the last 2)."""
    from trainer.export import add_backend

    root = tmp_path_factory.mktemp("backends")
    normal = tiny_wavs["normal"]
    out = {}
    for kind in BACKEND_KINDS:
        path = root / kind
        shutil.copytree(tiny_bundle, path)
        add_backend(path, kind, train_paths=normal[:3], val_paths=normal[4:], target_paths=normal[3:4], cache_dir=root / "cache")
        out[kind] = path
    return out


def test_bundles_with_back_ends_load_score_and_say_what_they_hold(backend_bundles, tiny_wavs, tiny_bundle):
    from edge_asd.audio import read_wav
    from edge_asd.scoring.detector import Detector
    from edge_asd.frontend import compute_features
    from trainer.backends import fit_backend

    plain = json.loads((tiny_bundle / "bundle.json").read_text())
    assert plain["schema_version"] == SCHEMA_VERSION and "backend" not in plain
    samples, sr = read_wav(tiny_wavs["anomaly"][0])
    for kind, path in backend_bundles.items():
        meta = json.loads((path / "bundle.json").read_text())
        assert meta["schema_version"] == BACKEND_SCHEMA_VERSION
        assert meta["backend"]["kind"] == kind and meta["backend"]["file"] == "backend.npz"
        assert meta["enrollment"]["factory"]["backend"] == meta["backend"]
        assert meta["backend"]["sha256"] == file_sha256(path / "backend.npz")
        b = read_bundle(path)
        det = Detector(b)
        frames = compute_features(samples, b.features)
        # The detector's window score is the back end's score of the window's error vector.
        vectors = Detector(b, backend=None).window_vectors(frames, representation=b.backend.representation)
        np.testing.assert_allclose(det.score_windows(frames), b.score_scaling.apply(det.backend.score(vectors)), rtol=1e-12)
        assert b.score_scaling.std > 0 and np.isfinite(b.threshold.value)
    # The device: every bundle's window scores of the clip, in a process without scikit-learn or TensorFlow.
    child = """
import json, sys
import numpy as np
from edge_asd.audio import read_wav
from edge_asd.scoring.detector import Detector
from edge_asd.frontend import compute_features
out = {}
for path in sys.argv[2:]:
    det = Detector.from_bundle(path)
    samples, sr = read_wav(sys.argv[1])
    out[path] = [float(v) for v in det.bundle.score_scaling.std * det.score_windows(compute_features(samples, det.config)) + det.bundle.score_scaling.mean]
print(json.dumps({"raw": out, "modules": sorted(m for m in ("sklearn", "tensorflow", "keras") if m in sys.modules)}))
"""
    run = subprocess.run([sys.executable, "-c", child, str(tiny_wavs["anomaly"][0]), *map(str, backend_bundles.values())],
                         capture_output=True, text=True, cwd=REPO, env=device_env(), timeout=120)
    assert run.returncode == 0, run.stderr
    device = json.loads(run.stdout.strip().splitlines()[-1])
    assert device["modules"] == []
    # The desktop: the same fits again with scikit-learn on the same vectors, scored by scikit-learn.
    b = read_bundle(backend_bundles["knn"])
    det = Detector(b, backend=None)

    def vectors(paths):
        return np.concatenate([det.window_vectors(compute_features(read_wav(p)[0], b.features)) for p in paths])

    train, val, target = vectors(tiny_wavs["normal"][:3]), vectors(tiny_wavs["normal"][4:]), vectors(tiny_wavs["normal"][3:4])
    for kind, path in backend_bundles.items():
        refit = fit_backend(kind, train, val=val, target=target)
        reference = refit.reference_score(vectors([tiny_wavs["anomaly"][0]]))
        _close(np.array(device["raw"][str(path)]), reference, kind)

    info = edge_asd("info", backend_bundles["knn"], "--no-model")
    assert info.returncode == 0, info.stderr
    assert "backend    knn over the band_mse error vector (32 dims): k-NN, k=1, factory bank" in info.stdout
    assert "site bank" in info.stdout and "(schema 3)" in info.stdout


def test_bundle_back_end_file_damage_is_a_clear_error(backend_bundles, tmp_path):
    src = backend_bundles["gmm"]

    def copy(name: str) -> Path:
        dst = tmp_path / name
        shutil.copytree(src, dst)
        return dst

    changed = copy("changed")
    data = bytearray((changed / "backend.npz").read_bytes())
    data[-30] ^= 0xFF
    (changed / "backend.npz").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"backend\.npz: does not match the digest"):
        read_bundle(changed)
    missing = copy("missing")
    (missing / "backend.npz").unlink()
    with pytest.raises(BundleError, match=r"backend\.npz: back end file missing"):
        read_bundle(missing)
    # A file that matches its recorded digest but is no back end (or a pickle): the npz check speaks.
    for name, arrays in (("pickled", {"kind": np.array("gmm"), "weights": np.array([{"a": 1}], dtype=object)}),
                         ("wrong-size", None)):
        bad = copy(name)
        if arrays is None:
            save_backend(KnnBackend(factory_bank=np.zeros((3, 5)), site_bank=None, k=1), bad / "backend.npz")
        else:
            np.savez(bad / "backend.npz", **arrays)
        meta = json.loads((bad / "bundle.json").read_text())
        meta["backend"]["sha256"] = meta["enrollment"]["factory"]["backend"]["sha256"] = file_sha256(bad / "backend.npz")
        (bad / "bundle.json").write_text(json.dumps(meta))
        with pytest.raises(BundleError, match="pickled" if arrays else "5-dimensional vectors but the bundle's model gives 32") as err:
            read_bundle(bad)
        assert str(bad / "backend.npz") in str(err.value)
    # bundle.json naming vectors of another size than the model's features.
    dims = copy("dims")
    meta = json.loads((dims / "bundle.json").read_text())
    meta["backend"]["dim"] = 7
    (dims / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="7-dimensional vectors but the model gives 32"):
        read_bundle(dims, verify_files=False)
    result = edge_asd("info", changed)
    assert result.returncode == 1 and "Traceback" not in result.stderr and "backend.npz: does not match" in result.stderr


def test_enroll_fills_the_site_bank_and_rollback_removes_it(backend_bundles, tmp_path):
    from edge_asd.audio import read_wav, write_wav
    from edge_asd.config import InputConfig
    from edge_asd.scoring.detector import Detector
    from edge_asd.decision.enrollment import enroll_bundle, rollback_bundle
    from edge_asd.frontend import compute_features
    from tests.bundle_factory import _machine_tone

    rng = np.random.default_rng(5)

    def site_clip(path: Path) -> Path:
        # The same hum heard through another microphone: a strong resonance near 2 kHz.
        x = _machine_tone(rng, SITE_DURATION_S, SR, anomaly=False)
        t = np.arange(x.size) / SR
        x = 0.6 * x + 0.25 * np.sin(2 * np.pi * 2050 * t) * (1 + 0.1 * rng.standard_normal(x.size))
        path.parent.mkdir(parents=True, exist_ok=True)
        write_wav(path, x.astype(np.float32), SR)
        return path

    site = [site_clip(tmp_path / "site" / f"{i:02d}.wav") for i in range(7)]  # 14 s: 14 periods of 1 s
    heldout = [site_clip(tmp_path / "heldout" / f"{i:02d}.wav") for i in range(2)]
    for kind in ("knn", "selective-mahalanobis"):
        bundle = tmp_path / kind
        shutil.copytree(backend_bundles[kind], bundle)
        factory_text = (bundle / "bundle.json").read_text()
        factory = read_bundle(bundle)
        result = enroll_bundle(bundle, InputConfig(kind="folder", path=site[0].parent), seconds=60, period_s=1.0)
        assert result.written and result.n_periods == 14
        enrolled = read_bundle(bundle)
        ref = enrolled.backend
        assert ref.file.startswith("backend_site_") and (bundle / ref.file).is_file() and ref.file != "backend.npz"
        assert enrolled.enrollment.site.values.backend == ref and enrolled.enrollment.factory.backend == factory.backend
        assert enrolled.enrollment.site.audio["backend"]["site_windows"] > 0
        site_backend = Detector(enrolled).backend
        slot = site_backend.site_bank if kind == "knn" else site_backend.target_mean
        assert slot is not None
        # Held-out site windows, in the site's normalisation: closer to normal with the site slot.
        det = Detector(enrolled, backend=None)
        vectors = np.concatenate([det.window_vectors(compute_features(read_wav(p)[0], enrolled.features)) for p in heldout])
        with_site, without = site_backend.score(vectors), site_backend.without_site().score(vectors)
        assert (with_site <= without + 1e-12).all(), kind  # the site slot only ever adds a closer normal
        assert (with_site < without).mean() > 0.5 and with_site.mean() < 0.9 * without.mean(), (kind, with_site.mean(), without.mean())
        back = rollback_bundle(bundle)
        assert back.backend == factory.backend and back.enrollment.active == "factory"
        assert not list(bundle.glob("backend_site_*.npz"))
        rolled = json.loads((bundle / "bundle.json").read_text())
        for key in ("normalization", "score_scaling", "threshold", "backend"):
            assert rolled[key] == json.loads(factory_text)[key]
        read_bundle(bundle)  # every file it names is there and intact


def test_device_cli_and_streaming_score_with_a_back_end(backend_bundles, tiny_wavs):
    from edge_asd.audio import read_wav
    from edge_asd.audio.sources import FileListSource
    from edge_asd.decision.calibration import score_periods
    from edge_asd.scoring.detector import Detector
    from edge_asd.frontend import compute_features
    from edge_asd.service import StreamingScorer

    bundle = backend_bundles["knn"]
    det = Detector.from_bundle(bundle)
    clip = tiny_wavs["anomaly"][0]
    samples, sr = read_wav(clip)
    expected = det.score_clip(samples, sr=sr)
    result = edge_asd("score", bundle, clip, tiny_wavs["normal"][5])
    assert result.returncode == 0, result.stderr
    row = result.stdout.strip().splitlines()[0].split(",")
    assert row[0] == str(clip) and float(row[1]) == pytest.approx(expected, rel=1e-5)
    # The service's streaming scorer gives the offline window scores (the back end on every window).
    scorer = StreamingScorer(det, n_channels=1)
    streamed = [s for start in range(0, samples.shape[0], 1000) for _, s in scorer.push(samples[start : start + 1000])]
    streamed += [s for _, s in scorer.flush()]
    np.testing.assert_allclose(streamed, det.score_windows(compute_features(samples, det.config)), rtol=1e-9)
    periods, _ = score_periods(det, FileListSource(tiny_wavs["anomaly"], sr=SR), period_s=1.0)
    assert periods.size >= 3 and (periods > 0).all()  # anomalies: far from the normal windows


def test_asd_train_fit_with_a_back_end_evaluates_through_it(tmp_path):
    from click.testing import CliRunner

    from tests.bundle_factory import make_wavs
    from trainer.fit_cli import fit

    data = tmp_path / "data"
    make_wavs(data, n_normal=12, n_anomaly=3, seed=3)  # normal/ and abnormal/: the folder layout
    out = tmp_path / "bundle"
    args = ["--n-fft", "512", "--hop-length", "256", "--n-mels", "32", "--epochs", "1", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    run = CliRunner().invoke(fit, [str(data), "--backend", "gmm", *args])
    assert run.exit_code == 0, run.output
    b = read_bundle(out)
    assert b.backend.kind == "gmm" and b.enrollment.factory.backend == b.backend
    assert b.backend.fitted_on["n_components_chosen_by"].startswith("highest mean log-likelihood of the validation")
    evaluation = b.metrics["evaluation"]
    assert evaluation["backend"]["kind"] == "gmm" and "gmm back end" in evaluation["scoring"]
    # int8, float and Keras all scored through the back end: they agree closely.
    assert abs(evaluation["auc_int8"] - evaluation["auc_keras"]) <= 0.15 and "window score = gmm back end" in run.output
    refused = CliRunner().invoke(fit, [str(data), "--backend", "knn", "--model", "cnn-lstm", "--objective", "supervised", *args])
    assert refused.exit_code != 0 and "--backend knn scores an autoencoder" in str(refused.exception)
