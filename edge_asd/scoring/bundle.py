"""The model bundle: the contract between the trainer and the device.

A bundle is a directory holding ``bundle.json``, ``model_int8.tflite`` and ``model_float.tflite``
(see ``docs`` in the design notes). This module reads, validates and writes ``bundle.json``; it never
imports TensorFlow. Every check happens once, here, at load time: a bundle that loads is one the
device can run.

Schema 2 (schema 1 bundles still load, with identity score scaling and no enrollment record):

- ``score_scaling``: ``{"mean", "std"}``; the detector reports ``(raw − mean) / std`` for every
  window score, so thresholds read in standard deviations of normal window scores at every site.
- ``enrollment``: ``{"active": "factory" | "site", "factory": VALUES, "site": null | VALUES + audio,
  "history": [...]}`` where ``VALUES`` is ``{"normalization", "score_scaling", "threshold"}`` as
  exported (factory) or as fitted on site by ``edge-asd enroll``. The *active* values stay in the
  top-level ``normalization``, ``score_scaling`` and ``threshold`` sections, which are the only ones
  the detector reads; ``edge-asd enroll --rollback`` copies the factory ones back unchanged.

Schema 3 = schema 2 plus an optional scoring back end (:mod:`edge_asd.scoring.backends`):

- ``backend``: ``{"kind", "file", "sha256", "representation", "dim", "summary", "fitted_on"}``, the
  *active* back end, a ``.npz`` file in the bundle directory that replaces the model's window score
  by a score over the window's error vector. ``enrollment.factory.backend`` keeps the exported one
  and ``enrollment.site.backend`` the one ``edge-asd enroll`` wrote (with its site bank / target
  statistics); rollback makes the factory one active again.

A bundle is written in schema 3 only when it carries a back end, so that an edge-asd older than
back ends refuses it (``schema version 3 is not supported``) instead of scoring plain MSE against a
threshold set in back-end units; bundles without one stay schema 2, readable by older devices.

Schema 4 = schema 3 plus an optional ensemble (``asd-train ensemble``):

- ``ensemble``: ``{"members": [{"path", "sha256"}], "combine": "mean", "score_scaling": {"mean",
  "std"}}``. Each member is a complete bundle in a sub-directory (``path``, relative; ``sha256`` of
  its ``bundle.json``) with the same features and windows as this one. The device scores every
  window with this bundle's model and each member's (each standardised by its own score scaling),
  averages the scores and standardises the average with ``ensemble.score_scaling``; the top-level
  threshold is on that combined score. Written in schema 4 only with an ensemble.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np

from edge_asd.scoring.backends import BACKEND_KINDS, REPRESENTATIONS, load_backend
from edge_asd.errors import BundleError, ParameterError
from edge_asd.frontend.config import FeatureConfig

__all__ = [
    "SCHEMA_VERSION",
    "BACKEND_SCHEMA_VERSION",
    "ENSEMBLE_SCHEMA_VERSION",
    "BUNDLE_JSON",
    "MODEL_FILES",
    "SCORE_KINDS",
    "VECTOR_SCORES",
    "WindowConfig",
    "Normalization",
    "ScoreScaling",
    "BackendRef",
    "EnsembleMember",
    "Ensemble",
    "EnrollmentValues",
    "SiteEnrollment",
    "Enrollment",
    "QuantParams",
    "ModelInfo",
    "Threshold",
    "Bundle",
    "read_bundle",
    "ensemble_problems",
    "write_bundle",
    "update_threshold",
    "file_sha256",
    "verify_backend_file",
]

SCHEMA_VERSION = 2
"""Schema of bundles without a scoring back end."""
BACKEND_SCHEMA_VERSION = 3
"""Schema of bundles with a scoring back end (see the module docstring)."""
ENSEMBLE_SCHEMA_VERSION = 4
"""Schema of ensemble bundles (see the module docstring)."""
READABLE_SCHEMAS = (1, 2, 3, 4)
"""Schema versions this edge-asd reads (1: no score scaling, no enrollment record; 3: a back end;
4: an ensemble)."""
ENSEMBLE_COMBINES = ("mean",)
"""How an ensemble combines its models' standardised window scores."""
BUNDLE_JSON = "bundle.json"
MODEL_FILES = {"int8": "model_int8.tflite", "float": "model_float.tflite"}
SCORE_KINDS = ("reconstruction_mse", "neg_log_prob", "anomaly_prob", "embedding")
"""How a window's model output becomes an anomaly score (higher = more anomalous):

- ``reconstruction_mse``: mean squared error between the normalised input window and the output;
- ``neg_log_prob``: ``−log softmax(logits)[class_index]`` for the device's own machine class;
- ``anomaly_prob``: ``softmax(logits)[1]``, probability of the anomaly class (supervised models);
- ``embedding``: the model gives an embedding; the bundle's scoring back end (required) scores it
  (:mod:`edge_asd.scoring.backends`, representation ``embedding``).
"""


VECTOR_SCORES = ("reconstruction_mse", "embedding")
"""Score kinds whose windows give a vector a scoring back end can score: an autoencoder's error
vector, an embedding model's embedding."""


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

    def is_global(self) -> bool:
        """``True`` when every band shares one std (the trainer's ``--normalization global``)."""
        return len(set(self.std)) <= 1

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "Normalization":
        return cls(mean=tuple(float(v) for v in raw["mean"]), std=tuple(float(v) for v in raw["std"]))


@dataclass(frozen=True, kw_only=True)
class ScoreScaling:
    """Standardisation of window scores: the detector reports ``(raw − mean) / std``.

    ``mean`` and ``std`` are in the units of the raw score (e.g. squared normalised dB for
    ``reconstruction_mse``); the scaled score is in standard deviations of normal window scores.
    The map is affine and increasing, so it changes no ranking (AUC) and makes thresholds read
    the same way across bundles and sites.
    """

    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0):
            raise ParameterError(f"score_scaling: mean must be finite and std finite and > 0, got {self.mean}, {self.std}")

    def apply(self, raw: Any) -> Any:
        """Scaled score(s) of raw window score(s) (a float or an array)."""
        return (raw - self.mean) / self.std

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "ScoreScaling":
        return cls(mean=float(raw["mean"]), std=float(raw["std"]))


@dataclass(frozen=True, kw_only=True)
class QuantParams:
    """Affine int8 quantisation ``real = scale · (q − zero_point)`` of a model input or output."""

    scale: float
    zero_point: int


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    """What the network is, what it eats and how its output becomes a score."""

    kind: str
    """``dense-ae``, ``conv-ae``, ``lstm-ae``, ``cnn-lstm`` or ``mobilefacenet``."""
    objective: Literal["reconstruction", "id", "supervised"]
    score: str
    """One of :data:`SCORE_KINDS`."""
    input_shape: tuple[int, ...]
    """Model input shape including the batch dimension (always 1)."""
    output_shape: tuple[int, ...]
    classes: tuple[str, ...] = ()
    """Class labels of the output logits (``id`` and ``supervised`` objectives); for ``embedding``
    models, the classes the embedding was trained to tell apart."""
    quantization: Mapping[str, QuantParams] = field(default_factory=dict)
    """``{"input": ..., "output": ...}`` of the int8 model, as read from the converted model."""
    sha256: Mapping[str, str] = field(default_factory=dict)
    """``{"int8": ..., "float": ...}``: digests of the model files, to catch truncation and mix-ups."""

    def __post_init__(self) -> None:
        if self.score not in SCORE_KINDS:
            raise ParameterError(f"model.score must be one of {SCORE_KINDS}, got {self.score!r}")
        if self.score != "reconstruction_mse" and len(self.classes) < 2:
            raise ParameterError(f"model.score {self.score!r} needs at least two classes")


DEFAULT_SHIFT_SD = 1.0
"""The shift the evidence rule is tuned to, in standard deviations of the normal period scores (k = 0.5)."""
DEFAULT_Z_CAP = 3.0
"""Standardised period scores above this count as this much evidence (a winsorised CUSUM), set a
priori: three standard deviations leave a one-sd shift's periods untouched."""


@dataclass(frozen=True, kw_only=True)
class EvidenceRule:
    """A calibrated one-sided CUSUM over standardised period scores (stored in the bundle's threshold)."""

    reference_mean: float
    """Mean of the site's normal period scores (score units)."""
    reference_std: float
    """Standard deviation of the site's normal period scores (score units), > 0."""
    decision_level: float
    """``h``: an onset when the statistic reaches it, in standard deviations."""
    false_alarms_per_week: float
    """The false-alarm rate ``h`` was calibrated for."""
    period_s: float
    """Length of the periods the scores were measured in, seconds."""
    shift_sd: float = DEFAULT_SHIFT_SD
    """The shift the rule is tuned to (``k = shift_sd / 2``), standard deviations."""
    z_cap: float = DEFAULT_Z_CAP
    """A period adds at most ``z_cap - k`` to the statistic, standard deviations: one loud period is
    the period rule's to judge, and a recording cannot show how often normal sound goes beyond its
    own highest period, so the calibration could not promise a rate for uncapped spikes."""
    method: str = "cusum-sieve-bootstrap"
    details: Mapping[str, Any] = field(default_factory=dict)
    """How it was fitted: periods, autoregression order, replicates, whether ``h`` was extrapolated, the
    expected delays (``delay_s``: shift in SD -> seconds), a statement."""

    def __post_init__(self) -> None:
        for name in ("reference_mean", "reference_std", "decision_level", "false_alarms_per_week", "period_s", "shift_sd",
                     "z_cap"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ParameterError(f"evidence.{name} must be a finite number, got {value!r}")
        for name in ("reference_std", "decision_level", "false_alarms_per_week", "period_s", "shift_sd", "z_cap"):
            if not getattr(self, name) > 0:
                raise ParameterError(f"evidence.{name} must be > 0, got {getattr(self, name)!r}")

    @property
    def allowance(self) -> float:
        """``k``: subtracted from every standardised score, standard deviations."""
        return self.shift_sd / 2

    def standardise(self, score: float) -> float:
        """A period score in standard deviations of the normal period scores."""
        return (float(score) - self.reference_mean) / self.reference_std

    def delay_s(self, shift_sd: float = 1.0) -> float | None:
        """Expected time to an onset after a shift of ``shift_sd`` begins, seconds (as fitted)."""
        value = dict(self.details.get("delay_s", {})).get(f"{shift_sd:g}")
        return None if value is None else float(value)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "EvidenceRule":
        if not isinstance(raw, Mapping):
            raise ParameterError(f"threshold.evidence must be an object, got {raw!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ParameterError(f"threshold.evidence has unknown keys {sorted(unknown)}")
        data = dict(raw)
        data["details"] = dict(data.get("details", {}))
        try:
            return cls(**data)
        except TypeError as exc:
            raise ParameterError(f"threshold.evidence is incomplete: {exc}") from exc

    def statement(self) -> str:
        d = self.details
        delay = self.delay_s(1.0)
        parts = [
            f"CUSUM over period scores standardised with mean {self.reference_mean:.4g} and sd {self.reference_std:.4g}: "
            f"k = {self.allowance:g}, alarm level h = {self.decision_level:.3g} for {self.false_alarms_per_week:g} "
            f"false alarm(s)/week at {self.period_s:g} s periods",
        ]
        bound = d.get("rate_bound_per_week")
        if bound is not None:
            parts.append(f"nine sites in ten at most {bound:.2g}/week with this much audio")
        if delay is not None:
            parts.append(f"a shift of 1 sd is heard after about {_duration(delay)} on average")
        if d.get("extrapolated"):
            parts.append("h is extrapolated beyond the simulated rates")
        return "; ".join(parts)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


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
    calibrated_for: Mapping[str, Any] = field(default_factory=dict)
    """What the scores were measured with when the threshold was set on site (``period_s``,
    ``model``, ``class_label``, ``n_channels``); the service refuses to start with other settings.
    Empty when not recorded (exported thresholds, older bundles)."""
    evidence: EvidenceRule | None = None
    """The sequential evidence rule fitted with the threshold on the same normal periods
    (:mod:`edge_asd.decision.evidence`); ``None`` in bundles from before it, or when the audio was too short
    (``details["evidence_note"]`` says how much is needed)."""

    def __post_init__(self) -> None:
        if not np.isfinite(self.value):
            raise ParameterError(f"threshold.value must be finite, got {self.value}")
        if abs(self.value) > MAX_THRESHOLD:
            raise ParameterError(f"threshold.value {self.value:g} is beyond +-{MAX_THRESHOLD:g}: no score reaches it, the "
                                 "detector would never alarm; calibrate the bundle again")
        if isinstance(self.evidence, Mapping):
            object.__setattr__(self, "evidence", EvidenceRule.from_dict(self.evidence))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def superseded_by(self, new: "Threshold") -> "Threshold":
        """``new`` with this threshold (and its history) appended to ``new.history``."""
        old = self.to_dict()
        return dataclasses.replace(new, history=tuple(old.pop("history", ())) + (old,))

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "Threshold":
        data = dict(raw)
        data["history"] = tuple(data.get("history", ()))
        data["calibrated_for"] = dict(data.get("calibrated_for", {}))
        data["value"] = float(data["value"])
        return cls(**data)


@dataclass(frozen=True, kw_only=True)
class BackendRef:
    """A scoring back end file of the bundle (:mod:`edge_asd.scoring.backends`) and what it was fitted on."""

    kind: str
    """One of :data:`edge_asd.scoring.backends.BACKEND_KINDS`."""
    file: str
    """File name inside the bundle directory (``.npz``)."""
    sha256: str
    representation: str
    """What the back end scores: one of :data:`edge_asd.scoring.backends.REPRESENTATIONS`."""
    dim: int
    """Size of the vectors (features per frame for the band representations)."""
    summary: str = ""
    """One line for ``edge-asd info`` (kind, parameters, bank sizes)."""
    fitted_on: Mapping[str, Any] = field(default_factory=dict)
    """Where the arrays came from: clips, windows, the hyper-parameters and how they were chosen."""

    def __post_init__(self) -> None:
        if self.kind not in BACKEND_KINDS:
            raise ParameterError(f"backend.kind must be one of {BACKEND_KINDS}, got {self.kind!r}")
        if self.representation not in REPRESENTATIONS:
            raise ParameterError(f"backend.representation must be one of {REPRESENTATIONS}, got {self.representation!r}")
        if not self.file or Path(self.file).name != self.file or self.file.startswith("."):
            raise ParameterError(f"backend.file must be a plain file name inside the bundle, got {self.file!r}")
        if len(self.sha256) != 64:
            raise ParameterError(f"backend.sha256 must be a SHA-256 hex digest, got {self.sha256!r}")
        if self.dim < 1:
            raise ParameterError(f"backend.dim must be >= 1, got {self.dim}")

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "fitted_on": dict(self.fitted_on)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> "BackendRef":
        return cls(kind=str(raw["kind"]), file=str(raw["file"]), sha256=str(raw["sha256"]),
                   representation=str(raw["representation"]), dim=int(raw["dim"]), summary=str(raw.get("summary", "")),
                   fitted_on=dict(raw.get("fitted_on", {})))


@dataclass(frozen=True, kw_only=True)
class EnsembleMember:
    """One more model of an ensemble: a complete bundle in a sub-directory of this one."""

    path: str
    """Directory relative to the ensemble bundle (e.g. ``members/1``)."""
    sha256: str
    """SHA-256 of the member's ``bundle.json`` (its model files are checked by its own digests)."""

    def __post_init__(self) -> None:
        parts = Path(self.path).parts
        if not parts or Path(self.path).is_absolute() or any(p in ("..", ".") for p in parts):
            raise ParameterError(f"ensemble member path must be a sub-directory of the bundle, got {self.path!r}")
        if len(self.sha256) != 64:
            raise ParameterError(f"ensemble member sha256 must be a SHA-256 hex digest, got {self.sha256!r}")


@dataclass(frozen=True, kw_only=True)
class Ensemble:
    """Further models whose window scores are averaged with this bundle's (schema 4)."""

    members: tuple[EnsembleMember, ...]
    score_scaling: ScoreScaling = field(default_factory=ScoreScaling)
    """Standardises the average of the models' standardised window scores (fitted on normal windows)."""
    combine: str = "mean"

    def __post_init__(self) -> None:
        if not self.members:
            raise ParameterError("an ensemble needs at least one member besides the bundle's own model")
        if self.combine not in ENSEMBLE_COMBINES:
            raise ParameterError(f"ensemble.combine must be one of {ENSEMBLE_COMBINES}, got {self.combine!r}")

    def to_json(self) -> dict[str, Any]:
        return {"members": [dataclasses.asdict(m) for m in self.members], "combine": self.combine,
                "score_scaling": dataclasses.asdict(self.score_scaling)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> "Ensemble":
        return cls(members=tuple(EnsembleMember(path=str(m["path"]), sha256=str(m["sha256"])) for m in raw["members"]),
                   combine=str(raw.get("combine", "mean")), score_scaling=ScoreScaling.from_dict(raw["score_scaling"]))


@dataclass(frozen=True, kw_only=True)
class EnrollmentValues:
    """The things enrollment changes and rollback restores (the back end only in schema 3)."""

    normalization: Normalization
    score_scaling: ScoreScaling
    threshold: Threshold
    backend: BackendRef | None = None

    def to_json(self) -> dict[str, Any]:
        out = {
            "normalization": dataclasses.asdict(self.normalization),
            "score_scaling": dataclasses.asdict(self.score_scaling),
            "threshold": self.threshold.to_dict(),
        }
        if self.backend is not None:
            out["backend"] = self.backend.to_json()
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> "EnrollmentValues":
        backend = raw.get("backend")
        return cls(
            normalization=Normalization.from_dict(raw["normalization"]),
            score_scaling=ScoreScaling.from_dict(raw["score_scaling"]),
            threshold=Threshold.from_dict(raw["threshold"]),
            backend=None if backend is None else BackendRef.from_json(backend),
        )


@dataclass(frozen=True, kw_only=True)
class SiteEnrollment:
    """Values fitted by ``edge-asd enroll`` on normal audio where the device is mounted."""

    values: EnrollmentValues
    created: str = field(default_factory=_utcnow)
    normalization_kind: str = "per-feature"
    """``"per-feature"`` or ``"global"`` (one common std, kept from the factory normalisation)."""
    audio: Mapping[str, Any] = field(default_factory=dict)
    """What was recorded: ``input``, ``seconds``, ``periods``, ``period_s``, ``n_windows``, ``signal``
    (the signal checks' figures) and how the factory values scored it (``factory_on_site``)."""

    def to_json(self) -> dict[str, Any]:
        return {"created": self.created, "normalization_kind": self.normalization_kind, **self.values.to_json(),
                "audio": dict(self.audio)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> "SiteEnrollment":
        return cls(values=EnrollmentValues.from_json(raw), created=str(raw["created"]),
                   normalization_kind=str(raw.get("normalization_kind", "per-feature")), audio=dict(raw.get("audio", {})))


@dataclass(frozen=True, kw_only=True)
class Enrollment:
    """Factory values (as exported) and, after ``edge-asd enroll``, the site values."""

    factory: EnrollmentValues
    active: Literal["factory", "site"] = "factory"
    """Whose normalisation and score scaling the top-level sections hold."""
    site: SiteEnrollment | None = None
    history: tuple[Mapping[str, Any], ...] = ()
    """Replaced site enrollments and rollbacks, newest last."""
    selective: bool = False
    """With the site values active: score every window under both the site and the factory
    normalisation and score scaling and keep the lower score (``edge-asd enroll --selective``), so
    that sound like the training data and sound like the site both count as normal."""

    def __post_init__(self) -> None:
        if self.selective and self.active != "site":
            raise ParameterError("enrollment.selective needs the site values active")
        if self.active not in ("factory", "site"):
            raise ParameterError(f"enrollment.active must be 'factory' or 'site', got {self.active!r}")
        if self.active == "site" and self.site is None:
            raise ParameterError("enrollment.active is 'site' but there is no site record")

    def to_json(self) -> dict[str, Any]:
        return {"active": self.active, "factory": self.factory.to_json(),
                "site": None if self.site is None else self.site.to_json(), "history": list(self.history),
                **({"selective": True} if self.selective else {})}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> "Enrollment":
        site = raw.get("site")
        return cls(factory=EnrollmentValues.from_json(raw["factory"]), active=raw.get("active", "factory"),
                   site=None if site is None else SiteEnrollment.from_json(site), history=tuple(raw.get("history", ())),
                   selective=bool(raw.get("selective", False)))


@dataclass(frozen=True, kw_only=True)
class Bundle:
    """A loaded, validated model bundle."""

    path: Path
    features: FeatureConfig
    window: WindowConfig
    normalization: Normalization
    model: ModelInfo
    threshold: Threshold
    score_scaling: ScoreScaling = field(default_factory=ScoreScaling)
    enrollment: Enrollment | None = None
    """Factory and site values; ``None`` for schema 1 bundles never enrolled."""
    backend: BackendRef | None = None
    """The active scoring back end; ``None``: the model's own window score."""
    ensemble: Ensemble | None = None
    """Further models scored with this one (schema 4); ``None``: this model alone."""
    provenance: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    """The schema the bundle was read in; it is written in :data:`SCHEMA_VERSION`, or
    :data:`BACKEND_SCHEMA_VERSION` when it refers to a back end."""

    def model_path(self, which: Literal["int8", "float"] = "int8") -> Path:
        return self.path / MODEL_FILES[which]

    def backend_refs(self) -> list[tuple[str, BackendRef]]:
        """Every back end file the bundle refers to: ``("active" | "factory" | "site", ref)``."""
        refs = [("active", self.backend)] if self.backend is not None else []
        e = self.enrollment
        if e is not None:
            refs += [("factory", e.factory.backend)] if e.factory.backend is not None else []
            refs += [("site", e.site.values.backend)] if e.site is not None and e.site.values.backend is not None else []
        return refs

    def load_backend(self):
        """The active back end (:mod:`edge_asd.scoring.backends`), or ``None``."""
        if self.backend is None:
            return None
        return load_backend(self.path / self.backend.file, dim=self.backend.dim)

    def load_members(self) -> tuple["Bundle", ...]:
        """The ensemble's member bundles, read and checked (:func:`read_bundle`); ``()`` without one."""
        if self.ensemble is None:
            return ()
        return tuple(_read_member(self, m) for m in self.ensemble.members)

    def to_json(self) -> dict[str, Any]:
        """The ``bundle.json`` object."""
        model = dataclasses.asdict(self.model)
        model["quantization"] = {k: dataclasses.asdict(v) for k, v in self.model.quantization.items()}
        version = ENSEMBLE_SCHEMA_VERSION if self.ensemble else BACKEND_SCHEMA_VERSION if self.backend_refs() else SCHEMA_VERSION
        out = {
            "schema_version": version,
            "features": self.features.to_dict(),
            "window": dataclasses.asdict(self.window),
            "normalization": dataclasses.asdict(self.normalization),
            "score_scaling": dataclasses.asdict(self.score_scaling),
            "model": model,
            "threshold": self.threshold.to_dict(),
            "enrollment": None if self.enrollment is None else self.enrollment.to_json(),
            "provenance": dict(self.provenance),
            "metrics": dict(self.metrics),
        }
        if self.backend is not None:
            out["backend"] = self.backend.to_json()
        if self.ensemble is not None:
            out["ensemble"] = self.ensemble.to_json()
        return out


MAX_THRESHOLD = 1e6
"""Largest threshold a bundle may hold (scores are standard deviations of normal window scores)."""


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
    if version not in READABLE_SCHEMAS:
        raise BundleError(
            f"{where}: schema version {version!r} is not supported by this edge-asd (reads versions "
            f"{', '.join(map(str, READABLE_SCHEMAS))}); upgrade edge-asd or re-export the bundle"
        )
    try:
        features = FeatureConfig.from_dict(_section(data, "features", where))
        window = WindowConfig(**_section(data, "window", where))
        normalization = Normalization.from_dict(_section(data, "normalization", where))
        # Schema 1 knew no score scaling: its scores were the raw ones, i.e. identity scaling.
        scaling = ScoreScaling() if version == 1 else ScoreScaling.from_dict(_section(data, "score_scaling", where))
        model_raw = dict(_section(data, "model", where))
        model_raw["input_shape"] = tuple(model_raw["input_shape"])
        model_raw["output_shape"] = tuple(model_raw["output_shape"])
        model_raw["classes"] = tuple(model_raw.get("classes", ()))
        model_raw["quantization"] = {k: QuantParams(**v) for k, v in model_raw.get("quantization", {}).items()}
        model = ModelInfo(**model_raw)
        threshold = Threshold.from_dict(_section(data, "threshold", where))
        backend = None if data.get("backend") is None else BackendRef.from_json(data["backend"])
        ensemble = None if data.get("ensemble") is None else Ensemble.from_json(data["ensemble"])
    except BundleError:
        raise
    except (ParameterError, TypeError, KeyError, ValueError) as exc:
        raise BundleError(f"{where}: invalid content ({exc}); re-export the bundle with asd-train") from exc
    if len(normalization.mean) != features.n_features:
        raise BundleError(
            f"{where}: normalization has {len(normalization.mean)} values but the front end makes "
            f"{features.n_features} features per frame; the bundle is inconsistent, re-export it"
        )
    enrollment = _parse_enrollment(data.get("enrollment"), where, features.n_features)
    n_in = int(np.prod(model.input_shape[1:]))
    if model.input_shape[:1] != (1,) or n_in != window.n_frames * features.n_features:
        raise BundleError(
            f"{where}: model input {model.input_shape} does not fit windows of {window.n_frames} frames × "
            f"{features.n_features} features (batch 1); the bundle is inconsistent, re-export it"
        )
    parsed = Bundle(
        path=path,
        features=features,
        window=window,
        normalization=normalization,
        model=model,
        threshold=threshold,
        score_scaling=scaling,
        enrollment=enrollment,
        backend=backend,
        ensemble=ensemble,
        provenance=data.get("provenance", {}),
        metrics=data.get("metrics", {}),
        schema_version=version,
    )
    if parsed.model.score == "embedding" and parsed.backend is None:
        raise BundleError(
            f"{where}: the model gives embeddings (score 'embedding') but the bundle has no scoring back end to score "
            "them; re-export it with --backend (knn, mahalanobis, ...)"
        )
    for name, ref in parsed.backend_refs():
        _check_backend_ref(ref, name, parsed, where)
    return parsed


def _check_backend_ref(ref: BackendRef, name: str, bundle: Bundle, where: Path) -> None:
    """A back end needs a reconstruction or embedding model, the representation of that model's
    vectors and their size (no file access)."""
    label = "backend" if name == "active" else f"enrollment.{name}.backend"
    score = bundle.model.score
    if score not in VECTOR_SCORES:
        raise BundleError(
            f"{where}: {label} scores reconstruction error vectors or embeddings but the model's score is "
            f"{score!r}; re-export the bundle without --backend"
        )
    if (ref.representation == "embedding") != (score == "embedding"):
        raise BundleError(
            f"{where}: {label} scores {ref.representation!r} vectors, which a model with score {score!r} does not give; "
            "the bundle is inconsistent, re-export it"
        )
    dim, what = ((int(bundle.model.output_shape[-1]), "embedding values") if score == "embedding"
                 else (bundle.features.n_features, "error values (one per feature)"))
    if ref.dim != dim:
        raise BundleError(
            f"{where}: {label} works on {ref.dim}-dimensional vectors but the model gives {dim} {what} per window; "
            "the bundle is inconsistent, re-export it"
        )


def _parse_enrollment(raw: Any, where: Path, n_features: int) -> Enrollment | None:
    if raw is None:
        return None
    fix = ("restore the bundle from its original copy, or run 'edge-asd enroll BUNDLE --rollback' "
           "after re-copying it")
    try:
        if not isinstance(raw, dict):
            raise TypeError("must be a JSON object or null")
        enrollment = Enrollment.from_json(raw)
    except (ParameterError, TypeError, KeyError, ValueError, AttributeError) as exc:
        raise BundleError(f"{where}: invalid 'enrollment' record ({exc}); {fix}") from exc
    for name, values in (("factory", enrollment.factory), ("site", enrollment.site.values if enrollment.site else None)):
        if values is not None and len(values.normalization.mean) != n_features:
            raise BundleError(
                f"{where}: enrollment.{name}.normalization has {len(values.normalization.mean)} values but the "
                f"front end makes {n_features} features per frame; {fix}"
            )
    return enrollment


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
            if not expected:
                # A bundle that records no digest would have none of its files checked.
                raise BundleError(f"{meta}: records no sha256 for {name}; re-export the bundle (asd-train fit)")
            if file_sha256(model_file) != expected:
                raise BundleError(
                    f"{model_file}: does not match the digest in {meta} (truncated, corrupt or from "
                    "another bundle); re-copy the bundle"
                )
        for name, ref in bundle.backend_refs():
            verify_backend_file(bundle, ref, meta)
        bundle.load_members()  # each member read, its files verified, and checked against this bundle
    return bundle


def _read_member(bundle: Bundle, member: EnsembleMember) -> Bundle:
    """One ensemble member, read and verified, with the features and windows of ``bundle``."""
    meta = bundle.path / BUNDLE_JSON
    where = bundle.path / member.path
    member_json = where / BUNDLE_JSON
    if not member_json.is_file():
        raise BundleError(f"{member_json}: ensemble member missing (named in {meta}); re-copy the whole bundle directory")
    if file_sha256(member_json) != member.sha256:
        raise BundleError(f"{member_json}: does not match the digest in {meta} (changed, or from another ensemble); "
                          "re-copy the bundle, or rebuild it with asd-train ensemble")
    read = read_bundle(where)
    problems = ensemble_problems(bundle, read)
    if problems:
        raise BundleError(f"{where}: cannot be a member of the ensemble {bundle.path}: {'; '.join(problems)}")
    return read


def _frame_settings(features: FeatureConfig) -> dict[str, Any]:
    """The settings that make a front end's frames: a log-Mel front end ignores the sinc ones."""
    settings = features.to_dict()
    if features.kind == "logmel":
        settings = {k: v for k, v in settings.items() if not k.startswith("sinc_") and k != "n_sinc"}
    return settings


def ensemble_problems(primary: Bundle, member: Bundle) -> list[str]:
    """Why ``member`` cannot be scored together with ``primary`` (empty: it can): the windows must
    be the same frames (features and windows equal), both models autoencoders, the member not an
    ensemble itself. Enrolled members score with their active (site) values, selective ones under
    both their site and factory values, as they would alone."""
    problems = []
    ours, theirs = _frame_settings(primary.features), _frame_settings(member.features)
    differ = [f"{k} {theirs.get(k)!r} (not {ours.get(k)!r})" for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)]
    if differ:
        problems.append("its features differ: " + ", ".join(differ))
    if member.window != primary.window:
        problems.append(f"window {dataclasses.asdict(member.window)} differs from {dataclasses.asdict(primary.window)}")
    if member.ensemble is not None:
        problems.append("it is an ensemble itself")
    for b in (primary, member):
        if b.model.score not in VECTOR_SCORES:
            problems.append(f"{b.path.name}'s model scores {b.model.score!r}; ensembles combine autoencoders and embedding models")
    return problems


def verify_backend_file(bundle: Bundle, ref: BackendRef, meta: Path | None = None) -> None:
    """Check that a back end file exists, matches its digest and holds a back end of the bundle's
    kind and vector size (:func:`edge_asd.scoring.backends.load_backend`'s checks); raise :class:`BundleError`
    naming the file otherwise."""
    meta = meta or bundle.path / BUNDLE_JSON
    target = bundle.path / ref.file
    if not target.is_file():
        raise BundleError(f"{target}: back end file missing (named in {meta}); re-copy the whole bundle directory")
    if file_sha256(target) != ref.sha256:
        raise BundleError(
            f"{target}: does not match the digest in {meta} (truncated, corrupt or from another bundle); "
            "re-copy the bundle"
        )
    backend = load_backend(target, dim=ref.dim)
    if backend.kind != ref.kind:
        raise BundleError(f"{target}: holds a {backend.kind} back end but {meta} says {ref.kind}; re-copy the bundle")


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
    new = dataclasses.replace(bundle, threshold=bundle.threshold.superseded_by(threshold))
    write_bundle(new)
    return new
