"""``edge-asd record``: real wav inputs cut into training clips, sessions, full disks, bad inputs,
signals, and the trainer reading the result.

Inputs are real wav files played through the same sources ``edge-asd run`` uses; the full-disk
tests fill a real (small) tmpfs, so ``ENOSPC`` comes from the kernel.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import scipy.io.wavfile

from edge_asd.audio import read_wav, wav_info, write_wav
from edge_asd.audio.sources import WavFileSource, open_source
from edge_asd.config import InputConfig
from edge_asd.errors import ParameterError
from edge_asd.audio.recorder import (
    STOP_DISK_FULL,
    STOP_DONE,
    STOP_SOURCE_ENDED,
    DiskFullError,
    RecordingPlan,
    record_clips,
)
from tests.device_helpers import REPO, device_env, edge_asd

SR = 16000
N_CH = 8
PROFILE_8CH = """
[device]
id = "pump-01"

[input]
channels = 8
sample_rate_hz = 16000
"""


def _multichannel(seconds: float, channels: int, *, seed: int = 0) -> np.ndarray:
    """Distinct content per channel (its own tone, level and noise), so a swapped or dropped
    channel, or a clip cut at the wrong sample, changes the comparison."""
    t = np.arange(round(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    cols = [
        (0.05 + 0.05 * c) * np.sin(2 * np.pi * (150 + 110 * c) * t) + 0.01 * rng.standard_normal(t.size)
        for c in range(channels)
    ]
    return np.stack(cols, axis=1)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A 60 s 8-channel wav, a 300 s mono wav, and an 8-channel profile."""
    d = tmp_path_factory.mktemp("inputs")
    write_wav(d / "array8.wav", _multichannel(60.0, N_CH), SR)
    write_wav(d / "mono300.wav", _multichannel(300.0, 1, seed=1), SR)
    (d / "pump8.toml").write_text(PROFILE_8CH, encoding="utf-8")
    return d


def _sidecars(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "sessions").glob("*.json"))]


def _leftovers(out: Path) -> list[Path]:
    """Temporary files of interrupted writes (write_wav and the sidecar both use dot-prefixed .tmp)."""
    return [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def _assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# -- the main path ------------------------------------------------------------------------------


def test_60s_of_8ch_become_six_exact_10s_clips_the_trainer_reads(tmp_path, inputs):
    out = tmp_path / "rec"
    result = edge_asd("record", out, "--config", inputs / "pump8.toml", "--input", inputs / "array8.wav",
                      "--seconds", "60", "--clip-seconds", "10")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr

    clips = sorted((out / "normal").glob("*.wav"))
    assert len(clips) == 6
    _, source = scipy.io.wavfile.read(inputs / "array8.wav")
    for k, path in enumerate(clips):
        assert path.name.startswith("pump-01_") and path.name.endswith(f"_{k:04d}.wav")
        assert wav_info(path) == (SR, N_CH, 10 * SR)
        sr, data = scipy.io.wavfile.read(path)
        assert sr == SR and data.dtype == np.int16  # 16-bit PCM
        expected = source[k * 10 * SR : (k + 1) * 10 * SR]
        # Within int16 rounding of the source (a 16-bit source survives exactly).
        assert np.abs(data.astype(np.int32) - expected.astype(np.int32)).max() <= 1
        # The channels are the source's, in order (each has its own level).
        assert np.argsort(np.abs(data).mean(axis=0)).tolist() == list(range(N_CH))

    (side,) = _sidecars(out)
    assert side["device_id"] == "pump-01"
    assert side["profile"] == str((inputs / "pump8.toml").resolve())
    assert str((inputs / "array8.wav").resolve()) in side["input"]
    assert (side["channels"], side["sample_rate_hz"], side["clip_seconds"]) == (N_CH, SR, 10.0)
    assert side["clips"] == [f"normal/{p.name}" for p in clips]
    assert (side["seconds_requested"], side["seconds_recorded"], side["seconds_discarded"]) == (60.0, 60.0, 0.0)
    assert side["stop_reason"] == "done" and side["overflows"] == 0 and side["error"] is None
    from edge_asd import __version__

    assert side["edge_asd_version"] == __version__
    start = datetime.fromisoformat(side["start_time"])
    end = datetime.fromisoformat(side["end_time"])
    assert start.utcoffset().total_seconds() == 0 and start <= end
    assert clips[0].name.startswith(f"pump-01_{start.strftime('%Y%m%dT%H%M%SZ')}_")
    assert side["session_id"] == clips[0].name.rsplit("_", 1)[0]

    from trainer.datasets import read_dataset, scan_dataset

    read = read_dataset(out, layout="folder")
    assert [c.path.name for c in read] == [p.name for p in clips]
    assert {c.label for c in read} == {"normal"}
    assert scan_dataset(out)[0] == "folder"  # the sidecars do not confuse layout detection


def test_a_second_run_adds_a_session_and_leaves_the_first_clips_alone(tmp_path, inputs):
    out = tmp_path / "rec"
    args = ("--config", inputs / "pump8.toml", "--input", inputs / "array8.wav", "--seconds", "60")
    assert edge_asd("record", out, *args).returncode == 0
    first = {p: p.read_bytes() for p in (out / "normal").glob("*.wav")}
    assert len(first) == 6
    again = edge_asd("record", out, *args)
    assert again.returncode == 0, again.stderr
    now = sorted((out / "normal").glob("*.wav"))
    assert len(now) == 12
    assert all(p.read_bytes() == data for p, data in first.items())
    sides = _sidecars(out)
    assert len(sides) == 2 and sides[0]["session_id"] != sides[1]["session_id"]
    listed = [name for s in sides for name in s["clips"]]
    assert sorted(listed) == sorted(f"normal/{p.name}" for p in now)  # each clip in exactly one session


def test_existing_names_are_skipped_even_with_the_same_clock(tmp_path, inputs):
    """A Pi without a clock battery can repeat a timestamp: names still never collide."""
    out = tmp_path / "rec"
    frozen = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    plan = RecordingPlan(device_id="fan-7", seconds=30.0, clip_seconds=10.0, min_free_bytes=0)
    squatter = out / "normal" / "fan-7_20260102T030405Z_0001.wav"
    squatter.parent.mkdir(parents=True)
    squatter.write_bytes(b"not ours")
    names = []
    for _ in range(2):
        source = WavFileSource(inputs / "array8.wav", channels=N_CH)
        result = record_clips(source, out, plan, now=lambda: frozen)
        assert result.stop_reason == STOP_DONE and len(result.clips) == 3
        names.append([p.name for p in result.clips])
    assert names[0] == [f"fan-7_20260102T030405Z_{i:04d}.wav" for i in (0, 2, 3)]
    assert names[1] == [f"fan-7_20260102T030405Z_{i:04d}.wav" for i in (4, 5, 6)]
    assert squatter.read_bytes() == b"not ours"
    sessions = {s["session_id"]: [Path(c).name for c in s["clips"]] for s in _sidecars(out)}
    assert sessions == {"fan-7_20260102T030405Z": names[0], "fan-7_20260102T030405Z-2": names[1]}


def test_a_folder_is_one_stream_and_the_short_tail_is_discarded(tmp_path):
    """Files are re-cut across their boundaries; what does not fill a whole clip is not written."""
    src = tmp_path / "old"
    audio = _multichannel(12.0, 1, seed=3)
    for i in range(3):  # three 4 s files = 12 s = one 10 s clip and 2 s left over
        write_wav(src / f"{i}.wav", audio[i * 4 * SR : (i + 1) * 4 * SR], SR)
    source = open_source(InputConfig(kind="folder", path=src, channels=1), realtime=False)
    plan = RecordingPlan(device_id="dev", seconds=600.0, clip_seconds=10.0, min_free_bytes=0)
    result = record_clips(source, tmp_path / "rec", plan)
    assert result.stop_reason == STOP_SOURCE_ENDED
    assert len(result.clips) == 1 and result.clips_requested == 60
    assert result.seconds_recorded == 10.0 and result.seconds_discarded == pytest.approx(2.0)
    clip, _ = read_wav(result.clips[0])
    reference, _ = read_wav(src / "0.wav")  # same int16 rounding as the clip
    assert np.array_equal(clip[: 4 * SR], reference)
    assert np.abs(clip[:, 0] - audio[: 10 * SR, 0]).max() <= 1 / 32768
    side = json.loads(result.sidecar.read_text())
    assert side["stop_reason"] == "source ended" and side["seconds_discarded"] == pytest.approx(2.0)


def test_plan_refuses_what_would_write_nothing_or_a_bad_name():
    with pytest.raises(ParameterError, match="shorter than one 10 s clip"):
        RecordingPlan(device_id="dev", seconds=5.0)
    with pytest.raises(ParameterError, match="device id"):
        RecordingPlan(device_id="../etc", seconds=60.0)
    plan = RecordingPlan(device_id="dev", seconds=65.0, clip_seconds=10.0)
    assert plan.n_clips(SR) == 6 and plan.clip_samples(SR) == 160000


# -- full disks ---------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A real 3 MiB file system to fill (tmpfs; needs root, as this machine and CI have)."""
    if os.geteuid() != 0:
        pytest.skip("the full-disk tests mount a 3 MiB tmpfs, which needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and mount rights): {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _assert_clips_intact(out: Path, side: dict, samples: int) -> None:
    on_disk = sorted(f"normal/{p.name}" for p in (out / "normal").glob("*.wav"))
    assert on_disk == sorted(side["clips"])  # the sidecar lists exactly what is there
    for name in on_disk:
        clip, sr = read_wav(out / name)  # every finished clip reads back in full
        assert sr == SR and clip.shape == (samples, 1)
    assert _leftovers(out) == []


def test_refuses_to_start_without_room_for_one_clip(small_disk, inputs):
    out = small_disk / "rec"
    result = edge_asd("record", out, "--input", inputs / "mono300.wav", "--seconds", "60")  # default 50 MB margin
    _assert_one_line_error(result, str(out), "not enough free disk space", "MB free", "--min-free-mb")
    assert not out.exists()  # nothing is created when nothing can be recorded


def test_stops_cleanly_when_the_next_clip_would_not_fit(small_disk, inputs):
    out = small_disk / "rec"
    result = edge_asd("record", out, "--input", inputs / "mono300.wav", "--seconds", "300",
                      "--clip-seconds", "1", "--min-free-mb", "0")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(out) in last and "disk is full" in last, result.stderr
    (side,) = _sidecars(out)
    assert side["stop_reason"] == "disk full"
    # 3 MiB hold about 90 one-second clips (32 kB each): far more than one, far fewer than 300.
    assert 50 < len(side["clips"]) < 300
    assert side["seconds_recorded"] == len(side["clips"])
    _assert_clips_intact(out, side, SR)


class _DiskFillingSource(WavFileSource):
    """A real wav source during whose capture another writer fills the disk (as a log file or a
    second recorder would), after the first clip was written and the space check for the second
    one passed: the second clip's write then fails with ENOSPC from the kernel."""

    def __init__(self, path: Path, *, disk: Path, after_blocks: int) -> None:
        super().__init__(path, channels=1, block_size=SR // 10)
        self.disk, self.after_blocks = disk, after_blocks

    def blocks(self):
        for i, block in enumerate(super().blocks()):
            if i == self.after_blocks:
                free = os.statvfs(self.disk).f_bavail * os.statvfs(self.disk).f_frsize
                # Leave two pages: room for the small sidecar update, not for a 32 kB clip.
                (self.disk / "filler.bin").write_bytes(b"\0" * (free - 8192))
            yield block


def test_enospc_while_writing_keeps_finished_clips_and_says_disk_full(small_disk, inputs):
    out = small_disk / "rec"
    # 1 s clips of ten 0.1 s blocks; the disk fills while block 15 (inside clip 2) is captured. A
    # one-block queue keeps the capture thread at most two blocks ahead of the writer, so clip 1 is
    # on disk and the check before clip 2 has passed by then.
    source = _DiskFillingSource(inputs / "mono300.wav", disk=small_disk, after_blocks=15)
    plan = RecordingPlan(device_id="dev", seconds=60.0, clip_seconds=1.0, min_free_bytes=0)
    result = record_clips(source, out, plan, queue_blocks=1)
    assert result.stop_reason == STOP_DISK_FULL
    assert len(result.clips) == 1 and result.seconds_discarded == pytest.approx(1.0)
    assert result.sidecar_error is None
    side = json.loads(result.sidecar.read_text())
    assert side["stop_reason"] == "disk full" and side["seconds_discarded"] == pytest.approx(1.0)
    _assert_clips_intact(out, side, SR)


def test_library_start_check_raises_disk_full(small_disk, inputs):
    plan = RecordingPlan(device_id="dev", seconds=60.0, clip_seconds=10.0, min_free_bytes=10 * 1_000_000)
    with pytest.raises(DiskFullError, match="not enough free disk space"):
        record_clips(WavFileSource(inputs / "mono300.wav"), small_disk / "rec", plan)


# -- bad inputs ---------------------------------------------------------------------------------


def test_microphone_without_a_device_is_one_clear_line(tmp_path):
    listing = edge_asd("devices", timeout=60)
    assert listing.returncode == 0, listing.stderr
    if "no audio input devices" in listing.stdout:
        spec, needle = "mic", "no audio input devices found"
    else:  # a machine with a sound card: ask for one that cannot exist
        spec, needle = "mic:nosuchdevice", "no input device named like 'nosuchdevice'"
    out = tmp_path / "rec"
    _assert_one_line_error(edge_asd("record", out, "--input", spec, "--seconds", "20"), needle)
    assert not out.exists()  # nothing is created before the device is there


def test_missing_input_path_is_one_clear_line(tmp_path):
    missing = tmp_path / "nowhere" / "clip.wav"
    result = edge_asd("record", tmp_path / "rec", "--input", missing)
    _assert_one_line_error(result, str(missing), "no such file or folder")


def test_wrong_channel_count_for_the_profile_is_one_clear_line(tmp_path, inputs):
    out = tmp_path / "rec"
    # The built-in profile captures one channel; the file has eight.
    result = edge_asd("record", out, "--input", inputs / "array8.wav", "--seconds", "20")
    _assert_one_line_error(result, "array8.wav", "8 channel(s)", "1 are")
    assert not out.exists()


def test_seconds_shorter_than_a_clip_is_one_clear_line(tmp_path, inputs):
    result = edge_asd("record", tmp_path / "rec", "--input", inputs / "mono300.wav", "--seconds", "5")
    _assert_one_line_error(result, "shorter than one 10 s clip")


# -- signals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_keeps_finished_clips_and_drops_the_partial_one(tmp_path, inputs, sig):
    # A looping file source never ends by itself, like a microphone.
    profile = tmp_path / "loop.toml"
    profile.write_text(f'[device]\nid = "loop"\n[input]\nkind = "wav"\npath = "{inputs / "mono300.wav"}"\n'
                       "channels = 1\nloop = true\n", encoding="utf-8")
    out = tmp_path / "rec"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_asd", "record", str(out), "--config", str(profile), "--seconds", "1000000",
         "--clip-seconds", "1", "--min-free-mb", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=device_env(), cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            sides = _sidecars(out) if (out / "sessions").is_dir() else []
            if sides and len(sides[0]["clips"]) >= 3:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the recorder wrote no clips within 60 s")
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    (side,) = _sidecars(out)
    assert side["stop_reason"] == "interrupted" and side["end_time"] is not None
    assert len(side["clips"]) >= 3
    _assert_clips_intact(out, side, SR)


# -- the device never loads TensorFlow ----------------------------------------------------------


def test_record_never_imports_tensorflow(tmp_path, inputs):
    code = (
        "import sys\n"
        "from edge_asd.cli import main\n"
        "try:\n"
        f"    main(['record', {str(tmp_path / 'rec')!r}, '--input', {str(inputs / 'mono300.wav')!r},"
        " '--seconds', '20', '--min-free-mb', '0'])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "print('tensorflow' in sys.modules, 'tflite_runtime' in sys.modules, 'ai_edge_litert' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=device_env(), cwd=REPO,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False", "False"]
    assert len(list((tmp_path / "rec" / "normal").glob("*.wav"))) == 2
