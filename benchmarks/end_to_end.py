"""End to end: the device pipeline against the pipeline a seed author would write, and the
device process's memory and import time.

- device: the real service (``edge_asd.service.run_service``: wav folder source → streaming front
  end → int8 detector → alarm logic → SQLite + stdout sinks), in this process pinned to one core;
- reference: clip by clip, ``librosa`` log-Mel on ``librosa.to_mono`` + the float Keras model's
  ``predict`` on the clip's windows, the way the seeds' notebooks score a clip;
- memory: peak RSS of ``python -m edge_asd run`` on the same folder, read by the parent with
  ``wait4`` (from outside the process); import time of the device modules in a fresh interpreter.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._common import REPO

import numpy as np  # noqa: E402

DEVICE_MODULES = "edge_asd.service, edge_asd.scoring.detector, edge_asd.scoring.runtime, edge_asd.audio.sources, edge_asd.events, edge_asd.cli"


def device_toml(work: Path, *, bundle: Path, folder: Path, channels: int) -> Path:
    """A device profile replaying ``folder`` as fast as possible into a scratch store."""
    path = work / "bench-device.toml"
    path.write_text(f"""
[device]
id = "bench"
bundle = "{bundle}"
num_threads = 1

[input]
kind = "folder"
path = "{folder}"
channels = {channels}
realtime = false

[alarm]
period_s = 10.0

[store]
path = "{work / 'bench-events.sqlite'}"
""")
    return path


def device_rtf(toml: Path) -> dict[str, float]:
    """Wall time of the whole service run over the folder (after start-up), per second of audio."""
    from edge_asd.config import load_config
    from edge_asd.service import run_service

    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(affinity)})  # one core for capture and processing alike
    started: dict[str, Any] = {}
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            run_service(load_config(toml), install_signals=False,
                        on_ready=lambda svc: started.update(t0=time.perf_counter(), svc=svc))
        elapsed = time.perf_counter() - started["t0"]
    finally:
        os.sched_setaffinity(0, affinity)
    svc = started["svc"]
    audio_s = svc.stats.audio_s(svc.detector.config.sr)
    return {"audio_s": audio_s, "wall_s": elapsed, "real_time_factor": elapsed / audio_s,
            "processing_rtf": svc.stats.real_time_factor(svc.detector.config.sr)}


def reference_rtf(keras_model: Any, bundle_path: Path, clips: list[Path]) -> dict[str, float]:
    """librosa features + float Keras ``predict``, clip by clip, one core."""
    import librosa

    from edge_asd.audio import read_wav
    from edge_asd.scoring.bundle import read_bundle
    from edge_asd.scoring.detector import window_view

    bundle = read_bundle(bundle_path)
    cfg, win = bundle.features, bundle.window
    mean, inv_std = bundle.normalization.arrays()
    shape = tuple(bundle.model.input_shape[1:])
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(affinity)})
    audio_s = 0.0
    try:
        t0 = time.perf_counter()
        for clip in clips:
            x, sr = read_wav(clip)
            y = librosa.to_mono(x.T)
            mel = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=cfg.n_fft, hop_length=cfg.hop_length, n_mels=cfg.n_mels,
                                                 fmin=cfg.fmin, fmax=cfg.fmax_hz, htk=False, norm="slaney")
            frames = (librosa.power_to_db(mel, ref=1.0, amin=cfg.amin, top_db=None).T - mean) * inv_std
            windows = np.ascontiguousarray(window_view(frames, n_frames=win.n_frames, hop_frames=win.hop_frames))
            pred = keras_model.predict(windows.reshape(-1, *shape), verbose=0)
            float(((pred.reshape(len(windows), -1) - windows.reshape(len(windows), -1)) ** 2).mean())
            audio_s += x.shape[0] / sr
        elapsed = time.perf_counter() - t0
    finally:
        os.sched_setaffinity(0, affinity)
    return {"audio_s": audio_s, "wall_s": elapsed, "real_time_factor": elapsed / audio_s}


# The measured process must not be forked from this one: a forked child's ru_maxrss counts the
# parent's pages it shared before exec (TensorFlow's gigabyte here). A small launcher forks it.
_LAUNCHER = """
import json, os, sys
pid = os.fork()
if pid == 0:
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    os.execv(sys.executable, [sys.executable, "-m", "edge_asd", "run", "--config", sys.argv[1], "--fast"])
_, status, usage = os.wait4(pid, 0)
print(json.dumps({"returncode": os.waitstatus_to_exitcode(status), "maxrss_kb": usage.ru_maxrss}))
"""


def device_process_memory(toml: Path) -> dict[str, float]:
    """Peak RSS (MB) of ``python -m edge_asd run`` replaying the folder, read by its parent with
    ``wait4`` (from outside the process)."""
    run = subprocess.run([sys.executable, "-c", _LAUNCHER, str(toml)], capture_output=True, text=True, cwd=REPO, timeout=600)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    if result["returncode"] != 0:
        raise RuntimeError(f"edge-asd run failed ({result['returncode']}): {run.stderr[-500:]}")
    return {"peak_rss_mb": result["maxrss_kb"] / 1024}


def device_import_time(repeats: int = 3) -> dict[str, Any]:
    """Seconds to import the device modules in a fresh interpreter (best of ``repeats``), and
    whether TensorFlow got imported along (it must not)."""
    code = (f"import json, sys, time; t = time.perf_counter(); import {DEVICE_MODULES}; "
            "print(json.dumps({'s': time.perf_counter() - t, 'tf': 'tensorflow' in sys.modules}))")
    runs = [json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout)
            for _ in range(repeats)]
    return {"import_s": min(r["s"] for r in runs), "imports_tensorflow": any(r["tf"] for r in runs)}
