"""Record normal audio on the device into a training folder (``edge-asd record``).

The recorder cuts the blocks of any :class:`~edge_asd.audio.sources.AudioSource` (the same sources
``edge-asd run`` listens to) into fixed-length clips and writes them in the trainer's plain-folder
layout::

    OUT_DIR/normal/<device id>_<UTC yyyymmddTHHMMSSZ>_<NNNN>.wav    16-bit PCM, the source's channels and rate
    OUT_DIR/sessions/<session id>.json                             one sidecar per recording session

``asd-train`` reads ``OUT_DIR`` as ``--layout folder`` (every clip labelled normal). Running again
into the same folder adds a session; an existing file is never overwritten.

The sidecar is written before the first clip and replaced atomically after every clip, so after a
crash or a power cut it lists exactly the clips that were complete (``stop_reason`` stays ``null``
when the process never got to say why it stopped). Only whole clips are ever written: the audio of
an unfinished clip is dropped and counted in ``seconds_discarded``.

Disk space is checked before the session starts (one clip plus the margin, else
:class:`DiskFullError`) and again before each further clip; a full disk, also one that fills up
while a clip is being captured (``ENOSPC`` on write), ends the session cleanly with
``stop_reason = "disk full"`` and every finished clip intact.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import queue
import shutil
import signal
import tempfile
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from edge_asd import __version__
from edge_asd.audio.wav import write_wav
from edge_asd.errors import EdgeASDError, ParameterError

__all__ = [
    "STOP_DONE",
    "STOP_SOURCE_ENDED",
    "STOP_DISK_FULL",
    "STOP_INTERRUPTED",
    "STOP_ERROR",
    "RecordingError",
    "DiskFullError",
    "RecordingPlan",
    "RecordingResult",
    "check_free_space",
    "clip_bytes",
    "free_bytes",
    "record_clips",
    "stop_on_signals",
]

NORMAL_DIR = "normal"
"""Sub-folder of the clips: the trainer's plain-folder layout labels everything in it normal."""
SESSIONS_DIR = "sessions"
"""Sub-folder of the session sidecars (outside ``normal/``, so the trainer never sees them)."""
SIDECAR_SCHEMA = 1

STOP_DONE = "done"
"""Every requested clip was written."""
STOP_SOURCE_ENDED = "source ended"
"""The files ran out before the requested audio."""
STOP_DISK_FULL = "disk full"
"""The next clip would not fit above the margin, or a write failed with ENOSPC."""
STOP_INTERRUPTED = "interrupted"
"""SIGINT / SIGTERM (or the caller's stop event)."""
STOP_ERROR = "error"
"""The source or a write failed otherwise; the error is raised after the sidecar is updated."""

WAV_HEADER_BYTES = 44
"""RIFF + fmt + data chunk headers of a 16-bit PCM file as scipy writes it."""
SPACE_SLACK_BYTES = 64 * 1024
"""Added to every space check: file-system block rounding of the clip, and the sidecar's rewrite
(tmp + rename needs a second copy for a moment)."""
BYTES_PER_MB = 1_000_000
QUEUE_POLL_S = 0.5
"""Longest wait for a block before the stop flag is looked at again, seconds."""
_END = None
"""Queue marker: the capture thread has finished (end of source, stop, or error)."""
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class RecordingError(EdgeASDError):
    """The output folder cannot be created or written."""


class DiskFullError(RecordingError):
    """Not enough free space in the output folder to record (at all, or all that was asked)."""


@dataclass(frozen=True, kw_only=True)
class RecordingPlan:
    """What one recording session should produce."""

    device_id: str
    """Prefix of every clip name and session id (letters, digits, ``-`` and ``_``)."""
    seconds: float
    """Total audio requested, seconds; only whole clips are written, so at most
    ``floor(seconds / clip_seconds)`` clips."""
    clip_seconds: float = 10.0
    """Length of every clip, seconds (MIMII and DCASE clips are 10 s)."""
    min_free_bytes: int = 50 * BYTES_PER_MB
    """Space kept free on the output disk, bytes: recording stops before the disk gets this full."""
    profile: str | None = None
    """The device profile the capture settings came from (recorded in the sidecar)."""
    input_desc: str = ""
    """Human-readable description of the source (recorded in the sidecar)."""

    def __post_init__(self) -> None:
        if not self.device_id or not all(c.isalnum() or c in "-_" for c in self.device_id):
            # The id becomes part of file names: no separators, no dots.
            raise ParameterError(f"device id must be letters, digits, '-' or '_', got {self.device_id!r}")
        for key in ("seconds", "clip_seconds"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise ParameterError(f"{key} must be > 0 seconds, got {value!r}")
        if self.seconds < self.clip_seconds:
            raise ParameterError(
                f"{self.seconds:g} s of audio is shorter than one {self.clip_seconds:g} s clip, so nothing would "
                "be written; ask for more seconds or shorter clips"
            )
        if self.min_free_bytes < 0:
            raise ParameterError(f"min_free_bytes must be >= 0, got {self.min_free_bytes}")

    def clip_samples(self, sr: int) -> int:
        """Samples (per channel) in one clip at ``sr`` Hz."""
        n = round(self.clip_seconds * sr)
        if n < 1:
            raise ParameterError(f"a {self.clip_seconds:g} s clip at {sr} Hz holds no samples; use longer clips")
        return n

    def n_clips(self, sr: int) -> int:
        """Whole clips in the requested audio at ``sr`` Hz (a shorter tail is never recorded)."""
        return round(self.seconds * sr) // self.clip_samples(sr)


@dataclass(frozen=True, kw_only=True)
class RecordingResult:
    """How a session ended. Paths are absolute or as given; seconds are audio seconds."""

    session_id: str
    sidecar: Path
    clips: tuple[Path, ...]
    """Clips written in this session, in order."""
    clips_requested: int
    seconds_requested: float
    seconds_recorded: float
    """Audio in the written clips, seconds."""
    seconds_discarded: float
    """Audio captured but not written (an unfinished clip, or one the full disk refused), seconds."""
    stop_reason: str
    """One of ``done``, ``source ended``, ``disk full``, ``interrupted``, ``error``."""
    overflows: int
    """Blocks the source lost (device overruns) plus blocks dropped because writing fell behind."""
    free_bytes: int
    """Free space in the output folder when the session ended, bytes."""
    needed_bytes: int
    """Space one more clip needs including the margin, bytes."""
    sidecar_error: str | None = None
    """Why the final sidecar update failed (the previous, consistent version is still there)."""


def clip_bytes(n_samples: int, n_channels: int) -> int:
    """Size of a 16-bit PCM wav file of ``n_samples`` x ``n_channels``, bytes."""
    return WAV_HEADER_BYTES + n_samples * n_channels * 2


def free_bytes(folder: Path) -> int:
    """Space an unprivileged writer may still use below ``folder``, bytes."""
    return shutil.disk_usage(folder).free


def _existing_ancestor(path: Path) -> Path:
    """``path`` or its nearest existing parent: where a folder not yet created would live."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_free_space(out_dir: str | os.PathLike, plan: RecordingPlan, *, sr: int, n_channels: int) -> int:
    """Check that one clip plus ``plan.min_free_bytes`` fits below ``out_dir`` (which need not exist
    yet: nothing is created when it does not fit); return the bytes each clip needs with the margin.

    Raises
    ------
    DiskFullError
        Not enough space; the message names the folder, what is free and what is needed.
    """
    out_dir = Path(out_dir)
    one = clip_bytes(plan.clip_samples(sr), n_channels)
    needed = one + SPACE_SLACK_BYTES + plan.min_free_bytes
    free = free_bytes(_existing_ancestor(out_dir))
    if free < needed:
        raise DiskFullError(
            f"{out_dir}: not enough free disk space to record: {_mb(free)} free, {_mb(needed)} needed "
            f"(one {plan.clip_seconds:g} s clip of {_mb(one)} plus the {_mb(plan.min_free_bytes)} kept free, "
            "--min-free-mb); free some space or record to another disk"
        )
    return needed


def _mb(n: int) -> str:
    return f"{n / BYTES_PER_MB:.1f} MB"


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    """Flush a file (or a directory entry) to the disk: a power cut on an SD card must not leave a
    sidecar that lists a clip whose data never reached the card."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_tmp(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` to a new uniquely named temporary file next to ``path``, flushed to the disk;
    nothing is left behind on failure."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` with ``data`` via a temporary file and a rename: readers see the old or the
    new version, never half of one; the temporary file is removed on any failure."""
    tmp = _write_json_tmp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_path(path.parent, directory=True)


def _make_dirs(out_dir: Path) -> tuple[Path, Path]:
    normal, sessions = out_dir / NORMAL_DIR, out_dir / SESSIONS_DIR
    try:
        normal.mkdir(parents=True, exist_ok=True)
        sessions.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise RecordingError(f"{exc.filename}: exists and is not a folder; choose another output folder") from exc
    except OSError as exc:
        raise RecordingError(
            f"{out_dir}: cannot create the output folders ({exc.strerror}); check the path and its permissions"
        ) from exc
    return normal, sessions


class _Capture:
    """Reads the source in a thread onto a bounded queue, as the service does, so a slow write
    (an SD card flushing a clip) never stalls the device: a real-time source's blocks are dropped
    (and counted) when the queue is full; a file source waits instead, nothing is lost."""

    def __init__(self, source: Any, *, queue_blocks: int, stop: threading.Event) -> None:
        self.source = source
        self.stop = stop
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, queue_blocks))
        self.error: BaseException | None = None
        self.dropped = 0
        self._lost_seen = 0
        self._thread = threading.Thread(target=self._run, name="record-capture", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _lost_since_last(self) -> int:
        total = getattr(self.source, "overflows", 0) + self.dropped
        lost, self._lost_seen = total - self._lost_seen, total
        return lost

    def _run(self) -> None:
        blocking = not getattr(self.source, "realtime", False)
        try:
            for block in self.source.blocks():
                if self.stop.is_set():
                    break
                # Each block carries the blocks lost just before it: a clip holding one has a gap.
                item = (block, self._lost_since_last())
                if blocking:
                    while not self.stop.is_set():
                        try:
                            self.queue.put(item, timeout=QUEUE_POLL_S)
                            break
                        except queue.Full:
                            continue
                else:
                    try:
                        self.queue.put_nowait(item)
                    except queue.Full:
                        self.dropped += 1
        except BaseException as exc:  # handed to the main thread, which raises it
            self.error = exc
        finally:
            # Always wake the consumer. While it still reads, wait for room (the queued audio
            # belongs to the recording); once it has stopped reading, make room instead.
            while True:
                try:
                    self.queue.put(_END, timeout=QUEUE_POLL_S)
                    break
                except queue.Full:
                    if self.stop.is_set():
                        with contextlib.suppress(queue.Empty):
                            self.queue.get_nowait()

    def finish(self) -> None:
        self.stop.set()
        self.source.stop()
        self._thread.join(timeout=QUEUE_POLL_S * 4)

    @property
    def lost(self) -> int:
        return getattr(self.source, "overflows", 0) + self.dropped


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event, source: Any) -> Iterator[None]:
    """While active, SIGINT and SIGTERM set ``stop`` and stop ``source`` instead of killing the
    process, so the clip being captured is dropped cleanly and the sidecar says ``interrupted``.
    A second signal raises :class:`KeyboardInterrupt` at once, so a user can still get out if a
    write hangs (the sidecar is updated on the way out). The previous handlers are restored on
    exit. Call from the main thread."""

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        source.stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class _Session:
    """The sidecar's content, kept in memory and rewritten atomically after every change."""

    def __init__(self, *, out_dir: Path, plan: RecordingPlan, sr: int,
                 n_channels: int, clip_n: int, n_clips: int, started: datetime) -> None:
        self.out_dir = out_dir
        self.path: Path | None = None  # set by create()
        self.data: dict[str, Any] = {
            "schema": SIDECAR_SCHEMA,
            "session_id": None,
            "device_id": plan.device_id,
            "profile": plan.profile,
            "input": plan.input_desc,
            "channels": n_channels,
            "sample_rate_hz": sr,
            "clip_seconds": clip_n / sr,
            "clip_samples": clip_n,
            "format": "wav PCM_16",
            "seconds_requested": plan.seconds,
            "clips_requested": n_clips,
            "start_time": started.isoformat(timespec="seconds"),
            "end_time": None,
            "stop_reason": None,  # null while recording, and after a crash or power cut
            "error": None,
            "clips": [],
            "clips_with_gaps": [],
            "seconds_recorded": 0.0,
            "seconds_discarded": 0.0,
            "overflows": 0,
            "min_free_bytes": plan.min_free_bytes,
            "edge_asd_version": __version__,
        }

    def create(self, sessions: Path, base_id: str) -> None:
        """Write the first version of the sidecar under a name no other session has.

        The complete file is hard-linked into place, which fails if the name exists: two sessions
        started in the same second (or after a Pi without a clock battery repeated a time) get
        distinct ids, and nobody ever sees an empty sidecar. File systems without hard links (FAT
        on a USB stick) claim the name with O_EXCL and then replace it.
        """
        for k in range(1, 1000):
            session_id = base_id if k == 1 else f"{base_id}-{k}"
            path = sessions / f"{session_id}.json"
            self.data["session_id"], self.path = session_id, path
            tmp = _write_json_tmp(path, self.data)
            try:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    continue
                except OSError as exc:
                    if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
                        raise
                    try:
                        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                    except FileExistsError:
                        continue
                    os.replace(tmp, path)
                _fsync_path(sessions, directory=True)
                return
            finally:
                tmp.unlink(missing_ok=True)
        raise RecordingError(f"{sessions}: 999 sessions named {base_id}*; is the clock stuck?")

    def add_clip(self, path: Path, *, gap: bool, overflows: int) -> None:
        name = path.relative_to(self.out_dir).as_posix()
        self.data["clips"].append(name)
        if gap:
            self.data["clips_with_gaps"].append(name)
        self.data["seconds_recorded"] = len(self.data["clips"]) * self.data["clip_seconds"]
        self.data["overflows"] = overflows
        self.save()

    def save(self) -> None:
        _write_json_atomic(self.path, self.data)


def _next_clip_path(normal: Path, prefix: str, index: int) -> tuple[Path, int]:
    """The first free ``<prefix>_<NNNN>.wav`` from ``index`` on (never an existing file's name)."""
    while True:
        path = normal / f"{prefix}_{index:04d}.wav"
        if not path.exists():
            return path, index
        index += 1


def record_clips(
    source: Any,
    out_dir: str | os.PathLike,
    plan: RecordingPlan,
    *,
    stop: threading.Event | None = None,
    on_clip: Callable[[Path, int, int], None] | None = None,
    queue_blocks: int = 100,
    now: Callable[[], datetime] = _utc_now,
) -> RecordingResult:
    """Record ``plan`` from ``source`` into ``out_dir`` (see the module docstring for the layout).

    Parameters
    ----------
    source
        An open :class:`~edge_asd.audio.sources.AudioSource`; its ``sr`` (Hz) and ``n_channels`` are
        the clips'. The caller closes it.
    out_dir
        The output folder (created if needed).
    plan
        What to record.
    stop
        Set it (from a signal handler or another thread) to end the session: the clip being
        captured is dropped, ``stop_reason`` is ``interrupted``.
    on_clip
        Called after every clip with ``(path, clips written so far, clips requested)``.
    queue_blocks
        Blocks the capture queue holds while a clip is being written (the profile's
        ``input.queue_blocks``).
    now
        The clock for the session's UTC timestamp and times.

    Returns
    -------
    RecordingResult
        A full disk is a result (``stop_reason == "disk full"``), not an exception: the caller
        decides how to report it.

    Raises
    ------
    DiskFullError
        Not even one clip plus the margin fits in ``out_dir`` (nothing is written).
    RecordingError
        ``out_dir`` cannot be created or written (other than a full disk).
    EdgeASDError
        The source failed (e.g. a damaged file in a folder); the sidecar says ``error`` first.
    """
    out_dir = Path(out_dir)
    stop = stop if stop is not None else threading.Event()
    sr, n_channels = int(source.sr), int(source.n_channels)
    clip_n, n_clips = plan.clip_samples(sr), plan.n_clips(sr)
    needed = check_free_space(out_dir, plan, sr=sr, n_channels=n_channels)
    normal, sessions = _make_dirs(out_dir)

    started = now()
    stamp = started.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    prefix = f"{plan.device_id}_{stamp}"
    session = _Session(out_dir=out_dir, plan=plan, sr=sr, n_channels=n_channels, clip_n=clip_n,
                       n_clips=n_clips, started=started)
    try:
        session.create(sessions, prefix)
    except OSError as exc:
        if exc.errno in _DISK_FULL_ERRNOS:
            raise DiskFullError(f"{out_dir}: the disk is full; cannot even write the session sidecar") from exc
        raise RecordingError(f"{sessions}: cannot write the session sidecar ({exc.strerror}); "
                             "check that the folder is writable") from exc
    session_id, sidecar = session.data["session_id"], session.path

    clips: list[Path] = []
    buffer = np.empty((clip_n, n_channels), dtype=np.float32)
    filled = 0
    gap = False  # blocks were lost inside the clip being captured
    discarded = 0  # samples captured but never written
    index = 0
    reason: str | None = None
    error: BaseException | None = None
    # The capture thread has its own flag: ending it must not set the caller's event.
    capture = _Capture(source, queue_blocks=queue_blocks, stop=threading.Event())
    capture.start()
    try:
        while reason is None:
            try:
                item = capture.queue.get(timeout=QUEUE_POLL_S)
            except queue.Empty:
                # A microphone that is reconnecting yields nothing; a stop must still be noticed.
                if stop.is_set():
                    reason = STOP_INTERRUPTED
                continue
            if stop.is_set():
                reason = STOP_INTERRUPTED
                break
            if item is _END:
                if capture.error is not None:
                    error, reason = capture.error, STOP_ERROR
                else:
                    reason = STOP_SOURCE_ENDED
                break
            block, lost = item
            gap = gap or lost > 0
            pos = 0
            while pos < block.shape[0]:
                take = min(clip_n - filled, block.shape[0] - pos)
                buffer[filled : filled + take] = block[pos : pos + take]
                filled += take
                pos += take
                if filled < clip_n:
                    continue
                path, index = _next_clip_path(normal, prefix, index)
                try:
                    write_wav(path, buffer, sr)  # tmp + rename: a failed write leaves nothing behind
                    _fsync_path(path)
                    _fsync_path(normal, directory=True)
                except OSError as exc:
                    path.unlink(missing_ok=True)  # fsync failed after the rename: the clip is not safe
                    discarded += clip_n
                    filled = 0
                    if exc.errno in _DISK_FULL_ERRNOS:
                        reason = STOP_DISK_FULL
                    else:
                        error = RecordingError(f"{path}: cannot write the clip ({exc.strerror}); "
                                               f"check that {normal} is writable")
                        reason = STOP_ERROR
                    break
                clips.append(path)
                index += 1
                filled = 0
                try:
                    session.add_clip(path, gap=gap, overflows=capture.lost)
                except OSError as exc:
                    # The clip is complete and stays; only the sidecar is one clip behind.
                    reason = STOP_DISK_FULL if exc.errno in _DISK_FULL_ERRNOS else STOP_ERROR
                    if reason == STOP_ERROR:
                        error = RecordingError(f"{sidecar}: cannot update the session sidecar ({exc.strerror})")
                    break
                gap = False
                if on_clip is not None:
                    on_clip(path, len(clips), n_clips)
                if len(clips) >= n_clips:
                    reason = STOP_DONE
                    break
                free = free_bytes(out_dir)
                if free < needed:  # checked before capturing the next clip: no audio wasted on it
                    reason = STOP_DISK_FULL
                    break
    except KeyboardInterrupt:
        # Only when the caller installed no handler (stop_on_signals): still leave a true sidecar.
        reason = STOP_INTERRUPTED
        _finish(session, capture, reason, filled + discarded, sr, now, None)
        raise
    except BaseException as exc:
        reason, error = STOP_ERROR, exc
    if reason != STOP_DONE:
        discarded += filled
    sidecar_error = _finish(session, capture, reason, discarded, sr, now, error)
    if error is not None:
        raise error
    return RecordingResult(
        session_id=session_id,
        sidecar=sidecar,
        clips=tuple(clips),
        clips_requested=n_clips,
        seconds_requested=plan.seconds,
        seconds_recorded=len(clips) * clip_n / sr,
        seconds_discarded=discarded / sr,
        stop_reason=reason,
        overflows=capture.lost,
        free_bytes=free_bytes(out_dir),
        needed_bytes=needed,
        sidecar_error=sidecar_error,
    )


def _finish(session: _Session, capture: _Capture, reason: str, discarded: int, sr: int,
            now: Callable[[], datetime], error: BaseException | None) -> str | None:
    """Stop the capture thread and write the final sidecar; return why that write failed, if it did
    (the previous version, written after the last clip, is still accurate about the clips)."""
    capture.finish()
    session.data.update(
        end_time=now().isoformat(timespec="seconds"),
        stop_reason=reason,
        seconds_discarded=discarded / sr,
        overflows=capture.lost,
        error=str(error) if error is not None else None,
    )
    try:
        session.save()
    except OSError as exc:
        return f"{session.path}: final update failed ({exc.strerror})"
    return None
