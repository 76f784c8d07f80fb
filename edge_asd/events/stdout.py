"""Events to stdout as JSON lines (always on: under systemd, stdout is the journal)."""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import TextIO

from edge_asd.events.event import Event

__all__ = ["StdoutSink"]

log = logging.getLogger(__name__)


class StdoutSink:
    """One JSON object per line on stdout (the journal captures it under systemd).

    stdout is the least durable sink: a reader that went away (``edge-asd run | head``, a journal
    stream that vanished) makes every write fail. The first failure is logged and the sink then
    stays silent for the rest of the run; the events still reach the store and MQTT.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout
        self._lock = threading.Lock()
        self.broken = False
        """``True`` after a write failed: nothing more is written."""

    def emit(self, event: Event) -> None:
        self.write_line(event.to_json())

    def write_line(self, line: str) -> None:
        with self._lock:
            if self.broken:
                return
            try:
                self._stream.write(line + "\n")
                self._stream.flush()
            except (OSError, ValueError) as exc:  # ValueError: the stream was closed
                self._give_up(exc)

    def _give_up(self, exc: BaseException) -> None:
        self.broken = True
        log.warning("cannot write to stdout (%s); events go on to the store (and MQTT) without it", exc)
        # The bytes that failed stay in the stream's buffer, and the interpreter's final flush of
        # sys.stdout would fail on them again and turn exit 0 into 120: point the file descriptor
        # at /dev/null (as Python's documentation on SIGPIPE advises) so that flush succeeds.
        if self._stream is sys.stdout:
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, self._stream.fileno())
                os.close(devnull)
            except (OSError, ValueError):
                pass  # nothing better to do: the exit code may then say 120

    def close(self) -> None:
        with self._lock:
            if self.broken:
                return
            try:
                self._stream.flush()
            except (OSError, ValueError) as exc:
                self._give_up(exc)
