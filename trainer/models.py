"""Compact Keras models for anomalous-sound detection on feature windows.

Every model eats one window of ``n_frames × n_features`` normalised feature frames (time-major, as
the front end makes them) and is small enough for a Raspberry Pi: each full-int8 ``.tflite`` stays
under 256 KB with the default widths and up to ~170 features per frame.

Two builds of the same network exist (same weights, same layer names):

- the *training* build: flexible batch, recurrent layers not unrolled (fast to train);
- the *export* build (``batch_size=1, unroll=True``): Keras 3 converts a non-unrolled LSTM to a
  ``WHILE`` loop over ``TensorList`` ops that need the TF Flex delegate, which no device runtime
  has. Keras' own ``LSTM(unroll=True)`` at batch 1 converts to builtins but its stacked-gate
  matmul + split comes out as a float ``DEQUANTIZE → SPLIT → QUANTIZE`` detour per layer. The
  export build therefore uses :class:`UnrolledLSTM` (same weights, same maths, one matrix per
  gate): every time step becomes int8 ``CONCATENATION``/``FULLY_CONNECTED``/``LOGISTIC``/``TANH``/
  ``MUL``/``ADD`` builtins. The exporter rebuilds this twin from the :class:`ModelConfig` and
  copies the trained weights.

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
]

MODEL_KINDS = ("dense-ae", "conv-ae", "lstm-ae", "cnn-lstm")
OBJECTIVES = ("reconstruction", "id", "supervised")

DENSE_AE_MAX_INPUTS = 450
"""Largest ``n_frames · n_features`` of a dense-ae whose int8 file stays under 256 KB."""

DEFAULT_WINDOWS: dict[str, tuple[int, int]] = {
    # kind: (n_frames, hop_frames). dense-ae: the DCASE 2020 baseline's 5 stacked frames, every
    # frame (hop 1). The others see ~1 s (32 frames of 32 ms) with half overlap, which keeps the
    # number of windows per 10 s clip (~20) cheap to score on a Pi.
    "dense-ae": (5, 1),
    "conv-ae": (32, 16),
    # lstm-ae: 8 frames (256 ms at the default hop). The int8 converter stores the recurrent
    # weights once per unrolled step, so the file grows with the window: measured at 168 features,
    # 16 steps × 24 units = 242 KB, 12 × 32 = 224 KB, 8 × 48 = 202 KB; 8 steps keep 48 units.
    "lstm-ae": (8, 4),
    "cnn-lstm": (32, 16),
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
    """``reconstruction`` for the autoencoders; ``id`` or ``supervised`` for ``cnn-lstm``."""
    n_classes: int = 0
    """Output logits for ``id`` / ``supervised`` (2 for supervised); 0 for autoencoders."""
    width: int = 0
    """Main width (units / filters); 0 means the kind's default."""
    bottleneck: int = 0
    """Bottleneck size of the autoencoders; 0 means the kind's default."""
    dropout: float = 0.0
    """Dropout before the classifier head (training only; vanishes in the export)."""

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ParameterError(f"model kind must be one of {MODEL_KINDS}, got {self.kind!r}")
        if self.objective not in OBJECTIVES:
            raise ParameterError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.kind == "cnn-lstm":
            if self.objective == "reconstruction":
                raise ParameterError("cnn-lstm is a classifier: objective must be 'id' or 'supervised'")
            if self.n_classes < 2:
                raise ParameterError(f"cnn-lstm needs at least 2 classes, got {self.n_classes}")
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def default_window(kind: str) -> tuple[int, int]:
    """``(n_frames, hop_frames)`` for a model kind."""
    if kind not in DEFAULT_WINDOWS:
        raise ParameterError(f"model kind must be one of {MODEL_KINDS}, got {kind!r}")
    return DEFAULT_WINDOWS[kind]


def _keras():
    import keras

    return keras


def _input(cfg: ModelConfig, batch_size: int | None, *, channels: bool):
    keras = _keras()
    shape = (cfg.n_frames, cfg.n_features, 1) if channels else (cfg.n_frames, cfg.n_features)
    return keras.Input(shape=shape, batch_size=batch_size, name="window")


def dense_ae(cfg: ModelConfig, *, batch_size: int | None = None) -> Any:
    """The DCASE 2020 Task 2 / MLPerf Tiny reference autoencoder.

    ``n_frames × n_features`` flattened → 4 × (Dense 128, BN, ReLU) → Dense 8 (BN, ReLU) →
    4 × (Dense 128, BN, ReLU) → Dense ``n_frames·n_features`` → reshaped back to the window.
    """
    keras = _keras()
    layers = keras.layers
    width = cfg.width or 128
    inp = _input(cfg, batch_size, channels=False)
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


def conv_ae(cfg: ModelConfig, *, batch_size: int | None = None) -> Any:
    """A small convolutional autoencoder (the DCAE family of seeds 003/004).

    Three strided 3×3 conv blocks (``w, 2w, 2w`` filters; BN, ReLU) halve time and frequency each,
    a 1×1 conv squeezes to 8 channels, a dense bottleneck, and three blocks back (bilinear 2×
    upsampling, 3×3 conv). The window is zero-padded to a multiple of 8 in both axes and cropped at
    the output, so any window size works.
    """
    keras = _keras()
    layers = keras.layers
    w = cfg.width or 16
    pad_t, pad_f = _pad_to(cfg.n_frames, 8), _pad_to(cfg.n_features, 8)
    inp = _input(cfg, batch_size, channels=False)
    x = layers.Reshape((cfg.n_frames, cfg.n_features, 1), name="to_image")(inp)
    if pad_t or pad_f:
        x = layers.ZeroPadding2D(((0, pad_t), (0, pad_f)), name="pad")(x)
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


def _unrolled_lstm_class():
    keras = _keras()
    ops = keras.ops

    class UnrolledLSTM(keras.layers.Layer):
        """An LSTM written out step by step, for conversion only (batch 1, fixed length).

        Same weights and maths as ``keras.layers.LSTM`` (gates i, f, c, o; sigmoid / tanh), so the
        trained LSTM's weights load unchanged. Each gate gets its own ``[W_x; W_h]`` matrix applied
        to ``concat(x_t, h)``: Keras' own unrolled cell multiplies by the stacked 4-gate matrix and
        splits the result, which the int8 converter turns into a float ``DEQUANTIZE → SPLIT →
        QUANTIZE`` detour; per-gate matrices give only int8 ``FULLY_CONNECTED`` ops.
        """

        def __init__(self, units: int, return_sequences: bool = False, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.units = units
            self.return_sequences = return_sequences

        def build(self, input_shape: Any) -> None:
            n_in = int(input_shape[-1])
            u = self.units
            self.kernel = self.add_weight(shape=(n_in, 4 * u), name="kernel")
            self.recurrent_kernel = self.add_weight(shape=(u, 4 * u), name="recurrent_kernel")
            self.bias = self.add_weight(shape=(4 * u,), name="bias", initializer="zeros")

        def call(self, x: Any) -> Any:
            u = self.units
            gates = [
                (
                    ops.concatenate([self.kernel[:, g * u : (g + 1) * u], self.recurrent_kernel[:, g * u : (g + 1) * u]], axis=0),
                    self.bias[g * u : (g + 1) * u],
                )
                for g in range(4)
            ]
            n_steps = x.shape[1]
            h = ops.zeros((x.shape[0], u), dtype=x.dtype)
            c = ops.zeros((x.shape[0], u), dtype=x.dtype)
            outputs = []
            for t in range(n_steps):
                xh = ops.concatenate([x[:, t, :], h], axis=-1)
                z = [ops.matmul(xh, w) + b for w, b in gates]
                i, f, o = ops.sigmoid(z[0]), ops.sigmoid(z[1]), ops.sigmoid(z[3])
                c = f * c + i * ops.tanh(z[2])
                h = o * ops.tanh(c)
                outputs.append(h)
            return ops.stack(outputs, axis=1) if self.return_sequences else h

        def compute_output_shape(self, input_shape: Any) -> tuple:
            if self.return_sequences:
                return (input_shape[0], input_shape[1], self.units)
            return (input_shape[0], self.units)

    return UnrolledLSTM


def _lstm(units: int, *, return_sequences: bool, unroll: bool, name: str) -> Any:
    """A trainable Keras LSTM, or (``unroll=True``) its step-by-step twin for int8 export."""
    if unroll:
        return _unrolled_lstm_class()(units, return_sequences=return_sequences, name=name)
    return _keras().layers.LSTM(units, return_sequences=return_sequences, name=name)


def lstm_ae(cfg: ModelConfig, *, batch_size: int | None = None, unroll: bool = False) -> Any:
    """Seed 002's sequential LSTM autoencoder, sized for the edge.

    Dense frame embedding (``w`` units) → LSTM(``w``) → LSTM(bottleneck) → RepeatVector →
    LSTM(bottleneck) → LSTM(``w``) → time-distributed Dense(``n_features``). The per-frame embedding
    keeps the LSTM input small (an LSTM's weights grow with 4·units·(inputs + units)).
    """
    keras = _keras()
    layers = keras.layers
    w, b = cfg.width or 48, cfg.bottleneck or 16
    inp = _input(cfg, batch_size, channels=False)
    x = layers.Dense(w, activation="relu", name="embed")(inp)
    x = _lstm(w, return_sequences=True, unroll=unroll, name="enc_lstm0")(x)
    x = _lstm(b, return_sequences=False, unroll=unroll, name="enc_lstm1")(x)
    x = layers.RepeatVector(cfg.n_frames, name="repeat")(x)
    x = _lstm(b, return_sequences=True, unroll=unroll, name="dec_lstm0")(x)
    x = _lstm(w, return_sequences=True, unroll=unroll, name="dec_lstm1")(x)
    out = layers.Dense(cfg.n_features, name="out")(x)  # Dense on 3-D input is time-distributed
    return keras.Model(inp, out, name="lstm_ae")


def cnn_lstm(cfg: ModelConfig, *, batch_size: int | None = None, unroll: bool = False) -> Any:
    """Seed 000's CNN → LSTM over time, as a classifier returning **logits** (no softmax: an int8
    softmax output would cap −log p at ~5.5; the score is computed on the host).

    Three conv blocks (``w, 2w, 2w`` filters, 3×3, BN, ReLU) pool frequency by 4, 4, 2 and time by
    2 once; the frequency axis is then averaged, and an LSTM(``2w``) reads the remaining time steps;
    a dense head gives ``n_classes`` logits (``id``: machine ID / attribute group; ``supervised``:
    normal vs anomaly).
    """
    keras = _keras()
    layers = keras.layers
    w = cfg.width or 16
    pad_f = _pad_to(cfg.n_features, 32)
    pad_t = _pad_to(cfg.n_frames, 2)
    inp = _input(cfg, batch_size, channels=False)
    x = layers.Reshape((cfg.n_frames, cfg.n_features, 1), name="to_image")(inp)
    if pad_t or pad_f:
        x = layers.ZeroPadding2D(((0, pad_t), (0, pad_f)), name="pad")(x)
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
    x = _lstm(2 * w, return_sequences=False, unroll=unroll, name="lstm")(x)
    if cfg.dropout:
        x = layers.Dropout(cfg.dropout, name="dropout")(x)
    x = layers.Dense(2 * w, activation="relu", name="head_dense")(x)
    out = layers.Dense(cfg.n_classes, name="logits")(x)
    return keras.Model(inp, out, name="cnn_lstm")


def build_model(cfg: ModelConfig, *, batch_size: int | None = None, unroll: bool = False) -> Any:
    """Build the Keras model described by ``cfg``.

    Parameters
    ----------
    cfg
        The network description.
    batch_size
        ``None`` (training: any batch) or 1 (export: the device runs one window at a time).
    unroll
        Unroll recurrent layers (export only; required for a pure-builtin int8 LSTM).

    Returns
    -------
    keras.Model
        Input ``(batch, n_frames, n_features)``; output the same shape (autoencoders) or
        ``(batch, n_classes)`` logits (classifiers).
    """
    if cfg.kind == "dense-ae":
        return dense_ae(cfg, batch_size=batch_size)
    if cfg.kind == "conv-ae":
        return conv_ae(cfg, batch_size=batch_size)
    if cfg.kind == "lstm-ae":
        return lstm_ae(cfg, batch_size=batch_size, unroll=unroll)
    return cnn_lstm(cfg, batch_size=batch_size, unroll=unroll)
