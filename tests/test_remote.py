"""Remote operations without the broker: command parsing, the folder exchange, and
:class:`edge_asd.remote.RemoteOperations` fed blocks of real audio with a real bundle.

The path over a real, authenticating mosquitto into a running service is in
``tests/test_remote_mqtt.py``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from edge_asd.audio import read_wav
from edge_asd.bundle import read_bundle
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
    assert parse_command(b'{"id": "x", "command": "reload", "bundle": "/b/v7"}').bundle == Path("/b/v7")
    assert parse_command(b'{"id": "x", "command": "enroll", "seconds": 60, "selective": true}').selective
    with pytest.raises(CommandError, match='"selective"'):
        parse_command(b'{"id": "x", "command": "enroll", "seconds": 60, "selective": "yes"}')


def test_remote_commands_need_an_authenticated_connection():
    from edge_asd.config import MqttConfig

    with pytest.raises(ParameterError, match="authenticated broker connection"):
        MqttConfig(enabled=True, remote_commands=True)
    assert MqttConfig(enabled=True, remote_commands=True, username="det", password="pw").remote_commands
    assert MqttConfig(enabled=True, remote_commands=True, tls=True, tls_cert_file=Path("c.pem")).remote_commands


def test_exchange_dirs_swaps_two_folders(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "who").write_text("a")
    (b / "who").write_text("b")
    exchange_dirs(a, b)
    assert (a / "who").read_text() == "b" and (b / "who").read_text() == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


@pytest.fixture()
def running(tmp_path):
    """A writable bundle at the path the configuration runs, its config, and normal audio blocks."""
    live = copy_bundle(tmp_path)
    clips = machine_clips(tmp_path / "audio", ["normal"] * 8, duration_s=2.0)
    config = load_config(service_toml(tmp_path, bundle=live, inputs=tmp_path / "audio", db=tmp_path / "events.db"))
    audio = np.concatenate([read_wav(p)[0] for p in clips]).astype(np.float32)
    return live, config, audio


def _ops(config, *, status=lambda: {"periods": 3}):
    return RemoteOperations(config, sr=SR, n_channels=1, status=status)


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


def test_status_command_answers_with_the_snapshot(running):
    _, config, _ = running
    ops = _ops(config)
    ops.submit(b'{"id": "s1", "command": "status"}')
    [outcome] = _wait(ops)
    assert outcome.ok and outcome.command_id == "s1"
    assert outcome.event_details()["status"] == {"periods": 3}


def test_a_malformed_command_is_answered(running):
    _, config, _ = running
    ops = _ops(config)
    ops.submit(b'{"id": "bad-1", "command": "rm"}')
    [outcome] = _wait(ops)
    assert not outcome.ok and outcome.command_id == "bad-1" and "must be one of" in outcome.message


def test_reload_of_a_corrupt_bundle_is_refused_and_nothing_changes(running, tmp_path):
    live, config, _ = running
    before = (live / "bundle.json").read_bytes()
    incoming = tmp_path / "incoming"
    import shutil

    shutil.copytree(live, incoming)
    model = read_bundle(incoming).model_path("int8")
    model.write_bytes(model.read_bytes()[:-10] + b"0123456789")  # same size, other content
    ops = _ops(config)
    ops.submit(json.dumps({"id": "r1", "command": "reload", "bundle": str(incoming)}))
    [outcome] = _wait(ops)
    assert not outcome.ok and outcome.detector is None
    assert "does not match the digest" in outcome.message and str(incoming) in outcome.message
    assert "nothing changed" in outcome.message
    assert (live / "bundle.json").read_bytes() == before
    assert not live.with_name(live.name + ".previous").exists()


def test_reload_installs_a_verified_bundle_atomically_and_keeps_the_previous(running, tmp_path):
    live, config, _ = running
    import shutil

    from edge_asd.bundle import Threshold, update_threshold

    incoming = tmp_path / "incoming"
    shutil.copytree(live, incoming)
    update_threshold(incoming, Threshold(value=7.5, method="test", source="test"))
    ops = _ops(config)
    ops.submit(json.dumps({"id": "r2", "command": "reload", "bundle": str(incoming)}))
    [outcome] = _wait(ops)
    assert outcome.ok, outcome.message
    assert outcome.detector.threshold_ == 7.5 and outcome.detector.bundle.path == live
    assert read_bundle(live).threshold.value == 7.5
    previous = live.with_name(live.name + ".previous")
    assert read_bundle(previous).threshold.value != 7.5
    assert not incoming.exists()  # moved to .previous


def test_calibrate_records_from_the_stream_and_installs_the_new_threshold(running):
    live, config, audio = running
    factory = read_bundle(live).threshold
    ops = _ops(config)
    ops.submit(b'{"id": "c1", "command": "calibrate", "seconds": 12}')
    ops.submit(b'{"id": "c2", "command": "status"}')
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
    # The recording and the staging copy are gone; the previous bundle is kept.
    assert [p.name for p in live.parent.iterdir() if p.name.startswith(".")] == []
    assert read_bundle(live.with_name(live.name + ".previous")).threshold.value == factory.value


def test_enroll_with_too_little_audio_is_refused_and_nothing_changes(running):
    live, config, audio = running
    before = (live / "bundle.json").read_bytes()
    ops = _ops(config)
    ops.submit(b'{"id": "e1", "command": "enroll", "seconds": 3}')
    [outcome] = _wait(ops, blocks=_blocks(audio))
    assert not outcome.ok and "too little" in outcome.message
    assert (live / "bundle.json").read_bytes() == before
    assert [p.name for p in live.parent.iterdir() if p.name.startswith(".")] == []
