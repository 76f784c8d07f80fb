"""The service as a real subprocess on folders of wav files: events in stdout and SQLite,
streaming == offline scores, sd_notify, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.device_helpers import REPO, SR, copy_bundle, device_env, edge_asd, machine_clips, service_toml

PATTERN = ["normal"] * 4 + ["anomaly"] * 3 + ["normal"] * 4
"""2 s clips: 8 s normal, 6 s anomalous, 8 s normal."""


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("service")
    bundle = copy_bundle(tmp)
    clips = machine_clips(tmp / "wavs", PATTERN)
    return tmp, bundle, clips


def test_service_on_folder_raises_onset_then_back_to_normal(setup):
    tmp, bundle, _ = setup
    db = tmp / "run1" / "events.sqlite"
    cfg = service_toml(tmp, bundle=bundle, inputs=tmp / "wavs", db=db)
    result = edge_asd("run", "--config", cfg)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = json_lines(result.stdout)
    events = [r for r in lines if r["type"] == "event"]
    periods = [r for r in lines if r["type"] == "period"]
    assert [e["kind"] for e in events] == ["onset", "back_to_normal"]
    onset, recovery = events
    assert 8.0 <= onset["stream_time_s"] <= 11.0, onset  # the anomaly starts at 8 s; 2 of 3 periods
    assert 14.0 <= recovery["stream_time_s"] <= 17.0, recovery  # it ends at 14 s; 2 normal periods
    assert onset["device"] == "test-dev" and onset["score"] > onset["threshold"] == 3.0
    assert len(periods) >= 20 and all(p["n_windows"] > 0 for p in periods)
    anomalous = [p["anomalous"] for p in periods]
    assert not any(anomalous[:7]) and any(anomalous[8:14]) and not any(anomalous[16:])
    rows = sqlite3.connect(db).execute("SELECT id, kind, payload FROM events ORDER BY seq").fetchall()
    assert [(r[0], r[1]) for r in rows] == [(e["id"], e["kind"]) for e in events]
    assert json.loads(rows[0][2])["score"] == onset["score"]
    assert "real-time factor" in result.stderr and "dropped 0 blocks" in result.stderr

    # The store survives restarts: a second run appends, it does not replace.
    again = edge_asd("run", "--config", cfg, "--input", tmp / "wavs" / "000_normal.wav")
    assert again.returncode == 0, again.stderr
    assert len(sqlite3.connect(db).execute("SELECT id FROM events").fetchall()) == 2


def test_streaming_window_scores_equal_offline_scores(setup):
    from edge_asd.audio import read_wav
    from edge_asd.detector import Detector
    from edge_asd.frontend import compute_features
    from edge_asd.service import StreamingScorer

    _, bundle, clips = setup
    detector = Detector.from_bundle(bundle)
    samples, _ = read_wav(clips[4])
    offline = detector.score_windows(compute_features(samples, detector.config))
    for block in (1, 777, 1600, samples.shape[0]):
        scorer = StreamingScorer(detector, n_channels=1)
        got = []
        for start in range(0, samples.shape[0], block):
            got += scorer.push(samples[start : start + block])
        got += scorer.flush()
        np.testing.assert_allclose([s for _, s in got], offline, rtol=1e-6, atol=1e-7)
        times = [t for t, _ in got]
        assert times == sorted(times) and times[0] == pytest.approx(15 * 256 / SR)
    assert detector.score_clip(samples, sr=SR) == pytest.approx(float(np.mean(offline)))


def test_sd_notify_ready_watchdog_and_sigterm_finishes_the_period(setup, tmp_path):
    _, bundle, _ = setup
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(30)
    env = device_env()
    env.update(NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="200000")
    db = tmp_path / "events.sqlite"
    cfg = service_toml(tmp_path, bundle=bundle, inputs=setup[0] / "wavs", db=db)
    proc = subprocess.Popen([sys.executable, "-m", "edge_asd", "run", "--config", str(cfg), "--realtime", "--loop"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        messages = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("READY=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
        assert any("READY=1" in m for m in messages), messages
        t_ready = time.monotonic()
        while time.monotonic() - t_ready < 2.5:
            messages.append(sock.recv(4096).decode())
        assert sum(m == "WATCHDOG=1" for m in messages) >= 5  # every 0.1 s (half of WATCHDOG_USEC)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        while True:
            try:
                sock.settimeout(0.5)
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    assert proc.returncode == 0, err
    assert "STOPPING=1" in messages and "Traceback" not in err
    periods = [r for r in json_lines(out) if r["type"] == "period"]
    # About 2.5 s of real-time audio: two whole periods plus the partial one closed at SIGTERM.
    assert 2 <= len(periods) <= 5 and periods[-1]["n_windows"] >= 1
    assert "stop requested" in err


def test_realtime_source_drops_are_counted_not_hidden(setup):
    """A processing loop slower than capture must drop (and count) blocks rather than block capture."""
    from edge_asd.config import Config, InputConfig
    from edge_asd.detector import Detector
    from edge_asd.service import Notifier, Service

    _, bundle, _ = setup

    class BurstSource:
        sr, n_channels, realtime, overflows = SR, 1, True, 0

        def blocks(self):
            for _ in range(50):
                yield np.zeros((1600, 1), np.float32)

        def stop(self):
            pass

        def close(self):
            pass

    class Slow:
        def __init__(self):
            self.lines = []

        def write_line(self, line):
            self.lines.append(line)

        def emit(self, event):
            pass

        def close(self):
            pass

    config = Config(input=InputConfig(kind="microphone", queue_s=0.2, block_s=0.1))
    detector = Detector.from_bundle(bundle)
    service = Service(config, detector=detector, source=BurstSource(), sinks=[], stdout=Slow(), notifier=Notifier({}))
    original = service.scorer.push

    def slow_push(block):
        time.sleep(0.01)
        return original(block)

    service.scorer.push = slow_push
    assert service.run() == 0
    assert service.stats.dropped_blocks > 0
    assert service.stats.blocks + service.stats.dropped_blocks == 50
