"""Event sinks: stdout JSON lines, the SQLite store (WAL, durable, bounded, outbox, full disk)."""

from __future__ import annotations

import io
import json
import logging
import sqlite3

from edge_asd.events import Event, SQLiteStore, StdoutSink


def make_event(i: int = 0, kind: str = "onset") -> Event:
    return Event.create(device="dev-1", kind=kind, stream_time_s=float(i), score=1.5 + i, threshold=1.0, details={"i": i})


def test_events_have_unique_ids_and_serialise_to_one_json_line():
    a, b = make_event(0), make_event(1)
    assert a.id != b.id and len(a.id) == 32
    buf = io.StringIO()
    sink = StdoutSink(buf)
    sink.emit(a)
    sink.emit(b)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["type"] == "event" and first["id"] == a.id and first["kind"] == "onset" and first["details"] == {"i": 0}
    assert first["time_utc"].endswith("Z")


def test_store_is_wal_and_survives_reopening(tmp_path):
    path = tmp_path / "sub" / "events.sqlite"
    store = SQLiteStore(path, outbox=True)
    events = [make_event(i) for i in range(3)]
    for e in events:
        store.emit(e)
    store.emit(events[0])  # the same event twice is stored once
    store.close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again = SQLiteStore(path, outbox=True)
    assert [e["id"] for e in again.events()] == [e.id for e in events]
    assert [row[1] for row in again.next_outbox(10)] == [e.id for e in events]
    again.mark_delivered(again.next_outbox(1)[0][0])
    assert again.count_outbox() == 2
    again.close()


def test_store_is_bounded_but_never_drops_undelivered_events(tmp_path, monkeypatch):
    monkeypatch.setattr("edge_asd.events.store.PRUNE_EVERY", 5)
    store = SQLiteStore(tmp_path / "e.sqlite", max_events=10, outbox=True)
    for i in range(40):
        store.emit(make_event(i))
    assert len(store.events()) == 40  # all undelivered: kept
    for seq, _, _ in store.next_outbox(40)[:35]:
        store.mark_delivered(seq)
    for i in range(40, 45):
        store.emit(make_event(i))
    kept = store.events()
    # The prune at the 45th insert keeps the newest max_events (seq 36-45, of which 36-45 are also
    # the undelivered ones): exactly 10, the newest.
    assert [e["details"]["i"] for e in kept] == list(range(35, 45))
    assert store.count_outbox() == 10
    outbox_ids = {row[1] for row in store.next_outbox(100)}
    assert outbox_ids <= {e["id"] for e in kept}
    store.close()


def test_full_disk_is_logged_and_events_are_kept_until_they_fit(tmp_path, caplog):
    store = SQLiteStore(tmp_path / "e.sqlite", outbox=True)
    page_count = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {page_count}")  # the "disk" is now full
    big = [Event.create(device="d", kind="onset", stream_time_s=0.0, score=1.0, threshold=0.5, details={"pad": "x" * 20000}) for _ in range(3)]
    with caplog.at_level(logging.ERROR, logger="edge_asd.events"):
        for e in big:
            store.emit(e)
    assert store.failed_writes >= 1 and store.pending_in_memory >= 1
    assert any("cannot write event" in r.getMessage() and "full" in r.getMessage() for r in caplog.records)
    store._db.execute("PRAGMA max_page_count = 1073741823")  # space freed
    store.emit(make_event(99))
    assert store.pending_in_memory == 0
    assert [e["id"] for e in store.events()][-4:] == [e.id for e in big] + [store.events()[-1]["id"]]
    assert len(store.events()) == 4
    store.close()


def test_store_is_pruned_at_open_and_by_a_short_lived_process(tmp_path, monkeypatch):
    """Pruning after every PRUNE_EVERY inserts alone never runs in a process that stores fewer."""
    path = tmp_path / "e.sqlite"
    store = SQLiteStore(path, max_events=100_000, outbox=True)
    for i in range(30):
        store.emit(make_event(i))
    for seq, _, _ in store.next_outbox(30)[:25]:
        store.mark_delivered(seq)  # 25 delivered, 5 still undelivered
    store.close()
    # A restart with a lower bound: the store is within it as soon as it is open.
    again = SQLiteStore(path, max_events=10, outbox=True)
    assert [e["details"]["i"] for e in again.events()] == list(range(20, 30))
    assert again.count_outbox() == 5
    # A process that stores a few events and runs long: pruned by time as well as by count.
    monkeypatch.setattr("edge_asd.events.store.PRUNE_INTERVAL_S", 0.0)
    for seq, _, _ in again.next_outbox(5):
        again.mark_delivered(seq)
    for i in range(30, 33):
        again.emit(make_event(i))
    assert [e["details"]["i"] for e in again.events()] == list(range(23, 33))
    again.close()


def test_a_stdout_that_fails_is_logged_once_and_then_left_alone(caplog):
    class Broken(io.StringIO):
        writes = 0

        def write(self, s):
            Broken.writes += 1
            raise BrokenPipeError(32, "Broken pipe")

    sink = StdoutSink(Broken())
    with caplog.at_level(logging.WARNING, logger="edge_asd.events"):
        for i in range(3):
            sink.emit(make_event(i))
        sink.write_line("{}")
        sink.close()
    assert Broken.writes == 1  # then the sink stops writing
    assert [r.getMessage() for r in caplog.records if "cannot write to stdout" in r.getMessage()] != []
    assert len([r for r in caplog.records if "stdout" in r.getMessage()]) == 1
