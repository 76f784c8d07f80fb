"""Signal checks on raw audio blocks: level, clipping, DC offset, dead channels.

Pure numpy over blocks of shape ``(n_samples, n_channels)`` float in [-1, 1] (full scale = 1.0).
:class:`SignalStats` accumulates them over a stream without keeping the audio, and
:func:`check_enrollment_audio` refuses audio that must not be taught to a detector as "normal":
a dead or disconnected microphone (silence, a flat-lined channel) or an overdriven one (clipping).
Enrollment uses it today; a streaming sensor monitor can grow from the same accumulator.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edge_asd.errors import ParameterError, SignalQualityError

__all__ = [
    "rms_dbfs",
    "clipped_fraction",
    "dc_offset",
    "SignalSummary",
    "SignalStats",
    "check_enrollment_audio",
    "MIN_RMS_DBFS",
    "FLAT_CHANNEL_DBFS",
    "CLIP_LEVEL",
    "MAX_CLIPPED_FRACTION",
]

MIN_RMS_DBFS = -70.0
"""Quieter than this (RMS over all channels, dBFS) is silence, not a running machine: a 16-bit
microphone's own noise floor sits around -90 dBFS, a machine a metre away far above -60."""
FLAT_CHANNEL_DBFS = -90.0
"""A channel whose AC level (DC removed) is below this, dBFS, is flat-lined: about one 16-bit LSB."""
CLIP_LEVEL = 0.999
"""A sample at or above this magnitude is counted as clipped (16-bit full scale is 32767/32768)."""
MAX_CLIPPED_FRACTION = 0.01
"""More than this fraction of clipped samples means the input is overdriven."""
_FLOOR_DBFS = -200.0
"""Reported level of digital silence (log of zero)."""


def _as_2d(block: np.ndarray) -> np.ndarray:
    x = np.asarray(block)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ParameterError(f"audio blocks must be (n_samples, n_channels), got shape {x.shape}")
    return x


def _db(power: np.ndarray | float) -> np.ndarray:
    return np.maximum(10.0 * np.log10(np.maximum(power, 1e-300)), _FLOOR_DBFS)


def rms_dbfs(block: np.ndarray) -> np.ndarray:
    """RMS level of each channel, dBFS (0 dBFS = a constant at full scale), shape ``(n_channels,)``."""
    x = _as_2d(block).astype(np.float64)
    return _db(np.mean(x * x, axis=0))


def clipped_fraction(block: np.ndarray, *, level: float = CLIP_LEVEL) -> float:
    """Fraction of all samples whose magnitude reaches ``level`` (full scale 1.0)."""
    x = _as_2d(block)
    return float(np.count_nonzero(np.abs(x) >= level) / x.size) if x.size else 0.0


def dc_offset(block: np.ndarray) -> np.ndarray:
    """Mean of each channel (full scale 1.0), shape ``(n_channels,)``."""
    return _as_2d(block).astype(np.float64).mean(axis=0)


@dataclass(frozen=True, kw_only=True)
class SignalSummary:
    """Figures of a stretch of audio."""

    n_samples: int
    """Samples per channel."""
    n_channels: int
    rms_dbfs: float
    """RMS over all channels, dBFS."""
    channel_rms_dbfs: tuple[float, ...]
    channel_ac_dbfs: tuple[float, ...]
    """Per-channel RMS with the DC offset removed, dBFS (a flat line has none)."""
    dc_offset: tuple[float, ...]
    """Per-channel mean, full scale 1.0."""
    clipped_fraction: float
    """Fraction of samples at or above :data:`CLIP_LEVEL`."""
    peak: float
    """Largest magnitude, full scale 1.0."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SignalStats:
    """Running sums over blocks (no audio kept): feed with :meth:`update`, read :meth:`summary`."""

    def __init__(self, n_channels: int, *, clip_level: float = CLIP_LEVEL) -> None:
        self.n_channels = n_channels
        self.clip_level = clip_level
        self.n = 0
        self._sum = np.zeros(n_channels)
        self._sumsq = np.zeros(n_channels)
        self._clipped = 0
        self._peak = 0.0

    def update(self, block: np.ndarray) -> None:
        x = _as_2d(block)
        if x.shape[1] != self.n_channels:
            raise ParameterError(f"expected {self.n_channels} channel(s), got a block of shape {x.shape}")
        x64 = x.astype(np.float64)
        self.n += x.shape[0]
        self._sum += x64.sum(axis=0)
        self._sumsq += (x64 * x64).sum(axis=0)
        self._clipped += int(np.count_nonzero(np.abs(x) >= self.clip_level))
        if x.size:
            self._peak = max(self._peak, float(np.abs(x64).max()))

    def summary(self) -> SignalSummary:
        n = max(self.n, 1)
        mean = self._sum / n
        power = self._sumsq / n
        ac = np.maximum(power - mean * mean, 0.0)
        return SignalSummary(
            n_samples=self.n,
            n_channels=self.n_channels,
            rms_dbfs=float(_db(power.mean())),
            channel_rms_dbfs=tuple(float(v) for v in _db(power)),
            channel_ac_dbfs=tuple(float(v) for v in _db(ac)),
            dc_offset=tuple(float(v) for v in mean),
            clipped_fraction=self._clipped / (n * self.n_channels),
            peak=self._peak,
        )


def check_enrollment_audio(
    summary: SignalSummary,
    *,
    where: str,
    min_rms_dbfs: float = MIN_RMS_DBFS,
    flat_channel_dbfs: float = FLAT_CHANNEL_DBFS,
    max_clipped_fraction: float = MAX_CLIPPED_FRACTION,
) -> None:
    """Refuse audio that would teach the detector that a dead or overdriven microphone is normal.

    Parameters
    ----------
    summary
        Figures of the audio (:meth:`SignalStats.summary`).
    where
        The file, folder or device the audio came from (named in the error).

    Raises
    ------
    SignalQualityError
        Silence (RMS below ``min_rms_dbfs``), a flat-lined channel (AC level below
        ``flat_channel_dbfs``) or clipping (more than ``max_clipped_fraction`` of the samples at
        full scale). One line naming ``where``, the figure and what to do.
    """
    if summary.n_samples == 0:
        raise SignalQualityError(f"{where}: no audio was read; check the input")
    if summary.rms_dbfs < min_rms_dbfs:
        raise SignalQualityError(
            f"{where}: the audio is silent (RMS {_fmt_db(summary.rms_dbfs)} dBFS, below {min_rms_dbfs:g}): a dead or "
            "muted microphone or an idle machine is not normal sound; check the microphone and record while the "
            "machine runs"
        )
    flat = [i for i, v in enumerate(summary.channel_ac_dbfs) if v < flat_channel_dbfs]
    if flat:
        raise SignalQualityError(
            f"{where}: channel(s) {', '.join(map(str, flat))} of {summary.n_channels} are flat-lined (AC level below "
            f"{flat_channel_dbfs:g} dBFS): a dead or disconnected microphone; fix the array or configure the "
            "channels that work"
        )
    if summary.clipped_fraction > max_clipped_fraction:
        raise SignalQualityError(
            f"{where}: {100 * summary.clipped_fraction:.1f} % of the samples are clipped (at full scale; at most "
            f"{100 * max_clipped_fraction:g} % allowed): the input is overdriven; lower the capture gain and record again"
        )


def _fmt_db(v: float) -> str:
    return "-inf" if v <= _FLOOR_DBFS or not math.isfinite(v) else f"{v:.1f}"
