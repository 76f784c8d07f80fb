"""The streaming scorer: capture blocks in, timed window scores out, through the same front end
and detector as offline scoring. Used by the service, by calibration and enrollment (which score
audio exactly as the service does) and by a remote reload's check of a new bundle."""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_asd.frontend import StreamingFrontend

__all__ = ["StreamingScorer"]


class StreamingScorer:
    """Feature frames in, timed window scores out; windows span the boundaries of pushes.

    Parameters
    ----------
    detector
        A :class:`edge_asd.scoring.detector.Detector`.
    n_channels
        Channels of the audio blocks.

    A ``neg_log_prob`` bundle's machine class is the detector's ``class_label``.
    """

    def __init__(self, detector: Any, *, n_channels: int) -> None:
        self.detector = detector
        self.n_channels = n_channels
        self.frontend = StreamingFrontend(detector.config, n_channels=n_channels)
        self._n = detector.bundle.window.n_frames
        self._hop = detector.bundle.window.hop_frames
        self._seconds_per_frame = detector.config.hop_length / detector.config.sr
        half_fft_s = detector.config.n_fft / 2 / detector.config.sr
        self.window_reach_s = ((self._n - 1) * self._seconds_per_frame + half_fft_s, half_fft_s)
        """How far a window's audio reaches before and after its time (its last frame's centre), seconds."""
        self.last_frames = np.empty((0, detector.config.n_features), dtype=np.float32)
        self.reset()

    @property
    def time_s(self) -> float:
        """Stream time so far (gaps included), seconds."""
        return self._clock / self.detector.config.sr

    def reset(self) -> None:
        """Start a new stream (time 0)."""
        self._clock = 0  # samples on the stream's timeline so far, gaps included
        self._segment_start = 0  # timeline sample where the current run of contiguous audio began
        self.n_windows = 0
        self._restart_segment()

    def _restart_segment(self) -> None:
        self.frontend.reset()
        self._buffer = np.empty((0, self.detector.config.n_features), dtype=np.float32)
        self._base = 0  # frame index (in the segment) of _buffer[0]
        self._next = 0  # frame index (in the segment) where the next window starts

    def push(self, block: np.ndarray) -> list[tuple[float, float]]:
        """Add an audio block; return ``(time_s, score)`` of each window it completes.

        ``time_s`` is the centre time of the window's last frame, seconds from the stream start
        (gaps included, see :meth:`skip`).
        """
        self._clock += block.shape[0]
        # Kept for the machine-state monitor, which gates on the raw (un-normalised) frame level.
        self.last_frames = self.frontend.push(block)
        return self._add_frames(self.last_frames)

    def switched_to(self, detector: Any) -> "StreamingScorer":
        """A scorer for ``detector`` that goes on at this one's stream time. Its audio starts afresh,
        as after a gap: no window mixes frames normalised for two bundles."""
        new = StreamingScorer(detector, n_channels=self.n_channels)
        new._clock = new._segment_start = self._clock
        return new

    def skip(self, n_samples: int) -> None:
        """A gap of ``n_samples`` lost samples: time moves on by it, and the audio after it starts
        afresh (new frames, new windows). The frames since the last complete window are dropped
        rather than zero-padded: a padded window scores as audio that was never heard."""
        if n_samples <= 0:
            return
        self._clock += int(n_samples)
        self._segment_start = self._clock
        self._restart_segment()

    def flush(self) -> list[tuple[float, float]]:
        """End of stream: the last frames' windows (then the scorer is reset)."""
        out = self._add_frames(self.frontend.flush())
        self.reset()
        return out

    def _add_frames(self, frames: np.ndarray) -> list[tuple[float, float]]:
        if frames.shape[0] == 0:
            return []
        # A selective detector normalises each window twice (two sets of values), an ensemble once
        # per model: they take raw frames.
        raw = self.detector.needs_raw_windows
        new = frames.astype(np.float32, copy=False) if raw else self.detector.normalize(frames)
        buf = np.concatenate([self._buffer, new]) if self._buffer.size else new
        score_one = self.detector.score_raw_window if raw else self.detector.score_window
        out = []
        end = self._base + buf.shape[0]
        while self._next + self._n <= end:
            lo = self._next - self._base
            score = score_one(buf[lo : lo + self._n])
            out.append((self._segment_start / self.detector.config.sr + (self._next + self._n - 1) * self._seconds_per_frame, score))
            self._next += self._hop
            self.n_windows += 1
        keep_from = min(self._next, end) - self._base
        self._buffer = buf[keep_from:]
        self._base += keep_from
        return out
