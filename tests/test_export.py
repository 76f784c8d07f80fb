"""Bundles round-trip; damaged or mismatched bundles are clear BundleErrors; LiteRT without TF."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge_asd.scoring.bundle import read_bundle
from edge_asd.errors import BundleError
from edge_asd.scoring.runtime import TFLiteModel


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(bundle, dst)
    return dst


def test_bundle_round_trips(tiny_bundle):
    b = read_bundle(tiny_bundle)
    assert b.model.input_shape[0] == 1
    assert set(b.model.quantization) == {"input", "output"}
    m = TFLiteModel(b.model_path("int8"))
    assert m.input_quant == b.model.quantization["input"] and m.output_quant == b.model.quantization["output"]
    assert b.threshold.source == "training" and "statement" in b.threshold.details and b.threshold.period_s == 10.0
    assert b.score_scaling.std > 0 and b.enrollment is not None and b.enrollment.factory.threshold == b.threshold
    for key in ("seed", "edge_asd_version", "data_root", "protocol", "int8_ops"):
        assert key in b.provenance


def test_truncated_tflite_is_a_bundle_error(tiny_bundle, tmp_path):
    path = _copy(tiny_bundle, tmp_path)
    f = path / "model_int8.tflite"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(BundleError, match="model_int8.tflite"):
        read_bundle(path)
    with pytest.raises(BundleError, match="model_int8.tflite"):
        TFLiteModel(f)


def test_unknown_schema_is_a_bundle_error(tiny_bundle, tmp_path):
    path = _copy(tiny_bundle, tmp_path)
    meta = json.loads((path / "bundle.json").read_text())
    meta["schema_version"] = 99
    (path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="schema version"):
        read_bundle(path)


def test_wrong_feature_config_is_a_bundle_error(tiny_bundle, tmp_path):
    path = _copy(tiny_bundle, tmp_path)
    meta = json.loads((path / "bundle.json").read_text())
    meta["features"]["n_mels"] = meta["features"]["n_mels"] * 2
    (path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="bundle.json"):
        read_bundle(path)


def test_int8_model_loads_with_litert_without_tensorflow(tiny_bundle):
    code = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from ai_edge_litert.interpreter import Interpreter
        it = Interpreter(model_path={str(tiny_bundle / "model_int8.tflite")!r})
        it.allocate_tensors()
        i, o = it.get_input_details()[0], it.get_output_details()[0]
        assert i["dtype"] == np.int8 and o["dtype"] == np.int8
        it.set_tensor(i["index"], np.zeros(i["shape"], np.int8))
        it.invoke()
        from edge_asd.scoring.detector import Detector
        Detector.from_bundle({str(tiny_bundle)!r})
        assert "tensorflow" not in sys.modules, "TensorFlow was imported"
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ok" in out.stdout
