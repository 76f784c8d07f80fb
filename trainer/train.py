"""Training: wav files → front-end features → normalised windows → a fitted Keras model.

Normalisation statistics come from the training clips only (never validation or test); a
validation split of whole clips is held out of the training normals for early stopping and for the
exported threshold. Runs are deterministic for a seed (Keras/NumPy/TF seeds and TF op determinism).
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edge_asd.scoring.bundle import Normalization, WindowConfig
from edge_asd.scoring.detector import window_view
from edge_asd.errors import ParameterError
from edge_asd.frontend import FeatureConfig
from trainer.features_cache import default_cache_dir, extract_features
from trainer.models import CLASSIFIER_KINDS, EMBEDDING_KINDS, MODEL_KINDS, ModelConfig, build_model, default_window

__all__ = ["TrainConfig", "TrainResult", "train", "make_windows", "STD_FLOOR_DB"]

STD_FLOOR_DB = 1e-3
"""Floor on per-feature standard deviations, dB: a constant band (e.g. above a low-pass) would
otherwise divide by zero."""


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How to train one model."""

    model: str = "conv-ae"
    """One of :data:`trainer.models.MODEL_KINDS`."""
    objective: str | None = None
    """``None``: ``reconstruction`` for autoencoders, ``id`` for ``cnn-lstm`` and ``mobilefacenet``."""
    n_frames: int | None = None
    """Frames per window (``None``: the kind's default)."""
    hop_frames: int | None = None
    """Frames between windows when scoring (``None``: the kind's default)."""
    train_hop_frames: int | None = None
    """Frames between training windows (``None``: a quarter of the scoring hop, at least 1): the
    same clips give four times the windows, which small data sets need (the demo's 4 s clips give
    6 scoring windows each)."""
    width: int = 0
    bottleneck: int = 0
    dropout: float = 0.0
    epochs: int = 20
    batch_size: int = 128
    learning_rate: float = 1e-3
    val_fraction: float = 0.1
    """Fraction of training clips held out for validation (at least one when there are ≥ 2)."""
    patience: int = 4
    """Early stopping: epochs without a better validation loss before stopping."""
    max_train_windows: int | None = 150_000
    """Random subsample of training windows above this count (bounds memory and epoch time)."""
    normalization: str = "per-feature"
    """``"per-feature"``: each band standardised with its own mean and std. ``"global"``: each band
    centred on its own mean but all scaled by one std over every band, so loud bands keep their
    weight in the reconstruction error, as in the DCASE baseline, which feeds raw dB."""
    balance_classes: bool = True
    """Classifier objectives: weight the loss so every class counts equally. Without it, a class
    with few training clips gets low confidence, and ``−log p`` then ranks its *normal* clips as
    anomalous (seen on the DCASE 2023 ToyCar subset, where the 34 V groups have 8 clips each)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.model not in MODEL_KINDS:
            raise ParameterError(f"model must be one of {MODEL_KINDS}, got {self.model!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ParameterError("epochs and batch_size must be >= 1")
        if self.normalization not in ("per-feature", "global"):
            raise ParameterError(f"normalization must be 'per-feature' or 'global', got {self.normalization!r}")
        if not 0 <= self.val_fraction < 1:
            raise ParameterError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    @property
    def resolved_objective(self) -> str:
        if self.objective:
            return self.objective
        return "id" if self.model in CLASSIFIER_KINDS else "reconstruction"

    @property
    def window(self) -> WindowConfig:
        n, hop = default_window(self.model)
        return WindowConfig(n_frames=self.n_frames or n, hop_frames=self.hop_frames or hop)


@dataclass(kw_only=True)
class TrainResult:
    """A fitted model and everything the exporter needs."""

    model: Any
    """The trained Keras model (training build)."""
    model_config: ModelConfig
    features: FeatureConfig
    window: WindowConfig
    normalization: Normalization
    classes: tuple[str, ...]
    train_config: TrainConfig
    train_paths: list[Path]
    train_labels: list[str]
    val_paths: list[Path]
    val_labels: list[str]
    representative: np.ndarray
    """Normalised training windows for int8 calibration, ``float32 (n, n_frames, n_features)``: see
    :func:`representative_windows`."""
    history: list[dict[str, float]] = field(default_factory=list)
    train_time_s: float = 0.0
    score_kind: str = "reconstruction_mse"


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow, and make TF ops deterministic."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    try:
        tf.config.experimental.enable_op_determinism()
    except (AttributeError, RuntimeError):  # pragma: no cover - older TF
        pass


def make_windows(
    frames: Sequence[np.ndarray], window: WindowConfig, norm: Normalization, *, hop_frames: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised windows of many clips.

    Returns
    -------
    windows : float32 ``(n_windows, n_frames, n_features)``
    clip_index : int ``(n_windows,)``, the clip each window came from
    """
    mean, inv_std = norm.arrays()
    hop = hop_frames or window.hop_frames
    parts, index = [], []
    for i, f in enumerate(frames):
        w = window_view((f - mean) * inv_std, n_frames=window.n_frames, hop_frames=hop)
        parts.append(np.ascontiguousarray(w, dtype=np.float32))
        index.append(np.full(len(w), i, dtype=np.int64))
    if not parts:
        raise ParameterError("no clips to make windows from")
    return np.concatenate(parts), np.concatenate(index)


def representative_windows(windows: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Calibration windows for int8 conversion: ``n`` drawn at random, plus the windows holding each
    feature's lowest and highest value.

    The converter sets every int8 range from the min/max it sees in these windows. A random draw can
    miss rare quiet frames: on ToyCar the training windows reach −8.6 in normalised log-Mel, but 400
    random ones reached only −3.9 for one seed. Test clips holding such frames then saturated the int8
    input, and their int8 scores ran up to 4× their float scores. The extremes make the input range
    cover all of the training data (and the inner ranges cover those windows' activations).

    Parameters
    ----------
    windows
        Normalised training windows ``(n_windows, n_frames, n_features)``.
    n
        Number of random windows (fewer if there are fewer windows).
    """
    picked = rng.choice(len(windows), size=min(len(windows), n), replace=False)
    per_feature_min = windows.min(axis=1).argmin(axis=0)
    per_feature_max = windows.max(axis=1).argmax(axis=0)
    return windows[np.unique(np.concatenate([picked, per_feature_min, per_feature_max]))]  # a copy: x_train can be freed


def _split_validation(n: int, labels: Sequence[str], fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of validation clips: a random ``fraction`` of each label (whole clips)."""
    mask = np.zeros(n, dtype=bool)
    if fraction <= 0 or n < 2:
        return mask
    labels_arr = np.asarray(labels)
    for lab in sorted(set(labels)):
        idx = np.flatnonzero(labels_arr == lab)
        k = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            mask[rng.choice(idx, size=max(k, 0), replace=False)] = True
    if not mask.any():  # small sets: still keep one clip aside for the threshold
        mask[rng.integers(n)] = True
    return mask


def _split_validation_groups(groups: Sequence[str], fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of validation clips made of whole groups, drawn in a seeded random order until
    they hold at least ``fraction`` of the clips (at least one group, never every group)."""
    groups_arr = np.asarray(groups)
    names = sorted(set(groups))
    if len(names) < 2:
        raise ParameterError(f"holding out whole groups for validation needs at least two groups, got {names}")
    mask = np.zeros(len(groups_arr), dtype=bool)
    for name in rng.permutation(names)[:-1]:
        mask |= groups_arr == name
        if mask.sum() >= fraction * len(groups_arr):
            break
    return mask


def train(
    paths: Sequence[str | os.PathLike],
    features: FeatureConfig,
    config: TrainConfig,
    *,
    labels: Sequence[str] | None = None,
    holdout_groups: Sequence[str] | None = None,
    cache_dir: Path | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> TrainResult:
    """Train a model on wav files.

    Parameters
    ----------
    paths
        Training wav files (normal sound only, except for the ``supervised`` objective).
    features
        The front-end configuration (travels into the bundle).
    config
        Model and optimiser settings.
    labels
        Per-file class labels: required for ``id`` (machine ID / attribute group) and
        ``supervised`` (``"normal"`` / ``"anomaly"``); ignored for autoencoders.
    holdout_groups
        One group name per file (e.g. attribute group or recording session). When given, the
        validation clips are whole groups (about ``config.val_fraction`` of the clips) instead of a
        random share of every label, so validation sees a condition training never did.
    cache_dir
        Feature cache folder (default :func:`~trainer.features_cache.default_cache_dir`).
    log
        Receives one readable line per epoch.
    """
    import keras

    paths = [Path(p) for p in paths]
    if not paths:
        raise ParameterError("no training files")
    objective = config.resolved_objective
    if objective == "reconstruction":
        labels = ["normal"] * len(paths)
        classes: tuple[str, ...] = ()
        score_kind = "reconstruction_mse"
    else:
        if labels is None or len(labels) != len(paths):
            raise ParameterError(f"objective {objective!r} needs one label per training file")
        labels = list(labels)
        classes = ("normal", "anomaly") if objective == "supervised" else tuple(sorted(set(labels)))
        unknown = set(labels) - set(classes)
        if unknown:
            raise ParameterError(f"supervised labels must be 'normal' or 'anomaly', got {sorted(unknown)}")
        if len(classes) < 2:
            raise ParameterError(
                f"objective {objective!r} needs at least two classes in the training data, got {list(classes)}; "
                "use an autoencoder for a single machine"
            )
        score_kind = "anomaly_prob" if objective == "supervised" else "embedding" if config.model in EMBEDDING_KINDS else "neg_log_prob"

    window = config.window
    set_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    if holdout_groups is None:
        val_mask = _split_validation(len(paths), labels, config.val_fraction, rng)
    elif len(holdout_groups) != len(paths):
        raise ParameterError(f"holdout_groups needs one group per training file ({len(holdout_groups)} for {len(paths)})")
    else:
        val_mask = _split_validation_groups(holdout_groups, config.val_fraction, rng)
    frames = extract_features(paths, features, cache_dir=cache_dir if cache_dir is not None else default_cache_dir(), progress=progress)
    short = [p for p, f in zip(paths, frames) if len(f) < window.n_frames]
    if short:
        raise ParameterError(f"{short[0]}: too short for a window of {window.n_frames} frames ({len(short)} such files)")

    train_frames = [f for f, v in zip(frames, val_mask) if not v]
    stacked = np.concatenate(train_frames).astype(np.float64)
    mean = stacked.mean(axis=0)
    std = np.maximum(stacked.std(axis=0), STD_FLOOR_DB)
    if config.normalization == "global":
        std = np.full_like(std, max(float((stacked - mean).std()), STD_FLOOR_DB))
    norm = Normalization(mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std))
    del stacked
    class_of = {c: i for i, c in enumerate(classes)}
    train_idx = np.flatnonzero(~val_mask)
    val_idx = np.flatnonzero(val_mask)
    train_hop = config.train_hop_frames or max(1, window.hop_frames // 4)
    x_train, clip_i = make_windows(train_frames, window, norm, hop_frames=train_hop)
    if config.max_train_windows and len(x_train) > config.max_train_windows:
        keep = np.sort(rng.choice(len(x_train), size=config.max_train_windows, replace=False))
        x_train, clip_i = x_train[keep], clip_i[keep]
    y_train = x_train if objective == "reconstruction" else np.array([class_of[labels[train_idx[i]]] for i in clip_i])
    validation = None
    if len(val_idx):
        x_val, vclip = make_windows([frames[i] for i in val_idx], window, norm, hop_frames=train_hop)
        y_val = x_val if objective == "reconstruction" else np.array([class_of[labels[val_idx[i]]] for i in vclip])
        validation = (x_val, y_val)

    mcfg = ModelConfig(
        kind=config.model,
        n_frames=window.n_frames,
        n_features=features.n_features,
        objective=objective,  # type: ignore[arg-type]
        n_classes=len(classes),
        width=config.width,
        bottleneck=config.bottleneck,
        dropout=config.dropout,
    )
    model = build_model(mcfg)
    trained, inputs = model, x_train
    if mcfg.is_embedding:
        from trainer.arcface import arcface_model

        # The ArcFace head needs each window's label as an input; the exported model is the backbone.
        trained = arcface_model(model, len(classes))
        inputs = {"window": x_train, "label": y_train}
        if validation is not None:
            validation = ({"window": validation[0], "label": validation[1]}, validation[1])
    if objective == "reconstruction":
        loss: Any = "mse"
        metrics: list[Any] = []
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        metrics = ["accuracy"]
    trained.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=loss, metrics=metrics)
    log(
        f"training {config.model} ({objective}{', ArcFace head' if mcfg.is_embedding else ''}) on {len(train_idx)} clips / "
        f"{len(x_train)} windows of "
        f"{window.n_frames}×{features.n_features}, {model.count_params()} parameters; "
        f"validation {len(val_idx)} clips" + (f"; classes {len(classes)}" if classes else "")
    )
    history: list[dict[str, float]] = []
    callbacks: list[Any] = [_EpochLog(config.epochs, log, history)]
    if validation is not None:
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True)
        )
    class_weight = None
    if objective != "reconstruction" and config.balance_classes:
        from sklearn.utils.class_weight import compute_class_weight

        present = np.unique(y_train)
        weights = compute_class_weight("balanced", classes=present, y=y_train)
        class_weight = {int(c): float(w) for c, w in zip(present, weights)}
    start = time.perf_counter()
    trained.fit(
        inputs,
        y_train,
        class_weight=class_weight,
        validation_data=validation,
        epochs=config.epochs,
        batch_size=config.batch_size,
        shuffle=True,
        verbose=0,
        callbacks=callbacks,
    )
    elapsed = time.perf_counter() - start
    representative = representative_windows(x_train, 400, rng)
    return TrainResult(
        model=model,
        model_config=mcfg,
        features=features,
        window=window,
        normalization=norm,
        classes=classes,
        train_config=config,
        train_paths=[paths[i] for i in train_idx],
        train_labels=[labels[i] for i in train_idx],
        val_paths=[paths[i] for i in val_idx],
        val_labels=[labels[i] for i in val_idx],
        representative=representative,
        history=history,
        train_time_s=elapsed,
        score_kind=score_kind,
    )


def _epoch_callback_base():
    import keras

    return keras.callbacks.Callback


class _EpochLog(_epoch_callback_base()):  # type: ignore[misc]
    """One readable line per epoch: losses, accuracy, time."""

    def __init__(self, epochs: int, log: Callable[[str], None], history: list[dict[str, float]]) -> None:
        super().__init__()
        self._epochs, self._log, self._history = epochs, log, history
        self._t0 = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = {k: float(v) for k, v in (logs or {}).items()}
        dt = time.perf_counter() - self._t0
        self._history.append({"epoch": epoch + 1, "time_s": round(dt, 2), **logs})
        parts = [f"{k} {v:.4f}" for k, v in logs.items() if k != "learning_rate"]
        self._log(f"  epoch {epoch + 1:3d}/{self._epochs}  " + "  ".join(parts) + f"  ({dt:.1f} s)")


def describe(result: TrainResult) -> dict[str, Any]:
    """JSON-able summary of a training run (for the bundle's provenance)."""
    return {
        "train_config": dataclasses.asdict(result.train_config),
        "model_config": result.model_config.to_dict(),
        "n_train_clips": len(result.train_paths),
        "n_val_clips": len(result.val_paths),
        "epochs_run": len(result.history),
        "train_time_s": round(result.train_time_s, 2),
        "history": result.history,
    }
