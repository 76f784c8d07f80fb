"""A bundle written by the previous release (commit 3eeed83, the flat ``edge_asd`` layout, before the
evidence rule) loads, scores and runs with this one. ``tests/fixtures/bundle-0.1-3eeed83`` was made
by that commit's ``tests/bundle_factory.make_bundle`` (tiny conv-ae, synthetic audio)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from edge_asd.scoring.bundle import read_bundle
from edge_asd.scoring.detector import Detector
from tests.device_helpers import edge_asd, machine_clips, service_toml

OLD = Path(__file__).parent / "fixtures" / "bundle-0.1-3eeed83"


def test_the_previous_releases_bundle_loads_scores_and_runs(tmp_path):
    raw = json.loads((OLD / "bundle.json").read_text())
    assert "evidence" not in raw["threshold"]  # written before the evidence rule existed
    bundle = read_bundle(OLD)  # every model file checked against its digest
    assert bundle.threshold.evidence is None and bundle.model.kind == "conv-ae"
    clips = machine_clips(tmp_path / "wavs", ["normal", "anomaly"])
    detector = Detector(bundle)
    from edge_asd.audio import read_wav

    normal, anomaly = (detector.score_clip(read_wav(p)[0], sr=read_wav(p)[1]) for p in clips)
    assert anomaly > normal

    info = edge_asd("info", OLD)
    assert info.returncode == 0, info.stderr
    assert "evidence   none: this threshold was set before the evidence rule existed" in info.stdout

    # The service runs it with the k-of-n rule alone and says the evidence rule is missing ...
    copy = tmp_path / "bundle"
    shutil.copytree(OLD, copy)
    cfg = service_toml(tmp_path, bundle=copy, inputs=tmp_path / "wavs", db=tmp_path / "events.sqlite")
    run = edge_asd("run", "--config", cfg)
    assert run.returncode == 0, run.stderr
    assert "set on training audio" in run.stderr or "has no evidence rule" in run.stderr
    # ... and calibrate on site gives it both rules, in the current layout, keeping the old threshold.
    machine_clips(tmp_path / "site", ["normal"] * 35, duration_s=2.0, seed=4)
    cal = edge_asd("calibrate", copy, "--input", tmp_path / "site", "--period-s", "2")
    assert cal.returncode == 0, cal.stderr
    after = read_bundle(copy)
    assert after.threshold.evidence is not None and after.threshold.history[-1]["value"] == bundle.threshold.value
