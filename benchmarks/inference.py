"""Per-window inference latency of every model kind: int8 and float TFLite through LiteRT and
through tflite_runtime (its own numpy<2 virtual environment), and the Keras model in TensorFlow.

Used by ``python -m benchmarks``; one thread everywhere, median and p90 of ``repeats`` runs.
"""

from __future__ import annotations

import json
import subprocess
import venv
from pathlib import Path
from typing import Any

from benchmarks._common import REPO, timeit

import numpy as np  # noqa: E402

TFLITE_RUNTIME_VENV = REPO / "benchmarks" / "work" / "tflite-runtime-venv"
CHILD = Path(__file__).with_name("latency_child.py")


def ensure_tflite_runtime_venv() -> tuple[Path | None, str]:
    """A virtual environment with tflite-runtime and numpy<2 (created on first use).

    Returns ``(python, "")`` or ``(None, reason)`` when it cannot be made (no wheel for this
    Python or machine, no network to PyPI): the figure is then reported as unavailable.
    """
    python = TFLITE_RUNTIME_VENV / "bin" / "python"
    probe = [str(python), "-c", "import tflite_runtime.interpreter, numpy; assert int(numpy.__version__[0]) < 2"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python, ""
    try:
        venv.create(TFLITE_RUNTIME_VENV, with_pip=True, clear=True)
        pip = subprocess.run([str(python), "-m", "pip", "install", "-q", "tflite-runtime", "numpy<2"],
                             capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"could not create {TFLITE_RUNTIME_VENV}: {exc}"
    if pip.returncode != 0:
        last = (pip.stderr.strip().splitlines() or ["pip failed"])[-1]
        return None, f"pip install tflite-runtime 'numpy<2' failed: {last}"
    return python, ""


def tflite_runtime_latency(paths: list[Path], *, repeats: int) -> dict[str, Any]:
    """``{str(path): timing}`` through tflite_runtime, or ``{"unavailable": reason}``."""
    python, reason = ensure_tflite_runtime_venv()
    if python is None:
        return {"unavailable": reason}
    run = subprocess.run([str(python), str(CHILD), "tflite_runtime", str(repeats), *map(str, paths)],
                         capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        return {"unavailable": f"tflite_runtime failed: {run.stderr.strip()[-300:]}"}
    return json.loads(run.stdout.strip().splitlines()[-1])


def litert_latency(path: Path, *, repeats: int) -> dict[str, float]:
    """One model through LiteRT, as the device calls it (``edge_asd.scoring.runtime.TFLiteModel``)."""
    from edge_asd.scoring.runtime import TFLiteModel

    model = TFLiteModel(path, num_threads=1, runtime="litert")
    x = np.random.default_rng(0).standard_normal(model.input_shape).astype(np.float32)
    return timeit(lambda: model(x), repeats=repeats, warmup=5)


def keras_latency(model: Any, input_shape: tuple[int, ...], *, repeats: int) -> dict[str, float]:
    """One window through the Keras model (a direct call, not ``predict``: no per-call data pipeline)."""
    x = np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)
    return timeit(lambda: model(x, training=False), repeats=repeats, warmup=5)


def run(models: dict[str, dict[str, Any]], *, repeats: int) -> dict[str, dict[str, Any]]:
    """Latency per kind. ``models``: ``{kind: {"bundle": Path, "keras": keras.Model}}``."""
    out: dict[str, dict[str, Any]] = {}
    files = {(kind, which): m["bundle"] / f"model_{which}.tflite" for kind, m in models.items() for which in ("int8", "float")}
    tfl = tflite_runtime_latency(list(files.values()), repeats=repeats)
    for kind, m in models.items():
        from edge_asd.scoring.bundle import read_bundle

        shape = tuple(read_bundle(m["bundle"]).model.input_shape)
        row: dict[str, Any] = {}
        for which in ("int8", "float"):
            row[f"litert_{which}"] = litert_latency(files[(kind, which)], repeats=repeats)
            row[f"tflite_runtime_{which}"] = tfl.get(str(files[(kind, which)]), {"unavailable": tfl.get("unavailable", "not measured")})
            row[f"{which}_kb"] = files[(kind, which)].stat().st_size / 1024
        row["keras"] = keras_latency(m["keras"], shape, repeats=repeats)
        out[kind] = row
    return out
