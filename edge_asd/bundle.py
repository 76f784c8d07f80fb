"""The model bundle: the contract between the trainer and the device.

A bundle is a directory holding ``bundle.json``, ``model_int8.tflite`` and ``model_float.tflite``
(see ``docs`` in the design notes). This module reads, validates and writes ``bundle.json``; it never
imports TensorFlow. Every check happens once, here, at load time: a bundle that loads is one the
device can run.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np

from edge_asd.errors import BundleError, ParameterError
from edge_asd.frontend.config import FeatureConfig

__all__ = [
    "SCHEMA_VERSION",
    "BUNDLE_JSON",
    "MODEL_FILES",
    "SCORE_KINDS",
    "WindowConfig",
    "Normalization",
    "QuantParams",
    "ModelInfo",
    "Threshold",
    "Bundle",
    "read_bundle",
    "write_bundle",
    "update_threshold",
    "file_sha256",
]

SCHEMA_VERSION = 1
BUNDLE_JSON = "bundle.json"
MODEL_FILES = {"int8": "model_int8.tflite", "float": "model_float.tflite"}
SCORE_KINDS = ("reconstruction_mse", "neg_log_prob", "anomaly_prob")
"""How a window's model output becomes an anomaly score (higher = more anomalous):

- ``reconstruction_mse``: mean squared error between the normalised input window and the output;
- ``neg_log_prob``: ``−log softmax(logits)[class_index]`` for the device's own machine class;
- ``anomaly_prob``: ``softmax(logits)[1]``, probability of the anomaly class (supervised models).
"""


def _utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


@dataclass(frozen=True, kw_only=True)
class WindowConfig:
    """How consecutive feature frames are grouped into one model input."""

    n_frames: int
    """Frames per window."""
    hop_frames: int
    """Frames between the starts of consecutive windows."""

    def __post_init__(self) -> None:
        if self.n_frames < 1 or self.hop_frames < 1:
            raise ParameterError(f"window: n_frames and hop_frames must be >= 1, got {self.n_frames}, {self.hop_frames}")


@dataclass(frozen=True, kw_only=True)
class Normalization:
    """Per-feature standardisation ``(x − mean) / std`` with statistics of the training frames."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std):
            raise ParameterError("normalization: mean and std differ in length")
        if not all(np.isfinite(self.mean)) or not all(np.isfinite(self.std)) or min(self.std, default=1) <= 0:
            raise ParameterError("normalization: mean/std must be finite and std > 0")

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, 1 / std)`` as float32 arrays for the hot path."""
        return np.asarray(self.mean, np.float32), (1.0 / np.asarray(self.std, np.float64)).astype(np.float32)


@dataclass(frozen=True, kw_only=True)
class QuantParams:
    """Affine int8 quantisation ``real = scale · (q − zero_point)`` of a model input or output."""

    scale: float
    zero_point: int


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    """What the network is, what it eats and how its output becomes a score."""

    kind: str
    """``dense-ae``, ``conv-ae``, ``lstm-ae`` or ``cnn-lstm``."""
    objective: Literal["reconstruction", "id", "supervised"]
    score: str
    """One of :data:`SCORE_KINDS`."""
    input_shape: tuple[int, ...]
    """Model input shape including the batch dimension (always 1)."""
    output_shape: tuple[int, ...]
    classes: tuple[str, ...] = ()
    """Class labels of the output logits (``id`` and ``supervised`` objectives)."""
    quantization: Mapping[str, QuantParams] = field(default_factory=dict)
    """``{"input": ..., "output": ...}`` of the int8 model, as read from the converted model."""
    sha256: Mapping[str, str] = field(default_factory=dict)
    """``{"int8": ..., "float": ...}``: digests of the model files, to catch truncation and mix-ups."""

    def __post_init__(self) -> None:
        if self.score not in SCORE_KINDS:
            raise ParameterError(f"model.score must be one of {SCORE_KINDS}, got {self.score!r}")
        if self.score != "reconstruction_mse" and len(self.classes) < 2:
            raise ParameterError(f"model.score {self.score!r} needs at least two classes")


@dataclass(frozen=True, kw_only=True)
class Threshold:
    """The decision threshold on clip / period scores, and where it came from."""

    value: float
    method: str
    """E.g. ``"gamma-fit"`` or ``"quantile"``; a human-readable description goes in ``details``."""
    source: str
    """``"training"`` (set at export from validation normals) or ``"device"`` (calibrated on site)."""
    false_alarms_per_day: float | None = None
    period_s: float | None = None
    """Length of the scoring period the rate refers to, seconds."""
    created: str = field(default_factory=_utcnow)
    details: Mapping[str, Any] = field(default_factory=dict)
    history: tuple[Mapping[str, Any], ...] = ()
    """Earlier thresholds, newest last (calibration keeps them)."""

    def __post_init__(self) -> None:
        if not np.isfinite(self.value):
            raise ParameterError(f"threshold.value must be finite, got {self.value}")


@dataclass(frozen=True, kw_only=True)
class Bundle:
    """A loaded, validated model bundle."""

    path: Path
    features: FeatureConfig
    window: WindowConfig
    normalization: Normalization
    model: ModelInfo
    threshold: Threshold
    provenance: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def model_path(self, which: Literal["int8", "float"] = "int8") -> Path:
        return self.path / MODEL_FILES[which]

    def to_json(self) -> dict[str, Any]:
        """The ``bundle.json`` object."""
        model = dataclasses.asdict(self.model)
        model["quantization"] = {k: dataclasses.asdict(v) for k, v in self.model.quantization.items()}
        return {
            "schema_version": self.schema_version,
            "features": self.features.to_dict(),
            "window": dataclasses.asdict(self.window),
            "normalization": dataclasses.asdict(self.normalization),
            "model": model,
            "threshold": dataclasses.asdict(self.threshold),
            "provenance": dict(self.provenance),
            "metrics": dict(self.metrics),
        }


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _section(data: Mapping[str, Any], key: str, where: Path) -> Any:
    if key not in data:
        raise BundleError(f"{where}: missing '{key}'; the bundle is incomplete, re-export it with asd-train")
    return data[key]


def _parse(data: Any, path: Path) -> Bundle:
    where = path / BUNDLE_JSON
    if not isinstance(data, dict):
        raise BundleError(f"{where}: must hold a JSON object")
    version = _section(data, "schema_version", where)
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{where}: schema version {version!r} is not supported by this edge-asd (reads version "
            f"{SCHEMA_VERSION}); upgrade edge-asd or re-export the bundle"
        )
    try:
        features = FeatureConfig.from_dict(_section(data, "features", where))
        window = WindowConfig(**_section(data, "window", where))
        norm_raw = _section(data, "normalization", where)
        normalization = Normalization(mean=tuple(norm_raw["mean"]), std=tuple(norm_raw["std"]))
        model_raw = dict(_section(data, "model", where))
        model_raw["input_shape"] = tuple(model_raw["input_shape"])
        model_raw["output_shape"] = tuple(model_raw["output_shape"])
        model_raw["classes"] = tuple(model_raw.get("classes", ()))
        model_raw["quantization"] = {k: QuantParams(**v) for k, v in model_raw.get("quantization", {}).items()}
        model = ModelInfo(**model_raw)
        thr_raw = dict(_section(data, "threshold", where))
        thr_raw["history"] = tuple(thr_raw.get("history", ()))
        threshold = Threshold(**thr_raw)
    except BundleError:
        raise
    except (ParameterError, TypeError, KeyError, ValueError) as exc:
        raise BundleError(f"{where}: invalid content ({exc}); re-export the bundle with asd-train") from exc
    if len(normalization.mean) != features.n_features:
        raise BundleError(
            f"{where}: normalization has {len(normalization.mean)} values but the front end makes "
            f"{features.n_features} features per frame; the bundle is inconsistent, re-export it"
        )
    n_in = int(np.prod(model.input_shape[1:]))
    if model.input_shape[:1] != (1,) or n_in != window.n_frames * features.n_features:
        raise BundleError(
            f"{where}: model input {model.input_shape} does not fit windows of {window.n_frames} frames × "
            f"{features.n_features} features (batch 1); the bundle is inconsistent, re-export it"
        )
    return Bundle(
        path=path,
        features=features,
        window=window,
        normalization=normalization,
        model=model,
        threshold=threshold,
        provenance=data.get("provenance", {}),
        metrics=data.get("metrics", {}),
        schema_version=version,
    )


def read_bundle(path: str | os.PathLike, *, verify_files: bool = True) -> Bundle:
    """Load and validate a bundle directory.

    Parameters
    ----------
    path
        The bundle directory (or its ``bundle.json``).
    verify_files
        Check that both model files exist and match their recorded SHA-256 (catches truncated or
        swapped files before an interpreter sees them).

    Raises
    ------
    BundleError
        Missing directory or file, invalid JSON, unknown schema version, inconsistent content, or a
        model file that is missing or does not match its digest. The message names the file.
    """
    path = Path(path)
    if path.name == BUNDLE_JSON:
        path = path.parent
    if not path.is_dir():
        raise BundleError(f"{path}: no such bundle directory; train one with 'asd-train fit' or check the path")
    meta = path / BUNDLE_JSON
    if not meta.is_file():
        raise BundleError(f"{meta}: missing; {path} is not a model bundle")
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{meta}: not valid JSON ({exc}); the file is damaged, re-export the bundle") from exc
    bundle = _parse(data, path)
    if verify_files:
        for which, name in MODEL_FILES.items():
            model_file = path / name
            if not model_file.is_file():
                raise BundleError(f"{model_file}: missing; the bundle is incomplete, re-export it")
            expected = bundle.model.sha256.get(which)
            if expected and file_sha256(model_file) != expected:
                raise BundleError(
                    f"{model_file}: does not match the digest in {meta} (truncated, corrupt or from "
                    "another bundle); re-copy the bundle"
                )
    return bundle


def _atomic_write_text(target: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bundle(bundle: Bundle) -> Path:
    """Write ``bundle.json`` into ``bundle.path`` atomically (the model files are written by the
    exporter). Returns the path of ``bundle.json``."""
    bundle.path.mkdir(parents=True, exist_ok=True)
    target = bundle.path / BUNDLE_JSON
    try:
        _atomic_write_text(target, json.dumps(bundle.to_json(), indent=2, sort_keys=False) + "\n")
    except OSError as exc:
        raise BundleError(f"{target}: cannot be written ({exc.strerror}); check free space and permissions") from exc
    return target


def update_threshold(path: str | os.PathLike, threshold: Threshold) -> Bundle:
    """Replace a bundle's threshold atomically, keeping the previous one in ``threshold.history``."""
    bundle = read_bundle(path, verify_files=False)
    old = dataclasses.asdict(bundle.threshold)
    history = tuple(old.pop("history", ())) + (old,)
    new = dataclasses.replace(bundle, threshold=dataclasses.replace(threshold, history=history))
    write_bundle(new)
    return new
