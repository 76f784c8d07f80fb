"""Metrics: hand-computed cases and agreement with scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score, roc_curve

from edge_asd.errors import ParameterError
from trainer import metrics as M


def mcclish(raw: float, max_fpr: float = 0.1) -> float:
    """scikit-learn's standardisation of a raw pAUC (raw area / max_fpr)."""
    area, lo, hi = raw * max_fpr, max_fpr**2 / 2, max_fpr
    return 0.5 * (1 + (area - lo) / (hi - lo))


def test_auc_hand_case() -> None:
    # 4 normal/anomaly pairs: 3 of 4 ordered correctly
    assert M.auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert M.auc([False, True], [0.0, 1.0]) == 1.0


def test_pauc_hand_case_flat_segment() -> None:
    # 10 normals 0..9, anomalies 9.5 and 4.5: TPR is 0.5 over FPR 0..0.1
    y = [0] * 10 + [1, 1]
    s = list(range(10)) + [9.5, 4.5]
    assert M.pauc(y, s, definition="raw") == pytest.approx(0.5)
    assert M.pauc(y, s) == pytest.approx(0.5 * (1 + (0.05 - 0.005) / (0.1 - 0.005)))  # 0.736842...
    assert M.pauc(y, s) == pytest.approx(0.7368421052631579)


def test_pauc_hand_case_interpolated() -> None:
    # normals 0..3, anomalies 3 (tied with a normal) and 5. The ROC goes (0, .5) -> (.25, 1) on the
    # tie, so TPR(0.1) = 0.7 by interpolation and the raw area is 0.1 * (0.5 + 0.7) / 2 = 0.06.
    y = [0, 0, 0, 0, 1, 1]
    s = [0, 1, 2, 3, 3, 5]
    assert M.pauc(y, s, definition="raw") == pytest.approx(0.6)
    assert M.pauc(y, s) == pytest.approx(mcclish(0.6))  # 0.789473...
    assert M.pauc(y, s) == pytest.approx(0.7894736842105263)


def test_pauc_dcase_is_sklearn_and_raw_relates_exactly() -> None:
    rng = np.random.default_rng(3)
    for trial in range(20):
        n = int(rng.integers(10, 200))
        y = rng.random(n) < 0.3
        y[:2] = [True, False]
        s = rng.normal(size=n) + y * rng.uniform(0, 2)
        if trial % 3 == 0:
            s = np.round(s, 1)  # ties
        for max_fpr in (0.1, 0.05, 0.3):
            dcase = M.pauc(y, s, max_fpr=max_fpr)
            assert dcase == roc_auc_score(y, s, max_fpr=max_fpr)
            raw = M.pauc(y, s, max_fpr=max_fpr, definition="raw")
            assert 0.0 <= raw <= 1.0
            assert dcase == pytest.approx(mcclish(raw, max_fpr), abs=1e-12)


def test_pauc_extremes() -> None:
    y = [0, 0, 0, 1, 1]
    assert M.pauc(y, [0, 1, 2, 3, 4]) == 1.0
    assert M.pauc(y, [0, 1, 2, 3, 4], definition="raw") == 1.0
    assert M.pauc(y, [4, 3, 2, 1, 0], definition="raw") == 0.0
    assert M.pauc(y, [4, 3, 2, 1, 0]) == pytest.approx(mcclish(0.0))
    s = [0.3, 0.1, 0.7, 0.2, 0.9]
    assert M.pauc(y, s, max_fpr=1.0, definition="raw") == pytest.approx(M.auc(y, s))


def test_metric_input_errors() -> None:
    with pytest.raises(ParameterError, match="both normal and anomalous"):
        M.auc([0, 0], [1.0, 2.0])
    with pytest.raises(ParameterError, match="NaN"):
        M.auc([0, 1], [1.0, np.nan])
    with pytest.raises(ParameterError, match="max_fpr"):
        M.pauc([0, 1], [0, 1], max_fpr=0.0)
    with pytest.raises(ParameterError, match="definition"):
        M.pauc([0, 1], [0, 1], definition="mcclish")  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="0 \\(normal\\) and 1"):
        M.auc([0, 2], [0, 1])
    with pytest.raises(ParameterError, match="same length"):
        M.auc([0, 1, 1], [0, 1])


def test_per_group_auc_and_mauc() -> None:
    y = [0, 1, 0, 1, 0, 1]
    s = [0.1, 0.9, 0.8, 0.2, 0.4, 0.6]
    g = ["id_00", "id_00", "id_02", "id_02", "id_04", "id_04"]
    per = M.per_group_auc(y, s, g)
    assert per == {"id_00": 1.0, "id_02": 0.0, "id_04": 1.0}
    assert M.mauc(per) == 0.0
    assert M.mauc([0.9, 0.7, 0.8]) == 0.7
    with pytest.raises(ParameterError):
        M.mauc({})


def test_domain_auc_follows_the_dcase2023_rule() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1])
    d = np.array(["source", "source", "target", "target", "source", "target", "target"])
    s = np.array([0.1, 0.2, 0.7, 0.8, 0.5, 0.6, 0.9])
    # source normals (0.1, 0.2) against all anomalies (0.5, 0.6, 0.9): perfect
    assert M.domain_auc(y, s, d, "source") == 1.0
    # target normals (0.7, 0.8) against all anomalies: 0.9 beats both, 0.5/0.6 beat none
    assert M.domain_auc(y, s, d, "target") == pytest.approx(2 / 6)
    keep = (d == "target") | (y == 1)
    assert M.domain_auc(y, s, d, "target") == roc_auc_score(y[keep], s[keep])


def test_dcase2023_official_score() -> None:
    assert M.dcase2023_official_score([0.5], [1.0], [1.0]) == pytest.approx(0.75)  # 3 / (2 + 1 + 1)
    values = ([0.8, 0.7], [0.6, 0.65], [0.55, 0.6])
    assert M.dcase2023_official_score(*values) == pytest.approx(scipy.stats.hmean(np.concatenate(values)))
    assert M.dcase2023_official_score([0.0], [1.0], [1.0]) < 1e-12  # floored at epsilon, not an error
    with pytest.raises(ParameterError):
        M.dcase2023_official_score([1.2], [0.5], [0.5])


def test_threshold_metrics_hand_case_and_sklearn() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.6, 0.3, 0.55, 0.9, 0.4])
    tm = M.threshold_metrics(y, s, 0.5)  # flagged: 0.6 (normal), 0.55, 0.9 (anomalies)
    assert (tm.tn, tm.fp, tm.fn, tm.tp) == (3, 1, 1, 2)
    assert tm.accuracy == pytest.approx(5 / 7)
    assert tm.precision == pytest.approx(2 / 3) and tm.recall == pytest.approx(2 / 3)
    assert tm.f1 == pytest.approx(f1_score(y, s > 0.5))
    assert tm.false_positive_rate == pytest.approx(0.25)
    np.testing.assert_array_equal(tm.confusion_matrix, confusion_matrix(y, s > 0.5))
    # a score equal to the threshold is not flagged
    assert M.threshold_metrics([0, 1], [0.5, 0.7], 0.5).fp == 0
    nothing = M.threshold_metrics([0, 0], [0.1, 0.2], 1.0)
    assert (nothing.precision, nothing.recall, nothing.accuracy) == (0.0, 0.0, 1.0)


def test_youden_threshold_reaches_the_best_roc_point() -> None:
    rng = np.random.default_rng(7)
    for _ in range(10):
        y = rng.random(60) < 0.4
        y[:2] = [True, False]
        s = np.round(rng.normal(size=60) + 1.2 * y, 1)
        fpr, tpr, _ = roc_curve(y, s)
        thr = M.youden_threshold(y, s)
        tm = M.threshold_metrics(y, s, thr)
        assert tm.recall - tm.false_positive_rate == pytest.approx(np.max(tpr - fpr))
        assert not np.any(s == thr)  # half-way between scores, never on one
    # perfectly separated: the threshold lies between the classes
    assert 0.3 < M.youden_threshold([0, 0, 1, 1], [0.1, 0.3, 0.7, 0.9]) < 0.7


def test_false_alarms_per_hour() -> None:
    scores = np.zeros(3600)
    scores[:5] = 2.0
    assert M.false_alarms_per_hour(scores, 1.0, 10.0) == pytest.approx(0.5)  # 5 alarms in 10 h
    assert M.false_alarms_per_hour([0.0, 2.0], 1.0, [1800.0, 1800.0]) == pytest.approx(1.0)
    assert M.false_alarms_per_hour([0.0, 2.0], 2.0, 10.0) == 0.0
    with pytest.raises(ParameterError):
        M.false_alarms_per_hour([0.0], 1.0, 0.0)
    with pytest.raises(ParameterError):
        M.false_alarms_per_hour([0.0, 1.0], 1.0, [1.0, 2.0, 3.0])


def _delong_by_pairs(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """DeLong's difference and variance straight from the Mann-Whitney kernel over every
    (anomaly, normal) pair: an O(m n) computation independent of the midrank one."""

    def components(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        psi = (s[y][:, None] > s[~y][None, :]) + 0.5 * (s[y][:, None] == s[~y][None, :])
        return psi.mean(axis=1), psi.mean(axis=0)

    (a10, a01), (b10, b01) = components(a), components(b)
    s10, s01 = np.cov(np.stack([a10, b10])), np.cov(np.stack([a01, b01]))
    contrast = np.array([1.0, -1.0])
    return a10.mean() - b10.mean(), contrast @ (s10 / y.sum() + s01 / (~y).sum()) @ contrast


def test_auc_difference_matches_the_pairwise_definition() -> None:
    rng = np.random.default_rng(3)
    y = np.r_[np.zeros(40, bool), np.ones(30, bool)]
    a = np.round(rng.normal(size=70) + 0.8 * y, 1)  # rounded: ties inside and across the classes
    b = np.round(0.6 * a + rng.normal(size=70) * 0.8, 1)
    r = M.auc_difference(y, a, b)
    diff, var = _delong_by_pairs(y, a, b)
    assert r.auc_a == pytest.approx(roc_auc_score(y, a)) and r.auc_b == pytest.approx(roc_auc_score(y, b))
    assert r.difference == pytest.approx(diff)
    assert r.std_error == pytest.approx(np.sqrt(var))
    assert r.p_value == pytest.approx(2 * scipy.stats.norm.sf(abs(diff) / np.sqrt(var)))
    assert r.ci_low == pytest.approx(diff - 1.959964 * np.sqrt(var), abs=1e-6)
    assert r.ci_high == pytest.approx(diff + 1.959964 * np.sqrt(var), abs=1e-6)
    assert M.auc_difference(y, b, a).difference == pytest.approx(-diff)


def test_auc_difference_identical_and_clearly_different() -> None:
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(200, bool), np.ones(200, bool)]
    s = rng.normal(size=400) + y
    same = M.auc_difference(y, s, 2 * s + 1)  # a monotone transform ranks the clips identically
    assert (same.difference, same.std_error, same.p_value) == (0.0, 0.0, 1.0)
    better = M.auc_difference(y, s + 2 * y, s)
    assert better.difference > 0.15 and better.ci_low > 0 and better.p_value < 1e-6


def test_auc_difference_false_positive_rate_under_the_null() -> None:
    # Two exchangeable detectors (the same signal, independent noise): the test must reject at the
    # 5 % level about 5 % of the time, not more (overconfident) and not never (no power).
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(50, bool), np.ones(50, bool)]
    rejections = 0
    trials = 400
    for _ in range(trials):
        signal = rng.normal(size=100) + 0.7 * y
        r = M.auc_difference(y, signal + rng.normal(size=100), signal + rng.normal(size=100))
        rejections += r.p_value < 0.05
    assert 0.02 <= rejections / trials <= 0.09


def test_auc_difference_input_errors() -> None:
    with pytest.raises(ParameterError, match="same length"):
        M.auc_difference([0, 1, 1], [0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(ParameterError, match="both normal and anomalous"):
        M.auc_difference([1, 1], [0.1, 0.2], [0.3, 0.4])
    with pytest.raises(ParameterError, match="confidence"):
        M.auc_difference([0, 1], [0.1, 0.2], [0.3, 0.4], confidence=95)


# --- DCASE 2021-2024 domains -------------------------------------------------------------------
# One section, both domains: source normals 0.1 0.3 0.5, source anomalies 0.4 0.9,
# target normals 0.6 0.7 0.2, target anomalies 0.8 0.35.
DOM_Y = np.array([0, 0, 0, 1, 1, 0, 0, 0, 1, 1])
DOM_D = np.array(["source"] * 5 + ["target"] * 5)
DOM_S = np.array([0.1, 0.3, 0.5, 0.4, 0.9, 0.6, 0.7, 0.2, 0.8, 0.35])


def test_domain_metrics_hand_case_with_both_domains() -> None:
    m = M.domain_metrics(DOM_Y, DOM_S, DOM_D)
    # AUC (source): 3 source normals x 4 anomalies of both domains; 0.4 and 0.35 beat 2 each, 0.9 and 0.8 beat 3
    assert m.auc_source == pytest.approx(10 / 12)
    # AUC (target): target normals 0.6 0.7 0.2; 0.4 and 0.35 beat only 0.2, 0.9 and 0.8 beat all three
    assert m.auc_target == pytest.approx(8 / 12)
    # within-domain: source 0.4 -> 2, 0.9 -> 3 of 6 pairs; target 0.8 -> 3, 0.35 -> 1 of 6
    assert m.auc_source_within == pytest.approx(5 / 6) and m.auc_target_within == pytest.approx(4 / 6)
    # pAUC over all 10 clips: the two top scores are anomalies, then a normal at FPR 1/6 > 0.1, so TPR
    # is 0.5 over FPR [0, 0.1]: raw area 0.05, McClish-standardised 0.7368...
    assert m.pauc == pytest.approx(mcclish(0.5))
    assert m.score == pytest.approx(3 / (12 / 10 + 12 / 8 + 1 / mcclish(0.5)))
    assert m.counts == {"source_normal": 3, "source_anomaly": 2, "target_normal": 3, "target_anomaly": 2}
    assert m.not_measurable == {}


def test_domain_metrics_agree_with_sklearn_on_the_selected_subsets() -> None:
    rng = np.random.default_rng(11)
    for _ in range(10):
        n = 60
        y = rng.random(n) < 0.4
        d = np.where(rng.random(n) < 0.5, "source", "target")
        y[:4], d[:4] = [False, True, False, True], ["source", "source", "target", "target"]
        s = np.round(rng.normal(size=n) + y * 1.0 + (d == "target") * 0.5, 1)  # ties and a domain shift
        m = M.domain_metrics(y, s, d)
        for dom in ("source", "target"):
            shared = (d == dom) | y  # this domain's normals, every anomaly
            assert getattr(m, f"auc_{dom}") == roc_auc_score(y[shared], s[shared])
            assert getattr(m, f"auc_{dom}_within") == roc_auc_score(y[d == dom], s[d == dom])
        assert m.pauc == roc_auc_score(y, s, max_fpr=0.1)
        assert m.score == pytest.approx(scipy.stats.hmean([m.auc_source, m.auc_target, m.pauc]))


def test_section_average_is_the_dcase_harmonic_mean_over_sections() -> None:
    a = M.domain_metrics(DOM_Y, DOM_S, DOM_D)
    b = M.domain_metrics(DOM_Y, DOM_S + np.where(DOM_Y == 1, 0.3, 0.0), DOM_D)  # anomalies louder
    assert a.score != pytest.approx(b.score)  # two different sections, else the test proves nothing
    avg = M.section_average({"ToyCar/section_00": a, "ToyCar/section_01": b})
    pooled = [a.auc_source, b.auc_source, a.auc_target, b.auc_target, a.pauc, b.pauc]
    assert avg.score == pytest.approx(scipy.stats.hmean(pooled))
    # three values per section: the pooled harmonic mean is the harmonic mean of the section scores
    assert avg.score == pytest.approx(scipy.stats.hmean([a.score, b.score]))
    assert avg.score != pytest.approx(np.mean(pooled))
    assert avg.auc_source == pytest.approx((a.auc_source + b.auc_source) / 2)
    assert avg.auc_target_within == pytest.approx((a.auc_target_within + b.auc_target_within) / 2)
    assert avg.n_sections == 2 and avg.not_measurable == {}


def test_domain_metrics_not_measurable_cases() -> None:
    import json

    # Source-only test set (our ToyCar copy): AUC (source) is the plain AUC, target and score are not measurable.
    y, s = np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.5, 0.9])
    m = M.domain_metrics(y, s, ["source"] * 4)
    assert m.auc_source == m.auc_source_within == roc_auc_score(y, s) == 0.75
    assert m.auc_target is None and m.auc_target_within is None and m.score is None
    assert m.not_measurable["auc_target"] == "no target-domain normal clips"
    assert "AUC (target)" in m.not_measurable["score"] and "no target-domain normal clips" in m.not_measurable["score"]
    assert set(m.not_measurable) == {"auc_target", "auc_target_within", "score"}
    # Target normals without target anomalies: AUC (target) uses the source anomalies; within-target cannot.
    t = M.domain_metrics([0, 1, 0, 0], [0.1, 0.9, 0.92, 0.95], ["source", "source", "target", "target"])
    assert t.auc_target == 0.0 and t.auc_source == 1.0
    assert t.not_measurable == {"auc_target_within": "no target-domain anomalous clips"}
    assert t.score == pytest.approx(0.0, abs=1e-12)  # an AUC of 0 is floored at epsilon, not an error
    # No anomalies at all
    n = M.domain_metrics([0, 0], [0.1, 0.2], ["source", "target"])
    assert n.pauc is None and n.not_measurable["pauc"] == "no anomalous clips"
    assert n.not_measurable["auc_source"] == "no anomalous clips in either domain"
    # A clip without a domain: no domain figure, pAUC still over every clip
    u = M.domain_metrics([0, 1, 0], [0.1, 0.9, 0.2], ["source", "source", None])
    assert u.auc_source is None and u.not_measurable["auc_source"] == "1 of 3 clips carry no domain"
    assert u.pauc == 1.0 and u.counts["no_domain"] == 1
    # Over sections: one section without target normals makes the official score unmeasurable, named.
    avg = M.section_average({"ToyCar/section_00": M.domain_metrics(DOM_Y, DOM_S, DOM_D), "ToyCar/section_01": m})
    assert avg.score is None and avg.auc_target is None and avg.auc_source is not None
    assert avg.not_measurable["auc_target"] == "ToyCar/section_01: no target-domain normal clips"
    # JSON never carries NaN
    json.dumps([m.to_dict(), avg.to_dict(), n.to_dict()], allow_nan=False)
    with pytest.raises(ParameterError, match="domains must be"):
        M.domain_metrics([0, 1], [0.1, 0.2], ["source", "src"])
    with pytest.raises(ParameterError, match="at least one section"):
        M.section_average({})
