"""MQTT conventions against a real mosquitto (started as in ``tests/test_mqtt.py``, loopback only):
Home Assistant discovery configs, the retained current state (state, anomaly, score), discovery
switched off, republication on reconnection, and the events' own path left as it was.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from edge_asd import __version__
from edge_asd.decision.alarm import PeriodResult
from edge_asd.config import ConfigError, MqttConfig, parse_config
from edge_asd.errors import ParameterError
from edge_asd.events.discovery import DeviceTopics, LiveState, apply_event, discovery_messages, machine_state
from edge_asd.events import Event, MqttForwarder, SQLiteStore
from tests.device_helpers import SEPARATING_THRESHOLD, copy_bundle, machine_clips
from tests.test_mqtt import MOSQUITTO, Broker, start_service

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto broker binary not installed (apt-get install mosquitto)")

DEVICE = "test-dev"
BASE = f"edge-asd/{DEVICE}"
CONFIG_TOPICS = {
    f"homeassistant/binary_sensor/{DEVICE}/anomaly/config",
    f"homeassistant/sensor/{DEVICE}/score/config",
    f"homeassistant/sensor/{DEVICE}/evidence/config",
    f"homeassistant/sensor/{DEVICE}/state/config",
}


def wait_until(condition, timeout: float = 10.0) -> bool:
    """Poll ``condition`` every 50 ms until it holds or ``timeout`` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


class Collector:
    """A clean-session subscriber that keeps every message as ``(topic, payload, retain)``.

    Messages delivered at subscription from the broker's retained store carry ``retain = True``;
    messages published while it is subscribed carry ``False`` (MQTT 3.1.1)."""

    _count = 0

    def __init__(self, port: int, *filters: str) -> None:
        import paho.mqtt.client as mqtt

        Collector._count += 1
        self.messages: list[tuple[str, str, bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"test-collector-{Collector._count}", clean_session=True)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in filters])
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "collector got no SUBACK from mosquitto"

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.messages.append((message.topic, message.payload.decode(), bool(message.retain)))

    def on(self, topic: str) -> list[tuple[str, bool]]:
        """``(payload, retain)`` of every message on ``topic``, in arrival order."""
        with self._lock:
            return [(p, r) for t, p, r in self.messages if t == topic]

    def last(self, topic: str) -> str | None:
        got = self.on(topic)
        return got[-1][0] if got else None

    def wait(self, condition, timeout: float = 20.0) -> bool:
        return wait_until(condition, timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained(port: int, *filters: str, settle_s: float = 1.0) -> dict[str, str]:
    """What a subscriber that connects now gets from the broker's retained store, by topic."""
    late = Collector(port, *filters)
    time.sleep(settle_s)  # retained messages follow the SUBACK at once; leave a margin under load
    late.close()
    out = {}
    for topic, payload, was_retained in late.messages:
        assert was_retained, f"{topic} arrived live, not from the retained store"
        out[topic] = payload
    return out


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


@pytest.fixture
def volatile_broker(tmp_path):
    """A broker without persistence: a restart forgets every retained message."""
    b = Broker(tmp_path / "volatile-broker")
    b.conf.write_text(b.conf.read_text().replace("persistence true", "persistence false"))
    b.start()
    yield b
    b.stop()


def forwarder_for(tmp_path: Path, port: int, **mqtt: object) -> tuple[MqttForwarder, SQLiteStore]:
    store = SQLiteStore(tmp_path / "events.sqlite", outbox=True)
    config = MqttConfig(enabled=True, host="127.0.0.1", port=port, publish_timeout_s=2.0, **mqtt)
    return MqttForwarder(config, device_id=DEVICE, store=store), store


def raise_event(forwarder: MqttForwarder, store: SQLiteStore, kind: str, **details: object) -> Event:
    """An event through the service's path: the store first, then the forwarder."""
    event = Event.create(device=DEVICE, kind=kind, stream_time_s=1.0, score=1.0, threshold=SEPARATING_THRESHOLD,
                         details=details)
    store.emit(event)
    forwarder.emit(event)
    return event


def test_discovery_configs_arrive_retained_with_the_right_fields(tmp_path, broker):
    forwarder, store = forwarder_for(tmp_path, broker.port)
    live = Collector(broker.port, f"{BASE}/status")
    forwarder.start()
    try:
        assert live.wait(lambda: live.last(f"{BASE}/status") == "online"), "the forwarder never connected"
        configs = retained(broker.port, "homeassistant/#")
    finally:
        forwarder.close()
        store.close()
        live.close()
    assert set(configs) == CONFIG_TOPICS
    parsed = {topic.split("/")[-2]: json.loads(payload) for topic, payload in configs.items()}
    for object_id, cfg in parsed.items():
        assert cfg["availability_topic"] == f"{BASE}/status"
        assert (cfg["payload_available"], cfg["payload_not_available"]) == ("online", "offline")
        assert cfg["unique_id"] == f"edge-asd-{DEVICE}-{object_id}"
        assert cfg["device"] == {"identifiers": [f"edge-asd-{DEVICE}"], "name": DEVICE, "model": "edge-asd",
                                 "manufacturer": "edge-asd", "sw_version": __version__}
        assert cfg["state_topic"] == f"{BASE}/{object_id}"
        assert cfg["json_attributes_topic"] == f"{BASE}/{object_id}/attributes"
    assert parsed["anomaly"]["device_class"] == "problem"
    assert (parsed["anomaly"]["payload_on"], parsed["anomaly"]["payload_off"]) == ("ON", "OFF")
    assert parsed["score"]["state_class"] == "measurement"
    assert (parsed["evidence"]["state_class"], parsed["evidence"]["unit_of_measurement"]) == ("measurement", "%")
    assert parsed["state"]["device_class"] == "enum"
    assert parsed["state"]["options"] == ["starting", "running", "idle", "sensor_fault"]
    assert len({cfg["unique_id"] for cfg in parsed.values()}) == 4


def test_custom_discovery_prefix(tmp_path, broker):
    forwarder, store = forwarder_for(tmp_path, broker.port, discovery_prefix="ha/site-1")
    live = Collector(broker.port, f"{BASE}/status")
    forwarder.start()
    try:
        assert live.wait(lambda: live.last(f"{BASE}/status") == "online")
        moved = retained(broker.port, "ha/site-1/#")
        default = retained(broker.port, "homeassistant/#", settle_s=0.5)
    finally:
        forwarder.close()
        store.close()
        live.close()
    assert set(moved) == {t.replace("homeassistant/", "ha/site-1/") for t in CONFIG_TOPICS}
    assert default == {}


def test_state_follows_events_and_is_retained_for_late_subscribers(tmp_path, broker):
    forwarder, store = forwarder_for(tmp_path, broker.port)
    live = Collector(broker.port, f"{BASE}/#")
    forwarder.start()
    state_topics = [f"{BASE}/state", f"{BASE}/state/attributes", f"{BASE}/anomaly", f"{BASE}/anomaly/attributes",
                    f"{BASE}/score", f"{BASE}/score/attributes"]
    try:
        assert live.wait(lambda: live.last(f"{BASE}/anomaly") == "OFF"), live.messages
        now = retained(broker.port, *state_topics)
        assert (now[f"{BASE}/state"], now[f"{BASE}/anomaly"]) == ("starting", "OFF")
        assert f"{BASE}/score" not in now  # no period yet

        forwarder.on_period(PeriodResult(start_s=0.0, end_s=10.0, score=12.5, n_windows=8, anomalous=True,
                                         alarm=True, event="onset"), SEPARATING_THRESHOLD)
        onset = raise_event(forwarder, store, "onset")
        # Wait for the last message of the change (each change is published in topic order).
        assert live.wait(lambda: onset.id in (live.last(f"{BASE}/anomaly/attributes") or ""))
        now = retained(broker.port, *state_topics)
        assert now[f"{BASE}/anomaly"] == "ON"
        assert json.loads(now[f"{BASE}/anomaly/attributes"])["onset_id"] == onset.id
        assert now[f"{BASE}/state"] == "running"
        assert float(now[f"{BASE}/score"]) == 12.5
        attrs = json.loads(now[f"{BASE}/score/attributes"])
        assert attrs["threshold"] == SEPARATING_THRESHOLD and attrs["decided"] is True and attrs["end_s"] == 10.0

        raise_event(forwarder, store, "sensor_fault", reason="silence")
        assert live.wait(lambda: "silence" in (live.last(f"{BASE}/state/attributes") or ""))
        now = retained(broker.port, f"{BASE}/state", f"{BASE}/state/attributes")
        assert now[f"{BASE}/state"] == "sensor_fault"
        assert json.loads(now[f"{BASE}/state/attributes"])["reason"] == "silence"
        raise_event(forwarder, store, "machine_idle")  # a faulty sensor hides the machine: still a fault
        raise_event(forwarder, store, "sensor_ok", reason="silence")
        assert live.wait(lambda: live.last(f"{BASE}/state") == "idle")
        raise_event(forwarder, store, "machine_running")
        assert live.wait(lambda: live.last(f"{BASE}/state") == "running")

        back = raise_event(forwarder, store, "back_to_normal", onset_id=onset.id)
        assert live.wait(lambda: len(live.on(f"{BASE}/anomaly/attributes")) == 3)
        now = retained(broker.port, f"{BASE}/anomaly", f"{BASE}/state")
        assert now == {f"{BASE}/anomaly": "OFF", f"{BASE}/state": "running"}
        assert live.wait(lambda: len(live.on(f"{BASE}/events")) >= 6)
    finally:
        forwarder.close()
        store.close()
        live.close()
    # Each change published once, in order: no value repeated, none skipped.
    assert [p for p, _ in live.on(f"{BASE}/anomaly")] == ["OFF", "ON", "OFF"]
    assert [p for p, _ in live.on(f"{BASE}/state")] == ["starting", "running", "sensor_fault", "idle", "running"]
    # The events' own path is unchanged: each once, with its id.
    ids = [json.loads(p)["id"] for p, _ in live.on(f"{BASE}/events")]
    assert len(ids) == 6 == len(set(ids)) and ids[0] == onset.id and ids[-1] == back.id


def test_discovery_off_publishes_no_config(tmp_path, broker):
    forwarder, store = forwarder_for(tmp_path, broker.port, discovery=False)
    live = Collector(broker.port, "#")
    forwarder.start()
    try:
        event = raise_event(forwarder, store, "onset")
        assert live.wait(lambda: live.last(f"{BASE}/anomaly") == "ON" and live.on(f"{BASE}/events")), live.messages
        time.sleep(0.5)
    finally:
        forwarder.close()
        store.close()
        live.close()
    assert not [t for t, _, _ in live.messages if t.startswith("homeassistant/")]
    assert json.loads(live.on(f"{BASE}/events")[0][0])["id"] == event.id
    assert retained(broker.port, "homeassistant/#", settle_s=0.5) == {}


def test_reconnection_publishes_discovery_and_state_again(tmp_path, volatile_broker):
    forwarder, store = forwarder_for(tmp_path, volatile_broker.port)
    forwarder.start()
    try:
        watch = Collector(volatile_broker.port, f"{BASE}/anomaly")
        onset = raise_event(forwarder, store, "onset")
        assert watch.wait(lambda: watch.last(f"{BASE}/anomaly") == "ON")
        watch.close()
        first = retained(volatile_broker.port, "homeassistant/#")
        volatile_broker.stop()  # forgets every retained message
        raise_event(forwarder, store, "sensor_fault", reason="clipping")  # while the broker is away
        volatile_broker.start()
        # The anomaly's attributes are the last message published on connection (no score yet):
        # once they are there, all is.
        watch = Collector(volatile_broker.port, f"{BASE}/anomaly/attributes")
        assert watch.wait(lambda: watch.last(f"{BASE}/anomaly/attributes") is not None, timeout=30), "no reconnection"
        watch.close()
        now = retained(volatile_broker.port, "homeassistant/#", f"{BASE}/anomaly", f"{BASE}/state",
                       f"{BASE}/anomaly/attributes")
    finally:
        forwarder.close()
        store.close()
    assert {t: now[t] for t in CONFIG_TOPICS} == first  # the same configs: unique ids stable
    assert now[f"{BASE}/anomaly"] == "ON"
    assert json.loads(now[f"{BASE}/anomaly/attributes"])["onset_id"] == onset.id
    assert now[f"{BASE}/state"] == "sensor_fault"  # the change made while away, not the state before


def test_open_alarm_in_the_store_starts_the_anomaly_on(tmp_path, broker):
    store = SQLiteStore(tmp_path / "events.sqlite", outbox=False)
    onset = Event.create(device=DEVICE, kind="onset", stream_time_s=5.0, score=20.0, threshold=SEPARATING_THRESHOLD)
    store.emit(onset)
    store.close()
    forwarder, store = forwarder_for(tmp_path, broker.port)
    live = Collector(broker.port, f"{BASE}/anomaly", f"{BASE}/anomaly/attributes")
    forwarder.start()
    try:
        assert live.wait(lambda: live.last(f"{BASE}/anomaly/attributes") is not None)
    finally:
        forwarder.close()
        store.close()
        live.close()
    assert [p for p, _ in live.on(f"{BASE}/anomaly")] == ["ON"]
    assert json.loads(live.last(f"{BASE}/anomaly/attributes"))["onset_id"] == onset.id


def test_service_run_flips_anomaly_and_keeps_events_once(tmp_path, broker):
    """The real service: ON at each onset, OFF at each back-to-normal, the last state, score and
    configs retained for a dashboard that starts after the run, every event once with its id."""
    bundle = copy_bundle(tmp_path)
    wavs = tmp_path / "wavs"
    machine_clips(wavs, ["normal", "anomaly", "normal", "anomaly", "normal"], duration_s=1.0)
    db = tmp_path / "events.sqlite"
    live = Collector(broker.port, f"{BASE}/events", f"{BASE}/anomaly")
    proc = start_service(tmp_path, bundle=bundle, wavs=wavs, db=db, port=broker.port)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    kinds = [e["kind"] for e in events if e["kind"] in ("onset", "back_to_normal")]
    assert kinds.count("onset") >= 2, out
    assert live.wait(lambda: len(live.on(f"{BASE}/events")) >= len(events))
    time.sleep(0.5)
    live.close()
    received = [json.loads(p)["id"] for p, _ in live.on(f"{BASE}/events")]
    assert sorted(received) == sorted(e["id"] for e in events)  # each once, ids unchanged
    assert [p for p, _ in live.on(f"{BASE}/anomaly")] == ["OFF"] + ["ON" if k == "onset" else "OFF" for k in kinds]

    after = retained(broker.port, "homeassistant/#", f"{BASE}/#")
    assert CONFIG_TOPICS <= set(after)
    assert after[f"{BASE}/status"] == "offline"
    assert after[f"{BASE}/anomaly"] == ("ON" if kinds[-1] == "onset" else "OFF")
    assert after[f"{BASE}/state"] == "running"
    assert json.loads(after[f"{BASE}/score/attributes"])["threshold"] == pytest.approx(SEPARATING_THRESHOLD)
    float(after[f"{BASE}/score"])  # a number Home Assistant can graph
    assert f"{BASE}/events" not in after  # events are never retained


# -- configuration and the pure message functions ------------------------------------------------

def test_discovery_settings_are_validated_once():
    assert MqttConfig().discovery is True and MqttConfig().discovery_prefix == "homeassistant"
    for bad in ("", "home/#", "+", "/homeassistant", "homeassistant/", "a//b"):
        with pytest.raises(ParameterError, match="mqtt.discovery_prefix"):
            MqttConfig(discovery_prefix=bad)
    cfg = parse_config({"mqtt": {"enabled": True, "discovery": False, "discovery_prefix": "ha"}}, base=Path("."))
    assert (cfg.mqtt.discovery, cfg.mqtt.discovery_prefix) == (False, "ha")
    with pytest.raises(ConfigError, match="mqtt.discovery"):
        parse_config({"mqtt": {"discovery": "yes"}}, base=Path("."))


def test_discovery_messages_are_stable_per_device():
    topics = DeviceTopics(topic_prefix="factory/edge-asd", device_id="pump-07")
    a = discovery_messages(topics=topics, discovery_prefix="homeassistant", sw_version="1.0")
    b = discovery_messages(topics=topics, discovery_prefix="homeassistant", sw_version="1.0")
    other = discovery_messages(topics=DeviceTopics(topic_prefix="factory/edge-asd", device_id="pump-08"),
                               discovery_prefix="homeassistant", sw_version="1.0")
    assert a == b and all(m.retain and m.qos == 1 for m in a)
    assert {json.loads(m.payload)["unique_id"] for m in a}.isdisjoint(json.loads(m.payload)["unique_id"] for m in other)
    assert {json.loads(m.payload)["availability_topic"] for m in a} == {"factory/edge-asd/pump-07/status"}


def test_machine_state_precedence():
    live = LiveState()
    assert machine_state(live) == "starting"
    live = apply_event(live, kind="machine_idle", event_id="1", time_utc="t1")
    assert machine_state(live) == "idle"
    live = apply_event(live, kind="sensor_lost", event_id="2", time_utc="t2")
    assert machine_state(live) == "sensor_fault"
    live = apply_event(live, kind="sensor_back", event_id="3", time_utc="t3")
    assert machine_state(live) == "idle"
    assert apply_event(live, kind="store_error", event_id="4", time_utc="t4") is live
