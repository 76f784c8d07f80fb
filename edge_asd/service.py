"""The device service: source → streaming front end → detector → alarm logic → sinks.

A capture thread reads the source and puts blocks on a bounded queue; the processing loop (main
thread) turns them into frames, windows (which span block boundaries), window scores, period
scores and events. A real-time source never waits for processing: when the queue is full the
block is dropped and counted. A file source played as fast as possible waits instead (nothing is
real-time there, so nothing should be lost).

Stream time is the audio's clock: blocks lost before processing (dropped from a full queue, or
lost to a device overrun) advance it as a gap, and the streaming front end starts afresh after a
gap, so no window joins audio from both sides of it and the period grid stays aligned.

SIGTERM / SIGINT: capture stops, queued audio is processed, the current (partial) period is
closed (decided only if it spans at least half a period), sinks are flushed, exit code 0. A
capture thread stuck in a read is not waited for beyond :data:`CAPTURE_STOP_TIMEOUT_S`. systemd is
told READY=1, WATCHDOG=1 and STOPPING=1 through ``$NOTIFY_SOCKET`` directly (no extra
dependency); the watchdog is pinged only while audio arrives, so a stuck capture gets the service
restarted. An unexpected capture error (not an :class:`~edge_asd.errors.EdgeASDError`) is logged
with its traceback and ends the service with exit code 1, so ``Restart=on-failure`` applies.

A microphone that fails (unplugged, driver reset) is reopened by the source with back-off; the
service raises a ``sensor_lost`` event when it fails and a ``sensor_back`` event when audio flows
again, and stream time moves on by the outage (wall time), so periods after it stay on the clock
of the room. Device overruns are counted in the stats (``overflows``).

Between the raw blocks and the alarm logic sit two monitors with their own events:
:class:`~edge_asd.decision.signal_quality.SignalQualityMonitor` on every block (``sensor_fault`` /
``sensor_ok``: silence, clipping, DC offset, dropouts, a dead or decorrelated array channel) and
:class:`~edge_asd.decision.machine_state.MachineStateMonitor` on the block's feature frames
(``machine_idle`` / ``machine_running``). While either state holds, anomaly decisions pause
(:meth:`~edge_asd.decision.alarm.AlarmLogic.hold`); windows over a faulty or idle-level block stay out of
every period's mean.

An onset still open in the event store when the service starts (it was stopped during an alarm)
is resumed: the service starts in the alarm state, and the next event is that onset's
back-to-normal (its ``details.onset_id`` names the onset), never a second onset.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from edge_asd.decision.alarm import AlarmLogic, ExcludedStretches, PeriodResult
from edge_asd.decision.signal_quality import PaceMonitor, StateChange
from edge_asd.errors import EdgeASDError
from edge_asd.decision.calibration import check_threshold_setting
from edge_asd.scoring.streaming import StreamingScorer

__all__ = ["Notifier", "StreamingScorer", "ServiceStats", "Service", "build_monitors", "check_threshold_setting", "run_service"]

log = logging.getLogger(__name__)

QUEUE_POLL_S = 0.5
"""Longest wait for a block before the loop checks the watchdog and the stop flag, seconds."""
CAPTURE_STOP_TIMEOUT_S = 2.0
"""After a stop request, how long the loop waits for the capture thread to end, seconds; a thread
stuck in a device read is then left behind (it is a daemon) and the period closed without it."""
AUDIO_STALL_BLOCKS = 4
"""The watchdog is pinged only while a block arrived within the last ``max(watchdog interval,
AUDIO_STALL_BLOCKS x block length)``: jitter of a few blocks is not a stall."""
END_OF_STREAM = None


@dataclass(frozen=True)
class _SourceStatus:
    """A capture-device state change, queued in order with the audio blocks."""

    kind: str
    """``"sensor_lost"`` or ``"sensor_back"``."""
    details: dict


class Notifier:
    """sd_notify(3) without libsystemd: datagrams to ``$NOTIFY_SOCKET``; a no-op outside systemd."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if address:
            # A leading '@' is a Linux abstract-namespace socket: its name starts with a NUL byte.
            self._address = b"\0" + address[1:].encode() if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        own = not pid or pid == str(os.getpid())
        # Ping at half the watchdog period, as sd_watchdog_enabled(3) recommends.
        self.watchdog_interval_s = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and own else None
        self._last_ping = 0.0

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, message: str) -> None:
        if self._address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode(), self._address)
        except OSError as exc:
            log.warning("sd_notify %r failed: %s", message, exc)

    def ready(self, status: str = "") -> None:
        self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def watchdog(self) -> None:
        """Ping the watchdog if its interval has passed (cheap to call often)."""
        if self.watchdog_interval_s is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_interval_s:
            self.notify("WATCHDOG=1")
            self._last_ping = now




@dataclass
class ServiceStats:
    """Counters the service logs periodically and at exit."""

    blocks: int = 0
    samples: int = 0
    dropped_blocks: int = 0
    dropped_samples: int = 0
    gaps: int = 0
    """Gaps in the audio (drops and device overruns) that advanced stream time."""
    gap_samples: int = 0
    overflows: int = 0
    """Blocks the capture device lost to overruns (PortAudio ``paInputOverflowed``)."""
    sensor_losses: int = 0
    """Times the capture device failed and had to be reopened."""
    outage_s: float = 0.0
    """Wall time without a capture device, seconds (summed over the losses)."""
    windows: int = 0
    periods: int = 0
    events: int = 0
    processing_s: float = 0.0

    def audio_s(self, sr: int) -> float:
        return self.samples / sr

    def real_time_factor(self, sr: int) -> float:
        audio = self.audio_s(sr)
        return self.processing_s / audio if audio else math.nan


def _rule_key(rule: Any) -> str:
    """Identifies an evidence rule: saved evidence is resumed only under the rule that gathered it."""
    return f"{rule.reference_mean:.9g}/{rule.reference_std:.9g}/{rule.decision_level:.9g}/{rule.shift_sd:g}"


def _utc_before(seconds: float) -> str:
    """The UTC time ``seconds`` before now, formatted as event times are."""
    from edge_asd.events import utc_iso

    return utc_iso(time.time() - max(0.0, seconds))


class Service:
    """The running detector. Build with :func:`run_service` or directly for tests.

    Parameters
    ----------
    config
        An :class:`edge_asd.config.Config`.
    detector
        The loaded detector.
    source
        An :class:`edge_asd.audio.sources.AudioSource`.
    sinks
        Objects with ``emit(event)`` and ``close()``, called in order: the store first (an event
        is durable before anything else can fail), then stdout, then MQTT (which reads the
        store's outbox). A sink with ``on_period(result, threshold)`` also gets every closed
        period (MQTT retains the last score).
    stdout
        The :class:`edge_asd.events.StdoutSink` (also receives period lines when configured).
    notifier
        sd_notify messenger.
    store
        The :class:`edge_asd.events.SQLiteStore`, if any: its open alarm is resumed at start.
    remote
        The :class:`edge_asd.remote.RemoteOperations`, if remote commands are on: it gets every
        block (a remote calibrate / enroll records from the stream), and each outcome it reports
        is a ``command`` event; an outcome with a detector is switched to between two blocks.
    health
        The :class:`edge_asd.events.health.HealthWriter`, if any. It follows the sinks (every event and
        period, after they are stored and sent; closed first, which writes its ``stopped``
        snapshot), and gets the counters at every turn of the loop.
    """

    def __init__(self, config: Any, *, detector: Any, source: Any, sinks: list[Any], stdout: Any, notifier: Notifier,
                 store: Any | None = None, health: Any | None = None, remote: Any | None = None) -> None:
        self.config = config
        self.detector = detector
        self.source = source
        self.sinks = sinks if health is None else [*sinks, health]
        self.health = health
        self.remote = remote
        self.stdout = stdout
        self.notifier = notifier
        self.store = store
        self._open_onset_id: str | None = None
        self._saved_evidence: float | None = None  # the statistic last written to the store
        self.stats = ServiceStats()
        self.threshold_warning = ""
        """Set by :func:`run_service` for a threshold never set on site; shown in the READY status."""
        self.scorer = StreamingScorer(detector, n_channels=source.n_channels)
        self.alarm = AlarmLogic(config.alarm, threshold=detector.threshold_, evidence=detector.bundle.threshold.evidence)
        self.quality, self.machine = build_monitors(config, detector, n_channels=source.n_channels)
        self._excluded = ExcludedStretches(memory_s=sum(self.scorer.window_reach_s) + 10 * config.input.block_s)
        self._queue: queue.Queue = queue.Queue(maxsize=config.input.queue_blocks)
        self._stop = threading.Event()
        self._stop_requested_at: float | None = None
        self._capture_error: BaseException | None = None
        self._sensor_lost = False
        self._thread = threading.Thread(target=self._capture, name="capture", daemon=True)

    # -- capture thread ---------------------------------------------------------------------------
    def _capture(self) -> None:
        """Queue ``(gap_samples, block)``: the samples lost just before ``block`` (dropped blocks,
        device overruns), then the block."""
        blocking = not self.source.realtime
        overflows = getattr(self.source, "overflows", 0)
        # An overrun loses at least the block whose read failed; how much more the device lost is
        # not reported, so the gap is a lower bound.
        block_size = getattr(self.source, "block_size", self.config.input.block_size)
        gap = 0
        sr = getattr(self.source, "sr", self.config.input.sample_rate_hz)

        def on_status(kind: str, details: dict) -> None:
            # Called by the source from this thread, between blocks.
            nonlocal gap
            if kind == "sensor_back":
                # The room went on while the device was away: move stream time over the outage.
                gap += round(float(details.get("outage_s", 0.0)) * sr)
            self._put_blocking(_SourceStatus(kind, dict(details)))

        if hasattr(self.source, "on_status"):
            self.source.on_status = on_status
        max_pace = self.config.input.max_pace
        pace = PaceMonitor(sr, fast=max_pace) if self.source.realtime and max_pace else None
        try:
            for block in self.source.blocks():
                if self._stop.is_set():
                    break
                if pace is not None:
                    change = pace.update(block.shape[0], time.monotonic())
                    if change is not None:
                        self._put_blocking(change)
                now = getattr(self.source, "overflows", 0)
                if now > overflows:
                    gap += (now - overflows) * block_size
                    self.stats.overflows += now - overflows
                    overflows = now
                if blocking:
                    while not self._stop.is_set():
                        try:
                            self._queue.put((gap, block), timeout=QUEUE_POLL_S)
                            gap = 0
                            break
                        except queue.Full:
                            continue
                else:
                    try:
                        self._queue.put_nowait((gap, block))
                        gap = 0
                    except queue.Full:
                        self.stats.dropped_blocks += 1
                        self.stats.dropped_samples += block.shape[0]
                        gap += block.shape[0]
        except EdgeASDError as exc:
            self._capture_error = exc
        except Exception as exc:
            # Not a user mistake but a bug or a hardware fault: keep the traceback for the journal.
            log.exception("capture failed: %s", exc)
            self._capture_error = exc
        finally:
            # Always wake the processing loop, even if the queue is full of audio.
            self._queue.put(END_OF_STREAM)

    def _put_blocking(self, item: Any) -> None:
        """Queue ``item`` waiting for room (state changes must not be dropped), unless stopping."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=QUEUE_POLL_S)
                return
            except queue.Full:
                continue

    def request_stop(self, *_: Any) -> None:
        """Signal handler: stop capturing; the loop drains the queue and closes the period."""
        if not self._stop.is_set():
            log.info("stop requested: finishing the current period")
            self._stop_requested_at = time.monotonic()
        self._stop.set()
        self.source.stop()

    # -- processing ---------------------------------------------------------------------------------
    def _handle_period(self, result: PeriodResult) -> None:
        self.stats.periods += 1
        if result.decided:
            log.debug("period %.1f-%.1f s: score %.4g (%s)", result.start_s, result.end_s, result.score,
                      "anomalous" if result.anomalous else "normal")
        elif result.reason != "partial period":
            log.debug("period %.1f-%.1f s not decided: %s", result.start_s, result.end_s, result.reason)
        else:
            log.info("final partial period %.1f-%.1f s (score %.4g) is shorter than half a period: not decided",
                     result.start_s, result.end_s, result.score)
        if self.config.service.log_periods:
            self.stdout.write_line(json.dumps({
                "type": "period", "device": self.config.device.id, "start_s": round(result.start_s, 3),
                "end_s": round(result.end_s, 3), "score": result.score if math.isfinite(result.score) else None,
                "n_windows": result.n_windows, "anomalous": result.anomalous, "alarm": result.alarm, "decided": result.decided,
                **({"reason": result.reason, "n_invalid": result.n_invalid} if not result.decided else {}),
            }, sort_keys=True, separators=(",", ":")))
        if result.decided:
            self._save_evidence()
        # Before the period's event: a dashboard sees the score that raised an onset with it.
        for sink in self.sinks:
            if hasattr(sink, "on_period"):
                sink.on_period(result, self.alarm.threshold)
        if result.event is None:
            return
        from edge_asd.decision.alarm import EVENT_ONSET
        from edge_asd.events import Event

        onset_id = {} if result.event == EVENT_ONSET or self._open_onset_id is None else {"onset_id": self._open_onset_id}
        event = Event.create(
            device=self.config.device.id,
            kind=result.event,
            stream_time_s=round(result.end_s, 3),
            score=result.score,
            threshold=self.alarm.threshold,
            details={
                "period_s": self.config.alarm.period_s,
                "anomalous_periods": result.anomalous_in_window,
                "onset_k": self.config.alarm.onset_k,
                "onset_n": self.config.alarm.onset_n,
                "recovery_m": self.config.alarm.recovery_m,
                "model_sha256": self.detector.bundle.model.sha256.get(self.detector.which, ""),
                **onset_id,
                **self._evidence_details(result),
            },
        )
        self._open_onset_id = event.id if result.event == EVENT_ONSET else None
        self.stats.events += 1
        log.info("event %s: %s (period score %.4g, threshold %.4g)", event.id, event.kind, event.score, event.threshold)
        for sink in self.sinks:
            sink.emit(event)

    def _evidence_details(self, result: PeriodResult) -> dict[str, Any]:
        """What an event says of the rules: which fired, and the evidence with its alarm level."""
        rule = self.alarm.evidence_rule
        out: dict[str, Any] = {}
        if result.rules:
            out["rules"] = list(result.rules)
        if rule is None:
            return out
        out.update({"evidence": round(float(result.evidence or 0.0), 4), "evidence_level": round(rule.decision_level, 4),
                    "evidence_fraction": round(float(result.evidence_fraction or 0.0), 4),
                    "evidence_false_alarms_per_week": rule.false_alarms_per_week})
        if result.shift_start_s is not None:
            out["shift_start_s"] = round(result.shift_start_s, 3)
            out["shift_sd"] = None if result.shift_sd is None else round(result.shift_sd, 4)
            out["shift_start_utc"] = _utc_before(result.end_s - result.shift_start_s)
        return out

    def _save_evidence(self) -> None:
        """Persist the evidence with the alarm state (a restart within ``alarm.evidence_max_gap_s`` resumes it)."""
        cusum = self.alarm.cusum
        if self.store is None or cusum is None:
            return
        if cusum.statistic == 0.0 and self._saved_evidence == 0.0:
            return  # normal sound mostly keeps it at zero: no write (and no SD-card wear) every period
        try:
            if self.store.save_evidence(self.config.device.id, statistic=cusum.statistic, rule=_rule_key(cusum.rule)):
                self._saved_evidence = cusum.statistic
        except Exception as exc:  # detection must go on; the next period tries again
            log.warning("cannot save the evidence state: %s", exc)

    def _handle_status(self, status: _SourceStatus) -> None:
        """Raise a ``sensor_lost`` / ``sensor_back`` event (decisions pause meanwhile: no audio)."""
        from edge_asd.events import Event

        self._sensor_lost = status.kind == "sensor_lost"
        if status.kind == "sensor_lost":
            self.stats.sensor_losses += 1
            # The sound after a lost device may come through another microphone or position:
            # evidence gathered before it says nothing about what follows.
            self.alarm.reset_evidence()
            self._save_evidence()
        elif status.kind == "sensor_back":
            self.stats.outage_s += float(status.details.get("outage_s", 0.0))
        event = Event.create(
            device=self.config.device.id,
            kind=status.kind,
            stream_time_s=round(self.scorer.time_s, 3),
            score=None,
            threshold=self.alarm.threshold,
            details=status.details,
        )
        self.stats.events += 1
        log.warning("event %s: %s (%s)", event.id, event.kind, ", ".join(f"{k}={v}" for k, v in status.details.items()))
        for sink in self.sinks:
            sink.emit(event)

    def _handle_state(self, change: Any) -> None:
        """A sensor or machine state change: its event, then hold or release anomaly decisions."""
        from edge_asd.events import Event

        event = Event.create(device=self.config.device.id, kind=change.kind, stream_time_s=round(change.time_s, 3),
                             score=change.value, threshold=change.limit, details=dict(change.details))
        self.stats.events += 1
        log.info("event %s: %s (%s; %.4g against %.4g)", event.id, event.kind, change.reason, change.value, change.limit)
        for sink in self.sinks:
            sink.emit(event)
        if change.active:
            self.alarm.hold(change.state)
        else:
            self.alarm.release(change.state)

    def _process(self, windows: list[tuple[float, float]]) -> None:
        self.stats.windows += len(windows)
        before, after = self.scorer.window_reach_s
        for t, score in windows:
            result = self.alarm.update(score, t, valid=not self._excluded.overlaps(t - before, t + after))
            if result is not None:
                self._handle_period(result)

    def _log_stats(self) -> None:
        sr = self.detector.config.sr
        s = self.stats
        log.info(
            "audio %.1f s, %d windows, %d periods, %d events, dropped %d blocks (%.1f s), device overflows %d, "
            "%d gaps (%.1f s), sensor lost %d times (%.1f s), real-time factor %.4f", s.audio_s(sr), s.windows, s.periods,
            s.events, s.dropped_blocks, s.dropped_samples / sr, s.overflows, s.gaps, s.gap_samples / sr,
            s.sensor_losses, s.outage_s, s.real_time_factor(sr),
        )

    def _resume_open_alarm(self) -> None:
        """Start in the alarm state if the store holds an onset without its back-to-normal."""
        if self.store is None:
            return
        try:
            open_alarm = self.store.open_alarm(self.config.device.id)
        except Exception as exc:
            # A damaged store must not stop detection (nor have systemd restart into it for ever).
            log.error("cannot read the open alarm from the event store (%s): starting without it; "
                      "move the store file away if this repeats", exc)
            return
        if open_alarm is None:
            return
        self.alarm.resume_alarm()
        self._open_onset_id = open_alarm["onset_id"]
        log.info("resuming the open alarm (onset %s at %s): the next event is its back-to-normal",
                 open_alarm["onset_id"], open_alarm["time_utc"])

    def _resume_evidence(self) -> None:
        """Continue the evidence saved by the last run if it stopped at most ``alarm.evidence_max_gap_s``
        ago with the same rule; otherwise start afresh (at the alarm level during an open alarm)."""
        cusum = self.alarm.cusum
        if self.store is None or cusum is None:
            return
        try:
            saved = self.store.saved_evidence(self.config.device.id)
        except Exception as exc:
            log.warning("cannot read the saved evidence (%s): starting afresh", exc)
            return
        if saved is None:
            return
        gap = time.time() - saved["updated"]
        if saved["rule"] != _rule_key(cusum.rule):
            log.info("saved evidence was gathered under another evidence rule: starting afresh")
        elif not 0 <= gap <= self.config.alarm.evidence_max_gap_s:
            log.info("saved evidence is %.0f s old (alarm.evidence_max_gap_s = %g): starting afresh", gap,
                     self.config.alarm.evidence_max_gap_s)
        else:
            self.alarm.restore_evidence(saved["statistic"])
            log.info("resuming the evidence of the last run: %.3g of %.3g (saved %.0f s ago)", cusum.statistic,
                     cusum.rule.decision_level, gap)
        self._save_evidence()

    def run(self) -> int:
        """Run until the source ends or a stop is requested; return the exit code.

        0 at the end of the source or after a stop request; 1 after an unexpected capture error
        (logged with its traceback). An :class:`EdgeASDError` from capture is raised.
        """
        self._resume_open_alarm()
        self._resume_evidence()
        self._update_health()  # "starting", before the seconds of warm-up
        self._warm_up()
        self._thread.start()
        self.notifier.ready(f"listening, threshold {self.alarm.threshold:.4g}"
                            + (f"; WARNING: {self.threshold_warning}" if self.threshold_warning else ""))
        log.info("running: device %s, threshold %.4g, period %.1f s; front end kernels %s", self.config.device.id,
                 self.alarm.threshold, self.config.alarm.period_s, self.scorer.frontend.kernels.source)
        next_stats = time.monotonic() + self.config.service.stats_interval_s
        stall_s = max(self.notifier.watchdog_interval_s or 0.0, AUDIO_STALL_BLOCKS * self.config.input.block_s)
        last_audio = time.monotonic()  # the capture gets the same grace to deliver its first block
        stalled = False
        abandoned = False
        while True:
            # Ping only while audio flows: a capture stuck in a read must look unhealthy to systemd.
            # A device the source knows it lost (and is reopening) is not a stuck capture: a restart
            # would not bring it back sooner, so keep pinging through the outage.
            if time.monotonic() - last_audio <= stall_s or self._sensor_lost:
                self.notifier.watchdog()
            elif not stalled:
                stalled = True
                log.warning("no audio for %.1f s: the watchdog is no longer pinged", stall_s)
            if self.store is not None:
                self._retry_store()
            self._update_health()
            if self.remote is not None:
                self._handle_commands()
            if self._stop_requested_at is not None and time.monotonic() - self._stop_requested_at > CAPTURE_STOP_TIMEOUT_S:
                log.warning("capture did not stop within %.1f s of the stop request (stuck in a device read?); "
                            "closing the period without it", CAPTURE_STOP_TIMEOUT_S)
                abandoned = True
                self._drain_queue()
                break
            try:
                item = self._queue.get(timeout=QUEUE_POLL_S)
            except queue.Empty:
                continue
            if item is END_OF_STREAM:
                break
            if isinstance(item, _SourceStatus):
                self._handle_status(item)
                continue
            if isinstance(item, StateChange):  # the capture's pace check
                self._handle_state(item)
                continue
            self._process_block(*item)
            last_audio = time.monotonic()
            if stalled:
                stalled = False
                log.info("audio flows again")
            if time.monotonic() >= next_stats:
                self._log_stats()
                next_stats += self.config.service.stats_interval_s
        self.notifier.stopping()
        self._process(self.scorer.flush())
        final = self.alarm.flush()
        if final is not None:
            self._handle_period(final)
        if not abandoned:
            self._thread.join(timeout=QUEUE_POLL_S * 4)
        self._log_stats()
        if isinstance(self._capture_error, EdgeASDError):
            raise self._capture_error
        return 1 if self._capture_error is not None else 0

    def _handle_commands(self) -> None:
        """Report what remote commands did as ``command`` events; switch to a new detector."""
        from edge_asd.events import Event

        for outcome in self.remote.poll():
            if outcome.detector is not None:
                self._switch_detector(outcome.detector)
            event = Event.create(device=self.config.device.id, kind="command", stream_time_s=round(self.scorer.time_s, 3),
                                 score=None, threshold=self.alarm.threshold, details=outcome.event_details())
            self.stats.events += 1
            for sink in self.sinks:
                sink.emit(event)

    def _switch_detector(self, detector: Any) -> None:
        """Run ``detector`` from the next block on: its threshold, a scorer at the same stream time.
        The sensor and machine-state monitors keep their state (and what they learned at start)."""
        from edge_asd.events.health import bundle_info

        self.detector = detector
        self.scorer = self.scorer.switched_to(detector)
        self.alarm.set_rules(threshold=detector.threshold_, evidence=detector.bundle.threshold.evidence)
        self._save_evidence()
        if self.health is not None:
            self.health.set_bundle(bundle_info(detector.bundle, model=detector.which), threshold=detector.threshold_)
        log.info("now running %s (threshold %.4g)", detector.bundle.path, detector.threshold_)

    def _update_health(self) -> None:
        """Push the counters into the health writer (it writes when its interval has passed)."""
        if self.health is not None:
            cusum = self.alarm.cusum
            self.health.update(self.stats, queue_depth=self._queue.qsize(), queue_capacity=self._queue.maxsize,
                               alarm=self.alarm.alarm, threshold=self.alarm.threshold,
                               evidence=None if cusum is None else cusum.fraction)

    def _retry_store(self) -> None:
        """Write events the store holds in memory (it throttles itself); never let it stop detection."""
        try:
            self.store.retry()
        except Exception as exc:
            log.warning("event store retry failed: %s", exc)

    def _warm_up(self) -> None:
        """Score one window of silence through a throwaway scorer before READY=1: the front end's
        numba kernels compile at their first call (seconds on a cold cache), which would otherwise
        hold up the first block and the watchdog pings behind it."""
        cfg = self.detector.config
        n = cfg.n_fft + (self.detector.bundle.window.n_frames + 1) * cfg.hop_length
        StreamingScorer(self.detector, n_channels=self.source.n_channels).push(
            np.zeros((n, self.source.n_channels), dtype=np.float32))

    def _drain_queue(self) -> None:
        """Process the blocks already queued (the capture thread will add none)."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is END_OF_STREAM:
                return
            if isinstance(item, _SourceStatus):
                self._handle_status(item)
                continue
            if isinstance(item, StateChange):  # the capture's pace check
                self._handle_state(item)
                continue
            self._process_block(*item)

    def _process_block(self, gap: int, block: np.ndarray) -> None:
        if gap:
            self.stats.gaps += 1
            self.stats.gap_samples += gap
            self.scorer.skip(gap)
        t0 = time.perf_counter()
        if self.remote is not None:
            self.remote.on_block(block)
        start_s = self.scorer.time_s
        check, sensor = self.quality.update(block, start_s=start_s) if self.quality else (None, None)
        windows = self.scorer.push(block)
        below, machine = False, None
        # A faulty sensor says nothing about the machine: its state is judged on good audio only.
        if self.machine is not None and not (self.quality and self.quality.faulted):
            below, machine = self.machine.update(self.scorer.last_frames, start_s=start_s, end_s=self.scorer.time_s)
        for change in (sensor, machine):
            if change is not None:
                self._handle_state(change)
        if below or (check is not None and check.bad):
            self._excluded.add(start_s, self.scorer.time_s)
        self._process(windows)
        self.stats.processing_s += time.perf_counter() - t0
        self.stats.blocks += 1
        self.stats.samples += block.shape[0]

    def close(self) -> None:
        """Close the source and every sink, in reverse order (MQTT, which reads the store's
        outbox, before the store), even if one of them raises: a sink that fails to close must not
        cost the store the events it holds in memory. Each failure is logged with its traceback;
        the first is raised once all are closed."""
        errors: list[BaseException] = []
        closables = [("the audio source", self.source)] + [(type(s).__name__, s) for s in reversed(self.sinks)]
        if self.remote is not None:
            closables.insert(1, ("remote operations", self.remote))
        for what, closable in closables:
            try:
                closable.close()
            except Exception as exc:
                log.exception("closing %s failed: %s", what, exc)
                errors.append(exc)
        if errors:
            raise errors[0]


def build_monitors(config: Any, detector: Any, *, n_channels: int) -> tuple[Any, Any]:
    """The sensor and machine-state monitors of ``config`` (``None`` where disabled), with the
    thresholds left unset in the TOML learned from the bundle's site enrollment (logged)."""
    from edge_asd.decision.machine_state import MachineStateMonitor, resolve_gate
    from edge_asd.decision.signal_quality import SignalQualityMonitor, learn_signal_config

    bundle = detector.bundle
    site = bundle.enrollment.site if bundle.enrollment is not None else None
    quality = machine = None
    if config.signal.enabled:
        signal, notes = learn_signal_config(config.signal, site.audio if site is not None else None)
        quality = SignalQualityMonitor(signal, n_channels=n_channels, sr=detector.config.sr)
        log.info("sensor checks: silence below %.1f dBFS%s", signal.silence_floor_dbfs,
                 "".join(f"; learned at enroll: {n}" for n in notes))
    if config.machine.enabled:
        gate = resolve_gate(config.machine, bundle)
        machine = MachineStateMonitor(config.machine, gate)
        log.info("machine state: idle below %.1f dB, running above %.1f dB (%s)%s", gate.idle_below_db,
                 gate.running_above_db, gate.source, "; stopping is an alarm" if config.machine.stop_is_alarm else "")
    return quality, machine


def run_service(config: Any, *, install_signals: bool = True, on_ready: Callable[[Service], None] | None = None) -> int:
    """Build everything from ``config`` and run the service; returns the exit code.

    Every start-up error (bundle, model, source, store, MQTT settings) is raised before READY=1,
    so systemd sees a failed start rather than a service that never listens.
    """
    from edge_asd.audio.sources import open_source
    from edge_asd.scoring.detector import Detector
    from edge_asd.events.health import open_health
    from edge_asd.events import MqttForwarder, SQLiteStore, StdoutSink

    notifier = Notifier()
    detector = Detector.from_bundle(
        config.device.bundle, model=config.device.model, num_threads=config.device.num_threads,
        class_label=config.device.class_label,
    )
    # Before the source opens: a mismatch is a start-up error with nothing to release.
    threshold_warning = check_threshold_setting(detector.bundle, config, n_channels=config.input.channels)
    if threshold_warning:
        log.warning("%s", threshold_warning)
    source = open_source(config.input, sr=detector.config.sr)
    stdout = StdoutSink()
    # Not strict: a store that cannot be opened (full or read-only disk) holds events in memory and
    # keeps trying, and detection goes on; an exit here would have systemd restart the service
    # into the same disk, over and over.
    store = SQLiteStore(config.store.path, max_events=config.store.max_events, outbox=config.mqtt.enabled,
                        memory_events=config.store.memory_events, strict=False)
    # The store first: an event is durable before stdout (the sink most likely to fail) sees it.
    sinks: list[Any] = [store, stdout]
    # Before MQTT starts: a metrics port in use is a start-up error, with no online/offline flap.
    health = open_health(config, bundle=detector.bundle, model=detector.which, store=store)
    remote = None
    if config.mqtt.enabled and config.mqtt.remote_commands:
        from edge_asd.remote import RemoteOperations

        remote = RemoteOperations(config, sr=source.sr, n_channels=source.n_channels,
                                  status=lambda: health.snapshot().to_dict(), nonces=store)
    if config.mqtt.enabled:
        from edge_asd.remote import MAX_PACKET_BYTES

        forwarder = MqttForwarder(config.mqtt, device_id=config.device.id, store=store,
                                  on_command=None if remote is None else remote.submit, max_packet_bytes=MAX_PACKET_BYTES)
        store.on_failure = forwarder.publish_store_failure
        if store.failed_writes:
            forwarder.publish_store_failure(f"event store {store.path}: cannot be opened (see the journal)")
        forwarder.start()
        sinks.append(forwarder)
    service = Service(config, detector=detector, source=source, sinks=sinks, stdout=stdout, notifier=notifier, store=store,
                      health=health, remote=remote)
    service.threshold_warning = threshold_warning
    if install_signals:
        signal.signal(signal.SIGTERM, service.request_stop)
        signal.signal(signal.SIGINT, service.request_stop)
    if on_ready is not None:
        on_ready(service)
    try:
        return service.run()
    finally:
        service.close()
