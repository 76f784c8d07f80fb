"""Each model kind trains, exports to pure-builtin int8 TFLite (≤ 256 KB), and scores clips."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from edge_asd.scoring.bundle import read_bundle  # noqa: E402
from edge_asd.scoring.detector import Detector  # noqa: E402
from edge_asd.errors import ParameterError  # noqa: E402
from tests.bundle_factory import make_bundle  # noqa: E402
from trainer.export import check_builtin_int8, convert_int8, convert_models, export_twin  # noqa: E402
from trainer.models import CLASSIFIER_KINDS, MODEL_KINDS, ModelConfig, build_model, default_window  # noqa: E402

MAX_INT8_BYTES = 256 * 1024


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_kind_trains_exports_and_scores(kind, tmp_path, tiny_wavs):
    path = make_bundle(tmp_path, kind=kind, train_wavs=tiny_wavs["normal"], epochs=1)
    bundle = read_bundle(path)
    ops = check_builtin_int8(bundle.model_path("int8"))
    assert "FULLY_CONNECTED" in ops or "CONV_2D" in ops
    assert bundle.model_path("int8").stat().st_size <= MAX_INT8_BYTES
    label = bundle.model.classes[0] if bundle.model.score == "neg_log_prob" else None
    from edge_asd.audio import read_wav

    samples, sr = read_wav(tiny_wavs["anomaly"][0])
    scores = {}
    for which in ("int8", "float"):
        scores[which] = Detector(bundle, model=which).score_clip(samples, sr=sr, class_label=label)
        assert np.isfinite(scores[which])
    # The device's view: LiteRT in a process that never imports TensorFlow gives the same score.
    code = textwrap.dedent(
        f"""
        import sys
        from edge_asd.audio import read_wav
        from edge_asd.scoring.detector import Detector
        samples, sr = read_wav({str(tiny_wavs["anomaly"][0])!r})
        print(Detector.from_bundle({str(path)!r}).score_clip(samples, sr=sr, class_label={label!r}))
        assert not any(m.startswith(("tensorflow", "keras", "tf_keras")) for m in sys.modules), "TensorFlow was imported"
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.split()[-1]) == pytest.approx(scores["int8"], rel=1e-6)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_full_size_models_fit_the_budget(kind, tmp_path):
    """At the benchmark's largest features (IMS: 64 mel + 24 sinc = 88) and default windows."""
    n_frames, _ = default_window(kind)
    cfg = ModelConfig(
        kind=kind, n_frames=n_frames, n_features=88,
        objective="id" if kind in CLASSIFIER_KINDS else "reconstruction", n_classes=26 if kind in CLASSIFIER_KINDS else 0,
    )
    twin = build_model(cfg, batch_size=1, export=True)
    rng = np.random.default_rng(0)
    twin.set_weights([w + 0.01 * rng.standard_normal(w.shape).astype(np.float32) for w in twin.get_weights()])
    int8 = convert_int8(twin, rng.standard_normal((16, n_frames, 88)).astype(np.float32))
    path = tmp_path / "m.tflite"
    path.write_bytes(int8)
    assert len(int8) <= MAX_INT8_BYTES, f"{kind}: {len(int8) / 1024:.0f} KB"
    ops = check_builtin_int8(path)
    assert not any("WHILE" in op or "TENSOR_LIST" in op or "FLEX" in op.upper() for op in ops)
    # LiteRT's default XNNPACK delegate runs int8 TRANSPOSE_CONV ~3× slower than upsampling + conv.
    assert "TRANSPOSE_CONV" not in ops


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_export_twin_matches_trained_model(kind, tmp_path):
    """The tf_keras export twin (batch 1) computes the trained Keras 3 model's function, and so do
    its float TFLite file and, within int8 rounding, its int8 file; recurrent layers become the
    fused LSTM op."""
    from edge_asd.scoring.runtime import TFLiteModel

    cfg = ModelConfig(kind=kind, n_frames=8, n_features=24, objective="id" if kind in CLASSIFIER_KINDS else "reconstruction",
                      n_classes=3 if kind in CLASSIFIER_KINDS else 0, width=8)
    trained = build_model(cfg)
    rng = np.random.default_rng(1)
    trained.set_weights([w + 0.1 * rng.standard_normal(w.shape).astype(np.float32) for w in trained.get_weights()])
    twin = export_twin(trained, cfg)
    x = rng.standard_normal((3, 8, 24)).astype(np.float32)
    expected = trained.predict(x, verbose=0)
    np.testing.assert_allclose(np.concatenate([twin.predict(x[i : i + 1], verbose=0) for i in range(3)]), expected, atol=1e-5)

    float_bytes, int8_bytes = convert_models(twin, rng.standard_normal((64, 8, 24)).astype(np.float32))
    (tmp_path / "f.tflite").write_bytes(float_bytes)
    (tmp_path / "q.tflite").write_bytes(int8_bytes)
    as_float, as_int8 = TFLiteModel(tmp_path / "f.tflite"), TFLiteModel(tmp_path / "q.tflite")
    # Twice over, in this order: a fused LSTM keeps its state between invokes unless reset, so a
    # stale state would change the second pass.
    for _ in range(2):
        np.testing.assert_allclose(np.concatenate([as_float(x[i : i + 1]) for i in range(3)]), expected, atol=1e-4)
        err = np.concatenate([as_int8(x[i : i + 1]) for i in range(3)]) - expected
        assert np.sqrt(np.mean(err**2)) < 0.1 * np.std(expected) + 0.02
    ops = check_builtin_int8(tmp_path / "q.tflite")
    assert ("UNIDIRECTIONAL_SEQUENCE_LSTM" in ops) == (kind in ("lstm-ae", "cnn-lstm"))


def test_model_config_validation():
    with pytest.raises(ParameterError):
        ModelConfig(kind="cnn-lstm", n_frames=8, n_features=8)  # classifier needs classes
    with pytest.raises(ParameterError):
        ModelConfig(kind="conv-ae", n_frames=8, n_features=8, objective="id", n_classes=2)
    with pytest.raises(ParameterError):
        ModelConfig(kind="mystery", n_frames=8, n_features=8)
    with pytest.raises(ParameterError):
        default_window("mystery")


def test_calibration_windows_cover_rare_extremes(tmp_path):
    """A dropout frame in one training window of thousands sets the int8 input range: a random
    draw alone would miss it, and test clips holding such frames would saturate."""
    from edge_asd.scoring.runtime import TFLiteModel
    from trainer.train import representative_windows

    rng = np.random.default_rng(0)
    windows = np.clip(rng.standard_normal((5000, 5, 4)), -3, 3).astype(np.float32)
    windows[1234, 2, 1], windows[4321, 0, 3] = -9.0, 7.0
    rep = representative_windows(windows, 50, np.random.default_rng(1))
    assert 50 < len(rep) <= 50 + 2 * 4
    assert rep.min() == -9.0 and rep.max() == 7.0
    assert len(np.unique(rep.reshape(len(rep), -1), axis=0)) == len(rep)

    model = build_model(ModelConfig(kind="dense-ae", n_frames=5, n_features=4), batch_size=1)
    path = tmp_path / "m.tflite"
    path.write_bytes(convert_int8(model, rep))
    q = TFLiteModel(path).input_quant
    lowest, highest = (-128 - q.zero_point) * q.scale, (127 - q.zero_point) * q.scale
    assert lowest <= -9.0 + q.scale and highest >= 7.0 - q.scale
