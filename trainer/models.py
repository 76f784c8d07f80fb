"""Compact Keras models for anomalous-sound detection on feature windows.

Every model eats one window of ``n_frames × n_features`` normalised feature frames (time-major, as
the front end makes them) and is small enough for a Raspberry Pi: each full-int8 ``.tflite`` stays
under 256 KB with the default widths and up to ~170 features per frame.

Two builds of the same network exist (same weights, same layer names):

- the *training* build (Keras 3): flexible batch;
- the *export* build (``export=True``: batch 1, built with ``tf_keras``, the Keras 2 API). Only
  Keras 2's LSTM converts to TFLite's fused ``UNIDIRECTIONAL_SEQUENCE_LSTM`` builtin, whose integer
  kernel keeps gates and cell state in int16 inside one op and whose weights are stored once.
  Keras 3 converts a non-unrolled LSTM to a ``WHILE`` loop over ``TensorList`` ops that need the TF
  Flex delegate, which no device runtime has; unrolled, every step becomes a chain of int8 ops that
  re-rounds gates and cell state to 8 bits and stores the weights once per step. Measured on ToyCar
  (lstm-ae, IMS, seed 0, `python -m benchmarks.toycar`): int8 − float AUC −0.0168 and 189 KB
  unrolled (at commit d7c5b2e, the last with the unrolled export); +0.0028 and 53 KB fused. The
  cost is speed: LiteRT's XNNPACK delegate does not take the integer LSTM kernel, so an int8
  lstm-ae window takes ~0.4 ms instead of ~0.08 ms (`python -m benchmarks`, same two commits). The exporter builds this twin from the :class:`ModelConfig` and copies
  the trained weights layer by layer.

Keras is imported lazily inside :func:`build_model` so importing this module is cheap.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from edge_asd.errors import ParameterError

__all__ = [
    "MODEL_KINDS",
    "OBJECTIVES",
    "DEFAULT_WINDOWS",
    "ModelConfig",
    "default_window",
    "build_model",
    "dense_ae",
    "conv_ae",
    "lstm_ae",
    "cnn_lstm",
    "mobilefacenet",
    "CLASSIFIER_KINDS",
    "EMBEDDING_KINDS",
]

MODEL_KINDS = ("dense-ae", "conv-ae", "lstm-ae", "cnn-lstm", "mobilefacenet")
CLASSIFIER_KINDS = ("cnn-lstm", "mobilefacenet")
"""Kinds that learn classes (machine IDs / attribute groups) rather than to reconstruct."""
EMBEDDING_KINDS = ("mobilefacenet",)
"""Kinds whose exported model gives an embedding (scored by a back end), not logits."""
OBJECTIVES = ("reconstruction", "id", "supervised")

DENSE_AE_MAX_INPUTS = 450
"""Largest ``n_frames · n_features`` of a dense-ae whose int8 file stays under 256 KB."""

DEFAULT_WINDOWS: dict[str, tuple[int, int]] = {
    # kind: (n_frames, hop_frames). dense-ae: the DCASE 2020 baseline's 5 stacked frames, every
    # frame (hop 1). The others see ~1 s (32 frames of 32 ms) with half overlap, which keeps the
    # number of windows per 10 s clip (~20) cheap to score on a Pi.
    "dense-ae": (5, 1),
    "conv-ae": (32, 16),
    # lstm-ae: 8 frames (256 ms at the default hop), chosen when the export unrolled the LSTM and
    # the file grew with every step (168 features: 16 steps × 24 units = 242 KB, 8 × 48 = 202 KB).
    # The fused LSTM op stores its weights once (53 KB at 8 × 48); the window was not re-tuned.
    "lstm-ae": (8, 4),
    "cnn-lstm": (32, 16),
    # mobilefacenet: 64 frames (~2 s at the DCASE 1024/512 frames) every 32, as STgram-MFN's
    # classifiers see seconds of sound, not milliseconds: a machine's identity is in its steady
    # spectrum and its slow rhythm.
    "mobilefacenet": (64, 32),
}


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Everything needed to rebuild a network (the exporter rebuilds a batch-1 twin from it)."""

    kind: str
    """One of :data:`MODEL_KINDS`."""
    n_frames: int
    """Frames per input window."""
    n_features: int
    """Features per frame (``FeatureConfig.n_features``)."""
    objective: Literal["reconstruction", "id", "supervised"] = "reconstruction"
    """``reconstruction`` for the autoencoders; ``id`` or ``supervised`` for ``cnn-lstm``; ``id`` for
    ``mobilefacenet`` (trained with an ArcFace head, exported as an embedding)."""
    n_classes: int = 0
    """Output logits for ``id`` / ``supervised`` (2 for supervised); 0 for autoencoders."""
    width: int = 0
    """Main width (units / filters); 0 means the kind's default."""
    bottleneck: int = 0
    """Bottleneck size of the autoencoders, embedding size of ``mobilefacenet``; 0 means the kind's default."""
    dropout: float = 0.0
    """Dropout before the classifier head (training only; vanishes in the export)."""

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ParameterError(f"model kind must be one of {MODEL_KINDS}, got {self.kind!r}")
        if self.objective not in OBJECTIVES:
            raise ParameterError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.kind in CLASSIFIER_KINDS:
            if self.objective == "reconstruction":
                raise ParameterError(f"{self.kind} is a classifier: objective must be 'id' or 'supervised'")
            if self.kind in EMBEDDING_KINDS and self.objective != "id":
                raise ParameterError(f"{self.kind} learns an embedding of machine classes: objective must be 'id'")
            if self.n_classes < 2:
                raise ParameterError(f"{self.kind} needs at least 2 classes, got {self.n_classes}")
        elif self.objective != "reconstruction":
            raise ParameterError(f"{self.kind} is an autoencoder: objective must be 'reconstruction'")
        if self.n_frames < 1 or self.n_features < 1:
            raise ParameterError(f"window must be at least 1×1, got {self.n_frames}×{self.n_features}")
        # Measured: 5×104 inputs give a 274 KB int8 dense-ae, 5×64 give 219 KB.
        if self.kind == "dense-ae" and self.n_frames * self.n_features > DENSE_AE_MAX_INPUTS:
            raise ParameterError(
                f"dense-ae input {self.n_frames}×{self.n_features} = {self.n_frames * self.n_features} values "
                f"exceeds {DENSE_AE_MAX_INPUTS}: its int8 model would pass 256 KB; use fewer frames or bands"
            )

    @property
    def is_autoencoder(self) -> bool:
        return self.objective == "reconstruction"

    @property
    def is_embedding(self) -> bool:
        """The exported model gives an embedding (:data:`EMBEDDING_KINDS`)."""
        return self.kind in EMBEDDING_KINDS

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def default_window(kind: str) -> tuple[int, int]:
    """``(n_frames, hop_frames)`` for a model kind."""
    if kind not in DEFAULT_WINDOWS:
        raise ParameterError(f"model kind must be one of {MODEL_KINDS}, got {kind!r}")
    return DEFAULT_WINDOWS[kind]


def _keras(export: bool) -> Any:
    """Keras 3 for training; ``tf_keras`` (Keras 2) for the export twin (see the module docstring)."""
    if export:
        import tf_keras

        return tf_keras
    import keras

    return keras


def _input(keras: Any, cfg: ModelConfig, batch_size: int | None, *, channels: bool):
    shape = (cfg.n_frames, cfg.n_features, 1) if channels else (cfg.n_frames, cfg.n_features)
    return keras.Input(shape=shape, batch_size=batch_size, name="window")


def dense_ae(cfg: ModelConfig, *, batch_size: int | None = None, export: bool = False) -> Any:
    """The DCASE 2020 Task 2 / MLPerf Tiny reference autoencoder.

    ``n_frames × n_features`` flattened → 4 × (Dense 128, BN, ReLU) → Dense 8 (BN, ReLU) →
    4 × (Dense 128, BN, ReLU) → Dense ``n_frames·n_features`` → reshaped back to the window.
    """
    keras = _keras(export)
    layers = keras.layers
    width = cfg.width or 128
    inp = _input(keras, cfg, batch_size, channels=False)
    x = layers.Flatten(name="flatten")(inp)

    def block(x, units: int, name: str):
        x = layers.Dense(units, name=f"{name}_dense")(x)
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x)

    for i in range(4):
        x = block(x, width, f"enc{i}")
    x = block(x, cfg.bottleneck or 8, "bottleneck")
    for i in range(4):
        x = block(x, width, f"dec{i}")
    x = layers.Dense(cfg.n_frames * cfg.n_features, name="out_dense")(x)
    out = layers.Reshape((cfg.n_frames, cfg.n_features), name="out")(x)
    return keras.Model(inp, out, name="dense_ae")


def _pad_to(n: int, multiple: int) -> int:
    return (-n) % multiple


def _padded_image(keras: Any, cfg: ModelConfig, batch_size: int | None, *, multiple: tuple[int, int]):
    """The window input and the window as a one-channel image, zero-padded at the end of time and
    frequency to multiples of ``multiple`` (so strided layers divide it evenly):
    ``(input, image, pad_t, pad_f)``."""
    layers = keras.layers
    pad_t, pad_f = _pad_to(cfg.n_frames, multiple[0]), _pad_to(cfg.n_features, multiple[1])
    inp = _input(keras, cfg, batch_size, channels=False)
    x = layers.Reshape((cfg.n_frames, cfg.n_features, 1), name="to_image")(inp)
    if pad_t or pad_f:
        x = layers.ZeroPadding2D(((0, pad_t), (0, pad_f)), name="pad")(x)
    return inp, x, pad_t, pad_f


def conv_ae(cfg: ModelConfig, *, batch_size: int | None = None, export: bool = False) -> Any:
    """A small convolutional autoencoder (the DCAE family of seeds 003/004).

    Three strided 3×3 conv blocks (``w, 2w, 2w`` filters; BN, ReLU) halve time and frequency each,
    a 1×1 conv squeezes to 8 channels, a dense bottleneck, and three blocks back (bilinear 2×
    upsampling, 3×3 conv). The window is zero-padded to a multiple of 8 in both axes and cropped at
    the output, so any window size works.
    """
    keras = _keras(export)
    layers = keras.layers
    w = cfg.width or 16
    inp, x, pad_t, pad_f = _padded_image(keras, cfg, batch_size, multiple=(8, 8))
    filters = (w, 2 * w, 2 * w)
    for i, f in enumerate(filters):
        x = layers.Conv2D(f, 3, strides=2, padding="same", use_bias=False, name=f"enc{i}_conv")(x)
        x = layers.BatchNormalization(name=f"enc{i}_bn")(x)
        x = layers.ReLU(name=f"enc{i}_relu")(x)
    # A 1×1 conv squeezes channels before the dense bottleneck: the dense layers' weights grow with
    # (time/8)·(features/8)·channels, and they dominate the model size.
    squeeze = 8
    x = layers.Conv2D(squeeze, 1, name="squeeze_conv")(x)
    x = layers.ReLU(name="squeeze_relu")(x)
    t8, f8 = (cfg.n_frames + pad_t) // 8, (cfg.n_features + pad_f) // 8
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(cfg.bottleneck or 32, name="bottleneck_dense")(x)
    x = layers.BatchNormalization(name="bottleneck_bn")(x)
    x = layers.ReLU(name="bottleneck_relu")(x)
    x = layers.Dense(t8 * f8 * squeeze, name="expand_dense")(x)
    x = layers.ReLU(name="expand_relu")(x)
    x = layers.Reshape((t8, f8, squeeze), name="expand")(x)
    # Bilinear upsampling + conv rather than transposed convs: LiteRT's default XNNPACK delegate
    # ran the int8 TRANSPOSE_CONV decoder ~3× slower than this one (`python -m benchmarks`, one
    # thread: 0.53 vs 0.19 ms per window).
    for i, f in enumerate(reversed(filters[:-1])):
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"dec{i}_up")(x)
        x = layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"dec{i}_conv")(x)
        x = layers.BatchNormalization(name=f"dec{i}_bn")(x)
        x = layers.ReLU(name=f"dec{i}_relu")(x)
    x = layers.UpSampling2D(2, interpolation="bilinear", name="out_up")(x)
    x = layers.Conv2D(1, 3, padding="same", name="out_conv")(x)
    if pad_t or pad_f:
        x = layers.Cropping2D(((0, pad_t), (0, pad_f)), name="crop")(x)
    out = layers.Reshape((cfg.n_frames, cfg.n_features), name="out")(x)
    return keras.Model(inp, out, name="conv_ae")


def lstm_ae(cfg: ModelConfig, *, batch_size: int | None = None, export: bool = False) -> Any:
    """Seed 002's sequential LSTM autoencoder, sized for the edge.

    Dense frame embedding (``w`` units) → LSTM(``w``) → LSTM(bottleneck) → RepeatVector →
    LSTM(bottleneck) → LSTM(``w``) → time-distributed Dense(``n_features``). The per-frame embedding
    keeps the LSTM input small (an LSTM's weights grow with 4·units·(inputs + units)).
    """
    keras = _keras(export)
    layers = keras.layers
    w, b = cfg.width or 48, cfg.bottleneck or 16
    inp = _input(keras, cfg, batch_size, channels=False)
    x = layers.Dense(w, activation="relu", name="embed")(inp)
    x = layers.LSTM(w, return_sequences=True, name="enc_lstm0")(x)
    x = layers.LSTM(b, return_sequences=False, name="enc_lstm1")(x)
    x = layers.RepeatVector(cfg.n_frames, name="repeat")(x)
    x = layers.LSTM(b, return_sequences=True, name="dec_lstm0")(x)
    x = layers.LSTM(w, return_sequences=True, name="dec_lstm1")(x)
    out = layers.Dense(cfg.n_features, name="out")(x)  # Dense on 3-D input is time-distributed
    return keras.Model(inp, out, name="lstm_ae")


def cnn_lstm(cfg: ModelConfig, *, batch_size: int | None = None, export: bool = False) -> Any:
    """Seed 000's CNN → LSTM over time, as a classifier returning **logits** (no softmax: an int8
    softmax output would cap −log p at ~5.5; the score is computed on the host).

    Three conv blocks (``w, 2w, 2w`` filters, 3×3, BN, ReLU) pool frequency by 4, 4, 2 and time by
    2 once; the frequency axis is then averaged, and an LSTM(``2w``) reads the remaining time steps;
    a dense head gives ``n_classes`` logits (``id``: machine ID / attribute group; ``supervised``:
    normal vs anomaly).
    """
    keras = _keras(export)
    layers = keras.layers
    w = cfg.width or 16
    inp, x, pad_t, pad_f = _padded_image(keras, cfg, batch_size, multiple=(2, 32))
    for i, (f, pool) in enumerate(((w, (1, 4)), (2 * w, (2, 4)), (2 * w, (1, 2)))):
        x = layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
        x = layers.MaxPooling2D(pool, name=f"pool{i}")(x)
    t, f = (cfg.n_frames + pad_t) // 2, (cfg.n_features + pad_f) // 32
    # Averaging frequency with a fixed-size pooling (not a reshape to time × f·c) keeps the LSTM
    # input at 2w features whatever the number of bands.
    x = layers.AveragePooling2D((1, f), name="freq_pool")(x)
    x = layers.Reshape((t, 2 * w), name="to_sequence")(x)
    x = layers.LSTM(2 * w, return_sequences=False, name="lstm")(x)
    if cfg.dropout:
        x = layers.Dropout(cfg.dropout, name="dropout")(x)
    x = layers.Dense(2 * w, activation="relu", name="head_dense")(x)
    out = layers.Dense(cfg.n_classes, name="logits")(x)
    return keras.Model(inp, out, name="cnn_lstm")


def mobilefacenet(cfg: ModelConfig, *, batch_size: int | None = None, export: bool = False) -> Any:
    """A MobileFaceNet-style embedding network (seed 001's STgram-MFN classifier, sized for the edge).

    A strided 3×3 conv and a depthwise 3×3 conv (``w`` channels), five inverted-residual
    bottlenecks (1×1 expansion ×2, depthwise 3×3, linear 1×1 projection; residual where the shape
    allows) to ``w, w, 2w, 2w, 2w`` channels, halving time and frequency twice more, a 1×1 conv
    to ``4w``, MobileFaceNet's *global depthwise conv* (one linear depthwise filter over the whole
    remaining map instead of an average: it learns which time-frequency cells identify a machine),
    and a linear embedding of ``bottleneck`` (default 64) values with batch norm.

    The output is the **embedding** (not normalised: the host L2-normalises it, an int8
    L2_NORMALIZATION would spend the output's 8 bits on a unit sphere's few directions). Training
    puts an ArcFace head on top (:mod:`trainer.arcface`) that the export leaves behind.

    Differences from MobileFaceNet, for the device: ReLU instead of PReLU (XNNPACK runs int8 ReLU
    fused into the conv), and a quarter of its widths (``w`` = 16 default against 64), which keeps
    the int8 file near 60 KB.
    """
    keras = _keras(export)
    layers = keras.layers
    w = cfg.width or 16
    dim = cfg.bottleneck or 64
    inp, x, pad_t, pad_f = _padded_image(keras, cfg, batch_size, multiple=(8, 8))

    def bn_relu(x, name: str, relu: bool = True):
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x) if relu else x

    x = bn_relu(layers.Conv2D(w, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x), "stem")
    x = bn_relu(layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="stem_dw")(x), "stem_dw")
    channels = w
    for i, (out, stride) in enumerate(((w, 2), (w, 1), (2 * w, 2), (2 * w, 1), (2 * w, 1))):
        name = f"block{i}"
        y = bn_relu(layers.Conv2D(2 * channels, 1, use_bias=False, name=f"{name}_expand")(x), f"{name}_expand")
        y = bn_relu(layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(y), f"{name}_dw")
        y = bn_relu(layers.Conv2D(out, 1, use_bias=False, name=f"{name}_project")(y), f"{name}_project", relu=False)
        x = layers.Add(name=f"{name}_add")([x, y]) if stride == 1 and out == channels else y
        channels = out
    x = bn_relu(layers.Conv2D(4 * w, 1, use_bias=False, name="head_conv")(x), "head")
    t8, f8 = (cfg.n_frames + pad_t) // 8, (cfg.n_features + pad_f) // 8
    x = bn_relu(layers.DepthwiseConv2D((t8, f8), padding="valid", use_bias=False, name="gdconv")(x), "gdconv", relu=False)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(dim, use_bias=False, name="embedding_dense")(x)
    out = layers.BatchNormalization(name="embedding")(x)
    return keras.Model(inp, out, name="mobilefacenet")


def build_model(cfg: ModelConfig, *, batch_size: int | None = None, export: bool = False) -> Any:
    """Build the Keras model described by ``cfg``.

    Parameters
    ----------
    cfg
        The network description.
    batch_size
        ``None`` (training: any batch) or 1 (export: the device runs one window at a time).
    export
        Build the conversion twin with ``tf_keras`` (use with ``batch_size=1``), whose LSTM converts
        to the fused int8 TFLite op; see the module docstring.

    Returns
    -------
    keras.Model or tf_keras.Model
        Input ``(batch, n_frames, n_features)``; output the same shape (autoencoders),
        ``(batch, n_classes)`` logits (``cnn-lstm``) or ``(batch, bottleneck)`` embeddings
        (``mobilefacenet``).
    """
    builders = {"dense-ae": dense_ae, "conv-ae": conv_ae, "lstm-ae": lstm_ae, "cnn-lstm": cnn_lstm, "mobilefacenet": mobilefacenet}
    return builders[cfg.kind](cfg, batch_size=batch_size, export=export)
