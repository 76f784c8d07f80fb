"""Filterbanks in the power-spectral domain: Slaney mel and sinc band-pass.

Both return dense ``(n_bands, 1 + n_fft // 2)`` weight matrices (float64); the front end packs
them into one sparse bank for its numba kernel. They are pure and cached.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["hz_to_mel", "mel_to_hz", "mel_filterbank", "sinc_filters", "sinc_filterbank", "band_edges"]

# Slaney's auditory-toolbox mel scale: linear below 1 kHz, logarithmic above (librosa htk=False).
_F_SP = 200.0 / 3.0
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0


def hz_to_mel(frequencies: np.ndarray | float) -> np.ndarray:
    """Slaney mel of ``frequencies`` (Hz)."""
    f = np.asanyarray(frequencies, dtype=np.float64)
    linear = f / _F_SP
    log = _MIN_LOG_MEL + np.log(np.maximum(f, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(f >= _MIN_LOG_HZ, log, linear)


def mel_to_hz(mels: np.ndarray | float) -> np.ndarray:
    """Frequency in Hz of Slaney ``mels``."""
    m = np.asanyarray(mels, dtype=np.float64)
    linear = _F_SP * m
    log = _MIN_LOG_HZ * np.exp(_LOGSTEP * (m - _MIN_LOG_MEL))
    return np.where(m >= _MIN_LOG_MEL, log, linear)


@lru_cache(maxsize=16)
def mel_filterbank(*, sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Slaney-normalised triangular mel filters, shape ``(n_mels, 1 + n_fft // 2)``.

    Equal to ``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax,
    htk=False, norm="slaney")`` (tested). Frequencies in Hz.
    """
    fft_hz = np.linspace(0.0, sr / 2.0, 1 + n_fft // 2)
    mel_hz = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_hz)
    ramps = mel_hz[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_hz[2:] - mel_hz[:-2]))[:, None]
    weights.setflags(write=False)
    return weights


def band_edges(*, n_bands: int, fmin: float, fmax: float, scale: str) -> np.ndarray:
    """``n_bands + 1`` band edges in Hz, spaced evenly on the mel (Slaney) or linear scale."""
    if scale == "mel":
        return mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_bands + 1))
    return np.linspace(fmin, fmax, n_bands + 1)


@lru_cache(maxsize=16)
def sinc_filters(*, sr: int, n_sinc: int, fmin: float, fmax: float, scale: str, length: int) -> np.ndarray:
    """Time-domain band-pass FIRs, shape ``(n_sinc, length)``.

    Each is SincNet's / seed 000's ideal band-pass ``g[n] = 2 f2 sinc(2 f2 n) − 2 f1 sinc(2 f1 n)``
    (normalised frequencies f = Hz / sr) times a Hamming window, for consecutive band edges.
    """
    edges = band_edges(n_bands=n_sinc, fmin=fmin, fmax=fmax, scale=scale) / sr
    n = np.arange(length) - (length - 1) / 2.0
    f1, f2 = edges[:-1, None], edges[1:, None]
    g = 2 * f2 * np.sinc(2 * f2 * n) - 2 * f1 * np.sinc(2 * f1 * n)
    g *= np.hamming(length)
    g.setflags(write=False)
    return g


# Below this fraction of a band's peak power gain (-60 dB) a sinc weight is dropped: it keeps the
# bank sparse and is under the Hamming window's own sidelobe level (-53 dB).
_SINC_FLOOR = 1e-6


@lru_cache(maxsize=16)
def sinc_filterbank(
    *, sr: int, n_fft: int, n_sinc: int, fmin: float, fmax: float, scale: str, length: int
) -> np.ndarray:
    """Power gains ``|H_k(f)|²`` of the sinc FIRs at the FFT bins, shape ``(n_sinc, 1 + n_fft // 2)``.

    Applied to a frame's power spectrum it gives the energy of that frame of the band-passed signal
    (Parseval), so IMS costs one STFT instead of ``n_sinc`` convolutions. The weights carry the
    one-sided Parseval factor and ``1 / n_fft`` so that the result is the frame energy
    ``Σ_n (w[n]·y[n])²`` of the windowed band-passed frame, in the same units as the mel bands.
    """
    g = sinc_filters(sr=sr, n_sinc=n_sinc, fmin=fmin, fmax=fmax, scale=scale, length=length)
    gain = np.abs(np.fft.rfft(g, n=n_fft, axis=1)) ** 2
    gain[gain < _SINC_FLOOR * gain.max(axis=1, keepdims=True)] = 0.0
    parseval = np.full(1 + n_fft // 2, 2.0 / n_fft)
    parseval[0] = parseval[-1] = 1.0 / n_fft
    weights = gain * parseval[None, :]
    weights.setflags(write=False)
    return weights
