"""``edge-asd status`` and the Prometheus endpoint against a real service (a subprocess playing wav
files in real time), the state file's verdicts (running, hung, killed, stopped) and the [health]
settings' errors."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.device_helpers import REPO, SEPARATING_THRESHOLD, copy_bundle, device_env, edge_asd, machine_clips, service_toml

STARTUP_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A bundle whose threshold was calibrated on site, and 6 s of normal machine sound."""
    from edge_asd.scoring.bundle import Threshold, update_threshold

    tmp = tmp_path_factory.mktemp("status")
    bundle = copy_bundle(tmp, threshold=None)
    update_threshold(bundle, Threshold(value=SEPARATING_THRESHOLD, method="gamma-tail-fit", source="device",
                                       created="2026-01-02T03:04:05+00:00"))
    machine_clips(tmp / "wavs", ["normal"] * 3)
    return tmp, bundle


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(cfg: Path) -> subprocess.Popen:
    """``edge-asd run`` playing the wav folder in real time, looping (it runs until stopped)."""
    return subprocess.Popen([sys.executable, "-m", "edge_asd", "run", "--config", str(cfg), "--realtime", "--loop"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=device_env(), cwd=REPO)


def wait_for_periods(proc: subprocess.Popen, state_file: Path, n: int) -> dict:
    """The state file's content once it shows at least ``n`` periods."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the service exited with {proc.returncode}: {proc.stderr.read()}")
        try:
            snap = json.loads(state_file.read_text())
            if snap["periods"] >= n:
                return snap
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.1)
    pytest.fail(f"{state_file} never showed {n} periods")


def status(cfg: Path, *args: str) -> tuple[int, dict | str]:
    result = edge_asd("status", "--config", cfg, *args, timeout=30)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, (json.loads(result.stdout) if "--json" in args else result.stdout)


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """The endpoint's samples as ``{(name, sorted labels): value}``."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def listening_tcp_ports(pid: int) -> set[int]:
    """TCP ports process ``pid`` listens on (its socket inodes matched against /proc/net/tcp*)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_status_and_metrics_of_a_running_service_hung_then_stopped(setup, tmp_path):
    from edge_asd.events.health import METRICS
    from edge_asd.events.discovery import MACHINE_STATES

    _, bundle = setup
    port = free_port()
    state_file = tmp_path / "run" / "state.json"
    cfg = service_toml(tmp_path, bundle=bundle, inputs=setup[0] / "wavs", db=tmp_path / "events.sqlite", extra=f"""
[health]
state_file = "{state_file}"
write_interval_s = 0.5
metrics_port = {port}
""")
    proc = start_service(cfg)
    try:
        wait_for_periods(proc, state_file, 2)
        code, first = status(cfg, "--json")
        assert code == 0, first
        assert first["verdict"] == "running" and first["state_file"] == str(state_file)
        s = first["snapshot"]
        assert s["pid"] == proc.pid and s["service"] == "running" and s["device_id"] == "test-dev"
        assert s["bundle"] == str(bundle) and s["model"] == "int8"
        assert s["threshold"] == SEPARATING_THRESHOLD and s["threshold_set_by"] == "calibrated"
        assert s["threshold_method"] == "gamma-tail-fit" and s["threshold_set_utc"] == "2026-01-02T03:04:05+00:00"
        assert s["state"] == "running" and s["anomaly"] is False  # normal machine sound, above the idle gate
        assert s["periods"] >= 2 and s["last_score"] < SEPARATING_THRESHOLD and s["last_period_utc"]
        assert s["windows"] > 0 and s["audio_s"] >= 2.0 and 0 < s["real_time_factor"] < 1
        assert s["dropped_blocks"] == 0 and s["input_overflows"] == 0 and s["queue_capacity"] == 100
        assert s["outbox"] is None and s["pending_in_memory"] == 0  # MQTT off
        assert s["metrics_url"] == f"http://127.0.0.1:{port}/metrics"
        assert 0 <= first["age_s"] < 1.5

        code, text = status(cfg)
        assert code == 0 and text.startswith("edge-asd status: running")
        for needle in (str(bundle), "calibrated", "state         running", "0 dropped blocks, 0 input overflows",
                       "0 of 100 blocks", "MQTT off"):
            assert needle in text, text

        time.sleep(1.5)
        code, second = status(cfg, "--json")
        assert code == 0
        assert second["snapshot"]["periods"] > s["periods"] and second["snapshot"]["uptime_s"] > s["uptime_s"]

        # The endpoint serves the snapshot of the state file: read the file around a scrape, and the
        # scrape equals whichever of the two it was taken from, figure for figure.
        assert port in listening_tcp_ports(proc.pid)
        for _ in range(20):
            before = json.loads(state_file.read_text())
            samples = scrape(port)
            after = json.loads(state_file.read_text())
            taken = samples[("edge_asd_last_update_timestamp_seconds", ())]
            match = next((snap for snap in (before, after) if snap["written_unix"] == taken), None)
            if match is not None:
                break
        else:
            pytest.fail("no scrape matched a state file snapshot")
        from edge_asd.events.health import HealthSnapshot

        snap = HealthSnapshot.from_dict(match)
        for m in METRICS:
            name = m.name + ("_total" if m.kind == "counter" else "")
            expected = m.value(snap)
            if expected is None:
                assert (name, ()) not in samples, name  # the outbox, with MQTT off
            else:
                assert samples[(name, ())] == pytest.approx(float(expected), rel=1e-12), name
        assert samples[("edge_asd_periods_total", ())] >= 2
        info = [labels for (name, labels) in samples if name == "edge_asd_info"]
        assert dict(info[0]) == {"device": "test-dev", "version": snap.version, "bundle": str(bundle), "model": "int8",
                                 "threshold_set_by": "calibrated"}
        assert {dict(labels)["state"]: v for (name, labels), v in samples.items() if name == "edge_asd_state"} == {
            state: float(state == "running") for state in MACHINE_STATES}

        # A hung service (stopped by SIGSTOP) stops writing: stale after 3 x 0.5 s, exit code 4.
        proc.send_signal(signal.SIGSTOP)
        try:
            time.sleep(2.0)
            code, hung = status(cfg, "--json")
        finally:
            proc.send_signal(signal.SIGCONT)
        assert code == 4 and hung["verdict"] == "stale" and "is hung" in hung["message"], hung
        deadline = time.monotonic() + 10
        while status(cfg)[0] != 0:
            assert time.monotonic() < deadline, "status did not recover after SIGCONT"
            time.sleep(0.2)

        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    code, stopped = status(cfg, "--json")
    assert code == 3 and stopped["verdict"] == "not_running", stopped
    assert stopped["snapshot"]["service"] == "stopped" and stopped["snapshot"]["periods"] >= second["snapshot"]["periods"]
    code, text = status(cfg)
    assert code == 3 and "not running: the service" in text and "stopped at" in text and "/metrics" not in text
    with pytest.raises(urllib.error.URLError) as refused:
        scrape(port)
    assert isinstance(refused.value.reason, ConnectionRefusedError)
    assert [p.name for p in state_file.parent.iterdir()] == ["state.json"]  # no temporary file left behind


def test_no_metrics_endpoint_unless_configured_and_a_killed_service_is_stale(setup, tmp_path):
    _, bundle = setup
    db = tmp_path / "events.sqlite"
    cfg = service_toml(tmp_path, bundle=bundle, inputs=setup[0] / "wavs", db=db)  # no [health]: the defaults
    state_file = tmp_path / "events.state.json"  # next to the store (no /run/edge-asd here)
    assert not Path("/run/edge-asd").exists()
    proc = start_service(cfg)
    try:
        wait_for_periods(proc, state_file, 1)
        code, running = status(cfg, "--json")
        assert code == 0 and running["state_file"] == str(state_file) and running["snapshot"]["metrics_url"] is None
        assert listening_tcp_ports(proc.pid) == set()
        assert os.stat(state_file).st_mode & 0o777 == 0o644
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    code, text = status(cfg)
    assert code == 4, text
    assert text.startswith("edge-asd status: stale: the service that wrote") and f"(pid {proc.pid}) is gone" in text
    code, by_path = status(cfg, "--state-file", str(state_file), "--json")
    assert code == 4 and by_path["verdict"] == "stale"


def test_status_without_a_state_file_or_with_a_broken_one(tmp_path):
    cfg = tmp_path / "device.toml"
    cfg.write_text(f'[store]\npath = "{tmp_path / "events.sqlite"}"\n')
    code, text = status(cfg)
    assert code == 3
    assert text.strip() == (f"edge-asd status: no running service wrote {tmp_path / 'events.state.json'}; "
                            "is edge-asd running? (systemctl status edge-asd)")
    code, out = status(cfg, "--json")
    assert code == 3 and out["verdict"] == "not_running" and out["snapshot"] is None

    (tmp_path / "events.state.json").write_text('{"schema": 1, "pid": 1')
    result = edge_asd("status", "--config", cfg)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith(f"error: {tmp_path / 'events.state.json'}: not an edge-asd state file")


def test_writer_reader_verdicts_and_state_file_location(tmp_path, caplog):
    from edge_asd.config import HealthConfig
    from edge_asd.events.health import BundleInfo, HealthWriter, read_status, resolve_state_file

    info = BundleInfo(path="/b", model="int8", sr=16000, threshold=2.5, threshold_set_by="enrolled",
                      threshold_method="gamma-tail-fit", threshold_set_utc="2026-01-01T00:00:00+00:00")
    path = tmp_path / "state.json"
    old_umask = os.umask(0o077)
    try:
        writer = HealthWriter(path, write_interval_s=1.0, device_id="d", bundle=info)
        writer.write()
    finally:
        os.umask(old_umask)
    assert os.stat(path).st_mode & 0o777 == 0o644  # readable by an operator whatever the service's umask
    snap = read_status(path).snapshot
    assert read_status(path).verdict == "running" and snap.state == "starting" and snap.threshold == 2.5
    assert snap.periods == 0 and snap.last_score is None and snap.threshold_set_by == "enrolled"

    # A state change is written at once and read back as the MQTT state topic would show it.
    class Event:
        kind, id, time_utc, details = "sensor_fault", "e1", "2026-01-01T00:00:01.000Z", {"reason": "silence"}

    writer.emit(Event())
    now = read_status(path)
    assert now.snapshot.state == "sensor_fault" and now.snapshot.state_reason == "silence"
    assert now.snapshot.state_since_utc == Event.time_utc

    # Old, from a live process: hung. From a pid that is gone: killed.
    assert read_status(path, now=now.snapshot.written_unix + 3.01).verdict == "stale"
    assert read_status(path, now=now.snapshot.written_unix + 2.99).verdict == "running"
    gone = read_status(path, pid_alive=lambda pid: False)
    assert gone.verdict == "stale" and gone.exit_code == 4 and "gone without a clean stop" in gone.message
    writer.close()
    assert read_status(path, pid_alive=lambda pid: False).exit_code == 3  # a clean stop is not a crash

    # Another layout or a value of the wrong type is refused by name, never half-read.
    from edge_asd.events.health import HealthError

    for change, needle in (({"schema": 2}, "state file schema 2, this edge-asd reads schema 1"),
                           ({"periods": "12"}, "periods: unexpected value '12'")):
        path.write_text(json.dumps({**now.snapshot.to_dict(), **change}))
        with pytest.raises(HealthError, match=needle):
            read_status(path)

    # The store backlog: events in the MQTT outbox until the broker acknowledges them.
    from edge_asd.events import Event as StoredEvent, SQLiteStore

    store = SQLiteStore(tmp_path / "outbox.sqlite", outbox=True)
    with_store = HealthWriter(tmp_path / "s2.json", write_interval_s=1.0, device_id="d", bundle=info, store=store)
    assert with_store.snapshot().outbox == 0
    for _ in range(2):
        store.emit(StoredEvent.create(device="d", kind="onset", stream_time_s=1.0, score=3.0, threshold=2.5))
    assert with_store.snapshot().outbox == 2 and with_store.snapshot().pending_in_memory == 0
    store.mark_delivered(store.next_outbox(1)[0][0])
    assert with_store.snapshot().outbox == 1
    store.close()

    # Location: explicit, else the systemd runtime folder if it exists, else next to the store.
    store = tmp_path / "data" / "events.sqlite"
    runtime = tmp_path / "run-edge-asd"
    assert resolve_state_file(HealthConfig(), store, runtime_dir=runtime) == tmp_path / "data" / "events.state.json"
    runtime.mkdir()
    assert resolve_state_file(HealthConfig(), store, runtime_dir=runtime) == runtime / "state.json"
    assert resolve_state_file(HealthConfig(state_file=tmp_path / "x.json"), store, runtime_dir=runtime) == tmp_path / "x.json"

    # A state file that cannot be written never stops the service: one error, not one per write.
    (tmp_path / "file").write_text("")
    blocked = HealthWriter(tmp_path / "file" / "state.json", write_interval_s=1.0, device_id="d", bundle=info)
    with caplog.at_level(logging.ERROR, logger="edge_asd.events.health"):
        assert blocked.write() is None and blocked.write() is None
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "health.state_file" in errors[0].getMessage()


@pytest.mark.parametrize("table, needle", [
    ("write_interval_s = 0", "health.write_interval_s must be 0.1 to 3600 seconds, got 0.0"),
    ("write_interval_s = nan", "health.write_interval_s must be 0.1 to 3600 seconds, got nan"),
    ("write_interval_s = \"5\"", "health.write_interval_s: expected a number, got str '5'"),
    ("metrics_port = 70000", "health.metrics_port must be 1..65535 (0 = no metrics endpoint), got 70000"),
    ("metrics_port = -1", "health.metrics_port must be 1..65535"),
    ("metrics_port = 9100.5", "health.metrics_port: expected an integer, got float 9100.5"),
    ("metrics_bind = \"my host\"", "health.metrics_bind must be an IP address (127.0.0.1, 0.0.0.0, ::1) or a host name, got 'my host'"),
    ("metrics_bind = \"\"", "health.metrics_bind must be an IP address"),
    ("state_file = 3", "health.state_file: expected Path, got int 3"),
    ("port = 9100", "health.port: unknown key (known: metrics_bind, metrics_port, state_file, write_interval_s)"),
])
def test_bad_health_settings_are_rejected_with_the_key(tmp_path, table, needle):
    from edge_asd.config import load_config
    from edge_asd.errors import ConfigError

    cfg = tmp_path / "device.toml"
    cfg.write_text(f"[health]\n{table}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(cfg)
    assert str(exc.value).startswith(f"{cfg}: ") and needle in str(exc.value), str(exc.value)


def test_metrics_port_in_use_fails_the_start_with_the_port_and_the_key(setup, tmp_path):
    _, bundle = setup
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = service_toml(tmp_path, bundle=bundle, inputs=setup[0] / "wavs", db=tmp_path / "events.sqlite",
                           extra=f"[health]\nmetrics_port = {port}\n")
        result = edge_asd("run", "--config", cfg, timeout=60)
    assert result.returncode == 78 and "Traceback" not in result.stderr  # a configuration error: no restart loop
    last = result.stderr.strip().splitlines()[-1]
    assert last == (f"error: health.metrics_port = {port}: port {port} is already in use on 127.0.0.1 (another edge-asd "
                    "or exporter?); choose another health.metrics_port or stop the other program"), result.stderr
    assert not (tmp_path / "events.state.json").exists()  # nothing written by a service that never started


def test_metrics_without_prometheus_client_name_the_extra(monkeypatch):
    from edge_asd.errors import ConfigError
    from edge_asd.events.health import BundleInfo, HealthWriter

    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # what an install without the extra sees
    info = BundleInfo(path="/b", model="int8", sr=16000, threshold=1.0, threshold_set_by="factory",
                      threshold_method="m", threshold_set_utc="t")
    writer = HealthWriter("/nonexistent/state.json", write_interval_s=1.0, device_id="d", bundle=info)
    with pytest.raises(ConfigError, match=r"prometheus_client package is not installed: pip install 'edge-asd\[metrics\]'"):
        writer.serve_metrics(port=free_port(), bind="127.0.0.1")
