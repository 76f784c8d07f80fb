"""Health of the running service: a small state file for ``edge-asd status``, and optional
Prometheus metrics with the same figures.

The service pushes into a :class:`HealthWriter` (it never reaches back into the service): its
counters (:class:`edge_asd.service.ServiceStats`, queue depth, alarm state, threshold) at every
turn of the processing loop, and, like a sink, every event and every closed period. The machine /
sensor state follows the events through the same :class:`edge_asd.events.discovery.LiveState` as
the MQTT ``state`` topic, so ``edge-asd status``, Prometheus and Home Assistant all say the same.

The writer replaces the state file atomically (a temporary file, then :func:`os.replace`): a reader
sees the old or the new snapshot, never half of one. It writes at every period and state change
and at least every ``health.write_interval_s`` (no fsync: the file lives in ``/run``, a tmpfs, and
is only worth anything while the service runs). A clean stop writes a last snapshot marked
``"service": "stopped"``. The file is world-readable (it holds no secret), so an operator needs no
``sudo`` for ``edge-asd status``.

:func:`read_status` reads it back and judges it:

- ``running``: written by a live process within 3 x ``write_interval_s`` (exit code 0);
- ``not_running``: no state file, or the service stopped cleanly (exit code 3);
- ``stale``: the file says running but the process that wrote it is gone (killed, crashed), or it
  was not updated for more than 3 x ``write_interval_s`` (a hung service) (exit code 4).

Prometheus (``health.metrics_port``, off by default): a text endpoint on ``metrics_bind``
(127.0.0.1 by default) served by ``prometheus_client`` from its own registry, exposing the last
snapshot written to the state file (see :data:`METRICS` for the names).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import math
import os
import sqlite3
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

from edge_asd.errors import ConfigError, EdgeASDError, ParameterError
from edge_asd.events.discovery import MACHINE_STATES, LiveState, apply_event, apply_period, evidence_attributes, machine_state
from edge_asd.events import utc_iso

__all__ = [
    "HealthError",
    "HealthSnapshot",
    "HealthStatus",
    "BundleInfo",
    "HealthWriter",
    "METRICS",
    "EXIT_RUNNING",
    "EXIT_NOT_RUNNING",
    "EXIT_STALE",
    "bundle_info",
    "open_health",
    "read_status",
    "format_status",
    "resolve_state_file",
]

log = logging.getLogger(__name__)

SCHEMA = 1
"""Version of the state file's layout (``schema``); a reader refuses other versions."""
STALE_FACTOR = 3.0
"""A state file not rewritten for this many write intervals is stale (the writer is hung)."""
SYSTEMD_RUNTIME_DIR = Path("/run/edge-asd")
"""The systemd unit's ``RuntimeDirectory=edge-asd`` (kept across stops: ``RuntimeDirectoryPreserve``)."""
STATE_FILE_NAME = "state.json"
STATE_FILE_MODE = 0o644
"""Readable by every local user whatever the service's umask: nothing in it is secret."""

EXIT_RUNNING = 0
EXIT_NOT_RUNNING = 3
"""As LSB init scripts and ``systemctl status``: program is not running."""
EXIT_STALE = 4
"""As LSB: program or service status is unknown (the file says running, the writer does not)."""

THRESHOLD_SET_BY = {"training": "factory", "device": "calibrated", "enrollment": "enrolled"}
"""How a threshold was set, from its record's ``source`` (other sources are shown as they are)."""


class HealthError(EdgeASDError):
    """The state file exists but cannot be read or is not an edge-asd state file."""


@dataclass(frozen=True, kw_only=True)
class HealthConfig:
    """``edge-asd status`` and the optional Prometheus endpoint (see :mod:`edge_asd.events.health`)."""

    state_file: Path | None = None
    """JSON file the running service keeps up to date and ``edge-asd status`` reads. Unset:
    ``/run/edge-asd/state.json`` when ``/run/edge-asd`` exists (the systemd unit's
    ``RuntimeDirectory``), else next to the event store (``events.sqlite`` -> ``events.state.json``)."""
    write_interval_s: float = 5.0
    """Rewrite the state file at least this often, seconds (also at every period and state
    change); ``edge-asd status`` calls a file older than 3 x this stale."""
    metrics_port: int = 0
    """TCP port of the Prometheus text endpoint (``/metrics``); 0 = off."""
    metrics_bind: str = "127.0.0.1"
    """Address the endpoint listens on: loopback by default (the figures stay on the device);
    ``0.0.0.0`` or ``::`` lets a Prometheus server elsewhere scrape it."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.write_interval_s) and 0.1 <= self.write_interval_s <= 3600):
            raise ParameterError(f"health.write_interval_s must be 0.1 to 3600 seconds, got {self.write_interval_s!r}")
        if not 0 <= self.metrics_port < 65536:
            raise ParameterError(f"health.metrics_port must be 1..65535 (0 = no metrics endpoint), got {self.metrics_port}")
        if not _is_address_or_host_name(self.metrics_bind):
            raise ParameterError("health.metrics_bind must be an IP address (127.0.0.1, 0.0.0.0, ::1) or a host name, "
                                 f"got {self.metrics_bind!r}")


def _is_address_or_host_name(value: str) -> bool:
    import ipaddress
    import re

    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        pass
    # RFC 1123 labels: letters, digits and inner hyphens, at most 63 characters each.
    label = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    return len(value) <= 253 and re.fullmatch(rf"{label}(?:\.{label})*\.?", value) is not None



def resolve_state_file(health: HealthConfig, store_path: Path, *, runtime_dir: Path = SYSTEMD_RUNTIME_DIR) -> Path:
    """Where the service writes its state and ``edge-asd status`` reads it.

    ``health.state_file`` when set; else ``runtime_dir/state.json`` when ``runtime_dir`` exists
    (under systemd it is the unit's ``RuntimeDirectory``, kept across stops); else next to the
    event store (``events.sqlite`` -> ``events.state.json``), so a service and ``status`` given the
    same configuration agree without systemd.
    """
    if health.state_file is not None:
        return Path(health.state_file)
    if runtime_dir.is_dir():
        return runtime_dir / STATE_FILE_NAME
    store_path = Path(store_path)
    return store_path.with_name(store_path.stem + ".state.json")


@dataclass(frozen=True, kw_only=True)
class BundleInfo:
    """The running bundle and its threshold's record (what ``status`` shows of them)."""

    path: str
    model: str
    """``int8`` or ``float``."""
    sr: int
    """The bundle's sample rate, Hz (the rate of the audio the service counts)."""
    threshold: float
    """The bundle's threshold (the service may run another: it reports the one in force)."""
    threshold_set_by: str
    """``factory`` (set at export), ``calibrated`` (``edge-asd calibrate``) or ``enrolled``
    (``edge-asd enroll``); another word when the bundle's record has another source."""
    threshold_method: str
    threshold_set_utc: str
    """When the threshold was set (the record's ``created``)."""


def bundle_info(bundle: Any, *, model: str) -> BundleInfo:
    """:class:`BundleInfo` of an :class:`edge_asd.scoring.bundle.Bundle` run with ``model``."""
    t = bundle.threshold
    return BundleInfo(path=str(bundle.path), model=model, sr=int(bundle.features.sr), threshold=float(t.value),
                      threshold_set_by=THRESHOLD_SET_BY.get(t.source, t.source),
                      threshold_method=t.method, threshold_set_utc=str(t.created))


@dataclass(frozen=True, kw_only=True)
class HealthSnapshot:
    """What the running service reports of itself; the content of the state file.

    Times are wall-clock: ``*_utc`` as ISO 8601 strings, ``*_unix`` as seconds since the epoch.
    Counters count from the service's start.
    """

    schema: int = SCHEMA
    service: Literal["running", "stopped"]
    """``stopped`` only in the last snapshot of a clean stop."""
    pid: int
    device_id: str
    version: str
    """edge-asd version."""
    started_utc: str
    started_unix: float
    written_utc: str
    written_unix: float
    uptime_s: float
    write_interval_s: float
    """The writer's ``health.write_interval_s`` (the reader's staleness limit is 3 x this)."""
    bundle: str
    """Bundle directory."""
    model: str
    threshold: float
    """The threshold in force (period score units)."""
    threshold_set_by: str
    """``factory``, ``calibrated`` or ``enrolled``."""
    threshold_method: str
    threshold_set_utc: str
    state: str
    """``starting``, ``running``, ``idle`` or ``sensor_fault`` (the MQTT ``state`` topic's values)."""
    state_reason: str | None
    """Why ``sensor_fault`` (``silence``, ``clipping``, ``sensor_lost`` ...); else ``None``."""
    state_since_utc: str | None
    """When the last state event was raised (``None``: none since the start)."""
    anomaly: bool
    """An anomaly alarm is open (between an onset and its back-to-normal)."""
    last_score: float | None
    """The last closed period's score (``None`` before the first, or when it had no valid window)."""
    last_period_utc: str | None
    """When the last period closed."""
    last_period_decided: bool | None
    """Whether it counted for the alarm (not while idle, on a sensor fault, or a short last period)."""
    periods: int
    windows: int
    events: int
    audio_s: float
    """Audio processed, seconds."""
    real_time_factor: float | None
    """Processing time / audio time (``None`` before any audio)."""
    dropped_blocks: int
    """Blocks dropped from a full capture queue (processing too slow)."""
    input_overflows: int
    """Blocks the capture device lost to overruns."""
    gaps: int
    """Gaps in the audio (drops and overruns) that moved stream time on."""
    sensor_losses: int
    """Times the capture device failed and had to be reopened."""
    queue_depth: int
    """Blocks waiting between capture and processing."""
    queue_capacity: int
    outbox: int | None
    """Events in the store's MQTT outbox, not yet acknowledged by the broker (``None``: MQTT off,
    or the store cannot be read)."""
    pending_in_memory: int
    """Events held in memory because the store cannot be written."""
    metrics_url: str | None
    """The Prometheus endpoint, when one is served."""
    evidence: float | None = None
    """Evidence of a small persistent fault, as a share (0-1) of the evidence rule's alarm level
    (``None``: the bundle has no evidence rule)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        # NaN is not JSON; the writer never stores one (None instead).
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "HealthSnapshot":
        """Parse a state file's content; unknown keys (a newer writer's) are ignored.

        Raises :class:`HealthError` for another schema or a missing key."""
        if not isinstance(raw, Mapping):
            raise HealthError(f"expected a JSON object, got {type(raw).__name__}")
        if raw.get("schema") != SCHEMA:
            raise HealthError(f"state file schema {raw.get('schema')!r}, this edge-asd reads schema {SCHEMA} "
                              "(a different edge-asd version wrote it)")
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            if f.name not in raw:
                if f.default is not dataclasses.MISSING:
                    continue  # a field newer than the writer
                raise HealthError(f"missing key {f.name!r}")
            value = raw[f.name]
            if not _has_type(value, hints[f.name]):
                raise HealthError(f"{f.name}: unexpected value {value!r}")
            values[f.name] = value
        return cls(**values)


def _has_type(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a field's hint (``int | None``, ``Literal[...]``, ``float`` ...)."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin is not None:  # a union
        return any(_has_type(value, option) for option in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


@dataclass(frozen=True, kw_only=True)
class HealthStatus:
    """:func:`read_status`'s verdict on a state file."""

    path: Path
    verdict: Literal["running", "not_running", "stale"]
    message: str
    """One line for a person: what was found and, when not running, what to do."""
    snapshot: HealthSnapshot | None
    """The state file's content (``None`` when there is none)."""
    age_s: float | None
    """Seconds since the snapshot was written."""

    @property
    def exit_code(self) -> int:
        """:data:`EXIT_RUNNING`, :data:`EXIT_NOT_RUNNING` or :data:`EXIT_STALE`."""
        return {"running": EXIT_RUNNING, "not_running": EXIT_NOT_RUNNING, "stale": EXIT_STALE}[self.verdict]

    def to_dict(self) -> dict[str, Any]:
        return {"state_file": str(self.path), "verdict": self.verdict, "message": self.message,
                "age_s": None if self.age_s is None else round(self.age_s, 3),
                "snapshot": None if self.snapshot is None else self.snapshot.to_dict()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2, allow_nan=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, but another user's (the service's own user)
    return True


def _duration(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def read_status(path: str | os.PathLike, *, now: float | None = None,
                pid_alive: Callable[[int], bool] = _pid_alive) -> HealthStatus:
    """Read the state file at ``path`` and judge it (see the module docstring).

    Raises
    ------
    HealthError
        The file exists but cannot be read or parsed.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return HealthStatus(path=path, verdict="not_running", snapshot=None, age_s=None,
                            message=f"no running service wrote {path}; is edge-asd running? (systemctl status edge-asd)")
    except (OSError, UnicodeDecodeError) as exc:
        raise HealthError(f"{path}: cannot read the state file ({exc})") from exc
    try:
        snap = HealthSnapshot.from_dict(json.loads(text))
    except (ValueError, TypeError, HealthError) as exc:
        raise HealthError(f"{path}: not an edge-asd state file ({exc})") from exc
    now = time.time() if now is None else now
    age = max(0.0, now - float(snap.written_unix))
    ran = f"up {_duration(snap.uptime_s)}, {snap.periods} periods"
    if snap.service == "stopped":
        return HealthStatus(path=path, verdict="not_running", snapshot=snap, age_s=age,
                            message=f"not running: the service (pid {snap.pid}) stopped at {snap.written_utc} ({ran}); "
                                    "start it with systemctl start edge-asd")
    if not pid_alive(int(snap.pid)):
        return HealthStatus(path=path, verdict="stale", snapshot=snap, age_s=age,
                            message=f"stale: the service that wrote {path} (pid {snap.pid}) is gone without a clean stop "
                                    f"(killed or crashed), last written {_duration(age)} ago ({ran}); see journalctl -u edge-asd")
    limit = STALE_FACTOR * float(snap.write_interval_s)
    if age > limit:
        return HealthStatus(path=path, verdict="stale", snapshot=snap, age_s=age,
                            message=f"stale: {path} was last written {_duration(age)} ago, more than {STALE_FACTOR:g} x "
                                    f"health.write_interval_s ({snap.write_interval_s:g} s): the service (pid {snap.pid}) "
                                    "is hung; see journalctl -u edge-asd")
    return HealthStatus(path=path, verdict="running", snapshot=snap, age_s=age,
                        message=f"running (pid {snap.pid}, {ran}; state written {age:.1f} s ago)")


def format_status(status: HealthStatus) -> str:
    """The human-readable table of ``edge-asd status``."""
    lines = [f"edge-asd status: {status.message}"]
    s = status.snapshot
    if s is None:
        return lines[0]

    def row(name: str, value: str) -> None:
        lines.append(f"  {name:<13} {value}")

    if status.verdict != "running":
        lines.append("  (as the service last wrote them)")

    row("device", f"{s.device_id} (edge-asd {s.version}, pid {s.pid})")
    row("uptime", f"{_duration(s.uptime_s)} (since {s.started_utc})")
    row("bundle", f"{s.bundle} ({s.model})")
    row("threshold", f"{s.threshold:.6g} ({s.threshold_set_by}, {s.threshold_method}, set {s.threshold_set_utc})")
    state = s.state + (f" ({s.state_reason})" if s.state_reason else "")
    row("state", state + (f" since {s.state_since_utc}" if s.state_since_utc else ""))
    row("anomaly", "ALARM (an onset without its back-to-normal yet)" if s.anomaly else "no")
    row("evidence", "no evidence rule in the bundle" if s.evidence is None else
        f"{100 * s.evidence:.0f} % of the alarm level (small persistent shift of the period scores)")
    if s.last_period_utc is None:
        row("last period", "none yet")
    else:
        score = "no valid window" if s.last_score is None else f"score {s.last_score:.4g}"
        row("last period", f"{score} at {s.last_period_utc}" + ("" if s.last_period_decided else " (not decided)"))
    row("periods", f"{s.periods} ({s.windows} windows, {s.events} events)")
    rtf = "" if s.real_time_factor is None else f", real-time factor {s.real_time_factor:.4f}"
    row("audio", f"{s.audio_s:.1f} s{rtf}")
    row("losses", f"{s.dropped_blocks} dropped blocks, {s.input_overflows} input overflows, {s.gaps} gaps, "
                  f"sensor lost {s.sensor_losses} times")
    row("queue", f"{s.queue_depth} of {s.queue_capacity} blocks")
    outbox = "MQTT off" if s.outbox is None else f"{s.outbox} event(s) in the MQTT outbox"
    row("store backlog", f"{outbox}, {s.pending_in_memory} held in memory")
    if s.metrics_url and status.verdict == "running":
        row("metrics", s.metrics_url)
    row("state file", f"{status.path} (written {s.written_utc})")
    return "\n".join(lines)


class HealthWriter:
    """Keeps the state file (and the metrics) up to date from what the service pushes in.

    Parameters
    ----------
    path
        The state file (:func:`resolve_state_file`).
    write_interval_s
        Rewrite at least this often, seconds.
    device_id
        The device id.
    bundle
        The running bundle (:func:`bundle_info`; :meth:`set_bundle` after a reload).
    store
        The :class:`edge_asd.events.SQLiteStore` (for the backlog), if any.
    clock
        Monotonic clock (seconds), for the write interval and uptime.

    Every method is called from the service's processing thread; the metrics endpoint only reads
    :attr:`latest`, an immutable snapshot. Writing never raises: a state file that cannot be
    written is logged (once per failure episode), and detection goes on.
    """

    def __init__(self, path: str | os.PathLike, *, write_interval_s: float, device_id: str, bundle: BundleInfo,
                 store: Any | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        from edge_asd import __version__

        self.path = Path(path)
        self.write_interval_s = float(write_interval_s)
        self.device_id = device_id
        self.bundle = bundle
        self.store = store
        self._version = __version__
        self._clock = clock
        self._started_mono = clock()
        self._started_unix = time.time()
        self._live = LiveState()
        self._stats: Any = None
        self._queue = (0, 0)
        self._alarm = False
        self._evidence: float | None = None
        self._threshold = float(bundle.threshold)
        self._last_period_utc: str | None = None
        self._last_period_decided: bool | None = None
        self._last_write: float | None = None
        self._failing = False
        self._closed = False
        self._server: Any = None
        self.metrics_url: str | None = None
        self.latest: HealthSnapshot | None = None
        """The last snapshot written (what the metrics endpoint serves)."""

    # -- what the service pushes in ----------------------------------------------------------------
    def update(self, stats: Any, *, queue_depth: int, queue_capacity: int, alarm: bool, threshold: float,
               evidence: float | None = None) -> None:
        """The service's counters (a :class:`~edge_asd.service.ServiceStats`, read when writing),
        the capture queue's fill, the alarm state, the threshold in force and the evidence (share
        of its alarm level, ``None`` without an evidence rule); writes when the write interval has
        passed. Cheap: call it at every turn of the loop."""
        self._stats = stats
        self._evidence = None if evidence is None else float(evidence)
        self._queue = (int(queue_depth), int(queue_capacity))
        changed = bool(alarm) != self._alarm or float(threshold) != self._threshold
        self._alarm, self._threshold = bool(alarm), float(threshold)
        if changed or self._last_write is None or self._clock() - self._last_write >= self.write_interval_s:
            self.write()

    def emit(self, event: Any) -> None:
        """An event (sink protocol): a state change or an alarm event is written at once. (The
        alarm flag itself comes with the period that raised the event, :meth:`on_period`.)"""
        before = machine_state(self._live), self._live.sensor_fault, self._live.sensor_lost
        self._live = apply_event(self._live, kind=event.kind, event_id=event.id, time_utc=event.time_utc,
                                 details=event.details)
        after = machine_state(self._live), self._live.sensor_fault, self._live.sensor_lost
        if after != before or event.kind in ("onset", "back_to_normal"):
            self.write()

    def on_period(self, result: Any, threshold: float) -> None:
        """A closed period (an :class:`edge_asd.decision.alarm.PeriodResult`): written at once."""
        self._live = apply_period(self._live, score=result.score, threshold=threshold, start_s=result.start_s,
                                  end_s=result.end_s, decided=result.decided, anomalous=result.anomalous, reason=result.reason,
                                  evidence=result.evidence_fraction, evidence_attributes=evidence_attributes(result))
        self._threshold = float(threshold)
        self._alarm = bool(result.alarm)
        self._evidence = result.evidence_fraction
        self._last_period_utc = utc_iso(time.time())
        self._last_period_decided = bool(result.decided)
        self.write()

    def set_bundle(self, bundle: BundleInfo, *, threshold: float | None = None) -> None:
        """Another bundle runs now (a reload): written at once."""
        self.bundle = bundle
        self._threshold = float(bundle.threshold if threshold is None else threshold)
        self.write()

    # -- snapshots -----------------------------------------------------------------------------------
    def _backlog(self) -> tuple[int | None, int]:
        if self.store is None:
            return None, 0
        pending = int(getattr(self.store, "pending_in_memory", 0))
        if not getattr(self.store, "outbox", False):
            return None, pending
        try:
            return int(self.store.count_outbox()), pending
        except (sqlite3.Error, OSError, EdgeASDError) as exc:  # a locked or failing store: the figure is unknown
            log.debug("health: cannot count the outbox (%s)", exc)
            return None, pending

    def snapshot(self, *, service: Literal["running", "stopped"] = "running") -> HealthSnapshot:
        """The current figures (also for callers other than the state file, e.g. a remote ``status``)."""
        now = time.time()
        s = self._stats

        def get(name: str) -> Any:
            return 0 if s is None else getattr(s, name)

        audio_s = int(get("samples")) / self.bundle.sr
        rtf = float(get("processing_s")) / audio_s if audio_s > 0 else None
        outbox, pending = self._backlog()
        live = self._live
        reason = live.sensor_fault if live.sensor_fault is not None else ("sensor_lost" if live.sensor_lost else None)
        score = live.score if live.score is not None and math.isfinite(live.score) else None
        return HealthSnapshot(
            service=service, pid=os.getpid(), device_id=self.device_id, version=self._version,
            started_utc=utc_iso(self._started_unix), started_unix=round(self._started_unix, 3),
            written_utc=utc_iso(now), written_unix=round(now, 3), uptime_s=round(self._clock() - self._started_mono, 3),
            write_interval_s=self.write_interval_s, bundle=self.bundle.path, model=self.bundle.model,
            threshold=self._threshold,
            threshold_set_by=self.bundle.threshold_set_by, threshold_method=self.bundle.threshold_method,
            threshold_set_utc=self.bundle.threshold_set_utc, state=machine_state(live), state_reason=reason,
            state_since_utc=live.state_since_utc, anomaly=self._alarm, last_score=score,
            last_period_utc=self._last_period_utc, last_period_decided=self._last_period_decided,
            periods=int(get("periods")), windows=int(get("windows")), events=int(get("events")),
            audio_s=round(audio_s, 3), real_time_factor=None if rtf is None else round(rtf, 6),
            dropped_blocks=int(get("dropped_blocks")), input_overflows=int(get("overflows")), gaps=int(get("gaps")),
            sensor_losses=int(get("sensor_losses")), queue_depth=self._queue[0], queue_capacity=self._queue[1],
            outbox=outbox, pending_in_memory=pending, metrics_url=self.metrics_url,
            evidence=None if self._evidence is None else round(self._evidence, 4),
        )

    def write(self, *, service: Literal["running", "stopped"] = "running") -> HealthSnapshot | None:
        """Write a snapshot now; return it (``None`` if writing failed: logged, never raised)."""
        if self._closed:
            return None
        snap = self.snapshot(service=service)
        self._last_write = self._clock()
        self.latest = snap
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, STATE_FILE_MODE)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                os.fchmod(f.fileno(), STATE_FILE_MODE)  # the umask would narrow it
                f.write(snap.to_json() + "\n")
            os.replace(tmp, self.path)
        except OSError as exc:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            if not self._failing:
                self._failing = True
                log.error("health: cannot write the state file %s (%s); 'edge-asd status' will not see this service: "
                          "set health.state_file to a writable path; detection goes on", self.path, exc)
            return None
        if self._failing:
            self._failing = False
            log.info("health: the state file %s is written again", self.path)
        return snap

    # -- metrics ------------------------------------------------------------------------------------
    def serve_metrics(self, *, port: int, bind: str) -> str:
        """Serve the Prometheus text endpoint on ``bind:port`` from a registry of its own; return its URL.

        Raises
        ------
        ConfigError
            ``prometheus_client`` is not installed, the port is in use, or the address cannot be bound.
        """
        try:
            from prometheus_client import CollectorRegistry, start_http_server
        except ImportError:
            raise ConfigError("health.metrics_port is set but the prometheus_client package is not installed: "
                              "pip install 'edge-asd[metrics]' (or remove health.metrics_port)") from None
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_SnapshotCollector(self))
        try:
            self._server, _ = start_http_server(port, addr=bind, registry=registry)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"health.metrics_port = {port}: port {port} is already in use on {bind} (another "
                                  "edge-asd or exporter?); choose another health.metrics_port or stop the other program") from None
            if exc.errno == errno.EACCES:
                raise ConfigError(f"health.metrics_port = {port}: ports below 1024 need privileges; choose one above "
                                  "1024") from None
            raise ConfigError(f"health.metrics_port = {port}, health.metrics_bind = {bind!r}: cannot listen there "
                              f"({exc}); use an address of this device (127.0.0.1 by default)") from None
        host = f"[{bind}]" if ":" in bind else bind
        self.metrics_url = f"http://{host}:{port}/metrics"
        try:
            import ipaddress

            local = ipaddress.ip_address(bind).is_loopback
        except ValueError:
            local = bind == "localhost"
        log.log(logging.INFO if local else logging.WARNING, "health: Prometheus metrics at %s%s", self.metrics_url,
                "" if local else " (reachable from the network: health.metrics_bind is not a loopback address)")
        return self.metrics_url

    def close(self) -> None:
        """The service stops cleanly: write a last snapshot marked ``stopped`` and stop serving metrics."""
        if self._closed:
            return
        self.write(service="stopped")
        self._closed = True
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@dataclass(frozen=True)
class _Metric:
    name: str
    kind: Literal["gauge", "counter"]
    help: str
    value: Callable[[HealthSnapshot], float | None]


METRICS: tuple[_Metric, ...] = (
    _Metric("edge_asd_start_time_seconds", "gauge", "Start time of the service, seconds since the epoch.",
            lambda s: s.started_unix),
    _Metric("edge_asd_uptime_seconds", "gauge", "Time since the service started, seconds.", lambda s: s.uptime_s),
    _Metric("edge_asd_last_update_timestamp_seconds", "gauge", "When these figures were taken (the state file written), "
            "seconds since the epoch.", lambda s: s.written_unix),
    _Metric("edge_asd_threshold", "gauge", "Decision threshold on period scores in force.", lambda s: s.threshold),
    _Metric("edge_asd_period_score", "gauge", "Score of the last closed period (NaN before the first).",
            lambda s: s.last_score),
    _Metric("edge_asd_anomaly", "gauge", "1 while an anomaly alarm is open, else 0.", lambda s: float(s.anomaly)),
    _Metric("edge_asd_evidence_ratio", "gauge", "Evidence of a small persistent fault as a share of the evidence "
            "rule's alarm level, 0-1 (absent without an evidence rule).", lambda s: s.evidence),
    _Metric("edge_asd_periods", "counter", "Scoring periods closed.", lambda s: s.periods),
    _Metric("edge_asd_windows", "counter", "Model windows scored.", lambda s: s.windows),
    _Metric("edge_asd_events", "counter", "Events raised (alarms, state changes).", lambda s: s.events),
    _Metric("edge_asd_audio_seconds", "counter", "Audio processed, seconds.", lambda s: s.audio_s),
    _Metric("edge_asd_dropped_blocks", "counter", "Audio blocks dropped from a full capture queue.",
            lambda s: s.dropped_blocks),
    _Metric("edge_asd_input_overflows", "counter", "Audio blocks the capture device lost to overruns.",
            lambda s: s.input_overflows),
    _Metric("edge_asd_sensor_losses", "counter", "Times the capture device failed and was reopened.",
            lambda s: s.sensor_losses),
    _Metric("edge_asd_real_time_factor", "gauge", "Processing time / audio time (ratio).", lambda s: s.real_time_factor),
    _Metric("edge_asd_queue_depth_blocks", "gauge", "Audio blocks waiting between capture and processing.",
            lambda s: s.queue_depth),
    _Metric("edge_asd_queue_capacity_blocks", "gauge", "Audio blocks the capture queue holds.", lambda s: s.queue_capacity),
    _Metric("edge_asd_store_outbox_events", "gauge", "Events in the MQTT outbox, not yet acknowledged by the broker "
            "(absent when MQTT is off).", lambda s: s.outbox),
    _Metric("edge_asd_store_pending_events", "gauge", "Events held in memory because the event store cannot be written.",
            lambda s: s.pending_in_memory),
)
"""The metrics besides ``edge_asd_info`` (labels device, version, bundle, model, threshold_set_by;
value 1) and ``edge_asd_state`` (label state: 1 for the current of :data:`MACHINE_STATES`, 0 for
the others). Counters get the ``_total`` suffix in the exposition."""


class _SnapshotCollector:
    """A ``prometheus_client`` collector over :attr:`HealthWriter.latest`: the same figures as the
    state file, read without touching the service (its objects belong to another thread)."""

    def __init__(self, writer: HealthWriter) -> None:
        self._writer = writer

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

        s = self._writer.latest
        if s is None:
            return
        yield InfoMetricFamily("edge_asd", "The running detector.", value={
            "device": s.device_id, "version": s.version, "bundle": s.bundle, "model": s.model,
            "threshold_set_by": s.threshold_set_by})
        state = GaugeMetricFamily("edge_asd_state", "Machine / sensor state: 1 for the current one.", labels=["state"])
        for name in MACHINE_STATES:
            state.add_metric([name], float(s.state == name))
        yield state
        for m in METRICS:
            value = m.value(s)
            if value is None and m.name != "edge_asd_period_score":
                continue
            value = math.nan if value is None else float(value)
            family = CounterMetricFamily if m.kind == "counter" else GaugeMetricFamily
            yield family(m.name, m.help, value=value)


def open_health(config: Any, *, bundle: Any, model: str, store: Any | None = None) -> HealthWriter:
    """The :class:`HealthWriter` of a device configuration (its ``[health]``, ``[store]`` and
    ``[device]`` sections), serving metrics when ``health.metrics_port`` is set.

    Raises :class:`~edge_asd.errors.ConfigError` for a metrics endpoint that cannot be served;
    nothing is written before that, so a failed start leaves the previous state file as it was.
    """
    health = config.health
    path = resolve_state_file(health, config.store.path)
    writer = HealthWriter(path, write_interval_s=health.write_interval_s, device_id=config.device.id,
                          bundle=bundle_info(bundle, model=model), store=store)
    if health.metrics_port:
        writer.serve_metrics(port=health.metrics_port, bind=health.metrics_bind)
    log.info("health: state file %s (edge-asd status)", path)
    return writer
