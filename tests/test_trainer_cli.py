"""``asd-train synth → fit → evaluate`` as a user runs them (real subprocesses, tiny data)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def asd_train(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "trainer", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)


def test_synth_fit_evaluate_round_trip(tmp_path):
    data, bundle = tmp_path / "data", tmp_path / "bundle"
    made = asd_train("synth", data, "--machines", "fan", "--ids", "00", "--snr", "6", "--normal", "12", "--abnormal", "4",
                     "--channels", "2", "--duration", "2", "--quiet")
    assert made.returncode == 0, made.stderr
    assert len(list((data / "6_dB_fan" / "fan" / "id_00" / "normal").glob("*.wav"))) == 12

    fit = asd_train("fit", data, "--machine", "fan", "--id", "00", "--snr", "6", "--model", "dense-ae", "--n-mels", "32",
                    "--n-fft", "512", "--hop-length", "256", "--epochs", "1", "--normalization", "global", "--cache-dir", tmp_path / "cache", "--out", bundle)
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "int8 − float" in fit.stdout
    meta = json.loads((bundle / "bundle.json").read_text())
    assert (meta["features"]["n_fft"], meta["features"]["hop_length"], meta["features"]["n_mels"]) == (512, 256, 32)
    std = meta["normalization"]["std"]
    assert len(std) == 32 and len(set(std)) == 1  # global: one common scale for every band
    stored = meta["metrics"]["evaluation"]
    assert 0.0 <= stored["auc_int8"] <= 1.0 and abs(stored["auc_int8_minus_float"]) <= 0.05
    assert (bundle / "model_int8.tflite").stat().st_size < 256 * 1024

    report = tmp_path / "report"
    ev = asd_train("evaluate", bundle, data, "--machine", "fan", "--id", "00", "--snr", "6", "--out", report, "--no-store")
    assert ev.returncode == 0, ev.stderr[-3000:]
    for model in ("int8", "float"):  # the DCASE 2020 baseline's result.csv layout, per model
        rows = list(csv.reader((report / f"score_{model}" / "result.csv").open()))
        assert rows[0] == ["fan"] and rows[1] == ["id", "AUC", "pAUC"] and rows[2][0] == "00"
        assert 0.0 <= float(rows[2][1]) <= 1.0
        scores = list(csv.reader((report / f"score_{model}" / "anomaly_score_fan_id_00.csv").open()))
        assert len(scores) == 8 and all(float(s) == float(s) for _, s in scores)  # 4 anomalous + 4 normal


def test_fit_on_a_folder_without_wavs_is_a_clear_error(tmp_path):
    (tmp_path / "empty" / "normal").mkdir(parents=True)
    run = asd_train("fit", tmp_path / "empty", "--out", tmp_path / "b", timeout=120)
    assert run.returncode != 0
    assert "empty" in run.stderr and "Traceback" not in run.stderr


def test_fit_takes_a_short_fft_for_ims_and_refuses_a_bad_one(tmp_path):
    from trainer.recipes import get_recipe

    recipe = get_recipe("short-conv-ae")
    short = recipe.with_overrides(features="ims", n_mels=16, n_fft=128, hop_length=64).feature_config()
    assert short.sinc_length == 127 and short.n_features == 16 + short.n_sinc  # the sinc FIR fits the FFT
    long = recipe.with_overrides(features="ims", n_mels=64, n_fft=1024, hop_length=512).feature_config()
    assert long.sinc_length == 251  # seed 000's length

    (tmp_path / "data" / "normal").mkdir(parents=True)
    run = asd_train("fit", tmp_path / "data", "--n-fft", "256", "--hop-length", "512", "--out", tmp_path / "b", timeout=120)
    assert run.returncode != 0
    assert "hop_length" in run.stderr and "Traceback" not in run.stderr
