"""MQTT against a broker that demands a login: TLS with a client certificate, a password file and
an ACL, on a real mosquitto the test configures (``tests/mqtt_auth_broker.py``; certificates made
once per module with the ``cryptography`` package).

Each failure (wrong password, wrong CA, a topic the ACL refuses) gives one clear error in the log
however often the forwarder retries, keeps every event in the outbox, and once the configuration is
fixed every event goes out once with its id. The password never reaches the log, the store or the
broker's messages; a readable secret gets a warning when the configuration is loaded.
"""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_asd.config import ConfigError, load_config, parse_config
from edge_asd.events import Event, MqttForwarder, SQLiteStore
from tests.device_helpers import REPO, device_env
from tests.mqtt_auth_broker import MOSQUITTO_PASSWD, AuthBroker, make_pki
from tests.test_mqtt import MOSQUITTO
from tests.test_mqtt_discovery import CONFIG_TOPICS, Collector, retained, wait_until

pytest.importorskip("cryptography", reason="the test certificates are made with the cryptography package")
pytestmark = pytest.mark.skipif(MOSQUITTO is None or MOSQUITTO_PASSWD is None,
                                reason="mosquitto and mosquitto_passwd not installed (apt-get install mosquitto)")

DEVICE = "test-dev"
BASE = f"edge-asd/{DEVICE}"
EVENTS = f"{BASE}/events"
USER = "pump-07"
PASSWORD = "Tr0ub4dor&3-pump07"
"""Distinctive enough that finding it anywhere in a log is a leak, not a coincidence."""
WRONG_PASSWORD = "hunter2-but-longer"
GOOD_ACL = f"user {USER}\ntopic write {BASE}/#\ntopic write homeassistant/#\n"
NO_EVENTS_ACL = (f"user {USER}\ntopic write homeassistant/#\ntopic write {BASE}/status\ntopic write {BASE}/state/#\n"
                 f"topic write {BASE}/anomaly/#\ntopic write {BASE}/score/#\n")
"""Everything the device publishes but its events (``a/#`` covers ``a`` itself)."""


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def start_broker(tmp_path: Path, pki, acl: str = GOOD_ACL) -> AuthBroker:
    broker = AuthBroker(tmp_path / "broker", pki=pki, users={USER: PASSWORD}, acl=acl)
    broker.start()
    return broker


@pytest.fixture
def broker(tmp_path, pki):
    b = start_broker(tmp_path, pki)
    yield b
    b.stop()


def device_toml(tmp_path: Path, broker: AuthBroker, pki, *, password: str = PASSWORD, ca: Path | None = None,
                client_cert: bool = True) -> Path:
    """A device configuration as an operator writes it: the password in a file of its own (a
    relative path, resolved against the configuration's folder), TLS with a client certificate."""
    cert = f'tls_cert_file = "{pki.client_cert}"\ntls_key_file = "{pki.client_key}"' if client_cert else ""
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    (secrets / "mqtt-password").write_text(password + "\n")
    (secrets / "mqtt-password").chmod(0o600)
    path = tmp_path / "device.toml"
    path.write_text(f"""
[device]
id = "{DEVICE}"

[mqtt]
enabled = true
host = "127.0.0.1"
port = {broker.tls_port}
username = "{USER}"
password_file = "secrets/mqtt-password"
tls = true
tls_ca_file = "{ca or pki.ca}"
{cert}
publish_timeout_s = 2.0
flush_timeout_s = 0.5
""")
    return path


def open_forwarder(config_path: Path, db: Path) -> tuple[MqttForwarder, SQLiteStore]:
    """What the service does at start: load the TOML, open the store, start forwarding."""
    config = load_config(config_path)
    store = SQLiteStore(db, outbox=True)
    forwarder = MqttForwarder(config.mqtt, device_id=config.device.id, store=store)
    forwarder.start()
    return forwarder, store


def raise_events(forwarder: MqttForwarder, store: SQLiteStore, n: int) -> list[str]:
    """``n`` events through the service's path (the store first, then the forwarder); their ids."""
    ids = []
    for i in range(n):
        event = Event.create(device=DEVICE, kind="onset" if i % 2 == 0 else "back_to_normal", stream_time_s=float(i),
                             score=20.0, threshold=9.0)
        store.emit(event)
        forwarder.emit(event)
        ids.append(event.id)
    return ids


def records(caplog, text: str, level: int | None = None) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage() and (level is None or r.levelno == level)]


def outbox_ids(db: Path) -> list[str]:
    with sqlite3.connect(db) as con:
        return [r[0] for r in con.execute("SELECT id FROM outbox ORDER BY seq")]


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert PASSWORD not in text and WRONG_PASSWORD not in text


def event_ids(collector: Collector) -> list[str]:
    return [json.loads(payload)["id"] for payload, _ in collector.on(EVENTS)]


def fix_and_deliver(tmp_path: Path, broker: AuthBroker, pki, db: Path, ids: list[str]) -> Collector:
    """The operator's fix: the right configuration, a restart of the forwarder on the same store.
    Returns the collector that saw the events (closed)."""
    live = Collector(broker.port, EVENTS)
    forwarder, store = open_forwarder(device_toml(tmp_path, broker, pki), db)
    try:
        assert live.wait(lambda: len(event_ids(live)) >= len(ids)), (event_ids(live), broker.log_text()[-2000:])
        time.sleep(0.3)  # a duplicate, if any, would arrive now
    finally:
        forwarder.close()
        store.close()
        live.close()
    return live


# -- the broker accepts -----------------------------------------------------------------------------

def test_tls_client_certificate_and_password_deliver_every_event_once(tmp_path, broker, pki, caplog):
    caplog.set_level(logging.DEBUG)
    live = Collector(broker.port, f"{BASE}/#", "homeassistant/#")
    db = tmp_path / "events.sqlite"
    forwarder, store = open_forwarder(device_toml(tmp_path, broker, pki), db)
    try:
        ids = raise_events(forwarder, store, 3)
        assert live.wait(lambda: len(event_ids(live)) == 3), broker.log_text()[-2000:]
        assert live.last(f"{BASE}/status") == "online"
    finally:
        forwarder.close()
        store.close()
        live.close()
    assert event_ids(live) == ids  # in order, each once, ids unchanged
    assert outbox_ids(db) == []
    assert live.last(f"{BASE}/status") == "offline"
    # MQTT 5 (p5), clean start (c1), logged in as the configured user, and nothing else denied.
    log = broker.log_text()
    assert f"(p5, c1, k30, u'{USER}')" in log and "Denied" not in log
    # What MQTT 3.1.1 gave before the switch to 5: retained status, discovery configs, state.
    after = retained(broker.port, "homeassistant/#", f"{BASE}/#")
    assert CONFIG_TOPICS <= set(after) and after[f"{BASE}/status"] == "offline"
    assert after[f"{BASE}/anomaly"] == "ON"  # the last event was an onset
    assert_no_secret(caplog.text, json.dumps(live.messages), json.dumps(SQLiteStore(db).events()))


def test_last_will_over_tls_flips_status_when_the_process_is_killed(tmp_path, broker, pki):
    """The last will set on the MQTT 5 connection: a SIGKILLed device reads ``offline``."""
    config = device_toml(tmp_path, broker, pki)
    live = Collector(broker.port, f"{BASE}/status")
    code = ("import sys, time; from edge_asd.config import load_config; "
            "from edge_asd.events import MqttForwarder, SQLiteStore; c = load_config(sys.argv[1]); "
            "MqttForwarder(c.mqtt, device_id=c.device.id, store=SQLiteStore(sys.argv[2], outbox=True)).start(); "
            "time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(config), str(tmp_path / "events.sqlite")], cwd=REPO,
                            env=device_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert live.wait(lambda: live.last(f"{BASE}/status") == "online"), proc.stderr.read() if proc.poll() is not None else ""
        proc.send_signal(signal.SIGKILL)
        assert live.wait(lambda: live.last(f"{BASE}/status") == "offline")
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate()
        live.close()
    assert retained(broker.port, f"{BASE}/status")[f"{BASE}/status"] == "offline"
    assert_no_secret(err)


# -- the broker refuses: one clear error, nothing lost, all out once fixed ---------------------------

def test_wrong_password_is_reported_once_and_loses_nothing(tmp_path, broker, pki, caplog):
    caplog.set_level(logging.DEBUG)
    db = tmp_path / "events.sqlite"
    forwarder, store = open_forwarder(device_toml(tmp_path, broker, pki, password=WRONG_PASSWORD), db)
    try:
        ids = raise_events(forwarder, store, 2)
        # paho tries again after 1 s: wait for the second refusal.
        assert wait_until(lambda: broker.log_text().count("Sending CONNACK to 127.0.0.1 (0, 135)") >= 2)
        assert wait_until(lambda: len(records(caplog, "refused the login", logging.DEBUG)) >= 1)
    finally:
        forwarder.close()
        store.close()
    errors = records(caplog, "refused the login")
    assert [r.levelno for r in errors[:1]] == [logging.ERROR] and len(records(caplog, "refused the login", logging.ERROR)) == 1
    assert (f"refused the login for user '{USER}': bad username or password; check mqtt.username / "
            "mqtt.password_file") in errors[0].getMessage()
    assert "MQTT disconnected" not in caplog.text  # it never was connected: no second message per retry
    assert outbox_ids(db) == ids

    live = fix_and_deliver(tmp_path, broker, pki, db, ids)
    assert event_ids(live) == ids and outbox_ids(db) == []
    assert_no_secret(caplog.text, broker.log_text(), json.dumps(live.messages))


@pytest.mark.parametrize("mistake", ["wrong CA", "no client certificate"])
def test_tls_mistakes_are_reported_once_and_lose_nothing(tmp_path, broker, pki, caplog, mistake):
    caplog.set_level(logging.DEBUG)
    db = tmp_path / "events.sqlite"
    if mistake == "wrong CA":
        config = device_toml(tmp_path, broker, pki, ca=pki.other_ca)
        expected = "TLS certificate verification failed"
    else:
        config = device_toml(tmp_path, broker, pki, client_cert=False)
        expected = "closed the connection before answering"
    forwarder, store = open_forwarder(config, db)
    try:
        ids = raise_events(forwarder, store, 2)
        assert wait_until(lambda: len(records(caplog, expected, logging.DEBUG)) >= 1)  # a retry: not logged again
    finally:
        forwarder.close()
        store.close()
    errors = records(caplog, expected, logging.ERROR)
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert message.startswith(f"MQTT broker 127.0.0.1:{broker.tls_port}")
    if mistake == "wrong CA":
        assert "certificate verify failed" in message or "self-signed certificate" in message, message
        assert f"mqtt.tls_ca_file = {pki.other_ca} must be the CA that signed the broker's certificate" in message
    else:
        assert "if it demands a client certificate, set mqtt.tls_cert_file / mqtt.tls_key_file" in message
    assert outbox_ids(db) == ids

    live = fix_and_deliver(tmp_path, broker, pki, db, ids)
    assert event_ids(live) == ids and outbox_ids(db) == []
    assert_no_secret(caplog.text)


def test_topic_refused_by_the_acl_keeps_events_and_retries_with_back_off(tmp_path, pki, caplog):
    """MQTT 5's PUBACK says "not authorized" (3.1.1's would have said nothing and the broker dropped
    the events): the events stay, the error is logged once, retries slow down, and the fixed ACL,
    reloaded by the broker while the device runs, lets them all through, each once."""
    caplog.set_level(logging.DEBUG)
    broker = start_broker(tmp_path, pki, acl=NO_EVENTS_ACL)
    live = Collector(broker.port, f"{BASE}/#")
    db = tmp_path / "events.sqlite"
    forwarder, store = open_forwarder(device_toml(tmp_path, broker, pki), db)
    try:
        ids = raise_events(forwarder, store, 3)
        assert wait_until(lambda: len(records(caplog, "refused event")) >= 3, timeout=15)
        refusals = records(caplog, "refused event")
        assert [r.levelno for r in refusals[:3]] == [logging.ERROR, logging.DEBUG, logging.DEBUG]
        gaps = [b.created - a.created for a, b in zip(refusals, refusals[1:3])]
        # 1 s, then 2 s (not the 0.5 s idle poll); load only stretches them, so lower bounds.
        assert gaps[0] > 0.9 and gaps[1] > 1.9, gaps
        assert outbox_ids(db) == ids and event_ids(live) == []
        assert live.last(f"{BASE}/status") == "online"  # what the ACL allows goes on

        broker.set_acl(GOOD_ACL)
        assert live.wait(lambda: len(event_ids(live)) == 3, timeout=10), broker.log_text()[-2000:]
        time.sleep(0.3)
    finally:
        forwarder.close()
        store.close()
        live.close()
        broker.stop()
    message = refusals[0].getMessage()
    assert f"refused event {ids[0]} on {EVENTS} (Not authorized)" in message
    assert f"its ACL must let {USER} publish to that topic" in message
    assert "the event stays in the outbox" in message
    assert len(records(caplog, "refused event", logging.ERROR)) == 1
    assert records(caplog, "accepts events on", logging.INFO)
    assert "Denied PUBLISH" in broker.log_text()
    assert event_ids(live) == ids and outbox_ids(db) == []
    assert not records(caplog, "status/state/discovery")


def test_refused_status_and_discovery_are_reported(tmp_path, pki, caplog):
    caplog.set_level(logging.DEBUG)
    broker = start_broker(tmp_path, pki, acl=f"user {USER}\ntopic write {EVENTS}\n")
    live = Collector(broker.port, f"{BASE}/#")
    db = tmp_path / "events.sqlite"
    forwarder, store = open_forwarder(device_toml(tmp_path, broker, pki), db)
    try:
        ids = raise_events(forwarder, store, 1)
        assert live.wait(lambda: event_ids(live) == ids)
        assert wait_until(lambda: records(caplog, "status/state/discovery"))
    finally:
        forwarder.close()
        store.close()
        live.close()
        broker.stop()
    warnings = records(caplog, "status/state/discovery", logging.WARNING)
    assert len(warnings) == 1
    assert f"its ACL must let {USER} publish to {BASE}/# and homeassistant/#" in warnings[0].getMessage()
    assert live.last(f"{BASE}/status") is None


# -- secrets in the configuration --------------------------------------------------------------------

def test_readable_password_in_the_config_file_is_warned_about(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="edge_asd.config")
    path = tmp_path / "device.toml"
    path.write_text(f'[mqtt]\nusername = "{USER}"\npassword = "{PASSWORD}"\n')
    path.chmod(0o644)
    assert load_config(path).mqtt.password == PASSWORD
    [warning] = caplog.records
    assert warning.getMessage() == (f"{path}, which holds mqtt.password, is readable by group and others (mode 644): "
                                    f"chmod 600 {path}, or move the password to a file named by mqtt.password_file")
    caplog.clear()
    path.chmod(0o640)
    load_config(path)
    assert "readable by its group" in caplog.text
    caplog.clear()
    path.chmod(0o600)
    load_config(path)
    assert caplog.records == []
    assert PASSWORD not in caplog.text


def test_password_file_readable_by_others_is_warned_about(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="edge_asd.config")
    secret = tmp_path / "mqtt-password"
    secret.write_text(PASSWORD)
    path = tmp_path / "device.toml"
    path.write_text(f'[mqtt]\nusername = "{USER}"\npassword_file = "mqtt-password"\n')
    path.chmod(0o644)  # no password in it: may be readable
    secret.chmod(0o644)
    load_config(path)
    [warning] = caplog.records
    assert warning.getMessage() == f"{secret} (mqtt.password_file) is readable by others (mode 644): chmod 600 {secret}"
    caplog.clear()
    secret.chmod(0o640)  # shared with the service's group: fine
    load_config(path)
    secret.unlink()  # missing: reported when MQTT connects, not here
    load_config(path)
    assert caplog.records == []


@pytest.mark.parametrize("mqtt, match", [
    ({"password": "x"}, "without mqtt.username"),
    ({"password_file": "/etc/pw"}, "without mqtt.username"),
    ({"tls_ca_file": "/etc/ca.crt"}, "mqtt.tls_ca_file is set but mqtt.tls = false"),
    ({"tls": True, "tls_key_file": "/etc/k.pem"}, "mqtt.tls_key_file is set without mqtt.tls_cert_file"),
])
def test_inconsistent_login_settings_are_refused_at_load(mqtt, match):
    with pytest.raises(ConfigError, match=match):
        parse_config({"mqtt": mqtt}, base=Path("."))


def test_the_readmes_acl_confines_a_stolen_device_password_to_its_own_topics(tmp_path, pki):
    """The ACL the security page (docs/security.md) recommends (``pattern ... %u``), on a real mosquitto: logged in as one
    device, a client may publish that device's topics only; never a command, never another device's
    topics or Home Assistant configs."""
    import re

    import paho.mqtt.client as mqtt

    readme = (REPO / "docs" / "security.md").read_text(encoding="utf-8")
    acl = re.search(r"```\n(# mosquitto ACL \(acl_file\).*?)```", readme, re.S).group(1)
    assert "pattern write edge-asd/%u/events" in acl
    broker = AuthBroker(tmp_path / "broker", pki=pki, users={"pump07": PASSWORD, "operator": "op-" + PASSWORD}, acl=acl)
    broker.start()
    try:
        def publish_as(user: str, password: str, topics: list[str]) -> dict[str, bool]:
            acked: dict[int, bool] = {}
            client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=f"acl-{user}",
                                 protocol=mqtt.MQTTv5)
            client.username_pw_set(user, password)
            client.tls_set(ca_certs=str(pki.ca), certfile=str(pki.client_cert), keyfile=str(pki.client_key))
            client.on_publish = lambda c, u, mid, rc, props: acked.__setitem__(mid, not rc.is_failure)
            client.connect("127.0.0.1", broker.tls_port)
            client.loop_start()
            try:
                mids = {topic: client.publish(topic, "x", qos=1).mid for topic in topics}
                assert wait_until(lambda: all(m in acked for m in mids.values()), 10), "no PUBACK"
            finally:
                client.disconnect()
                client.loop_stop()
            return {topic: acked[mid] for topic, mid in mids.items()}

        allowed = publish_as("pump07", PASSWORD, [
            "edge-asd/pump07/events", "edge-asd/pump07/evidence", "homeassistant/sensor/pump07/score/config",
            "edge-asd/pump07/command", "edge-asd/pump08/events", "homeassistant/sensor/pump08/score/config",
            "edge-asd/pump08/command"])
        assert allowed == {"edge-asd/pump07/events": True, "edge-asd/pump07/evidence": True,
                           "homeassistant/sensor/pump07/score/config": True, "edge-asd/pump07/command": False,
                           "edge-asd/pump08/events": False, "homeassistant/sensor/pump08/score/config": False,
                           "edge-asd/pump08/command": False}
        assert publish_as("operator", "op-" + PASSWORD, ["edge-asd/pump07/command"]) == {"edge-asd/pump07/command": True}
    finally:
        broker.stop()
