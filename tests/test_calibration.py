"""On-device calibration: the gamma tail fit, its uncertainty, and writing the bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats

from edge_asd.decision.calibration import SECONDS_PER_DAY, fit_threshold
from edge_asd.errors import ParameterError
from tests.device_helpers import SEPARATING_THRESHOLD, copy_bundle, edge_asd, machine_clips


def test_gamma_tail_fit_recovers_a_known_quantile():
    rng = np.random.default_rng(0)
    shape, scale = 4.0, 0.25
    scores = scipy.stats.gamma.rvs(shape, scale=scale, size=4000, random_state=rng)
    period_s = 10.0
    result = fit_threshold(scores, period_s=period_s, false_alarms_per_day=24, n_bootstrap=50)
    p = 24 * period_s / SECONDS_PER_DAY
    true = scipy.stats.gamma.isf(p, shape, scale=scale)
    assert result.p_period == pytest.approx(p)
    assert result.threshold == pytest.approx(true, rel=0.1)
    assert result.ci_low <= result.threshold <= result.ci_high
    assert result.expected_false_alarms_in_recording == pytest.approx(4000 * p)
    # About p of the recorded normal periods lie above the threshold: 11.1 expected, and a count
    # outside the binomial 99 % interval (4 to 21) says the threshold is not at the rate asked for.
    low, high = scipy.stats.binom.interval(0.99, 4000, p)
    assert low <= result.observed_exceedances <= high


def test_rarer_target_gives_higher_threshold_and_short_recordings_say_they_extrapolate():
    rng = np.random.default_rng(1)
    scores = rng.gamma(3.0, 1.0, size=60)
    often = fit_threshold(scores, period_s=10, false_alarms_per_day=100, n_bootstrap=0)
    rare = fit_threshold(scores, period_s=10, false_alarms_per_day=1)
    assert rare.threshold > often.threshold
    assert rare.extrapolated and "extrapolation" in rare.statement()
    assert rare.ci_high - rare.ci_low > 0
    # The bootstrap interval is seeded: the same seed gives the same interval, another seed another.
    again = fit_threshold(scores, period_s=10, false_alarms_per_day=1)
    assert (again.ci_low, again.ci_high) == (rare.ci_low, rare.ci_high)
    other = fit_threshold(scores, period_s=10, false_alarms_per_day=1, seed=1)
    assert (other.ci_low, other.ci_high) != (rare.ci_low, rare.ci_high)


@pytest.mark.parametrize(
    "scores, kwargs",
    [
        (np.ones(5), {}),
        (np.r_[np.ones(20), np.nan], {}),
        (np.arange(20.0), {"false_alarms_per_day": 0}),
        (np.arange(20.0), {"false_alarms_per_day": 1e6}),
        (np.arange(20.0), {"tail_fraction": 0}),
        (np.ones(40), {}),
    ],
)
def test_bad_calibration_inputs_raise(scores, kwargs):
    with pytest.raises(ParameterError):
        fit_threshold(scores, period_s=10, **kwargs)


def test_calibrate_cli_writes_threshold_and_keeps_history(tmp_path):
    bundle = copy_bundle(tmp_path, threshold=123.0)
    normal = machine_clips(tmp_path / "normal", ["normal"] * 6, duration_s=2.0)
    result = edge_asd("calibrate", bundle, "--input", normal[0].parent, "--seconds", "60",
                      "--period-s", "0.5", "--false-alarms-per-day", "1000")
    assert result.returncode == 0, result.stderr
    assert "bootstrap interval" in result.stdout and "12.0 s of audio" in result.stdout
    data = json.loads((bundle / "bundle.json").read_text())
    thr = data["threshold"]
    assert thr["source"] == "device" and thr["method"] == "gamma-tail-fit" and thr["period_s"] == 0.5
    assert thr["history"][-1]["value"] == 123.0
    assert 22 <= thr["details"]["n_periods"] <= 24 and thr["details"]["ci_low"] <= thr["value"]
    # Anomalous clips score far above a threshold set on normal audio from the same machine, and
    # other normal clips from it below.
    assert 0 < thr["value"] < SEPARATING_THRESHOLD
    anomalous = machine_clips(tmp_path / "anomalous", ["anomaly"] * 2, seed=7)
    fresh = machine_clips(tmp_path / "fresh", ["normal"] * 2, seed=8)
    scored = edge_asd("score", bundle, anomalous[0].parent, fresh[0].parent)
    assert scored.returncode == 0, scored.stderr
    rows = {line.split(",")[0]: line.split(",")[1:] for line in scored.stdout.splitlines() if line.endswith(",ok")}
    for clip in anomalous:
        score, flag, _ = rows[str(clip)]
        assert float(score) > thr["value"] and flag == "1", (clip, score, thr["value"])
    for clip in fresh:
        score, flag, _ = rows[str(clip)]
        assert float(score) < thr["value"] and flag == "0", (clip, score, thr["value"])
    assert thr["calibrated_for"] == {"period_s": 0.5, "model": "int8", "class_label": None, "n_channels": 1}


def test_calibrate_with_too_little_audio_is_a_clear_error(tmp_path):
    bundle = copy_bundle(tmp_path)
    clip = machine_clips(tmp_path / "n", ["normal"], duration_s=2.0)[0]
    result = edge_asd("calibrate", bundle, "--input", clip, "--period-s", "1")
    assert result.returncode == 1
    assert "too few to calibrate" in result.stderr and "Traceback" not in result.stderr
