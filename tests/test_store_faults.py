"""The event store on a real full or read-only disk: a small tmpfs mounted by the test (root only,
as here and in CI; skipped with the reason otherwise). The store holds events in memory up to
store.memory_events, says so clearly once, writes them when the disk works again, and the service
keeps running and detecting (it never exits on it, so systemd never restarts it into the same disk).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge_asd.events import Event, SQLiteStore
from tests.device_helpers import REPO, copy_bundle, device_env, machine_clips, service_toml


@contextlib.contextmanager
def tmpfs(path: Path, size_kb: int):
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (run the suite as root, as CI does)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (no CAP_SYS_ADMIN?): {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte with one file; return it (delete it to free the space)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


def event(i: int) -> Event:
    return Event.create(device="d", kind="onset" if i % 2 == 0 else "back_to_normal", stream_time_s=float(i),
                        score=1.0, threshold=0.5, details={"i": i, "pad": "x" * 2000})


def test_full_disk_holds_events_in_memory_up_to_the_bound_and_writes_them_when_space_returns(tmp_path, caplog):
    with tmpfs(tmp_path / "disk", 512) as disk:
        store = SQLiteStore(disk / "events.sqlite", outbox=True, memory_events=5)
        store.emit(event(0))
        filler = fill(disk)
        failures = []
        store.on_failure = failures.append
        with caplog.at_level(logging.ERROR, logger="edge_asd.events"):
            for i in range(1, 9):
                store.emit(event(i))
        # The disk is full: the newest 5 wait in memory, the 3 oldest beyond the bound are dropped.
        assert store.pending_in_memory == 5 and store.dropped_events == 3
        errors = [r.getMessage() for r in caplog.records if "held in memory" in r.getMessage()]
        assert len(errors) == 1, errors  # once per episode, not once per event
        assert str(disk / "events.sqlite") in errors[0] and "full" in errors[0] and "free disk space" in errors[0]
        assert failures == [errors[0]]
        store.retry(force=True)  # still full: nothing changes, nothing raised
        assert store.pending_in_memory == 5
        filler.unlink()
        store.retry(force=True)
        assert store.pending_in_memory == 0
        assert [e["details"]["i"] for e in store.events()] == [0, 4, 5, 6, 7, 8]
        assert store.count_outbox() == 6
        store.close()


def test_read_only_disk_then_writable_again(tmp_path, caplog):
    # The disk goes read-only while the service is stopped (a file system remounted read-only after
    # errors); Linux refuses a remount to read-only under a file open for writing, so the store is
    # closed meanwhile, as across a restart.
    with tmpfs(tmp_path / "disk", 1024) as disk:
        store = SQLiteStore(disk / "events.sqlite", outbox=False)
        store.emit(event(0))
        store.close()
        remount(disk, "ro")
        try:
            with caplog.at_level(logging.ERROR, logger="edge_asd.events"):
                store = SQLiteStore(disk / "events.sqlite", outbox=False, strict=False)
                store.emit(event(1))
                store.emit(event(2))
            assert store.pending_in_memory == 2
            message = " ".join(r.getMessage() for r in caplog.records)
            assert "read-only" in message or "readonly" in message, message
            assert str(disk / "events.sqlite") in message and "make it writable" in message
        finally:
            remount(disk, "rw")
        store.retry(force=True)
        assert store.pending_in_memory == 0
        assert [e["details"]["i"] for e in store.events()] == [0, 1, 2]
        store.close()


def test_a_store_that_cannot_be_opened_does_not_stop_the_service(tmp_path):
    """Started with its store on a full disk, the service runs and detects; the store opens and
    gets every event once space returns mid-run."""
    bundle = copy_bundle(tmp_path)
    wavs = tmp_path / "wavs"
    machine_clips(wavs, ["normal"] * 2 + ["anomaly"] * 3 + ["normal"] * 3)
    with tmpfs(tmp_path / "disk", 256) as disk:
        db = disk / "sub" / "events.sqlite"
        filler = fill(disk)
        cfg = service_toml(tmp_path, bundle=bundle, inputs=wavs, db=db)
        cfg.write_text(cfg.read_text().replace("realtime = false", "realtime = true"))
        proc = subprocess.Popen([sys.executable, "-m", "edge_asd", "run", "--config", str(cfg)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=device_env(), cwd=REPO)
        out_lines: list[str] = []
        reader = threading.Thread(target=lambda: out_lines.extend(proc.stdout), daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 90
            while not any('"kind":"onset"' in line for line in list(out_lines)):
                assert proc.poll() is None and time.monotonic() < deadline, "no onset while the disk was full"
                time.sleep(0.1)
            filler.unlink()  # space returns during the run
            err = proc.stderr.read()
            assert proc.wait(timeout=90) == 0, err
        finally:
            if proc.poll() is None:
                proc.kill()
        reader.join(timeout=5)
        assert "Traceback" not in err
        assert f"event store {db}: cannot open the event store" in err and "full" in err and "detection goes on" in err, err
        assert "writable again" in err
        events = [json.loads(line) for line in out_lines if '"type":"event"' in line]
        assert [e["kind"] for e in events] == ["onset", "back_to_normal"]
        rows = sqlite3.connect(db).execute("SELECT id FROM events ORDER BY seq").fetchall()
        assert [r[0] for r in rows] == [e["id"] for e in events]


def test_a_full_disk_is_published_over_mqtt_and_its_events_follow_when_space_returns(tmp_path):
    from edge_asd.config import MqttConfig
    from edge_asd.events import MqttForwarder
    from tests.test_mqtt import Broker, Subscriber

    broker = Broker(tmp_path / "broker")
    broker.start()
    try:
        with tmpfs(tmp_path / "disk", 512) as disk:
            store = SQLiteStore(disk / "events.sqlite", outbox=True)
            sub = Subscriber(broker.port)
            forwarder = MqttForwarder(MqttConfig(enabled=True, host="127.0.0.1", port=broker.port, publish_timeout_s=2.0),
                                      device_id="test-dev", store=store)
            store.on_failure = forwarder.publish_store_failure
            forwarder.start()
            try:
                filler = fill(disk)
                held = [event(i) for i in range(3)]
                for e in held:
                    store.emit(e)
                    forwarder.emit(e)
                deadline = time.monotonic() + 30
                while not any(m["kind"] == "store_error" for m in list(sub.received)) and time.monotonic() < deadline:
                    time.sleep(0.1)
                (failure,) = [m for m in sub.received if m["kind"] == "store_error"]
                assert failure["device"] == "test-dev" and str(disk / "events.sqlite") in failure["details"]["message"]
                assert not sub.ids() & {e.id for e in held}  # they wait in memory, not yet sent
                filler.unlink()  # the forwarder's outbox poll writes them, then sends them
                assert sub.wait_for({e.id for e in held}, timeout=30)
            finally:
                forwarder.close()
                store.close()
                sub.close()
    finally:
        broker.stop()


def test_another_writer_holding_the_lock_does_not_stall_detection(tmp_path):
    """The review's stall: an external write lock on the store held the processing thread in 5 s busy
    waits, one per event and retry, and 17 of 25 s of audio were dropped. Now the first write waits
    the lock out once; while the store fails, events queue and retries give up at once."""
    path = tmp_path / "events.sqlite"
    store = SQLiteStore(path)
    other = sqlite3.connect(path, timeout=0.1, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # an external writer (a backup, a curious sqlite3 shell) holds the lock
    blocked = 0.0
    events = [Event.create(device="d", kind="onset", stream_time_s=float(i), score=1.0, threshold=0.5) for i in range(20)]
    start = time.monotonic()
    for event in events:  # one event and one retry every 0.25 s, as a busy detector would, for 5 s ... ish
        t = time.monotonic()
        store.emit(event)
        store.retry()
        store.save_evidence("d", statistic=1.0, rule="r")
        blocked += time.monotonic() - t
        time.sleep(0.25)
    elapsed = time.monotonic() - start
    # One wait of SQLITE_BUSY_TIMEOUT_S (5 s) for the first event; the rest queued (without the fix:
    # 20 x 5 s for the events alone).
    assert blocked < 7.0, (blocked, elapsed)
    assert store.pending_in_memory == len(events)
    other.execute("ROLLBACK")
    other.close()
    store.retry(force=True)
    assert store.pending_in_memory == 0 and [e["id"] for e in store.events()] == [e.id for e in events]
    store.close()
