"""MQTT forwarding against a real mosquitto broker started by the test (loopback only).

The broker is stopped mid-run and restarted: every event the device raised arrives at least once,
with the same id; a SIGTERM mid-run loses nothing either.
"""

from __future__ import annotations

import getpass
import json
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.device_helpers import REPO, copy_bundle, device_env, machine_clips, service_toml

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto broker binary not installed (apt-get install mosquitto)")

TOPIC = "edge-asd/test-dev/events"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A mosquitto on 127.0.0.1 with persistence (so the test subscriber's session survives restarts)."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        root.mkdir(parents=True, exist_ok=True)
        # mosquitto started as root drops to the 'mosquitto' user, which cannot reach pytest's
        # private temp folders: it then fails to save its database at shutdown and the subscriber's
        # session, with the messages queued for it, dies with the restart. Run it as the test's
        # own user, who owns the folder (for a non-root user the option changes nothing).
        self.conf = root / "mosquitto.conf"
        self.conf.write_text(
            f"user {getpass.getuser()}\nlistener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {root}/\nlog_dest stderr\n"
        )
        self.log = root / "mosquitto.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "ab"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not start: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


class Subscriber:
    """A persistent-session QoS 1 subscriber collecting event payloads."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.received: list[dict] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="test-subscriber",
                                  clean_session=False)
        self._subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(TOPIC, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        # The broker queues events for this session only once the subscription exists: a service
        # started before the SUBACK could publish events no subscriber was ever registered for.
        assert self._subscribed.wait(10), "test subscriber got no SUBACK from mosquitto"

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.received.append(json.loads(message.payload))

    def ids(self) -> set[str]:
        with self._lock:
            return {m["id"] for m in self.received}

    def wait_for(self, ids: set[str], timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ids <= self.ids():
                return True
            time.sleep(0.1)
        return ids <= self.ids()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


def start_service(tmp: Path, *, bundle: Path, wavs: Path, db: Path, port: int) -> subprocess.Popen:
    extra = f"""
[mqtt]
enabled = true
host = "127.0.0.1"
port = {port}
publish_timeout_s = 2.0
flush_timeout_s = 10.0
"""
    cfg = service_toml(tmp, bundle=bundle, inputs=wavs, db=db, period_s=0.5, extra=extra)
    # One anomalous period raises, one normal period recovers: an event at every clip boundary.
    text = cfg.read_text().replace("onset_k = 2", "onset_k = 1").replace("onset_n = 3", "onset_n = 1").replace(
        "recovery_m = 2", "recovery_m = 1")
    cfg.write_text(text)
    return subprocess.Popen([sys.executable, "-m", "edge_asd", "run", "--config", str(cfg), "--realtime", "--no-log-periods"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=device_env(), cwd=REPO)


def stored_ids(db: Path) -> list[str]:
    if not db.exists():
        return []
    try:
        return [r[0] for r in sqlite3.connect(db).execute("SELECT id FROM events ORDER BY seq")]
    except sqlite3.OperationalError:  # the service has not created its tables yet
        return []


def wait_events(db: Path, n: int, timeout: float = 60) -> None:
    """Wait until the device has raised (and stored) at least ``n`` events."""
    deadline = time.monotonic() + timeout
    while len(stored_ids(db)) < n:
        assert time.monotonic() < deadline, f"fewer than {n} events after {timeout} s"
        time.sleep(0.1)


def test_broker_outage_mid_run_loses_no_event(tmp_path, broker):
    bundle = copy_bundle(tmp_path)
    wavs = tmp_path / "wavs"
    machine_clips(wavs, ["normal", "anomaly"] * 6, duration_s=1.0)
    db = tmp_path / "events.sqlite"
    sub = Subscriber(broker.port)
    proc = start_service(tmp_path, bundle=bundle, wavs=wavs, db=db, port=broker.port)
    try:
        wait_events(db, 2)
        broker.stop()  # mid-run: events raised now wait in the outbox
        wait_events(db, 5)
        broker.start()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    ids = {e["id"] for e in events}
    assert len(events) >= 9, out  # 6 anomalous clips: an onset and a recovery around each
    assert set(stored_ids(db)) == ids
    missing = ids - sub.ids() if not sub.wait_for(ids) else set()
    assert not missing, (missing, [e for e in events if e["id"] in missing], broker.log.read_text()[-3000:], err[-3000:])
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
    assert "MQTT disconnected" in err
    # At least once: duplicates, if any, carry the same id, and nothing else arrived.
    assert sub.ids() == ids
    sub.close()


def test_sigterm_mid_run_and_broker_away_at_exit_loses_nothing(tmp_path, broker):
    bundle = copy_bundle(tmp_path)
    wavs = tmp_path / "wavs"
    machine_clips(wavs, ["normal", "anomaly"] * 10, duration_s=1.0)
    db = tmp_path / "events.sqlite"
    sub = Subscriber(broker.port)
    proc = start_service(tmp_path, bundle=bundle, wavs=wavs, db=db, port=broker.port)
    try:
        wait_events(db, 2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    first = {json.loads(line)["id"] for line in out.splitlines() if line.startswith("{")}
    assert first and sub.wait_for(first), f"missing {first - sub.ids()}"

    # Broker away when the next run ends: its events stay in the outbox (the store survives the
    # process) and go out when a later run finds the broker again.
    broker.stop()
    proc = start_service(tmp_path, bundle=bundle, wavs=wavs, db=db, port=broker.port)
    try:
        wait_events(db, len(first) + 2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    second = {json.loads(line)["id"] for line in out.splitlines() if line.startswith("{")}
    assert second and "not yet delivered" in err
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == len(second)
    broker.start()
    proc = start_service(tmp_path, bundle=bundle, wavs=wavs, db=db, port=broker.port)
    try:
        assert sub.wait_for(first | second, timeout=30), f"missing {(first | second) - sub.ids()}"
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert set(stored_ids(db)) >= first | second
    sub.close()


def test_forwarder_survives_outbox_query_errors(tmp_path, broker, caplog):
    """A locked or failing database in the outbox query is logged and retried; the thread lives on."""
    import logging

    from edge_asd.config import MqttConfig
    from edge_asd.events import Event, MqttForwarder, SQLiteStore

    store = SQLiteStore(tmp_path / "events.sqlite", outbox=True)
    failures = {"left": 3}
    original = store.next_outbox

    def flaky_next_outbox(limit=1):
        if failures["left"]:
            failures["left"] -= 1
            raise sqlite3.OperationalError("database is locked")
        return original(limit)

    store.next_outbox = flaky_next_outbox
    sub = Subscriber(broker.port)
    forwarder = MqttForwarder(MqttConfig(enabled=True, host="127.0.0.1", port=broker.port, publish_timeout_s=2.0),
                              device_id="test-dev", store=store)
    event = Event.create(device="test-dev", kind="onset", stream_time_s=1.0, score=2.0, threshold=1.0)
    with caplog.at_level(logging.WARNING, logger="edge_asd.events"):
        store.emit(event)
        forwarder.start()
        forwarder.emit(event)
        try:
            assert sub.wait_for({event.id}, timeout=30), "the event never arrived"
            assert failures["left"] == 0 and forwarder._thread.is_alive()
        finally:
            forwarder.close()
            store.close()
            sub.close()
    assert sum("database is locked" in r.getMessage() for r in caplog.records) == 3
