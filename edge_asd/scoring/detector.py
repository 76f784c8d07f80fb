"""The detector: feature frames → windows → model → window scores → clip score → decision.

PyOD-shaped: higher scores are more anomalous, ``threshold_`` is the fitted (calibrated)
threshold, ``predict`` is ``score > threshold_``. Every window score is standardised with the
bundle's score scaling, ``(raw − mean) / std``, in :meth:`Detector.score_window`, the one place all
scores pass through (service, calibration, enrollment, ``score`` and the trainer's evaluation). The trainer's evaluation and the device both
score through this class, so a clip gets the same score on the desk and on the device.

With a scoring back end in the bundle (:mod:`edge_asd.scoring.backends`), the raw window score of an
autoencoder is the back end's score of the window's error vector instead of its mean squared error;
score scaling, threshold, calibration and enrollment then work on that score as they do on the MSE.
An embedding model (``mobilefacenet``) has no score of its own: the back end scores its unit-length
embedding.

An ensemble bundle (schema 4) holds further models: every window is scored by each (its own
normalisation, model, score scaling), the standardised scores are averaged and the average is
standardised with the ensemble's scaling. Everything downstream (threshold, calibration, alarm)
sees one score per window, as with a single model.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Literal

import numpy as np

from edge_asd.audio.resample import resample
from edge_asd.scoring.backends import band_errors, represent
from edge_asd.scoring.bundle import VECTOR_SCORES, Bundle, read_bundle
from edge_asd.errors import BundleError, ParameterError
from edge_asd.frontend import compute_features
from edge_asd.scoring.runtime import RuntimeName, TFLiteModel

__all__ = ["Detector", "window_view"]


def window_view(frames: np.ndarray, *, n_frames: int, hop_frames: int) -> np.ndarray:
    """Windows of ``n_frames`` consecutive frames every ``hop_frames``: a read-only view of shape
    ``(n_windows, n_frames, n_features)`` (no copy)."""
    if frames.shape[0] < n_frames:
        return np.empty((0, n_frames, frames.shape[1]), dtype=frames.dtype)
    view = np.lib.stride_tricks.sliding_window_view(frames, n_frames, axis=0)[::hop_frames]
    return view.transpose(0, 2, 1)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


class Detector:
    """Scores audio with a bundle's TFLite model.

    Parameters
    ----------
    bundle
        A loaded bundle (see :meth:`from_bundle` to load one from a path).
    model
        ``"int8"`` (the device model) or ``"float"`` (the reference).
    num_threads, runtime
        Passed to :class:`~edge_asd.scoring.runtime.TFLiteModel`.
    class_label
        For ``neg_log_prob`` bundles: the machine class this detector listens to (one of
        ``bundle.model.classes``). The score is ``−log p(class_label)``.
    backend
        ``"bundle"``: the bundle's scoring back end, if it has one; ``None``: the model's own score
        whatever the bundle holds; or a back end object (:mod:`edge_asd.scoring.backends`) to score with
        instead (enrollment tries site banks this way before writing them).
    selective_with
        ``"bundle"``: the bundle's own choice (a ``--selective`` enrollment scores under its
        factory values too); ``None``: the active values only; or ``(normalization,
        score_scaling)``: a second set of values, each window's score being the lower of the two
        (enrollment fits the threshold of a selective bundle this way).

    Attributes
    ----------
    threshold_ : float
        Decision threshold on clip scores, from the bundle.
    """

    def __init__(
        self,
        bundle: Bundle,
        *,
        model: Literal["int8", "float"] = "int8",
        num_threads: int = 1,
        runtime: RuntimeName = "auto",
        class_label: str | None = None,
        backend: Any = "bundle",
        selective_with: Any = "bundle",
    ) -> None:
        if model not in ("int8", "float"):
            raise ParameterError(f"model must be 'int8' or 'float', got {model!r}")
        self.bundle = bundle
        self.which = model
        self.model = TFLiteModel(bundle.model_path(model), num_threads=num_threads, runtime=runtime)
        self._check_model()
        self._mean, self._inv_std = bundle.normalization.arrays()
        self._scaling = bundle.score_scaling
        self._score_kind = bundle.model.score
        self._class_index = self._resolve_class(class_label) if class_label is not None else None
        if self._score_kind == "anomaly_prob":
            self._class_index = self._resolve_class("anomaly")
        self.backend = bundle.load_backend() if isinstance(backend, str) and backend == "bundle" else backend
        if self.backend is not None and self._score_kind not in VECTOR_SCORES:
            raise ParameterError(f"a scoring back end needs a reconstruction or embedding model, this bundle's score is {self._score_kind!r}")
        self.representation = (bundle.backend.representation if bundle.backend is not None
                               else "embedding" if self._score_kind == "embedding" else "band_mse")
        """What the back end scores (:data:`edge_asd.scoring.backends.REPRESENTATIONS`)."""
        if isinstance(selective_with, str) and selective_with == "bundle":
            e = bundle.enrollment
            selective_with = (e.factory.normalization, e.factory.score_scaling) if e is not None and e.selective else None
        self._also: tuple[np.ndarray, np.ndarray, Any] | None = None
        if selective_with is not None:
            if self.backend is not None:
                raise ParameterError("selective scoring (enroll --selective) works on the model's own score, "
                                     "not with a scoring back end")
            self._also = (*selective_with[0].arrays(), selective_with[1])
        self.members = tuple(Detector(m, model=model, num_threads=num_threads, runtime=runtime) for m in bundle.load_members())
        """The ensemble's further models (each a detector of its member bundle); ``()`` without one."""
        self._ensemble_scaling = bundle.ensemble.score_scaling if bundle.ensemble is not None else None

    @property
    def selective(self) -> bool:
        """Whether windows are scored under two sets of values (the lower score counts)."""
        return self._also is not None

    @property
    def needs_raw_windows(self) -> bool:
        """Whether windows must be scored from raw frames (:meth:`score_raw_window`): a selective
        detector normalises each window twice, an ensemble once per model."""
        return self._also is not None or bool(self.members)

    @classmethod
    def from_bundle(cls, path: str | os.PathLike, **kwargs) -> "Detector":
        """Load and check a bundle directory, then build a detector (keywords as the constructor)."""
        return cls(read_bundle(path), **kwargs)

    @property
    def threshold_(self) -> float:
        return float(self.bundle.threshold.value)

    @property
    def config(self):
        return self.bundle.features

    def _check_model(self) -> None:
        b, m = self.bundle.model, self.model
        where = self.model.path
        if m.input_shape != tuple(b.input_shape) or m.output_shape != tuple(b.output_shape):
            raise BundleError(
                f"{where}: model shapes {m.input_shape} → {m.output_shape} differ from bundle.json's "
                f"{tuple(b.input_shape)} → {tuple(b.output_shape)}; the model file belongs to another bundle"
            )
        if self.which == "int8":
            if m.input_quant is None or m.output_quant is None:
                raise BundleError(f"{where}: not a full-integer model (input {m.input_dtype}, output {m.output_dtype}); re-export it")
            for name, actual in (("input", m.input_quant), ("output", m.output_quant)):
                recorded = b.quantization.get(name)
                if recorded is not None and (
                    recorded.zero_point != actual.zero_point or not np.isclose(recorded.scale, actual.scale, rtol=1e-6)
                ):
                    raise BundleError(
                        f"{where}: {name} quantisation {actual} differs from bundle.json's {recorded}; "
                        "the model file belongs to another bundle"
                    )

    def _resolve_class(self, label: str) -> int:
        classes = self.bundle.model.classes
        if label not in classes:
            raise ParameterError(f"class {label!r} is not one of the bundle's classes {list(classes)}")
        return classes.index(label)

    def normalize(self, frames: np.ndarray) -> np.ndarray:
        """Standardise ``(n_frames, n_features)`` frames with the bundle's training statistics."""
        if frames.ndim != 2 or frames.shape[1] != self.config.n_features:
            raise ParameterError(f"frames must be (n_frames, {self.config.n_features}), got {frames.shape}")
        return (frames - self._mean) * self._inv_std

    def score_raw_window(self, raw: np.ndarray, *, class_index: int | None = None) -> float:
        """Score one window of raw (un-normalised) frames ``(n_frames, n_features)``: normalised
        and scored as :meth:`score_window`; for a selective detector the lower of the scores under
        the active and the second values; for an ensemble the standardised mean of this model's
        score and each member's."""
        score = self.score_window((raw - self._mean) * self._inv_std, class_index=class_index)
        if self._also is not None:
            mean, inv_std, scaling = self._also
            score = min(score, float(scaling.apply(self.raw_score_window((raw - mean) * inv_std, class_index=class_index))))
        if self.members:
            combined = (score + sum(m.score_raw_window(raw) for m in self.members)) / (1 + len(self.members))
            score = float(self._ensemble_scaling.apply(combined))
        return score

    def score_window(self, window: np.ndarray, *, class_index: int | None = None) -> float:
        """Score one normalised window ``(n_frames, n_features)``: the raw score standardised with
        the bundle's score scaling (standard deviations of normal window scores). This model's
        score alone: selective and ensemble detectors score raw windows (:meth:`score_raw_window`)."""
        return float(self._scaling.apply(self.raw_score_window(window, class_index=class_index)))

    def raw_score_window(self, window: np.ndarray, *, class_index: int | None = None) -> float:
        """The model's own score of one normalised window, before score scaling."""
        y = self.model(window)
        if self.backend is not None:
            return self.backend.score_one(represent(self._window_vector(window, y), self.representation))
        if self._score_kind == "embedding":
            raise ParameterError("an embedding model scores through a back end, and this detector has none")
        if self._score_kind == "reconstruction_mse":
            d = y.reshape(-1) - window.reshape(-1)
            return float(np.dot(d, d) / d.size)
        logits = y.reshape(-1)
        index = self._class_index if class_index is None else class_index
        if index is None:
            raise ParameterError(
                f"this bundle scores by machine class ({list(self.bundle.model.classes)}); give class_label"
            )
        log_p = _log_softmax(logits)
        if self._score_kind == "neg_log_prob":
            return float(-log_p[index])
        return float(np.exp(log_p[index]))

    def window_vectors(self, frames: np.ndarray, *, representation: str | None = None) -> np.ndarray:
        """The representation a back end scores, one row per window of raw (un-normalised) feature
        frames: ``(n_windows, n_features)`` error vectors (:func:`edge_asd.scoring.backends.band_errors`) of an
        autoencoder, ``(n_windows, embedding size)`` unit embeddings of an embedding model; float64.

        ``representation`` defaults to the back end's (``band_mse`` / ``embedding`` without one).
        """
        if self._score_kind not in VECTOR_SCORES:
            raise ParameterError(f"window vectors need a reconstruction or embedding model, this bundle's score is {self._score_kind!r}")
        representation = representation or self.representation
        if (representation == "embedding") != (self._score_kind == "embedding"):
            raise ParameterError(f"a model with score {self._score_kind!r} gives no {representation!r} vectors")
        w = self.bundle.window
        windows = window_view(self.normalize(frames), n_frames=w.n_frames, hop_frames=w.hop_frames)
        dim = int(self.bundle.model.output_shape[-1]) if self._score_kind == "embedding" else self.config.n_features
        vectors = np.array([self._window_vector(win, self.model(win)) for win in windows], dtype=np.float64).reshape(-1, dim)
        return represent(vectors, representation)

    def _window_vector(self, window: np.ndarray, output: np.ndarray) -> np.ndarray:
        """What a back end scores of one window, before :func:`represent`: the embedding model's
        output, or the autoencoder's error vector (:func:`band_errors`)."""
        return output.reshape(-1) if self._score_kind == "embedding" else band_errors(window, output)

    def score_windows(self, frames: np.ndarray, *, class_label: str | None = None) -> np.ndarray:
        """Window scores (standardised) of raw (un-normalised) feature frames ``(n_frames, n_features)``.

        Returns
        -------
        np.ndarray, float64, shape ``(n_windows,)``; empty when there are fewer frames than a window.
        """
        index = self._resolve_class(class_label) if class_label is not None else None
        w = self.bundle.window
        if self.needs_raw_windows:
            self.normalize(frames)  # checks the shape
            raw = window_view(np.asarray(frames, dtype=np.float32), n_frames=w.n_frames, hop_frames=w.hop_frames)
            return np.array([self.score_raw_window(win, class_index=index) for win in raw], dtype=np.float64)
        windows = window_view(self.normalize(frames), n_frames=w.n_frames, hop_frames=w.hop_frames)
        return np.array([self.score_window(win, class_index=index) for win in windows], dtype=np.float64)

    def score_clip(self, samples: np.ndarray, *, sr: int, class_label: str | None = None) -> float:
        """Clip score: the mean of its window scores (as the seeds do).

        Parameters
        ----------
        samples
            ``(n_samples, n_channels)`` or ``(n_samples,)`` float audio.
        sr
            Its sample rate, Hz; resampled to the bundle's rate when different.
        """
        if sr != self.config.sr:
            samples = resample(samples if samples.ndim == 2 else samples[:, None], orig_sr=sr, target_sr=self.config.sr)
        scores = self.score_windows(compute_features(samples, self.config), class_label=class_label)
        if scores.size == 0:
            need = (self.bundle.window.n_frames - 1) * self.config.hop_length / self.config.sr
            raise ParameterError(f"audio too short: a window needs about {need:.2f} s at {self.config.sr} Hz")
        return float(scores.mean())

    def decision_function(self, clips: Iterable[np.ndarray], *, sr: int | None = None) -> np.ndarray:
        """Clip scores of several clips at ``sr`` (default: the bundle's rate); higher = more anomalous."""
        rate = self.config.sr if sr is None else sr
        return np.array([self.score_clip(c, sr=rate) for c in clips], dtype=np.float64)

    def predict(self, clips: Iterable[np.ndarray], *, sr: int | None = None) -> np.ndarray:
        """``True`` where a clip's score exceeds ``threshold_``."""
        return self.decision_function(clips, sr=sr) > self.threshold_
