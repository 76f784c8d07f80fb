"""numba kernels of the front end. Pure functions on preallocated arrays; no allocation inside.

The FFT itself is numpy's pocketfft (numba cannot call an FFT inside ``@njit``); these kernels do
everything around it: downmix, framing and windowing, power, the sparse filterbanks and the log.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["downmix_into", "frame_windowed", "banks_power"]


@njit(cache=True, nogil=True, fastmath=True)
def downmix_into(block, out, offset):  # pragma: no cover - compiled
    """``out[offset + i] = mean_c block[i, c]`` for a ``(n, n_channels)`` block."""
    n, n_ch = block.shape
    scale = np.float32(1.0 / n_ch)
    for i in range(n):
        acc = np.float32(0.0)
        for c in range(n_ch):
            acc += np.float32(block[i, c])
        out[offset + i] = acc * scale


@njit(cache=True, nogil=True)
def frame_windowed(mono, n_frames, hop, window, frames):  # pragma: no cover - compiled
    """``frames[f, :] = window * mono[f*hop : f*hop + n_fft]`` for the first ``n_frames`` rows."""
    n_fft = window.shape[0]
    for f in range(n_frames):
        start = f * hop
        for i in range(n_fft):
            frames[f, i] = mono[start + i] * window[i]


@njit(cache=True, nogil=True, fastmath=True)
def banks_power(spec, n_frames, starts, offsets, weights, amin, power, out, out_row):  # pragma: no cover
    """Apply a sparse filterbank to ``|spec|²`` and write ``max(band, amin)`` (linear power).

    Band ``b`` covers bins ``starts[b] .. starts[b] + (offsets[b+1] - offsets[b])`` with weights
    ``weights[offsets[b]:offsets[b+1]]``. ``power`` is scratch of length ``n_bins``. Sums are
    accumulated in float64 so the widest sinc bands lose nothing to float32 rounding. The log is left to the
    caller: numpy's vectorised ``log10`` over the whole block is several times faster than a scalar
    libm call per band here.
    """
    n_bins = spec.shape[1]
    n_bands = starts.shape[0]
    for f in range(n_frames):
        for k in range(n_bins):
            z = spec[f, k]
            power[k] = z.real * z.real + z.imag * z.imag
        for b in range(n_bands):
            s = 0.0
            k0 = starts[b]
            for j in range(offsets[b], offsets[b + 1]):
                s += weights[j] * power[k0 + j - offsets[b]]
            out[out_row + f, b] = max(s, amin)
