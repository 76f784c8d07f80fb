"""The 4-channel stream with sensor faults and a machine switched off, then a real anomaly: the
audio of the service test in ``tests/test_signal_quality.py`` and of its device-path twin in
``tests/test_capture_alsa.py``, built here once so both play exactly the same samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.device_helpers import SR, machine_clips

CHANNELS = 4
"""A close microphone array: the dead-channel check needs several channels."""

MONITORS = """
[signal]
fault_window_s = 1.0
clear_after_s = 1.0

[machine]
idle_after_s = 1.0
running_after_s = 1.0
stop_is_alarm = true
"""
"""The ``[signal]`` and ``[machine]`` sections the stream is run with: 1 s debounces, so that every
stretch of the stream (4 s and more) raises its fault and clears it."""

EXPECTED_EVENTS = [
    ("sensor_fault", "silence"), ("sensor_ok", "silence"),
    ("sensor_fault", "clipping"), ("sensor_ok", "clipping"),
    ("sensor_fault", "dead_channel"), ("sensor_ok", "dead_channel"),
    ("machine_idle", None), ("machine_running", None),
    ("onset", None), ("back_to_normal", None),
]
"""``(kind, details.reason)`` of the events the stream gives, in order, with :data:`MONITORS`."""

FAULT_LABELS = ("silence", "clipping", "dead_channel", "machine_off")
"""The stretches that are not the machine's sound, in stream order (one fault/ok pair each)."""


def noise(rng: np.random.Generator, n: int, ch: int, dbfs: float) -> np.ndarray:
    """White noise at ``dbfs`` RMS, shape ``(n, ch)``."""
    return (10 ** (dbfs / 20) * rng.standard_normal((n, ch))).astype(np.float32)


def write_stream(folder: Path, clips_dir: Path) -> list[tuple[str, float, float]]:
    """The stream as 16-bit wav files in ``folder`` (played in name order); returns the stretches
    ``(label, start_s, end_s)``. Every stretch is a whole number of 0.1 s blocks."""
    from edge_asd.audio import read_wav, write_wav

    labels = ["normal"] * 15 + ["anomaly"] * 3 + ["normal"] * 3
    paths = machine_clips(clips_dir, labels, channels=CHANNELS)
    clips = iter(read_wav(p)[0] for p in paths)
    rng = np.random.default_rng(7)
    plan = [("normal", next(clips)), ("normal", next(clips)), ("normal", next(clips)),
            ("silence", np.zeros((4 * SR, CHANNELS), np.float32)),  # a dead microphone (digital silence)
            ("normal", next(clips)), ("normal", next(clips)),
            ("clipping", np.clip(np.concatenate([next(clips), next(clips)]) * 20, -1, 1)),  # gain far too high
            ("normal", next(clips)), ("normal", next(clips))]
    dead = np.concatenate([next(clips), next(clips)])
    dead[:, 1] = 0.0  # one capsule of the array dies; the machine is heard on the other three
    plan += [("dead_channel", dead), ("normal", next(clips)), ("normal", next(clips)),
             ("machine_off", noise(rng, 6 * SR, CHANNELS, -60)),  # the room's noise floor: quiet, but not silence
             ("normal", next(clips)), ("normal", next(clips))]
    plan += list(zip(labels[-6:], clips))  # the clips left: 3 anomalous, 3 normal
    folder.mkdir(parents=True)
    stretches, t = [], 0.0
    for k, (label, x) in enumerate(plan):
        write_wav(folder / f"{k:03d}_{label}.wav", x, SR)
        stretches.append((label, t, t + x.shape[0] / SR))
        t += x.shape[0] / SR
    return stretches


def stream_files(folder: Path) -> list[Path]:
    """The stream's wav files in the order the service's folder input plays them."""
    return sorted(folder.glob("*.wav"))
