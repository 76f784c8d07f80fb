"""Remote operations: an operator's commands to a running detector, over its MQTT connection.

Off by default; ``mqtt.remote_commands = true`` turns it on, and the configuration is refused
unless the broker connection is TLS with a password or a client certificate, and a public key
(``mqtt.command_key_file``) is set. Anyone who can publish to the command topic could otherwise
change what the detector listens for, so the device itself authenticates every command: each is
signed with the operator's Ed25519 key (:mod:`edge_asd.signing`; ``edge-asd sign``), names this
device, was signed within the last five minutes, and carries a nonce the device has not seen.
Retained commands are dropped (they would run again at every connection), so are messages over
:data:`MAX_COMMAND_BYTES` (before any parsing; MQTT 5 Maximum Packet Size keeps larger ones at
the broker). The signed commands are JSON objects (what ``edge-asd sign`` takes)::

    {"id": "op-17", "command": "status"}
    {"id": "op-18", "command": "calibrate", "seconds": 600, "false_alarms_per_week": 1}
    {"id": "op-19", "command": "enroll", "seconds": 600, "selective": false}
    {"id": "op-20", "command": "reload"}
    {"id": "op-21", "command": "reload", "bundle": "/var/lib/edge-asd/incoming/v7"}

The result of every command, done or refused, is an event of kind ``command`` (through the store's
outbox, QoS 1, like every event) whose details name the command's ``id``, say ``ok`` and why.

``calibrate`` / ``enroll`` record the next ``seconds`` of the service's own stream (the service
holds the microphone) into a wav file beside the bundle, then run on it exactly what the
``edge-asd calibrate`` / ``enroll`` commands run, on a copy of the bundle; their false-alarm target
is bounded (:data:`REMOTE_RATE_PER_WEEK`). ``reload`` re-reads the running bundle's folder, or
installs a bundle from ``mqtt.incoming_dir`` (signed by the operator, ``bundle.sig``, with a
version above the running one's) in its place.

Every change goes the same way, so a bad bundle never replaces a good one: the new bundle (the
edited copy, or the folder named) is verified first — ``bundle.json`` parses, every model file
matches the sha256 recorded for it, the detector loads and scores a window, and its threshold was
set for this configuration — and only then takes the running bundle's place, with one atomic
exchange of the two folders (``renameat2(RENAME_EXCHANGE)``; where the file system cannot, the
command fails and nothing changes). The previous bundle is kept at ``<bundle>.previous``, copied
before the exchange, so a full disk fails the command before anything changed. The detector is then loaded from the running bundle's path; should that
fail, the exchange is undone. Detection goes on with the old detector until the new one is
swapped in between two blocks.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import math
import os
import queue
import shutil
import threading
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edge_asd.decision.calibration import DEFAULT_FALSE_ALARMS_PER_DAY
from edge_asd.errors import ConfigError, EdgeASDError

__all__ = ["COMMANDS", "Command", "CommandError", "CommandOutcome", "RemoteOperations", "exchange_dirs",
           "parse_command", "verify_bundle"]

log = logging.getLogger(__name__)

COMMANDS = ("status", "calibrate", "enroll", "reload")
MAX_COMMAND_BYTES = 4096
MAX_PACKET_BYTES = 8192
"""MQTT 5 Maximum Packet Size the device asks of the broker when it takes commands, bytes."""
MAX_THRESHOLD_CHANGE = 3.0
"""A remote calibrate / enroll may move the threshold by at most this many times the running one's
size (at least 1, in standard deviations of normal window scores): a threshold moved from 1 to 108
switched detection off as surely as a forged rate would (the review's 1e-300 false alarms a day)."""
REFUSAL_INTERVAL_S = 5.0
"""At most one refusal event per this many seconds for commands that fail their signature check (a
stranger flooding the topic must not flood the store); the others are only logged."""
MAX_RECORD_S = 3600.0
REMOTE_RATE_PER_WEEK = (0.1, 168.0)
"""False-alarm targets a remote calibrate / enroll may set, per week: one in ten weeks to one an hour."""
"""Longest remote calibrate / enroll recording, seconds."""
DISK_MARGIN_BYTES = 16 * 1024 * 1024
"""Space left free below the bundle's folder after a remote recording, bytes."""
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


class CommandError(EdgeASDError):
    """A remote command that cannot be carried out (malformed, refused, or failed)."""


@dataclass(frozen=True, kw_only=True)
class Command:
    """One parsed remote command."""

    id: str
    name: str
    seconds: float | None = None
    """calibrate / enroll: audio to record from the running stream, seconds."""
    false_alarms_per_day: float = DEFAULT_FALSE_ALARMS_PER_DAY
    """The device's false-alarm target, both alarm rules together."""
    selective: bool = False
    """enroll: as ``edge-asd enroll --selective``."""
    bundle: Path | None = None
    """reload: the bundle folder to install (default: re-read the running one)."""


@dataclass(frozen=True, kw_only=True)
class CommandOutcome:
    """What became of a command; ``detector`` is set when the service must switch to it."""

    command_id: str
    command: str
    ok: bool
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    detector: Any | None = None
    ends_command: bool = field(default=False, repr=False)
    """The outcome of the command being carried out (not a refusal of another one)."""

    def event_details(self) -> dict[str, Any]:
        """The ``details`` of the ``command`` event that reports this outcome."""
        return {"command_id": self.command_id, "command": self.command, "ok": self.ok, "message": self.message,
                **self.details}


def parse_command(payload: bytes | str | dict[str, Any]) -> Command:
    """Parse a command (its JSON text, or the object a signed message carried); :class:`CommandError`
    says what is wrong with it."""
    if isinstance(payload, dict):
        raw: Any = payload
    else:
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        if len(payload) > MAX_COMMAND_BYTES:
            raise CommandError(f"command message of {len(payload)} bytes is longer than {MAX_COMMAND_BYTES}")
        try:
            raw = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise CommandError(f"command is not JSON ({type(exc).__name__})") from exc
    if not isinstance(raw, dict):
        raise CommandError('command must be a JSON object such as {"id": "op-1", "command": "status"}')
    command_id = raw.get("id")
    if not isinstance(command_id, str) or not command_id or len(command_id) > 128:
        raise CommandError('command needs an "id": a non-empty string of at most 128 characters')
    name = raw.get("command")
    if name not in COMMANDS:
        raise CommandError(f'command {command_id}: "command" must be one of {list(COMMANDS)}, got {name!r}')
    rates = {"false_alarms_per_day", "false_alarms_per_week"}
    allowed = {"id", "command"} | {"calibrate": {"seconds", *rates}, "enroll": {"seconds", "selective", *rates},
                                    "reload": {"bundle"}, "status": set()}[name]
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise CommandError(f"command {command_id}: {name} takes no {unknown} (it takes {sorted(allowed - {'id', 'command'})})")
    seconds = raw.get("seconds")
    if name in ("calibrate", "enroll"):
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= MAX_RECORD_S:
            raise CommandError(f'command {command_id}: {name} needs "seconds" in (0, {MAX_RECORD_S:g}], got {seconds!r}')
    if rates <= set(raw):
        raise CommandError(f'command {command_id}: give "false_alarms_per_day" or "false_alarms_per_week", not both')
    key = "false_alarms_per_week" if "false_alarms_per_week" in raw else "false_alarms_per_day"
    given = raw.get(key, DEFAULT_FALSE_ALARMS_PER_DAY * (7 if key == "false_alarms_per_week" else 1))
    if isinstance(given, bool) or not isinstance(given, (int, float)) or not math.isfinite(given):
        raise CommandError(f'command {command_id}: "{key}" must be a number, got {given!r}')
    rate = float(given) / (7 if key == "false_alarms_per_week" else 1)
    # A remote command must not be able to switch detection off (a rate of 1e-300 sets an
    # unreachable threshold) nor flood the operator: the rate stays within bounds a plant uses.
    if not REMOTE_RATE_PER_WEEK[0] <= 7 * rate <= REMOTE_RATE_PER_WEEK[1]:
        raise CommandError(f'command {command_id}: "{key}" must be between {REMOTE_RATE_PER_WEEK[0]:g} and '
                           f'{REMOTE_RATE_PER_WEEK[1]:g} false alarms per week, got {given!r}')
    selective = raw.get("selective", False)
    if not isinstance(selective, bool):
        raise CommandError(f'command {command_id}: "selective" must be true or false, got {selective!r}')
    bundle = raw.get("bundle")
    if bundle is not None and (not isinstance(bundle, str) or not bundle):
        raise CommandError(f'command {command_id}: "bundle" must be a folder path, got {bundle!r}')
    return Command(id=command_id, name=name, seconds=None if seconds is None else float(seconds),
                   false_alarms_per_day=float(rate), selective=selective, bundle=None if bundle is None else Path(bundle))


def exchange_dirs(a: Path, b: Path) -> None:
    """Swap two folders atomically (Linux ``renameat2(RENAME_EXCHANGE)``).

    Where the call or the file system does not support it, or one folder lies inside the other,
    raises :class:`CommandError` and changes nothing: three plain renames are not atomic, and a
    crash between them once left the service unable to start."""
    libc_name = ctypes.util.find_library("c")
    renameat2 = getattr(ctypes.CDLL(libc_name, use_errno=True), "renameat2", None) if libc_name else None
    if renameat2 is None:
        raise CommandError(f"cannot exchange {a} and {b} atomically here (no renameat2 in the C library); nothing changed")
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return
    err = ctypes.get_errno()
    raise CommandError(f"cannot exchange {a} and {b} atomically ({os.strerror(err)}); nothing changed")


def verify_bundle(path: Path, config: Any, *, sr: int, n_channels: int) -> Any:
    """Load and check the bundle at ``path`` for ``config`` and return its detector.

    Checks the model files against their sha256 (:func:`edge_asd.scoring.bundle.read_bundle`), the
    interpreter, one scored window, and the threshold's record against the configuration
    (:func:`edge_asd.service.check_threshold_setting`). Raises an :class:`EdgeASDError` naming
    what is wrong."""
    from edge_asd.scoring.detector import Detector
    from edge_asd.decision.calibration import check_threshold_setting
    from edge_asd.scoring.streaming import StreamingScorer

    detector = Detector.from_bundle(path, model=config.device.model, num_threads=config.device.num_threads,
                                    class_label=config.device.class_label)
    if detector.config.sr != sr:
        raise CommandError(f"{path}: its features need {detector.config.sr} Hz but the running stream is at {sr} Hz; "
                           "restart the service to change the rate")
    check_threshold_setting(detector.bundle, config, n_channels=n_channels)
    cfg = detector.config
    n = cfg.n_fft + (detector.bundle.window.n_frames + 1) * cfg.hop_length
    scores = StreamingScorer(detector, n_channels=n_channels).push(np.zeros((n, n_channels), dtype=np.float32))
    if not scores or not all(math.isfinite(s) for _, s in scores):
        raise CommandError(f"{path}: the model does not give a finite score for a window of silence")
    return detector


class _Tap:
    """Writes the next ``seconds`` of the service's blocks to a 16-bit wav file."""

    def __init__(self, path: Path, *, sr: int, n_channels: int, seconds: float) -> None:
        self.path = path
        self.remaining = int(round(seconds * sr))
        self._wav = wave.open(str(path), "wb")
        self._wav.setnchannels(n_channels)
        self._wav.setsampwidth(2)
        self._wav.setframerate(sr)

    @property
    def done(self) -> bool:
        return self.remaining <= 0

    def write(self, block: np.ndarray) -> None:
        block = block[: self.remaining]
        pcm = np.clip(np.round(np.asarray(block, dtype=np.float32) * 32768.0), -32768, 32767).astype("<i2")
        self._wav.writeframes(pcm.tobytes())
        self.remaining -= block.shape[0]

    def close(self) -> None:
        self._wav.close()


class RemoteOperations:
    """Carries out remote commands for a running service, one at a time.

    :meth:`submit` is called from the MQTT client's thread with each command message;
    :meth:`on_block` and :meth:`poll` from the service's processing loop, which emits each
    outcome as a ``command`` event and switches to an outcome's detector. Recording, fitting and
    verifying run in a worker thread, so detection never waits for them.

    Parameters
    ----------
    config
        The running :class:`edge_asd.config.Config`.
    sr, n_channels
        Of the blocks the service processes (Hz, channels).
    status
        Returns the service's health snapshot as a JSON-able dict (the ``status`` command).
    """

    def __init__(self, config: Any, *, sr: int, n_channels: int, status: Callable[[], dict[str, Any]],
                 public_key: Any = None, nonces: Any = None) -> None:
        from edge_asd.signing import load_public_key

        self.config = config
        self.sr = sr
        self.n_channels = n_channels
        self.bundle_path = Path(config.device.bundle)
        self._status = status
        self._key = public_key if public_key is not None else load_public_key(config.mqtt.command_key_file)
        self._nonces = nonces
        """Where seen nonces are kept across restarts (``remember_nonce(nonce, issued_unix) -> bool``,
        the store); ``None``: this process's memory only."""
        self._seen: dict[str, float] = {}
        self._last_refusal = -math.inf
        self.incoming = _check_incoming(config.mqtt.incoming_dir, self.bundle_path)
        self._inbox: queue.Queue = queue.Queue()
        self._outcomes: queue.Queue = queue.Queue()
        self._busy: Command | None = None
        self._tap: _Tap | None = None
        self._worker: threading.Thread | None = None

    # -- MQTT thread -------------------------------------------------------------------------------
    def submit(self, payload: bytes | str, *, retained: bool = False) -> None:
        """Check a command message and queue it; refusals are answered (see the module docstring)."""
        from edge_asd.signing import SignatureError, verify_command

        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        if retained:
            log.warning("a retained message on %s/%s/command was ignored: commands are never retained (clear it with "
                        "mosquitto_pub -r -n -t that topic)", self.config.mqtt.topic_prefix, self.config.device.id)
            return
        if len(payload) > MAX_COMMAND_BYTES:
            self._refuse_unauthenticated(f"command message of {len(payload)} bytes is longer than {MAX_COMMAND_BYTES}")
            return
        try:
            body, nonce = verify_command(payload, self._key, device=self.config.device.id)
        except SignatureError as exc:
            self._refuse_unauthenticated(str(exc))
            return
        command_id = body.get("id") if isinstance(body.get("id"), str) else "?"
        if not self._remember(nonce, time.time()):
            log.warning("remote command %s refused: a replay (its nonce was seen before)", command_id)
            self._outcomes.put(CommandOutcome(command_id=command_id, command="?", ok=False,
                                              message="refused: this signed command was received before (a replay)"))
            return
        try:
            command = parse_command(body)
        except CommandError as exc:
            log.warning("remote command refused: %s", exc)
            self._outcomes.put(CommandOutcome(command_id=command_id, command="?", ok=False, message=str(exc)))
            return
        log.info("remote command %s: %s (signature verified)", command.id, command.name)
        self._inbox.put(command)

    def _refuse_unauthenticated(self, reason: str) -> None:
        """Answer a message that failed its checks before its signature verified (its id is not
        trusted), at most once per :data:`REFUSAL_INTERVAL_S`."""
        log.warning("remote command refused: %s", reason)
        now = time.monotonic()
        if now - self._last_refusal < REFUSAL_INTERVAL_S:
            return
        self._last_refusal = now
        self._outcomes.put(CommandOutcome(command_id="?", command="?", ok=False, message=f"refused: {reason}"))

    def _remember(self, nonce: str, now: float) -> bool:
        """``True`` if ``nonce`` is new (and keep it); ``False`` for a replay."""
        from edge_asd.signing import MAX_COMMAND_AGE_S

        for old in [n for n, t in self._seen.items() if now - t > 2 * MAX_COMMAND_AGE_S]:
            del self._seen[old]
        if nonce in self._seen:
            return False
        if self._nonces is not None:
            try:
                if not self._nonces.remember_nonce(nonce, now, keep_s=2 * MAX_COMMAND_AGE_S):
                    return False
            except Exception as exc:  # the store is failing: this process's memory still refuses replays
                log.warning("cannot record the command's nonce in the event store (%s); kept in memory", exc)
        self._seen[nonce] = now
        return True

    # -- processing loop ---------------------------------------------------------------------------
    def on_block(self, block: np.ndarray) -> None:
        """Feed a recording in progress; when it is complete, start fitting on it."""
        if self._tap is None:
            return
        try:
            self._tap.write(block)
        except OSError as exc:
            self._tap.close()
            self._tap.path.unlink(missing_ok=True)
            self._tap = None
            self._finish(False, f"cannot write the recording ({exc.strerror or exc}); nothing changed")
            return
        if self._tap.done:
            self._tap.close()
            tap, self._tap = self._tap, None
            self._start_worker(lambda: self._fit_on_recording(self._busy, tap.path))

    def poll(self) -> list[CommandOutcome]:
        """Outcomes to report (and detectors to switch to); starts the next queued command."""
        if self._busy is None:
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                command = None
            if command is not None:
                self._start(command)
        elif not self._inbox.empty():
            # Refuse rather than queue: an operator who sent two commands should know which one ran.
            late = self._inbox.get_nowait()
            self._outcomes.put(CommandOutcome(command_id=late.id, command=late.name, ok=False,
                                              message=f"busy with command {self._busy.id} ({self._busy.name}); send it again later"))
        done: list[CommandOutcome] = []
        while True:
            try:
                outcome = self._outcomes.get_nowait()
            except queue.Empty:
                return done
            if outcome.ends_command:
                self._busy = None
            done.append(outcome)

    def close(self) -> None:
        """Abandon a recording in progress (its file is removed) and wait briefly for the worker."""
        if self._tap is not None:
            self._tap.close()
            self._tap.path.unlink(missing_ok=True)
            self._tap = None
        if self._worker is not None:
            self._worker.join(timeout=10.0)

    # -- steps ---------------------------------------------------------------------------------------
    def _start(self, command: Command) -> None:
        self._busy = command
        if command.name == "status":
            self._finish(True, "status", details={"status": self._status()})
        elif command.name == "reload":
            target = command.bundle
            self._start_worker(lambda: self._install(command, None if target is None else self._incoming_bundle(target)))
        else:
            self._start_recording(command)

    def _start_recording(self, command: Command) -> None:
        assert command.seconds is not None
        need = int(command.seconds * self.sr) * self.n_channels * 2 + DISK_MARGIN_BYTES
        folder = self.bundle_path.parent
        try:
            free = shutil.disk_usage(folder).free
        except OSError as exc:
            self._finish(False, f"cannot check free space in {folder} ({exc.strerror or exc})")
            return
        if free < need:
            self._finish(False, f"{folder}: {free / 1e6:.0f} MB free, {need / 1e6:.0f} MB needed to record "
                                f"{command.seconds:g} s; free space or ask for fewer seconds")
            return
        path = folder / f".{self.bundle_path.name}.{command.name}-{_safe(command.id)}.wav"
        try:
            self._tap = _Tap(path, sr=self.sr, n_channels=self.n_channels, seconds=command.seconds)
        except OSError as exc:
            self._finish(False, f"{path}: cannot write the recording ({exc.strerror or exc})")
            return
        log.info("remote %s %s: recording %g s from the running stream", command.name, command.id, command.seconds)

    def _start_worker(self, job: Callable[[], tuple[str, dict[str, Any], Any]]) -> None:
        """Run ``job`` in a thread; it returns ``(message, details, detector)`` of a success, and
        everything it leaves behind is cleaned up by then (the outcome is reported last)."""
        command = self._busy

        def run() -> None:
            try:
                message, details, detector = job()
                self._finish(True, message, details=details, detector=detector, command=command)
            except EdgeASDError as exc:
                self._finish(False, f"{exc} (nothing changed: {self.bundle_path} keeps running)", command=command)
            except Exception as exc:  # a bug: keep the traceback, and answer the operator anyway
                log.exception("remote command %s failed", command.id if command else "?")
                self._finish(False, f"internal error: {type(exc).__name__}: {exc}", command=command)

        self._worker = threading.Thread(target=run, name="remote-command", daemon=True)
        self._worker.start()

    def _running_threshold(self) -> float:
        from edge_asd.scoring.bundle import read_bundle

        return float(read_bundle(self.bundle_path, verify_files=False).threshold.value)

    def _incoming_bundle(self, target: Path) -> Path:
        """The folder a reload names, if it is a signed bundle in ``mqtt.incoming_dir`` newer than the
        running one; else :class:`CommandError` (nothing changes)."""
        from edge_asd.signing import verify_bundle_signature

        if self.incoming is None:
            raise CommandError("reload of another bundle needs mqtt.incoming_dir (the folder signed bundles are copied "
                               "to); without it reload only re-reads the running bundle")
        resolved = target.expanduser().resolve()
        if resolved.parent != self.incoming:
            raise CommandError(f"{target}: reload installs only bundles directly in {self.incoming} (mqtt.incoming_dir)")
        version = verify_bundle_signature(resolved, self._key)
        floor = running_version(self.bundle_path)
        if version <= floor:
            raise CommandError(f"{resolved}: version {version} is not newer than the running bundle's {floor}: "
                               "no rollback to an older release (sign the bundle again with a higher version)")
        return resolved

    def _fit_on_recording(self, command: Command, wav_path: Path) -> tuple[str, dict[str, Any], Any]:
        """Calibrate or enroll a copy of the running bundle on the recording, then install it."""
        from edge_asd.decision.calibration import calibrate_bundle
        from edge_asd.config import InputConfig
        from edge_asd.decision.enrollment import enroll_bundle

        staging = self.bundle_path.with_name(f".{self.bundle_path.name}.staging-{_safe(command.id)}")
        try:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(self.bundle_path, staging)
            inp = InputConfig(kind="wav", path=wav_path, channels=self.n_channels, sample_rate_hz=self.sr, realtime=False)
            common = dict(seconds=command.seconds, period_s=self.config.alarm.period_s,
                          false_alarms_per_day=command.false_alarms_per_day, model=self.config.device.model,
                          class_label=self.config.device.class_label)
            if command.name == "calibrate":
                done = calibrate_bundle(staging, inp, **common)
                summary = {"threshold": done.result.threshold, "previous_threshold": done.previous.value,
                           "statement": done.result.statement()}
            else:
                enrolled = enroll_bundle(staging, inp, selective=command.selective, **common)
                summary = {"threshold": enrolled.calibration.threshold, "statement": enrolled.calibration.statement(),
                           "factory_exceedances": enrolled.factory_exceedances, "n_periods": enrolled.n_periods}
            running = self._running_threshold()
            limit = MAX_THRESHOLD_CHANGE * max(abs(running), 1.0)
            if abs(summary["threshold"] - running) > limit:
                raise CommandError(f"the new threshold {summary['threshold']:.4g} is more than {limit:.4g} away from the "
                                   f"running {running:.4g}: a remote command may not make that change (record normal "
                                   "sound again, or calibrate on the device itself)")
            return self._install(command, staging, summary=summary)
        finally:
            wav_path.unlink(missing_ok=True)
            shutil.rmtree(staging, ignore_errors=True)

    def _install(self, command: Command, new: Path | None, *,
                 summary: dict[str, Any] | None = None) -> tuple[str, dict[str, Any], Any]:
        """Verify ``new`` (default: the running bundle's folder, re-read) and put it in the running
        bundle's place; return the outcome's message, details and the detector to switch to."""
        summary = dict(summary or {})
        live = self.bundle_path
        if new is None or new == live.resolve():
            detector = verify_bundle(live, self.config, sr=self.sr, n_channels=self.n_channels)
            return f"reloaded {live}", summary, detector
        if not (new / "bundle.json").is_file():
            raise CommandError(f"{new}: not a model bundle (no bundle.json)")
        verify_bundle(new, self.config, sr=self.sr, n_channels=self.n_channels)
        previous = live.with_name(live.name + ".previous")
        kept = live.with_name(f".{live.name}.previous-{_safe(command.id)}")
        if command.name != "reload":
            # Copy the running bundle first: a full disk fails the command here, before anything changed.
            shutil.rmtree(kept, ignore_errors=True)
            try:
                shutil.copytree(live, kept)
            except OSError as exc:
                shutil.rmtree(kept, ignore_errors=True)
                raise CommandError(f"cannot keep a copy of {live} ({exc.strerror or exc}); free space on its disk") from exc
        try:
            exchange_dirs(new, live)  # ``new`` now holds the bundle that was running
        except CommandError:
            shutil.rmtree(kept, ignore_errors=True)
            raise
        try:
            detector = verify_bundle(live, self.config, sr=self.sr, n_channels=self.n_channels)
        except EdgeASDError as exc:
            exchange_dirs(new, live)
            shutil.rmtree(kept, ignore_errors=True)
            raise CommandError(f"{live}: the new bundle failed to load in place ({exc}); the previous one is back") from exc
        shutil.rmtree(previous, ignore_errors=True)
        # reload: the operator's folder now holds the old bundle; calibrate / enroll: the copy made above.
        os.rename(new if command.name == "reload" else kept, previous)
        summary["previous_bundle"] = str(previous)
        return f"{command.name}: {live} now runs the new bundle (previous kept at {previous})", summary, detector

    def _finish(self, ok: bool, message: str, *, details: dict[str, Any] | None = None, detector: Any = None,
                command: Command | None = None) -> None:
        command = command or self._busy
        assert command is not None
        (log.info if ok else log.warning)("remote command %s (%s): %s", command.id, command.name, message)
        self._outcomes.put(CommandOutcome(command_id=command.id, command=command.name, ok=ok, message=message,
                                          details=details or {}, detector=detector, ends_command=True))


def running_version(bundle_path: Path) -> int:
    """The signed release number of the running bundle (its ``bundle.sig``; 0 when it has none).

    Read without checking the signature: calibrate and enroll on the device rewrite ``bundle.json``
    (so the signature no longer covers it) but keep the release it came from."""
    from edge_asd.signing import BUNDLE_SIGNATURE_FILE

    try:
        raw = json.loads((bundle_path / BUNDLE_SIGNATURE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return 0
    version = raw.get("version") if isinstance(raw, dict) else None
    return version if isinstance(version, int) and not isinstance(version, bool) and version > 0 else 0


def _check_incoming(incoming: Path | None, live: Path) -> Path | None:
    """``mqtt.incoming_dir`` resolved, refused when it lies inside or above the running bundle."""
    if incoming is None:
        return None
    folder, bundle = Path(incoming).expanduser().resolve(), live.expanduser().resolve()
    if folder == bundle or folder.is_relative_to(bundle) or bundle.is_relative_to(folder):
        raise ConfigError(f"mqtt.incoming_dir {incoming} must be neither inside nor above the running bundle {live}")
    return folder


def _safe(text: str) -> str:
    """``text`` usable in a file name."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:64]
