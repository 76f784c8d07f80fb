"""Remote operations end to end: a real ``edge-asd run`` on an authenticated connection (TLS,
client certificate, password, ACL) to a real mosquitto takes signed commands from an operator, and
ignores unsigned and retained ones.

A reload of a corrupt bundle is refused and the old bundle keeps running; a verified one is
installed in the running bundle's place and the service switches to it without a restart; every
command is answered by a ``command`` event."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest

from edge_asd.scoring.bundle import Threshold, read_bundle, update_threshold
from tests.device_helpers import REPO, copy_bundle, device_env, machine_clips, service_toml
from tests.mqtt_auth_broker import MOSQUITTO_PASSWD, AuthBroker, make_pki
from tests.test_mqtt import MOSQUITTO
from tests.test_mqtt_discovery import Collector

pytest.importorskip("cryptography", reason="the test certificates are made with the cryptography package")
pytestmark = pytest.mark.skipif(MOSQUITTO is None or MOSQUITTO_PASSWD is None,
                                reason="mosquitto and mosquitto_passwd not installed (apt-get install mosquitto)")

DEVICE = "test-dev"
BASE = f"edge-asd/{DEVICE}"
USER, PASSWORD = "press-07", "c0rrect-h0rse-press07"
ACL = f"user {USER}\ntopic write {BASE}/#\ntopic read {BASE}/command\ntopic write homeassistant/#\n"


def _answers(collector: Collector) -> dict[str, dict]:
    """The ``command`` events received so far, by command id."""
    out = {}
    for payload, _ in collector.on(f"{BASE}/events"):
        event = json.loads(payload)
        if event["kind"] == "command":
            out[event["details"]["command_id"]] = event
    return out


def test_remote_reload_refuses_a_corrupt_bundle_and_installs_a_verified_one(tmp_path):
    pki = make_pki(tmp_path / "pki")
    broker = AuthBroker(tmp_path / "broker", pki=pki, users={USER: PASSWORD}, acl=ACL)
    broker.start()
    live = copy_bundle(tmp_path)
    wavs = tmp_path / "wavs"
    machine_clips(wavs, ["normal"] * 3)
    (tmp_path / "mqtt-password").write_text(PASSWORD)
    (tmp_path / "mqtt-password").chmod(0o600)
    from edge_asd.signing import generate_keypair, load_private_key, sign_bundle, sign_command

    private_path, public_path = generate_keypair(tmp_path / "keys")
    operator = load_private_key(private_path)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    cfg = service_toml(tmp_path, bundle=live, inputs=wavs, db=tmp_path / "events.db", extra=f"""
[mqtt]
enabled = true
host = "127.0.0.1"
port = {broker.tls_port}
username = "{USER}"
password_file = "{tmp_path / 'mqtt-password'}"
tls = true
tls_ca_file = "{pki.ca}"
tls_cert_file = "{pki.client_cert}"
tls_key_file = "{pki.client_key}"
remote_commands = true
command_key_file = "{public_path}"
incoming_dir = "{incoming}"
publish_timeout_s = 2.0
""")
    cfg.write_text(cfg.read_text().replace("realtime = false", "realtime = true\nloop = true"))
    corrupt = incoming / "corrupt"
    shutil.copytree(live, corrupt)
    sign_bundle(operator, corrupt, version=2)
    model = read_bundle(corrupt).model_path("int8")
    model.write_bytes(model.read_bytes()[:-4] + b"\0\0\0\0")
    good = incoming / "good"
    shutil.copytree(live, good)
    update_threshold(good, Threshold(value=11.25, method="test", source="test"))
    sign_bundle(operator, good, version=2)
    factory_json = (live / "bundle.json").read_bytes()

    def sign(payload: dict) -> str:
        return sign_command(operator, payload, device=DEVICE)

    # A retained command left on the broker (by anyone) must never run, at this start or any other.
    publisher = Collector(broker.port, f"{BASE}/never")
    publisher.client.publish(f"{BASE}/command", sign({"id": "retained-1", "command": "reload", "bundle": str(good)}),
                             qos=1, retain=True).wait_for_publish(5)

    collector = Collector(broker.port, f"{BASE}/#")  # the test's own, anonymous listener
    proc = subprocess.Popen([sys.executable, "-m", "edge_asd", "run", "--config", str(cfg), "--no-log-periods"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=device_env(), cwd=REPO)
    try:
        assert collector.wait(lambda: collector.last(f"{BASE}/status") == "online", 60), "service never came online"

        def command(payload: dict, timeout: float = 30.0) -> dict:
            collector.client.publish(f"{BASE}/command", sign(payload), qos=1).wait_for_publish(5)
            assert collector.wait(lambda: payload["id"] in _answers(collector), timeout), f"no answer to {payload}"
            return _answers(collector)[payload["id"]]["details"]

        # The subscription is made after the CONNACK: retry the first command until it is heard.
        for attempt in range(10):
            collector.client.publish(f"{BASE}/command", sign({"id": f"s{attempt}", "command": "status"}), qos=1)
            if collector.wait(lambda: f"s{attempt}" in _answers(collector), 3):
                status = _answers(collector)[f"s{attempt}"]["details"]
                break
        else:
            raise AssertionError("no answer to a status command")
        assert status["ok"] and status["status"]["threshold"] == 9.0 and status["status"]["bundle"] == str(live)
        assert "retained-1" not in _answers(collector) and read_bundle(live).threshold.value == 9.0
        # The review's attack: an unsigned calibrate from an anonymous client. Refused, nothing changes.
        collector.client.publish(f"{BASE}/command", json.dumps({"id": "evil", "command": "calibrate", "seconds": 20,
                                                               "false_alarms_per_day": 1e-300}), qos=1).wait_for_publish(5)
        assert collector.wait(lambda: "?" in _answers(collector), 30), "no answer to the unsigned command"
        assert not _answers(collector)["?"]["details"]["ok"] and "unsigned" in _answers(collector)["?"]["details"]["message"]

        bad = command({"id": "r-bad", "command": "reload", "bundle": str(corrupt)})
        assert not bad["ok"] and "does not match the digest" in bad["message"] and "nothing changed" in bad["message"]
        assert (live / "bundle.json").read_bytes() == factory_json
        assert command({"id": "s-after-bad", "command": "status"})["status"]["threshold"] == 9.0

        nonsense = command({"id": "x1", "command": "format-disk"})
        assert not nonsense["ok"] and "must be one of" in nonsense["message"]

        done = command({"id": "r-good", "command": "reload", "bundle": str(good)})
        assert done["ok"], done["message"]
        assert read_bundle(live).threshold.value == 11.25
        assert read_bundle(live.with_name("bundle.previous")).threshold.value == 9.0
        # Detection goes on with the new bundle: its periods keep coming (1 s each).
        for attempt in range(20):
            after = command({"id": f"s-after-good-{attempt}", "command": "status"})["status"]
            assert after["threshold"] == 11.25 and after["bundle"] == str(live)
            if after["periods"] > status["status"]["periods"] + 1:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"no period after the reload: {after}")
        assert proc.poll() is None, "the service stopped"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        collector.close()
        publisher.close()
        broker.stop()
    assert proc.returncode == 0, err[-3000:]
    assert PASSWORD not in err and PASSWORD not in out
