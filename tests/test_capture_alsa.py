"""The capture path for real: PortAudio through pyaudio reading an ALSA device the test declares
(an ALSA ``file`` PCM fed through a FIFO, see ``tests/alsa_device.py``), in real ``edge-asd``
processes: ``devices`` lists it, ``run`` gives the events and period scores the same audio gives
from a wav file, ``calibrate`` and ``record`` read it, and a device that vanishes mid-run gives
``sensor_lost`` / ``sensor_back`` events with nothing else lost.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.alsa_device import SYSTEM_ALSA_CONF, AlsaFifoDevice, wav_frames
from tests.device_helpers import REPO, SR, copy_bundle, device_env, edge_asd, machine_clips, write_toml
from tests.sensor_stream import CHANNELS as SENSOR_CHANNELS
from tests.sensor_stream import EXPECTED_EVENTS, MONITORS, stream_files, write_stream

pytestmark = pytest.mark.skipif(
    not SYSTEM_ALSA_CONF.is_file(),
    reason=f"{SYSTEM_ALSA_CONF} is absent: libasound2 (installed with portaudio19-dev by scripts/setup) is missing",
)

CHANNELS = 2
BLOCK_BYTES = 1600 * CHANNELS * 2  # one 0.1 s capture block


def alsa_env(device: AlsaFifoDevice) -> dict[str, str]:
    env = device_env()
    env.update(device.env)
    return env


def mic_toml(tmp: Path, *, bundle: Path, db: Path, name: str = "mic.toml", channels: int = CHANNELS, extra: str = "") -> Path:
    """A microphone profile: the test device's channels and rate, 1 s periods, short back-off;
    ``extra`` is appended (more TOML sections)."""
    return write_toml(tmp / name, f"""
[device]
id = "alsa-test"
bundle = "{bundle}"

[input]
kind = "microphone"
channels = {channels}
sample_rate_hz = {SR}
block_s = 0.1
reconnect_max_s = 1.0
max_pace = 0                      # the FIFO device delivers as fast as the test feeds it (4x real time)

[alarm]
period_s = 1.0
onset_k = 2
onset_n = 3
recovery_m = 2
refractory_s = 0.0

[store]
path = "{db}"

[service]
log_periods = true
stats_interval_s = 1.0
{extra}""")


def one_wav(folder: Path, labels: list[str], *, seed: int = 1) -> Path:
    """The clips of ``labels`` (2 s each, two identical channels) joined into one 16-bit wav."""
    from edge_asd.audio import read_wav, write_wav

    clips = machine_clips(folder / "clips", labels, seed=seed, channels=CHANNELS)
    out = folder / "stream.wav"
    write_wav(out, np.concatenate([read_wav(c)[0] for c in clips]), SR)
    return out


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


class Running:
    """``edge-asd ARGS`` as a subprocess whose stdout and stderr are collected by threads (so
    neither pipe fills while the test feeds the device)."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [threading.Thread(target=self._pump, args=(s, b), daemon=True)
                         for s, b in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self._threads:
            t.start()

    @staticmethod
    def _pump(stream, buf: list[str]) -> None:
        for line in stream:
            buf.append(line)

    def wait_for(self, text: str, timeout: float = 90.0, *, where: str = "err", count: int = 1) -> None:
        """Wait until ``text`` appeared in ``count`` lines."""
        buf = self.err if where == "err" else self.out
        deadline = time.monotonic() + timeout
        while sum(text in line for line in list(buf)) < count:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never appeared (exit {self.proc.poll()}):\n{''.join(self.err)[-4000:]}")
            time.sleep(0.05)

    def stop(self, device: AlsaFifoDevice, timeout: float = 60.0) -> tuple[int, str, str]:
        """SIGTERM, then one block of silence so that the capture's pending read returns (a sound
        card delivers a block every 0.1 s; the FIFO only when written). The service drops any
        block read after the stop request, so that block is never processed."""
        self.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        device.feed(device.silence(0.1), speed=1000)
        rc = self.proc.wait(timeout=timeout)
        for t in self._threads:
            t.join(timeout=5)
        return rc, "".join(self.out), "".join(self.err)


def run_on_device(device: AlsaFifoDevice, cfg: Path, frames: bytes, *, speed: float = 4.0) -> tuple[str, str]:
    """``edge-asd run --config CFG --input mic:DEVICE`` while ``frames`` are played through the
    device at ``speed`` times real time; stopped once every block has been read. Returns stdout and
    stderr, after checking that it exited cleanly and lost no block (none dropped from the queue,
    no device overrun): the comparisons with a wav run are of the whole stream."""
    run = Running([sys.executable, "-m", "edge_asd", "run", "--config", str(cfg), "--input", f"mic:{device.name}"],
                  alsa_env(device))
    try:
        run.wait_for("capturing from device")
        device.feed(frames, speed=speed)
        device.wait_drained()
        time.sleep(1.0)  # the last blocks reach the queue
        rc, out, err = run.stop(device)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    assert rc == 0, err
    assert "Traceback" not in err
    assert "capturing from device" in err, err
    # The final stats line (logged at exit) counts the whole run.
    last_stats = [ln for ln in err.splitlines() if "real-time factor" in ln][-1]
    assert "dropped 0 blocks" in last_stats and "device overflows 0" in last_stats and " 0 gaps" in last_stats, last_stats
    return out, err


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return copy_bundle(tmp_path_factory.mktemp("alsa-bundle"))


@pytest.fixture
def device(tmp_path):
    folder = tmp_path / "alsa"
    folder.mkdir()
    dev = AlsaFifoDevice(folder, channels=CHANNELS)
    yield dev
    dev.close()


def test_devices_lists_the_alsa_device(device):
    result = edge_asd("devices", env=alsa_env(device))
    assert result.returncode == 0, result.stderr
    line = next((ln for ln in result.stdout.splitlines() if device.name in ln), None)
    assert line is not None, result.stdout
    assert "default 16000 Hz" in line, line
    # Without the declaration the same machine has no such device.
    plain = edge_asd("devices")
    assert device.name not in plain.stdout


def test_run_on_the_device_gives_the_events_and_periods_of_the_same_audio_from_a_wav(device, bundle, tmp_path):
    # 8 s normal, 8 s of a lasting fault, 8 s normal.
    wav = one_wav(tmp_path, ["normal"] * 4 + ["anomaly"] * 4 + ["normal"] * 4)
    cfg = mic_toml(tmp_path, bundle=bundle, db=tmp_path / "mic.sqlite")
    from_file = edge_asd("run", "--config", cfg, "--input", wav, "--fast", "--db", tmp_path / "file.sqlite")
    assert from_file.returncode == 0, from_file.stderr

    out, err = run_on_device(device, cfg, wav_frames(wav))

    mic_lines, file_lines = json_lines(out), json_lines(from_file.stdout)
    mic_events = [(e["kind"], e["stream_time_s"]) for e in mic_lines if e["type"] == "event"]
    file_events = [(e["kind"], e["stream_time_s"]) for e in file_lines if e["type"] == "event"]
    assert [k for k, _ in file_events] == ["onset", "back_to_normal"], file_lines
    assert [k for k, _ in mic_events] == [k for k, _ in file_events], "\n".join(map(str, mic_lines))
    np.testing.assert_allclose([t for _, t in mic_events], [t for _, t in file_events], atol=1e-3)
    mic_periods = [p for p in mic_lines if p["type"] == "period"]
    file_periods = [p for p in file_lines if p["type"] == "period"]
    assert len(mic_periods) == len(file_periods) >= 23
    assert [p["start_s"] for p in mic_periods] == [p["start_s"] for p in file_periods]
    assert [p["n_windows"] for p in mic_periods] == [p["n_windows"] for p in file_periods]
    np.testing.assert_allclose([p["score"] for p in mic_periods], [p["score"] for p in file_periods], rtol=1e-5, atol=1e-6)


def test_sensor_faults_and_idle_machine_give_the_same_events_from_the_device_as_from_the_wavs(bundle, tmp_path):
    """The stream of ``test_signal_quality`` (4 channels: digital silence, clipping, a dead channel, a
    machine switched off, then a real anomaly) played through a 4-channel ALSA device gives the
    events and periods its wav files give."""
    from edge_asd.decision.signal_quality import SignalQualityConfig, check_block

    stretches = write_stream(tmp_path / "wavs", tmp_path / "clips")
    files = stream_files(tmp_path / "wavs")
    frames = b"".join(wav_frames(f) for f in files)
    silence_file = next(f for f in files if f.stem.endswith("_silence"))
    assert set(wav_frames(silence_file)) == {0}  # what the FIFO carries for the dead microphone: zero bytes
    stream_s = stretches[-1][2]
    assert len(frames) == round(stream_s * SR) * SENSOR_CHANNELS * 2

    # One profile for both runs, the monitors of the signal-quality test included; only the input differs.
    cfg = mic_toml(tmp_path, bundle=bundle, db=tmp_path / "mic.sqlite", channels=SENSOR_CHANNELS, extra=MONITORS)
    from_file = edge_asd("run", "--config", cfg, "--input", tmp_path / "wavs", "--fast", "--db", tmp_path / "file.sqlite")
    assert from_file.returncode == 0, from_file.stderr
    file_lines = json_lines(from_file.stdout)
    file_events = [e for e in file_lines if e["type"] == "event"]
    # The wav run is the one the signal-quality test checks in detail: the same sequence here.
    assert [(e["kind"], e["details"].get("reason")) for e in file_events] == EXPECTED_EVENTS, file_events

    folder = tmp_path / "alsa"
    folder.mkdir()
    device = AlsaFifoDevice(folder, channels=SENSOR_CHANNELS)  # the plug's slave: 4 channels of s16le
    try:
        out, err = run_on_device(device, cfg, frames)
    finally:
        device.close()
    mic_lines = json_lines(out)
    mic_events = [e for e in mic_lines if e["type"] == "event"]
    # The service processed exactly the stream's length of audio from the device: no block lost,
    # none added (a stale period handed out again by the file plugin would add 0.1 s and shift
    # every later event by a block; the stop's wake-up block is read after the stop and dropped).
    last_stats = [ln for ln in err.splitlines() if "real-time factor" in ln][-1]
    assert f"audio {stream_s:.1f} s," in last_stats, last_stats

    # Same kinds in the same order, same reasons: no dropout or repeated_block fault appears on the
    # device path (a short read of the file plugin repeats stale buffer contents, which would look
    # like one) and every fault the wavs give is there.
    kinds = [(e["kind"], e["details"].get("reason")) for e in mic_events]
    assert kinds == EXPECTED_EVENTS, "\n".join(map(str, mic_lines))
    # Stream time counts samples, and the device delivered every sample of the stream (no block
    # dropped or overrun, checked by run_on_device), so each event is stamped at the same block end.
    np.testing.assert_allclose([e["stream_time_s"] for e in mic_events], [e["stream_time_s"] for e in file_events],
                               atol=1e-3)
    for m, f in zip(mic_events, file_events):
        # When each fault began (since_s), which channel died, and the figure against its limit.
        assert {k: m["details"].get(k) for k in ("since_s", "channels", "severity")} == \
               {k: f["details"].get(k) for k in ("since_s", "channels", "severity")}, (m, f)
        if f["score"] is not None:
            assert m["score"] == pytest.approx(f["score"], rel=1e-5, abs=1e-6) and m["threshold"] == f["threshold"], (m, f)

    # The dead microphone's stretch reached the service as exact digital zeros: the silence fault's
    # figure is the level of an all-zero block (the check's floor); a single 1-LSB sample in that
    # block would have given a level some 70 dB higher.
    zeros = check_block(np.zeros((1600, SENSOR_CHANNELS), np.float32), SignalQualityConfig(), sr=SR).measures["silence"]
    one_lsb = np.zeros((1600, SENSOR_CHANNELS), np.float32)
    one_lsb[800, 2] = 1 / 32768
    assert check_block(one_lsb, SignalQualityConfig(), sr=SR).measures["silence"] > zeros + 60
    silence_fault = mic_events[0]
    assert silence_fault["score"] == zeros == file_events[0]["score"], silence_fault

    # The same periods, decided or not for the same reason, with the same valid windows: a block
    # that only the device path had judged bad (a dropout or repeated block inside normal audio)
    # would take its windows out of that period (fewer n_windows, another mean).
    mic_periods = [p for p in mic_lines if p["type"] == "period"]
    file_periods = [p for p in file_lines if p["type"] == "period"]
    assert len(file_periods) == round(stream_s), file_periods
    assert [p["start_s"] for p in mic_periods] == [p["start_s"] for p in file_periods]

    def verdict(p: dict) -> tuple:
        return p["decided"], p["anomalous"] if p["decided"] else None, p.get("reason"), p["n_windows"], p.get("n_invalid")

    assert [verdict(p) for p in mic_periods] == [verdict(p) for p in file_periods], \
        [(p["start_s"], verdict(p), verdict(q)) for p, q in zip(mic_periods, file_periods) if verdict(p) != verdict(q)]
    assert sum(not p["decided"] for p in file_periods) >= 4 * 4  # each of the four stretches holds decisions
    np.testing.assert_allclose([np.nan if p["score"] is None else p["score"] for p in mic_periods],
                               [np.nan if p["score"] is None else p["score"] for p in file_periods], rtol=1e-5, atol=1e-6)


def test_calibrate_reads_the_device_as_it_reads_the_same_wav(device, bundle, tmp_path):
    wav = one_wav(tmp_path, ["normal"] * 7, seed=4)  # 14 s; calibrate takes 12 s
    cfg = mic_toml(tmp_path, bundle=bundle, db=tmp_path / "unused.sqlite")
    args = ["calibrate", bundle, "--config", cfg, "--seconds", "12", "--dry-run"]
    from_file = edge_asd(*args, "--input", wav)
    assert from_file.returncode == 0, from_file.stderr
    feeder = device.feed_in_background(wav_frames(wav), speed=8.0)
    from_mic = edge_asd(*args, "--input", f"mic:{device.name}", env=alsa_env(device))
    device.discard_rest(feeder)
    assert from_mic.returncode == 0, from_mic.stderr
    assert "microphone edgeasd_test" in from_mic.stderr
    assert "12.0 s of audio, 12 periods" in from_mic.stdout
    # The same samples give the same fit, line for line (threshold, interval, provenance of the old one).
    assert from_mic.stdout == from_file.stdout


def test_record_writes_exactly_the_samples_the_device_delivered(device, tmp_path):
    rng = np.random.default_rng(7)
    audio = (3000 * rng.standard_normal((SR * 5, CHANNELS))).astype("<i2")
    cfg = write_toml(tmp_path / "rec.toml", f"[device]\nid = \"rec\"\n[input]\nkind = \"microphone\"\nchannels = {CHANNELS}\n")
    feeder = device.feed_in_background(audio.tobytes(), speed=8.0)
    result = edge_asd("record", tmp_path / "out", "--config", cfg, "--input", f"mic:{device.name}",
                      "--seconds", "4", "--clip-seconds", "2", env=alsa_env(device))
    device.discard_rest(feeder)
    assert result.returncode == 0, result.stderr
    clips = sorted((tmp_path / "out" / "normal").glob("*.wav"))
    assert len(clips) == 2
    got = b"".join(wav_frames(c) for c in clips)
    with wave.open(str(clips[0])) as w:
        assert (w.getnchannels(), w.getframerate()) == (CHANNELS, SR)
    assert got == audio[: SR * 4].tobytes()
    (sidecar,) = (tmp_path / "out" / "sessions").glob("*.json")
    session = json.loads(sidecar.read_text())
    assert session["overflows"] == 0 and "edgeasd_test" in session["input"]


# What the real device cannot do here, and only that, is injected into the real pyaudio module:
# PortAudio's read failing as it does when a USB array is unplugged (paUnanticipatedHostError) and
# an input overrun (paInputOverflowed; the null-clocked file PCM never overruns). Everything else is
# real: the device is enumerated, opened and read by PortAudio, and its disappearance from the ALSA
# configuration is what the reconnecting source finds at every reopen until it is declared again.
FAULTS_LAUNCHER = '''
import os, sys
import pyaudio

CONTROL = os.environ["EDGE_ASD_TEST_FAULTS"]
_real_open = pyaudio.PyAudio.open


def _take_fault():
    try:
        with open(CONTROL) as f:
            fault = f.read().strip()
        os.remove(CONTROL)
        return fault
    except FileNotFoundError:
        return None


def _open(self, *args, **kwargs):
    stream = _real_open(self, *args, **kwargs)
    real_read = stream.read

    def read(num_frames, exception_on_overflow=True):
        data = real_read(num_frames, exception_on_overflow=exception_on_overflow)
        if os.path.exists(CONTROL) and open(CONTROL).read().strip() == "dead":  # stays until removed
            raise OSError(pyaudio.paUnanticipatedHostError, "Unanticipated host error (test: dead device)")
        fault = _take_fault()  # after the read: the block in flight is lost with the device
        if fault == "overflow":
            raise OSError(pyaudio.paInputOverflowed, "Input overflowed (test)")
        if fault == "unplug":
            raise OSError(pyaudio.paUnanticipatedHostError, "Unanticipated host error (test: device unplugged)")
        return data

    stream.read = read
    return stream


pyaudio.PyAudio.open = _open
from edge_asd.cli import main
main(sys.argv[1:])
'''


def run_with_faults(device, bundle, tmp_path: Path) -> tuple[Running, Path]:
    """``edge-asd run`` on ``device`` through :data:`FAULTS_LAUNCHER`; write a fault's name to the
    returned control file to inject it."""
    cfg = mic_toml(tmp_path, bundle=bundle, db=tmp_path / "events.sqlite")
    control = tmp_path / "fault"
    env = alsa_env(device)
    env["EDGE_ASD_TEST_FAULTS"] = str(control)
    return Running([sys.executable, "-c", FAULTS_LAUNCHER, "run", "--config", str(cfg), "--input", f"mic:{device.name}"], env), control


def test_a_device_that_vanishes_gives_sensor_lost_then_sensor_back_and_nothing_else_is_lost(device, bundle, tmp_path):
    import sqlite3

    before = one_wav(tmp_path / "before", ["normal"] * 2 + ["anomaly"] * 3, seed=2)  # onset during this part
    after = one_wav(tmp_path / "after", ["anomaly"] + ["normal"] * 3, seed=3)  # back to normal after the outage
    db = tmp_path / "events.sqlite"
    run, control = run_with_faults(device, bundle, tmp_path)
    try:
        run.wait_for("capturing from device")
        first = wav_frames(before)
        half = len(first) // 2 // BLOCK_BYTES * BLOCK_BYTES
        device.feed(first[:half], speed=4.0)
        device.wait_drained()
        time.sleep(0.3)  # the last block read has been returned to the source
        control.write_text("overflow")  # the next block read is lost to an overrun
        device.feed(first[half:], speed=4.0)
        device.wait_drained()
        run.wait_for('"kind":"onset"', where="out")
        # Unplug: the device leaves the configuration, and the read in flight fails.
        device.vanish()
        control.write_text("unplug")
        device.feed(device.silence(0.1), speed=1000)  # wakes the pending read, which then fails
        run.wait_for("stopped delivering audio")
        run.wait_for("retrying in 1.0 s")  # back-off: 0.5 s, then 1.0 s (reconnect_max_s)
        device.declare()
        run.wait_for("capturing from device", count=2)  # reopened; back only once it delivers audio
        device.feed(wav_frames(after), speed=4.0)
        run.wait_for("is back after")
        device.wait_drained()
        run.wait_for('"kind":"back_to_normal"', where="out")
        time.sleep(0.5)
        rc, out, err = run.stop(device)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    assert rc == 0, err
    assert "Traceback" not in err
    events = [e for e in json_lines(out) if e["type"] == "event"]
    assert [e["kind"] for e in events] == ["onset", "sensor_lost", "sensor_back", "back_to_normal"], events
    onset, lost, back, recovered = events
    assert lost["details"]["device"] == device.name and "Unanticipated host error" in lost["details"]["error"]
    assert lost["score"] is None and back["details"]["attempts"] >= 2 and back["details"]["outage_s"] >= 1.0
    assert recovered["details"]["onset_id"] == onset["id"]
    # Stream time moved on over the outage: the audio after it is stamped later by about its length.
    assert back["stream_time_s"] == pytest.approx(lost["stream_time_s"], abs=0.11)
    assert recovered["stream_time_s"] >= back["stream_time_s"] + back["details"]["outage_s"] + 2.0
    # Every event is in the store, in order.
    assert [r[0] for r in sqlite3.connect(db).execute("SELECT id FROM events ORDER BY seq")] == [e["id"] for e in events]
    # Every block the device delivered was processed (the overrun's and the failed read's blocks are
    # lost with the device): 10 s + 0.1 s + 8 s of audio written, two blocks lost, nothing dropped.
    last_stats = [ln for ln in err.splitlines() if "real-time factor" in ln][-1]
    assert "audio 17.9 s" in last_stats and "dropped 0 blocks" in last_stats, last_stats
    assert "device overflows 1" in last_stats and "sensor lost 1 times" in last_stats, last_stats


def test_a_device_that_opens_but_never_delivers_backs_off_and_raises_one_sensor_lost(device, bundle, tmp_path):
    """The review's flood: a microphone that opens but fails its first read gave 2,116 sensor_lost /
    sensor_back pairs in 5 s. Now: one sensor_lost, no sensor_back until audio comes, reopen attempts
    spaced by the back-off; then audio, one sensor_back, and detection goes on."""
    run, control = run_with_faults(device, bundle, tmp_path)
    try:
        run.wait_for("capturing from device")
        device.feed(wav_frames(one_wav(tmp_path / "a", ["normal"])), speed=4.0)
        device.wait_drained()
        time.sleep(0.3)
        control.write_text("dead")  # from the next read on, every read fails before it returns audio
        device.feed(device.silence(0.1), speed=1000)
        run.wait_for("stopped delivering audio")
        for _ in range(4):  # the device keeps opening and failing: each attempt waits its back-off
            device.feed(device.silence(0.1), speed=1000)
            time.sleep(0.5)
        lines = [line for line in run.err if "opened but delivered no audio" in line]
        assert 1 <= len(lines) <= 6, lines  # 0.5 s, then 1.0 s (reconnect_max_s) between attempts: not thousands
        control.unlink()
        run.wait_for("capturing from device", count=len(lines) + 2)
        device.feed(wav_frames(one_wav(tmp_path / "b", ["normal"] * 2, seed=5)), speed=4.0)
        device.wait_drained()
        run.wait_for("is back after")
        time.sleep(0.5)
        rc, out, err = run.stop(device)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    assert rc == 0, err
    events = [e["kind"] for e in json_lines(out) if e["type"] == "event"]
    assert events.count("sensor_lost") == 1 and events.count("sensor_back") == 1, events
