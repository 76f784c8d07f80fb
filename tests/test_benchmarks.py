"""``python -m benchmarks --quick`` runs end to end and produces every figure as a number.

No thresholds on the figures (CI machines are noisy); a missing or non-numeric figure fails.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from benchmarks.__main__ import missing_figures

REPO = Path(__file__).resolve().parents[1]


def test_missing_figures_finds_holes():
    assert missing_figures({"a": 1.0, "b": {"c": 2}}) == []
    assert missing_figures({"a": float("nan"), "b": [None]}) == ["a: missing", "b[0]: missing"]
    assert missing_figures({"x": {"tflite_runtime_int8": {"unavailable": "no wheel"}}}) == []
    assert missing_figures({"litert_int8": {"unavailable": "broken"}}) == ["litert_int8: unavailable (broken)"]


def test_quick_benchmark_produces_every_figure():
    run = subprocess.run([sys.executable, "-m", "benchmarks", "--quick"], capture_output=True, text=True, cwd=REPO, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    results = sorted((REPO / "benchmarks" / "results").glob("*-quick.json"), key=lambda p: p.stat().st_mtime)
    result = json.loads(results[-1].read_text())
    assert missing_figures({k: v for k, v in result.items() if k != "goals"}) == []
    assert set(result["inference"]) == {"dense-ae", "conv-ae", "lstm-ae", "cnn-lstm"}
    for row in result["inference"].values():
        assert row["litert_int8"]["median_ms"] > 0 and row["keras"]["median_ms"] > 0
        assert 0 < row["int8_kb"] < row["float_kb"] * 1.5
    e2e = result["end_to_end"]
    assert e2e["device"]["audio_s"] == e2e["reference"]["audio_s"] > 0
    assert math.isclose(e2e["speedup"], e2e["reference"]["wall_s"] / e2e["device"]["wall_s"])
    assert result["memory"]["peak_rss_mb"] > 10 and result["memory"]["imports_tensorflow"] is False
    assert len(result["quality"]["rows"]) == 4
    assert "Device pipeline is" in run.stdout and "| dense-ae |" in run.stdout


def _toycar_row(model: str, seed: int, auc_int8: float, delta: float = -0.002) -> dict:
    return {"model": model, "features": "logmel", "seed": seed, "auc_float": auc_int8 - delta, "pauc_float": 0.5,
            "auc_int8": auc_int8, "pauc_int8": 0.5, "auc_int8_minus_float": delta, "int8_kb": 50.0,
            "train_time_s": 1.0, "epochs_run": 3}


def test_toycar_comparison_uses_the_mean_over_seeds():
    from benchmarks.toycar import baseline_comparison, seed_table, table

    # conv-ae wins with seed 0 alone, loses on the mean over three seeds.
    rows = [_toycar_row("dense-ae", s, a) for s, a in enumerate((0.62, 0.66, 0.67))]
    rows += [_toycar_row("conv-ae", s, a, delta) for s, a, delta in ((0, 0.63, 0.004), (1, 0.61, -0.011), (2, 0.62, 0.0))]
    assert baseline_comparison(rows[:1] + rows[3:4])[0].startswith("- logmel: best int8 conv-ae AUC 0.6300 beats")
    lines = baseline_comparison(rows)
    assert lines[0] == "- logmel: best int8 conv-ae AUC 0.6200 ± 0.0100 does not beat the in-run dense-ae int8 AUC 0.6500 ± 0.0265"
    assert lines[-1] == "- max |int8 − float| AUC over all models: 0.0110"
    summary = seed_table(rows).splitlines()
    assert summary[2].startswith("| dense-ae | logmel | 3 |") and "0.6500 ± 0.0265" in summary[2]
    assert summary[3].endswith("| -0.0110 |")
    assert "| seed |" in table(rows) and "| seed |" not in table(rows[:1])
