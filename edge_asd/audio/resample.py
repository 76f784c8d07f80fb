"""Sample-rate conversion with scipy's polyphase resampler."""

from __future__ import annotations

from math import gcd

import numpy as np

from edge_asd.errors import ParameterError

__all__ = ["resample"]


def resample(samples: np.ndarray, *, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample ``(n_samples, n_channels)`` float audio from ``orig_sr`` to ``target_sr`` (Hz).

    Uses ``scipy.signal.resample_poly`` (anti-aliased, exact rational ratio, e.g. 48 kHz → 16 kHz
    is up 1 / down 3). Returns float32.
    """
    if orig_sr <= 0 or target_sr <= 0:
        raise ParameterError(f"sample rates must be positive, got {orig_sr} and {target_sr}")
    if orig_sr == target_sr:
        return samples.astype(np.float32, copy=False)
    import scipy.signal  # here, not at import: it costs the device ~80 MB of memory


    g = gcd(int(orig_sr), int(target_sr))
    out = scipy.signal.resample_poly(samples, target_sr // g, orig_sr // g, axis=0)
    return out.astype(np.float32)
