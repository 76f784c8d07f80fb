"""Export a trained model into a bundle: float and full-int8 TFLite plus ``bundle.json``.

- The network is rebuilt with a fixed batch of 1 in ``tf_keras``, whose LSTMs convert to the fused
  ``UNIDIRECTIONAL_SEQUENCE_LSTM`` builtin (see :mod:`trainer.models`), and the trained weights are
  copied in layer by layer.
- ``model_float.tflite``: the float reference. ``model_int8.tflite``: full-integer post-training
  quantisation (``TFLITE_BUILTINS_INT8``, int8 input and output) calibrated on training windows.
- Tensor names are stripped from both files (the runtime addresses tensors by index).
- Quantisation parameters are read back from the converted model, never computed here.
- Score scaling (the factory one): mean and std of the int8 model's *window* scores on the held-out
  validation normal clips (training clips when there are none), so exported scores are in standard
  deviations of normal window scores.
- The threshold is set the way ``edge-asd calibrate`` sets it: the same clips are played as one
  stream through the device path (:func:`edge_asd.decision.calibration.score_periods`, period means at the
  service's default period) and a gamma tail fit gives the threshold for ``false_alarms_per_day``.
  With fewer periods than a fit needs, the threshold is *provisional* (the highest validation score
  plus a margin) and says so: calibrate or enroll on site.
- A scoring back end (``backend=``, :mod:`trainer.backends`): fitted on the int8 model's error
  vectors of the training windows (target-domain clips, if any, go to its site slot), stored as
  ``backend.npz``; score scaling and threshold are then fitted on the back end's scores.
  :func:`add_backend` attaches one to an exported bundle without converting the model again.
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
from edge_asd.decision.alarm import AlarmConfig
from edge_asd.audio.sources import FileListSource
from edge_asd.audio.wav import wav_info
from edge_asd.scoring.backends import save_backend
from edge_asd.scoring.bundle import (
    MODEL_FILES, VECTOR_SCORES, BackendRef, Bundle, Enrollment, EnrollmentValues, ModelInfo, ScoreScaling, Threshold,
    file_sha256, read_bundle, write_bundle,
)
from edge_asd.decision.calibration import DEFAULT_FALSE_ALARMS_PER_DAY as _DEVICE_DEFAULT_RATE, MIN_PERIODS, SECONDS_PER_DAY, fit_alarm_rules, score_periods, threshold_record
from edge_asd.scoring.detector import Detector
from edge_asd.frontend import compute_features
from edge_asd.errors import EdgeASDError, ParameterError
from edge_asd.scoring.runtime import TFLiteModel
from trainer.models import ModelConfig, build_model
from trainer.train import TrainResult, describe

__all__ = [
    "ExportError",
    "DISALLOWED_OP_MARKERS",
    "convert_int8",
    "export_threshold",
    "window_score_scaling",
    "convert_models",
    "model_ops",
    "check_builtin_int8",
    "export_bundle",
    "clip_scores",
    "DEFAULT_FALSE_ALARMS_PER_DAY",
    "EXPORT_PERIOD_S",
    "PROVISIONAL_MARGIN",
    "BACKEND_FILE",
    "add_backend",
    "attach_backend",
]

BACKEND_FILE = "backend.npz"
"""The exported (factory) back end's file in the bundle directory."""

DEFAULT_FALSE_ALARMS_PER_DAY = _DEVICE_DEFAULT_RATE
"""Target false-alarm rate of the exported alarm rules, per day, both rules together (as ``edge-asd calibrate``: one a week)."""
EXPORT_PERIOD_S = AlarmConfig().period_s
EXPORT_CALIBRATED_FOR = {"period_s": EXPORT_PERIOD_S, "model": "int8"}
"""What the exported threshold was measured with: the service refuses to run it at another period
length or with the float model (its rate would not be the one stated) until it is calibrated there."""
"""Period the exported threshold is fitted for, seconds: the service's default ``alarm.period_s``."""
PROVISIONAL_MARGIN = 1.0
"""Added to the highest validation score when too little audio supports a fit: one standard
deviation of normal window scores (scores are standardised), more than a period mean of many
windows usually moves."""

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
    return _strip(float_bytes), convert_int8(model, representative)


def convert_int8(model: Any, representative: np.ndarray) -> bytes:
    """The full-integer (int8 in, int8 out, builtin int8 ops) TFLite flatbuffer of a batch-1 Keras
    model, its ranges calibrated on ``representative`` windows (see :func:`convert_models`)."""
    import tensorflow as tf

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
    return _strip(int8_bytes)


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


def _normal_clips(result: TrainResult) -> tuple[list[tuple[Path, str | None]], str]:
    """Normal clips never seen by the optimiser (validation), else the training ones, with the
    class label each is scored against (``neg_log_prob`` only), and which set they are."""
    use_labels = result.score_kind == "neg_log_prob"
    if result.score_kind == "anomaly_prob":
        normal = [(Path(p), None) for p, lab in zip(result.val_paths, result.val_labels) if lab == "normal"]
    else:
        normal = [(Path(p), lab if use_labels else None) for p, lab in zip(result.val_paths, result.val_labels)]
    if normal:
        return normal, "validation"
    train = [(Path(p), lab if use_labels else None) for p, lab in zip(result.train_paths, result.train_labels) if lab not in ("anomaly", "abnormal")]
    return train, "training"


def _factory_score_scaling(bundle: Bundle, normal: Sequence[tuple[Path, str | None]], source_clips: str) -> tuple[ScoreScaling, str]:
    """Mean and std of the int8 model's raw window scores on ``normal`` (bundle with identity scaling)."""
    return window_score_scaling(Detector(dataclasses.replace(bundle, score_scaling=ScoreScaling()), model="int8"),
                                normal, source_clips)


def window_score_scaling(det: Detector, normal: Sequence[tuple[Path, str | None]], source_clips: str) -> tuple[ScoreScaling, str]:
    """Mean and std of ``det``'s window scores on ``normal`` clips ``(path, class label)``, and a
    sentence saying so; ``source_clips`` names the clips in it and in errors."""
    bundle = det.bundle
    scores = []
    for path, label in normal:
        samples, _ = read_wav(path, sr=bundle.features.sr)
        scores.append(det.score_windows(compute_features(samples, bundle.features), class_label=label))
    raw = np.concatenate(scores)
    if raw.size < 2 or not np.isfinite(raw).all():
        raise ExportError(f"{len(normal)} {source_clips} normal clip(s) give {raw.size} window score(s); a score scale needs more audio")
    mean, std = float(raw.mean()), float(raw.std())
    if not std > 0:
        raise ExportError(f"the int8 model gives every {source_clips} window the same score ({mean:.6g}); it cannot rank anything")
    return ScoreScaling(mean=mean, std=std), (
        f"mean and std of {raw.size} int8 window scores of {len(normal)} {source_clips} normal clips"
    )


def export_threshold(
    bundle: Bundle, normal: Sequence[tuple[Path, str | None]], *, false_alarms_per_day: float, source_clips: str
) -> Threshold:
    """The threshold for ``false_alarms_per_day`` at :data:`EXPORT_PERIOD_S` periods, fitted as
    ``edge-asd calibrate`` fits it; provisional (and saying so) when the clips are too few."""
    groups: dict[tuple[str | None, int], list[Path]] = {}
    for path, label in normal:
        # One stream per class (a detector listens to one machine class) and channel count.
        groups.setdefault((label, wav_info(path)[1]), []).append(path)
    periods, audio_s = [], 0.0
    for (label, _), files in groups.items():
        det = Detector(bundle, model="int8", class_label=label)
        scores, seconds = score_periods(det, FileListSource(files, sr=bundle.features.sr), period_s=EXPORT_PERIOD_S)
        periods.append(scores)
        audio_s += seconds
    period_scores = np.concatenate(periods)
    what = f"{len(normal)} {source_clips} normal clips ({audio_s:.0f} s) played as the service hears them"
    reason = (f"{period_scores.size} period(s) of {EXPORT_PERIOD_S:g} s (a fit needs >= {MIN_PERIODS}, i.e. "
              f">= {MIN_PERIODS * EXPORT_PERIOD_S:g} s of {source_clips} audio)")
    if period_scores.size >= MIN_PERIODS:
        try:
            rules = fit_alarm_rules(period_scores, period_s=EXPORT_PERIOD_S, false_alarms_per_day=false_alarms_per_day)
        except ParameterError as exc:
            reason = str(exc)
        else:
            return threshold_record(rules, input_desc=what, model="int8", source="training", calibrated_for=EXPORT_CALIBRATED_FOR)
    # Too little audio for a tail fit: stay above everything seen. Clips shorter than half a period
    # give no period at all; their clip means then stand in (they spread more: conservative).
    pool = period_scores if period_scores.size else clip_scores(
        Detector(bundle, model="int8"), [p for p, _ in normal], [lab for _, lab in normal])
    statement = (f"provisional: too little validation audio, calibrate or enroll on site ({reason}); "
                 f"threshold = highest of {pool.size} {'period' if period_scores.size else 'clip'} score(s) "
                 f"({float(pool.max()):.6g}) + {PROVISIONAL_MARGIN:g}")
    return Threshold(
        value=float(pool.max()) + PROVISIONAL_MARGIN,
        method="provisional-max-plus-margin",
        source="training",
        false_alarms_per_day=None,
        period_s=EXPORT_PERIOD_S,
        calibrated_for=EXPORT_CALIBRATED_FOR,
        details={
            "statement": statement,
            "input": what,
            "target_false_alarms_per_day": false_alarms_per_day,
            "n_periods": int(period_scores.size),
            "audio_s": audio_s,
            "max_score": float(pool.max()),
            "margin": PROVISIONAL_MARGIN,
        },
    )


def export_bundle(
    result: TrainResult,
    out_dir: str | os.PathLike,
    *,
    false_alarms_per_day: float = DEFAULT_FALSE_ALARMS_PER_DAY,
    provenance: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    backend: str = "none",
    backend_params: Mapping[str, Any] | None = None,
    representation: str | None = None,
    target_paths: Sequence[Path] = (),
    cache_dir: Path | None = None,
    log=lambda message: None,
) -> Bundle:
    """Convert, check and write a bundle directory.

    Parameters
    ----------
    result
        A training run from :func:`trainer.train.train`.
    out_dir
        The bundle directory (created; existing model files are replaced).
    false_alarms_per_day
        Target rate of the exported threshold: normal :data:`EXPORT_PERIOD_S` periods above it per
        day, fitted as ``edge-asd calibrate`` fits it on the validation normal clips.
    provenance, metrics
        Extra entries for ``bundle.json`` (data root, protocol, …; evaluation results).
    backend, backend_params, representation
        A scoring back end (:data:`trainer.backends.BACKEND_CHOICES`; ``"none"``: the model's own
        score), hyper-parameter overrides and the representation it scores (default
        :data:`trainer.backends.DEFAULT_REPRESENTATION`); see :func:`add_backend`.
    target_paths
        Training clips of a second domain (DCASE's target domain): they go to the back end's site
        slot (k-NN site bank, selective Mahalanobis' target statistics), not to its factory part.

    Returns
    -------
    Bundle
        The written bundle (read back with :func:`edge_asd.scoring.bundle.read_bundle` to double-check).

    Raises
    ------
    ExportError
        Conversion failed or produced ops a device runtime cannot run.
    """
    if not (np.isfinite(false_alarms_per_day) and 0 < false_alarms_per_day < SECONDS_PER_DAY / EXPORT_PERIOD_S):
        raise ParameterError(
            f"false_alarms_per_day must be > 0 and below one per period ({SECONDS_PER_DAY / EXPORT_PERIOD_S:g}), "
            f"got {false_alarms_per_day}"
        )
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
    # Score scaling and threshold from normal clips never seen by the optimiser (else training clips).
    normal, source_clips = _normal_clips(result)
    if not normal:
        raise ExportError("no normal clips to set the score scale and threshold from")
    if backend == "none" and result.score_kind == "embedding":
        raise ParameterError(f"a {result.model_config.kind} gives embeddings, which only a scoring back end scores: "
                             "choose --backend (knn, mahalanobis, selective-mahalanobis, gmm, ocsvm)")
    if backend != "none":
        if result.score_kind not in VECTOR_SCORES:
            raise ParameterError(f"--backend {backend} scores reconstruction error vectors or embeddings; a {result.model_config.kind} "
                                 f"({result.score_kind}) model gives neither: use an autoencoder recipe or --backend none")
        target = {Path(p) for p in target_paths}
        bundle = _fit_and_attach(
            bundle, backend, train_paths=[p for p in result.train_paths if Path(p) not in target],
            val_paths=[p for p in result.val_paths if Path(p) not in target], target_paths=sorted(target),
            seed=result.train_config.seed, params=backend_params, representation=representation, cache_dir=cache_dir, log=log,
        )
        # Target clips are in the site slot (a k-NN window is at distance 0 from itself): keep them
        # out of the clips the score scale and threshold are fitted on.
        normal = [(p, lab) for p, lab in normal if Path(p) not in target] or normal
    return _calibrate(bundle, normal, source_clips, false_alarms_per_day=false_alarms_per_day)


def _calibrate(bundle: Bundle, normal: Sequence[tuple[Path, str | None]], source_clips: str, *, false_alarms_per_day: float) -> Bundle:
    """Fit the factory score scaling and threshold on ``normal`` clips, record them as the factory
    values, write ``bundle.json``."""
    scaling, scaling_how = _factory_score_scaling(bundle, normal, source_clips)
    bundle = dataclasses.replace(bundle, score_scaling=scaling, provenance={**dict(bundle.provenance), "score_scaling": scaling_how})
    threshold = export_threshold(bundle, normal, false_alarms_per_day=false_alarms_per_day, source_clips=source_clips)
    bundle = dataclasses.replace(
        bundle,
        threshold=threshold,
        # The factory values, kept so that 'edge-asd enroll --rollback' can restore them exactly.
        enrollment=Enrollment(factory=EnrollmentValues(normalization=bundle.normalization, score_scaling=scaling,
                                                       threshold=threshold, backend=bundle.backend)),
    )
    write_bundle(bundle)
    return bundle


def attach_backend(bundle: Bundle, fitted: Any, *, representation: str, fitted_on: Mapping[str, Any]) -> Bundle:
    """Write a fitted back end (:class:`trainer.backends.FittedBackend`) as the bundle's
    :data:`BACKEND_FILE` and return the bundle referring to it (``bundle.json`` not written)."""
    path = save_backend(fitted.backend, bundle.path / BACKEND_FILE)
    ref = BackendRef(kind=fitted.backend.kind, file=BACKEND_FILE, sha256=file_sha256(path), representation=representation,
                     dim=fitted.backend.dim, summary=fitted.backend.describe(), fitted_on=dict(fitted_on))
    return dataclasses.replace(bundle, backend=ref)


def _representation_for(bundle: Bundle, representation: str | None) -> str:
    """The back end's representation: ``embedding`` for an embedding model, else the one asked for
    (default :data:`trainer.backends.DEFAULT_REPRESENTATION`), checked against the model."""
    from edge_asd.scoring.backends import ERROR_REPRESENTATIONS
    from trainer.backends import DEFAULT_REPRESENTATION

    if bundle.model.score == "embedding":
        if representation not in (None, "embedding"):
            raise ParameterError(f"a {bundle.model.kind} gives embeddings: its back end scores representation 'embedding', "
                                 f"not {representation!r}")
        return "embedding"
    representation = representation or DEFAULT_REPRESENTATION
    if representation not in ERROR_REPRESENTATIONS:
        raise ParameterError(f"an autoencoder's back end scores one of {ERROR_REPRESENTATIONS}, not {representation!r}")
    return representation


def _fit_and_attach(
    bundle: Bundle, kind: str, *, train_paths: Sequence[Path], val_paths: Sequence[Path], target_paths: Sequence[Path],
    seed: int, params: Mapping[str, Any] | None, representation: str | None, cache_dir: Path | None, log,
) -> Bundle:
    from trainer.backends import clip_vectors, describe_fit, fit_backend, has_site_slot

    representation = _representation_for(bundle, representation)
    if not train_paths:
        raise ExportError(f"no training clips to fit the {kind} back end on")
    det = Detector(dataclasses.replace(bundle, backend=None), model="int8", backend=None)
    log(f"back end {kind}: {'embeddings' if representation == 'embedding' else 'error vectors'} ({representation}) of {len(train_paths)} training, {len(val_paths)} validation "
        f"and {len(target_paths)} target-domain clips through the int8 model")

    def vectors(paths: Sequence[Path]) -> np.ndarray | None:
        parts = clip_vectors(det, paths, representation=representation, cache_dir=cache_dir, log=log)
        return np.concatenate(parts) if parts else None

    train_v, val_v = vectors(train_paths), vectors(val_paths)
    target_v = vectors(target_paths) if target_paths and has_site_slot(kind) else None
    fitted = fit_backend(kind, train_v, val=val_v, target=target_v, seed=seed, params=params)
    log(f"back end: {fitted.backend.describe()}")
    fitted_on = describe_fit(fitted, representation=representation, clips={
        "train": len(train_paths), "validation": len(val_paths), "target": len(target_paths) if target_v is not None else 0})
    return attach_backend(bundle, fitted, representation=representation, fitted_on=fitted_on)


def add_backend(
    bundle_path: str | os.PathLike,
    kind: str,
    *,
    train_paths: Sequence[Path],
    val_paths: Sequence[Path] = (),
    target_paths: Sequence[Path] = (),
    fitted: Any = None,
    representation: str | None = None,
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
    false_alarms_per_day: float = DEFAULT_FALSE_ALARMS_PER_DAY,
    cache_dir: Path | None = None,
    log=lambda message: None,
) -> Bundle:
    """Give an exported, never enrolled bundle a scoring back end (or replace its back end) and
    re-fit its factory score scaling and threshold on the back end's scores.

    Parameters
    ----------
    kind
        One of :data:`edge_asd.scoring.backends.BACKEND_KINDS`.
    train_paths, val_paths, target_paths
        Normal clips: the back end is fitted on ``train_paths`` (``val_paths`` choose its
        hyper-parameters, ``target_paths`` fill its site slot); score scaling and threshold come from
        ``val_paths`` (``train_paths`` when there are none), as at export.
    fitted
        An already fitted :class:`trainer.backends.FittedBackend` (on vectors of this bundle's int8
        model in ``representation``) instead of fitting one from the clips.
    """
    bundle = read_bundle(bundle_path)
    if bundle.enrollment is not None and bundle.enrollment.active == "site":
        raise ParameterError(f"{bundle.path}: is enrolled on site; run 'edge-asd enroll {bundle.path} --rollback' first")
    if bundle.model.score not in VECTOR_SCORES:
        raise ParameterError(f"{bundle.path}: a back end needs a reconstruction or embedding model, this bundle's score is {bundle.model.score!r}")
    base = dataclasses.replace(bundle, backend=None, score_scaling=ScoreScaling())
    target = {Path(p) for p in target_paths}
    train_paths = [p for p in train_paths if Path(p) not in target]
    val_paths = [p for p in val_paths if Path(p) not in target]  # in the site slot: they would score 0 (k-NN)
    if fitted is None:
        base = _fit_and_attach(base, kind, train_paths=train_paths, val_paths=val_paths, target_paths=sorted(target), seed=seed,
                               params=params, representation=representation, cache_dir=cache_dir, log=log)
    else:
        representation = _representation_for(base, representation)
        base = attach_backend(base, fitted, representation=representation, fitted_on={"representation": representation, **fitted.fitted_on})
    normal = [(Path(p), None) for p in (val_paths or train_paths)]
    return _calibrate(base, normal, "validation" if val_paths else "training", false_alarms_per_day=false_alarms_per_day)


def _tf_version() -> str:
    import tensorflow as tf

    return tf.__version__


def with_metrics(bundle: Bundle, metrics: Mapping[str, Any]) -> Bundle:
    """Store evaluation metrics in an existing bundle's ``bundle.json``."""
    new = dataclasses.replace(bundle, metrics={**dict(bundle.metrics), **dict(metrics)})
    write_bundle(new)
    return new


__all__ += ["export_twin", "float_tensor_ops", "with_metrics"]
