"""Reading and writing wav files as float32 arrays of shape ``(n_samples, n_channels)``.

scipy's reader is used because it understands WAVE_FORMAT_EXTENSIBLE headers (every MIMII file has
one, and Python's ``wave`` module refuses them), 8/16/24/32-bit PCM and 32/64-bit float. Its many
ways of failing on a damaged file are turned into one :class:`~edge_asd.errors.AudioFileError` that
names the file and says what to do.
"""

from __future__ import annotations

import os
import struct
import tempfile
import warnings
from pathlib import Path

import numpy as np
import scipy.io.wavfile

from edge_asd.audio.resample import resample
from edge_asd.errors import AudioFileError, ParameterError

__all__ = ["read_wav", "write_wav", "wav_info", "pcm_to_float32"]


def pcm_to_float32(data: np.ndarray) -> np.ndarray:
    """Scale integer PCM (or float) samples to float32 in [-1, 1).

    scipy returns 24-bit PCM left-justified in int32, so int32 is scaled by 2**31 in both cases.
    """
    if data.dtype == np.uint8:
        return (data.astype(np.float32) - 128.0) / 128.0
    if data.dtype == np.int16:
        return data.astype(np.float32) / 32768.0
    if data.dtype == np.int32:
        return (data.astype(np.float64) / 2147483648.0).astype(np.float32)
    if data.dtype in (np.float32, np.float64):
        return data.astype(np.float32, copy=False)
    raise ParameterError(f"unsupported sample type {data.dtype}")


def _read_raw(path: Path, *, mmap: bool = False) -> tuple[int, np.ndarray]:
    if not path.exists():
        raise AudioFileError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise AudioFileError(f"{path}: is a folder, not a wav file")
    if path.stat().st_size == 0:
        raise AudioFileError(f"{path}: the file is empty (0 bytes); re-record or remove it")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sr, data = scipy.io.wavfile.read(path, mmap=mmap)
    except PermissionError as exc:
        raise AudioFileError(f"{path}: cannot be read ({exc.strerror}); check its permissions") from exc
    except (ValueError, struct.error, EOFError, OSError, IndexError) as exc:
        raise AudioFileError(
            f"{path}: not a readable wav file ({exc}); it may be truncated, corrupt or another format"
        ) from exc
    for w in caught:
        if "EOF" in str(w.message) or "prematurely" in str(w.message):
            raise AudioFileError(
                f"{path}: the file is truncated ({w.message}); re-copy it or remove it from the data set"
            )
    return int(sr), data


def wav_info(path: str | os.PathLike) -> tuple[int, int, int]:
    """Return ``(sr, n_channels, n_samples)`` of a wav file, checking that its header is readable.

    The samples are memory-mapped, not decoded, so listing a folder of long files stays cheap;
    24-bit files (which scipy cannot map) are read in full.
    """
    try:
        sr, data = _read_raw(Path(path), mmap=True)
    except AudioFileError:
        sr, data = _read_raw(Path(path))
    n_channels = 1 if data.ndim == 1 else data.shape[1]
    return sr, n_channels, data.shape[0]


def read_wav(
    path: str | os.PathLike,
    *,
    sr: int | None = None,
    channels: int | None = None,
) -> tuple[np.ndarray, int]:
    """Read a wav file into float32 samples of shape ``(n_samples, n_channels)``.

    Parameters
    ----------
    path
        The wav file.
    sr
        Target sample rate in Hz. A file at another rate is resampled to it with scipy's polyphase
        resampler; ``None`` keeps the file's rate.
    channels
        Expected channel count; a file with another count is an error (a 4-mic profile fed an
        8-channel file is a configuration mistake, not something to guess around).

    Returns
    -------
    samples : np.ndarray, float32, shape (n_samples, n_channels), values in [-1, 1)
    sr : int, the sample rate of ``samples`` in Hz

    Raises
    ------
    AudioFileError
        Missing, empty, truncated, non-wav or unsupported file; no samples; NaN or inf samples;
        wrong channel count. The message names the file.
    """
    path = Path(path)
    file_sr, data = _read_raw(path)
    if data.ndim == 1:
        data = data[:, None]
    if data.shape[0] == 0:
        raise AudioFileError(f"{path}: the file holds no audio samples; re-record or remove it")
    if file_sr <= 0:
        raise AudioFileError(f"{path}: invalid sample rate {file_sr} Hz in the header")
    if channels is not None and data.shape[1] != channels:
        raise AudioFileError(
            f"{path}: has {data.shape[1]} channel(s) but {channels} are expected; "
            "use a file from the configured microphone array or change the configured channel count"
        )
    try:
        samples = pcm_to_float32(data)
    except ParameterError as exc:
        raise AudioFileError(f"{path}: {exc}; convert it to 16-bit PCM") from exc
    if not np.isfinite(samples).all():
        raise AudioFileError(f"{path}: contains NaN or infinite samples; the recording is damaged")
    if sr is not None and sr != file_sr:
        samples = resample(samples, orig_sr=file_sr, target_sr=sr)
        file_sr = sr
    return np.ascontiguousarray(samples), file_sr


def write_wav(path: str | os.PathLike, samples: np.ndarray, sr: int, *, subtype: str = "PCM_16") -> None:
    """Write float samples ``(n_samples,)`` or ``(n_samples, n_channels)`` in [-1, 1] to a wav file.

    ``subtype`` is ``"PCM_16"`` (clipped to the int16 range) or ``"FLOAT"``. The file is written to a
    temporary name and renamed, so a crash never leaves a half-written wav behind.
    """
    path = Path(path)
    x = np.asarray(samples)
    if subtype == "PCM_16":
        x = np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)
    elif subtype == "FLOAT":
        x = x.astype(np.float32)
    else:
        raise ParameterError(f"subtype must be 'PCM_16' or 'FLOAT', got {subtype!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            scipy.io.wavfile.write(fh, int(sr), x)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
