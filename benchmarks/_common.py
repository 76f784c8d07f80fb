"""Helpers shared by the benchmark scripts: one-thread set-up, timing, test clips."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

from trainer import quiet_tensorflow_logs

# One thread everywhere, set before numpy / BLAS / TensorFlow are imported by the caller, so the
# figures are per core and comparable between machines.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
    os.environ.setdefault(_var, "1")
quiet_tensorflow_logs()

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EDGE_ASD_SHARED_DATA", REPO.parent / "shared" / "data"))


def timeit(fn: Callable[[], object], *, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median and p90 wall time of ``fn`` in milliseconds over ``repeats`` warm runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {"median_ms": statistics.median(times), "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))], "runs": repeats}


def machine() -> dict[str, object]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"host": platform.node(), "nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "machine": platform.machine()}


def clip_8ch_10s() -> tuple[np.ndarray, str]:
    """A real 10 s 8-channel MIMII clip when ../shared/data is present, else 8 channels of noise."""
    from edge_asd.audio import read_wav

    real = SHARED_DATA / "mimii-samples" / "valve" / "id_00" / "normal" / "00000000.wav"
    if real.is_file():
        return read_wav(real, channels=8)[0], f"real MIMII {real.name} (8 ch, 10 s)"
    rng = np.random.default_rng(0)
    return (0.05 * rng.standard_normal((160000, 8))).astype(np.float32), "synthetic noise (8 ch, 10 s)"


def clip_mono_12s() -> tuple[np.ndarray, str]:
    """A real 12 s mono DCASE 2023 ToyCar clip when present, else mono noise."""
    from edge_asd.audio import read_wav

    folder = SHARED_DATA / "dcase2023-toycar" / "ToyCar" / "test"
    real = sorted(folder.glob("*.wav"))[:1] if folder.is_dir() else []
    if real:
        return read_wav(real[0], channels=1)[0], f"real ToyCar {real[0].name[:40]}… (1 ch, 12 s)"
    rng = np.random.default_rng(1)
    return (0.05 * rng.standard_normal((192000, 1))).astype(np.float32), "synthetic noise (1 ch, 12 s)"


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def comma_list(text: str, name: str) -> list[str]:
    """The items of a comma-separated option value; a click error naming the option when empty."""
    import click

    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise click.BadParameter("give at least one", param_hint=name)
    return items
