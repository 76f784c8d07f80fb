"""Alarm logic: period averaging, k-of-n onset, back-to-normal, refractory time, clock rules."""

from __future__ import annotations

import pytest

from edge_asd.decision.alarm import EVENT_ONSET, EVENT_RECOVERY, AlarmConfig, AlarmLogic, PeriodAverager
from edge_asd.errors import ParameterError


def feed(alarm: AlarmLogic, period_scores: list[float], *, windows_per_period: int = 4, period_s: float = 1.0):
    """One score per period, spread over ``windows_per_period`` windows; return all closed results."""
    results = []
    for p, score in enumerate(period_scores):
        for w in range(windows_per_period):
            r = alarm.update(score, p * period_s + w * period_s / windows_per_period)
            if r is not None:
                results.append(r)
    final = alarm.flush()
    if final is not None:
        results.append(final)
    return results


def test_period_score_is_mean_of_window_scores_on_a_fixed_grid():
    avg = PeriodAverager(1.0)
    assert avg.add(1.0, 0.0) is None
    assert avg.add(3.0, 0.5) is None
    start, end, mean, n = avg.add(10.0, 1.0)  # t == end of [0, 1): closes it
    assert (start, end, mean, n) == (0.0, 0.5, 2.0, 2)
    assert avg.add(20.0, 3.2) == (1.0, 1.0, 10.0, 1)  # a gap skips empty periods
    assert avg.flush() == (3.0, 3.2, 20.0, 1)
    assert avg.flush() is None


def test_a_period_boundary_that_rounds_low_still_moves_the_period_on():
    # Seen with 16 ms window hops: start 0.028 + 10 + 10 == 20.028, but (20.028 - 10.028) / 10 < 1.
    avg = PeriodAverager(10.0)
    times = [0.028, 5.0, 10.028, 15.0, 20.028, 20.044, 25.0, 30.1]
    closed = [c for c in (avg.add(1.0, t) for t in times) if c is not None]
    assert [(round(start, 3), n) for start, _, _, n in closed] == [(0.028, 2), (10.028, 2), (20.028, 3)]
    assert avg.flush()[3] == 1  # every window in exactly one period


def test_onset_after_k_of_n_then_back_to_normal_after_m():
    cfg = AlarmConfig(period_s=1.0, onset_k=2, onset_n=3, recovery_m=2, refractory_s=0.0)
    alarm = AlarmLogic(cfg, threshold=5.0)
    scores = [1, 1, 9, 1, 9, 9, 9, 1, 9, 1, 1, 1]
    results = feed(alarm, scores)
    assert [r.score for r in results] == scores
    assert [r.anomalous for r in results] == [s > 5 for s in scores]
    events = [(i, r.event) for i, r in enumerate(results) if r.event]
    # 9 at 2, 9 at 4: two of the last three (2, 3, 4) -> onset at period 4. Recovery needs two
    # consecutive normal periods: 9, 10 -> back to normal at period 10.
    assert events == [(4, EVENT_ONSET), (10, EVENT_RECOVERY)]
    assert [r.alarm for r in results] == [False] * 4 + [True] * 6 + [False] * 2


def test_level_is_reported_without_event_while_alarm_holds():
    alarm = AlarmLogic(AlarmConfig(period_s=1.0, onset_k=1, onset_n=1, recovery_m=1, refractory_s=0.0), threshold=0.5)
    results = feed(alarm, [1, 1, 1, 0])
    assert [r.event for r in results] == [EVENT_ONSET, None, None, EVENT_RECOVERY]
    assert [r.anomalous for r in results] == [True, True, True, False]


def test_refractory_time_suppresses_a_second_onset():
    cfg = AlarmConfig(period_s=1.0, onset_k=1, onset_n=1, recovery_m=1, refractory_s=5.0)
    alarm = AlarmLogic(cfg, threshold=0.5)
    results = feed(alarm, [1, 0, 1, 1, 0, 0, 0, 1])
    onsets = [i for i, r in enumerate(results) if r.event == EVENT_ONSET]
    # Onset at period 0 (t=0.75); periods 2 and 3 are within 5 s of it; period 7 (t=7.75) is not.
    assert onsets == [0, 7]


def test_warm_up_is_deterministic_and_reset_restores_it():
    cfg = AlarmConfig(period_s=1.0, onset_k=3, onset_n=5, recovery_m=2, refractory_s=0.0)
    alarm = AlarmLogic(cfg, threshold=0.5)
    first = feed(alarm, [1, 1, 1, 1])
    alarm.reset()
    second = feed(alarm, [1, 1, 1, 1])
    assert [r.event for r in first] == [None, None, EVENT_ONSET, None]
    assert [(r.event, r.alarm, r.score) for r in first] == [(r.event, r.alarm, r.score) for r in second]


def test_time_going_backwards_is_rejected():
    alarm = AlarmLogic(AlarmConfig(period_s=1.0), threshold=1.0)
    alarm.update(0.1, 5.0)
    with pytest.raises(ParameterError, match="backwards"):
        alarm.update(0.1, 4.0)


def test_injected_clock_is_used_when_no_time_is_given():
    now = [0.0]
    alarm = AlarmLogic(AlarmConfig(period_s=1.0, onset_k=1, onset_n=1, recovery_m=1), threshold=0.5, clock=lambda: now[0])
    assert alarm.update(1.0) is None
    now[0] = 1.5
    result = alarm.update(1.0)
    assert result is not None and result.event == EVENT_ONSET and result.end_s == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [dict(period_s=0), dict(onset_k=0), dict(onset_k=4, onset_n=3), dict(recovery_m=0), dict(refractory_s=-1),
     dict(onset_n=2.5)],
)
def test_bad_alarm_config_raises(kwargs):
    with pytest.raises(ParameterError):
        AlarmConfig(**kwargs)


def test_non_finite_score_and_threshold_raise():
    with pytest.raises(ParameterError):
        AlarmLogic(AlarmConfig(), threshold=float("nan"))
    alarm = AlarmLogic(AlarmConfig(), threshold=1.0)
    with pytest.raises(ParameterError):
        alarm.update(float("inf"), 0.0)
