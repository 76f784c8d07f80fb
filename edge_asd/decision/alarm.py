"""Alarm logic: window scores → period scores → anomalous / normal level → onset and recovery events.

Shaped like TFLite Micro's ``RecognizeCommands``: the caller passes each window score with the
time it refers to; scores are averaged over a fixed period; a decision needs ``onset_k`` anomalous
periods among the last ``onset_n`` (debounce); a separate back-to-normal event follows
``recovery_m`` consecutive normal periods; a refractory time suppresses repeated onsets. Time must
never go backwards. The *level* (is the current period anomalous?) is reported apart from the
*event* (did the alarm state change?).

Anomaly decisions can be paused (:meth:`AlarmLogic.hold`, e.g. during a sensor fault or while the
machine is idle): every period overlapping a hold is closed undecided, counts for nothing, and the
k-of-n look-back restarts when the hold is released. A window can also be marked invalid (its audio
had a sensor problem or an idle level): it moves the period grid on but stays out of the mean.

Beside the k-of-n rule, which hears a fault loud in single periods, an optional evidence rule
(:class:`edge_asd.decision.evidence.EvidenceRule`, a one-sided CUSUM over standardised period scores) hears
a small shift that persists. Either rule raises the onset (``rule`` says which); back to normal
needs both: ``recovery_m`` normal periods in a row *and* the evidence drained to zero (it is
capped at its alarm level during an alarm, so draining takes a bounded stretch of normal sound).
Undecided periods (holds, no valid window) add no evidence; :meth:`AlarmLogic.reset_evidence`
forgets it (the service does so when the sensor is lost).

The clock is whatever the caller passes: the service uses stream time (seconds of audio since the
start), which is monotonic by construction and makes file replay deterministic; callers without a
time of their own get :func:`time.monotonic` through the injected ``clock``.
"""

from __future__ import annotations

import collections
import math
import time
from dataclasses import dataclass
from typing import Callable, Literal

from edge_asd.errors import ParameterError
from edge_asd.decision.evidence import Cusum, EvidenceRule

__all__ = ["AlarmConfig", "PeriodResult", "PeriodAverager", "AlarmLogic", "ExcludedStretches", "EVENT_ONSET",
           "EVENT_RECOVERY", "MIN_PARTIAL_PERIOD", "RULE_PERIOD", "RULE_EVIDENCE"]

EVENT_ONSET = "onset"
EVENT_RECOVERY = "back_to_normal"
EventKind = Literal["onset", "back_to_normal"]
RULE_PERIOD = "period"
"""The k-of-n rule on single periods above the threshold fired."""
RULE_EVIDENCE = "evidence"
"""The sequential evidence rule (CUSUM) fired."""
MIN_PARTIAL_PERIOD = 0.5
"""A final partial period is decided on only if its windows span at least this fraction of
``period_s``; calibration keeps a partial period by the same rule. The mean of a few windows
varies more than a full period's, and the threshold was set for full periods."""


@dataclass(frozen=True, kw_only=True)
class AlarmConfig:
    """Debounce and timing of the alarm."""

    period_s: float = 10.0
    """Scoring period, seconds: the period score is the mean of the window scores inside it."""
    onset_k: int = 3
    """Anomalous periods needed among the last ``onset_n`` to raise an onset event."""
    onset_n: int = 5
    """Length of the onset look-back, periods."""
    recovery_m: int = 3
    """Consecutive normal periods needed for the back-to-normal event."""
    refractory_s: float = 300.0
    """Minimum time between two onset events, seconds (suppresses flapping alarms)."""
    evidence: bool = True
    """Run the sequential evidence rule when the bundle's threshold carries one."""
    evidence_max_gap_s: float = 60.0
    """Evidence saved by a run is resumed at the next start only if the service was down for at
    most this long, seconds: across a longer gap the machine, the microphone or the room may have
    changed, and old evidence would say nothing about the new sound."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.period_s) and self.period_s > 0):
            raise ParameterError(f"alarm.period_s must be > 0 seconds, got {self.period_s!r}")
        for key in ("onset_k", "onset_n", "recovery_m"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ParameterError(f"alarm.{key} must be an integer >= 1, got {value!r}")
        if self.onset_k > self.onset_n:
            raise ParameterError(f"alarm.onset_k ({self.onset_k}) must not exceed alarm.onset_n ({self.onset_n})")
        if not (math.isfinite(self.refractory_s) and self.refractory_s >= 0):
            raise ParameterError(f"alarm.refractory_s must be >= 0 seconds, got {self.refractory_s!r}")
        if not (math.isfinite(self.evidence_max_gap_s) and self.evidence_max_gap_s >= 0):
            raise ParameterError(f"alarm.evidence_max_gap_s must be >= 0 seconds, got {self.evidence_max_gap_s!r}")


@dataclass(frozen=True, kw_only=True)
class PeriodResult:
    """One closed scoring period."""

    start_s: float
    """Start of the period on the caller's clock, seconds."""
    end_s: float
    """Time of the last window in the period, seconds."""
    score: float
    """Mean of the period's valid window scores (NaN when none was valid)."""
    n_windows: int
    """Valid windows in the mean."""
    anomalous: bool
    """Level: ``score > threshold``."""
    alarm: bool
    """Alarm state after this period (``True`` between an onset and the next back-to-normal)."""
    event: EventKind | None = None
    """``"onset"`` or ``"back_to_normal"`` when the alarm state changed at this period."""
    anomalous_in_window: int = 0
    """Anomalous periods among the last ``onset_n`` (for the event record)."""
    decided: bool = True
    """``False`` for a final partial period too short to decide on (see :meth:`AlarmLogic.flush`),
    a period overlapping a hold, or one without a valid window: it changed neither the look-back
    nor the alarm state, and ``anomalous`` is only its level."""
    reason: str = ""
    """Why the period was not decided (``"partial period"``, the holds' names, ``"no valid
    windows"``); empty when decided."""
    n_invalid: int = 0
    """Windows left out of the mean (marked invalid)."""
    evidence: float | None = None
    """The evidence statistic after this period, standard deviations (``None``: no evidence rule)."""
    evidence_level: float | None = None
    """The evidence rule's alarm level ``h``, standard deviations."""
    rules: tuple[str, ...] = ()
    """At an onset: the rules that fired (:data:`RULE_PERIOD`, :data:`RULE_EVIDENCE`)."""
    shift_start_s: float | None = None
    """At an evidence onset: the estimated start of the shift (the first period of the CUSUM's
    excursion above zero), seconds on the caller's clock."""
    shift_sd: float | None = None
    """At an evidence onset: the mean standardised score since ``shift_start_s`` (the shift's size), SD."""

    @property
    def evidence_fraction(self) -> float | None:
        """``evidence`` as a share of the evidence rule's alarm level, 0-1 (``None``: no evidence rule)."""
        if self.evidence is None or not self.evidence_level:
            return None
        return min(1.0, max(0.0, self.evidence / self.evidence_level))


class PeriodAverager:
    """Group timed window scores into fixed periods of ``period_s`` and average them.

    Periods are half-open intervals ``[start, start + period_s)`` on a fixed grid starting at the
    first window's time, so they do not drift. A period closes when a window at or beyond its end
    arrives, or on :meth:`flush`.
    """

    def __init__(self, period_s: float) -> None:
        if not (math.isfinite(period_s) and period_s > 0):
            raise ParameterError(f"period_s must be > 0 seconds, got {period_s!r}")
        self.period_s = float(period_s)
        self.reset()

    def reset(self) -> None:
        self._start: float | None = None
        self._last_t: float | None = None
        self._sum = 0.0
        self._count = 0
        self._invalid = 0
        self.last_invalid = 0
        """Invalid windows of the period the last :meth:`add` or :meth:`flush` closed."""

    def add(self, score: float, t_s: float, *, valid: bool = True) -> tuple[float, float, float, int] | None:
        """Add a window score at time ``t_s``; return ``(start_s, end_s, mean, n)`` of a period it closes.

        An invalid window (``valid=False``) moves the grid like any other but stays out of the
        mean; ``n`` counts valid windows and ``mean`` is NaN when there were none.

        Raises
        ------
        ParameterError
            ``t_s`` is earlier than a previous window's time, or ``score`` is not finite.
        """
        if not math.isfinite(score):
            raise ParameterError(f"window score must be finite, got {score!r}")
        if self._last_t is not None and t_s < self._last_t:
            raise ParameterError(f"time went backwards: {t_s} s after {self._last_t} s")
        closed = None
        if self._start is None:
            self._start = t_s
        elif t_s >= self._start + self.period_s:
            closed = self._close()
            # Periods are [start, start + period_s); skip whole empty periods (a gap in the audio)
            # so the grid stays aligned. At least one: in floating point t - start can round just
            # below period_s where start + period_s did not (start 10.028, t 20.028), and a period
            # that did not move on would close again, with one window, at the next score.
            self._start += max(1, math.floor((t_s - self._start) / self.period_s)) * self.period_s
        if valid:
            self._sum += score
            self._count += 1
        else:
            self._invalid += 1
        self._last_t = t_s
        return closed

    def _close(self) -> tuple[float, float, float, int] | None:
        if self._count + self._invalid == 0 or self._start is None or self._last_t is None:
            return None
        out = (self._start, self._last_t, self._sum / self._count if self._count else math.nan, self._count)
        self.last_invalid = self._invalid
        self._sum, self._count, self._invalid = 0.0, 0, 0
        return out

    def flush(self) -> tuple[float, float, float, int] | None:
        """Close the current, possibly partial, period (at shutdown or end of input)."""
        out = self._close()
        if out is not None and self._start is not None:
            self._start += self.period_s
        return out


class AlarmLogic:
    """Turn timed window scores into period results and alarm events.

    Parameters
    ----------
    config
        Timing and debounce.
    threshold
        Period scores above it are anomalous (the bundle's calibrated threshold).
    evidence
        The bundle's calibrated evidence rule, or ``None`` for the k-of-n rule alone.
    clock
        Returns the current time in seconds when :meth:`update` is called without ``t_s``.
        Default :func:`time.monotonic`.

    Notes
    -----
    Warm-up is deterministic: the look-back holds only periods actually seen, so the first onset
    can come after ``onset_k`` periods at the earliest and nothing depends on initial state.
    """

    def __init__(self, config: AlarmConfig, *, threshold: float, evidence: EvidenceRule | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not math.isfinite(threshold):
            raise ParameterError(f"threshold must be finite, got {threshold!r}")
        self.config = config
        self.threshold = float(threshold)
        self.cusum: Cusum | None = Cusum(evidence) if evidence is not None and config.evidence else None
        self._clock = clock
        self._averager = PeriodAverager(config.period_s)
        self.reset()

    def reset(self) -> None:
        """Forget history and alarm state (a new stream)."""
        self._averager.reset()
        self._recent: collections.deque[bool] = collections.deque(maxlen=self.config.onset_n)
        self._normal_run = 0
        self.alarm = False
        self._last_onset_s: float | None = None
        self.n_periods = 0
        self._holds: set[str] = set()
        self._tainted: set[str] = set()  # holds that overlapped the current period
        if self.cusum is not None:
            self.cusum.reset()

    @property
    def evidence_rule(self) -> EvidenceRule | None:
        return None if self.cusum is None else self.cusum.rule

    def set_rules(self, *, threshold: float, evidence: EvidenceRule | None) -> None:
        """Switch to another bundle's threshold and evidence rule (a reload). Evidence measured
        against the old rule's reference means nothing under the new one: it restarts (at the
        alarm level during an alarm, so the alarm is not cleared by the switch)."""
        if not math.isfinite(threshold):
            raise ParameterError(f"threshold must be finite, got {threshold!r}")
        self.threshold = float(threshold)
        self.cusum = Cusum(evidence) if evidence is not None and self.config.evidence else None
        self.reset_evidence()

    def reset_evidence(self) -> None:
        """Forget the accumulated evidence (a sensor loss: the sound after it may come through
        another microphone or position). During an alarm the statistic restarts at the alarm
        level, so the alarm still needs a full stretch of normal sound to clear."""
        if self.cusum is not None:
            self.cusum.reset(self.cusum.rule.decision_level if self.alarm else 0.0)

    def restore_evidence(self, statistic: float) -> None:
        """Continue with evidence saved by an earlier run (see :attr:`AlarmConfig.evidence_max_gap_s`)."""
        if self.cusum is not None and math.isfinite(statistic) and statistic > 0:
            self.cusum.reset(min(float(statistic), self.cusum.rule.decision_level) if self.alarm else float(statistic))

    def update(self, score: float, t_s: float | None = None, *, valid: bool = True) -> PeriodResult | None:
        """Add one window score at time ``t_s`` (default: the clock); return the period it closes.
        An invalid window (``valid=False``) stays out of the period's mean."""
        t = self._clock() if t_s is None else float(t_s)
        closed = self._averager.add(float(score), t, valid=valid)
        return None if closed is None else self._decide(*closed)

    @property
    def held(self) -> bool:
        """``True`` while a hold is in force."""
        return bool(self._holds)

    def hold(self, name: str) -> None:
        """Pause decisions for ``name`` (e.g. ``"sensor_fault"``): the current period and every
        period until :meth:`release` close undecided. The alarm state is kept."""
        self._holds.add(name)
        self._tainted.add(name)

    def release(self, name: str) -> None:
        """End the hold ``name``. The current period overlapped it and stays undecided; the k-of-n
        look-back and the normal run restart, so nothing from before the hold counts after it."""
        if name not in self._holds:
            return
        self._holds.discard(name)
        self._tainted.add(name)
        self._recent.clear()
        self._normal_run = 0

    def flush(self) -> PeriodResult | None:
        """Close the current partial period (end of input or shutdown) and decide on it.

        A period whose windows span less than :data:`MIN_PARTIAL_PERIOD` of ``period_s`` (from
        its start to its last window) is returned with ``decided=False``: no event, no change to
        the look-back or the alarm state.
        """
        closed = self._averager.flush()
        if closed is None:
            return None
        start_s, end_s, mean, n = closed
        if end_s - start_s < MIN_PARTIAL_PERIOD * self.config.period_s:
            return self._undecided(start_s, end_s, mean, n, "partial period")
        return self._decide(*closed)

    def _undecided(self, start_s: float, end_s: float, mean: float, n: int, reason: str) -> PeriodResult:
        self._tainted = set(self._holds)
        return PeriodResult(start_s=start_s, end_s=end_s, score=mean, n_windows=n, anomalous=bool(mean > self.threshold),
                            alarm=self.alarm, anomalous_in_window=sum(self._recent), decided=False, reason=reason,
                            n_invalid=self._averager.last_invalid, **self._evidence_fields())

    def _evidence_fields(self) -> dict[str, float | None]:
        if self.cusum is None:
            return {}
        return {"evidence": self.cusum.statistic, "evidence_level": self.cusum.rule.decision_level}

    def resume_alarm(self) -> None:
        """Start in the alarm state (an onset of an earlier run is still open).

        The next event is then the back-to-normal after ``recovery_m`` normal periods, never a
        second onset. The refractory time counts from onsets of this run only: the earlier onset's
        time is on another run's clock.
        """
        self.alarm = True
        self._normal_run = 0
        if self.cusum is not None:
            self.cusum.reset(self.cusum.rule.decision_level)

    def _decide(self, start_s: float, end_s: float, mean: float, n: int) -> PeriodResult:
        if self._tainted:
            return self._undecided(start_s, end_s, mean, n, ", ".join(sorted(self._tainted)))
        if n == 0:
            return self._undecided(start_s, end_s, mean, n, "no valid windows")
        cfg = self.config
        anomalous = mean > self.threshold
        self.n_periods += 1
        self._recent.append(anomalous)
        self._normal_run = 0 if anomalous else self._normal_run + 1
        n_anomalous = sum(self._recent)
        cusum = self.cusum
        if cusum is not None:
            cusum.update(mean, start_s)
        event: EventKind | None = None
        rules: tuple[str, ...] = ()
        shift: dict[str, float | None] = {}
        if not self.alarm:
            refractory_over = self._last_onset_s is None or end_s - self._last_onset_s >= cfg.refractory_s
            fired = ((RULE_PERIOD,) if anomalous and n_anomalous >= cfg.onset_k else ()) + (
                (RULE_EVIDENCE,) if cusum is not None and cusum.crossed else ())
            if fired and refractory_over:
                self.alarm, event, self._last_onset_s, rules = True, EVENT_ONSET, end_s, fired
                if cusum is not None and cusum.crossed:
                    shift = {"shift_start_s": cusum.start_s, "shift_sd": cusum.mean_shift}
        elif self._normal_run >= cfg.recovery_m and (cusum is None or cusum.statistic == 0.0):
            self.alarm, event = False, EVENT_RECOVERY
            # Start the next onset's count afresh: anomalous periods from before the recovery
            # should not make the next alarm fire early.
            self._recent.clear()
        if self.alarm and cusum is not None:
            cusum.cap()
        return PeriodResult(
            start_s=start_s,
            end_s=end_s,
            score=mean,
            n_windows=n,
            anomalous=anomalous,
            alarm=self.alarm,
            event=event,
            anomalous_in_window=n_anomalous,
            n_invalid=self._averager.last_invalid,
            rules=rules,
            **self._evidence_fields(),
            **shift,
        )


class ExcludedStretches:
    """Stretches of stream time whose audio must not be scored (a sensor problem, an idle level),
    and whether a window overlaps one. Stretches are kept for ``memory_s`` seconds, longer than
    any window reaches back.

    Parameters
    ----------
    memory_s
        How far back a window can reach, seconds.
    """

    def __init__(self, memory_s: float) -> None:
        if not (math.isfinite(memory_s) and memory_s > 0):
            raise ParameterError(f"memory_s must be > 0 seconds, got {memory_s!r}")
        self.memory_s = float(memory_s)
        self._stretches: collections.deque[list[float]] = collections.deque()

    def add(self, start_s: float, end_s: float) -> None:
        """Exclude ``[start_s, end_s)`` (seconds); adjoining stretches merge."""
        if self._stretches and start_s <= self._stretches[-1][1] + 1e-9:
            self._stretches[-1][1] = max(self._stretches[-1][1], end_s)
        else:
            self._stretches.append([start_s, end_s])
        while self._stretches and self._stretches[0][1] < end_s - self.memory_s:
            self._stretches.popleft()

    def overlaps(self, start_s: float, end_s: float) -> bool:
        """Whether ``[start_s, end_s]`` overlaps an excluded stretch."""
        return any(s < end_s and start_s < e for s, e in self._stretches)
