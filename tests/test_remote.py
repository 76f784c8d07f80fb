"""Remote operations without the broker: command parsing, signatures, the folder exchange, and
:class:`edge_asd.remote.RemoteOperations` fed blocks of real audio with a real bundle.

The path over a real, authenticating mosquitto into a running service is in
``tests/test_remote_mqtt.py``."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from edge_asd.audio import read_wav
from edge_asd.scoring.bundle import read_bundle
from edge_asd.config import load_config
from edge_asd.errors import ParameterError
from edge_asd.remote import CommandError, RemoteOperations, exchange_dirs, parse_command
from tests.device_helpers import SR, copy_bundle, machine_clips, service_toml


@pytest.mark.parametrize("payload, message", [
    (b"not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"command": "status"}', '"id"'),
    (b'{"id": "a", "command": "format-disk"}', "must be one of"),
    (b'{"id": "a", "command": "calibrate"}', '"seconds"'),
    (b'{"id": "a", "command": "enroll", "seconds": -5}', '"seconds"'),
    (b'{"id": "a", "command": "enroll", "seconds": 1e9}', '"seconds"'),
    (b'{"id": "a", "command": "enroll", "seconds": true}', '"seconds"'),
    (b'{"id": "a", "command": "calibrate", "seconds": 60, "false_alarms_per_day": 0}', "false_alarms_per_day"),
    (b'{"id": "a", "command": "calibrate", "seconds": 60, "false_alarms_per_day": 1e-300}', "between 0.1 and 168"),
    (b'{"id": "a", "command": "calibrate", "seconds": 60, "false_alarms_per_week": 1000}', "between 0.1 and 168"),
    (b'{"id": "a", "command": "calibrate", "seconds": 60, "false_alarms_per_week": 1, "false_alarms_per_day": 1}', "not both"),
    (b"[" * 3000, "not JSON"),
    (b'{"id": "a", "command": "status", "seconds": 5}', "takes no ['seconds']"),
    (b'{"id": "a", "command": "reload", "bundle": 3}', '"bundle"'),
    (b'{"id": "a", "command": "status", "pad": "' + b"x" * 5000 + b'"}', "longer than"),
])
def test_malformed_commands_are_refused_with_the_reason(payload, message):
    with pytest.raises(CommandError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_command(payload)


def test_commands_parse_to_their_fields():
    c = parse_command('{"id": "op-1", "command": "enroll", "seconds": 30, "false_alarms_per_day": 0.5}')
    assert (c.id, c.name, c.seconds, c.false_alarms_per_day, c.bundle) == ("op-1", "enroll", 30.0, 0.5, None)
    assert parse_command({"id": "w", "command": "calibrate", "seconds": 9, "false_alarms_per_week": 2}).false_alarms_per_day == pytest.approx(2 / 7)
    assert parse_command({"id": "d", "command": "calibrate", "seconds": 9}).false_alarms_per_day == pytest.approx(1 / 7)
    assert parse_command(b'{"id": "x", "command": "reload", "bundle": "/b/v7"}').bundle == Path("/b/v7")
    assert parse_command(b'{"id": "x", "command": "enroll", "seconds": 60, "selective": true}').selective
    with pytest.raises(CommandError, match='"selective"'):
        parse_command(b'{"id": "x", "command": "enroll", "seconds": 60, "selective": "yes"}')


def test_remote_commands_need_tls_a_login_and_the_operators_key():
    from edge_asd.config import MqttConfig

    key = {"command_key_file": Path("/etc/edge-asd/command_key.pub")}
    with pytest.raises(ParameterError, match="needs mqtt.tls = true"):
        MqttConfig(enabled=True, remote_commands=True, username="det", password="pw", **key)
    with pytest.raises(ParameterError, match="authenticated broker connection"):
        MqttConfig(enabled=True, remote_commands=True, tls=True, **key)
    with pytest.raises(ParameterError, match="authenticated broker connection"):  # a username alone is no login
        MqttConfig(enabled=True, remote_commands=True, tls=True, username="det", **key)
    with pytest.raises(ParameterError, match="needs mqtt.command_key_file"):
        MqttConfig(enabled=True, remote_commands=True, tls=True, username="det", password="pw")
    assert MqttConfig(enabled=True, remote_commands=True, tls=True, username="det", password="pw", **key).remote_commands
    assert MqttConfig(enabled=True, remote_commands=True, tls=True, tls_cert_file=Path("c.pem"), **key).remote_commands


def test_exchange_dirs_swaps_two_folders_or_changes_nothing(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "who").write_text("a")
    (b / "who").write_text("b")
    exchange_dirs(a, b)
    assert (a / "who").read_text() == "b" and (b / "who").read_text() == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
    # A folder inside the other cannot be exchanged (EINVAL): refused, no half-done renames left behind.
    (a / "members" / "1").mkdir(parents=True)
    with pytest.raises(CommandError, match="nothing changed"):
        exchange_dirs(a / "members" / "1", a)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"] and (a / "members" / "1").is_dir()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """The operator's key pair (private key object, public key object, public key file)."""
    from edge_asd.signing import generate_keypair, load_private_key, load_public_key

    private, public = generate_keypair(tmp_path_factory.mktemp("keys"))
    return load_private_key(private), load_public_key(public), public


def signed(keys, command: dict, *, device: str = "test-dev", now: float | None = None) -> bytes:
    from edge_asd.signing import sign_command

    return sign_command(keys[0], command, device=device, now=now).encode()


@pytest.fixture()
def running(tmp_path):
    """A writable bundle at the path the configuration runs, its config, and normal audio blocks."""
    live = copy_bundle(tmp_path)
    clips = machine_clips(tmp_path / "audio", ["normal"] * 8, duration_s=2.0)
    config = load_config(service_toml(tmp_path, bundle=live, inputs=tmp_path / "audio", db=tmp_path / "events.db"))
    audio = np.concatenate([read_wav(p)[0] for p in clips]).astype(np.float32)
    return live, config, audio


def _ops(config, keys, *, status=lambda: {"periods": 3}, nonces=None):
    return RemoteOperations(config, sr=SR, n_channels=1, status=status, public_key=keys[1], nonces=nonces)


def _wait(ops, *, timeout=60.0, blocks=None):
    """Poll until an outcome arrives, feeding ``blocks`` (an iterator of audio blocks) meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if blocks is not None:
            block = next(blocks, None)
            if block is not None:
                ops.on_block(block)
        outcomes = ops.poll()
        if outcomes:
            return outcomes
        time.sleep(0.01)
    raise AssertionError("no outcome")


def _blocks(audio, size=1600):
    for _ in range(10):  # loop the audio: a recording may ask for more than one pass
        for start in range(0, audio.size, size):
            yield audio[start : start + size, None]


def test_status_command_answers_with_the_snapshot(running, keys):
    _, config, _ = running
    ops = _ops(config, keys)
    ops.submit(signed(keys, {"id": "s1", "command": "status"}))
    [outcome] = _wait(ops)
    assert outcome.ok and outcome.command_id == "s1"
    assert outcome.event_details()["status"] == {"periods": 3}


def test_a_malformed_signed_command_is_answered(running, keys):
    _, config, _ = running
    ops = _ops(config, keys)
    ops.submit(signed(keys, {"id": "bad-1", "command": "rm"}))
    [outcome] = _wait(ops)
    assert not outcome.ok and outcome.command_id == "bad-1" and "must be one of" in outcome.message


def _incoming(config, tmp_path, live, keys, *, version: int, threshold: float | None = None, name: str = "v"):
    """A copy of ``live`` in the configured incoming folder, signed as ``version``."""
    import shutil

    from edge_asd.scoring.bundle import Threshold, update_threshold
    from edge_asd.signing import sign_bundle

    folder = config.mqtt.incoming_dir / f"{name}{version}"
    shutil.copytree(live, folder)
    if threshold is not None:
        update_threshold(folder, Threshold(value=threshold, method="test", source="test"))
    sign_bundle(keys[0], folder, version=version)
    return folder


@pytest.fixture()
def with_incoming(running, tmp_path):
    import dataclasses

    live, config, audio = running
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    return live, dataclasses.replace(config, mqtt=dataclasses.replace(config.mqtt, incoming_dir=incoming)), audio


def test_reload_of_a_corrupt_bundle_is_refused_and_nothing_changes(with_incoming, keys, tmp_path):
    live, config, _ = with_incoming
    before = (live / "bundle.json").read_bytes()
    incoming = _incoming(config, tmp_path, live, keys, version=2)
    model = read_bundle(incoming, verify_files=False).model_path("int8")
    model.write_bytes(model.read_bytes()[:-10] + b"0123456789")  # same size, other content
    ops = _ops(config, keys)
    ops.submit(signed(keys, {"id": "r1", "command": "reload", "bundle": str(incoming)}))
    [outcome] = _wait(ops)
    assert not outcome.ok and outcome.detector is None
    assert "does not match the digest" in outcome.message and str(incoming) in outcome.message
    assert "nothing changed" in outcome.message
    assert (live / "bundle.json").read_bytes() == before
    assert not live.with_name(live.name + ".previous").exists()


def test_reload_installs_a_signed_newer_bundle_atomically_and_keeps_the_previous(with_incoming, keys, tmp_path):
    live, config, _ = with_incoming
    incoming = _incoming(config, tmp_path, live, keys, version=3, threshold=7.5)
    ops = _ops(config, keys)
    ops.submit(signed(keys, {"id": "r2", "command": "reload", "bundle": str(incoming)}))
    [outcome] = _wait(ops)
    assert outcome.ok, outcome.message
    assert outcome.detector.threshold_ == 7.5 and outcome.detector.bundle.path == live
    assert read_bundle(live).threshold.value == 7.5
    previous = live.with_name(live.name + ".previous")
    assert read_bundle(previous).threshold.value != 7.5
    assert not incoming.exists()  # moved to .previous
    # Version 3 runs now: the same release again, an older one, or the previous bundle are refused.
    older = _incoming(config, tmp_path, live, keys, version=2, name="old")
    for i, (target, needle) in enumerate([(older, "not newer than the running bundle's 3"),
                                          (previous, "only bundles directly in"),
                                          (config.mqtt.incoming_dir / ".." / "bundle", "only bundles directly in")]):
        ops.submit(signed(keys, {"id": f"r-no-{i}", "command": "reload", "bundle": str(target)}))
        [refused] = _wait(ops)
        assert not refused.ok and needle in refused.message, refused.message
    assert read_bundle(live).threshold.value == 7.5


def test_reload_refuses_unsigned_and_tampered_bundles(with_incoming, keys, tmp_path):
    from edge_asd.scoring.bundle import Threshold, update_threshold

    live, config, _ = with_incoming
    before = (live / "bundle.json").read_bytes()
    unsigned = _incoming(config, tmp_path, live, keys, version=2, name="unsigned")
    (unsigned / "bundle.sig").unlink()
    tampered = _incoming(config, tmp_path, live, keys, version=2, name="tampered")
    update_threshold(tampered, Threshold(value=1e5, method="test", source="test"))  # after signing
    ops = _ops(config, keys)
    for cid, target, needle in (("u", unsigned, "unsigned bundle"), ("t", tampered, "changed after it was signed")):
        ops.submit(signed(keys, {"id": cid, "command": "reload", "bundle": str(target)}))
        [outcome] = _wait(ops)
        assert not outcome.ok and needle in outcome.message, outcome.message
    assert (live / "bundle.json").read_bytes() == before
    # Without an incoming folder a reload only re-reads the running bundle.
    plain = _ops(running_config := config.__class__(**{**config.__dict__, "mqtt": config.mqtt.__class__(
        **{**config.mqtt.__dict__, "incoming_dir": None})}), keys)
    plain.submit(signed(keys, {"id": "n", "command": "reload", "bundle": str(unsigned)}))
    [outcome] = _wait(plain)
    assert not outcome.ok and "needs mqtt.incoming_dir" in outcome.message
    assert running_config.mqtt.incoming_dir is None


def test_incoming_folder_inside_or_above_the_bundle_is_refused(running, keys):
    import dataclasses

    from edge_asd.errors import ConfigError

    live, config, _ = running
    for folder in (live / "incoming", live.parent):
        bad = dataclasses.replace(config, mqtt=dataclasses.replace(config.mqtt, incoming_dir=folder))
        with pytest.raises(ConfigError, match="neither inside nor above"):
            _ops(bad, keys)


def test_unsigned_forged_foreign_stale_and_replayed_commands_are_refused(running, keys, tmp_path):
    from edge_asd.signing import generate_keypair, load_private_key
    from edge_asd.events import SQLiteStore

    _, config, _ = running
    store = SQLiteStore(tmp_path / "nonces.sqlite")
    ops = _ops(config, keys, nonces=store)
    stranger = load_private_key(generate_keypair(tmp_path / "stranger")[0])
    cases = [
        (b'{"id": "u1", "command": "calibrate", "seconds": 20, "false_alarms_per_day": 1e-300}', "unsigned"),
        (signed((stranger,), {"id": "f1", "command": "status"}), "does not verify"),
        (signed(keys, {"id": "o1", "command": "status"}, device="pump08"), "signed for device 'pump08'"),
        (signed(keys, {"id": "old", "command": "status"}, now=time.time() - 3600), "s ago"),
        (b"{" * 20 + b"x" * 5000, "longer than 4096"),
    ]
    for payload, needle in cases:
        ops._last_refusal = -1e9  # one refusal event per interval: look at each
        ops.submit(payload)
        [outcome] = _wait(ops)
        assert not outcome.ok and outcome.command_id == "?" and needle in outcome.message, (needle, outcome.message)
    # A stranger flooding the topic gets one answer per interval, not one per message.
    ops._last_refusal = -1e9
    for _ in range(20):
        ops.submit(b"garbage")
    assert len(ops.poll()) == 1 and ops.poll() == []
    # A replay of a valid command is refused, also by a new process reading the same store.
    message = signed(keys, {"id": "s-once", "command": "status"})
    ops.submit(message)
    [first] = _wait(ops)
    assert first.ok
    ops.submit(message)
    [again] = _wait(ops)
    assert not again.ok and "replay" in again.message
    restarted = _ops(config, keys, nonces=store)
    restarted.submit(message)
    [after_restart] = _wait(restarted)
    assert not after_restart.ok and "replay" in after_restart.message
    store.close()


def test_retained_and_huge_commands_are_dropped_before_parsing(running, keys, caplog):
    import logging

    _, config, _ = running
    ops = _ops(config, keys)
    with caplog.at_level(logging.WARNING, logger="edge_asd.remote"):
        ops.submit(signed(keys, {"id": "ret", "command": "status"}), retained=True)
    assert ops.poll() == [] and "retained message" in caplog.text
    huge = b'{"id": "' + b"x" * (32 * 1024 * 1024) + b'"}'
    ops.submit(huge)
    [outcome] = _wait(ops)
    assert not outcome.ok and outcome.command_id == "?" and f"{len(huge)} bytes is longer than 4096" in outcome.message


def test_calibrate_records_from_the_stream_and_installs_the_new_threshold(running, keys):
    live, config, audio = running
    factory = read_bundle(live).threshold
    ops = _ops(config, keys)
    ops.submit(signed(keys, {"id": "c1", "command": "calibrate", "seconds": 12}))
    ops.submit(signed(keys, {"id": "c2", "command": "status"}))
    blocks = _blocks(audio)
    first = _wait(ops, blocks=blocks)
    outcomes = first if len(first) > 1 or first[0].command_id == "c1" else first + _wait(ops, blocks=blocks)
    by_id = {o.command_id: o for o in outcomes}
    assert not by_id["c2"].ok and "busy with command c1" in by_id["c2"].message
    if "c1" not in by_id:
        by_id.update({o.command_id: o for o in _wait(ops, blocks=blocks)})
    done = by_id["c1"]
    assert done.ok, done.message
    new = read_bundle(live).threshold
    assert new.source == "device" and new.value != factory.value
    assert new.history[-1]["value"] == factory.value
    assert done.detector.threshold_ == new.value and done.details["previous_threshold"] == factory.value
    # The recording, the staging copy and the copy of the running bundle are gone; the previous bundle is kept.
    assert [p.name for p in live.parent.iterdir() if p.name.startswith(".")] == []
    assert read_bundle(live.with_name(live.name + ".previous")).threshold.value == factory.value


def test_a_remote_calibrate_may_not_move_the_threshold_far(running, keys):
    from edge_asd.scoring.bundle import Threshold, update_threshold

    live, config, audio = running
    update_threshold(live, Threshold(value=1.0, method="test", source="test"))  # far below what 12 s give (about 19)
    before = (live / "bundle.json").read_bytes()
    ops = _ops(config, keys)
    ops.submit(signed(keys, {"id": "c-far", "command": "calibrate", "seconds": 12}))
    [outcome] = _wait(ops, blocks=_blocks(audio))
    assert not outcome.ok and "is more than 3 away from the running 1: a remote command may not" in outcome.message
    assert (live / "bundle.json").read_bytes() == before
    assert [p.name for p in live.parent.iterdir() if p.name.startswith(".")] == []


def test_enroll_with_too_little_audio_is_refused_and_nothing_changes(running, keys):
    live, config, audio = running
    before = (live / "bundle.json").read_bytes()
    ops = _ops(config, keys)
    ops.submit(signed(keys, {"id": "e1", "command": "enroll", "seconds": 3}))
    [outcome] = _wait(ops, blocks=_blocks(audio))
    assert not outcome.ok and "too little" in outcome.message
    assert (live / "bundle.json").read_bytes() == before
    assert [p.name for p in live.parent.iterdir() if p.name.startswith(".")] == []


def test_a_full_disk_while_keeping_the_previous_bundle_changes_nothing(running, keys, monkeypatch):
    """ENOSPC while copying the running bundle aside: the command fails before the exchange."""
    import errno
    import shutil

    import edge_asd.remote as remote

    live, config, audio = running
    before = (live / "bundle.json").read_bytes()
    real_copytree = shutil.copytree

    def copytree(src, dst, *args, **kwargs):
        if ".previous-" in str(dst):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_copytree(src, dst, *args, **kwargs)

    monkeypatch.setattr(remote.shutil, "copytree", copytree)
    ops = _ops(config, keys)
    ops.submit(signed(keys, {"id": "c-full", "command": "calibrate", "seconds": 12}))
    [outcome] = _wait(ops, blocks=_blocks(audio))
    assert not outcome.ok and "No space left on device" in outcome.message and "nothing changed" in outcome.message
    assert (live / "bundle.json").read_bytes() == before
    assert not live.with_name(live.name + ".previous").exists()
