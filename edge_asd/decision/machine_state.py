"""Machine state: is the machine running or switched off (idle)?

A level gate on the front end's feature frames (log-Mel or IMS, dB): the *frame level* is the mean
of a frame's features, dB, the same quantity whose average over the training (or site) frames is
the mean of the bundle's normalisation means. A machine switched off leaves the room's noise floor,
far below the running machine's level. With hysteresis in level (``hysteresis_db``) and in time
(``idle_after_s``, ``running_after_s``), :class:`MachineStateMonitor` turns frames into
``machine_idle`` / ``machine_running`` changes; while idle, anomaly decisions pause (a stopped
machine is a state, not an anomaly), unless ``stop_is_alarm`` makes stopping an alarm.

Where the running level comes from (:func:`running_level`): the site's frames measured by
``edge-asd enroll`` (``enrollment.site.audio.quality.frame_level_db``), otherwise the bundle's
active normalisation (the training frames' mean level for a bundle never enrolled).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from edge_asd.errors import ParameterError
from edge_asd.decision.signal_quality import Debouncer, StateChange

__all__ = ["MachineStateConfig", "MachineGate", "MachineStateMonitor", "running_level", "resolve_gate", "frame_levels",
           "clip_is_idle", "frame_level_record", "MACHINE_IDLE", "MACHINE_RUNNING"]

MACHINE_IDLE = "machine_idle"
MACHINE_RUNNING = "machine_running"


@dataclass(frozen=True, kw_only=True)
class MachineStateConfig:
    """The ``[machine]`` section: when is the machine off."""

    enabled: bool = True
    """Track the machine state (``false``: never idle)."""
    idle_below_db: float | None = None
    """Frame level (mean feature, dB) below which the machine is idle. Unset: the running level
    (see :func:`running_level`) less ``idle_margin_db``, and never above the enrolled site's
    quietest 1 % of frames less ``hysteresis_db``."""
    idle_margin_db: float = 20.0
    """How far below the running level the machine counts as off, dB."""
    hysteresis_db: float = 6.0
    """Idle ends only above ``idle_below_db + hysteresis_db``, dB: a level hovering at the gate
    does not flap."""
    idle_after_s: float = 5.0
    """Every frame of this long must be below the gate before ``machine_idle``, seconds."""
    running_after_s: float = 3.0
    """This long above the gate plus hysteresis in a row before ``machine_running``, seconds."""
    stop_is_alarm: bool = False
    """``true``: ``machine_idle`` is an alarm (details.severity ``"alarm"``), for a machine that
    must never stop; ``false``: a state change (severity ``"info"``)."""

    def __post_init__(self) -> None:
        for key in ("idle_margin_db", "idle_after_s", "running_after_s"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise ParameterError(f"machine.{key} must be > 0, got {value!r}")
        if not (math.isfinite(self.hysteresis_db) and self.hysteresis_db >= 0):
            raise ParameterError(f"machine.hysteresis_db must be >= 0 dB, got {self.hysteresis_db!r}")
        if self.idle_below_db is not None and not math.isfinite(self.idle_below_db):
            raise ParameterError(f"machine.idle_below_db must be a finite level in dB, got {self.idle_below_db!r}")


@dataclass(frozen=True, kw_only=True)
class MachineGate:
    """The resolved gate: idle below ``idle_below_db``, running again above ``running_above_db``."""

    idle_below_db: float
    running_above_db: float
    source: str
    """Where the gate came from (for the log)."""


def frame_levels(frames: np.ndarray) -> np.ndarray:
    """Frame level of ``(n_frames, n_features)`` frames in dB: the mean of each frame's features."""
    return np.asarray(frames, dtype=np.float64).mean(axis=1)


def running_level(bundle: Any) -> tuple[float, float | None, str]:
    """``(mean running frame level dB, the quietest 1 % dB or None, source)`` for a bundle."""
    site = bundle.enrollment.site if bundle.enrollment is not None else None
    level = dict(((site.audio if site is not None else {}).get("quality") or {}).get("frame_level_db") or {})
    if "mean" in level:
        return float(level["mean"]), (float(level["p01"]) if level.get("p01") is not None else None), "learned at enroll"
    # The active normalisation's mean of means is the mean frame level of the frames it was fitted
    # on: the training frames (factory) or the site's (enrolled before levels were recorded).
    active = bundle.enrollment.active if bundle.enrollment is not None else "factory"
    return float(np.mean(bundle.normalization.mean)), None, f"the bundle's {active} normalisation"


def resolve_gate(config: MachineStateConfig, bundle: Any) -> MachineGate:
    """The gate for ``config`` and ``bundle`` (an explicit ``idle_below_db`` wins)."""
    if config.idle_below_db is not None:
        idle = config.idle_below_db
        source = "device TOML machine.idle_below_db"
    else:
        mean, p01, where = running_level(bundle)
        idle = mean - config.idle_margin_db
        source = f"running level {mean:.1f} dB ({where}) - {config.idle_margin_db:g} dB"
        if p01 is not None and p01 - config.hysteresis_db < idle:
            # The running machine itself went this quiet at enrollment: that is not off.
            idle = p01 - config.hysteresis_db
            source = f"the enrolled site's quietest 1 % of frames {p01:.1f} dB - {config.hysteresis_db:g} dB"
    return MachineGate(idle_below_db=idle, running_above_db=idle + config.hysteresis_db, source=source)


class MachineStateMonitor:
    """Feature frames in, ``machine_idle`` / ``machine_running`` changes out.

    Parameters
    ----------
    config
        The ``[machine]`` section.
    gate
        The level gate (:func:`resolve_gate`).
    """

    def __init__(self, config: MachineStateConfig, gate: MachineGate) -> None:
        self.config, self.gate = config, gate
        self._idle = Debouncer(enter_s=config.idle_after_s, enter_fraction=1.0, leave_s=config.running_after_s)
        self.level_db = math.nan
        """Frame level of the last update, dB."""

    def reset(self) -> None:
        self._idle.reset()

    @property
    def idle(self) -> bool:
        return self._idle.active

    def update(self, frames: np.ndarray, *, start_s: float, end_s: float) -> tuple[bool, StateChange | None]:
        """Add the frames of the audio ``[start_s, end_s)`` (seconds); return whether they are
        below the idle gate (the level alone, no hysteresis) and the change they complete, if any."""
        if frames.shape[0] == 0:
            return False, None
        self.level_db = float(frame_levels(frames).mean())
        below = self.level_db < self.gate.idle_below_db
        # Entering idle needs the level under the gate; leaving it needs the level above the gate
        # plus the hysteresis: in between, an idle machine stays idle.
        bad = below if not self._idle.active else not self.level_db > self.gate.running_above_db
        changed = self._idle.update(bad, start_s, end_s, "idle" if bad else None)
        if changed is None:
            return below, None
        if changed:
            severity = "alarm" if self.config.stop_is_alarm else "info"
            change = StateChange(kind=MACHINE_IDLE, state=MACHINE_IDLE, active=True, time_s=end_s, since_s=self._idle.since_s,
                                 reason="level below the idle gate", value=self.level_db, limit=self.gate.idle_below_db,
                                 details={"severity": severity, "since_s": round(self._idle.since_s, 3),
                                          "level_db": round(self.level_db, 2), "idle_below_db": round(self.gate.idle_below_db, 2)})
        else:
            change = StateChange(kind=MACHINE_RUNNING, state=MACHINE_IDLE, active=False, time_s=end_s, since_s=self._idle.since_s,
                                 reason="level above the running gate", value=self.level_db, limit=self.gate.running_above_db,
                                 details={"severity": "info", "since_s": round(self._idle.since_s, 3),
                                          "level_db": round(self.level_db, 2), "running_above_db": round(self.gate.running_above_db, 2)})
        return below, change


def clip_is_idle(frames: np.ndarray, config: MachineStateConfig, gate: MachineGate) -> bool:
    """Whether a clip's frames are, taken together, below the idle gate (``edge-asd score``): a clip
    is too short for the time hysteresis, so its mean frame level decides."""
    return bool(config.enabled and frames.shape[0] > 0 and float(frame_levels(frames).mean()) < gate.idle_below_db)


def frame_level_record(frames: np.ndarray) -> Mapping[str, float]:
    """What enrollment records of the site's frame levels: mean and 1st percentile, dB."""
    levels = frame_levels(frames)
    return {"mean": float(levels.mean()), "p01": float(np.percentile(levels, 1)), "std": float(levels.std())}
