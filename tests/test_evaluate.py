"""Evaluation scores are the detector's scores; parity is reported and stored in the bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_asd.audio import read_wav
from edge_asd.bundle import read_bundle
from edge_asd.detector import Detector

pytest.importorskip("sklearn")

from trainer.datasets import Clip  # noqa: E402
from trainer.evaluate import evaluate_clips, score_clips  # noqa: E402


def test_scores_equal_detector_scores(tiny_bundle, tiny_wavs, tmp_path):
    b = read_bundle(tiny_bundle)
    paths = tiny_wavs["normal"][:2] + tiny_wavs["anomaly"]
    scores = score_clips(b, paths, cache_dir=tmp_path / "cache", progress=False)
    for which in ("int8", "float"):
        det = Detector(b, model=which)
        expected = [det.score_clip(*read_wav(p)[:1], sr=read_wav(p)[1]) for p in paths]
        np.testing.assert_allclose(scores[which], expected, rtol=1e-6)


def test_evaluate_reports_parity_and_stores_metrics(tiny_bundle, tiny_wavs, tmp_path):
    bundle = tmp_path / "bundle"
    import shutil

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
