"""Memory of the device process: what each import costs, and the peak RSS of ``edge-asd run``.

    python -m benchmarks.import_memory [--before REF] [--seconds 30] [--repeats 3] [--bundle DIR]
        [--also-bundles DIR ...]   # e.g. /tmp/edge-asd-toycar-auto/seed1/candidates/*: one bundle per recipe

Every figure for two columns of the working tree: the front end's kernels compiled ahead of time
(``python -m edge_asd.frontend.aot``, as ``scripts/setup`` installs them) and numba's JIT kernels
(``EDGE_ASD_KERNELS=jit``, what a process without the compiled module runs). Four measurements,
each in fresh interpreters (``--repeats`` of them, the median is reported):

1. **Each import alone**: peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and current RSS
   (``VmRSS`` of ``/proc/self/status``) right after ``import X`` in a fresh ``python``, for the
   Python baseline, numpy, scipy and its submodules, llvmlite and numba, the TFLite runtimes, paho,
   pyaudio, click and every ``edge_asd`` module; with the scipy submodules each import pulled in.
2. **The device path in one process**, cumulative, in the order ``edge-asd run`` builds it: its
   modules imported, the bundle and LiteRT interpreter loaded, the numba kernels loaded from their
   cache by the first push of audio.
3. **``edge-asd run``** over ``--seconds`` of audio (a wav file of a synthetic machine) with a real
   bundle, its peak RSS read by the parent with ``wait4`` (from outside the process): warm (the
   numba kernels in the cache, as on every start but the first) and cold (an empty
   ``NUMBA_CACHE_DIR``: the first start compiles the kernels); and warm over one ``--long-seconds``
   file (file sources read a whole file at once, so the peak grows with the longest file).
4. **numba's share**, step by step: its import (llvmlite's LLVM library, numba's modules), then
   what the first call of a cached kernel sets up (the CPU target, the NRT runtime compiled by LLVM,
   the typing and lowering registries, which import scipy.linalg to probe for BLAS); and the same
   with ``import scipy.linalg`` made to fail, to size that probe.

With ``--before REF`` (a git commit, e.g. the one before a change) every figure is measured for
that commit's ``edge_asd`` package too (exported with ``git archive`` to a scratch folder and put
first on ``PYTHONPATH``), side by side with the working tree's. The bundle is ``--bundle`` or a
tiny conv-ae trained here in seconds (tests/bundle_factory.py; needs the ``train`` extra).
Writes ``results/import_memory.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "import_memory.md"

# Third-party modules the device process may import, in the order of the table.
THIRD_PARTY = [
    "numpy",
    "scipy",
    "scipy.fft",
    "scipy.special",
    "scipy.io.wavfile",
    "scipy.linalg",
    "scipy.signal",
    "scipy.stats",
    "llvmlite.binding",
    "numba",
    "ai_edge_litert.interpreter",
    "tflite_runtime.interpreter",
    "paho.mqtt.client",
    "pyaudio",
    "click",
]

# Printed by every probe: peak and current RSS in MB, and what got imported.
_REPORT = """
import json, resource, sys
with open("/proc/self/status") as _f:
    _rss = next(int(l.split()[1]) for l in _f if l.startswith("VmRSS:"))
_heavy = ("numba", "llvmlite", "tensorflow", "sklearn", "matplotlib", "ai_edge_litert", "tflite_runtime", "paho", "pyaudio")
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_mb": _rss / 1024,
                  "modules": len(sys.modules),
                  "scipy": sorted(m for m in sys.modules if m.startswith("scipy.") and m.count(".") == 1
                                  and not m.split(".")[1].startswith("_") and m not in ("scipy.version",)),
                  "heavy": sorted(p for p in _heavy if p in sys.modules)}))
"""

# Records [name, peak MB, RSS MB] after each step of a cumulative probe.
_STAGES = """
import json, os, resource, sys
stages = []
def stage(name):
    with open("/proc/self/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    stages.append([name, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, rss / 1024])
"""

# The device path, cumulative, as edge-asd run builds it (edge_asd.service.run_service).
_DEVICE_PATH = _STAGES + """
stage("Python")
import numpy as np
stage("+ numpy")
import edge_asd.cli, edge_asd.config, edge_asd.service, edge_asd.scoring.detector, edge_asd.audio.sources, edge_asd.events
import edge_asd.decision.machine_state, edge_asd.decision.signal_quality
stage("+ the modules of edge-asd run (edge_asd.cli, config, service, detector, audio.sources, sinks, ...)")
from edge_asd.scoring.detector import Detector
detector = Detector.from_bundle(sys.argv[1])
stage("+ the bundle and its int8 model in the LiteRT interpreter")
from edge_asd.frontend import StreamingFrontend
frontend = StreamingFrontend(detector.config, n_channels=1)
frontend.push(np.zeros((1600, 1), np.float32))
stage("+ the front end's kernels, by the first push of audio (ahead-of-time module, or numba loading its cache)")
print(json.dumps(stages))
"""

# Where numba's memory goes: its import, then what the first call of a cached kernel sets up
# (numba.core internals, used here only to split the figure). BLOCK_LINALG=1 makes
# `import scipy.linalg` fail, as if scipy were absent, to measure numba's BLAS probe.
_NUMBA_STAGES = """
import os, sys
if os.environ.get("BLOCK_LINALG") == "1":
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name == "scipy.linalg":
                raise ImportError("blocked by benchmarks.import_memory")
    sys.meta_path.insert(0, _Block())
""" + _STAGES + """
stage("Python")
import numpy
stage("+ numpy")
import llvmlite.binding
stage("+ `llvmlite.binding` (loads the LLVM shared library)")
import numba
stage("+ `numba` (its Python modules)")
from numba.core.registry import cpu_target
ctx = cpu_target.target_context
stage("+ numba's CPU target context and LLVM JIT")
from numba.core.runtime import rtsys
rtsys.initialize(ctx)
stage("+ numba's runtime (NRT), compiled by LLVM at -O3")
ctx.refresh()
stage("+ numba's typing and lowering registries (they import scipy.linalg to probe for BLAS)")
stages.append(["scipy.linalg imported", "scipy.linalg" in sys.modules, ""])
print(json.dumps(stages))
"""

# Runs edge-asd run as a child and reports its peak RSS from outside (a forked child's ru_maxrss
# would count pages shared with this parent before exec; see benchmarks/end_to_end.py).
_LAUNCHER = """
import json, os, sys
pid = os.fork()
if pid == 0:
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    os.execv(sys.executable, [sys.executable, "-m", "edge_asd"] + sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(json.dumps({"returncode": os.waitstatus_to_exitcode(status), "peak_mb": usage.ru_maxrss / 1024}))
"""

# The scipy submodules and heavy packages an edge-asd run imported, dumped at exit.
_RUN_MODULES = """
import atexit, json, runpy, sys
def dump():
    print("MODULES " + json.dumps({
        "scipy": sorted(m for m in sys.modules if m.startswith("scipy.") and m.count(".") == 1
                        and not m.split(".")[1].startswith("_") and m != "scipy.version"),
        "heavy": sorted(p for p in ("numba", "llvmlite", "tensorflow", "sklearn", "matplotlib", "ai_edge_litert",
                                    "tflite_runtime", "paho", "pyaudio") if p in sys.modules),
        "modules": len(sys.modules)}), file=sys.stderr)
atexit.register(dump)
sys.argv = ["edge_asd"] + sys.argv[1:]
runpy.run_module("edge_asd", run_name="__main__")
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Tree:
    """An ``edge_asd`` package to measure: the working tree, or a commit exported to ``root``."""

    def __init__(self, label: str, root: Path, *, work: Path, jit: bool = False) -> None:
        self.label = label
        self.root = root
        self.jit = jit  # numba's JIT kernels even where the ahead-of-time module is built
        # Each tree its own numba cache, so one tree's compiled kernels never serve the other.
        self.cache = work / ("numba-cache-" + "".join(c if c.isalnum() else "-" for c in label))
        self.cache.mkdir(parents=True, exist_ok=True)

    def env(self, **extra: str) -> dict[str, str]:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "NUMBA_CACHE_DIR": str(self.cache),
               "EDGE_ASD_KERNELS": "jit" if self.jit else "auto", **extra}
        env.pop("NOTIFY_SOCKET", None)
        env["PYTHONPATH"] = os.pathsep.join([str(self.root)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        return env

    def python(self, code: str, *args: str, **extra: str) -> subprocess.CompletedProcess:
        """Run ``python -c code args`` in a fresh interpreter.

        Through a shell that forks it: Linux carries a process's peak RSS across ``exec``, so an
        interpreter forked straight from this (large) process would report this process's peak as
        its own. The shell is small, and the ``; exit`` keeps it from exec'ing in place.
        cwd = the tree's root: ``python -c`` puts the cwd first on sys.path, before the editable install.
        """
        return subprocess.run(["/bin/sh", "-c", '"$@"; exit $?', "sh", sys.executable, "-c", code, *args],
                              capture_output=True, text=True, cwd=self.root, env=self.env(**extra), timeout=900)

    def modules(self) -> list[str]:
        """Every module of the tree's ``edge_asd`` package, by its dotted name."""
        pkg = self.root / "edge_asd"
        names = []
        for path in sorted(pkg.rglob("*.py")):
            rel = path.relative_to(self.root).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__main__":
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.append(".".join(parts))
        return names


def _median_probe(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(runs[0])
    out["peak_mb"] = statistics.median(r["peak_mb"] for r in runs)
    out["rss_mb"] = statistics.median(r["rss_mb"] for r in runs)
    return out


def import_alone(tree: Tree, module: str, repeats: int) -> dict[str, Any]:
    """Peak and current RSS (MB) after ``import module`` in fresh interpreters (median of ``repeats``)."""
    code = ("pass" if module == "" else f"import {module}") + "\n" + _REPORT
    runs = []
    for _ in range(repeats):
        run = tree.python(code)
        if run.returncode != 0:
            last = (run.stderr.strip().splitlines() or ["?"])[-1]
            return {"error": last[:160]}
        runs.append(json.loads(run.stdout.strip().splitlines()[-1]))
    return _median_probe(runs)


def device_path(tree: Tree, bundle: Path, repeats: int) -> list[list[Any]]:
    """The cumulative stages of the device path (see ``_DEVICE_PATH``), median of ``repeats``."""
    runs = []
    for _ in range(repeats):
        run = tree.python(_DEVICE_PATH, str(bundle))
        if run.returncode != 0:
            raise RuntimeError(f"{tree.label}: device path failed: {run.stderr[-1500:]}")
        runs.append(json.loads(run.stdout.strip().splitlines()[-1]))
    return [[runs[0][i][0], statistics.median(r[i][1] for r in runs), statistics.median(r[i][2] for r in runs)]
            for i in range(len(runs[0]))]


def run_args(bundle: Path, wav: Path, db: Path) -> list[str]:
    return ["run", "--bundle", str(bundle), "--input", str(wav), "--fast", "--db", str(db), "--device-id", "import-memory"]


def run_peak(tree: Tree, bundle: Path, wav: Path, work: Path, *, cold: bool = False) -> float:
    """Peak RSS (MB) of one ``edge-asd run`` over ``wav``; ``cold``: with an empty numba cache."""
    db = work / f"events-{os.getpid()}.sqlite"
    db.unlink(missing_ok=True)
    extra = {}
    if cold:
        extra["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="numba-cold-", dir=work)
    try:
        run = tree.python(_LAUNCHER, *run_args(bundle, wav, db), **extra)
    finally:
        if cold:
            shutil.rmtree(extra["NUMBA_CACHE_DIR"], ignore_errors=True)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    if result["returncode"] != 0:
        raise RuntimeError(f"{tree.label}: edge-asd run exited {result['returncode']}: {run.stderr[-1500:]}")
    _remove_store(db)
    return result["peak_mb"]


def _remove_store(db: Path) -> None:
    """The scratch event store and the files the service keeps next to it (journal, state file)."""
    for path in db.parent.glob(db.stem + ".*"):
        path.unlink(missing_ok=True)


def run_modules(tree: Tree, bundle: Path, wav: Path, work: Path) -> dict[str, Any]:
    """The scipy submodules and heavy packages one ``edge-asd run`` imported."""
    db = work / f"events-modules-{os.getpid()}.sqlite"
    db.unlink(missing_ok=True)
    run = tree.python(_RUN_MODULES, *run_args(bundle, wav, db))
    _remove_store(db)
    line = next((x for x in run.stderr.splitlines() if x.startswith("MODULES ")), None)
    if run.returncode != 0 or line is None:
        raise RuntimeError(f"{tree.label}: edge-asd run failed: {run.stderr[-1500:]}")
    return json.loads(line.split(" ", 1)[1])


def numba_stages(tree: Tree, repeats: int, *, block_linalg: bool = False) -> list[list[Any]]:
    """Where numba's memory goes (see ``_NUMBA_STAGES``), median of ``repeats``."""
    runs = []
    for _ in range(repeats):
        run = tree.python(_NUMBA_STAGES, BLOCK_LINALG="1" if block_linalg else "0")
        if run.returncode != 0:
            raise RuntimeError(f"numba stages failed: {run.stderr[-1500:]}")
        runs.append(json.loads(run.stdout.strip().splitlines()[-1]))
    out = [[runs[0][i][0], statistics.median(r[i][1] for r in runs), statistics.median(r[i][2] for r in runs)]
           for i in range(len(runs[0]) - 1)]
    return out + [runs[0][-1]]


def measure(tree: Tree, bundle: Path, wav: Path, long_wav: Path | None, work: Path, repeats: int) -> dict[str, Any]:
    log(f"[{tree.label}] warm-up run (compiles the numba kernels into {tree.cache})")
    run_peak(tree, bundle, wav, work)
    log(f"[{tree.label}] edge-asd run, warm and cold")
    warm = [run_peak(tree, bundle, wav, work) for _ in range(repeats)]
    cold = [run_peak(tree, bundle, wav, work, cold=True) for _ in range(max(1, repeats // 2))]
    long = run_peak(tree, bundle, long_wav, work) if long_wav is not None else None
    log(f"[{tree.label}] device path stages")
    stages = device_path(tree, bundle, repeats)
    log(f"[{tree.label}] imports, one fresh interpreter each")
    imports = {name: import_alone(tree, name, repeats) for name in ["", *THIRD_PARTY, *tree.modules()]}
    return {"run_warm_mb": statistics.median(warm), "run_warm_all": warm, "run_cold_mb": statistics.median(cold), "run_long_mb": long,
            "stages": stages, "imports": imports, "run_modules": run_modules(tree, bundle, wav, work)}


def make_inputs(work: Path, seconds: float, bundle: Path | None) -> tuple[Path, Path]:
    """The bundle (given, or a tiny conv-ae trained here) and a wav file of ``seconds`` of a synthetic
    machine at 16 kHz, mono."""
    sys.path.insert(0, str(REPO))
    import numpy as np

    from edge_asd.audio import write_wav
    from tests.bundle_factory import _machine_tone, make_bundle

    if bundle is None:
        bundle = work / "train" / "bundle"
        if not (bundle / "bundle.json").is_file():
            log("training a tiny conv-ae bundle (tests/bundle_factory.py)")
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
            bundle = make_bundle(work / "train")
    wav = work / f"machine-{seconds:g}s.wav"
    if not wav.is_file():
        write_wav(wav, _machine_tone(np.random.default_rng(0), seconds, 16000, anomaly=False)[:, None], 16000)
    return bundle, wav


def _mb(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}"


def _scipy(r: dict[str, Any]) -> str:
    return ", ".join(s.removeprefix("scipy.") for s in r.get("scipy", [])) or "–"


def markdown(results: dict[str, dict[str, Any]], *, seconds: float, long_seconds: float | None, numba: dict[str, list],
             also: list[dict[str, Any]], command: str, machine: str) -> str:
    labels = list(results)
    lines = [
        "# Memory of the device process: `python -m benchmarks.import_memory`",
        "",
        f"Measured {dt.date.today().isoformat()} on {machine} by `{command}`. MB = MiB; the median of "
        "fresh interpreters. Peak: `getrusage(RUSAGE_SELF).ru_maxrss`; RSS: `VmRSS` at the same moment. "
        + ("Columns: " + " and ".join(f"**{x}**" for x in labels) + "." if len(labels) > 1 else ""),
        "",
        f"## `edge-asd run`: {seconds:g} s of audio (wav file, `--fast`) with a real bundle (`--bundle`, or a tiny conv-ae trained here)",
        "",
        "Peak RSS read by the parent with `wait4`. Warm: the numba kernels in the cache (every start but "
        "the first); cold: an empty `NUMBA_CACHE_DIR`, so numba compiles the kernels (the first start). "
        "The ahead-of-time kernels use no cache: warm and cold are the same start.",
        "",
        "| | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
        "| peak RSS, warm (MB) | " + " | ".join(_mb(results[x]["run_warm_mb"]) for x in labels) + " |",
        "| peak RSS, cold (MB) | " + " | ".join(_mb(results[x]["run_cold_mb"]) for x in labels) + " |",
        *([f"| peak RSS, warm, one {long_seconds:g} s file (MB) | " + " | ".join(_mb(results[x]["run_long_mb"]) for x in labels) + " |"]
          if long_seconds else []),
        "| scipy submodules imported | " + " | ".join(", ".join(s.removeprefix("scipy.") for s in results[x]["run_modules"]["scipy"]) or "none"
                                                 for x in labels) + " |",
        "| heavy packages imported | " + " | ".join(", ".join(results[x]["run_modules"]["heavy"]) for x in labels) + " |",
        "| modules in sys.modules | " + " | ".join(str(results[x]["run_modules"]["modules"]) for x in labels) + " |",
    ]
    # Where the after column's warm peak goes, from the step tables below.
    plain, blocked = numba["plain"], numba["blocked"]
    step = {name: peak for name, peak, _ in plain[:-1]}
    names = [name for name, _, _ in plain[:-1]]

    def gain(i: int) -> float:
        return step[names[i]] - step[names[i - 1]]

    jit_label = next((x for x in labels if "numba" in results[x]["run_modules"]["heavy"]), labels[-1])
    last = results[jit_label]
    lines += [
        "",
        f"Of the {last['run_warm_mb']:.0f} MB warm peak ({jit_label}), numba takes {step[names[-1]] - step[names[1]]:.0f} MB "
        f"over numpy (section \"Where numba's share goes\"): the LLVM library llvmlite loads {gain(2):.0f}, numba's modules "
        f"{gain(3):.0f}, its CPU target {gain(4):.0f}, its runtime (NRT), compiled by LLVM at every start, {gain(5):.0f}, and its "
        f"typing and lowering registries {gain(6):.0f}, of which scipy.linalg, imported by numba only to probe for BLAS, "
        f"{step[names[6]] - blocked[6][1]:.0f}. Python and numpy take {step[names[1]]:.0f} MB; the remaining "
        f"{last['run_warm_mb'] - step[names[-1]]:.0f} MB are LiteRT with the model, edge_asd with click, sqlite3 and "
        "the other standard-library modules it imports, and the audio buffers.",
    ]
    for x in labels:
        if "numba" not in results[x]["run_modules"]["heavy"]:
            lines += ["", f"**{x}**: the front end's kernels were compiled ahead of time by numba (`python -m edge_asd.frontend.aot`, "
                      f"run by `scripts/setup` and `systemd/install.sh`), so the process imports neither numba nor LLVM: warm peak "
                      f"{results[x]['run_warm_mb']:.0f} MB, {last['run_warm_mb'] - results[x]['run_warm_mb']:.0f} MB below {jit_label}."]
    if long_seconds and last.get("run_long_mb"):
        lines += ["", f"File sources read a whole file at once: one {long_seconds:g} s file instead of {seconds:g} s raises the peak by "
                  f"{last['run_long_mb'] - last['run_warm_mb']:.0f} MB (float32 samples and their decoding). A microphone streams."]
    if also:
        lines += ["", f"Other bundles, {labels[-1]}, warm, the same {seconds:g} s file:", "",
                  "| bundle | model | features: kind n_fft / hop_length / n_mels | int8 model KB | peak RSS, warm (MB) |",
                  "|---|---|---|---|---|"]
        for b in also:
            f, model = b["manifest"].get("features", {}), b["manifest"].get("model", {})
            feats = f"{f.get('kind')} {f.get('n_fft')} / {f.get('hop_length')} / {f.get('n_mels')}"
            lines.append(f"| {b['name']} | {model.get('kind', '?')} | {feats} | {b['int8_kb']:.0f} | {_mb(b['peak_mb'])} |")
    lines += [
        "",
        "## The device path, cumulative, in one process",
        "",
        "In the order `edge-asd run` builds it; peak / RSS after each stage, MB.",
        "",
        "| stage | " + " | ".join(f"{x} peak | {x} RSS" for x in labels) + " |",
        "|---|" + "---|---|" * len(labels),
    ]
    first = results[labels[0]]["stages"]
    for i, (name, *_rest) in enumerate(first):
        cells = []
        for x in labels:
            st = results[x]["stages"]
            cells += [_mb(st[i][1]), _mb(st[i][2])] if i < len(st) else ["–", "–"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Where numba's share goes",
        "",
        "The first call of a cached kernel sets up numba's CPU target: these are its steps, taken one by one "
        "(numba internals, in the benchmark only). Peak / RSS after each, MB; the last column with "
        "`import scipy.linalg` made to fail, as if scipy were absent (numba then has no BLAS, which the "
        "front end's kernels do not use).",
        "",
        "| stage | peak | RSS | peak, scipy.linalg blocked |",
        "|---|---|---|---|",
    ]
    for i, (name, peak, rss) in enumerate(plain[:-1]):
        lines.append(f"| {name} | {_mb(peak)} | {_mb(rss)} | {_mb(blocked[i][1])} |")
    lines += [f"| scipy.linalg imported | {plain[-1][1]} | | {blocked[-1][1]} |"]
    lines += [
        "",
        "## Each import alone, in a fresh interpreter",
        "",
        "Peak / RSS after `import X` alone, MB; Δ: peak above the bare interpreter; scipy: the public scipy "
        "submodules the import pulled in. numba imports llvmlite's binding (the LLVM shared library).",
        "",
        "| import | " + " | ".join(f"{x} peak | {x} Δ | {x} scipy" for x in labels) + " |",
        "|---|" + "---|---|---|" * len(labels),
    ]
    names: list[str] = []
    for x in labels:
        names += [n for n in results[x]["imports"] if n not in names]
    for name in names:
        cells = []
        for x in labels:
            imp = results[x]["imports"]
            base = imp[""].get("peak_mb")
            r = imp.get(name)
            if r is None:
                cells += ["absent", "", ""]
            elif "error" in r:
                cells += ["fails", r["error"].replace("|", "/")[:70], ""]
            else:
                cells += [_mb(r["peak_mb"]), "" if name == "" else f"{r['peak_mb'] - base:+.1f}", _scipy(r)]
        lines.append(f"| {'(bare python)' if name == '' else '`' + name + '`'} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.import_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--before", metavar="REF", help="also measure this git commit's edge_asd package (e.g. HEAD)")
    parser.add_argument("--seconds", type=float, default=30.0, help="audio through edge-asd run, seconds (default 30)")
    parser.add_argument("--long-seconds", type=float, default=300.0,
                        help="also the peak of one run over a file this long, s (file sources read whole files; 0: skip)")
    parser.add_argument("--also-bundles", type=Path, nargs="*", default=[], metavar="DIR",
                        help="more bundles (e.g. one per recipe): the warm peak of edge-asd run with each, working tree only")
    parser.add_argument("--repeats", type=int, default=3, help="fresh interpreters per figure; the median is reported")
    parser.add_argument("--bundle", type=Path, help="model bundle (default: a tiny conv-ae trained here)")
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work" / "import_memory")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from edge_asd.frontend import aot

    if not aot.compiled_path().is_file():
        log(f"note: {aot.compiled_path()} is absent (python -m edge_asd.frontend.aot builds it); both working-tree "
            "columns use numba's JIT kernels")
    if args.bundle is not None and not (args.bundle / "bundle.json").is_file():
        parser.error(f"--bundle {args.bundle}: no bundle.json there")
    args.work.mkdir(parents=True, exist_ok=True)
    bundle, wav = make_inputs(args.work, args.seconds, args.bundle)
    long_wav = make_inputs(args.work, args.long_seconds, bundle)[1] if args.long_seconds > 0 else None
    trees = []
    if args.before:
        rev = subprocess.run(["git", "rev-parse", "--short", args.before], capture_output=True, text=True, cwd=REPO)
        if rev.returncode != 0:
            parser.error(f"--before {args.before}: not a commit of this repository ({rev.stderr.strip()})")
        root = Path(tempfile.mkdtemp(prefix="edge-asd-before-", dir=args.work))
        archive = subprocess.run(["git", "archive", args.before, "edge_asd"], capture_output=True, cwd=REPO, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
        trees.append(Tree(f"before ({rev.stdout.strip()})", root, work=args.work))
    trees.append(Tree("working tree, numba JIT kernels", REPO, work=args.work, jit=True))
    trees.append(Tree("working tree" + (", ahead-of-time kernels" if aot.compiled_path().is_file() else ""), REPO, work=args.work))
    try:
        results = {t.label: measure(t, bundle, wav, long_wav, args.work, args.repeats) for t in trees}
    finally:
        for t in trees:
            if t.root != REPO:
                shutil.rmtree(t.root, ignore_errors=True)
    also = []
    for extra in args.also_bundles:
        log(f"edge-asd run with {extra}")
        also.append({"bundle": str(extra), "name": extra.name,
                     "int8_kb": (extra / "model_int8.tflite").stat().st_size / 1024,
                     "manifest": json.loads((extra / "bundle.json").read_text()),
                     "peak_mb": statistics.median(run_peak(trees[-1], extra, wav, args.work) for _ in range(args.repeats))})
    log("numba's share, step by step")
    numba = {"plain": numba_stages(trees[-1], args.repeats), "blocked": numba_stages(trees[-1], args.repeats, block_linalg=True)}
    from benchmarks._common import machine

    m = machine()
    command = "python -m benchmarks.import_memory" + (f" --before {args.before}" if args.before else "") + (
        f" --seconds {args.seconds:g}" if args.seconds != 30.0 else "") + (
        f" --long-seconds {args.long_seconds:g}" if args.long_seconds != 300.0 else "") + (
        " --also-bundles " + " ".join(str(b) for b in args.also_bundles) if args.also_bundles else "")
    text = markdown(results, seconds=args.seconds, long_seconds=args.long_seconds or None, numba=numba, also=also, command=command,
                    machine=f"`{m['host']}` ({m['cpu']}, {m['machine']}, Python {m['python']})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    (args.work / "import_memory.json").write_text(json.dumps({"trees": results, "numba": numba, "also": also}, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
