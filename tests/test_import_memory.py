"""The device process stays small: what ``edge-asd run`` imports, and its peak memory.

A fresh interpreter builds the device path (the modules of ``edge-asd run``, the LiteRT
interpreter class, a wav file read, the numba kernels of both feature kinds run) and reports its
peak RSS and ``sys.modules``. Measured with ``python -m benchmarks.import_memory`` (issue 19): the
whole ``edge-asd run`` peaked at 185 MB before its imports were trimmed and 177.5 MB after; this
probe, without a model loaded, at 172.7 MB (x86-64, numba 0.68, scipy 1.17, numpy 2.4).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from edge_asd.audio import write_wav

REPO = Path(__file__).resolve().parents[1]

PEAK_MB_MAX = 190.0
"""Bound on the probe's warm peak RSS, MB: 17 MB above the 172.7 MB measured, so library updates do
not flap it, while importing scipy.stats or scipy.signal (+40-60 MB) or TensorFlow (+300 MB) fails."""

# Never on the device path: the trainer's libraries, and the scipy submodules it no longer imports
# (scipy.fft and scipy.special: the front end uses numpy's FFT; scipy.io, scipy.sparse: wav files are
# read by edge_asd.audio.wav and written, off the device path, by scipy.io.wavfile; scipy.signal
# only when audio is resampled; scipy.stats only by calibration). scipy.linalg is expected: numba
# imports it to look for BLAS when its CPU target is first set up.
FORBIDDEN = ("tensorflow", "tf_keras", "keras", "sklearn", "matplotlib", "librosa", "trainer", "pyaudio",
             "scipy.fft", "scipy.special", "scipy.io", "scipy.sparse", "scipy.signal", "scipy.stats")

PROBE = r"""
import json, resource, sys
import edge_asd.bundle, edge_asd.config
light = sorted(m for m in ("numba", "llvmlite", "ai_edge_litert") if m in sys.modules)
import numpy as np
import edge_asd.cli, edge_asd.service, edge_asd.detector, edge_asd.runtime, edge_asd.audio.sources, edge_asd.sinks
import edge_asd.machine_state, edge_asd.signal_quality
from edge_asd.runtime import load_interpreter_class
load_interpreter_class("litert")
from edge_asd.audio import read_wav
x, sr = read_wav(sys.argv[1])
from edge_asd.frontend import FeatureConfig, StreamingFrontend
for kind in ("logmel", "ims"):
    cfg = FeatureConfig(kind=kind, sr=sr, n_fft=512, hop_length=256, n_mels=32, n_sinc=8)
    assert StreamingFrontend(cfg, n_channels=2).push(x).shape[1] == cfg.n_features
print(json.dumps({"light": light, "modules": sorted(sys.modules),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _probe(wav: Path, numba_cache: Path) -> dict:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(numba_cache)}
    env.pop("NUMBA_DISABLE_JIT", None)
    # Through a small shell that forks the interpreter: Linux carries a process's peak RSS across
    # exec, so a child forked straight from pytest (TensorFlow loaded) would report pytest's peak.
    run = subprocess.run(["/bin/sh", "-c", '"$@"; exit $?', "sh", sys.executable, "-c", PROBE, str(wav)],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_device_path_imports_and_peak_memory(tmp_path):
    wav = tmp_path / "two-channels.wav"
    t = np.arange(16000) / 16000
    write_wav(wav, np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.1 * np.sin(2 * np.pi * 97 * t)], axis=1), 16000)
    cache = tmp_path / "numba-cache"
    cold = _probe(wav, cache)  # compiles the kernels into the private cache
    warm = _probe(wav, cache)  # loads them from it, as every start but the first does
    assert any(cache.rglob("*.nbi")), "the numba kernels were not cached"
    for result in (cold, warm):
        modules = set(result["modules"])
        # Reading a bundle or a config (edge-asd status, bundle checks) does not load numba or LiteRT.
        assert result["light"] == []
        imported = sorted(m for m in FORBIDDEN if m in modules)
        assert imported == [], f"the device path imports {imported}"
        # The probe did build the device path: otherwise the bound below would prove nothing.
        assert {"numba", "ai_edge_litert.interpreter", "edge_asd.frontend.kernels", "edge_asd.service"} <= modules
    assert warm["peak_mb"] < PEAK_MB_MAX, f"device path peak RSS {warm['peak_mb']:.1f} MB >= {PEAK_MB_MAX} MB"
