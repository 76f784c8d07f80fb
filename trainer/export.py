"""Export a trained model into a bundle: float and full-int8 TFLite plus ``bundle.json``.

- The network is rebuilt with a fixed batch of 1 in ``tf_keras``, whose LSTMs convert to the fused
  ``UNIDIRECTIONAL_SEQUENCE_LSTM`` builtin (see :mod:`trainer.models`), and the trained weights are
  copied in layer by layer.
- ``model_float.tflite``: the float reference. ``model_int8.tflite``: full-integer post-training
  quantisation (``TFLITE_BUILTINS_INT8``, int8 input and output) calibrated on training windows.
- Tensor names are stripped from both files (the runtime addresses tensors by index).
- Quantisation parameters are read back from the converted model, never computed here.
- The threshold is the ``1 − false_alarm_rate`` quantile of the int8 model's scores on the held-out
  validation normal clips, scored through :class:`edge_asd.detector.Detector` (the device path).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import datetime as _dt
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

import edge_asd
from edge_asd.audio import read_wav
from edge_asd.bundle import MODEL_FILES, Bundle, ModelInfo, Threshold, file_sha256, write_bundle
from edge_asd.detector import Detector
from edge_asd.errors import EdgeASDError, ParameterError
from edge_asd.runtime import TFLiteModel
from trainer.models import ModelConfig, build_model
from trainer.train import TrainResult, describe

__all__ = [
    "ExportError",
    "DISALLOWED_OP_MARKERS",
    "convert_models",
    "model_ops",
    "check_builtin_int8",
    "export_bundle",
    "clip_scores",
    "DEFAULT_FALSE_ALARM_RATE",
]

DEFAULT_FALSE_ALARM_RATE = 0.05
"""Fraction of normal clips allowed above the exported threshold (until the device calibrates)."""

DISALLOWED_OP_MARKERS = ("FLEX", "TENSORLIST", "WHILE", "CUSTOM", "DELEGATE", "CALL_ONCE", "VAR_HANDLE", "READ_VARIABLE")
"""Op-name fragments that a device runtime cannot run or that mean a non-pure-builtin graph."""


class ExportError(EdgeASDError):
    """The model could not be converted to a pure-builtin int8 TFLite model."""


def _strip(flatbuffer: bytes) -> bytes:
    """Remove tensor/op names from a ``.tflite`` flatbuffer (size; names are never used)."""
    from tensorflow.lite.tools import flatbuffer_utils

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.tflite", Path(tmp) / "out.tflite"
        src.write_bytes(flatbuffer)
        model = flatbuffer_utils.read_model(str(src))
        flatbuffer_utils.strip_strings(model)
        flatbuffer_utils.write_model(model, str(dst))
        return dst.read_bytes()


def export_twin(model: Any, model_config: ModelConfig) -> Any:
    """The batch-1 ``tf_keras`` copy of a trained Keras model (built from ``model_config``), for conversion."""
    twin = build_model(model_config, batch_size=1, export=True)
    # By name, not by position: an LSTM's kernel and recurrent kernel can have the same shape, so a
    # positional copy in another order would load without error and compute something else.
    for layer in twin.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return twin


def convert_models(model: Any, representative: np.ndarray) -> tuple[bytes, bytes]:
    """Convert a batch-1 Keras model to ``(float, int8)`` TFLite flatbuffers.

    Parameters
    ----------
    model
        A Keras model with a fixed batch size of 1: the ``tf_keras`` twin from :func:`export_twin`
        (a Keras 3 LSTM does not convert to builtins).
    representative
        Normalised windows ``(n, n_frames, n_features)`` for calibrating int8 ranges.
    """
    import tensorflow as tf

    # The Keras export path can print the traced signature to stdout; keep CLI output readable.
    with contextlib.redirect_stdout(io.StringIO()):
        float_bytes = tf.lite.TFLiteConverter.from_keras_model(model).convert()

    def rep():
        for w in representative:
            yield [w[None].astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            int8_bytes = conv.convert()
    except Exception as exc:  # the converter raises assorted internal error types
        raise ExportError(f"full-int8 conversion failed: {exc}") from exc
    return _strip(float_bytes), _strip(int8_bytes)


def _op_table(path: str | os.PathLike) -> tuple[list[dict[str, Any]], dict[int, np.dtype]]:
    """Ops and tensor dtypes of a ``.tflite`` file as written (LiteRT without the XNNPACK
    delegate, which would otherwise replace ops by one ``DELEGATE`` node)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    dtypes = {t["index"]: np.dtype(t["dtype"]) for t in it.get_tensor_details()}
    return it._get_ops_details(), dtypes  # noqa: SLF001 - the runtimes' only op listing


def _op_names(ops: list[dict[str, Any]]) -> list[str]:
    return sorted({op["op_name"] for op in ops})


def _float_ops(ops: list[dict[str, Any]], dtypes: dict[int, np.dtype]) -> list[str]:
    found = set()
    for op in ops:
        tensors = [i for i in list(op["inputs"]) + list(op["outputs"]) if i >= 0]
        if any(dtypes.get(i) == np.float32 for i in tensors):
            found.add(op["op_name"])
    return sorted(found)


def model_ops(path: str | os.PathLike) -> list[str]:
    """Op names of a ``.tflite`` file as written."""
    return _op_names(_op_table(path)[0])


def float_tensor_ops(path: str | os.PathLike) -> list[str]:
    """Ops of a model that consume or produce float32 tensors (for a full-int8 model: none but
    ``QUANTIZE``/``DEQUANTIZE`` of constants should appear)."""
    return _float_ops(*_op_table(path))


def check_builtin_int8(path: str | os.PathLike) -> list[str]:
    """Raise :class:`ExportError` unless ``path`` is a pure-builtin, integer-only model; return its ops."""
    table, dtypes = _op_table(path)
    ops = _op_names(table)
    bad = [op for op in ops if any(m in op.upper() for m in DISALLOWED_OP_MARKERS)]
    if bad:
        raise ExportError(f"{path}: ops {bad} are not plain TFLite builtins; the device runtime cannot run them")
    floats = _float_ops(table, dtypes)
    if floats:
        raise ExportError(f"{path}: ops {floats} compute in float; the model is not full-integer")
    return ops


def clip_scores(
    detector: Detector, paths: Sequence[Path], class_labels: Sequence[str | None] | None = None
) -> np.ndarray:
    """Clip scores (mean window score) of wav files through a detector (the device path)."""
    labels = class_labels if class_labels is not None else [None] * len(paths)
    out = np.empty(len(paths), dtype=np.float64)
    for i, (p, lab) in enumerate(zip(paths, labels)):
        samples, sr = read_wav(p)
        out[i] = detector.score_clip(samples, sr=sr, class_label=lab)
    return out


def _threshold(scores: np.ndarray, *, false_alarm_rate: float, clip_s: float | None, source_clips: str) -> Threshold:
    value = float(np.quantile(scores, 1.0 - false_alarm_rate))
    per_day = None if not clip_s else false_alarm_rate * 86400.0 / clip_s
    return Threshold(
        value=value,
        method="quantile",
        source="training",
        false_alarms_per_day=per_day,
        period_s=clip_s,
        details={
            "description": (
                f"{100 * (1 - false_alarm_rate):g}th percentile of int8 clip scores on {len(scores)} "
                f"{source_clips} normal clips: about {100 * false_alarm_rate:g}% of normal clips alarm; "
                "calibrate on the device for a false-alarm rate per day"
            ),
            "false_alarm_rate_per_clip": false_alarm_rate,
            "n_clips": int(len(scores)),
            "score_mean": float(np.mean(scores)),
            "score_std": float(np.std(scores)),
        },
    )


def export_bundle(
    result: TrainResult,
    out_dir: str | os.PathLike,
    *,
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    provenance: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> Bundle:
    """Convert, check and write a bundle directory.

    Parameters
    ----------
    result
        A training run from :func:`trainer.train.train`.
    out_dir
        The bundle directory (created; existing model files are replaced).
    false_alarm_rate
        Fraction of validation normal clips above the exported threshold.
    provenance, metrics
        Extra entries for ``bundle.json`` (data root, protocol, …; evaluation results).

    Returns
    -------
    Bundle
        The written bundle (read back with :func:`edge_asd.bundle.read_bundle` to double-check).

    Raises
    ------
    ExportError
        Conversion failed or produced ops a device runtime cannot run.
    """
    if not 0 < false_alarm_rate < 1:
        raise ParameterError(f"false_alarm_rate must be in (0, 1), got {false_alarm_rate}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    twin = export_twin(result.model, result.model_config)
    float_bytes, int8_bytes = convert_models(twin, result.representative)
    paths = {which: out / name for which, name in MODEL_FILES.items()}
    for which, data in (("float", float_bytes), ("int8", int8_bytes)):
        tmp = paths[which].with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, paths[which])
    ops = check_builtin_int8(paths["int8"])
    int8_model = TFLiteModel(paths["int8"])
    if int8_model.input_quant is None or int8_model.output_quant is None:
        raise ExportError(f"{paths['int8']}: input/output are not int8")
    info = ModelInfo(
        kind=result.model_config.kind,
        objective=result.model_config.objective,
        score=result.score_kind,
        input_shape=int8_model.input_shape,
        output_shape=int8_model.output_shape,
        classes=result.classes,
        quantization={"input": int8_model.input_quant, "output": int8_model.output_quant},
        sha256={which: file_sha256(p) for which, p in paths.items()},
    )
    del int8_model
    prov = {
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "edge_asd_version": edge_asd.__version__,
        "seed": result.train_config.seed,
        "python": platform.python_version(),
        "tensorflow": _tf_version(),
        "int8_ops": ops,
        "int8_size_bytes": paths["int8"].stat().st_size,
        "float_size_bytes": paths["float"].stat().st_size,
        "conversion": "tf_keras batch-1 twin (fused LSTM) → TFLiteConverter.from_keras_model; "
        "int8: Optimize.DEFAULT, TFLITE_BUILTINS_INT8, int8 input/output, "
        f"{len(result.representative)} representative training windows (random, plus each feature's lowest "
        "and highest)",
        **describe(result),
        **dict(provenance or {}),
    }
    provisional = Threshold(value=0.0, method="none", source="training")
    bundle = Bundle(
        path=out,
        features=result.features,
        window=result.window,
        normalization=result.normalization,
        model=info,
        threshold=provisional,
        provenance=prov,
        metrics=dict(metrics or {}),
    )
    # Threshold: validation normals (never seen by the optimiser); without any, the training clips.
    if result.score_kind == "anomaly_prob":
        normal = [(p, None) for p, lab in zip(result.val_paths, result.val_labels) if lab == "normal"]
    else:
        use_labels = result.score_kind == "neg_log_prob"
        normal = [(p, lab if use_labels else None) for p, lab in zip(result.val_paths, result.val_labels)]
    source_clips = "validation"
    if not normal:
        normal = [(p, lab if result.score_kind == "neg_log_prob" else None) for p, lab in zip(result.train_paths, result.train_labels) if lab != "anomaly"]
        source_clips = "training"
    det = Detector(bundle, model="int8")
    scores = clip_scores(det, [p for p, _ in normal], [lab for _, lab in normal])
    first, sr = read_wav(normal[0][0])
    bundle = dataclasses.replace(
        bundle,
        threshold=_threshold(scores, false_alarm_rate=false_alarm_rate, clip_s=len(first) / sr, source_clips=source_clips),
    )
    write_bundle(bundle)
    return bundle


def _tf_version() -> str:
    import tensorflow as tf

    return tf.__version__


def with_metrics(bundle: Bundle, metrics: Mapping[str, Any]) -> Bundle:
    """Store evaluation metrics in an existing bundle's ``bundle.json``."""
    new = dataclasses.replace(bundle, metrics={**dict(bundle.metrics), **dict(metrics)})
    write_bundle(new)
    return new


__all__ += ["export_twin", "float_tensor_ops", "with_metrics"]
