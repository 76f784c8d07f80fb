"""Reading and writing wav files as float32 arrays of shape ``(n_samples, n_channels)``.

A wav file is hostile input: one implausible header field (a sample rate of 1 Hz, 65 535
channels, a data chunk "4 GB long") must not make the reader allocate gigabytes or resample for
minutes. So reading happens in two steps:

1. :func:`wav_header` parses the header itself — the RIFF/RIFX/RF64 preamble and a bounded walk of
   chunk headers up to the ``data`` chunk, never the samples — and checks every field against
   plausible bounds (channels, sample rate, bit depth, block align, byte rate, chunk sizes against
   the real file size, format tag and WAVE_FORMAT_EXTENSIBLE subformat) and the clip length against
   a limit (:func:`max_clip_seconds`, 600 s by default).
2. :func:`read_wav` then reads exactly the validated bytes of the data chunk with numpy, so its
   memory is a small multiple of the file's size on disk (the raw samples, their float32 copy, and
   a float64 temporary for 32-bit PCM).

Supported: 8/16/24/32-bit PCM and 32/64-bit IEEE float, plain or WAVE_FORMAT_EXTENSIBLE (every
MIMII file), little-endian RIFF, big-endian RIFX and RF64. Samples decode exactly as scipy's reader
decoded them before (24-bit is left-justified in int32), then scale to [-1, 1).

Policies (every failure is an :class:`~edge_asd.errors.AudioFileError` that names the file and says
what to do):

- A file shorter than its header declares (data chunk or RIFF size beyond the end of the file) is
  *truncated* and refused, not read up to what is present: it usually means an interrupted copy,
  and training or calibrating on half a recording silently is worse than a clear error. A missing
  final pad byte is tolerated.
- A RIFF size *smaller* than the file is a harmless writer bug and is ignored (chunks are walked up
  to the real end of the file).
- A data chunk whose size is not a whole number of frames loses its incomplete last frame (less
  than one sample per channel; what scipy did for mono files).
- NaN or infinite float samples make the file corrupt: an error, never a NaN score.
"""

from __future__ import annotations

import math
import os
import stat
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_asd.audio.resample import MAX_RESAMPLE_SR, MIN_RESAMPLE_SR, resample
from edge_asd.errors import AudioFileError, ParameterError

__all__ = [
    "read_wav",
    "write_wav",
    "wav_info",
    "wav_header",
    "WavHeader",
    "pcm_to_float32",
    "max_clip_seconds",
    "MAX_CLIP_SECONDS",
    "MAX_CLIP_SECONDS_ENV",
    "MAX_CHANNELS",
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "MAX_FLOAT_MAGNITUDE",
]

MAX_CLIP_SECONDS = 600.0
"""Default longest clip :func:`read_wav` and :func:`wav_info` accept, seconds (10 minutes: 60 MIMII
clips; at 8 channels, 16 kHz, 16 bit that is 154 MB on disk and 307 MB as float32)."""
MAX_CLIP_SECONDS_ENV = "EDGE_ASD_MAX_CLIP_SECONDS"
"""Environment variable that raises (or lowers) :data:`MAX_CLIP_SECONDS` for every command."""
MAX_CHANNELS = 64
"""Most channels a file may have (the largest microphone arrays in use have 32-64)."""
MIN_SAMPLE_RATE = 1_000
"""Lowest sample rate a file may declare, Hz. Nothing records machine sound below 1 kHz; a lower
rate is a corrupt header (and at 1 Hz a few kilobytes of samples would claim to last hours)."""
MAX_SAMPLE_RATE = 384_000
"""Highest sample rate a file may declare, Hz (the fastest audio converters sold). Reading a file at
1 .. 384 kHz is allowed; resampling only between :data:`MIN_RESAMPLE_SR` and
:data:`MAX_RESAMPLE_SR` (8 .. 192 kHz)."""
MAX_FLOAT_MAGNITUDE = 65_536.0
"""Largest absolute value a float sample may have (full scale is 1.0; some writers store float
audio on the int16 scale, +-32 768, which still passes). Beyond it a sample is garbage, and
squaring it in the front end's power spectrum would overflow float32 to inf and the score to NaN."""
MAX_CHUNKS = 64
"""Chunks walked before the data chunk (real files have 1-5: fmt, fact, LIST, bext, JUNK)."""
MAX_FMT_BYTES = 4096
"""Largest plausible fmt chunk, bytes (16 plain, 18 or 40 extensible; the rest is ignored)."""
_HEADER_READ = 64
"""Bytes of a fmt chunk that are parsed (the 40 of WAVE_FORMAT_EXTENSIBLE fit)."""

_PCM, _FLOAT, _EXTENSIBLE = 0x0001, 0x0003, 0xFFFE
_PCM_BITS = (8, 16, 24, 32)
_FLOAT_BITS = (32, 64)
# The 14 bytes that follow the 2-byte format tag in every KSDATAFORMAT_SUBTYPE_* GUID of the
# WAVE_FORMAT_EXTENSIBLE subformat field (the GUID is the tag + this fixed tail).
_SUBTYPE_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
# Names of compressed formats people actually meet, so the error says what the file is.
_KNOWN_TAGS = {
    0x0002: "MS ADPCM",
    0x0006: "A-law",
    0x0007: "mu-law",
    0x0011: "IMA ADPCM",
    0x0031: "GSM 6.10",
    0x0050: "MPEG",
    0x0055: "MP3",
    0x00FF: "AAC",
    0xF1AC: "FLAC",
}
_CONVERT = "convert it to 16-bit PCM (e.g. `sox in.wav -b 16 -e signed out.wav`)"
_CORRUPT = "the header is corrupt; re-copy the file or remove it"


def pcm_to_float32(data: np.ndarray) -> np.ndarray:
    """Scale integer PCM (or float) samples to float32 in [-1, 1).

    24-bit PCM is left-justified in int32 (as scipy returns it), so int32 is scaled by 2**31 in
    both cases. Scaling happens in place on the converted copy, so the only temporaries are that
    copy (and a float64 one for int32, whose 31 bits float32 cannot hold before the division);
    the values are bit-identical to the out-of-place arithmetic (exact powers of two).
    """
    if data.dtype == np.uint8:
        out = data.astype(np.float32)
        out -= 128.0
        out /= 128.0
        return out
    if data.dtype == np.int16:
        out = data.astype(np.float32)
        out /= 32768.0
        return out
    if data.dtype == np.int32:
        wide = data.astype(np.float64)
        wide /= 2147483648.0
        return wide.astype(np.float32)
    if data.dtype in (np.float32, np.float64):
        return data.astype(np.float32, copy=False)
    raise ParameterError(f"unsupported sample type {data.dtype}")


def max_clip_seconds() -> float:
    """The clip-length limit in force, seconds: ``$EDGE_ASD_MAX_CLIP_SECONDS`` or :data:`MAX_CLIP_SECONDS`."""
    raw = os.environ.get(MAX_CLIP_SECONDS_ENV)
    if raw is None or not raw.strip():
        return MAX_CLIP_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise ParameterError(f"{MAX_CLIP_SECONDS_ENV}={raw!r}: must be a positive number of seconds")
    return value


@dataclass(frozen=True)
class WavHeader:
    """What :func:`wav_header` found in a wav file's header, every field already validated."""

    path: Path
    sr: int
    """Sample rate, Hz (:data:`MIN_SAMPLE_RATE` .. :data:`MAX_SAMPLE_RATE`)."""
    n_channels: int
    """Channels (1 .. :data:`MAX_CHANNELS`)."""
    bits: int
    """Bits per sample: 8/16/24/32 PCM or 32/64 float."""
    is_float: bool
    """IEEE float samples (else integer PCM)."""
    block_align: int
    """Bytes per frame (one sample of every channel)."""
    big_endian: bool
    """RIFX file."""
    data_offset: int
    """Byte offset of the first sample in the file."""
    n_frames: int
    """Complete frames in the data chunk (samples per channel)."""

    @property
    def duration_s(self) -> float:
        """Length of the audio, seconds."""
        return self.n_frames / self.sr

    @property
    def data_bytes(self) -> int:
        """Bytes of audio :func:`read_wav` reads (whole frames only)."""
        return self.n_frames * self.block_align


def _fail(path: Path, what: str) -> AudioFileError:
    return AudioFileError(f"{path}: {what}")


def _open(path: Path):
    """Open ``path`` for reading, turning every way that fails into a clear error."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise _fail(path, "no such file; check the path") from None
    except OSError as exc:
        raise _fail(path, f"cannot be read ({exc.strerror}); check the path and its permissions") from None
    if stat.S_ISDIR(st.st_mode):
        raise _fail(path, "is a folder, not a wav file")
    if not stat.S_ISREG(st.st_mode):
        # A FIFO or device would block or never end; a wav file is a regular file.
        raise _fail(path, "is not a regular file (a pipe or device?); copy the audio into a wav file")
    try:
        return open(path, "rb")  # noqa: SIM115 - closed by the caller
    except PermissionError as exc:
        raise _fail(path, f"cannot be read ({exc.strerror}); check its permissions") from None
    except OSError as exc:
        raise _fail(path, f"cannot be read ({exc.strerror}); check the path and its permissions") from None


def _read_at(fh, path: Path, offset: int, n: int) -> bytes:
    try:
        fh.seek(offset)
        return fh.read(n)
    except OSError as exc:
        raise _fail(path, f"cannot be read ({exc.strerror or exc}); the disk or file system may be failing") from None


def _truncated(path: Path, what: str) -> AudioFileError:
    return _fail(path, f"the file is truncated ({what}); re-copy it or remove it from the data set")


def _parse_fmt(path: Path, body: bytes, size: int, e: str) -> tuple[int, int, int, int, int, bool]:
    """Validate a fmt chunk's fields; returns ``(sr, channels, bits, block_align, byte_rate, is_float)``."""
    tag, channels, sr, byte_rate, block_align, bits = struct.unpack(e + "HHIIHH", body[:16])
    if tag == _EXTENSIBLE:
        if size < 40:
            raise _fail(path, f"WAVE_FORMAT_EXTENSIBLE fmt chunk is {size} bytes, needs 40; {_CORRUPT}")
        (cb_size,) = struct.unpack(e + "H", body[16:18])
        if cb_size < 22:
            raise _fail(path, f"WAVE_FORMAT_EXTENSIBLE with an extension of {cb_size} bytes (needs 22); {_CORRUPT}")
        guid = body[24:40]
        # The subformat GUID's tag is little-endian even in RIFX files (GUIDs are byte strings).
        sub_tag = struct.unpack("<H", guid[:2])[0]
        if guid[2:] != _SUBTYPE_TAIL or sub_tag not in (_PCM, _FLOAT):
            raise _fail(path, f"WAVE_FORMAT_EXTENSIBLE subformat {guid.hex()} is neither PCM nor IEEE float; {_CONVERT}")
        tag = sub_tag
    if tag not in (_PCM, _FLOAT):
        name = _KNOWN_TAGS.get(tag, "unknown")
        raise _fail(path, f"format tag 0x{tag:04x} ({name}) is not PCM or IEEE float; {_CONVERT}")
    is_float = tag == _FLOAT
    if not 1 <= channels <= MAX_CHANNELS:
        raise _fail(path, f"declares {channels} channels (supported: 1-{MAX_CHANNELS}); {_CORRUPT}")
    if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
        raise _fail(path, f"declares a sample rate of {sr} Hz (supported: {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz); {_CORRUPT}")
    allowed = _FLOAT_BITS if is_float else _PCM_BITS
    if bits not in allowed:
        kind = "float" if is_float else "PCM"
        raise _fail(path, f"{bits}-bit {kind} samples are not supported ({kind}: {'/'.join(map(str, allowed))} bits); {_CONVERT}")
    if block_align != channels * (bits // 8):
        raise _fail(
            path,
            f"block align is {block_align} bytes but {channels} channel(s) of {bits}-bit samples need "
            f"{channels * (bits // 8)}; {_CORRUPT}",
        )
    if byte_rate != sr * block_align:
        raise _fail(
            path,
            f"byte rate is {byte_rate} B/s but {sr} Hz x {block_align} B per frame is {sr * block_align}; "
            f"{_CORRUPT}",
        )
    return sr, channels, bits, block_align, byte_rate, is_float


def wav_header(path: str | os.PathLike, *, max_seconds: float | None = None) -> WavHeader:
    """Parse and validate a wav file's header without reading its samples.

    Reads the 12-byte preamble and at most :data:`MAX_CHUNKS` chunk headers (plus the first bytes of
    the fmt and ds64 chunks): a few hundred bytes whatever the file claims.

    Parameters
    ----------
    path
        The wav file.
    max_seconds
        Longest accepted clip, seconds; ``None``: :func:`max_clip_seconds` (600 s unless
        ``$EDGE_ASD_MAX_CLIP_SECONDS`` says otherwise).

    Raises
    ------
    AudioFileError
        Missing, unreadable, empty, non-wav, truncated or implausible file, or one longer than
        ``max_seconds``. The message names the file and says what to do.
    """
    path = Path(path)
    limit_s = max_clip_seconds() if max_seconds is None else float(max_seconds)
    if not limit_s > 0:
        raise ParameterError(f"max_seconds must be > 0, got {max_seconds}")
    with _open(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise _fail(path, "the file is empty (0 bytes); re-record or remove it")
        head = _read_at(fh, path, 0, 12)
        magic = head[:4]
        if len(head) < 12 or magic not in (b"RIFF", b"RIFX", b"RF64") or head[8:12] != b"WAVE":
            if len(head) < 12 and magic in (b"RIFF", b"RIFX", b"RF64"):
                raise _truncated(path, f"only {size} bytes, ending inside the RIFF header")
            raise _fail(
                path, "not a wav file (no RIFF/WAVE header); it may be truncated, corrupt or another format - remove it"
            )
        e = ">" if magic == b"RIFX" else "<"
        riff_size = struct.unpack(e + "I", head[4:8])[0]
        rf64 = magic == b"RF64"
        data64: int | None = None
        fmt: tuple[int, int, int, int, int, bool] | None = None
        pos, data_size, data_offset = 12, None, 0
        for n_chunk in range(MAX_CHUNKS + 1):
            if n_chunk == MAX_CHUNKS:
                raise _fail(path, f"more than {MAX_CHUNKS} chunks before the audio; the file is corrupt or not audio - remove it")
            chunk = _read_at(fh, path, pos, 8)
            if len(chunk) < 8:
                if fmt is None and pos < size:
                    raise _truncated(path, f"{size} bytes, ending inside a chunk header before the fmt chunk")
                if fmt is None:
                    raise _fail(path, "has no fmt chunk (no audio format); the file is corrupt - remove it")
                raise _fail(path, "has no data chunk (no audio); the file is incomplete or corrupt - re-copy or remove it")
            cid = chunk[:4]
            (csize,) = struct.unpack(e + "I", chunk[4:8])
            body_at = pos + 8
            if cid == b"fmt ":
                if fmt is not None:
                    raise _fail(path, "has two fmt chunks (two audio formats); the file is corrupt - remove it")
                if csize < 16:
                    raise _fail(path, f"fmt chunk is {csize} bytes, shorter than the 16 every wav needs; {_CORRUPT}")
                if csize > MAX_FMT_BYTES:
                    raise _fail(path, f"fmt chunk declares {csize} bytes (at most {MAX_FMT_BYTES} are plausible); {_CORRUPT}")
                want = min(csize, _HEADER_READ)
                body = _read_at(fh, path, body_at, want)
                if len(body) < want:
                    raise _truncated(path, f"{size} bytes, ending inside the fmt chunk")
                fmt = _parse_fmt(path, body, csize, e)
            elif cid == b"ds64" and rf64 and pos == 12:
                body = _read_at(fh, path, body_at, 28)
                if csize < 28 or len(body) < 28:
                    raise _fail(path, f"RF64 file with a short ds64 chunk; {_CORRUPT}")
                riff_size, data64 = struct.unpack("<QQ", body[:16])
            elif cid == b"data":
                if fmt is None:
                    raise _fail(path, "has no fmt chunk before its audio data (no audio format); the file is corrupt - remove it")
                data_size = data64 if rf64 and csize == 0xFFFFFFFF and data64 is not None else csize
                data_offset = body_at
                break
            elif rf64 and pos == 12:
                raise _fail(path, f"RF64 file without a ds64 chunk first; {_CORRUPT}")
            # Chunks are padded to an even size. A huge declared size just moves past the end of the
            # file and ends the walk above: Python integers cannot overflow.
            pos = body_at + csize + (csize & 1)
    sr, channels, bits, block_align, _, is_float = fmt
    available = size - data_offset
    if data_size > available:
        raise _truncated(
            path,
            f"its header declares {data_size} bytes ({data_size / block_align / sr:.2f} s) of audio but only "
            f"{available} bytes ({available / block_align / sr:.2f} s) are present",
        )
    # The declared RIFF size may be smaller than the file (ignored, see the module docstring) but
    # not larger: something after the audio was cut off. One byte is a missing final pad byte.
    if riff_size + 8 > size + 1:
        raise _truncated(path, f"its RIFF header declares {riff_size + 8} bytes but the file has {size}")
    n_frames = data_size // block_align
    if n_frames == 0:
        raise _fail(path, "the file holds no audio samples; re-record or remove it")
    header = WavHeader(
        path=path, sr=sr, n_channels=channels, bits=bits, is_float=is_float, block_align=block_align,
        big_endian=e == ">", data_offset=data_offset, n_frames=n_frames,
    )
    if header.duration_s > limit_s:
        raise _fail(
            path,
            f"is {header.duration_s:.1f} s long, longer than the {limit_s:g} s limit (as float32 it would take "
            f"{header.n_frames * channels * 4 / 1e6:.0f} MB of memory); split it into shorter clips, or raise the "
            f"limit with the environment variable {MAX_CLIP_SECONDS_ENV}={math.ceil(header.duration_s)} "
            f"(max_seconds= in Python)",
        )
    return header


def _decode(header: WavHeader) -> np.ndarray:
    """Read the validated data bytes into the integer/float array scipy's reader returned:
    ``(n_frames, n_channels)`` uint8, int16, int32 (24-bit left-justified), int32, float32 or float64."""
    path, e = header.path, (">" if header.big_endian else "<")
    width = header.bits // 8
    count = header.n_frames * header.n_channels
    with _open(path) as fh:
        try:
            fh.seek(header.data_offset)
            if width == 3:
                raw = np.fromfile(fh, dtype=np.uint8, count=count * 3)
            else:
                kind = "f" if header.is_float else ("u" if width == 1 else "i")
                raw = np.fromfile(fh, dtype=f"{e}{kind}{width}", count=count)
        except OSError as exc:
            raise _fail(path, f"cannot be read ({exc}); the disk or file system may be failing") from None
    if raw.size != (count * 3 if width == 3 else count):
        # The header was checked against the file size a moment ago: the file changed meanwhile.
        raise _truncated(path, "it became shorter while being read")
    if width == 3:
        # Left-justify each 3-byte sample in 4 bytes (low byte zero), as scipy does, so 24-bit
        # audio scales by 2**31 like 32-bit.
        wide = np.zeros((count, 4), dtype=np.uint8)
        if header.big_endian:
            wide[:, :3] = raw.reshape(-1, 3)
        else:
            wide[:, 1:] = raw.reshape(-1, 3)
        del raw
        data = wide.view(f"{e}i4").reshape(-1)
    else:
        data = raw
    if not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))
    return data.reshape(header.n_frames, header.n_channels)


def wav_info(path: str | os.PathLike, *, max_seconds: float | None = None) -> tuple[int, int, int]:
    """Return ``(sr, n_channels, n_samples)`` of a wav file (Hz, channels, samples per channel).

    Only the header is read and validated (see :func:`wav_header`), so listing a folder of long
    files stays cheap; ``max_seconds`` as in :func:`wav_header`.
    """
    h = wav_header(path, max_seconds=max_seconds)
    return h.sr, h.n_channels, h.n_frames


def read_wav(
    path: str | os.PathLike,
    *,
    sr: int | None = None,
    channels: int | None = None,
    max_seconds: float | None = None,
) -> tuple[np.ndarray, int]:
    """Read a wav file into float32 samples of shape ``(n_samples, n_channels)``.

    Parameters
    ----------
    path
        The wav file.
    sr
        Target sample rate in Hz. A file at another rate is resampled to it with scipy's polyphase
        resampler (both rates must lie in 8-192 kHz); ``None`` keeps the file's rate.
    channels
        Expected channel count; a file with another count is an error (a 4-mic profile fed an
        8-channel file is a configuration mistake, not something to guess around).
    max_seconds
        Longest accepted clip, seconds; ``None``: :func:`max_clip_seconds` (600 s unless
        ``$EDGE_ASD_MAX_CLIP_SECONDS`` says otherwise).

    Returns
    -------
    samples : np.ndarray, float32, shape (n_samples, n_channels), values in [-1, 1)
    sr : int, the sample rate of ``samples`` in Hz

    Raises
    ------
    AudioFileError
        Missing, empty, truncated, non-wav, unsupported or implausible file (see
        :func:`wav_header`); longer than ``max_seconds``; NaN or inf samples; wrong channel count; a
        rate that cannot be resampled. The message names the file. Nothing is allocated for the
        samples before the header has passed.
    """
    path = Path(path)
    header = wav_header(path, max_seconds=max_seconds)
    if channels is not None and header.n_channels != channels:
        raise _fail(
            path,
            f"has {header.n_channels} channel(s) but {channels} are expected; "
            "use a file from the configured microphone array or change the configured channel count",
        )
    if sr is not None and sr != header.sr and not (
        MIN_RESAMPLE_SR <= header.sr <= MAX_RESAMPLE_SR and MIN_RESAMPLE_SR <= sr <= MAX_RESAMPLE_SR
    ):
        raise _fail(
            path,
            f"is sampled at {header.sr} Hz and cannot be resampled to {sr} Hz (resampling works between "
            f"{MIN_RESAMPLE_SR} and {MAX_RESAMPLE_SR} Hz); record or convert it at {sr} Hz",
        )
    samples = pcm_to_float32(_decode(header))
    if header.is_float:
        # Integer PCM is always finite and within [-1, 1). For float, max/min propagate NaN and need
        # no n-byte boolean temporary, unlike np.isfinite(samples).all().
        peak = max(abs(float(samples.max())), abs(float(samples.min())))
        if not math.isfinite(peak):
            raise _fail(path, "contains NaN or infinite samples; the recording is damaged - re-record or remove it")
        if peak > MAX_FLOAT_MAGNITUDE:
            raise _fail(
                path,
                f"holds a float sample of magnitude {peak:.3g} (full scale is 1.0; at most {MAX_FLOAT_MAGNITUDE:g} "
                "is accepted); the recording is damaged - re-record or remove it",
            )
    file_sr = header.sr
    if sr is not None and sr != file_sr:
        samples = resample(samples, orig_sr=file_sr, target_sr=sr)
        file_sr = sr
    return np.ascontiguousarray(samples), file_sr


def write_wav(path: str | os.PathLike, samples: np.ndarray, sr: int, *, subtype: str = "PCM_16") -> None:
    """Write float samples ``(n_samples,)`` or ``(n_samples, n_channels)`` in [-1, 1] to a wav file.

    ``sr`` in Hz. ``subtype`` is ``"PCM_16"`` (clipped to the int16 range) or ``"FLOAT"``. The file
    is written to a temporary name and renamed, so a crash never leaves a half-written wav behind.
    """
    path = Path(path)
    x = np.asarray(samples)
    if subtype == "PCM_16":
        x = np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)
    elif subtype == "FLOAT":
        x = x.astype(np.float32)
    else:
        raise ParameterError(f"subtype must be 'PCM_16' or 'FLOAT', got {subtype!r}")
    # Imported here: scipy.io pulls in scipy.sparse, which a device that only reads audio never
    # needs (benchmarks/import_memory.py).
    import scipy.io.wavfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            scipy.io.wavfile.write(fh, int(sr), x)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
