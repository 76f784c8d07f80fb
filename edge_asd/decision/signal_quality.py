"""Signal checks on raw audio blocks: level, clipping, DC offset, dropouts, dead channels.

Pure numpy over blocks of shape ``(n_samples, n_channels)`` float in [-1, 1] (full scale = 1.0).

- :class:`SignalStats` accumulates figures over a stream without keeping the audio, and
  :func:`check_enrollment_audio` refuses audio that must not be taught to a detector as "normal":
  a dead or disconnected microphone (silence, a flat-lined channel) or an overdriven one (clipping).
- :class:`SignalQualityMonitor` is the service's streaming sensor check: every block is checked
  (:func:`check_block`: silence, clipping, DC offset, runs of exact zeros, a block repeated
  exactly, an array channel far below the others or decorrelated from them) and a
  :class:`Debouncer` turns the per-block verdicts into ``sensor_fault`` / ``sensor_ok`` changes, so
  one odd block does not flap events. It knows nothing of the service: it takes blocks and
  returns verdicts.
- :func:`learn_signal_config` fills the thresholds left unset in the device TOML from what
  ``edge-asd enroll`` measured on the site's normal audio (a quiet machine is not a dead
  microphone); :func:`assess_clip` runs the same monitor over a whole clip (``edge-asd score``).
"""

from __future__ import annotations

import collections
import dataclasses
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np

from edge_asd.errors import ParameterError, SignalQualityError

__all__ = [
    "rms_dbfs",
    "clipped_fraction",
    "dc_offset",
    "SignalSummary",
    "SignalStats",
    "check_enrollment_audio",
    "MIN_RMS_DBFS",
    "FLAT_CHANNEL_DBFS",
    "CLIP_LEVEL",
    "MAX_CLIPPED_FRACTION",
    "SignalQualityConfig",
    "BlockCheck",
    "StateChange",
    "Debouncer",
    "PaceMonitor",
    "SignalQualityMonitor",
    "check_block",
    "channel_correlation",
    "longest_zero_run",
    "learn_signal_config",
    "assess_clip",
    "SENSOR_FAULT",
    "SENSOR_OK",
    "REASONS",
]

MIN_RMS_DBFS = -70.0
"""Quieter than this (RMS over all channels, dBFS) is silence, not a running machine: a 16-bit
microphone's own noise floor sits around -90 dBFS, a machine a metre away far above -60."""
FLAT_CHANNEL_DBFS = -90.0
"""A channel whose AC level (DC removed) is below this, dBFS, is flat-lined: about one 16-bit LSB."""
CLIP_LEVEL = 0.999
"""A sample at or above this magnitude is counted as clipped (16-bit full scale is 32767/32768)."""
MAX_CLIPPED_FRACTION = 0.01
"""More than this fraction of clipped samples means the input is overdriven."""
_FLOOR_DBFS = -200.0
"""Reported level of digital silence (log of zero)."""


def _as_2d(block: np.ndarray) -> np.ndarray:
    x = np.asarray(block)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ParameterError(f"audio blocks must be (n_samples, n_channels), got shape {x.shape}")
    return x


def _db(power: np.ndarray | float) -> np.ndarray:
    return np.maximum(10.0 * np.log10(np.maximum(power, 1e-300)), _FLOOR_DBFS)


def rms_dbfs(block: np.ndarray) -> np.ndarray:
    """RMS level of each channel, dBFS (0 dBFS = a constant at full scale), shape ``(n_channels,)``."""
    x = _as_2d(block).astype(np.float64)
    return _db(np.mean(x * x, axis=0))


def clipped_fraction(block: np.ndarray, *, level: float = CLIP_LEVEL) -> float:
    """Fraction of all samples whose magnitude reaches ``level`` (full scale 1.0)."""
    x = _as_2d(block)
    return float(np.count_nonzero(np.abs(x) >= level) / x.size) if x.size else 0.0


def dc_offset(block: np.ndarray) -> np.ndarray:
    """Mean of each channel (full scale 1.0), shape ``(n_channels,)``."""
    return _as_2d(block).astype(np.float64).mean(axis=0)


@dataclass(frozen=True, kw_only=True)
class SignalSummary:
    """Figures of a stretch of audio."""

    n_samples: int
    """Samples per channel."""
    n_channels: int
    rms_dbfs: float
    """RMS over all channels, dBFS."""
    channel_rms_dbfs: tuple[float, ...]
    channel_ac_dbfs: tuple[float, ...]
    """Per-channel RMS with the DC offset removed, dBFS (a flat line has none)."""
    dc_offset: tuple[float, ...]
    """Per-channel mean, full scale 1.0."""
    clipped_fraction: float
    """Fraction of samples at or above :data:`CLIP_LEVEL`."""
    peak: float
    """Largest magnitude, full scale 1.0."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SignalStats:
    """Running sums over blocks (no audio kept): feed with :meth:`update`, read :meth:`summary`."""

    def __init__(self, n_channels: int, *, clip_level: float = CLIP_LEVEL) -> None:
        self.n_channels = n_channels
        self.clip_level = clip_level
        self.n = 0
        self._sum = np.zeros(n_channels)
        self._sumsq = np.zeros(n_channels)
        self._clipped = 0
        self._peak = 0.0

    def update(self, block: np.ndarray) -> None:
        x = _as_2d(block)
        if x.shape[1] != self.n_channels:
            raise ParameterError(f"expected {self.n_channels} channel(s), got a block of shape {x.shape}")
        x64 = x.astype(np.float64)
        self.n += x.shape[0]
        self._sum += x64.sum(axis=0)
        self._sumsq += (x64 * x64).sum(axis=0)
        self._clipped += int(np.count_nonzero(np.abs(x) >= self.clip_level))
        if x.size:
            self._peak = max(self._peak, float(np.abs(x64).max()))

    def summary(self) -> SignalSummary:
        n = max(self.n, 1)
        mean = self._sum / n
        power = self._sumsq / n
        ac = np.maximum(power - mean * mean, 0.0)
        return SignalSummary(
            n_samples=self.n,
            n_channels=self.n_channels,
            rms_dbfs=float(_db(power.mean())),
            channel_rms_dbfs=tuple(float(v) for v in _db(power)),
            channel_ac_dbfs=tuple(float(v) for v in _db(ac)),
            dc_offset=tuple(float(v) for v in mean),
            clipped_fraction=self._clipped / (n * self.n_channels),
            peak=self._peak,
        )


def check_enrollment_audio(
    summary: SignalSummary,
    *,
    where: str,
    min_rms_dbfs: float = MIN_RMS_DBFS,
    flat_channel_dbfs: float = FLAT_CHANNEL_DBFS,
    max_clipped_fraction: float = MAX_CLIPPED_FRACTION,
) -> None:
    """Refuse audio that would teach the detector that a dead or overdriven microphone is normal.

    Parameters
    ----------
    summary
        Figures of the audio (:meth:`SignalStats.summary`).
    where
        The file, folder or device the audio came from (named in the error).

    Raises
    ------
    SignalQualityError
        Silence (RMS below ``min_rms_dbfs``), a flat-lined channel (AC level below
        ``flat_channel_dbfs``) or clipping (more than ``max_clipped_fraction`` of the samples at
        full scale). One line naming ``where``, the figure and what to do.
    """
    if summary.n_samples == 0:
        raise SignalQualityError(f"{where}: no audio was read; check the input")
    if summary.rms_dbfs < min_rms_dbfs:
        raise SignalQualityError(
            f"{where}: the audio is silent (RMS {_fmt_db(summary.rms_dbfs)} dBFS, below {min_rms_dbfs:g}): a dead or "
            "muted microphone or an idle machine is not normal sound; check the microphone and record while the "
            "machine runs"
        )
    flat = [i for i, v in enumerate(summary.channel_ac_dbfs) if v < flat_channel_dbfs]
    if flat:
        raise SignalQualityError(
            f"{where}: channel(s) {', '.join(map(str, flat))} of {summary.n_channels} are flat-lined (AC level below "
            f"{flat_channel_dbfs:g} dBFS): a dead or disconnected microphone; fix the array or configure the "
            "channels that work"
        )
    if summary.clipped_fraction > max_clipped_fraction:
        raise SignalQualityError(
            f"{where}: {100 * summary.clipped_fraction:.1f} % of the samples are clipped (at full scale; at most "
            f"{100 * max_clipped_fraction:g} % allowed): the input is overdriven; lower the capture gain and record again"
        )


def _fmt_db(v: float) -> str:
    return "-inf" if v <= _FLOOR_DBFS or not math.isfinite(v) else f"{v:.1f}"


# -- the streaming sensor monitor ---------------------------------------------------------------

SENSOR_FAULT = "sensor_fault"
SENSOR_OK = "sensor_ok"
REASONS = ("silence", "dropout", "repeated_block", "clipping", "dc_offset", "dead_channel", "channel_decorrelated")
"""Per-block problems, in the order a block's reason is chosen: a dead microphone is silence before
it is anything else, and a channel comparison means nothing in a block with no signal."""
MIN_USEFUL_CORRELATION = 0.2
"""A learned correlation floor below this is not used: the site's channels agree too little for
disagreement to say anything (widely spaced microphones in diffuse noise)."""
SILENCE_FLOOR_LIMIT_DBFS = -110.0
"""A learned silence floor is never set below this: under it only exact digital silence remains,
which a quieter floor would not catch any better (16-bit audio's one-LSB noise is about -101 dBFS)."""
_EPS_S = 1e-9


@dataclass(frozen=True, kw_only=True)
class SignalQualityConfig:
    """The ``[signal]`` section: sensor checks on raw capture blocks, separate from machine health.

    A value left out of the TOML (``None``) is learned at ``edge-asd enroll`` from the site's normal
    audio where that makes sense (see :func:`learn_signal_config`), else the stated default applies.
    """

    enabled: bool = True
    """Run the checks (``false``: no sensor events, anomaly decisions never paused for the sensor)."""
    silence_dbfs: float | None = None
    """A block whose AC level (RMS over channels, DC removed) is below this, dBFS, is silence (a
    dead or muted microphone). Unset: the enrolled site level minus ``silence_margin_db``, at most
    :data:`MIN_RMS_DBFS` (-70 dBFS; a machine switched off in a quiet room must not look like a
    dead microphone); :data:`MIN_RMS_DBFS` without enrollment."""
    silence_margin_db: float = 40.0
    """How far below the enrolled site level silence starts, dB."""
    clip_level: float = CLIP_LEVEL
    """A sample at or above this magnitude (full scale 1.0) is clipped."""
    max_clipped_fraction: float = MAX_CLIPPED_FRACTION
    """A block with more than this fraction of clipped samples is clipping."""
    max_dc_offset: float = 0.1
    """A channel whose mean magnitude exceeds this (full scale 1.0) has a DC offset fault; raised to
    twice the enrolled site's own largest offset when that is higher."""
    dropout_zero_run_s: float = 0.005
    """A run of this long of exact zeros on every channel at once, in a block that is not silent,
    is a dropout (lost samples zero-filled by a driver), seconds. Runs are counted within a block."""
    check_repeated_blocks: bool = True
    """A block exactly equal to the one before (and not silent) is a dropout: a driver handing the
    same buffer twice. Real audio never repeats to the bit."""
    channel_gap_db: float = 20.0
    """Arrays: a channel whose AC level is this far below the median of the other channels is dead,
    dB; the enrolled site's own spread between channels is added."""
    min_channel_correlation: float | None = None
    """Arrays: a channel whose correlation with the mean of the others falls below this is
    decorrelated (a loose capsule hearing only itself). Unset: the enrolled site's 5th percentile
    less ``correlation_margin`` when that is at least 0.2, otherwise the check is off."""
    correlation_margin: float = 0.3
    """How far below the site's own correlation a channel may fall, in correlation units."""
    fault_window_s: float = 1.0
    """A fault is raised when problems cover at least ``fault_fraction`` of the last
    ``fault_window_s`` seconds of audio, seconds."""
    fault_fraction: float = 0.5
    """Fraction of ``fault_window_s`` that must be faulty (one odd block is not a fault)."""
    clear_after_s: float = 2.0
    """A fault clears after this long without any problem, seconds."""

    def __post_init__(self) -> None:
        def positive(key: str) -> None:
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise ParameterError(f"signal.{key} must be > 0, got {value!r}")

        for key in ("silence_margin_db", "dropout_zero_run_s", "channel_gap_db", "fault_window_s", "clear_after_s"):
            positive(key)
        if self.silence_dbfs is not None and not (math.isfinite(self.silence_dbfs) and self.silence_dbfs < 0):
            raise ParameterError(f"signal.silence_dbfs must be < 0 dBFS, got {self.silence_dbfs!r}")
        if not 0 < self.clip_level <= 1:
            raise ParameterError(f"signal.clip_level must be in (0, 1] (full scale 1.0), got {self.clip_level!r}")
        if not 0 <= self.max_clipped_fraction < 1:
            raise ParameterError(f"signal.max_clipped_fraction must be in [0, 1), got {self.max_clipped_fraction!r}")
        if not 0 < self.max_dc_offset < 1:
            raise ParameterError(f"signal.max_dc_offset must be in (0, 1) (full scale 1.0), got {self.max_dc_offset!r}")
        if self.min_channel_correlation is not None and not -1 <= self.min_channel_correlation < 1:
            raise ParameterError(f"signal.min_channel_correlation must be in [-1, 1), got {self.min_channel_correlation!r}")
        if not 0 <= self.correlation_margin < 2:
            raise ParameterError(f"signal.correlation_margin must be in [0, 2), got {self.correlation_margin!r}")
        if not 0 < self.fault_fraction <= 1:
            raise ParameterError(f"signal.fault_fraction must be in (0, 1], got {self.fault_fraction!r}")

    @property
    def silence_floor_dbfs(self) -> float:
        """The silence floor in force, dBFS (:data:`MIN_RMS_DBFS` when neither set nor learned)."""
        return MIN_RMS_DBFS if self.silence_dbfs is None else self.silence_dbfs


@dataclass(frozen=True, kw_only=True)
class BlockCheck:
    """The verdict on one block."""

    problems: tuple[str, ...]
    """The problems found, in the order of :data:`REASONS` (empty: the block is fine)."""
    figures: Mapping[str, Any] = field(default_factory=dict)
    """``problem -> (value, limit, channels or None)``: the figure that tripped each problem and its limit."""
    measures: Mapping[str, float] = field(default_factory=dict)
    """``check -> figure`` of every check that ran, problem or not (AC level dBFS, clipped
    fraction, largest DC offset, longest zero run s, largest channel gap dB, lowest correlation)."""

    @property
    def bad(self) -> bool:
        return bool(self.problems)

    @property
    def reason(self) -> str:
        """The first problem, or ``"ok"``."""
        return self.problems[0] if self.problems else "ok"


@dataclass(frozen=True, kw_only=True)
class StateChange:
    """A debounced change of a monitored state (sensor fault, machine idle), for an event."""

    kind: str
    """Event kind: ``sensor_fault``, ``sensor_ok``, ``machine_idle`` or ``machine_running``."""
    state: str
    """The state entered or left: ``sensor_fault`` or ``machine_idle``."""
    active: bool
    """``True`` when the state was entered (anomaly decisions pause), ``False`` when it was left."""
    time_s: float
    """Stream time of the end of the block that decided it, seconds."""
    since_s: float
    """Stream time the evidence began (the first faulty block of the window; the first good block
    of the clearing run), seconds."""
    reason: str
    value: float
    """The figure behind the change (e.g. a level in dBFS, a clipped fraction)."""
    limit: float
    """Its limit (the threshold it crossed)."""
    details: Mapping[str, Any] = field(default_factory=dict)


class Debouncer:
    """Hysteresis in time for a per-block bad/good verdict.

    The state is entered when bad blocks cover at least ``enter_fraction`` of the last
    ``enter_s`` seconds (and that much audio was seen), and left after ``leave_s`` seconds of good
    blocks in a row. Durations come from the blocks' own start and end times, so any block length
    works.
    """

    def __init__(self, *, enter_s: float, enter_fraction: float, leave_s: float) -> None:
        if not (enter_s > 0 and leave_s > 0 and 0 < enter_fraction <= 1):
            raise ParameterError(f"debounce times must be > 0 and the fraction in (0, 1], got {enter_s}, {leave_s}, {enter_fraction}")
        self.enter_s, self.enter_fraction, self.leave_s = float(enter_s), float(enter_fraction), float(leave_s)
        self.reset()

    def reset(self) -> None:
        self.active = False
        self.since_s = 0.0
        """Start of the evidence of the last change, seconds."""
        self._window: collections.deque[tuple[float, float, str | None]] = collections.deque()  # (start, end, label or None)
        self._good_since: float | None = None

    def update(self, bad: bool, start_s: float, end_s: float, label: str | None = None) -> bool | None:
        """Add a block ``[start_s, end_s)``; return ``True`` when the state is entered, ``False``
        when it is left, ``None`` otherwise. ``label`` names what was bad (see :meth:`dominant`)."""
        if not self.active:
            self._window.append((start_s, end_s, label if bad else None))
            while self._window and self._window[0][1] <= end_s - self.enter_s + _EPS_S:
                self._window.popleft()
            seen = sum(e - s for s, e, _ in self._window)
            lo = end_s - self.enter_s
            bad_s = sum(e - max(s, lo) for s, e, lab in self._window if lab is not None)
            # The oldest block may reach back past the window: what was seen covers the window then.
            covered = seen >= self.enter_s - _EPS_S or (self._window and self._window[0][0] <= lo + _EPS_S)
            if covered and bad_s >= self.enter_fraction * self.enter_s - _EPS_S:
                self.active = True
                self.since_s = next(s for s, _, lab in self._window if lab is not None)
                self._good_since = None
                return True
            return None
        if bad:
            self._good_since = None
            self._window.append((start_s, end_s, label))
            while len(self._window) > 1 and self._window[0][1] <= end_s - self.enter_s:
                self._window.popleft()
            return None
        if self._good_since is None:
            self._good_since = start_s
        if end_s - self._good_since >= self.leave_s - _EPS_S:
            self.active = False
            self.since_s = self._good_since
            self._window.clear()
            self._good_since = None
            return False
        return None

    def dominant(self) -> str | None:
        """The label with the most bad time in the current window (the fault's reason)."""
        totals: dict[str, float] = {}
        for s, e, lab in self._window:
            if lab is not None:
                totals[lab] = totals.get(lab, 0.0) + (e - s)
        return max(totals, key=lambda k: (totals[k], -REASONS.index(k) if k in REASONS else 0)) if totals else None


def longest_zero_run(block: np.ndarray) -> int:
    """Longest run of samples at which every channel is exactly 0.0, samples."""
    x = _as_2d(block)
    zero = ~np.any(x != 0, axis=1)
    if not zero.any():
        return 0
    edges = np.diff(np.concatenate(([0], zero.astype(np.int8), [0])))
    return int((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max())


def channel_correlation(block: np.ndarray) -> np.ndarray:
    """Pearson correlation of each channel with the mean of the other channels, shape
    ``(n_channels,)``; NaN where a channel or the others' mean carries no signal (or one channel)."""
    x = _as_2d(block).astype(np.float64)
    n_ch = x.shape[1]
    out = np.full(n_ch, np.nan)
    if n_ch < 2 or x.shape[0] < 2:
        return out
    x = x - x.mean(axis=0)
    total = x.sum(axis=1)
    tiny = 1e-20 * x.shape[0]
    for i in range(n_ch):
        others = (total - x[:, i]) / (n_ch - 1)
        a, b = float(x[:, i] @ x[:, i]), float(others @ others)
        if a > tiny and b > tiny:
            out[i] = float(x[:, i] @ others) / math.sqrt(a * b)
    return out


def check_block(block: np.ndarray, config: SignalQualityConfig, *, sr: int, previous: np.ndarray | None = None) -> BlockCheck:
    """Check one capture block ``(n_samples, n_channels)`` (full scale 1.0) at ``sr`` Hz.

    ``previous`` is the block before it (for the repeated-block check). Returns every problem
    found with its figure and limit; see :class:`SignalQualityConfig` for each check.
    """
    x = _as_2d(block)
    found: dict[str, tuple[float, float, Any]] = {}
    if x.shape[0] == 0:
        return BlockCheck(problems=())
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=0)
    ac_power = np.maximum((x64 * x64).mean(axis=0) - mean * mean, 0.0)
    level = float(_db(ac_power.mean()))
    measures: dict[str, float] = {"silence": level}
    if level < config.silence_floor_dbfs:
        found["silence"] = (level, config.silence_floor_dbfs, None)
    else:
        run = longest_zero_run(x)
        measures["dropout"] = run / sr
        if run >= config.dropout_zero_run_s * sr:
            found["dropout"] = (run / sr, config.dropout_zero_run_s, None)
        if config.check_repeated_blocks and previous is not None and previous.shape == x.shape and np.array_equal(previous, x):
            found["repeated_block"] = (1.0, 0.0, None)
    clipped = float(np.count_nonzero(np.abs(x) >= config.clip_level) / x.size)
    measures["clipping"] = clipped
    if clipped > config.max_clipped_fraction:
        found["clipping"] = (clipped, config.max_clipped_fraction, None)
    dc = np.abs(mean)
    measures["dc_offset"] = float(dc.max())
    if float(dc.max()) > config.max_dc_offset:
        found["dc_offset"] = (float(dc.max()), config.max_dc_offset, [int(i) for i in np.flatnonzero(dc > config.max_dc_offset)])
    n_ch = x.shape[1]
    if n_ch >= 2 and "silence" not in found:
        levels = _db(ac_power)
        gaps = np.array([float(np.median(np.delete(levels, i))) - float(levels[i]) for i in range(n_ch)])
        measures["dead_channel"] = float(gaps.max())
        dead = np.flatnonzero(gaps > config.channel_gap_db)
        if dead.size:
            found["dead_channel"] = (float(gaps.max()), config.channel_gap_db, [int(i) for i in dead])
        elif config.min_channel_correlation is not None:
            corr = channel_correlation(x64)
            if np.isfinite(corr).any():
                measures["channel_decorrelated"] = float(np.nanmin(corr))
            low = np.flatnonzero(np.nan_to_num(corr, nan=1.0) < config.min_channel_correlation)
            if low.size:
                found["channel_decorrelated"] = (float(np.nanmin(corr)), config.min_channel_correlation, [int(i) for i in low])
    return BlockCheck(problems=tuple(r for r in REASONS if r in found), figures=found, measures=measures)


class SignalQualityMonitor:
    """Streaming sensor checks: blocks in, per-block verdicts and debounced fault changes out.

    Parameters
    ----------
    config
        The thresholds (after :func:`learn_signal_config`).
    n_channels
        Channels of the blocks.
    sr
        Sample rate of the blocks, Hz.
    """

    def __init__(self, config: SignalQualityConfig, *, n_channels: int, sr: int) -> None:
        if n_channels < 1 or sr < 1:
            raise ParameterError(f"n_channels and sr must be >= 1, got {n_channels}, {sr}")
        self.config, self.n_channels, self.sr = config, n_channels, sr
        self._debounce = Debouncer(enter_s=config.fault_window_s, enter_fraction=config.fault_fraction,
                                   leave_s=config.clear_after_s)
        self.reset()

    def reset(self) -> None:
        """Forget every block (a new stream)."""
        self._debounce.reset()
        self._previous: np.ndarray | None = None
        self._figures: dict[str, tuple[float, float, Any]] = {}
        self._figure_of_fault: tuple[float, float, Any] = (0.0, 0.0, None)
        self.reason = "ok"
        """The reason of the fault in force, ``"ok"`` when there is none."""

    @property
    def faulted(self) -> bool:
        return self._debounce.active

    def update(self, block: np.ndarray, *, start_s: float) -> tuple[BlockCheck, StateChange | None]:
        """Check a block that starts at stream time ``start_s`` seconds; return its verdict and the
        ``sensor_fault`` / ``sensor_ok`` change it completes, if any."""
        x = _as_2d(block)
        if x.shape[1] != self.n_channels:
            raise ParameterError(f"expected {self.n_channels} channel(s), got a block of shape {x.shape}")
        check = check_block(x, self.config, sr=self.sr, previous=self._previous)
        if self.config.check_repeated_blocks:
            self._previous = np.array(x, copy=True)
        for problem, figure in check.figures.items():
            self._figures[problem] = figure
        end_s = start_s + x.shape[0] / self.sr
        changed = self._debounce.update(check.bad, start_s, end_s, check.reason if check.bad else None)
        if changed is None:
            return check, None
        if changed:
            self.reason = self._debounce.dominant() or check.reason
            value, limit, channels = self._figure_of_fault = self._figures[self.reason]
            details: dict[str, Any] = {"reason": self.reason, "since_s": round(self._debounce.since_s, 3), "severity": "warning"}
            if channels is not None:
                details["channels"] = channels
            change = StateChange(kind=SENSOR_FAULT, state=SENSOR_FAULT, active=True, time_s=end_s,
                                 since_s=self._debounce.since_s, reason=self.reason, value=value, limit=limit, details=details)
        else:
            # The fault's own figure, as measured now on good audio (the limit it is back within).
            _, limit, _ = self._figure_of_fault
            value = check.measures.get(self.reason, limit)
            change = StateChange(kind=SENSOR_OK, state=SENSOR_FAULT, active=False, time_s=end_s,
                                 since_s=self._debounce.since_s, reason=self.reason, value=value, limit=limit,
                                 details={"reason": self.reason, "since_s": round(self._debounce.since_s, 3), "severity": "info"})
            self.reason = "ok"
        self._figures = {}
        return check, change


def learn_signal_config(config: SignalQualityConfig, site_audio: Mapping[str, Any] | None) -> tuple[SignalQualityConfig, list[str]]:
    """Fill in the thresholds ``config`` leaves to enrollment from the site's enrollment record.

    Parameters
    ----------
    config
        The ``[signal]`` section as configured.
    site_audio
        ``bundle.enrollment.site.audio`` (``signal``: the :class:`SignalSummary` of the enrolled
        audio; ``quality``: ``channel_correlation_p05``), or ``None`` for a bundle never enrolled.

    Returns
    -------
    The thresholds to run with, and one line per learned value saying where it came from.
    """
    notes: list[str] = []
    signal = dict((site_audio or {}).get("signal") or {})
    quality = dict((site_audio or {}).get("quality") or {})
    changes: dict[str, Any] = {}
    ac = signal.get("channel_ac_dbfs")
    if ac:
        ac_arr = np.asarray(ac, dtype=np.float64)
        site_dbfs = float(_db(np.mean(10.0 ** (ac_arr / 10.0))))
        if config.silence_dbfs is None:
            floor = max(min(MIN_RMS_DBFS, site_dbfs - config.silence_margin_db), SILENCE_FLOOR_LIMIT_DBFS)
            changes["silence_dbfs"] = floor
            notes.append(f"silence below {floor:.1f} dBFS (enrolled site level {site_dbfs:.1f} dBFS - {config.silence_margin_db:g} dB, at most {MIN_RMS_DBFS:g})")
        if ac_arr.size >= 2:
            spread = max(float(np.median(np.delete(ac_arr, i))) - float(ac_arr[i]) for i in range(ac_arr.size))
            if spread > 0:
                changes["channel_gap_db"] = config.channel_gap_db + spread
                notes.append(f"dead channel {config.channel_gap_db + spread:.1f} dB below the others ({config.channel_gap_db:g} dB + the site's own spread {spread:.1f} dB)")
    dc = signal.get("dc_offset")
    if dc:
        site_dc = float(np.max(np.abs(dc)))
        if 2 * site_dc > config.max_dc_offset:
            changes["max_dc_offset"] = min(2 * site_dc, 0.99)
            notes.append(f"DC offset above {changes['max_dc_offset']:.3g} (twice the enrolled site's {site_dc:.3g})")
    p05 = quality.get("channel_correlation_p05")
    if config.min_channel_correlation is None and p05 is not None and math.isfinite(p05):
        floor = float(p05) - config.correlation_margin
        if floor >= MIN_USEFUL_CORRELATION:
            changes["min_channel_correlation"] = floor
            notes.append(f"channel correlation below {floor:.2f} (enrolled site's 5th percentile {p05:.2f} - {config.correlation_margin:g})")
    return dataclasses.replace(config, **changes), notes


def assess_clip(samples: np.ndarray, sr: int, config: SignalQualityConfig, *, block_s: float = 0.1) -> tuple[str, dict[str, Any]]:
    """The sensor verdict on a whole clip: ``("ok", {})`` or ``(reason, details)``.

    The clip goes through :class:`SignalQualityMonitor` in blocks of ``block_s`` seconds, as the
    service would hear it; the first fault raised gives the reason. A clip shorter than
    ``fault_window_s`` is judged as one window: faulty when problems cover ``fault_fraction`` of it.
    """
    x = _as_2d(samples)
    monitor = SignalQualityMonitor(config, n_channels=x.shape[1], sr=sr)
    step = max(1, int(round(block_s * sr)))
    bad_s: dict[str, float] = {}
    for start in range(0, x.shape[0], step):
        check, change = monitor.update(x[start : start + step], start_s=start / sr)
        if check.bad:
            bad_s[check.reason] = bad_s.get(check.reason, 0.0) + min(step, x.shape[0] - start) / sr
        if change is not None and change.active:
            return change.reason, {"since_s": change.since_s, "value": change.value, "limit": change.limit}
    duration = x.shape[0] / sr
    if duration < config.fault_window_s and bad_s and sum(bad_s.values()) >= config.fault_fraction * duration:
        reason = max(bad_s, key=bad_s.get)
        return reason, {"since_s": 0.0}
    return "ok", {}


PACE_WINDOW_S = 5.0
"""Wall time over which a real-time source's pace is judged, seconds."""
PACE_FAST = 1.5
"""A real-time source that delivers more than this many seconds of audio per second is faulty."""
PACE_OK = 1.2
"""... and is fine again at or below this pace (hysteresis)."""


class PaceMonitor:
    """Whether a source that should deliver audio in real time (a microphone) does.

    A capture device that hands out far more audio than time passes (a driver replaying its buffer,
    a misconfigured loopback, a file posing as a microphone) is not listening to the machine now:
    a ``sensor_fault`` with reason ``faster_than_realtime`` pauses anomaly decisions until its pace
    is back to real time (``sensor_ok``). Judged on the capture side, from block arrival times,
    so a processing backlog being worked off is never mistaken for it.
    """

    def __init__(self, sr: int, *, fast: float = PACE_FAST, window_s: float = PACE_WINDOW_S) -> None:
        self.sr = int(sr)
        self.fast = float(fast)
        self.ok = min(PACE_OK, (1.0 + self.fast) / 2)
        self.window_s = float(window_s)
        self._points: collections.deque[tuple[float, int]] = collections.deque()
        self._samples = 0
        self.faulted = False

    def update(self, n_samples: int, now: float) -> StateChange | None:
        """A block of ``n_samples`` arrived at monotonic time ``now`` (seconds); the change it causes."""
        self._samples += int(n_samples)
        self._points.append((now, self._samples))
        while len(self._points) > 2 and now - self._points[1][0] >= self.window_s:
            self._points.popleft()
        first_t, first_n = self._points[0]
        span = now - first_t
        if span < self.window_s:
            return None
        pace = (self._samples - first_n) / self.sr / span
        stream_s = self._samples / self.sr
        if not self.faulted and pace > self.fast:
            self.faulted = True
            return StateChange(kind="sensor_fault", state="sensor_pace", active=True, time_s=stream_s,
                               since_s=stream_s - span * pace, reason="faster_than_realtime", value=pace, limit=self.fast,
                               details={"reason": "faster_than_realtime", "audio_s_per_s": round(pace, 3)})
        if self.faulted and pace <= self.ok:
            self.faulted = False
            return StateChange(kind="sensor_ok", state="sensor_pace", active=False, time_s=stream_s,
                               since_s=stream_s - span * pace, reason="real time again", value=pace, limit=self.ok,
                               details={"reason": "faster_than_realtime", "audio_s_per_s": round(pace, 3)})
        return None
