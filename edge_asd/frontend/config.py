"""The feature configuration shared by the trainer and the device."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from edge_asd.errors import ParameterError

__all__ = ["FeatureConfig", "FEATURE_KINDS"]

FEATURE_KINDS = ("logmel", "ims")


@dataclass(frozen=True, kw_only=True)
class FeatureConfig:
    """How audio becomes feature frames. Names follow librosa.

    Travels inside every model bundle; the device refuses a bundle whose configuration it cannot
    reproduce, so a model is only ever fed the features it was trained on.
    """

    kind: Literal["logmel", "ims"] = "logmel"
    """``"logmel"``: log-Mel bands only. ``"ims"``: log-Mel bands followed by log sinc bands."""
    sr: int = 16000
    """Sample rate the features are computed at, Hz. Audio at another rate is resampled first."""
    n_fft: int = 1024
    """FFT length, samples."""
    hop_length: int = 512
    """Samples between frame starts."""
    win_length: int | None = None
    """Periodic Hann window length, samples (``None``: ``n_fft``); centred in the FFT frame."""
    center: bool = True
    """Pad ``n_fft // 2`` zeros before (and, offline, after) the signal, as librosa does."""
    n_mels: int = 128
    """Number of Slaney-normalised mel bands (librosa's ``htk=False, norm="slaney"``)."""
    fmin: float = 0.0
    """Lowest band edge, Hz, for both filterbanks."""
    fmax: float | None = None
    """Highest band edge, Hz (``None``: ``sr / 2``), for both filterbanks."""
    n_sinc: int = 40
    """Number of sinc band-pass filters (``kind="ims"`` only). Seed 000 uses 40."""
    sinc_scale: Literal["mel", "linear"] = "mel"
    """How the sinc band edges are spaced between ``fmin`` and ``fmax``."""
    sinc_length: int = 251
    """Taps of the Hamming-windowed sinc FIR whose response the sinc bank applies (seed 000: 251)."""
    amin: float = 1e-10
    """Floor on band power before ``10·log10``, as librosa's ``power_to_db(amin=...)``."""

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> ParameterError:
            return ParameterError(f"feature config: {key} {why}")

        if self.kind not in FEATURE_KINDS:
            raise bad("kind", f"must be one of {FEATURE_KINDS}, got {self.kind!r}")
        for key in ("sr", "n_fft", "hop_length", "n_mels"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise bad(key, f"must be a positive integer, got {value!r}")
        if self.n_fft % 2:
            raise bad("n_fft", f"must be even, got {self.n_fft}")
        if self.win_length is not None and not (0 < self.win_length <= self.n_fft):
            raise bad("win_length", f"must be in 1..n_fft={self.n_fft}, got {self.win_length}")
        if self.hop_length > self.n_fft:
            raise bad("hop_length", f"must not exceed n_fft={self.n_fft}, got {self.hop_length}")
        nyquist = self.sr / 2
        if not 0 <= self.fmin < self.fmax_hz <= nyquist:
            raise bad("fmin/fmax", f"need 0 <= fmin < fmax <= sr/2 = {nyquist} Hz, got {self.fmin}, {self.fmax}")
        if self.kind == "ims":
            if not isinstance(self.n_sinc, int) or self.n_sinc <= 0:
                raise bad("n_sinc", f"must be a positive integer, got {self.n_sinc!r}")
            if self.sinc_scale not in ("mel", "linear"):
                raise bad("sinc_scale", f"must be 'mel' or 'linear', got {self.sinc_scale!r}")
            if not (3 <= self.sinc_length <= self.n_fft) or self.sinc_length % 2 == 0:
                raise bad("sinc_length", f"must be odd and in 3..n_fft={self.n_fft}, got {self.sinc_length}")
        if not self.amin > 0:
            raise bad("amin", f"must be > 0, got {self.amin}")

    @property
    def fmax_hz(self) -> float:
        """The effective upper band edge, Hz."""
        return float(self.sr / 2 if self.fmax is None else self.fmax)

    @property
    def win_length_samples(self) -> int:
        return self.n_fft if self.win_length is None else self.win_length

    @property
    def n_features(self) -> int:
        """Features per frame: ``n_mels`` (+ ``n_sinc`` for IMS)."""
        return self.n_mels + (self.n_sinc if self.kind == "ims" else 0)

    def n_frames(self, n_samples: int) -> int:
        """Frames the offline front end returns for ``n_samples`` samples (librosa's count)."""
        if self.center:
            return 1 + n_samples // self.hop_length
        return 0 if n_samples < self.n_fft else 1 + (n_samples - self.n_fft) // self.hop_length

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FeatureConfig":
        """Build from a JSON object; unknown keys are an error (they would be silently ignored)."""
        if not isinstance(data, dict):
            raise ParameterError(f"feature config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ParameterError(f"feature config: unknown key(s) {unknown}; known: {sorted(known)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ParameterError(f"feature config: {exc}") from exc
