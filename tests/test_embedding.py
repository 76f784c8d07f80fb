"""The embedding classifier kind (issue 18, item 4): a MobileFaceNet-style network trained with an
ArcFace head on machine classes, exported full-int8 as an embedding that a scoring back end scores.
Real training, real TFLite, real back end files."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from edge_asd.audio import read_wav  # noqa: E402
from edge_asd.scoring.bundle import read_bundle  # noqa: E402
from edge_asd.scoring.detector import Detector  # noqa: E402
from edge_asd.errors import BundleError, ParameterError  # noqa: E402
from edge_asd.frontend import compute_features  # noqa: E402
from tests.bundle_factory import make_bundle, make_wavs  # noqa: E402
from tests.device_helpers import REPO, device_env, edge_asd  # noqa: E402


@pytest.fixture(scope="module")
def mfn(tmp_path_factory, tiny_wavs):
    """A tiny mobilefacenet bundle (two synthetic machine classes, k-NN back end) and held-out clips."""
    root = tmp_path_factory.mktemp("mfn")
    path = make_bundle(root / "train", kind="mobilefacenet", train_wavs=tiny_wavs["normal"], epochs=2)
    held_out = make_wavs(root / "held-out", n_normal=6, n_anomaly=2, seed=11)
    return {"bundle": path, "root": root, **held_out}


def test_arcface_logits_add_the_margin_to_the_true_class_angle_only():
    from trainer.arcface import ArcFace

    layer = ArcFace(3, scale=10.0, margin=0.3)
    emb = np.array([[3.0, 4.0], [-1.0, 0.0]], dtype=np.float32)
    layer.build([emb.shape, (2,)])
    centres = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, -1.0]], dtype=np.float32)  # columns: class centres
    layer.set_weights([centres])
    logits = np.asarray(layer([emb, np.array([1, 0])]))
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    w = centres / np.linalg.norm(centres, axis=0, keepdims=True)
    cos = e @ w
    expected = 10.0 * cos
    # Row 0, true class 1: θ + m stays below π, the margin is added to the angle.
    expected[0, 1] = 10.0 * math.cos(math.acos(cos[0, 1]) + 0.3)
    # Row 1, true class 0: cos = -1 (θ = π), beyond π - m: the monotonic fallback cos θ - m sin m.
    expected[1, 0] = 10.0 * (cos[1, 0] - 0.3 * math.sin(0.3))
    np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_an_embedding_bundle_scores_its_unit_embeddings_with_its_back_end(mfn):
    bundle = read_bundle(mfn["bundle"])
    assert bundle.model.kind == "mobilefacenet" and bundle.model.score == "embedding"
    assert bundle.model.classes == ("machine/id_00", "machine/id_01")
    assert bundle.backend.kind == "knn" and bundle.backend.representation == "embedding"
    assert bundle.backend.dim == bundle.model.output_shape[-1] == 64
    det = Detector(bundle)
    samples, sr = read_wav(mfn["anomaly"][0])
    frames = compute_features(samples, bundle.features)
    vectors = det.window_vectors(frames)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-9)
    np.testing.assert_allclose(det.score_windows(frames), bundle.score_scaling.apply(det.backend.score(vectors)), rtol=1e-12)
    # Scaling fitted on the validation normals; the threshold was set from them.
    assert bundle.score_scaling.std > 0 and np.isfinite(bundle.threshold.value)
    with pytest.raises(ParameterError, match="no 'band_mse' vectors"):
        det.window_vectors(frames, representation="band_mse")
    with pytest.raises(ParameterError, match="scores through a back end"):
        Detector(bundle, backend=None).score_windows(frames)


def test_device_scores_equal_scikit_learn_on_the_desktop(mfn):
    """The device (no scikit-learn, no TensorFlow) scores windows as a k-NN refitted with
    scikit-learn on the same int8 embeddings scores them."""
    from trainer.backends import fit_backend

    path = mfn["bundle"]
    child = """
import json, sys
from edge_asd.audio import read_wav
from edge_asd.scoring.detector import Detector
from edge_asd.frontend import compute_features
det = Detector.from_bundle(sys.argv[1])
s = det.bundle.score_scaling
raw = s.std * det.score_windows(compute_features(read_wav(sys.argv[2])[0], det.config)) + s.mean
print(json.dumps({"raw": [float(v) for v in raw], "modules": sorted(m for m in ("sklearn", "tensorflow", "keras") if m in sys.modules)}))
"""
    run = subprocess.run([sys.executable, "-c", child, str(path), str(mfn["anomaly"][0])], capture_output=True, text=True,
                         cwd=REPO, env=device_env(), timeout=120)
    assert run.returncode == 0, run.stderr
    device = json.loads(run.stdout.strip().splitlines()[-1])
    assert device["modules"] == []
    bundle = read_bundle(path)
    det = Detector(bundle, backend=None)
    knn = bundle.load_backend()
    refit = fit_backend("knn", knn.factory_bank, params={"k": knn.k})
    queries = det.window_vectors(compute_features(read_wav(mfn["anomaly"][0])[0], bundle.features))
    np.testing.assert_allclose(np.array(device["raw"]), refit.reference_score(queries), rtol=1e-6)


def test_inconsistent_embedding_bundles_are_bundle_errors_naming_the_file(mfn, tmp_path):
    def damaged(name: str, change) -> str:
        dst = tmp_path / name
        shutil.copytree(mfn["bundle"], dst)
        meta = json.loads((dst / "bundle.json").read_text())
        change(meta)
        (dst / "bundle.json").write_text(json.dumps(meta))
        with pytest.raises(BundleError) as err:
            read_bundle(dst)
        assert str(dst / "bundle.json") in str(err.value) or str(dst) in str(err.value)
        return str(err.value)

    def no_backend(m):
        m.pop("backend")
        m["enrollment"]["factory"]["backend"] = None

    assert "no scoring back end" in damaged("no-backend", no_backend)
    assert "16-dimensional" in damaged("dim", lambda m: m["backend"].update(dim=16))
    assert "'band_mse' vectors" in damaged("representation", lambda m: m["backend"].update(representation="band_mse"))
    # A bank with NaN: the back end file's own check, reached through the bundle's digest check.
    from edge_asd.scoring.backends import KnnBackend, load_backend, save_backend
    from edge_asd.scoring.bundle import file_sha256

    dst = tmp_path / "nan-bank"
    shutil.copytree(mfn["bundle"], dst)
    knn = load_backend(dst / "backend.npz")
    bank = knn.factory_bank.copy()
    bank[3, 5] = np.nan
    save_backend(KnnBackend(factory_bank=bank, site_bank=None, k=knn.k), dst / "backend.npz")
    meta = json.loads((dst / "bundle.json").read_text())
    for ref in (meta["backend"], meta["enrollment"]["factory"]["backend"]):
        ref["sha256"] = file_sha256(dst / "backend.npz")
    (dst / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="backend.npz"):
        Detector.from_bundle(dst)


def test_export_refuses_an_embedding_model_without_a_back_end(tmp_path, tiny_wavs):
    from trainer.export import export_bundle
    from trainer.train import TrainConfig, train
    from tests.bundle_factory import TINY_FEATURES

    result = train(tiny_wavs["normal"], TINY_FEATURES,
                   TrainConfig(model="mobilefacenet", n_frames=16, hop_frames=8, epochs=1, width=8, val_fraction=0.25),
                   labels=[f"m/{i % 2}" for i in range(len(tiny_wavs["normal"]))], cache_dir=tmp_path / "cache",
                   log=lambda s: None, progress=False)
    assert result.score_kind == "embedding" and result.model.output_shape == (None, 64)
    with pytest.raises(ParameterError, match="only a scoring back end scores"):
        export_bundle(result, tmp_path / "bundle", backend="none")
    with pytest.raises(ParameterError, match="representation 'embedding'"):
        export_bundle(result, tmp_path / "bundle", backend="knn", representation="band_mse")


def test_enroll_fills_the_embedding_site_bank_and_info_says_what_it_holds(mfn, tmp_path):
    path = tmp_path / "enrolled"
    shutil.copytree(mfn["bundle"], path)
    site = tmp_path / "site"
    site.mkdir()
    for p in mfn["normal"]:
        shutil.copy(p, site / p.name)
    run = edge_asd("enroll", path, "--input", site, "--seconds", "12", "--period-s", "1")
    assert run.returncode == 0, run.stdout + run.stderr
    enrolled = read_bundle(path)
    assert enrolled.backend.file.startswith("backend_site_") and enrolled.backend.representation == "embedding"
    knn = enrolled.load_backend()
    assert knn.site_bank is not None and knn.site_bank.shape[1] == 64
    np.testing.assert_allclose(np.linalg.norm(knn.site_bank, axis=1), 1.0, rtol=1e-6)
    info = edge_asd("info", path, "--no-model")
    assert info.returncode == 0, info.stderr
    assert "knn over the unit embedding (64 dims)" in info.stdout and "site bank" in info.stdout
    back = edge_asd("enroll", path, "--rollback")
    assert back.returncode == 0, back.stderr
    assert read_bundle(path).backend.file == "backend.npz"


def test_an_autoencoder_and_an_embedding_model_score_as_one_ensemble(mfn, tiny_bundle):
    from trainer.ensemble import make_ensemble

    ens = make_ensemble([tiny_bundle, mfn["bundle"]], mfn["root"] / "ensemble", mfn["normal"])
    both = Detector(ens)
    alone = [Detector.from_bundle(tiny_bundle), Detector.from_bundle(mfn["bundle"])]
    samples, sr = read_wav(mfn["anomaly"][1])
    frames = compute_features(samples, ens.features)
    expected = ens.ensemble.score_scaling.apply((alone[0].score_windows(frames) + alone[1].score_windows(frames)) / 2)
    np.testing.assert_allclose(both.score_windows(frames), expected, rtol=1e-9)
    bench = edge_asd("bench", ens.path, "--seconds", "2", "--repeats", "1")
    assert bench.returncode == 0 and "conv-ae + mobilefacenet" in bench.stdout, bench.stdout + bench.stderr


def test_asd_train_fit_trains_the_mfn_arcface_recipe_on_several_machine_ids(tmp_path):
    env_run = [sys.executable, "-m", "trainer"]
    data, out = tmp_path / "data", tmp_path / "bundle"
    made = subprocess.run([*env_run, "synth", data, "--machines", "fan", "--ids", "00,02", "--snr", "6",
                           "--normal", "8", "--abnormal", "3", "--duration", "2", "--quiet"], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    fit = subprocess.run([*env_run, "fit", data, "--recipe", "mfn-arcface", "--n-fft", "512", "--hop-length", "256",
                          "--n-mels", "32", "--n-frames", "16", "--hop-frames", "8", "--epochs", "1",
                          "--cache-dir", tmp_path / "cache", "--out", out], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert fit.returncode == 0, fit.stderr[-3000:]
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["model"]["kind"] == "mobilefacenet" and meta["backend"]["kind"] == "knn"
    assert meta["provenance"]["recipe"]["name"] == "mfn-arcface"
    assert sorted(meta["model"]["classes"]) == ["fan/id_00", "fan/id_02"]
    evaluation = meta["metrics"]["evaluation"]
    assert 0.0 <= evaluation["auc_int8"] <= 1.0
    # The Keras backbone, its float and its int8 file score through the same back end: they agree.
    assert abs(evaluation["auc_int8_minus_float"]) <= 0.1
    assert (out / "model_int8.tflite").stat().st_size <= 256 * 1024
