"""Sample-rate conversion with scipy's polyphase resampler."""

from __future__ import annotations

from math import gcd

import numpy as np

from edge_asd.errors import ParameterError

__all__ = ["resample", "MIN_RESAMPLE_SR", "MAX_RESAMPLE_SR"]

MIN_RESAMPLE_SR = 8_000
"""Lowest rate resampled from or to, Hz (telephone audio; below it there is no machine sound left)."""
MAX_RESAMPLE_SR = 192_000
"""Highest rate resampled from or to, Hz. Outside 8-192 kHz a rate is a corrupt header, not a
recording, and the polyphase filter (about 20 x max(up, down) taps) and the output (``n x up / down``
samples) could need gigabytes: a file claiming 1 Hz resampled to 16 kHz grows 16 000-fold."""


def resample(samples: np.ndarray, *, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample ``(n_samples, n_channels)`` float audio from ``orig_sr`` to ``target_sr`` (Hz).

    Uses ``scipy.signal.resample_poly`` (anti-aliased, exact rational ratio, e.g. 48 kHz → 16 kHz
    is up 1 / down 3). Returns float32. Both rates must lie in
    [:data:`MIN_RESAMPLE_SR`, :data:`MAX_RESAMPLE_SR`] unless they are equal (then nothing is done).

    Raises
    ------
    ParameterError
        A rate that is not a positive integer number of Hz, or outside the resampling range.
    """
    if orig_sr <= 0 or target_sr <= 0 or int(orig_sr) != orig_sr or int(target_sr) != target_sr:
        raise ParameterError(f"sample rates must be positive integers (Hz), got {orig_sr} and {target_sr}")
    if orig_sr == target_sr:
        return samples.astype(np.float32, copy=False)
    for rate in (orig_sr, target_sr):
        if not MIN_RESAMPLE_SR <= rate <= MAX_RESAMPLE_SR:
            raise ParameterError(
                f"cannot resample {orig_sr} Hz audio to {target_sr} Hz: {rate} Hz is outside "
                f"{MIN_RESAMPLE_SR}-{MAX_RESAMPLE_SR} Hz; record or convert the audio at {target_sr} Hz"
            )
    import scipy.signal  # here, not at import: it costs the device ~80 MB of memory

    g = gcd(int(orig_sr), int(target_sr))
    out = scipy.signal.resample_poly(samples, int(target_sr) // g, int(orig_sr) // g, axis=0)
    return out.astype(np.float32)
