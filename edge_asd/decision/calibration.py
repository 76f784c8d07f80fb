"""On-site calibration: set the threshold for a target false-alarm rate from normal audio.

Normal audio recorded where the device is mounted is scored exactly as the service scores it
(streaming front end, windows, period means). A gamma distribution is fitted to the upper tail of
the period scores (the exceedances over a tail quantile, a peaks-over-threshold fit in the spirit
of the DCASE baselines' gamma fit), and the threshold is the score a normal period exceeds with
probability ``p = false_alarms_per_day · period_s / 86400``. A bootstrap over the periods says how
uncertain that threshold is for the amount of audio recorded.

The rate is per *period*; the alarm's k-of-n debounce makes actual onset events rarer still, so
the stated rate is an upper bound on false alarm events.

The same periods, in stream order, calibrate the sequential evidence rule
(:func:`edge_asd.decision.evidence.fit_evidence_rule`). The user states one false-alarm rate for the device
(:data:`DEFAULT_FALSE_ALARMS_PER_DAY`: one a week); :func:`fit_alarm_rules` gives each rule half
of it, so that the two together stay within it. When the audio is too short for the evidence
rule, the threshold takes the whole rate, and the record says how much audio the rule needs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from edge_asd.decision.alarm import PeriodAverager
from edge_asd.errors import ParameterError
from edge_asd.decision.evidence import SECONDS_PER_WEEK, EvidenceRule, fit_evidence_rule

__all__ = ["BundleCalibration", "CalibrationResult", "AlarmRules", "calibrate_bundle", "fit_threshold", "fit_alarm_rules",
           "score_periods", "threshold_record", "resolve_rate", "check_threshold_setting", "SECONDS_PER_DAY", "MIN_PERIODS", "DEFAULT_FALSE_ALARMS_PER_DAY",
           "EVIDENCE_SHARE"]

SECONDS_PER_DAY = 86_400.0
DEFAULT_FALSE_ALARMS_PER_DAY = 1.0 / 7.0
"""One false alarm a week for the device, both rules together: a rate a plant accepts."""
EVIDENCE_SHARE = 0.5
"""Share of the device's false-alarm rate given to the evidence rule; the threshold has the rest."""
MIN_PERIODS = 10
"""Fewer normal periods than this cannot support a tail fit."""
MIN_TAIL_POINTS = 5
"""Smallest number of exceedances the gamma is fitted to."""
DEFAULT_TAIL_FRACTION = 0.5
"""Fraction of the highest period scores the gamma is fitted to."""
DEFAULT_BOOTSTRAP = 200
CI_LEVEL = 0.9


@dataclass(frozen=True, kw_only=True)
class CalibrationResult:
    """A calibrated threshold and how far to trust it."""

    threshold: float
    """Period-score threshold for the target rate."""
    false_alarms_per_day: float
    """Target rate of anomalous normal periods per day."""
    period_s: float
    p_period: float
    """Target probability that a normal period exceeds the threshold."""
    n_periods: int
    audio_s: float
    tail_fraction: float
    tail_cut: float
    """Score above which the tail was fitted (the ``1 − tail_fraction`` quantile)."""
    gamma_shape: float
    gamma_scale: float
    ci_low: float
    ci_high: float
    """Bootstrap interval of the threshold at :data:`CI_LEVEL`."""
    expected_false_alarms_in_recording: float
    """``n_periods · p_period``: how many exceedances the target rate predicts in the recorded audio."""
    observed_exceedances: int
    """Recorded normal periods above the threshold."""
    extrapolated: bool
    """The threshold lies beyond every recorded score (the target rate is rarer than the recording
    can show directly): the fit, not the data, sets it."""
    scores_summary: Mapping[str, float] = field(default_factory=dict)

    def statement(self) -> str:
        """A human-readable summary of the threshold and its uncertainty."""
        hours = self.audio_s / 3600
        lines = [
            f"threshold {self.threshold:.6g} for {self.false_alarms_per_day:g} false alarm(s)/day "
            f"at {self.period_s:g} s periods (p = {self.p_period:.3g} per period)",
            f"fitted on {self.n_periods} periods ({hours:.2f} h of audio): gamma(shape {self.gamma_shape:.3g}, "
            f"scale {self.gamma_scale:.3g}) over the top {self.tail_fraction:.0%} of scores (above {self.tail_cut:.6g})",
            f"{CI_LEVEL:.0%} bootstrap interval of the threshold: [{self.ci_low:.6g}, {self.ci_high:.6g}]",
            f"in the recorded audio the target rate expects {self.expected_false_alarms_in_recording:.3g} "
            f"exceedance(s); observed {self.observed_exceedances}",
        ]
        if self.extrapolated:
            lines.append(
                "the threshold is an extrapolation beyond the highest recorded score: record more audio "
                f"(about {math.ceil(1 / self.p_period * self.period_s / 3600)} h would show one expected exceedance) "
                "for a data-backed estimate"
            )
        return "\n".join(lines)


def _gamma_tail_threshold(scores: np.ndarray, p: float, tail_fraction: float) -> tuple[float, float, float, float]:
    """Threshold ``t`` with ``P(score > t) = p`` from a gamma fitted to exceedances over a tail cut.

    Returns ``(threshold, cut, shape, scale)``.
    """
    import scipy.stats

    cut = float(np.quantile(scores, 1.0 - tail_fraction))
    excess = scores[scores > cut] - cut
    if excess.size < MIN_TAIL_POINTS or not np.ptp(excess) > 0:
        raise ParameterError(
            f"only {excess.size} distinct period scores above the tail cut; record more audio or use a "
            "longer --seconds"
        )
    frac = excess.size / scores.size
    shape, _, scale = scipy.stats.gamma.fit(excess, floc=0.0)
    if p >= frac:
        # The target is not in the tail: the empirical quantile is better supported than the fit.
        return float(np.quantile(scores, 1.0 - p)), cut, float(shape), float(scale)
    return cut + float(scipy.stats.gamma.isf(p / frac, shape, loc=0.0, scale=scale)), cut, float(shape), float(scale)


def fit_threshold(
    period_scores: Iterable[float],
    *,
    period_s: float,
    false_alarms_per_day: float = 1.0,
    tail_fraction: float = DEFAULT_TAIL_FRACTION,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> CalibrationResult:
    """Fit the threshold for ``false_alarms_per_day`` to normal period scores.

    Parameters
    ----------
    period_scores
        Scores of normal periods (mean window score per period), shape ``(n_periods,)``.
    period_s
        Length of a period, seconds.
    false_alarms_per_day
        Target rate of normal periods above the threshold, per day.
    tail_fraction
        Fraction of the highest scores the gamma is fitted to, in (0, 1].
    n_bootstrap
        Bootstrap resamples for the interval (0: no interval).
    seed
        Bootstrap seed (the result is deterministic).

    Raises
    ------
    ParameterError
        Too few periods, non-finite scores, or parameters out of range.
    """
    scores = np.asarray(list(period_scores), dtype=np.float64)
    if not (math.isfinite(period_s) and period_s > 0):
        raise ParameterError(f"period_s must be > 0 seconds, got {period_s}")
    if not (math.isfinite(false_alarms_per_day) and false_alarms_per_day > 0):
        raise ParameterError(f"false_alarms_per_day must be > 0, got {false_alarms_per_day}")
    if not 0 < tail_fraction <= 1:
        raise ParameterError(f"tail_fraction must be in (0, 1], got {tail_fraction}")
    if scores.size < MIN_PERIODS:
        raise ParameterError(
            f"{scores.size} period(s) of normal audio are too few to calibrate (need >= {MIN_PERIODS}, i.e. "
            f">= {MIN_PERIODS * period_s:g} s at {period_s:g} s periods); record longer"
        )
    if not np.isfinite(scores).all():
        raise ParameterError("period scores contain NaN or inf")
    p = false_alarms_per_day * period_s / SECONDS_PER_DAY
    if p >= 1:
        raise ParameterError(
            f"{false_alarms_per_day} false alarms/day at {period_s} s periods means every period alarms; lower the rate"
        )
    threshold, cut, shape, scale = _gamma_tail_threshold(scores, p, tail_fraction)
    boots = []
    rng = np.random.default_rng(seed)
    for _ in range(n_bootstrap):
        sample = scores[rng.integers(0, scores.size, scores.size)]
        try:
            boots.append(_gamma_tail_threshold(sample, p, tail_fraction)[0])
        except ParameterError:
            continue  # a resample with too few distinct tail points says nothing; skip it
    alpha = (1 - CI_LEVEL) / 2
    lo, hi = (float(np.quantile(boots, alpha)), float(np.quantile(boots, 1 - alpha))) if boots else (math.nan, math.nan)
    return CalibrationResult(
        threshold=threshold,
        false_alarms_per_day=false_alarms_per_day,
        period_s=period_s,
        p_period=p,
        n_periods=int(scores.size),
        audio_s=float(scores.size * period_s),
        tail_fraction=tail_fraction,
        tail_cut=cut,
        gamma_shape=shape,
        gamma_scale=scale,
        ci_low=lo,
        ci_high=hi,
        expected_false_alarms_in_recording=float(scores.size * p),
        observed_exceedances=int((scores > threshold).sum()),
        extrapolated=bool(threshold > scores.max()),
        scores_summary={
            "min": float(scores.min()), "median": float(np.median(scores)),
            "max": float(scores.max()), "mean": float(scores.mean()), "std": float(scores.std()),
        },
    )


def resolve_rate(*, per_day: float | None, per_week: float | None) -> float:
    """The device's false-alarm target in alarms per day from the CLI's two spellings (at most
    one given; neither: :data:`DEFAULT_FALSE_ALARMS_PER_DAY`)."""
    if per_day is not None and per_week is not None:
        raise ParameterError("give --false-alarms-per-day or --false-alarms-per-week, not both")
    rate = DEFAULT_FALSE_ALARMS_PER_DAY if per_day is None and per_week is None else (
        per_day if per_day is not None else per_week * SECONDS_PER_DAY / SECONDS_PER_WEEK)
    if not (math.isfinite(rate) and rate > 0):
        raise ParameterError(f"the false-alarm rate must be > 0, got {rate!r}")
    return float(rate)


@dataclass(frozen=True, kw_only=True)
class AlarmRules:
    """Both alarm rules fitted on one series of normal period scores."""

    threshold: CalibrationResult
    evidence: EvidenceRule | None
    evidence_note: str = ""
    """Why there is no evidence rule (too little audio, and how much is needed); empty when there is one."""
    false_alarms_per_day: float
    """The device's target, both rules together."""

    def statement(self) -> str:
        head = f"false-alarm target {self.false_alarms_per_day * 7:g}/week for the device"
        if self.evidence is None:
            return "\n".join([head + ", all of it for the threshold", self.threshold.statement(),
                              f"evidence rule: not fitted: {self.evidence_note}"])
        return "\n".join([head + f": {1 - EVIDENCE_SHARE:.0%} for the threshold, {EVIDENCE_SHARE:.0%} for the evidence rule",
                          self.threshold.statement(), "evidence rule: " + self.evidence.statement()])


def fit_alarm_rules(
    period_scores: Iterable[float],
    *,
    period_s: float,
    false_alarms_per_day: float = DEFAULT_FALSE_ALARMS_PER_DAY,
    tail_fraction: float = DEFAULT_TAIL_FRACTION,
    evidence: bool = True,
) -> AlarmRules:
    """Fit the threshold and the evidence rule for the device's ``false_alarms_per_day``.

    ``period_scores`` are normal period scores in stream order. The evidence rule gets
    :data:`EVIDENCE_SHARE` of the rate and the threshold the rest; without enough audio for the
    evidence rule (or with ``evidence=False``) the threshold gets it all. Raises
    :class:`ParameterError` when even the threshold cannot be fitted.
    """
    scores = np.asarray(list(period_scores), dtype=np.float64)
    if not (math.isfinite(false_alarms_per_day) and false_alarms_per_day > 0):
        raise ParameterError(f"false_alarms_per_day must be > 0, got {false_alarms_per_day}")
    rule, note = None, "disabled"
    if evidence:
        try:
            rule = fit_evidence_rule(scores, period_s=period_s,
                                     false_alarms_per_week=EVIDENCE_SHARE * false_alarms_per_day * SECONDS_PER_WEEK / SECONDS_PER_DAY)
            note = ""
        except ParameterError as exc:
            note = str(exc)
    share = 1.0 - EVIDENCE_SHARE if rule is not None else 1.0
    fit = fit_threshold(scores, period_s=period_s, false_alarms_per_day=share * false_alarms_per_day, tail_fraction=tail_fraction)
    return AlarmRules(threshold=fit, evidence=rule, evidence_note=note, false_alarms_per_day=false_alarms_per_day)


def score_periods(detector: Any, source: Any, *, period_s: float, max_seconds: float | None = None) -> tuple[np.ndarray, float]:
    """Score audio from ``source`` as the service does and return ``(period scores, audio seconds)``.

    Reads until the source ends or ``max_seconds`` of audio were read. The last, partial period is
    kept only if it holds at least half a period of windows' worth of time.
    """
    from edge_asd.scoring.streaming import StreamingScorer

    scorer = StreamingScorer(detector, n_channels=source.n_channels)
    averager = PeriodAverager(period_s)
    periods: list[float] = []
    n_samples = 0
    limit = None if max_seconds is None else int(max_seconds * source.sr)
    last_t = 0.0

    def add(windows: list[tuple[float, float]]) -> None:
        nonlocal last_t
        for t, score in windows:
            closed = averager.add(score, t)
            last_t = t
            if closed is not None:
                periods.append(closed[2])

    try:
        for block in source.blocks():
            if limit is not None and n_samples + block.shape[0] > limit:
                block = block[: limit - n_samples]
            n_samples += block.shape[0]
            add(scorer.push(block))
            if limit is not None and n_samples >= limit:
                break
    finally:
        source.close()
    add(scorer.flush())
    closed = averager.flush()
    if closed is not None and closed[1] - closed[0] >= period_s / 2:
        periods.append(closed[2])
    return np.asarray(periods, dtype=np.float64), n_samples / source.sr


def threshold_record(
    result: "CalibrationResult | AlarmRules",
    *,
    input_desc: str,
    model: str,
    source: str = "device",
    calibrated_for: Mapping[str, Any] | None = None,
) -> Any:
    """The :class:`edge_asd.scoring.bundle.Threshold` to store for ``result``.

    ``source`` is ``"device"`` (``edge-asd calibrate``), ``"enrollment"`` (``edge-asd enroll``) or
    ``"training"`` (export). ``calibrated_for`` records the settings the scores were measured with
    (``period_s``, ``model``, ``class_label``, ``n_channels``); the service checks them at start-up.
    """
    from edge_asd.scoring.bundle import Threshold

    rules = result if isinstance(result, AlarmRules) else None
    result = result.threshold if rules is not None else result
    details = {k: v for k, v in dataclasses.asdict(result).items() if k not in ("threshold", "false_alarms_per_day", "period_s")}
    # JSON has no NaN: an interval that could not be computed is stored as null.
    details = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in details.items()}
    details.update({"input": input_desc, "model": model, "ci_level": CI_LEVEL, "statement": result.statement()})
    if rules is not None:
        details["device_false_alarms_per_day"] = rules.false_alarms_per_day
        if rules.evidence is None:
            details["evidence_note"] = rules.evidence_note
    return Threshold(
        value=result.threshold,
        method="gamma-tail-fit",
        source=source,
        false_alarms_per_day=result.false_alarms_per_day,
        period_s=result.period_s,
        details=details,
        calibrated_for=dict(calibrated_for or {}),
        evidence=None if rules is None else rules.evidence,
    )


@dataclass(frozen=True, kw_only=True)
class BundleCalibration:
    """What :func:`calibrate_bundle` measured and wrote."""

    result: CalibrationResult
    rules: AlarmRules
    previous: Any
    """The :class:`edge_asd.scoring.bundle.Threshold` the bundle had before."""
    input_desc: str
    audio_s: float
    """Audio read, seconds."""
    written: bool


def calibrate_bundle(
    bundle_path: Any,
    inp: Any,
    *,
    seconds: float,
    period_s: float,
    false_alarms_per_day: float = DEFAULT_FALSE_ALARMS_PER_DAY,
    tail_fraction: float = DEFAULT_TAIL_FRACTION,
    model: str = "int8",
    class_label: str | None = None,
    dry_run: bool = False,
) -> BundleCalibration:
    """Set a bundle's threshold from normal audio, as ``edge-asd calibrate`` does.

    ``inp`` is an :class:`edge_asd.config.InputConfig` (microphone, wav file or folder); up to
    ``seconds`` of it are scored in periods of ``period_s`` seconds and the threshold and the
    evidence rule fitted for the device's ``false_alarms_per_day`` (:func:`fit_alarm_rules`). The previous threshold moves to the bundle's history (unless
    ``dry_run``). Raises the front end's and the source's errors, and :class:`ParameterError` when
    the audio holds fewer than :data:`MIN_PERIODS` periods.
    """
    from edge_asd.audio.sources import open_source
    from edge_asd.scoring.bundle import update_threshold
    from edge_asd.scoring.detector import Detector
    from edge_asd.audio.sources import describe_input

    detector = Detector.from_bundle(bundle_path, model=model, class_label=class_label)
    source = open_source(inp, sr=detector.config.sr, realtime=False, loop=False)
    n_channels = source.n_channels
    scores, audio_s = score_periods(detector, source, period_s=period_s, max_seconds=seconds)
    rules = fit_alarm_rules(scores, period_s=period_s, false_alarms_per_day=false_alarms_per_day, tail_fraction=tail_fraction)
    what = describe_input(inp)
    if not dry_run:
        calibrated_for = {"period_s": period_s, "model": model, "class_label": class_label, "n_channels": n_channels}
        update_threshold(bundle_path, threshold_record(rules, input_desc=what, model=model, calibrated_for=calibrated_for))
    return BundleCalibration(result=rules.threshold, rules=rules, previous=detector.bundle.threshold, input_desc=what,
                             audio_s=audio_s, written=not dry_run)


def check_threshold_setting(bundle: Any, config: Any, *, n_channels: int) -> str:
    """Start-up check of the bundle's threshold against the running configuration.

    Returns a warning (``""`` when none) for a threshold never calibrated or enrolled on site: it
    was set on training audio, which is not the sound where the device is mounted. Raises
    :class:`~edge_asd.errors.BundleError` when the threshold's record says it was set for another
    period length, model, machine class or channel count: its false-alarm rate would be wrong.
    """
    from edge_asd.errors import BundleError

    t = bundle.threshold
    for key, running in (("period_s", config.alarm.period_s), ("model", config.device.model),
                         ("class_label", config.device.class_label), ("n_channels", n_channels)):
        if key not in t.calibrated_for:
            continue
        recorded = t.calibrated_for[key]
        same = math.isclose(recorded, running) if key == "period_s" else recorded == running
        if not same:
            raise BundleError(
                f"{bundle.path / 'bundle.json'}: the threshold was set ({t.source}, {t.created}) for {key} {recorded!r} but "
                f"this configuration runs {key} {running!r}; re-run 'edge-asd calibrate' or 'edge-asd enroll' with this "
                "configuration, or change it back"
            )
    if t.source == "training":
        return (f"the threshold of {bundle.path} was set on training audio, never calibrated or enrolled on site; "
                "expect a false-alarm rate other than stated: run 'edge-asd enroll' (or 'edge-asd calibrate')")
    if t.evidence is None and config.alarm.evidence:
        return (f"the threshold of {bundle.path} has no evidence rule ({t.details.get('evidence_note') or 'set before it existed'}): "
                "small faults that persist are not heard; run 'edge-asd calibrate' with enough normal audio")
    return ""
