"""The one front end: a streaming feature extractor, and the offline function built on it.

Audio of any block length goes in; complete feature frames come out, time-major
``(n_frames, n_features)`` float32. The offline function replays a whole clip through the same
object, so the device and the trainer see the same frames for the same samples.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from edge_asd.errors import ParameterError
from edge_asd.frontend.config import FeatureConfig
from edge_asd.frontend.filters import mel_filterbank, sinc_filterbank
from edge_asd.frontend.aot import FrontendKernels, frontend_kernels

__all__ = ["StreamingFrontend", "compute_features", "SparseBank", "build_bank", "analysis_window"]

# Frames computed per FFT call. Bounds the work buffers (64 x 1024 float32 = 256 KiB) whatever the
# block size, and is large enough that the per-call overhead of the batched FFT is amortised.
CHUNK_FRAMES = 64


class SparseBank:
    """All filterbank bands of a config packed as contiguous bin ranges (one kernel pass)."""

    def __init__(self, dense: np.ndarray) -> None:
        starts, offsets, chunks = [], [0], []
        for row in dense:
            nz = np.flatnonzero(row)
            lo, hi = (int(nz[0]), int(nz[-1]) + 1) if nz.size else (0, 0)
            starts.append(lo)
            chunks.append(row[lo:hi])
            offsets.append(offsets[-1] + hi - lo)
        self.starts = np.asarray(starts, dtype=np.int64)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.weights = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
        self.n_bands = dense.shape[0]


@lru_cache(maxsize=16)
def build_bank(config: FeatureConfig) -> SparseBank:
    """The mel bands (then, for IMS, the sinc bands) of ``config`` as one sparse bank."""
    banks = [
        mel_filterbank(sr=config.sr, n_fft=config.n_fft, n_mels=config.n_mels, fmin=config.fmin, fmax=config.fmax_hz)
    ]
    if config.kind == "ims":
        banks.append(
            sinc_filterbank(
                sr=config.sr,
                n_fft=config.n_fft,
                n_sinc=config.n_sinc,
                fmin=config.fmin,
                fmax=config.fmax_hz,
                scale=config.sinc_scale,
                length=config.sinc_length,
            )
        )
    return SparseBank(np.vstack(banks))


@lru_cache(maxsize=16)
def analysis_window(config: FeatureConfig) -> np.ndarray:
    """Periodic Hann of ``win_length`` centred in ``n_fft`` (librosa's ``get_window`` + ``pad_center``).

    Written out rather than taken from ``scipy.signal.get_window``: importing scipy.signal costs the
    device ~80 MB of memory for this one line (tested equal to scipy's).
    """
    n = config.win_length_samples
    win = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)
    left = (config.n_fft - win.size) // 2
    out = np.zeros(config.n_fft, dtype=np.float32)
    out[left : left + win.size] = win
    out.setflags(write=False)
    return out


class StreamingFrontend:
    """Turn blocks of multi-channel audio into feature frames as they arrive.

    Parameters
    ----------
    config
        The feature configuration.
    n_channels
        Channels per pushed block; they are averaged to mono (the mean, as seed 000 does).
    kernels
        The compiled kernels to run (default: :func:`~edge_asd.frontend.aot.frontend_kernels`,
        the ahead-of-time ones when installed, else numba's JIT).

    Notes
    -----
    Channels are averaged as samples arrive, so each input sample is touched once; framing then
    reads the mono buffer. All work buffers are allocated here; :meth:`push` allocates its output
    and the FFT's result per chunk of up to ``CHUNK_FRAMES`` frames.
    """

    def __init__(self, config: FeatureConfig, *, n_channels: int, kernels: FrontendKernels | None = None) -> None:
        if not isinstance(n_channels, int) or n_channels < 1:
            raise ParameterError(f"n_channels must be a positive integer, got {n_channels!r}")
        self.config = config
        self.n_channels = n_channels
        self._n_fft = config.n_fft
        self._hop = config.hop_length
        self._kernels = kernels if kernels is not None else frontend_kernels()
        self._window = analysis_window(config)
        self._bank = build_bank(config)
        n_bins = 1 + self._n_fft // 2
        self._capacity = self._n_fft + (CHUNK_FRAMES - 1) * self._hop
        self._mono = np.zeros(self._capacity, dtype=np.float32)
        self._frames = np.zeros((CHUNK_FRAMES, self._n_fft), dtype=np.float32)
        self._power = np.zeros(n_bins, dtype=np.float64)
        self._amin = float(config.amin)
        self._fill = 0
        self.reset()

    @property
    def kernels(self) -> FrontendKernels:
        """The compiled kernels this front end runs (ahead-of-time or numba JIT)."""
        return self._kernels

    @property
    def n_features(self) -> int:
        return self.config.n_features

    def reset(self) -> None:
        """Forget all buffered audio; the next push starts a new signal."""
        self._mono[:] = 0.0
        # center=True: the signal starts n_fft // 2 zeros into the first frame, as librosa pads.
        self._fill = self._n_fft // 2 if self.config.center else 0

    def _frames_for(self, n_samples: int) -> int:
        return 0 if n_samples < self._n_fft else 1 + (n_samples - self._n_fft) // self._hop

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Add audio and return the frames it completes.

        Parameters
        ----------
        samples
            ``(n_samples, n_channels)`` float32/float64 in [-1, 1], or ``(n_samples,)`` when
            ``n_channels == 1``. Any length, including 0.

        Returns
        -------
        np.ndarray, float32, shape ``(n_new_frames, n_features)``, log power in dB.
        """
        if samples.ndim == 1 and self.n_channels == 1:
            samples = samples[:, None]
        if samples.ndim != 2 or samples.shape[1] != self.n_channels:
            raise ParameterError(
                f"expected audio of shape (n_samples, {self.n_channels}), got {samples.shape}"
            )
        out = np.empty((self._frames_for(self._fill + samples.shape[0]), self.n_features), dtype=np.float32)
        self._ingest(samples, mono=False, out=out)
        return out

    def flush(self) -> np.ndarray:
        """End the signal: pad ``n_fft // 2`` zeros (``center=True``), return the last frames, reset."""
        if not self.config.center:
            self.reset()
            return np.empty((0, self.n_features), dtype=np.float32)
        pad = np.zeros(self._n_fft // 2, dtype=np.float32)
        out = np.empty((self._frames_for(self._fill + pad.size), self.n_features), dtype=np.float32)
        self._ingest(pad, mono=True, out=out)
        self.reset()
        return out

    def _ingest(self, samples: np.ndarray, *, mono: bool, out: np.ndarray) -> None:
        pos, row, n = 0, 0, samples.shape[0]
        while pos < n:
            take = min(n - pos, self._capacity - self._fill)
            if mono:
                self._mono[self._fill : self._fill + take] = samples[pos : pos + take]
            else:
                self._kernels.downmix_into(samples[pos : pos + take], self._mono, self._fill)
            self._fill += take
            pos += take
            row += self._emit(out, row)

    def _emit(self, out: np.ndarray, row: int) -> int:
        k = self._frames_for(self._fill)
        if k == 0:
            return 0
        self._kernels.frame_windowed(self._mono, k, self._hop, self._window, self._frames)
        # numpy's pocketfft, not scipy.fft's: importing scipy.fft also imports scipy.special and
        # costs the device process ~5 MB of its peak RSS (benchmarks/import_memory.py). scipy's
        # batched transform is faster: with numpy's, the front end takes ~0.4 ms more per 10 s clip
        # (log-Mel of the 8-channel MIMII clip of benchmarks/frontend.py 1.9 -> 2.3 ms, IMS 3.6 ->
        # 4.0 ms; real-time factor +4e-5). Its output is the one temporary per chunk (no out=).
        spec = np.fft.rfft(self._frames[:k], axis=1)
        b = self._bank
        self._kernels.banks_power(spec, k, b.starts, b.offsets, b.weights, self._amin, self._power, out, row)
        rows = out[row : row + k]
        np.log10(rows, out=rows)
        rows *= 10.0
        used = k * self._hop
        rest = self._fill - used
        self._mono[:rest] = self._mono[used : self._fill]
        self._fill = rest
        return k


def compute_features(samples: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """Features of a whole clip, through the streaming front end.

    Parameters
    ----------
    samples
        ``(n_samples, n_channels)`` or ``(n_samples,)`` float audio at ``config.sr``.
    config
        The feature configuration.

    Returns
    -------
    np.ndarray, float32, shape ``(config.n_frames(n_samples), config.n_features)``, dB.
    """
    samples = samples[:, None] if samples.ndim == 1 else samples
    frontend = StreamingFrontend(config, n_channels=samples.shape[1])
    head = frontend.push(samples)
    tail = frontend.flush()
    return np.concatenate([head, tail]) if tail.size else head
