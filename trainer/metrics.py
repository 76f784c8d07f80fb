"""Detection metrics, computed with scikit-learn exactly as the DCASE Task 2 evaluators do.

Convention everywhere: ``y_true`` is 1 (or ``True``) for an anomalous clip and 0 for a normal one;
a higher score means more anomalous; at an operating threshold a clip is flagged when
``score > threshold`` (the PyOD convention the detector follows).

pAUC, which definition
----------------------
The official DCASE 2020-2024 Task 2 evaluators (``dcase2020_task2_evaluator/evaluator.py``,
``dcase2023_task2_evaluator.py``, ``dcase2024_task2_evaluator.py``) all compute
``sklearn.metrics.roc_auc_score(y_true, y_pred, max_fpr=0.1)``: scikit-learn's *McClish-standardised*
partial AUC, ``0.5 * (1 + (A - A_min) / (A_max - A_min))`` with ``A`` the raw area under the ROC curve
for FPR in [0, 0.1], ``A_min = 0.1**2 / 2`` and ``A_max = 0.1``. That is what every published DCASE
number is, so it is :func:`pauc`'s default (``definition="dcase"``).

The DCASE task-description papers instead *write* pAUC as the raw partial area divided by
``max_fpr`` (``A / 0.1``: 0 for the worst detector, 1 for a perfect one, 0.1 for a random one).
``definition="raw"`` gives that value, computed from :func:`sklearn.metrics.roc_curve` with the ROC
curve interpolated linearly at ``FPR = max_fpr`` (the same interpolation scikit-learn uses before
standardising). The two are related exactly by
``dcase = 0.5 * (1 + (raw * max_fpr - max_fpr**2 / 2) / (max_fpr - max_fpr**2 / 2))``.

Domains (DCASE 2021-2024)
-------------------------
Definitions as in the DCASE 2022-2024 evaluators (read in ``nttcslab/dcase2023_task2_evaluator``):
per section, AUC (source) = source-domain normal clips against the anomalous clips of *both*
domains, AUC (target) likewise with target normals, pAUC over every clip of the section, and the
official score = harmonic mean over all sections' AUC (source), AUC (target) and pAUC pooled, each
floored at machine epsilon (:func:`domain_metrics`, :func:`section_average`). DCASE 2021 instead
scored each domain on its own normals and anomalies; that within-domain AUC is reported beside
(:func:`within_domain_auc`). A metric whose clips are missing is ``None`` with a reason, never NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.stats
from numpy.typing import ArrayLike
from sklearn import metrics as skm

from edge_asd.errors import ParameterError

__all__ = [
    "MAX_FPR",
    "AucDifference",
    "DomainMetrics",
    "SectionAverage",
    "ThresholdMetrics",
    "auc",
    "auc_difference",
    "dcase2023_official_score",
    "domain_auc",
    "domain_metrics",
    "false_alarms_per_hour",
    "mauc",
    "pauc",
    "per_group_auc",
    "section_average",
    "threshold_metrics",
    "within_domain_auc",
    "youden_threshold",
]

MAX_FPR = 0.1
"""The false-positive-rate limit of pAUC in DCASE Task 2."""

_EPS = np.finfo(float).eps  # the DCASE 2023/2024 evaluators floor values at sys.float_info.epsilon before hmean


def _labels_scores(y_true: ArrayLike, y_score: ArrayLike, *, need_both: bool = True) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    s = np.asarray(y_score, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1 or y.shape != s.shape:
        raise ParameterError(f"y_true and y_score must be 1-D of the same length, got shapes {y.shape} and {s.shape}")
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            raise ParameterError("y_true must hold 0 (normal) and 1 (anomaly) only")
        y = y.astype(bool)
    if not np.isfinite(s).all():
        raise ParameterError("y_score holds NaN or infinite values; a clip that cannot be scored is an error, not a score")
    if need_both and (y.all() or not y.any()):
        raise ParameterError(
            f"AUC needs both normal and anomalous clips; got {int((~y).sum())} normal and {int(y.sum())} anomalous"
        )
    return y, s


def auc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Area under the ROC curve (``sklearn.metrics.roc_auc_score``).

    Parameters
    ----------
    y_true : array-like of {0, 1} or bool, shape (n_clips,)
        1 for anomalous clips.
    y_score : array-like of float, shape (n_clips,)
        Anomaly scores, higher is more anomalous.

    Returns
    -------
    float in [0, 1]; 0.5 is chance.
    """
    y, s = _labels_scores(y_true, y_score)
    return float(skm.roc_auc_score(y, s))


@dataclass(frozen=True, kw_only=True)
class AucDifference:
    """Two detectors' AUCs on the same clips and DeLong's test of their difference."""

    auc_a: float
    auc_b: float
    difference: float
    """``auc_a - auc_b``."""
    std_error: float
    """Standard error of the difference (DeLong), from the sampling of the test clips."""
    ci_low: float
    """Lower end of the two-sided confidence interval of the difference at ``confidence``."""
    ci_high: float
    """Upper end of that interval."""
    confidence: float
    p_value: float
    """Two-sided p-value of "the AUCs are equal"; 1.0 when the two scorings rank the clips identically."""

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def _placements(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components from midranks (Sun & Xu 2014): for each anomalous clip the
    share of normal clips it outscores, and for each normal clip the share of anomalous clips that
    outscore it (ties count one half)."""
    pos, neg = s[y], s[~y]
    m, n = pos.size, neg.size
    ranks = scipy.stats.rankdata(np.concatenate([pos, neg]))
    v10 = (ranks[:m] - scipy.stats.rankdata(pos)) / n
    v01 = 1.0 - (ranks[m:] - scipy.stats.rankdata(neg)) / m
    return v10, v01


def auc_difference(y_true: ArrayLike, scores_a: ArrayLike, scores_b: ArrayLike, *, confidence: float = 0.95) -> AucDifference:
    """Is detector A's AUC different from detector B's on the same clips? DeLong's paired test.

    With a few dozen test clips an AUC moves by several hundredths from the sampling of the clips
    alone; the two detectors' errors are correlated because they score the same clips, and DeLong's
    covariance (DeLong, DeLong & Clarke-Pearson 1988) accounts for that. This covers the test-set
    sampling only; training-seed spread needs several trained models (see ``benchmarks.toycar --seeds``).

    Parameters
    ----------
    y_true
        As in :func:`auc`.
    scores_a, scores_b : array-like of float, shape (n_clips,)
        Both detectors' scores of the same clips, in the same order.
    confidence
        Level of the confidence interval, in (0, 1).
    """
    if not 0.0 < confidence < 1.0:
        raise ParameterError(f"confidence must be in (0, 1), got {confidence}")
    y, a = _labels_scores(y_true, scores_a)
    _, b = _labels_scores(y_true, scores_b)
    (a10, a01), (b10, b01) = _placements(y, a), _placements(y, b)
    auc_a, auc_b = float(a10.mean()), float(b10.mean())
    m, n = a10.size, a01.size
    # Var(A - B) = (var10_a + var10_b - 2 cov10) / m + (the same over normal clips) / n
    var = (np.var(a10 - b10, ddof=1) if m > 1 else 0.0) / m + (np.var(a01 - b01, ddof=1) if n > 1 else 0.0) / n
    diff = auc_a - auc_b
    se = float(np.sqrt(max(var, 0.0)))
    if se == 0.0:
        p = 1.0 if diff == 0.0 else 0.0
    else:
        p = float(2.0 * scipy.stats.norm.sf(abs(diff) / se))
    half = float(scipy.stats.norm.ppf(0.5 + confidence / 2.0)) * se
    return AucDifference(auc_a=auc_a, auc_b=auc_b, difference=diff, std_error=se, ci_low=diff - half, ci_high=diff + half,
                         confidence=confidence, p_value=p)


def _raw_partial_area(y: np.ndarray, s: np.ndarray, max_fpr: float) -> float:
    """Raw area under the ROC curve over FPR in [0, max_fpr], interpolated at max_fpr."""
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    stop = int(np.searchsorted(fpr, max_fpr, side="right"))
    if stop == len(fpr):  # max_fpr == 1: the whole curve
        return float(skm.auc(fpr, tpr))
    # Linear interpolation between the two ROC points either side of max_fpr (as scikit-learn does).
    tpr_at = np.interp(max_fpr, fpr[stop - 1 : stop + 1], tpr[stop - 1 : stop + 1])
    return float(skm.auc(np.append(fpr[:stop], max_fpr), np.append(tpr[:stop], tpr_at)))


def pauc(
    y_true: ArrayLike,
    y_score: ArrayLike,
    *,
    max_fpr: float = MAX_FPR,
    definition: Literal["dcase", "raw"] = "dcase",
) -> float:
    """Partial AUC over false-positive rates up to ``max_fpr``.

    Parameters
    ----------
    y_true, y_score
        As in :func:`auc`.
    max_fpr
        Upper FPR limit, in (0, 1]. DCASE uses 0.1.
    definition
        ``"dcase"`` (default): what the official DCASE 2020-2024 evaluators compute,
        ``sklearn.metrics.roc_auc_score(y_true, y_score, max_fpr=max_fpr)`` - McClish-standardised,
        0.5 for a random detector, 1 for a perfect one. ``"raw"``: the task papers' formula, the raw
        partial area (from ``sklearn.metrics.roc_curve``, interpolated at ``max_fpr``) divided by
        ``max_fpr`` - ``max_fpr / 2`` for a random detector, 1 for a perfect one. See the module
        docstring for the exact relation.

    Returns
    -------
    float in [0, 1].
    """
    if not 0.0 < max_fpr <= 1.0:
        raise ParameterError(f"max_fpr must be in (0, 1], got {max_fpr}")
    y, s = _labels_scores(y_true, y_score)
    if definition == "dcase":
        return float(skm.roc_auc_score(y, s, max_fpr=max_fpr))
    if definition == "raw":
        return _raw_partial_area(y, s, max_fpr) / max_fpr
    raise ParameterError(f"definition must be 'dcase' or 'raw', got {definition!r}")


def per_group_auc(y_true: ArrayLike, y_score: ArrayLike, groups: ArrayLike) -> dict[str, float]:
    """AUC of each group (e.g. machine ID) separately, ``{group: auc}`` sorted by group name."""
    y, s = _labels_scores(y_true, y_score, need_both=False)
    g = np.asarray(groups).astype(str)
    if g.shape != y.shape:
        raise ParameterError(f"groups must have the same length as y_true, got {g.shape} and {y.shape}")
    return {name: auc(y[g == name], s[g == name]) for name in sorted(set(g.tolist()))}


def mauc(aucs: Mapping[str, float] | Sequence[float]) -> float:
    """DCASE 2020's mAUC: the AUC of the *worst* machine ID of a machine type (a minimum, not a mean).

    Parameters
    ----------
    aucs
        Per-ID AUCs of one machine type, e.g. the output of :func:`per_group_auc`.
    """
    values = list(aucs.values()) if isinstance(aucs, Mapping) else list(aucs)
    if not values:
        raise ParameterError("mAUC needs at least one per-ID AUC")
    return float(min(values))


def domain_auc(y_true: ArrayLike, y_score: ArrayLike, domains: ArrayLike, domain: str) -> float:
    """AUC for one domain of a DCASE 2021+ section, as the DCASE 2023/2024 evaluators compute it.

    The evaluators keep the normal clips *of that domain* and the anomalous clips *of both domains*
    (``(y_domain == domain) | (y_true != 0)``), so AUC (source) and AUC (target) share the anomalies.

    Parameters
    ----------
    y_true, y_score
        As in :func:`auc`, for one section.
    domains : array-like of str, shape (n_clips,)
        ``"source"`` or ``"target"`` per clip.
    domain
        The domain to score.
    """
    y, s = _labels_scores(y_true, y_score, need_both=False)
    d = np.asarray(domains).astype(str)
    if d.shape != y.shape:
        raise ParameterError(f"domains must have the same length as y_true, got {d.shape} and {y.shape}")
    keep = (d == domain) | y
    return auc(y[keep], s[keep])


def dcase2023_official_score(
    auc_source: Sequence[float], auc_target: Sequence[float], pauc_values: Sequence[float]
) -> float:
    """DCASE 2023 (and 2024) official score: the harmonic mean over all AUC (source), AUC (target) and pAUC.

    Each sequence has one value per machine type and section (pAUC is over both domains of a
    section). As the evaluator does, values are floored at machine epsilon before
    ``scipy.stats.hmean``, so one AUC of 0 gives a score near 0 instead of an error.
    """
    values = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in (auc_source, auc_target, pauc_values)])
    if values.size == 0:
        raise ParameterError("the official score needs at least one AUC or pAUC value")
    if not np.all((values >= 0) & (values <= 1)):
        raise ParameterError("AUC and pAUC values must lie in [0, 1]")
    return float(scipy.stats.hmean(np.maximum(values, _EPS)))


# ---------------------------------------------------------------------------------------------
# DCASE 2021-2024: sections with a source and a target domain
# ---------------------------------------------------------------------------------------------

DOMAINS = ("source", "target")
"""The two domains of a DCASE 2021-2024 section."""

DOMAIN_METRICS = ("auc_source", "auc_target", "pauc", "score", "auc_source_within", "auc_target_within")
"""The fields of :class:`DomainMetrics` and :class:`SectionAverage` that hold a metric (or ``None``)."""

DOMAIN_METRIC_LABELS = {
    "auc_source": "AUC (source)",
    "auc_target": "AUC (target)",
    "pauc": "pAUC",
    "score": "official score",
    "auc_source_within": "AUC (source, within)",
    "auc_target_within": "AUC (target, within)",
}
"""Human names of :data:`DOMAIN_METRICS`, as tables print them."""


def _domains_of(domains: ArrayLike, y: np.ndarray) -> np.ndarray:
    """Domains as a str array ("" for a clip without one), the same length as ``y``."""
    d = np.array(["" if v is None else str(v) for v in np.asarray(domains, dtype=object).ravel()], dtype=object)
    if d.shape != y.shape:
        raise ParameterError(f"domains must have the same length as y_true, got {d.shape} and {y.shape}")
    bad = sorted(set(d.tolist()) - {"", *DOMAINS})
    if bad:
        raise ParameterError(f"domains must be 'source', 'target' or None, got {bad}")
    return d


def within_domain_auc(y_true: ArrayLike, y_score: ArrayLike, domains: ArrayLike, domain: str) -> float:
    """AUC of one domain's normal clips against *that domain's* anomalous clips only.

    This is DCASE 2021's per-domain AUC (its evaluator scored source and target test sets
    separately) and what this project reported before the DCASE 2022+ rule; it is kept beside
    :func:`domain_auc` because the two answer different questions: "does the detector separate
    this domain's faults" against "does one threshold work for this domain's normal sound against
    every fault".
    """
    y, s = _labels_scores(y_true, y_score, need_both=False)
    d = _domains_of(domains, y)
    return auc(y[d == domain], s[d == domain])


@dataclass(frozen=True, kw_only=True)
class DomainMetrics:
    """The DCASE 2021-2024 metrics of one section (one machine type and section, both domains).

    A metric that cannot be measured on these clips is ``None`` and :attr:`not_measurable` gives
    the reason under the field's name, so that no table ever shows NaN.
    """

    counts: Mapping[str, int]
    """Clips per ``"<domain>_<normal|anomaly>"`` (and ``"no_domain"`` for clips without one)."""
    auc_source: float | None
    """DCASE 2022+ rule: source-domain normal clips against the anomalous clips of both domains."""
    auc_target: float | None
    """Target-domain normal clips against the anomalous clips of both domains."""
    pauc: float | None
    """pAUC (max FPR 0.1, :func:`pauc`'s DCASE definition) over every clip of the section."""
    score: float | None
    """Harmonic mean of ``auc_source``, ``auc_target`` and ``pauc``; only when all three exist."""
    auc_source_within: float | None
    """Source normals against source anomalies only (:func:`within_domain_auc`)."""
    auc_target_within: float | None
    """Target normals against target anomalies only."""
    not_measurable: Mapping[str, str]
    """Field name -> why it is ``None``."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every metric (``None`` when not measurable), the counts and the reasons."""
        return {**{k: getattr(self, k) for k in DOMAIN_METRICS}, "counts": dict(self.counts),
                "not_measurable": dict(self.not_measurable)}


def _hmean(values: Sequence[float]) -> float:
    # Floored at machine epsilon like the DCASE 2023/2024 evaluators, so one AUC of 0 gives a score
    # near 0 rather than a division error.
    return float(scipy.stats.hmean(np.maximum(np.asarray(values, dtype=np.float64), _EPS)))


def domain_metrics(y_true: ArrayLike, y_score: ArrayLike, domains: ArrayLike) -> DomainMetrics:
    """AUC (source), AUC (target), pAUC, their harmonic mean and the within-domain AUCs of one section.

    Definitions (DCASE 2022-2024 Task 2 evaluators, ``dcase2023_task2_evaluator.py``): AUC for a
    domain keeps that domain's normal clips and the anomalous clips of *both* domains, because a
    domain-generalisation system gets one threshold for both domains; pAUC is computed once over all
    clips of the section; the section's score is the harmonic mean of the three.

    Parameters
    ----------
    y_true, y_score
        As in :func:`auc`, for the clips of one section.
    domains : array-like of {"source", "target", None}, shape (n_clips,)

    Returns
    -------
    DomainMetrics
        Metrics that need clips the section lacks (e.g. a source-only test set has no target
        normal clips) are ``None`` with the reason. Clips without a domain make every domain
        metric unmeasurable; pAUC still uses them.
    """
    y, s = _labels_scores(y_true, y_score, need_both=False)
    d = _domains_of(domains, y)
    counts = {f"{dom}_{lab}": int(((d == dom) & (y == anomalous)).sum())
              for dom in DOMAINS for lab, anomalous in (("normal", False), ("anomaly", True))}
    if (d == "").any():
        counts["no_domain"] = int((d == "").sum())
    values: dict[str, float | None] = dict.fromkeys(DOMAIN_METRICS)
    why: dict[str, str] = {}

    if not (~y).any() or not y.any():
        why["pauc"] = "no normal clips" if not (~y).any() else "no anomalous clips"
    else:
        values["pauc"] = pauc(y, s)
    for dom in DOMAINS:
        normals, own_anomalies = counts[f"{dom}_normal"], counts[f"{dom}_anomaly"]
        keys = (f"auc_{dom}", f"auc_{dom}_within")
        if "no_domain" in counts:
            for k in keys:
                why[k] = f"{counts['no_domain']} of {y.size} clips carry no domain"
            continue
        if not normals:
            why[keys[0]] = why[keys[1]] = f"no {dom}-domain normal clips"
            continue
        if not y.any():
            why[keys[0]] = "no anomalous clips in either domain"
        else:
            values[keys[0]] = domain_auc(y, s, d, dom)
        if not own_anomalies:
            why[keys[1]] = f"no {dom}-domain anomalous clips"
        else:
            values[keys[1]] = within_domain_auc(y, s, d, dom)
    parts = ("auc_source", "auc_target", "pauc")
    if all(values[k] is not None for k in parts):
        values["score"] = _hmean([values[k] for k in parts])  # type: ignore[misc]
    else:
        why["score"] = "needs " + "; ".join(f"{DOMAIN_METRIC_LABELS[k]} ({why[k]})" for k in parts if k in why)
    return DomainMetrics(counts=counts, not_measurable=why, **values)


@dataclass(frozen=True, kw_only=True)
class SectionAverage:
    """DCASE 2021-2024 metrics over several sections (e.g. the sections of a machine type, or all).

    ``auc_*`` and ``pauc`` are arithmetic means over the sections (the evaluator's per-machine-type
    figures); ``score`` is the official score, the harmonic mean over every section's AUC (source),
    AUC (target) and pAUC pooled together. Each is given only when every section has it; otherwise
    it is ``None`` and :attr:`not_measurable` says which section lacks it and why.
    """

    n_sections: int
    auc_source: float | None
    auc_target: float | None
    pauc: float | None
    score: float | None
    auc_source_within: float | None
    auc_target_within: float | None
    not_measurable: Mapping[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"n_sections": self.n_sections, **{k: getattr(self, k) for k in DOMAIN_METRICS},
                "not_measurable": dict(self.not_measurable)}


def section_average(sections: Mapping[str, DomainMetrics]) -> SectionAverage:
    """Average per-section :class:`DomainMetrics` the DCASE 2023/2024 way.

    The official score is ``hmean`` over the 3 x n_sections values {AUC (source), AUC (target), pAUC}
    of every section (each floored at machine epsilon), via :func:`dcase2023_official_score`. With
    three values per section this equals the harmonic mean of the per-section scores.

    Parameters
    ----------
    sections
        Section name (e.g. ``"ToyCar/section_00"``) -> its metrics; the names go into the reasons.
    """
    if not sections:
        raise ParameterError("averaging over sections needs at least one section")
    values: dict[str, float | None] = dict.fromkeys(DOMAIN_METRICS)
    why: dict[str, str] = {}
    for k in DOMAIN_METRICS:
        missing = [(name, m.not_measurable.get(k, "not measured")) for name, m in sections.items() if getattr(m, k) is None]
        if missing:
            # A mean over the sections that happen to be measurable would silently change what is averaged.
            why[k] = "; ".join(f"{name}: {reason}" for name, reason in missing)
        elif k == "score":
            values[k] = dcase2023_official_score([m.auc_source for m in sections.values()],  # type: ignore[misc]
                                                 [m.auc_target for m in sections.values()],
                                                 [m.pauc for m in sections.values()])
        else:
            values[k] = float(np.mean([getattr(m, k) for m in sections.values()]))
    return SectionAverage(n_sections=len(sections), not_measurable=why, **values)


@dataclass(frozen=True, kw_only=True)
class ThresholdMetrics:
    """Decisions at one threshold (``score > threshold`` is flagged anomalous)."""

    threshold: float
    """The threshold, in score units."""
    accuracy: float
    precision: float
    """Flagged clips that are anomalous; 0 when nothing is flagged."""
    recall: float
    """Anomalous clips that are flagged (true-positive rate)."""
    f1: float
    false_positive_rate: float
    """Normal clips that are flagged."""
    tn: int
    fp: int
    fn: int
    tp: int

    @property
    def confusion_matrix(self) -> np.ndarray:
        """``[[tn, fp], [fn, tp]]``: rows are the truth (normal, anomaly), columns the decision."""
        return np.array([[self.tn, self.fp], [self.fn, self.tp]], dtype=np.int64)

    def to_dict(self) -> dict[str, float | int]:
        return {
            "threshold": self.threshold,
            "accuracy": self.accuracy,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "false_positive_rate": self.false_positive_rate,
            "tn": self.tn,
            "fp": self.fp,
            "fn": self.fn,
            "tp": self.tp,
        }


def threshold_metrics(y_true: ArrayLike, y_score: ArrayLike, threshold: float) -> ThresholdMetrics:
    """Accuracy, precision, recall, F1 and the confusion matrix at ``threshold`` (scikit-learn).

    Works with one class only (e.g. all normal), where precision/recall/F1 fall to 0 instead of
    warning.
    """
    y, s = _labels_scores(y_true, y_score, need_both=False)
    if y.size == 0:
        raise ParameterError("threshold metrics need at least one clip")
    pred = s > threshold
    tn, fp, fn, tp = (int(v) for v in skm.confusion_matrix(y, pred, labels=[False, True]).ravel())
    return ThresholdMetrics(
        threshold=float(threshold),
        accuracy=float(skm.accuracy_score(y, pred)),
        precision=float(skm.precision_score(y, pred, zero_division=0)),
        recall=float(skm.recall_score(y, pred, zero_division=0)),
        f1=float(skm.f1_score(y, pred, zero_division=0)),
        false_positive_rate=fp / (fp + tn) if fp + tn else 0.0,
        tn=tn,
        fp=fp,
        fn=fn,
        tp=tp,
    )


def youden_threshold(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """The threshold maximising Youden's J = TPR - FPR on labelled clips.

    Chosen on the ROC curve of ``sklearn.metrics.roc_curve`` and returned half-way between the
    optimal score and the next lower one, so that ``score > threshold`` reproduces the optimal ROC
    point exactly and generalises a little better than a threshold sitting on a clip's score. It is
    fitted on the labels it is then evaluated on, so metrics at this threshold are optimistic.
    """
    y, s = _labels_scores(y_true, y_score)
    fpr, tpr, thresholds = skm.roc_curve(y, s, drop_intermediate=False)
    k = int(np.argmax(tpr - fpr))  # first maximum: the highest such threshold, fewest false alarms
    if k == 0:  # J = 0 everywhere: flag nothing
        return float(thresholds[1])
    if k + 1 < len(thresholds):
        return float((thresholds[k] + thresholds[k + 1]) / 2.0)
    return float(np.nextafter(thresholds[k], -np.inf))


def false_alarms_per_hour(normal_scores: ArrayLike, threshold: float, clip_duration_s: float | ArrayLike) -> float:
    """False alarms per hour of normal audio: flagged normal clips / hours of normal audio scored.

    Parameters
    ----------
    normal_scores : array-like of float, shape (n_clips,)
        Scores of clips known to be normal (e.g. recorded at the mounting site).
    threshold
        Flag when ``score > threshold``.
    clip_duration_s
        Duration of each clip in seconds: one value for all, or one per clip.

    Returns
    -------
    float, alarms per hour.
    """
    s = np.asarray(normal_scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ParameterError("normal_scores must be a non-empty 1-D array")
    if not np.isfinite(s).all():
        raise ParameterError("normal_scores hold NaN or infinite values")
    try:
        durations = np.broadcast_to(np.asarray(clip_duration_s, dtype=np.float64), s.shape)
    except ValueError as exc:
        raise ParameterError(f"clip_duration_s must be one value or one per clip ({s.size}): {exc}") from exc
    if not (durations > 0).all():
        raise ParameterError("clip_duration_s must be > 0")
    hours = float(durations.sum()) / 3600.0
    return float(np.count_nonzero(s > threshold)) / hours
