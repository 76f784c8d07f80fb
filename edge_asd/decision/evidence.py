"""Sequential evidence of a small, persistent shift of the period scores: a one-sided CUSUM.

The per-period threshold hears a fault that is loud in one period. A fault that only moves the
period score up by about one normal standard deviation, for as long as it lasts (a worn bearing,
a loose part), never crosses a threshold set for one false alarm a day. Page's one-sided CUSUM
hears it by its persistence:

    z_t = (score_t - mean) / std                     (standardised with the site's normal periods)
    S_t = max(0, S_{t-1} + min(z_t, z_cap) - k),  k = shift_sd / 2, z_cap = 3
    evidence onset when S_t >= h

``shift_sd`` is the shift the rule is tuned to: one standard deviation of the normal period
scores, set a priori (the textbook design point, k = 0.5), not read off any test set. Why a CUSUM
rather than the alternatives:

- against a fixed shift it is the optimal rule (Lorden, Moustakides: least worst-case delay at a
  given false-alarm rate); an SPRT restarted at zero is the same statistic;
- an EWMA chart weighs old evidence down geometrically and needs two parameters for the same job;
- a windowed mean test forgets the evidence that falls out of its window, so its delay is tied to
  the window length, and a fault shorter than the window is diluted.

The CUSUM also tells where the shift began: the period after the statistic last stood at zero.
Each period adds at most ``z_cap - k`` (a winsorised CUSUM, as robust CUSUMs do): a single loud
period is the period rule's to judge, and no recording shows how often normal sound goes beyond its
own highest period, so the calibration could not promise a rate for uncapped spikes (without the
cap, half the false alarms on heavy-tailed synthetic scores came from one or two periods).

Calibration (:func:`fit_evidence_rule`) turns a false-alarm rate (per week) into ``h`` from the
site's own normal period scores, in stream order. Successive period scores are correlated and
not Gaussian, so no textbook formula is used: a sieve bootstrap (Bühlmann 1997) fits an
autoregression to the recorded series (order by AIC, 0 when the periods look independent) and
drives it with the series' own residuals drawn with replacement, which keeps both the correlation
and the non-Gaussian tails (negative correlation, which a short series shows by chance and a
machine does not, is not modelled: it would lower the level). Each replicate is one recording the
site's could have been: its own reference mean and sd, estimated from a simulated recording as long
as the site's, then a long simulated normal stream; its level is the one whose rate of crossings
(the statistic restarted at zero after each) is the target. ``h`` is the median of these levels:
the rate asked is the typical site's, and the median is robust to the few replicates whose reference
is far off. The rule also states the rate nine sites in ten stay under at that ``h`` (the 90th
percentile of the replicates' rates, in the spirit of Gandy & Kvaløy 2013): a short recording shows
up as a wide gap between the two. One too short for the rate asked is refused with the audio it needs.

What did not work (``benchmarks/results/alarm_calibration.md``): a moving-block bootstrap (with a few hundred periods its extremes are a replay
of the recording's single highest stretch, and ``h`` swung by a factor of five in the alarm rate
between recordings of the same white noise); and the level for the *average* rate over replicates
(on ToyCar's 40 validation periods two or three replicates in 32 drifted upwards at every level,
and the extrapolated ``h`` came out at 147 and 163, a rule that never fires); the 90th percentile of
the replicates' levels as ``h`` (a guarantee for nine sites in ten): on 7 h of normal synthetic sound
it alarmed 0.6 times as often as asked at ten an hour, outside the 95 % range on the quiet side.

Back to normal is hysteretic: during an alarm the statistic is capped at ``h``, and the alarm
clears only when it has drained to zero, i.e. when normal periods have outweighed the evidence
(about ``h / k`` normal periods), never after one quiet period.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from edge_asd.scoring.bundle import DEFAULT_SHIFT_SD, DEFAULT_Z_CAP, EvidenceRule
from edge_asd.errors import ParameterError

__all__ = [
    "EvidenceRule", "Cusum", "fit_evidence_rule", "ar_order", "SECONDS_PER_WEEK", "DEFAULT_SHIFT_SD",
    "MIN_EVIDENCE_PERIODS", "MIN_PERIODS_PER_LAG", "needed_periods",
]

SECONDS_PER_WEEK = 7 * 86_400.0
MIN_EVIDENCE_PERIODS = 30
"""Fewer normal periods than this cannot support the rule: the reference mean would be uncertain
by more than a fifth of a standard deviation, and that error adds to the drift of every period."""
MIN_PERIODS_PER_LAG = 10
"""The recording must hold at least this many periods per autoregressive lag fitted."""
DEFAULT_REPLICATES = 64
LEVEL_QUANTILE = 0.5
"""The alarm level is the median of the replicates' levels: the rate asked is the typical site's.
A median is robust to the few replicates whose reference is far off (their level may be infinite)."""
BOUND_QUANTILE = 0.9
"""The rule also says the rate nine sites in ten stay under (the 90th percentile of the replicates'
rates at the chosen level): how much a recording of this length can promise."""
STREAM_PERIODS = 50_000
"""Periods of simulated normal sound per replicate."""
MIN_CROSSINGS = 10
"""A level whose simulated crossings are fewer than this is not read off the simulation directly."""
_LEVELS = np.round(np.arange(0.5, 60.01, 0.25), 2)


class Cusum:
    """The running statistic of an :class:`EvidenceRule`.

    ``update`` takes one decided period; ``statistic`` is in standard deviations and
    ``fraction`` (0-1) is the share of the alarm level reached, for status displays.
    """

    def __init__(self, rule: EvidenceRule) -> None:
        self.rule = rule
        self.statistic = 0.0
        self.start_s: float | None = None
        """Start of the first period of the current excursion above zero (the estimated start of
        the shift), on the caller's clock, seconds; ``None`` while the statistic is zero."""
        self.periods = 0
        """Periods in the current excursion."""
        self._sum_z = 0.0

    @property
    def fraction(self) -> float:
        return min(1.0, max(0.0, self.statistic / self.rule.decision_level))

    @property
    def crossed(self) -> bool:
        return self.statistic >= self.rule.decision_level

    @property
    def mean_shift(self) -> float | None:
        """Mean standardised score over the current excursion (the size of the shift), SD."""
        return self._sum_z / self.periods if self.periods else None

    def update(self, score: float, start_s: float) -> float:
        """Add a decided period's score (period starting at ``start_s``); return the statistic."""
        z = self.rule.standardise(score)
        value = self.statistic + min(z, self.rule.z_cap) - self.rule.allowance
        if value <= 0:
            self.reset()
            return 0.0
        if self.statistic == 0.0:  # a new excursion (reset() has zeroed its counts)
            self.start_s = start_s
        self.statistic = value
        self.periods += 1
        self._sum_z += z
        return value

    def cap(self) -> None:
        """Hold the statistic at the alarm level at most (during an alarm), so recovery needs a
        bounded stretch of normal periods however long the fault lasted."""
        self.statistic = min(self.statistic, self.rule.decision_level)

    def reset(self, statistic: float = 0.0) -> None:
        self.statistic = float(statistic)
        self.start_s = None
        self.periods = 0
        self._sum_z = 0.0


def ar_order(scores: np.ndarray, max_order: int | None = None) -> tuple[int, np.ndarray]:
    """Order (by AIC) and Yule-Walker coefficients of an autoregression of a period-score series.

    The sieve bootstrap's model of the correlation between successive periods: order 0 when the
    periods look independent. At most ``n // 10`` lags (and 8), so each is backed by data.
    """
    x = np.asarray(scores, dtype=np.float64)
    n = x.size
    top = min(8, n // 10) if max_order is None else max_order
    centred = x - x.mean()
    acov = np.array([centred[: n - lag] @ centred[lag:] / n for lag in range(top + 1)])
    if not acov[0] > 0:
        return 0, np.zeros(0)
    best = (n * math.log(acov[0]), 0, np.zeros(0))
    for order in range(1, top + 1):
        r = acov[:order + 1]
        toeplitz = r[np.abs(np.subtract.outer(np.arange(order), np.arange(order)))]
        try:
            phi = np.linalg.solve(toeplitz, r[1:order + 1])
        except np.linalg.LinAlgError:
            break
        innovation = acov[0] - phi @ r[1:order + 1]
        if not innovation > 0:
            break
        aic = n * math.log(innovation) + 2 * order
        if aic < best[0]:
            best = (aic, order, phi)
    order, phi = best[1], best[2]
    if order and phi.sum() < 0:
        # Negatively correlated periods would make sums of scores steadier than independent ones and
        # the alarm level lower; a machine's sound does not do that, a short series does by chance.
        return 0, np.zeros(0)
    return order, phi


def needed_periods(order: int) -> int:
    """Normal periods the rule needs when the scores follow an autoregression of ``order``."""
    return max(MIN_EVIDENCE_PERIODS, MIN_PERIODS_PER_LAG * order)


def _sieve_streams(rng: np.random.Generator, x: np.ndarray, phi: np.ndarray, rows: int, length: int) -> np.ndarray:
    """``rows`` series of ``length`` from the sieve bootstrap of ``x``: its autoregression driven by
    its own residuals drawn with replacement (non-Gaussian tails kept), around its mean."""
    import scipy.signal

    order = phi.size
    centred = x - x.mean()
    if order:
        resid = centred[order:] - sum(phi[j] * centred[order - 1 - j: x.size - 1 - j] for j in range(order))
    else:
        resid = centred
    resid = resid - resid.mean()
    burn = 10 * order + 50 if order else 0
    shocks = resid[rng.integers(0, resid.size, size=(rows, length + burn))]
    series = scipy.signal.lfilter([1.0], np.concatenate([[1.0], -phi]), shocks, axis=1) if order else shocks
    return series[:, burn:] + x.mean()


def _crossings(z: np.ndarray, allowance: float, levels: np.ndarray) -> np.ndarray:
    """Crossings of each level by the CUSUM of each row of ``z`` (restarted at zero after each),
    per row: shape ``(rows, levels)``."""
    stat = np.zeros((z.shape[0], levels.size))
    count = np.zeros((z.shape[0], levels.size), dtype=np.int64)
    drift = z - allowance
    for t in range(z.shape[1]):
        stat += drift[:, t, None]
        np.maximum(stat, 0.0, out=stat)
        hit = stat >= levels
        count += hit
        stat[hit] = 0.0
    return count


def fit_evidence_rule(
    period_scores: Any,
    *,
    period_s: float,
    false_alarms_per_week: float = 1.0,
    shift_sd: float = DEFAULT_SHIFT_SD,
    z_cap: float = DEFAULT_Z_CAP,
    n_replicates: int = DEFAULT_REPLICATES,
    seed: int = 0,
) -> EvidenceRule:
    """Calibrate the CUSUM's alarm level for ``false_alarms_per_week`` on normal period scores.

    Parameters
    ----------
    period_scores
        The site's normal period scores *in stream order* (their correlation matters), shape
        ``(n_periods,)``.
    period_s
        Length of a period, seconds.
    false_alarms_per_week
        Target rate of evidence onsets on normal sound.
    shift_sd
        The shift to detect, standard deviations of the normal period scores.
    n_replicates
        Bootstrap replicates (each: a re-estimated reference and a long simulated stream).
    seed
        The result is deterministic for a seed.

    Raises
    ------
    ParameterError
        Too little audio for the rule (the message says how much is needed), non-finite or
        constant scores, parameters out of range.
    """
    x = np.asarray(period_scores, dtype=np.float64).ravel()
    if not (math.isfinite(period_s) and period_s > 0):
        raise ParameterError(f"period_s must be > 0 seconds, got {period_s}")
    if not (math.isfinite(false_alarms_per_week) and false_alarms_per_week > 0):
        raise ParameterError(f"false_alarms_per_week must be > 0, got {false_alarms_per_week}")
    if not (math.isfinite(shift_sd) and shift_sd > 0):
        raise ParameterError(f"shift_sd must be > 0, got {shift_sd}")
    if not np.isfinite(x).all():
        raise ParameterError("period scores contain NaN or inf")
    p = false_alarms_per_week * period_s / SECONDS_PER_WEEK
    if p >= 0.5:
        raise ParameterError(f"{false_alarms_per_week:g} false alarms/week at {period_s:g} s periods is an alarm every "
                             "other period; lower the rate")
    order, phi = ar_order(x) if x.size >= 2 else (0, np.zeros(0))
    need = needed_periods(order)
    if x.size < need:
        raise ParameterError(
            f"{x.size} period(s) ({x.size * period_s:g} s) of normal audio are too few for the evidence rule: it needs "
            f">= {need} periods, i.e. >= {need * period_s:g} s at {period_s:g} s periods (successive "
            f"periods correlated to lag {order} here); record longer"
        )
    mean, std = float(x.mean()), float(x.std(ddof=1))
    if not std > 0:
        raise ParameterError("every normal period has the same score: the evidence rule cannot be calibrated")
    rng = np.random.default_rng(seed)
    k = shift_sd / 2
    # Each replicate: a simulated copy of the recording gives the reference it would have been
    # calibrated with; a long simulated stream is the normal sound it then listens to.
    ref = _sieve_streams(rng, x, phi, n_replicates, x.size)
    ref_mean = ref.mean(axis=1, keepdims=True)
    ref_std = np.maximum(ref.std(axis=1, ddof=1, keepdims=True), 1e-12 * std)
    z = (_sieve_streams(rng, x, phi, n_replicates, STREAM_PERIODS) - ref_mean) / ref_std
    counts = _crossings(np.minimum(z, z_cap), k, _LEVELS)
    levels = np.array([_level_for_rate(_LEVELS, row / STREAM_PERIODS, row, p) for row in counts])
    bad = ~np.isfinite(levels)
    h = float(np.quantile(levels, LEVEL_QUANTILE, method="higher"))
    if not math.isfinite(h):
        # Most of the recordings this one could have been give a reference so far off that normal
        # sound alone drifts the statistic up: the rate asked cannot be promised from this much audio.
        frac = float(bad.mean())
        more = int(math.ceil(4 * x.size))
        raise ParameterError(
            f"{x.size} periods ({x.size * period_s:g} s) of normal audio are too few to promise {false_alarms_per_week:g} "
            f"false alarm(s)/week from the evidence rule: in {frac:.0%} of the recordings they could have been, its "
            f"reference is too uncertain; record about {more * period_s:g} s ({more} periods) or ask for a higher rate"
        )
    delays = {}
    shifted_length = min(STREAM_PERIODS, 20_000)
    for shift in (0.5, 1.0, 2.0):
        hits = int(_crossings(np.minimum(z[~bad, :shifted_length] + shift, z_cap), k, np.array([h])).sum())
        periods = (~bad).sum() * shifted_length / hits if hits else math.inf
        delays[f"{shift:g}"] = float(periods * period_s) if math.isfinite(periods) else None
    rates_at_h = np.array([_rate_at_level(_LEVELS, row / STREAM_PERIODS, row, h) for row in counts])
    bound = float(np.quantile(rates_at_h, BOUND_QUANTILE)) * SECONDS_PER_WEEK / period_s
    observable = counts.sum(axis=0) >= MIN_CROSSINGS * n_replicates
    lowest = counts.sum(axis=0)[observable].min() / (n_replicates * STREAM_PERIODS) if observable.any() else None
    details = {
        "n_periods": int(x.size),
        "audio_s": float(x.size * period_s),
        "ar_order": order,
        "ar_coefficients": [float(c) for c in phi],
        "replicates": n_replicates,
        "simulated_periods": int(n_replicates * STREAM_PERIODS),
        "p_period": p,
        "level_quantile": LEVEL_QUANTILE,
        "replicate_levels": {"median": h, "q90": float(np.quantile(levels, BOUND_QUANTILE)), "off_reference": int(bad.sum())},
        "rate_bound_per_week": bound,
        "rate_bound_quantile": BOUND_QUANTILE,
        "extrapolated": bool(lowest is None or p < lowest),
        "lowest_simulated_rate_per_week": None if lowest is None else float(lowest * SECONDS_PER_WEEK / period_s),
        "delay_s": delays,
        "seed": seed,
        "scores_summary": {"min": float(x.min()), "median": float(np.median(x)), "max": float(x.max())},
    }
    rule = EvidenceRule(reference_mean=mean, reference_std=std, decision_level=float(h), false_alarms_per_week=false_alarms_per_week,
                        period_s=period_s, shift_sd=shift_sd, z_cap=z_cap, details=details)
    return dataclasses.replace(rule, details={**details, "statement": rule.statement()})


def _rate_at_level(levels: np.ndarray, rates: np.ndarray, counts: np.ndarray, h: float) -> float:
    """One replicate's crossing rate at level ``h`` (per period), read off its simulated rates as
    :func:`_level_for_rate` reads the level: interpolated, or extrapolated along the upper levels'
    line; the highest observable level's rate when its rate does not fall."""
    ok = counts >= MIN_CROSSINGS
    if not ok.any():
        return float(MIN_CROSSINGS / (STREAM_PERIODS))  # rarer than the simulation shows even at the lowest level
    idx = np.flatnonzero(ok)
    log_rate = np.log(rates[idx])
    if h <= levels[idx[-1]]:
        return float(np.exp(np.interp(h, levels[idx], log_rate)))
    upper = idx[idx.size // 2:] if idx.size >= 4 else idx
    if upper.size < 2:
        return float(rates[idx[-1]])
    slope, intercept = np.polyfit(levels[upper], np.log(rates[upper]), 1)
    if not slope < 0:
        return float(rates[idx[-1]])
    return float(np.exp(intercept + slope * h))


def _level_for_rate(levels: np.ndarray, rates: np.ndarray, counts: np.ndarray, p: float) -> float:
    """The level at which one replicate's crossing rate is ``p``: log-linear interpolation between
    simulated levels, or a log-linear extrapolation (Siegmund: log rate is close to linear in h for
    large h) from the upper levels still crossed often enough. ``inf`` when the rate does not fall
    with the level (the replicate's reference is so far off that normal sound drifts upwards)."""
    ok = counts >= MIN_CROSSINGS
    if not ok.any():
        return float(levels[0])  # crossed too rarely to count even at the lowest level
    log_rate = np.log(np.where(ok, rates, np.nan))
    target = math.log(p)
    idx = np.flatnonzero(ok)
    if log_rate[idx[0]] <= target:
        return float(levels[idx[0]])
    below = idx[log_rate[idx] <= target]
    if below.size:
        j = below[0]
        i = idx[idx < j][-1]
        frac = (log_rate[i] - target) / (log_rate[i] - log_rate[j])
        return float(levels[i] + frac * (levels[j] - levels[i]))
    if idx[-1] == levels.size - 1:
        return math.inf  # still crossed often at the highest level: no level keeps this replicate quiet
    upper = idx[idx.size // 2:] if idx.size >= 4 else idx
    if upper.size < 2:
        return math.inf
    slope, intercept = np.polyfit(levels[upper], log_rate[upper], 1)
    if not slope < 0:
        return math.inf
    return float((target - intercept) / slope)
