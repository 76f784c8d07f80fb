"""Audio sources: one small protocol for microphones, wav files and folders of wav files.

A source is opened, then iterated: it yields blocks of shape ``(n, n_channels)`` float32 in
[-1, 1] at ``sr`` Hz until the audio ends (files) or :meth:`AudioSource.stop` is called. The
synthetic generator's output (``trainer.synth``, MIMII layout) is a :class:`FolderSource`.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Protocol, runtime_checkable

import numpy as np

from edge_asd.audio.wav import read_wav, wav_info
from edge_asd.errors import AudioFileError, ParameterError

__all__ = ["AudioSource", "WavFileSource", "FolderSource", "FileListSource", "list_wavs", "open_source"]


@runtime_checkable
class AudioSource(Protocol):
    """What the service and calibration read audio from."""

    sr: int
    """Sample rate of the yielded blocks, Hz."""
    n_channels: int
    """Channels of the yielded blocks."""
    realtime: bool
    """``True`` when blocks arrive at the speed of sound (a full queue must drop, not block)."""
    overflows: int
    """Blocks the source itself lost (device overruns); 0 for files."""

    def blocks(self) -> Iterator[np.ndarray]:
        """Yield ``(n, n_channels)`` float32 blocks until the end or :meth:`stop`."""
        ...

    def stop(self) -> None:
        """Ask :meth:`blocks` to end soon (thread-safe)."""
        ...

    def close(self) -> None:
        """Release the device or files."""
        ...


def list_wavs(folder: str | os.PathLike) -> list[Path]:
    """All ``*.wav`` files below ``folder`` (recursive), sorted by path: a deterministic play order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AudioFileError(f"{folder}: no such folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() == ".wav")
    if not files:
        raise AudioFileError(f"{folder}: holds no .wav files")
    return files


class _FileBlocks:
    """Shared block cutting and real-time pacing of file sources."""

    def __init__(self, *, sr: int, n_channels: int, block_size: int, realtime: bool, loop: bool) -> None:
        if block_size < 1:
            raise ParameterError(f"block_size must be >= 1, got {block_size}")
        self.sr = sr
        self.n_channels = n_channels
        self.block_size = block_size
        self.realtime = realtime
        self.loop = loop
        self.overflows = 0
        self.current_file: Path | None = None
        self._stop = threading.Event()

    def _files(self) -> list[Path]:
        raise NotImplementedError

    def blocks(self) -> Iterator[np.ndarray]:
        t0 = time.monotonic()
        sent = 0
        while not self._stop.is_set():
            for path in self._files():
                samples, _ = read_wav(path, sr=self.sr, channels=self.n_channels)
                self.current_file = path
                for start in range(0, samples.shape[0], self.block_size):
                    if self._stop.is_set():
                        return
                    block = samples[start : start + self.block_size]
                    if self.realtime:
                        # Pace against the total sent, not per block, so sleep jitter never accumulates.
                        delay = t0 + sent / self.sr - time.monotonic()
                        if delay > 0 and self._stop.wait(delay):
                            return
                    sent += block.shape[0]
                    yield block
            if not self.loop:
                return

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._stop.set()


class WavFileSource(_FileBlocks):
    """One wav file, cut into blocks, at real speed or as fast as possible.

    Parameters
    ----------
    path
        The wav file.
    sr
        Rate of the yielded blocks, Hz (``None``: the file's rate); the file is resampled.
    channels
        Expected channel count (``None``: the file's); a mismatch is an :class:`AudioFileError`.
    block_size
        Samples per block.
    realtime
        Pace the blocks at the speed of the audio.
    loop
        Start again at the end until stopped.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        sr: int | None = None,
        channels: int | None = None,
        block_size: int = 1600,
        realtime: bool = False,
        loop: bool = False,
    ) -> None:
        self.path = Path(path)
        file_sr, file_ch, _ = wav_info(self.path)
        if channels is not None and file_ch != channels:
            raise AudioFileError(f"{self.path}: has {file_ch} channel(s) but {channels} are configured")
        super().__init__(sr=sr or file_sr, n_channels=file_ch, block_size=block_size, realtime=realtime, loop=loop)

    def _files(self) -> list[Path]:
        return [self.path]


class FileListSource(_FileBlocks):
    """Given wav files, played in the given order as one continuous stream (the trainer scores its
    validation clips this way, as the service would hear them).

    Every file must have the same channel count (checked when opened). Parameters as
    :class:`WavFileSource`, with ``files`` a non-empty sequence of wav paths.
    """

    def __init__(
        self,
        files,
        *,
        sr: int | None = None,
        channels: int | None = None,
        block_size: int = 1600,
        realtime: bool = False,
        loop: bool = False,
    ) -> None:
        self.files = [Path(f) for f in files]
        if not self.files:
            raise ParameterError("FileListSource needs at least one wav file")
        infos = {path: wav_info(path) for path in self.files}
        want = channels if channels is not None else infos[self.files[0]][1]
        for path, (_, file_ch, _) in infos.items():
            if file_ch != want:
                raise AudioFileError(f"{path}: has {file_ch} channel(s) but {want} are expected (as the first file or the configuration)")
        rates = {file_sr for file_sr, _, _ in infos.values()}
        if sr is None and len(rates) > 1:
            raise AudioFileError(f"{self._where()}: files have rates {sorted(rates)} Hz; configure a sample rate")
        super().__init__(sr=sr or rates.pop(), n_channels=want, block_size=block_size, realtime=realtime, loop=loop)

    def _where(self) -> str:
        return f"{self.files[0]} ..."

    def _files(self) -> list[Path]:
        return self.files


class FolderSource(FileListSource):
    """All wav files below a folder, played in sorted path order as one continuous stream.

    Every file must have the same channel count (checked when opened). Parameters as
    :class:`WavFileSource`; ``folder`` may be the MIMII-layout output of ``trainer.synth``.
    """

    def __init__(self, folder: str | os.PathLike, **kwargs) -> None:
        self.folder = Path(folder)
        super().__init__(list_wavs(self.folder), **kwargs)

    def _where(self) -> str:
        return str(self.folder)


def open_source(config, *, sr: int | None = None, realtime: bool | None = None, loop: bool | None = None) -> AudioSource:
    """Open the source an :class:`edge_asd.config.InputConfig` describes.

    ``sr`` (Hz) makes file sources resample whole files to the model's rate (exact, unlike
    block-wise resampling); a microphone must be configured at that rate. ``realtime`` overrides
    ``config.realtime`` for files (calibration reads as fast as possible); ``loop`` overrides
    ``config.loop`` (record, calibrate and enroll read each file once: a file played again is not
    more audio of the site).
    """
    pace = config.realtime if realtime is None else realtime
    repeat = config.loop if loop is None else loop
    rate = sr or config.sample_rate_hz
    if config.kind == "microphone" and rate != config.sample_rate_hz:
        raise ParameterError(
            f"input.sample_rate_hz is {config.sample_rate_hz} Hz but the model needs {rate} Hz; "
            f"set input.sample_rate_hz = {rate} (capture at the model's rate)"
        )
    common = dict(sr=rate, channels=config.channels, block_size=config.block_size)
    if config.kind == "wav":
        return WavFileSource(config.path, realtime=pace, loop=repeat, **common)
    if config.kind == "folder":
        return FolderSource(config.path, realtime=pace, loop=repeat, **common)
    from edge_asd.audio.microphone import MicrophoneSource

    return MicrophoneSource(
        device=config.device,
        channels=config.channels,
        sr=config.sample_rate_hz,
        block_size=config.block_size,
        reconnect_max_s=config.reconnect_max_s,
    )


def describe_input(inp: Any) -> str:
    """How an :class:`edge_asd.config.InputConfig` is named in messages and records."""
    if inp.kind == "microphone":
        return f"microphone {inp.device if inp.device is not None else '(default)'}"
    return str(inp.path)
