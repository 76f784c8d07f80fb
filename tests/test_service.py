"""The service as a real subprocess on folders of wav files: events in stdout and SQLite,
streaming == offline scores, sd_notify, SIGTERM."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.device_helpers import REPO, SEPARATING_THRESHOLD, SR, copy_bundle, device_env, edge_asd, edge_asd_with_source, machine_clips, service_toml

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
    assert onset["device"] == "test-dev" and onset["score"] > onset["threshold"] == SEPARATING_THRESHOLD
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
    from edge_asd.scoring.detector import Detector
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
    assert 2 <= len(periods) <= 5
    hop_s = 8 * 256 / SR  # the tiny bundle's window hop: 8 frames of 16 ms
    t0 = periods[0]["start_s"]  # the first window's time; window k is at t0 + k * hop_s
    for p in periods:
        # Every window from the period's start to its last window, none missing, none twice.
        first_k = math.ceil((p["start_s"] - t0) / hop_s - 1e-6)
        last_k = round((p["end_s"] - t0) / hop_s)
        assert p["n_windows"] == last_k - first_k + 1 >= 1, p
    for before, after in zip(periods, periods[1:]):
        assert after["start_s"] == pytest.approx(before["start_s"] + 1.0)  # the 1 s grid
    partial = periods[-1]
    assert partial["end_s"] - partial["start_s"] < 1.0
    assert partial["decided"] == (partial["end_s"] - partial["start_s"] >= 0.5)
    assert "stop requested" in err


def test_realtime_source_drops_are_counted_not_hidden(setup):
    """A processing loop slower than capture must drop (and count) blocks rather than block capture."""
    from edge_asd.config import Config, InputConfig
    from edge_asd.scoring.detector import Detector
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


def set_debounce(cfg, *, k: int, n: int, m: int) -> None:
    """Rewrite the onset k-of-n and recovery m of a :func:`service_toml` file."""
    text = cfg.read_text().replace("onset_k = 2", f"onset_k = {k}").replace("onset_n = 3", f"onset_n = {n}")
    cfg.write_text(text.replace("recovery_m = 2", f"recovery_m = {m}"))


FAILING_SOURCE = '''
import numpy as np

class FakeSource:
    """Half a second of audio, then the capture device fails with an I/O error."""
    sr, n_channels, realtime, overflows, block_size = 16000, 1, True, 0, 1600

    def blocks(self):
        for _ in range(5):
            yield np.zeros((1600, 1), np.float32)
        raise OSError(5, "Input/output error (test: the capture device failed)")

    def stop(self):
        pass

    def close(self):
        pass
'''


def test_unexpected_capture_error_ends_the_service_non_zero_with_its_traceback(setup, tmp_path):
    # Restart=on-failure restarts only a non-zero exit: an OSError from the device must not exit 0.
    _, bundle, _ = setup
    cfg = service_toml(tmp_path, bundle=bundle, inputs=setup[0] / "wavs", db=tmp_path / "events.sqlite")
    proc = edge_asd_with_source(FAILING_SOURCE, "run", "--config", cfg)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    # Not a user mistake: the journal gets the traceback, naming the error.
    assert "Traceback" in err and "OSError: [Errno 5] Input/output error" in err, err
    assert "capture failed" in err


STUCK_SOURCE = '''
import threading
import time
import numpy as np

class FakeSource:
    """2.5 s of noise in real time, then a read that never returns (a wedged driver): stop() cannot end it."""
    sr, n_channels, realtime, overflows, block_size = 16000, 1, True, 0, 1600

    def blocks(self):
        rng = np.random.default_rng(0)
        for _ in range(25):
            time.sleep(0.1)
            yield (0.1 * rng.standard_normal((1600, 1))).astype(np.float32)
        threading.Event().wait()

    def stop(self):
        pass

    def close(self):
        pass
'''


def test_watchdog_stops_when_audio_stops_and_sigterm_does_not_wait_for_a_stuck_capture(setup, tmp_path):
    _, bundle, _ = setup
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    env = device_env()
    env.update(NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="200000")
    cfg = service_toml(tmp_path, bundle=bundle, inputs=setup[0] / "wavs", db=tmp_path / "events.sqlite")
    proc = edge_asd_with_source(STUCK_SOURCE, "run", "--config", cfg, env=env)
    try:
        sock.settimeout(60)
        while sock.recv(4096).decode().split("\n")[0] != "READY=1":
            pass
        t_ready = time.monotonic()
        timed = []  # (seconds after READY, message)
        sock.settimeout(0.2)
        while time.monotonic() - t_ready < 5.0:
            try:
                timed.append((time.monotonic() - t_ready, sock.recv(4096).decode()))
            except TimeoutError:
                pass
        pings = [t for t, m in timed if m == "WATCHDOG=1"]
        # Audio flows for 2.5 s after READY: pinged every 0.1 s (half of WATCHDOG_USEC) meanwhile ...
        assert sum(t < 2.0 for t in pings) >= 5, timed
        # ... and not once the capture is stuck, so that systemd's watchdog can restart the service.
        assert not [t for t in pings if t > 3.5], timed
        t_term = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        stop_s = time.monotonic() - t_term
        messages = [m for _, m in timed]
        sock.settimeout(0.5)
        while True:
            try:
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    assert proc.returncode == 0, err
    assert stop_s < 10, stop_s  # bounded: not systemd's TimeoutStopSec
    assert "STOPPING=1" in messages and "Traceback" not in err
    assert "capture did not stop" in err
    periods = [r for r in json_lines(out) if r["type"] == "period"]
    # Every window of the 2.5 s (40 000 samples: 157 centred frames, 18 windows of 16 frames every
    # 8) is in a period line: the last, partial period was closed and written.
    assert sum(p["n_windows"] for p in periods) == 18, periods


def test_broken_stdout_neither_stops_the_service_nor_loses_events(setup, tmp_path):
    """``edge-asd run | head`` after head exited: every write to stdout fails with EPIPE."""
    _, bundle, _ = setup
    db = tmp_path / "events.sqlite"
    cfg = service_toml(tmp_path, bundle=bundle, inputs=setup[0] / "wavs", db=db)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-m", "edge_asd", "run", "--config", str(cfg)], stdout=write_end,
                                stderr=subprocess.PIPE, text=True, timeout=120, env=device_env(), cwd=REPO)
    finally:
        os.close(write_end)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
    kinds = [k for (k,) in sqlite3.connect(db).execute("SELECT kind FROM events ORDER BY seq")]
    assert kinds == ["onset", "back_to_normal"]
    assert result.stderr.count("cannot write to stdout") == 1, result.stderr


def test_a_final_partial_period_shorter_than_half_a_period_is_not_decided(setup, tmp_path):
    _, bundle, _ = setup
    wavs = tmp_path / "wavs"
    machine_clips(wavs, ["normal"] * 3, duration_s=2.0)
    # 0.8 s of anomalous sound at the end: the last period [6.24 s, 8.24 s) holds about 0.5 s.
    tail = machine_clips(tmp_path / "tail", ["anomaly"], duration_s=0.8, seed=2)[0]
    tail.rename(wavs / "003_anomaly.wav")
    db = tmp_path / "events.sqlite"
    cfg = service_toml(tmp_path, bundle=bundle, inputs=wavs, db=db, period_s=2.0)
    set_debounce(cfg, k=1, n=1, m=1)  # one anomalous period would raise an onset
    result = edge_asd("run", "--config", cfg)
    assert result.returncode == 0, result.stderr
    lines = json_lines(result.stdout)
    periods = [r for r in lines if r["type"] == "period"]
    assert [r for r in lines if r["type"] == "event"] == []
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0
    *whole, last = periods
    assert [p["start_s"] for p in whole] == [0.24, 2.24, 4.24] and all(p["decided"] for p in whole)
    assert not any(p["anomalous"] for p in whole)
    # The partial period is written, marked undecided; its score is above the threshold, so
    # deciding on it (against a full period's threshold) would have raised the onset.
    assert last["start_s"] == 6.24 and last["end_s"] - last["start_s"] < 1.0
    assert last["decided"] is False and last["score"] > SEPARATING_THRESHOLD and last["alarm"] is False


class _IdleSource:
    sr, n_channels, realtime, overflows, block_size = SR, 1, True, 0, 1600

    def blocks(self):
        return iter(())

    def stop(self):
        pass

    def close(self):
        pass


class _ListStdout:
    def __init__(self):
        self.lines = []

    def write_line(self, line):
        self.lines.append(line)

    def emit(self, event):
        self.lines.append(event.to_json())

    def close(self):
        pass


def test_close_closes_every_sink_even_if_one_raises(setup, tmp_path, caplog):
    import logging

    from edge_asd.config import Config
    from edge_asd.scoring.detector import Detector
    from edge_asd.service import Notifier, Service
    from edge_asd.events import Event, SQLiteStore

    _, bundle, _ = setup
    path = tmp_path / "e.sqlite"
    store = SQLiteStore(path, outbox=True)
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")  # a full disk: events wait in memory
    events = [Event.create(device="d", kind="onset", stream_time_s=0.0, score=1.0, threshold=0.5, details={"pad": "x" * 20000})
              for _ in range(2)]
    for e in events:
        store.emit(e)
    assert store.pending_in_memory == 2
    store._db.execute("PRAGMA max_page_count = 1073741823")  # space freed before the shutdown

    class BrokenForwarder:
        def emit(self, event):
            pass

        def close(self):
            raise RuntimeError("test: the forwarder's close failed")

    stdout = _ListStdout()
    service = Service(Config(), detector=Detector.from_bundle(bundle), source=_IdleSource(),
                      sinks=[store, stdout, BrokenForwarder()], stdout=stdout, notifier=Notifier({}))
    with caplog.at_level(logging.ERROR, logger="edge_asd.service"), pytest.raises(RuntimeError, match="forwarder"):
        service.close()
    assert [r.exc_info is not None for r in caplog.records if "closing" in r.getMessage()] == [True]
    # The store was still closed, so the events it held in memory reached the file.
    assert [e["id"] for e in SQLiteStore(path).events()] == [e.id for e in events]


def test_dropped_blocks_and_device_overruns_advance_stream_time_and_split_the_audio(setup):
    """Audio lost before processing (queue full, device overrun) is a gap: stream time moves over
    it, so the period grid stays on the audio's clock, and no window joins audio across it."""
    import threading

    from edge_asd.config import Config, InputConfig
    from edge_asd.scoring.detector import Detector
    from edge_asd.service import Notifier, Service, StreamingScorer

    _, bundle, _ = setup
    detector = Detector.from_bundle(bundle)
    rng = np.random.default_rng(3)
    blocks = [(0.1 * rng.standard_normal((1600, 1))).astype(np.float32) for _ in range(24)]
    release = threading.Event()

    class GappySource:
        sr, n_channels, realtime, block_size = SR, 1, True, 1600

        def __init__(self):
            self.overflows = 0

        def blocks(self):
            for b in blocks[:6]:
                time.sleep(0.05)
                yield b
            time.sleep(0.3)  # the loop holds block 5 (its push waits for `release`)
            yield blocks[6]  # fills the one-block queue
            yield blocks[7]  # queue full: dropped
            yield blocks[8]  # dropped
            release.set()
            time.sleep(0.5)  # the loop empties the queue
            for b in blocks[9:15]:
                time.sleep(0.05)
                yield b
            self.overflows += 1  # block 15 is lost to a device overrun
            for b in blocks[16:]:
                time.sleep(0.05)
                yield b

        def stop(self):
            pass

        def close(self):
            pass

    config = Config(input=InputConfig(kind="microphone", queue_s=0.1, block_s=0.1))
    service = Service(config, detector=detector, source=GappySource(), sinks=[], stdout=_ListStdout(), notifier=Notifier({}))
    StreamingScorer(detector, n_channels=1).push(blocks[0])  # compile the kernels before the timed part
    pushes = []
    original_push = service.scorer.push

    def gated_push(block):
        pushes.append(block)
        if len(pushes) == 6:
            assert release.wait(10)
        return original_push(block)

    service.scorer.push = gated_push
    seen = []
    original_update = service.alarm.update

    def spy(score, t_s=None, **kwargs):
        seen.append((t_s, score))
        return original_update(score, t_s, **kwargs)

    service.alarm.update = spy
    assert service.run() == 0
    assert service.stats.dropped_blocks == 2 and service.stats.dropped_samples == 3200

    def segment(part, offset_s, *, last):
        scorer = StreamingScorer(detector, n_channels=1)
        out = [w for b in part for w in scorer.push(b)] + (scorer.flush() if last else [])
        return [(t + offset_s, s) for t, s in out]

    # Three runs of audio: blocks 0-6, 9-14 (after 2 dropped blocks), 16-23 (after the overrun).
    expected = segment(blocks[:7], 0.0, last=False) + segment(blocks[9:15], 0.9, last=False) + segment(blocks[16:], 1.6, last=True)
    assert len(seen) == len(expected) > 0
    np.testing.assert_allclose([t for t, _ in seen], [t for t, _ in expected], rtol=0, atol=1e-9)
    np.testing.assert_allclose([s for _, s in seen], [s for _, s in expected], rtol=1e-6, atol=1e-7)


def test_a_restart_during_an_alarm_resumes_it_instead_of_raising_a_second_onset(setup, tmp_path):
    _, bundle, _ = setup
    before = tmp_path / "before"
    after = tmp_path / "after"
    machine_clips(before, ["normal"] * 3 + ["anomaly"] * 3)  # stops (a restart) during the alarm
    machine_clips(after, ["anomaly"] + ["normal"] * 3, seed=5)
    db = tmp_path / "events.sqlite"
    cfg = service_toml(tmp_path, bundle=bundle, inputs=before, db=db)
    first = edge_asd("run", "--config", cfg)
    assert first.returncode == 0, first.stderr
    (onset,) = [r for r in json_lines(first.stdout) if r["type"] == "event"]
    assert onset["kind"] == "onset"

    second = edge_asd("run", "--config", cfg, "--input", after)
    assert second.returncode == 0, second.stderr
    assert f"resuming the open alarm (onset {onset['id']}" in second.stderr
    events = [r for r in json_lines(second.stdout) if r["type"] == "event"]
    # The anomalous start continues the first run's alarm; the normal audio after it ends it.
    assert [e["kind"] for e in events] == ["back_to_normal"], events
    assert events[0]["details"]["onset_id"] == onset["id"]
    assert 3.0 <= events[0]["stream_time_s"] <= 5.0, events  # the anomaly ends at 2 s; 2 normal periods
    kinds = [k for (k,) in sqlite3.connect(db).execute("SELECT kind FROM events ORDER BY seq")]
    assert kinds == ["onset", "back_to_normal"]

    # The alarm is closed in the store too: a third start begins in the normal state, so the same
    # audio now raises an onset of its own, then ends it.
    third = edge_asd("run", "--config", cfg, "--input", after)
    assert third.returncode == 0, third.stderr
    assert "resuming" not in third.stderr
    assert [e["kind"] for e in json_lines(third.stdout) if e["type"] == "event"] == ["onset", "back_to_normal"]


def test_a_live_source_faster_than_real_time_is_a_sensor_fault(setup):
    """A capture device that hands out audio far faster than time passes (a driver replaying its
    buffer) is not the machine now: sensor_fault (faster_than_realtime), decisions paused, and
    sensor_ok once its pace is real time again. Judged from block arrival times."""
    from edge_asd.config import Config
    from edge_asd.scoring.detector import Detector
    from edge_asd.service import Notifier, Service

    _, bundle, _ = setup

    class RacingSource:
        sr, n_channels, realtime, overflows, block_size = SR, 1, True, 0, 1600

        def blocks(self):
            rng = np.random.default_rng(0)
            for speed, wall_s in ((3.0, 6.0), (1.0, 6.5)):
                for _ in range(int(wall_s * speed / 0.1)):
                    time.sleep(0.1 / speed)
                    yield (0.05 * rng.standard_normal((1600, 1))).astype(np.float32)

        def stop(self):
            pass

        def close(self):
            pass

    class Events:
        def __init__(self):
            self.events = []

        def emit(self, event):
            self.events.append(event)

        def write_line(self, line):
            pass

        def close(self):
            pass

    seen = Events()
    service = Service(Config(), detector=Detector.from_bundle(bundle), source=RacingSource(), sinks=[seen], stdout=seen,
                      notifier=Notifier({}))
    assert service.run() == 0
    pace = [e for e in seen.events if e.details.get("reason") == "faster_than_realtime"]
    assert [e.kind for e in pace] == ["sensor_fault", "sensor_ok"], [(e.kind, e.details) for e in seen.events]
    assert pace[0].score > 1.5 and pace[1].score <= 1.2  # audio seconds per second of wall time
