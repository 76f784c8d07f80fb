"""The device service: source → streaming front end → detector → alarm logic → sinks.

A capture thread reads the source and puts blocks on a bounded queue; the processing loop (main
thread) turns them into frames, windows (which span block boundaries), window scores, period
scores and events. A real-time source never waits for processing: when the queue is full the
block is dropped and counted. A file source played as fast as possible waits instead (nothing is
real-time there, so nothing should be lost).

SIGTERM / SIGINT: capture stops, queued audio is processed, the current (partial) period is
closed and decided, sinks are flushed, exit code 0. systemd is told READY=1, WATCHDOG=1 and
STOPPING=1 through ``$NOTIFY_SOCKET`` directly (no extra dependency).
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

from edge_asd.alarm import AlarmLogic, PeriodResult
from edge_asd.errors import EdgeASDError
from edge_asd.frontend import StreamingFrontend

__all__ = ["Notifier", "StreamingScorer", "ServiceStats", "Service", "run_service"]

log = logging.getLogger(__name__)

QUEUE_POLL_S = 0.5
"""Longest wait for a block before the loop checks the watchdog and the stop flag, seconds."""
END_OF_STREAM = None


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


class StreamingScorer:
    """Feature frames in, timed window scores out; windows span the boundaries of pushes.

    Parameters
    ----------
    detector
        A :class:`edge_asd.detector.Detector`.
    n_channels
        Channels of the audio blocks.

    A ``neg_log_prob`` bundle's machine class is the detector's ``class_label``.
    """

    def __init__(self, detector: Any, *, n_channels: int) -> None:
        self.detector = detector
        self.frontend = StreamingFrontend(detector.config, n_channels=n_channels)
        self._n = detector.bundle.window.n_frames
        self._hop = detector.bundle.window.hop_frames
        self._seconds_per_frame = detector.config.hop_length / detector.config.sr
        self.reset()

    def reset(self) -> None:
        self.frontend.reset()
        self._buffer = np.empty((0, self.detector.config.n_features), dtype=np.float32)
        self._base = 0  # absolute frame index of _buffer[0]
        self._next = 0  # absolute frame index where the next window starts
        self.n_windows = 0

    def push(self, block: np.ndarray) -> list[tuple[float, float]]:
        """Add an audio block; return ``(time_s, score)`` of each window it completes.

        ``time_s`` is the centre time of the window's last frame, seconds from the stream start.
        """
        return self._add_frames(self.frontend.push(block))

    def flush(self) -> list[tuple[float, float]]:
        """End of stream: the last frames' windows (then the scorer is reset)."""
        out = self._add_frames(self.frontend.flush())
        self.reset()
        return out

    def _add_frames(self, frames: np.ndarray) -> list[tuple[float, float]]:
        if frames.shape[0] == 0:
            return []
        buf = np.concatenate([self._buffer, self.detector.normalize(frames)]) if self._buffer.size else self.detector.normalize(frames)
        out = []
        end = self._base + buf.shape[0]
        while self._next + self._n <= end:
            lo = self._next - self._base
            score = self.detector.score_window(buf[lo : lo + self._n])
            out.append(((self._next + self._n - 1) * self._seconds_per_frame, score))
            self._next += self._hop
            self.n_windows += 1
        keep_from = min(self._next, end) - self._base
        self._buffer = buf[keep_from:]
        self._base += keep_from
        return out


@dataclass
class ServiceStats:
    """Counters the service logs periodically and at exit."""

    blocks: int = 0
    samples: int = 0
    dropped_blocks: int = 0
    dropped_samples: int = 0
    windows: int = 0
    periods: int = 0
    events: int = 0
    processing_s: float = 0.0

    def audio_s(self, sr: int) -> float:
        return self.samples / sr

    def real_time_factor(self, sr: int) -> float:
        audio = self.audio_s(sr)
        return self.processing_s / audio if audio else math.nan


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
        Objects with ``emit(event)`` and ``close()``, called in order (the store before MQTT).
    stdout
        The :class:`edge_asd.sinks.StdoutSink` (also receives period lines when configured).
    notifier
        sd_notify messenger.
    """

    def __init__(self, config: Any, *, detector: Any, source: Any, sinks: list[Any], stdout: Any, notifier: Notifier) -> None:
        self.config = config
        self.detector = detector
        self.source = source
        self.sinks = sinks
        self.stdout = stdout
        self.notifier = notifier
        self.stats = ServiceStats()
        self.scorer = StreamingScorer(detector, n_channels=source.n_channels)
        self.alarm = AlarmLogic(config.alarm, threshold=detector.threshold_)
        self._queue: queue.Queue = queue.Queue(maxsize=config.input.queue_blocks)
        self._stop = threading.Event()
        self._capture_error: BaseException | None = None
        self._thread = threading.Thread(target=self._capture, name="capture", daemon=True)

    # -- capture thread ---------------------------------------------------------------------------
    def _capture(self) -> None:
        blocking = not self.source.realtime
        try:
            for block in self.source.blocks():
                if self._stop.is_set():
                    break
                if blocking:
                    while not self._stop.is_set():
                        try:
                            self._queue.put(block, timeout=QUEUE_POLL_S)
                            break
                        except queue.Full:
                            continue
                else:
                    try:
                        self._queue.put_nowait(block)
                    except queue.Full:
                        self.stats.dropped_blocks += 1
                        self.stats.dropped_samples += block.shape[0]
        except EdgeASDError as exc:
            self._capture_error = exc
        finally:
            # Always wake the processing loop, even if the queue is full of audio.
            self._queue.put(END_OF_STREAM)

    def request_stop(self, *_: Any) -> None:
        """Signal handler: stop capturing; the loop drains the queue and closes the period."""
        if not self._stop.is_set():
            log.info("stop requested: finishing the current period")
        self._stop.set()
        self.source.stop()

    # -- processing ---------------------------------------------------------------------------------
    def _handle_period(self, result: PeriodResult) -> None:
        self.stats.periods += 1
        log.debug("period %.1f-%.1f s: score %.4g (%s)", result.start_s, result.end_s, result.score,
                  "anomalous" if result.anomalous else "normal")
        if self.config.service.log_periods:
            self.stdout.write_line(json.dumps({
                "type": "period", "device": self.config.device.id, "start_s": round(result.start_s, 3),
                "end_s": round(result.end_s, 3), "score": result.score, "n_windows": result.n_windows,
                "anomalous": result.anomalous, "alarm": result.alarm,
            }, sort_keys=True, separators=(",", ":")))
        if result.event is None:
            return
        from edge_asd.sinks import Event

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
            },
        )
        self.stats.events += 1
        log.info("event %s: %s (period score %.4g, threshold %.4g)", event.id, event.kind, event.score, event.threshold)
        for sink in self.sinks:
            sink.emit(event)

    def _process(self, windows: list[tuple[float, float]]) -> None:
        self.stats.windows += len(windows)
        for t, score in windows:
            result = self.alarm.update(score, t)
            if result is not None:
                self._handle_period(result)

    def _log_stats(self) -> None:
        sr = self.detector.config.sr
        s = self.stats
        log.info(
            "audio %.1f s, %d windows, %d periods, %d events, dropped %d blocks (%.1f s), device overflows %d, "
            "real-time factor %.4f", s.audio_s(sr), s.windows, s.periods, s.events, s.dropped_blocks,
            s.dropped_samples / sr, getattr(self.source, "overflows", 0), s.real_time_factor(sr),
        )

    def run(self) -> int:
        """Run until the source ends or a stop is requested; return the exit code."""
        self._thread.start()
        self.notifier.ready(f"listening, threshold {self.alarm.threshold:.4g}")
        log.info("running: device %s, threshold %.4g, period %.1f s", self.config.device.id,
                 self.alarm.threshold, self.config.alarm.period_s)
        next_stats = time.monotonic() + self.config.service.stats_interval_s
        while True:
            self.notifier.watchdog()
            try:
                block = self._queue.get(timeout=QUEUE_POLL_S)
            except queue.Empty:
                continue
            if block is END_OF_STREAM:
                break
            t0 = time.perf_counter()
            self._process(self.scorer.push(block))
            self.stats.processing_s += time.perf_counter() - t0
            self.stats.blocks += 1
            self.stats.samples += block.shape[0]
            if time.monotonic() >= next_stats:
                self._log_stats()
                next_stats += self.config.service.stats_interval_s
        self.notifier.stopping()
        self._process(self.scorer.flush())
        final = self.alarm.flush()
        if final is not None:
            self._handle_period(final)
        self._thread.join(timeout=QUEUE_POLL_S * 4)
        self._log_stats()
        if self._capture_error is not None:
            raise self._capture_error
        return 0

    def close(self) -> None:
        self.source.close()
        for sink in reversed(self.sinks):
            sink.close()


def run_service(config: Any, *, install_signals: bool = True, on_ready: Callable[[Service], None] | None = None) -> int:
    """Build everything from ``config`` and run the service; returns the exit code.

    Every start-up error (bundle, model, source, store, MQTT settings) is raised before READY=1,
    so systemd sees a failed start rather than a service that never listens.
    """
    from edge_asd.audio.sources import open_source
    from edge_asd.detector import Detector
    from edge_asd.sinks import MqttForwarder, SQLiteStore, StdoutSink

    notifier = Notifier()
    detector = Detector.from_bundle(
        config.device.bundle, model=config.device.model, num_threads=config.device.num_threads,
        class_label=config.device.class_label,
    )
    source = open_source(config.input, sr=detector.config.sr)
    stdout = StdoutSink()
    store = SQLiteStore(config.store.path, max_events=config.store.max_events, outbox=config.mqtt.enabled)
    sinks: list[Any] = [stdout, store]
    if config.mqtt.enabled:
        forwarder = MqttForwarder(config.mqtt, device_id=config.device.id, store=store)
        forwarder.start()
        sinks.append(forwarder)
    service = Service(config, detector=detector, source=source, sinks=sinks, stdout=stdout, notifier=notifier)
    if install_signals:
        signal.signal(signal.SIGTERM, service.request_stop)
        signal.signal(signal.SIGINT, service.request_stop)
    if on_ready is not None:
        on_ready(service)
    try:
        return service.run()
    finally:
        service.close()
