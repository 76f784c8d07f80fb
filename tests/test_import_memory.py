"""The device process stays small: what ``edge-asd run`` imports, and its peak memory.

A fresh interpreter builds the device path (the modules of ``edge-asd run``, the LiteRT
interpreter class, a wav file read, the front end's kernels run for both feature kinds) and reports
its peak RSS, anonymous memory and ``sys.modules``. With the kernels compiled ahead of time
(``edge_asd.frontend.aot``, built by ``scripts/setup``) the process never loads numba or LLVM: this
probe peaked at 61 MB, against 171–224 MB with numba's JIT kernels (the spread is the LLVM
library's file-backed pages, which depend on the kernel's page cache; its anonymous memory is a
steady 69 MB). ``python -m benchmarks.import_memory`` measures the whole ``edge-asd run``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_asd.audio import write_wav
from edge_asd.frontend.aot import compiled_path

REPO = Path(__file__).resolve().parents[1]

PEAK_MB_MAX = 100.0
"""Bound on the probe's peak RSS with the ahead-of-time kernels, MB: 61 MB measured, so library
updates and the page cache do not flap it, while loading numba's LLVM (171 MB and more) fails."""

ANON_MB_MAX = 80.0
"""Bound on the probe's anonymous memory (``RssAnon``) with numba's JIT kernels, MB: 69.1 MB
measured, while importing scipy.stats as well (98 MB) fails. Anonymous memory, not the peak RSS:
on the JIT path the RSS also counts LLVM's file-backed pages (its library is 170 MB on disk), and
how many of those a process maps depends on the kernel's page cache, not on the program (170.7 MB
in a venv installed weeks ago, 222.3 MB in one installed minutes before, the same wheels)."""

# Never on the device path: the trainer's libraries, and the scipy submodules it no longer imports
# (scipy.fft and scipy.special: the front end uses numpy's FFT; scipy.io, scipy.sparse: wav files are
# read by edge_asd.audio.wav and written, off the device path, by scipy.io.wavfile; scipy.signal
# only when audio is resampled; scipy.stats only by calibration). On the JIT path numba imports
# scipy.linalg to look for BLAS when its CPU target is first set up.
FORBIDDEN = ("tensorflow", "tf_keras", "keras", "sklearn", "matplotlib", "librosa", "trainer", "pyaudio",
             "scipy.fft", "scipy.special", "scipy.io", "scipy.sparse", "scipy.signal", "scipy.stats")

PROBE = r"""
import json, resource, sys
import edge_asd.scoring.bundle, edge_asd.config
light = sorted(m for m in ("numba", "llvmlite", "ai_edge_litert") if m in sys.modules)
import numpy as np
import edge_asd.cli, edge_asd.service, edge_asd.scoring.detector, edge_asd.scoring.runtime, edge_asd.audio.sources, edge_asd.events
import edge_asd.decision.machine_state, edge_asd.decision.signal_quality
from edge_asd.scoring.runtime import load_interpreter_class
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


def _probe(wav: Path, numba_cache: Path, *extra_import: str, jit: bool = False) -> dict:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(numba_cache), "EDGE_ASD_KERNELS": "jit" if jit else "auto"}
    env.pop("NUMBA_DISABLE_JIT", None)
    # Through a small shell that forks the interpreter: Linux carries a process's peak RSS across
    # exec, so a child forked straight from pytest (TensorFlow loaded) would report pytest's peak.
    run = subprocess.run(["/bin/sh", "-c", '"$@"; exit $?', "sh", sys.executable, "-c", PROBE, str(wav), *extra_import],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def _check_device_path(result: dict, *, kernels: str) -> None:
    modules = set(result["modules"])
    # Reading a bundle or a config (edge-asd status, bundle checks) does not load numba or LiteRT.
    assert result["light"] == []
    imported = sorted(m for m in FORBIDDEN if m in modules)
    assert imported == [], f"the device path imports {imported}"
    # The probe did build the device path: otherwise the bounds below would prove nothing.
    assert {"ai_edge_litert.interpreter", "edge_asd.frontend.streaming", "edge_asd.service", kernels} <= modules


@pytest.fixture
def wav(tmp_path) -> Path:
    path = tmp_path / "two-channels.wav"
    t = np.arange(16000) / 16000
    write_wav(path, np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.1 * np.sin(2 * np.pi * 97 * t)], axis=1), 16000)
    return path


def test_device_path_with_the_compiled_kernels_never_loads_numba(wav, tmp_path):
    assert compiled_path().is_file(), (f"{compiled_path()} is absent: scripts/setup builds it "
                                       "(python -m edge_asd.frontend.aot; needs gcc)")
    result = _probe(wav, tmp_path / "numba-cache")
    _check_device_path(result, kernels=compiled_path().name.split(".")[0])
    assert not any(m.split(".")[0] in ("numba", "llvmlite") for m in result["modules"])
    assert result["peak_mb"] < PEAK_MB_MAX, f"device path peak RSS {result['peak_mb']:.1f} MB >= {PEAK_MB_MAX} MB"
    # The bound bites: the same path with numba's JIT kernels (LLVM loaded) is over it.
    jit = _probe(wav, tmp_path / "numba-cache", jit=True)
    assert jit["peak_mb"] >= PEAK_MB_MAX, f"the JIT kernels peaked at only {jit['peak_mb']:.1f} MB"


def test_device_path_with_the_jit_kernels(wav, tmp_path):
    cache = tmp_path / "numba-cache"
    cold = _probe(wav, cache, jit=True)  # compiles the kernels into the private cache
    warm = _probe(wav, cache, jit=True)  # loads them from it, as every start but the first does
    assert any(cache.rglob("*.nbi")), "the numba kernels were not cached"
    for result in (cold, warm):
        _check_device_path(result, kernels="edge_asd.frontend.kernels")
    assert warm["anon_mb"] < ANON_MB_MAX, f"device path anonymous memory {warm['anon_mb']:.1f} MB >= {ANON_MB_MAX} MB"
    # The bound bites: the same path with scipy.stats imported as well is over it.
    heavier = _probe(wav, cache, "scipy.stats", jit=True)
    assert heavier["anon_mb"] >= ANON_MB_MAX, f"scipy.stats added only {heavier['anon_mb'] - warm['anon_mb']:.1f} MB"
