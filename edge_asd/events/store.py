"""The SQLite event store: durable, bounded, the MQTT outbox, the open alarm, the saved evidence.

The store doubles as the MQTT outbox: an event is stored first, then forwarded, and deleted from
the outbox only after the broker acknowledged it, so a broker outage, a restart or a SIGTERM never
loses an event. It also keeps the open alarm (the last onset not yet followed by a back-to-normal),
written in the same transaction as the event, so a service restarted during an alarm resumes it
rather than raising a second onset (see :meth:`SQLiteStore.open_alarm`), the evidence of the
sequential alarm rule, and the nonces of signed remote commands already carried out.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from edge_asd.errors import EdgeASDError
from edge_asd.events.event import Event

__all__ = ["SQLiteStore", "StoreError"]

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_S = 5.0
"""How long a writer waits for another connection's lock, seconds."""
PRUNE_EVERY = 100
"""Prune delivered events after this many inserts (pruning is a table scan)."""
PRUNE_INTERVAL_S = 3600.0
"""Also prune at the first insert after this long without pruning, seconds (and always at open):
a process that stores fewer than :data:`PRUNE_EVERY` events would otherwise never prune."""
STORE_RETRY_S = 5.0
"""While events wait in memory (the store's disk is full or read-only), how often
:meth:`SQLiteStore.retry` tries to write them, seconds."""


class StoreError(EdgeASDError):
    """The event store cannot be opened or written (disk full, permissions, corrupt file)."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    device TEXT NOT NULL,
    kind TEXT NOT NULL,
    time_utc TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS open_alarm (
    device TEXT PRIMARY KEY,
    onset_id TEXT NOT NULL,
    time_utc TEXT NOT NULL,
    stream_time_s REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS command_nonces (
    nonce TEXT PRIMARY KEY,
    seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS evidence_state (
    device TEXT PRIMARY KEY,
    statistic REAL NOT NULL,
    rule TEXT NOT NULL,
    updated REAL NOT NULL
);
"""


class SQLiteStore:
    """Durable local event store in WAL mode, bounded in size, with an MQTT outbox.

    Parameters
    ----------
    path
        Database file (created with its folder).
    max_events
        Delivered events kept; older ones are deleted. Events still in the outbox are never
        deleted, so the bound can be exceeded while the broker is away (logged).
    outbox
        Put new events in the outbox (``True`` when MQTT forwarding is configured).
    memory_events
        Events held in memory while the store cannot be written; beyond it the oldest are dropped
        (counted in ``dropped_events``, and each was already on stdout, i.e. in the journal).
    strict
        Raise :class:`StoreError` when the file cannot be opened (tools); the service passes
        ``False``: a full or read-only disk must not stop detection, nor make systemd restart the
        service over and over.

    A write that fails (disk full, read-only file system) keeps the event in memory, logs an error
    naming the file, the error and what to do (once per failure episode, then a reminder per
    :data:`STORE_RETRY_S` retry), and is retried on the next write and by :meth:`retry`;
    ``failed_writes`` counts failures. A store that could not be opened is opened again the same way.
    ``on_failure(message)``, when set, is called once at the start of each failure episode (the
    service publishes it over MQTT, which cannot read events from a store that is failing).
    """

    def __init__(self, path: str | os.PathLike, *, max_events: int = 100_000, outbox: bool = False,
                 memory_events: int = 10_000, strict: bool = True) -> None:
        self.path = Path(path)
        self.max_events = max_events
        self.outbox = outbox
        self.memory_events = memory_events
        self.failed_writes = 0
        self.dropped_events = 0
        self.on_failure: Any = None
        self._failing = False
        self._locked = False  # the last write failed on another connection's lock
        self._pending: list[Event] = []
        self._inserts = 0
        self._last_prune = time.monotonic()
        self._last_retry = time.monotonic()
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        try:
            self._connect()
        except StoreError as exc:
            if strict:
                raise
            self._fail(str(exc))

    def _connect(self) -> None:
        db = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=SQLITE_BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            # Events are rare and precious: make every commit durable against power loss too.
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            if db is not None:
                db.close()
            raise StoreError(f"{self.path}: cannot open the event store ({exc}{self._diagnose()}); check the path, "
                             "permissions and free space") from exc
        self._db = db
        # At open too: a store.max_events lowered in the configuration applies from the start.
        self._prune()

    def _diagnose(self) -> str:
        """What SQLite's message does not say ("unable to open database file"): read-only file
        system, full disk or missing write permission on the store's folder ("" if none of them)."""
        folder = self.path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        try:
            st = os.statvfs(folder)
        except OSError:
            return ""
        if st.f_flag & os.ST_RDONLY:
            return f"; {folder} is on a read-only file system"
        if st.f_bavail * st.f_frsize < 64 * 1024:
            return f"; the disk holding {folder} is full ({st.f_bavail * st.f_frsize} bytes free)"
        if not os.access(folder, os.W_OK):
            return f"; no write permission on {folder}"
        return ""

    def _fail(self, message: str) -> None:
        """Log a failure (loudly at the start of an episode) and tell ``on_failure``."""
        self.failed_writes += 1
        if self._failing:
            log.debug("event store still failing: %s", message)
            return
        self._failing = True
        text = (f"event store {message}; {len(self._pending)} event(s) held in memory (at most "
                f"{self.memory_events}, store.memory_events) and written when it works again: free disk space on "
                f"{self.path.parent} or make it writable; detection goes on")
        log.error("%s", text)
        if self.on_failure is not None:
            try:
                self.on_failure(text)
            except Exception as exc:  # never let the report of a failure become a second failure
                log.warning("reporting the event store failure failed: %s", exc)

    def emit(self, event: Event) -> None:
        with self._lock:
            self._pending.append(event)
            if len(self._pending) > self.memory_events:
                dropped = self._pending.pop(0)
                self.dropped_events += 1
                log.error("event store %s: more than store.memory_events = %d events wait in memory; dropped the "
                          "oldest (%s %s, printed to stdout when raised)", self.path, self.memory_events, dropped.kind, dropped.id)
            if self._locked and time.monotonic() - self._last_retry < STORE_RETRY_S:
                return  # another writer holds the lock: retry() writes it in a while, detection must not wait
            self._write_pending()

    def retry(self, *, force: bool = False) -> None:
        """Write events held in memory (at most every :data:`STORE_RETRY_S` unless ``force``)."""
        if not self._pending and self._db is not None:
            return
        if not force and time.monotonic() - self._last_retry < STORE_RETRY_S:
            return
        with self._lock:
            self._write_pending()

    def _write_pending(self) -> None:
        try:
            self._write_pending_once()
        finally:
            # Timed from the end of the attempt: a write that waited out a lock must not be retried at once.
            self._last_retry = time.monotonic()

    def _write_pending_once(self) -> None:
        if self._db is None:
            try:
                self._connect()
            except StoreError as exc:
                self._fail(str(exc))
                return
        written = 0
        # The first attempt waits out another writer's lock (SQLITE_BUSY_TIMEOUT_S); retries while
        # failing give up at once, so a lock held for minutes costs detection milliseconds per retry.
        self._db.execute(f"PRAGMA busy_timeout = {100 if self._locked else int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        while self._pending:
            event = self._pending[0]
            try:
                with self._db:  # one transaction: the event and its outbox entry, or neither
                    self._db.execute("BEGIN IMMEDIATE")
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO events (id, device, kind, time_utc, payload) VALUES (?, ?, ?, ?, ?)",
                        (event.id, event.device, event.kind, event.time_utc, event.to_json()),
                    )
                    if self.outbox and cur.rowcount:
                        self._db.execute("INSERT OR IGNORE INTO outbox (seq, id) VALUES (?, ?)", (cur.lastrowid, event.id))
                    if cur.rowcount:
                        self._track_alarm(event)
            except sqlite3.Error as exc:
                self._locked = "locked" in str(exc) or "busy" in str(exc)
                self._fail(f"{self.path}: cannot write event {event.id} ({exc}{self._diagnose()})")
                return
            self._locked = False
            self._pending.pop(0)
            written += 1
            self._inserts += 1
            if self._inserts % PRUNE_EVERY == 0 or time.monotonic() - self._last_prune >= PRUNE_INTERVAL_S:
                self._prune()
        if self._failing:
            self._failing = False
            log.warning("event store %s: writable again; %d event(s) held in memory written", self.path, written)

    def _track_alarm(self, event: Event) -> None:
        """Record (onset) or clear (back-to-normal) the device's open alarm; inside the event's transaction."""
        if event.kind == "onset":
            self._db.execute(
                "INSERT OR REPLACE INTO open_alarm (device, onset_id, time_utc, stream_time_s) VALUES (?, ?, ?, ?)",
                (event.device, event.id, event.time_utc, event.stream_time_s),
            )
        elif event.kind == "back_to_normal":
            self._db.execute("DELETE FROM open_alarm WHERE device = ?", (event.device,))

    def open_alarm(self, device: str) -> dict[str, Any] | None:
        """The onset of ``device`` not yet followed by a back-to-normal, or ``None``.

        Returns ``{"onset_id", "time_utc", "stream_time_s"}`` (the onset's stream time is on the
        clock of the run that raised it, seconds).
        """
        with self._lock:
            if self._db is None:
                log.warning("event store %s is not open: no open alarm to resume", self.path)
                return None
            try:
                row = self._db.execute(
                    "SELECT onset_id, time_utc, stream_time_s FROM open_alarm WHERE device = ?", (device,)
                ).fetchone()
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: cannot read the open alarm ({exc})") from exc
        return None if row is None else {"onset_id": str(row[0]), "time_utc": str(row[1]), "stream_time_s": float(row[2])}

    def save_evidence(self, device: str, *, statistic: float, rule: str) -> bool:
        """Keep ``device``'s evidence statistic (and the rule it belongs to) with the time now;
        ``False`` when the store could not be written (skipped quietly: the next period writes again)."""
        with self._lock:
            if self._db is None:
                return False
            try:
                # Every period, from the processing thread: never wait for another writer's lock.
                self._db.execute("PRAGMA busy_timeout = 0")
                with self._db:
                    self._db.execute("INSERT OR REPLACE INTO evidence_state (device, statistic, rule, updated) VALUES (?, ?, ?, ?)",
                                     (device, float(statistic), rule, time.time()))
            except sqlite3.Error as exc:
                log.debug("event store %s: cannot save the evidence (%s)", self.path, exc)
                return False
            finally:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        return True

    def remember_nonce(self, nonce: str, seen: float, *, keep_s: float) -> bool:
        """Record a signed command's nonce; ``False`` if it was recorded before (a replay). Nonces
        older than ``keep_s`` seconds are forgotten (the signature's age check refuses those commands).
        Raises :class:`StoreError` when the store cannot be written."""
        with self._lock:
            if self._db is None:
                raise StoreError(f"{self.path}: the event store is not open")
            try:
                with self._db:
                    self._db.execute("DELETE FROM command_nonces WHERE seen < ?", (seen - keep_s,))
                    cur = self._db.execute("INSERT OR IGNORE INTO command_nonces (nonce, seen) VALUES (?, ?)", (nonce, seen))
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: cannot record a command nonce ({exc})") from exc
        return cur.rowcount == 1

    def saved_evidence(self, device: str) -> dict[str, Any] | None:
        """``{"statistic", "rule", "updated"}`` saved for ``device`` (``updated``: Unix time, seconds), or ``None``."""
        with self._lock:
            if self._db is None:
                return None
            try:
                row = self._db.execute("SELECT statistic, rule, updated FROM evidence_state WHERE device = ?", (device,)).fetchone()
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: cannot read the saved evidence ({exc})") from exc
        return None if row is None else {"statistic": float(row[0]), "rule": str(row[1]), "updated": float(row[2])}

    def _prune(self) -> None:
        self._last_prune = time.monotonic()
        try:
            with self._db:
                self._db.execute(
                    "DELETE FROM events WHERE seq NOT IN (SELECT seq FROM outbox) AND seq <= "
                    "(SELECT COALESCE(MAX(seq), 0) FROM events) - ?",
                    (self.max_events,),
                )
            undelivered = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        except sqlite3.Error as exc:
            log.warning("event store %s: pruning failed (%s)", self.path, exc)
            return
        if undelivered > self.max_events:
            log.warning("event store %s: %d undelivered events exceed store.max_events; the broker has been away long", self.path, undelivered)

    @property
    def pending_in_memory(self) -> int:
        return len(self._pending)

    def next_outbox(self, limit: int = 1) -> list[tuple[int, str, str]]:
        """Oldest undelivered events as ``(seq, id, payload)``."""
        with self._lock:
            self._write_pending()
            if self._db is None:
                return []
            rows = self._db.execute(
                "SELECT o.seq, o.id, e.payload FROM outbox o JOIN events e ON e.seq = o.seq ORDER BY o.seq LIMIT ?",
                (limit,),
            ).fetchall()
        return [(int(s), str(i), str(p)) for s, i, p in rows]

    def mark_delivered(self, seq: int) -> None:
        with self._lock:
            if self._db is None:
                return
            try:
                with self._db:
                    self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            except sqlite3.Error as exc:
                # Not fatal: the event stays in the outbox and is sent again with the same id.
                log.warning("event store %s: cannot mark event %d delivered (%s)", self.path, seq, exc)

    def count_outbox(self) -> int:
        with self._lock:
            if self._db is None:
                return 0
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def events(self) -> list[dict[str, Any]]:
        """All stored events, oldest first (for tests and tools)."""
        with self._lock:
            if self._db is None:
                raise StoreError(f"{self.path}: the event store is not open")
            rows = self._db.execute("SELECT payload FROM events ORDER BY seq").fetchall()
        return [json.loads(r[0]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._write_pending()
            if self._pending:
                log.error("event store %s: %d event(s) could not be stored (see above); they were printed to stdout", self.path, len(self._pending))
            if self._db is not None:
                self._db.close()
