"""The device process stays small: what ``edge-asd run`` imports, and its peak memory.

A fresh interpreter builds the device path (the modules of ``edge-asd run``, the LiteRT
interpreter class, a wav file read, the numba kernels of both feature kinds run) and reports its
peak RSS and ``sys.modules``. Measured with ``python -m benchmarks.import_memory`` (issue 19): the
whole ``edge-asd run`` peaked at 185 MB before its imports were trimmed and 177.5 MB after; this
probe, without a model loaded, at 172.7 MB (x86-64, numba 0.68, scipy 1.17, numpy 2.4), with 69 MB of
anonymous memory (see :data:`ANON_MB_MAX` for why the test bounds that).
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

ANON_MB_MAX = 80.0
"""Bound on the probe's anonymous memory (``RssAnon``) once the device path is built, MB: 69.1 MB
measured, so library updates do not flap it, while importing scipy.stats (98 MB), scipy.signal
(101 MB) or TensorFlow (298 MB) fails. Anonymous memory, not the peak RSS: the RSS also counts the
file-backed pages of the shared libraries (LLVM's alone is 170 MB on disk), and how many of those
a process maps depends on the kernel's page cache, not on the program. The same probe peaked at
170.7 MB in a venv installed weeks ago and at 222.3 MB in one installed minutes before, with the same
wheels, the same modules and the same 69.1 MB of anonymous memory."""

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
if len(sys.argv) > 2:
    __import__(sys.argv[2])  # the regression check: a module the device path must not pay for
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(json.dumps({"light": light, "modules": sorted(sys.modules),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "anon_mb": int(status["RssAnon"].split()[0]) / 1024}))
"""


def _probe(wav: Path, numba_cache: Path, *extra_import: str) -> dict:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(numba_cache)}
    env.pop("NUMBA_DISABLE_JIT", None)
    # Through a small shell that forks the interpreter: Linux carries a process's peak RSS across
    # exec, so a child forked straight from pytest (TensorFlow loaded) would report pytest's peak.
    run = subprocess.run(["/bin/sh", "-c", '"$@"; exit $?', "sh", sys.executable, "-c", PROBE, str(wav), *extra_import],
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
    assert warm["anon_mb"] < ANON_MB_MAX, f"device path anonymous memory {warm['anon_mb']:.1f} MB >= {ANON_MB_MAX} MB"
    # The bound bites: the same path with scipy.stats imported as well is over it.
    heavier = _probe(wav, cache, "scipy.stats")
    assert heavier["anon_mb"] >= ANON_MB_MAX, f"scipy.stats added only {heavier['anon_mb'] - warm['anon_mb']:.1f} MB"
