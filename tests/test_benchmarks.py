"""``python -m benchmarks --quick`` runs end to end and produces every figure as a number.

No thresholds on the figures (CI machines are noisy); a missing or non-numeric figure fails.
"""

from __future__ import annotations

import json
import os
import math
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert lines[0] == ("- logmel: best int8 conv-ae AUC 0.6200 ± 0.0100 does not beat the in-run dense-ae int8 AUC 0.6500 ± 0.0265"
                        " (Welch's t-test over seeds: p = 0.18)")
    assert "t-test" not in baseline_comparison(rows[:1] + rows[3:4])[0]  # one seed: no spread to test against
    assert lines[-1] == "- max |int8 − float| AUC over all models: 0.0110"
    summary = seed_table(rows).splitlines()
    assert summary[2].startswith("| dense-ae | logmel | 3 |") and "0.6500 ± 0.0265" in summary[2]
    assert summary[3].endswith("| -0.0110 |")
    assert "| seed |" in table(rows) and "| seed |" not in table(rows[:1])


def test_toycar_groups_separates_group_ranking_from_detection_within_a_group(tmp_path):
    from benchmarks.toycar import read_scores
    from benchmarks.toycar_groups import (
        group_rows, lone_anomalies_above_median, markdown, mixed_group_auc, roc, sparse_summary,
    )
    from trainer.datasets import Clip

    def clip(name: str, car: str, spd: str, split: str, label: str) -> Clip:
        return Clip(path=Path(f"/data/{name}.wav"), machine="ToyCar", id="section_00", domain="source", split=split,
                    label=label, attributes={"car": car, "spd": spd})

    train = [clip(f"tr{i}", "B1", "34V", "train", "normal") for i in range(8)]
    train += [clip(f"tr{i}", "C1", "31V", "train", "normal") for i in range(8, 33)]
    # B1 34V (sparse) holds both labels; C1 31V (25 training clips) holds only anomalies.
    test = [clip("n0", "B1", "34V", "test", "normal"), clip("n1", "B1", "34V", "test", "normal"),
            clip("a0", "B1", "34V", "test", "anomaly"), clip("a1", "C1", "31V", "test", "anomaly")]
    csv_path = tmp_path / "anomaly_score_ToyCar_section_00_test.csv"
    csv_path.write_text("n0.wav,0.5\nn1.wav,0.2\na0.wav,0.3\na1.wav,0.9\n")
    scores = read_scores(csv_path)
    assert scores == {"n0.wav": 0.5, "n1.wav": 0.2, "a0.wav": 0.3, "a1.wav": 0.9}

    rows = group_rows(train, test, {"m": scores})
    assert [(r["group"], r["train"], r["normal"], r["anomaly"]) for r in rows] == [("B1 34V", 8, 2, 1), ("C1 31V", 25, 0, 1)]
    # percentiles over 4 clips: 0.2 → 0, 0.3 → 33.3, 0.5 → 66.7, 0.9 → 100
    assert rows[0]["m:normal"] == pytest.approx((66.667 + 0) / 2, abs=0.01)
    assert rows[0]["m:anomaly"] == pytest.approx(33.333, abs=0.01)
    assert rows[1]["m:normal"] is None and rows[1]["m:anomaly"] == pytest.approx(100.0)
    # The C1 anomaly's top score lifts the whole-set AUC; within B1 34V one normal outscores the anomaly.
    assert roc(test, scores) == pytest.approx(3 / 4)
    assert mixed_group_auc(test, scores) == pytest.approx(0.5)
    assert lone_anomalies_above_median(test, scores) == (1, 1)  # a1 (0.9) is above the median 0.4
    summary = sparse_summary(rows, ["m"])
    assert summary[0] == "- groups with ≤ 10 training clips hold 2 of 2 normal test clips and 1 of 2 anomalous ones"
    assert summary[1] == "- m: normal clips' mean score percentile 33 in sparse groups, – in the others"
    assert "| B1 34V | 8 | 2 | 1 | 33 / 33 |" in markdown(rows, ["m"])


def test_toycar_groups_pairs_each_run_with_its_in_run_dense_ae():
    from benchmarks.toycar_groups import baseline_run, paired_markdown, paired_rows, reference_run
    from trainer.datasets import Clip
    from trainer.metrics import auc

    assert baseline_run("lstm-ae_ims_seed2") == "dense-ae_ims_seed2"
    assert baseline_run("cnn-lstm_logmel") == "dense-ae_logmel"
    assert baseline_run("dense-ae_ims") is None and baseline_run("other_ims") is None
    assert reference_run("conv-ae_logmel_seed2") == "dense-ae_dcase_seed2" and reference_run("dense-ae_ims") == "dense-ae_dcase"
    assert reference_run("dense-ae_dcase_seed1") is None and reference_run("other_ims") is None

    labels = ["normal"] * 6 + ["anomaly"] * 6
    test = [Clip(path=Path(f"/data/c{i}.wav"), machine="ToyCar", id="section_00", domain="source", split="test", label=lab)
            for i, lab in enumerate(labels)]
    dense = {f"c{i}.wav": float(v) for i, v in enumerate([1, 2, 3, 4, 5, 6, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5])}
    lstm = {f"c{i}.wav": float(v) for i, v in enumerate([1, 2, 3, 4, 5, 6, 6.5, 7.5, 8.5, 9.5, 10.5, 11.5])}
    del lstm["c0.wav"]  # a clip one run did not score is left out of the pair
    rows = paired_rows(test, {"dense-ae_ims": dense, "lstm-ae_ims": lstm, "conv-ae_logmel": lstm})
    assert [(r["run"], r["baseline"], r["clips"]) for r in rows] == [("lstm-ae_ims", "dense-ae_ims", 11)]  # no dense-ae_logmel
    y = [lab == "anomaly" for lab in labels[1:]]
    names = [f"c{i}.wav" for i in range(1, 12)]
    r = rows[0]
    assert r["auc_a"] == pytest.approx(auc(y, [lstm[n] for n in names])) == pytest.approx(1.0)
    assert r["auc_b"] == pytest.approx(auc(y, [dense[n] for n in names]))
    assert r["difference"] == pytest.approx(r["auc_a"] - r["auc_b"]) and r["difference"] > 0
    assert r["ci_low"] < r["difference"] < r["ci_high"] and 0 < r["p_value"] < 1
    assert f"| lstm-ae_ims | 1.0000 | {r['auc_b']:.4f} | {r['difference']:+.4f} |" in paired_markdown(rows)

    # Against the DCASE reference every other run pairs with the one reference run.
    against = paired_rows(test, {"dense-ae_dcase": dense, "lstm-ae_ims": lstm, "dense-ae_ims": dense}, baseline=reference_run)
    assert [(r["run"], r["baseline"]) for r in against] == [("lstm-ae_ims", "dense-ae_dcase"), ("dense-ae_ims", "dense-ae_dcase")]
    assert against[1]["difference"] == 0 and against[1]["p_value"] == pytest.approx(1.0)
    assert "| run | AUC | DCASE reference AUC |" in paired_markdown(against, "DCASE reference")


def test_toycar_one_seed_comparison_gives_delong_on_the_same_clips():
    from benchmarks.toycar import baseline_comparison
    from trainer.metrics import auc_difference

    labels = [False] * 5 + [True] * 5
    dense_scores, conv_scores = [1, 2, 3, 4, 5, 2.5, 3.5, 4.5, 5.5, 6.5], [1, 2, 3, 4, 5, 3.5, 5.5, 6.5, 7.5, 8.5]
    dense, conv = _toycar_row("dense-ae", 0, 0.76), _toycar_row("conv-ae", 0, 0.92)  # the AUCs of these scores
    dense["int8_clip_scores"] = [{"file": f"c{i}.wav", "anomaly": y, "score": s} for i, (y, s) in enumerate(zip(labels, dense_scores))]
    conv["int8_clip_scores"] = [{"file": f"c{i}.wav", "anomaly": y, "score": s} for i, (y, s) in enumerate(zip(labels, conv_scores))]
    r = auc_difference(labels, conv_scores, dense_scores)
    assert (r.auc_a, r.auc_b) == (pytest.approx(0.92), pytest.approx(0.76))
    line = baseline_comparison([dense, conv])[0]
    assert line == ("- logmel: best int8 conv-ae AUC 0.9200 beats the in-run dense-ae int8 AUC 0.7600 (DeLong's paired test on the "
                    f"same clips: difference +0.1600, 95 % CI [{r.ci_low:+.3f}, {r.ci_high:+.3f}], p = {r.p_value:.2f})")
    # The DCASE reference (features "dcase") is compared with the best model of any feature kind.
    reference = {**dense, "features": "dcase"}
    lines = baseline_comparison([reference, dense, conv])
    assert lines[0] == line
    assert lines[1].startswith("- all features: best int8 conv-ae (logmel) AUC 0.9200 beats the DCASE reference (dense-ae on log-Mel, "
                               "n_fft 1024, hop 512) int8 AUC 0.7600 (DeLong's paired test on the same clips: difference +0.1600")
    # Rows from before per-clip scores were kept: the verdict alone.
    del dense["int8_clip_scores"]
    assert baseline_comparison([dense, conv])[0].endswith("the in-run dense-ae int8 AUC 0.7600")


def test_toycar_front_end_and_training_windows():
    from benchmarks.toycar import REFERENCE_FRAMES, features_for, frames_label, p_text, table, train_config

    ims = features_for("ims")
    assert (ims.n_fft, ims.hop_length, ims.n_mels, ims.n_sinc, ims.sinc_length) == (128, 64, 16, 24, 127)
    reference = features_for("logmel", **REFERENCE_FRAMES)
    assert (reference.n_fft, reference.hop_length, reference.n_mels) == (1024, 512, 64)
    # Training windows every 32 ms whatever the frame hop: 8 frames of 4 ms, 1 frame of 32 ms.
    conv = train_config("conv-ae", ims, epochs=3, seed=1)
    assert (conv.train_hop_frames, conv.window.n_frames, conv.window.hop_frames, conv.epochs, conv.seed) == (8, 8, 4, 3, 1)
    assert train_config("dense-ae", reference, epochs=3, seed=0).train_hop_frames == 1
    row = {**_toycar_row("dense-ae", 0, 0.7), "feature_config": reference.to_dict()}
    assert frames_label(reference.to_dict()) == "1024/512/64" and frames_label(None) == "—"
    assert "| dense-ae | logmel | 1024/512/64 | 0.7020 |" in table([row])
    assert (p_text(0.34), p_text(0.004)) == ("0.34", "4e-03")


def test_toycar_rows_carry_per_domain_figures(tmp_path):
    import numpy as np

    from benchmarks.toycar import domain_fields, table
    from trainer.datasets import Clip
    from trainer.evaluate import domain_summary

    # ToyCar's test set as the benchmark uses it: the source domain only.
    clips = [Clip(path=tmp_path / f"{k}.wav", machine="ToyCar", id="section_00", domain="source",
                  label="anomaly" if k >= 3 else "normal") for k in range(6)]
    y = np.array([c.is_anomaly for c in clips], dtype=int)
    summary = {"domains": domain_summary(clips, y, {"int8": np.array([0.1, 0.2, 0.5, 0.4, 0.8, 0.9]),
                                                    "float": np.array([0.1, 0.2, 0.3, 0.4, 0.8, 0.9])})}
    fields = domain_fields(summary)
    assert fields["auc_source_int8"] == pytest.approx(8 / 9) and fields["auc_source_float"] == 1.0
    assert fields["auc_target_int8"] is None and fields["official_score_int8"] is None
    assert fields["domain_not_measurable"]["auc_target"] == "ToyCar/section_00: no target-domain normal clips"
    assert domain_fields({}) == {}  # clips without domains: nothing added
    new = {**_toycar_row("conv-ae", 0, 0.8889), **fields}
    old = _toycar_row("dense-ae", 0, 0.7)  # a row from before per-domain figures
    lines = table([old, new]).splitlines()
    assert lines[0].endswith("| AUC (source, int8) | AUC (target, int8) | official score (int8) |")
    assert lines[2].endswith("| — | — | — |") and lines[3].endswith("| 0.8889 | n/m | n/m |")
    assert "- AUC (target) not measurable: ToyCar/section_00: no target-domain normal clips" in lines
    assert all(line.count("|") == lines[0].count("|") for line in lines[:4])


def test_toycar_auto_report_separates_fault_sensitivity_from_normal_drift():
    from benchmarks.toycar_auto import markdown

    def row(recipe, pseudo, real, drift=None, anomalies=None):
        r = {"recipe": recipe, "pseudo_auc": pseudo, "auc_int8": real, "pauc_int8": 0.5,
             "per_family": {"click": pseudo, "tone": 1.0 - pseudo}}
        if drift is not None:
            r |= {"normal_drift_auc": drift, "anomaly_vs_heldout_auc": anomalies}
        return r

    def result(seed, rows):
        chosen = max(rows, key=lambda r: r["pseudo_auc"])
        best = max(rows, key=lambda r: r["auc_int8"])
        return {"seed": seed, "validation": "clips", "chosen": chosen["recipe"], "chosen_auc_int8": chosen["auc_int8"],
                "best_recipe": best["recipe"], "best_auc_int8": best["auc_int8"], "gap": best["auc_int8"] - chosen["auc_int8"],
                "spearman_rho": -1.0, "spearman_p": 0.0, "n_val_clips": 3, "n_faulted": 6, "rows": rows}

    # Sensitive recipes hear the real faults best against held-out normals, but drift most on test normals.
    measured = [row("a", 0.6, 0.8, 0.3, 0.55), row("b", 0.7, 0.7, 0.4, 0.65), row("c", 0.8, 0.6, 0.6, 0.75)]
    text = markdown([result(0, measured), result(1, [row("a", 0.6, 0.8), row("b", 0.7, 0.7), row("c", 0.8, 0.6)])], None)
    assert "| c (chosen) | 0.8000 | 0.800 | 0.200 | 0.6000 | 0.5000 | 0.600 | 0.750 |" in text
    assert "| *Spearman ρ with real AUC* | -1.00 | -1.00 | 1.00 | | | | |" in text
    assert text.count("Spearman ρ of the pseudo-AUC with the anomalies-vs-held-out AUC: 1.00; with the normal drift AUC: 1.00.") == 1
    assert "| a | 0.6000 | 0.600 | 0.400 | 0.8000 | 0.5000 | n/m | n/m |" in text  # an older result without diagnoses
    assert "Over 2 seeds: Spearman ρ -1.00 ± 0.00, gap to the best real AUC 0.2000 ± 0.0000." in text


def test_alarm_calibration_runs_end_to_end_on_tiny_settings(tmp_path):
    """``python -m benchmarks.alarm_calibration`` as a user runs it, at tiny settings: one seed, 6 min
    of calibration, 0.2 h of test stream; the counts it reports add up and every check is stated."""
    results = tmp_path / "results"
    run = subprocess.run([sys.executable, "-m", "benchmarks.alarm_calibration", "--seeds", "0", "--calibration-minutes", "6",
                          "--hours", "0.2", "--variants", "plain", "--work", str(tmp_path / "work"), "--results", str(results)],
                         capture_output=True, text=True, cwd=REPO, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    data = json.loads((results / "alarm_calibration.json").read_text())
    text = (results / "alarm_calibration.md").read_text()
    assert "evidence rule: onsets" in text and "device: all onsets" in text
    fits = json.dumps(data)
    assert '"decision_level"' in fits and "plain" in fits  # the fitted rules are recorded with the counts


def test_persistent_benchmark_skips_with_a_message_where_toycar_is_absent(tmp_path):
    env = {**os.environ, "EDGE_ASD_SHARED_DATA": str(tmp_path / "no-shared-data")}
    run = subprocess.run([sys.executable, "-m", "benchmarks.persistent", "--seeds", "0", "--out", str(tmp_path / "work")],
                         capture_output=True, text=True, cwd=REPO, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "skipped" in run.stdout + run.stderr and "no-shared-data" in run.stdout + run.stderr
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())
