"""The sequential evidence rule: CUSUM statistic, its calibration for a false-alarm rate, the
alarm logic around it (onset, hysteretic recovery, holds, resets), and what the device keeps of it
across a sensor loss and a restart."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import scipy.signal

from edge_asd.decision.alarm import EVENT_ONSET, EVENT_RECOVERY, RULE_EVIDENCE, RULE_PERIOD, AlarmConfig, AlarmLogic
from edge_asd.scoring.bundle import Threshold
from edge_asd.decision.calibration import fit_alarm_rules, resolve_rate
from edge_asd.errors import ParameterError
from edge_asd.decision.evidence import SECONDS_PER_WEEK, Cusum, EvidenceRule, ar_order, fit_evidence_rule

PERIOD_S = 10.0


def rule(h: float = 5.0, *, mean: float = 0.0, std: float = 1.0) -> EvidenceRule:
    return EvidenceRule(reference_mean=mean, reference_std=std, decision_level=h, false_alarms_per_week=1.0, period_s=PERIOD_S)


def ar1(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    """A stationary AR(1) series with unit marginal variance."""
    e = rng.standard_normal(n + 200) * math.sqrt(1 - phi ** 2)
    return scipy.signal.lfilter([1.0], [1.0, -phi], e)[200:]


def replay(alarm: AlarmLogic, scores, *, period_s: float = PERIOD_S, start: int = 0) -> list:
    """One window per period at the period's start: a period closes when the next one begins."""
    out = []
    for i, s in enumerate(scores):
        r = alarm.update(float(s), (start + i) * period_s)
        if r is not None:
            out.append(r)
    return out


# -- the statistic --------------------------------------------------------------------------------

def test_cusum_accumulates_a_shift_and_says_where_it_began():
    c = Cusum(rule(h=4.0))
    for i, z in enumerate([0.0, -1.0, 0.2, 1.5, 1.5, 1.5]):
        c.update(z, start_s=i * PERIOD_S)
    # 0 (0 - 0.5 < 0), 0, 0, then 1.0, 2.0, 3.0: the excursion began with the fourth period.
    assert c.statistic == pytest.approx(3.0) and c.start_s == 30.0 and c.mean_shift == pytest.approx(1.5)
    assert not c.crossed and c.fraction == pytest.approx(0.75)
    c.update(1.5, start_s=60.0)
    assert c.crossed and c.fraction == 1.0
    c.update(-10.0, start_s=70.0)
    assert c.statistic == 0.0 and c.start_s is None and c.mean_shift is None


# -- calibration ------------------------------------------------------------------------------------

def test_alarm_level_for_independent_gaussian_scores_matches_the_textbook_value():
    # With many i.i.d. N(0, 1) periods the simulation has little to add to Siegmund's approximation:
    # ARL = 2 (e^b - b - 1), b = h + 1.166, for k = 0.5; one a week at 10 s periods is 60480 periods.
    x = np.random.default_rng(3).standard_normal(3000)
    r = fit_evidence_rule(x, period_s=PERIOD_S, false_alarms_per_week=1.0)
    b = r.decision_level + 1.166
    arl = 2 * (math.exp(b) - b - 1)
    assert 0.5 < arl / (SECONDS_PER_WEEK / PERIOD_S) < 2.0, r.decision_level
    assert r.details["ar_order"] == 0 and r.details["level_quantile"] == 0.5
    levels = r.details["replicate_levels"]
    assert levels["median"] == r.decision_level <= levels["q90"] and levels["off_reference"] == 0
    # With 3000 periods nine sites in ten stay close to the rate asked.
    assert 1.0 <= r.details["rate_bound_per_week"] < 3.0
    assert r.details["extrapolated"]  # one a week is rarer than 50 000 simulated periods per replicate can show
    # A shift of 1 sd drifts by 0.5 per period: about (h + 1.166) / 0.5 periods to the alarm level.
    assert r.delay_s(1.0) == pytest.approx(b / 0.5 * PERIOD_S, rel=0.2)
    assert r.delay_s(2.0) < r.delay_s(1.0) < r.delay_s(0.5)


def test_correlated_scores_get_a_higher_alarm_level_and_keep_the_promised_rate():
    """A textbook formula (i.i.d. scores) would promise the same level for both series; with
    positively correlated periods it would alarm far more often than promised."""
    rng = np.random.default_rng(7)
    white = rng.standard_normal(3000)
    correlated = ar1(rng, 3000, 0.5)
    per_week = 0.5 * 7 * 24 * 10  # ten an hour for the device: half for this rule
    r_white = fit_evidence_rule(white, period_s=PERIOD_S, false_alarms_per_week=per_week)
    r_corr = fit_evidence_rule(correlated, period_s=PERIOD_S, false_alarms_per_week=per_week)
    assert r_corr.details["ar_order"] >= 1 and r_corr.decision_level > 1.5 * r_white.decision_level
    # New audio of the same machine: the rate observed on 200 000 new periods of the same process.
    fresh = ar1(np.random.default_rng(8), 200_000, 0.5)
    c, alarms = Cusum(r_corr), 0
    for i, s in enumerate(fresh):
        c.update(s, start_s=i * PERIOD_S)
        if c.crossed:
            alarms += 1
            c.reset()
    expected = per_week * fresh.size * PERIOD_S / SECONDS_PER_WEEK
    assert 0.5 * expected < alarms < 2.0 * expected, (alarms, expected)
    # The white-noise level on the same correlated audio: the false-alarm rate it would have given.
    c, naive = Cusum(dataclasses.replace(r_white, reference_mean=r_corr.reference_mean, reference_std=r_corr.reference_std)), 0
    for i, s in enumerate(fresh):
        c.update(s, start_s=i * PERIOD_S)
        if c.crossed:
            naive += 1
            c.reset()
    assert naive > 2.0 * expected, (naive, expected)  # outside the band the calibrated level keeps


def test_rarer_targets_give_higher_levels_and_the_fit_is_deterministic():
    x = np.random.default_rng(1).standard_normal(400)
    levels = [fit_evidence_rule(x, period_s=PERIOD_S, false_alarms_per_week=w).decision_level for w in (100.0, 1.0, 0.02)]
    assert levels[0] < levels[1] < levels[2]
    assert fit_evidence_rule(x, period_s=PERIOD_S).to_dict() == fit_evidence_rule(x, period_s=PERIOD_S).to_dict()


def test_a_short_recording_says_how_far_its_rate_can_be_trusted():
    # The reference mean and sd of 40 periods are uncertain: the simulation re-estimates them in
    # every replicate, and the rate nine sites in ten stay under is far above the one asked; with
    # 4000 periods it is close.
    rng = np.random.default_rng(5)
    short = [fit_evidence_rule(rng.standard_normal(40), period_s=PERIOD_S, seed=0) for _ in range(4)]
    long = fit_evidence_rule(np.random.default_rng(6).standard_normal(4000), period_s=PERIOD_S)
    assert min(r.details["rate_bound_per_week"] for r in short) > 2 * long.details["rate_bound_per_week"]
    assert "nine sites in ten at most" in short[0].statement()


def test_too_little_audio_is_refused_with_how_much_is_needed():
    with pytest.raises(ParameterError, match=r"20 period\(s\) \(200 s\).*too few for the evidence rule.*>= 30 periods, i.e. >= 300 s"):
        fit_evidence_rule(np.random.default_rng(0).standard_normal(20), period_s=PERIOD_S)
    with pytest.raises(ParameterError, match="NaN"):
        fit_evidence_rule(np.r_[np.zeros(50), np.nan], period_s=PERIOD_S)
    with pytest.raises(ParameterError, match="same score"):
        fit_evidence_rule(np.ones(60), period_s=PERIOD_S)
    with pytest.raises(ParameterError, match="every other period"):
        fit_evidence_rule(np.random.default_rng(0).standard_normal(60), period_s=PERIOD_S, false_alarms_per_week=1e6)


def test_ar_order_finds_the_correlation_the_series_has():
    rng = np.random.default_rng(11)
    assert ar_order(rng.standard_normal(2000))[0] == 0
    order, phi = ar_order(ar1(rng, 2000, 0.7))
    assert order >= 1 and phi[0] == pytest.approx(0.7, abs=0.08)


def test_both_rules_share_the_devices_rate_and_the_threshold_takes_it_all_without_evidence():
    x = np.random.default_rng(2).gamma(4.0, 0.25, 600)
    both = fit_alarm_rules(x, period_s=PERIOD_S, false_alarms_per_day=2.0)
    assert both.evidence is not None and both.evidence.false_alarms_per_week == pytest.approx(7.0)
    assert both.threshold.false_alarms_per_day == pytest.approx(1.0)
    alone = fit_alarm_rules(x[:20], period_s=PERIOD_S, false_alarms_per_day=2.0)
    assert alone.evidence is None and "too few" in alone.evidence_note
    assert alone.threshold.false_alarms_per_day == pytest.approx(2.0)
    assert "evidence rule: not fitted" in alone.statement() and "evidence rule: CUSUM" in both.statement()
    assert resolve_rate(per_day=None, per_week=None) == pytest.approx(1 / 7)
    assert resolve_rate(per_day=None, per_week=14) == pytest.approx(2.0)
    with pytest.raises(ParameterError, match="not both"):
        resolve_rate(per_day=1.0, per_week=7.0)


def test_threshold_records_carry_the_rule_and_old_records_load_without_it():
    r = fit_evidence_rule(np.random.default_rng(4).standard_normal(100), period_s=PERIOD_S)
    t = Threshold(value=3.0, method="gamma-tail-fit", source="device", evidence=r)
    again = Threshold.from_dict(json.loads(json.dumps(t.to_dict())))
    assert again == t and isinstance(again.evidence, EvidenceRule)
    old = {k: v for k, v in t.to_dict().items() if k != "evidence"}
    assert Threshold.from_dict(old).evidence is None
    with pytest.raises(ParameterError, match="decision_level"):
        Threshold.from_dict({**t.to_dict(), "evidence": {**r.to_dict(), "decision_level": float("nan")}})
    with pytest.raises(ParameterError, match="unknown keys"):
        Threshold.from_dict({**t.to_dict(), "evidence": {**r.to_dict(), "h": 3}})


# -- the alarm logic around it --------------------------------------------------------------------

CFG = AlarmConfig(period_s=PERIOD_S, onset_k=2, onset_n=3, recovery_m=2, refractory_s=0.0)


def test_a_small_shift_that_persists_raises_an_evidence_onset_the_threshold_never_would():
    alarm = AlarmLogic(CFG, threshold=6.0, evidence=rule(h=5.0))
    scores = [0.0] * 10 + [1.0] * 30
    results = replay(alarm, scores)
    onsets = [r for r in results if r.event == EVENT_ONSET]
    assert len(onsets) == 1 and onsets[0].rules == (RULE_EVIDENCE,)
    # 0.5 per period above k: the 10th shifted period reaches h = 5; the shift began at 100 s.
    assert onsets[0].start_s == pytest.approx(190.0) and onsets[0].shift_start_s == pytest.approx(100.0)
    assert onsets[0].shift_sd == pytest.approx(1.0) and onsets[0].evidence >= 5.0
    assert not any(r.anomalous for r in results)
    without = replay(AlarmLogic(CFG, threshold=6.0), scores)
    assert not any(r.event for r in without) and all(r.evidence is None for r in without)


def test_back_to_normal_needs_the_evidence_drained_not_one_quiet_period():
    alarm = AlarmLogic(CFG, threshold=6.0, evidence=rule(h=5.0))
    results = replay(alarm, [1.0] * 40 + [0.0] * 20)
    events = [(r.event, r.start_s) for r in results if r.event]
    # Capped at h = 5 during the alarm, the statistic drains by 0.5 per normal period: 10 periods.
    assert events == [(EVENT_ONSET, 90.0), (EVENT_RECOVERY, 490.0)]
    assert all(r.alarm for r in results if 90 <= r.start_s < 490)


def test_a_loud_fault_still_raises_the_period_rule_and_both_can_fire_together():
    def first_onset(h: float):
        alarm = AlarmLogic(CFG, threshold=6.0, evidence=rule(h=h))
        return next(r for r in replay(alarm, [0.0] * 5 + [20.0] * 3) if r.event == EVENT_ONSET)

    # A loud period counts as z_cap = 3 sd, adding 2.5: with h = 2 one is evidence enough, before 2 of 3
    # periods are loud; with h = 5 it takes two, as the period rule does.
    assert (first_onset(2.0).rules, first_onset(2.0).start_s) == ((RULE_EVIDENCE,), 50.0)
    assert (first_onset(5.0).rules, first_onset(5.0).start_s) == ((RULE_PERIOD, RULE_EVIDENCE), 60.0)
    loud = first_onset(50.0)
    assert (loud.rules, loud.start_s, loud.shift_start_s) == ((RULE_PERIOD,), 60.0, None)


def test_held_periods_add_no_evidence_and_a_reset_forgets_it():
    alarm = AlarmLogic(CFG, threshold=100.0, evidence=rule(h=50.0))
    before = replay(alarm, [2.0] * 4)[-1].evidence  # 3 closed periods of +1.5
    assert before == pytest.approx(4.5)
    alarm.hold("machine_idle")
    held = replay(alarm, [30.0] * 3, start=4)
    assert all(not r.decided and r.evidence == pytest.approx(4.5) for r in held)
    alarm.release("machine_idle")
    after = replay(alarm, [2.0] * 3, start=7)
    assert [r.decided for r in after] == [False, True, True]  # the period overlapping the release
    assert after[-1].evidence == pytest.approx(4.5 + 2 * 1.5)
    alarm.reset_evidence()
    assert alarm.cusum.statistic == 0.0
    # During an alarm a reset keeps the alarm standing: the statistic restarts at the alarm level.
    alarm.resume_alarm()
    assert alarm.cusum.statistic == 50.0
    alarm.reset_evidence()
    assert alarm.cusum.statistic == 50.0 and alarm.alarm


def test_restored_evidence_continues_and_is_capped_at_the_level_during_an_alarm():
    alarm = AlarmLogic(CFG, threshold=100.0, evidence=rule(h=5.0))
    alarm.restore_evidence(4.0)
    assert alarm.cusum.statistic == 4.0
    onset = next(r for r in replay(alarm, [2.0] * 3) if r.event == EVENT_ONSET)
    assert onset.start_s == 0.0 and onset.rules == (RULE_EVIDENCE,)
    alarm.restore_evidence(80.0)
    assert alarm.cusum.statistic == 5.0
    disabled = AlarmLogic(dataclasses.replace(CFG, evidence=False), threshold=100.0, evidence=rule())
    assert disabled.cusum is None and replay(disabled, [0.0, 0.0])[0].evidence is None


def test_switching_rules_restarts_the_evidence():
    alarm = AlarmLogic(CFG, threshold=100.0, evidence=rule(h=50.0))
    replay(alarm, [2.0] * 5)
    assert alarm.cusum.statistic > 0
    alarm.set_rules(threshold=7.0, evidence=rule(h=9.0))
    assert alarm.threshold == 7.0 and alarm.cusum.statistic == 0.0 and alarm.evidence_rule.decision_level == 9.0
    alarm.set_rules(threshold=7.0, evidence=None)
    assert alarm.cusum is None
