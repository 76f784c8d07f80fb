"""Evaluation scores and AUCs agree with an independent computation; parity is reported and stored in the bundle."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edge_asd.scoring.bundle import read_bundle

pytest.importorskip("sklearn")

from trainer.datasets import Clip  # noqa: E402
from trainer.evaluate import evaluate_clips, score_clips  # noqa: E402

RTOL, ATOL = 1e-6, 1e-5
"""Clip scores (standardised: about -1 to 26 here). librosa computes in float64 where the front end
computes in float32 (measured: 4e-7 apart); an int8 input that rounds the other way at a
quantisation step moves one window's score by about 2e-5 and its clip's mean by a tenth of that."""


def independent_clip_scores(bundle_dir, paths, which: str) -> np.ndarray:
    """Clip scores computed without edge_asd's reader, front end or detector: librosa's log-Mel,
    the bundle's normalisation and score scaling from ``bundle.json``, and the ``.tflite`` file
    run by TensorFlow Lite's own interpreter, (de)quantised with the interpreter's parameters."""
    import librosa
    import tensorflow as tf

    meta = json.loads((bundle_dir / "bundle.json").read_text())
    f, w = meta["features"], meta["window"]
    assert f["kind"] == "logmel" and meta["model"]["score"] == "reconstruction_mse"
    mean, std = np.asarray(meta["normalization"]["mean"]), np.asarray(meta["normalization"]["std"])
    interpreter = tf.lite.Interpreter(model_path=str(bundle_dir / f"model_{which}.tflite"))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    out_scores = []
    for path in paths:
        y, sr = librosa.load(path, sr=None, mono=True)
        assert sr == f["sr"]
        mel = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=f["n_fft"], hop_length=f["hop_length"], n_mels=f["n_mels"],
                                             fmin=f["fmin"], fmax=f["fmax"], htk=False, norm="slaney", power=2.0,
                                             center=True, pad_mode="constant")
        z = (librosa.power_to_db(mel, ref=1.0, amin=f["amin"], top_db=None).T - mean) / std
        window_scores = []
        for start in range(0, z.shape[0] - w["n_frames"] + 1, w["hop_frames"]):
            x = z[start : start + w["n_frames"]]
            if which == "int8":
                scale, zero = inp["quantization"]
                x_in = np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8)
            else:
                x_in = x.astype(np.float32)
            interpreter.set_tensor(inp["index"], x_in.reshape(inp["shape"]))
            interpreter.invoke()
            y_out = interpreter.get_tensor(out["index"]).astype(np.float64)
            if which == "int8":
                scale, zero = out["quantization"]
                y_out = (y_out - zero) * scale
            window_scores.append(np.mean((y_out.reshape(-1) - x.reshape(-1)) ** 2))
        out_scores.append(np.mean(window_scores))
    # Schema 2 bundles standardise scores with statistics of normal windows; earlier ones do not.
    scaling = meta.get("score_scaling") or {"mean": 0.0, "std": 1.0}
    return (np.asarray(out_scores) - scaling["mean"]) / scaling["std"]


def test_scores_and_auc_match_an_independent_computation(tiny_bundle, tiny_wavs, tmp_path):
    pytest.importorskip("librosa")
    pytest.importorskip("tensorflow")
    from sklearn.metrics import roc_auc_score

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    paths = tiny_wavs["normal"] + tiny_wavs["anomaly"]
    y = np.array([0] * len(tiny_wavs["normal"]) + [1] * len(tiny_wavs["anomaly"]))
    scores = score_clips(read_bundle(bundle), paths, cache_dir=tmp_path / "cache", progress=False)
    clips = [Clip(path=p, machine="toy", label="anomaly" if yy else "normal") for p, yy in zip(paths, y)]
    summary = evaluate_clips(bundle, clips, tmp_path / "report", protocol="test", cache_dir=tmp_path / "c", progress=False, plots=False)
    for which in ("int8", "float"):
        reference = independent_clip_scores(bundle, paths, which)
        np.testing.assert_allclose(scores[which], reference, rtol=RTOL, atol=ATOL)
        # The anomalous clips (a rattle over the hum) are separable: a real AUC of 1, by both.
        assert summary[f"auc_{which}"] == roc_auc_score(y, reference) == 1.0
        assert summary[f"pauc_{which}"] == pytest.approx(roc_auc_score(y, reference, max_fpr=0.1))


def test_evaluate_reports_parity_and_stores_metrics(tiny_bundle, tiny_wavs, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    clips = [Clip(path=p, machine="toy", label="normal") for p in tiny_wavs["normal"]]
    clips += [Clip(path=p, machine="toy", label="anomaly") for p in tiny_wavs["anomaly"]]
    summary = evaluate_clips(bundle, clips, tmp_path / "report", protocol="test", cache_dir=tmp_path / "c", progress=False, plots=False)
    for key in ("auc_int8", "auc_float", "pauc_int8", "pauc_float", "auc_int8_minus_float"):
        assert key in summary
    assert summary["auc_int8_minus_float"] == pytest.approx(summary["auc_int8"] - summary["auc_float"])
    assert json.loads((tmp_path / "report" / "evaluation.json").read_text())["auc_int8"] == summary["auc_int8"]
    assert "int8 − float" in (tmp_path / "report" / "evaluation.md").read_text()
    assert read_bundle(bundle).metrics["evaluation"]["auc_int8"] == summary["auc_int8"]


def _dcase_clips(tmp_path):
    """Two sections of fake DCASE clips (no audio needed: domain_summary works on scores)."""
    spec = {"section_00": [("source", "normal"), ("source", "normal"), ("source", "anomaly"), ("target", "normal"),
                           ("target", "anomaly")],
            "section_01": [("source", "normal"), ("source", "anomaly"), ("source", "anomaly")]}  # no target clips
    return [Clip(path=tmp_path / f"{sec}_{k}.wav", machine="ToyCar", id=sec, domain=d, label=lab)
            for sec, clips in spec.items() for k, (d, lab) in enumerate(clips)]


def test_domain_summary_and_markdown(tmp_path):
    from sklearn.metrics import roc_auc_score

    from trainer.evaluate import domain_summary, markdown_summary

    clips = _dcase_clips(tmp_path)
    y = np.array([c.is_anomaly for c in clips], dtype=int)
    scores = {"int8": np.array([0.1, 0.5, 0.4, 0.3, 0.9, 0.2, 0.6, 0.1]), "float": np.array([0.1, 0.2, 0.4, 0.3, 0.9, 0.2, 0.6, 0.7])}
    d = domain_summary(clips, y, scores)
    s0 = d["int8"]["sections"]["ToyCar/section_00"]
    # source normals 0.1 0.5 against both anomalies 0.4 0.9 (sklearn on that subset); target normal 0.3 likewise
    assert s0["auc_source"] == roc_auc_score([0, 0, 1, 1], [0.1, 0.5, 0.4, 0.9]) == 0.75
    assert s0["auc_target"] == roc_auc_score([0, 1, 1], [0.3, 0.4, 0.9]) == 1.0
    assert s0["auc_source_within"] == roc_auc_score([0, 0, 1], [0.1, 0.5, 0.4]) == 0.5
    s1 = d["int8"]["sections"]["ToyCar/section_01"]
    assert s1["auc_target"] is None and s1["not_measurable"]["auc_target"] == "no target-domain normal clips"
    assert d["int8"]["overall"]["score"] is None and d["float"]["overall"]["auc_source"] == pytest.approx((1.0 + 1.0) / 2)
    json.dumps(d, allow_nan=False)
    md = markdown_summary({"title": "t", "model": "conv-ae", "features": "logmel", "n_test": {"normal": 4, "anomaly": 4},
                           "auc_int8": 0.7, "pauc_int8": 0.6, "domains": d})
    assert "| int8 | ToyCar/section_00 | 0.7500 | 1.0000 |" in md
    assert "| int8 | all sections | 0.6250 | n/a |" in md  # (0.75 + 0.5) / 2: section_01 ranks 0.1 below its normal 0.2
    assert "- ToyCar/section_01: AUC (target) not measurable: no target-domain normal clips" in md
    assert "nan" not in md.lower()


def test_evaluate_reports_domains_of_dcase_clips(tiny_bundle, tiny_wavs, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    # A source-only DCASE test set, like our ToyCar copy.
    clips = [Clip(path=p, machine="toy", id="section_00", domain="source", label=lab)
             for lab in ("normal", "anomaly") for p in tiny_wavs[lab]]
    summary = evaluate_clips(bundle, clips, tmp_path / "report", protocol="dcase", cache_dir=tmp_path / "c", progress=False,
                             plots=False, store_in_bundle=False)
    overall = summary["domains"]["int8"]["overall"]
    # source normals against every anomaly = all clips here: the plain AUC
    assert overall["auc_source"] == summary["auc_int8"] and overall["pauc"] == summary["pauc_int8"]
    assert overall["auc_target"] is None and overall["score"] is None
    md = (tmp_path / "report" / "evaluation.md").read_text()
    assert "- toy/section_00: AUC (target) not measurable: no target-domain normal clips" in md
    assert json.loads((tmp_path / "report" / "evaluation.json").read_text())["domains"]["float"]["overall"]["auc_target"] is None
    report_md = (tmp_path / "report" / "report.md").read_text()
    assert "DCASE official score: not measurable (toy/section_00: needs AUC (target)" in report_md
