"""A synthetic MIMII-like dataset: the built-in data of the demo and of the tests.

Each machine type has its own physically motivated normal sound whose parameters (speeds, tooth
and blade counts, resonances, timing) differ per machine ID, plus small clip-to-clip variation in
operating condition. Anomalous clips carry one of the faults the MIMII paper lists for that type,
at one of three severities (subtle, moderate, severe):

=========  =======================================================  =============================
type       normal sound                                             faults
=========  =======================================================  =============================
fan        blade-pass tone and harmonics, broadband flow noise      unbalance, contamination,
           through a housing resonance, weak blade-rate modulation  clogging
pump       motor hum (2x mains), rotation and vane-pass tones,      leakage, contamination,
           fluid noise pulsating at the vane-pass rate              clogging
slider     strokes: motor whine rising with speed, friction noise   rail_damage, no_grease,
           while moving, a click at each end stop                   loose_belt
valve      solenoid open/close clicks (resonant modes), flow noise  contamination, leakage,
           while open                                               clogging
=========  =======================================================  =============================

A factory background (coloured noise, mains hum and a distant drone, distant impacts) is mixed at
the stated SNR: the machine sound is scaled so that a *normal* clip of its ID has the stated
power ratio to the background, and faults keep whatever power they add or remove. The array
channels see the machine and the background from two directions through a circular array (small
fractional inter-microphone delays) plus independent sensor noise per microphone.

Difficulty (``mahalanobis_auc``: mean log-Mel per clip, Mahalanobis distance to 60 normal clips,
30 normal + 30 anomalous test clips, 10 s, seed 0): at 0 dB fan 0.80, pump 0.88, slider 0.81, valve
0.89 (mean of IDs 00 and 02); at +6 dB 0.86 / 0.98 / 0.85 / 0.96 and at -6 dB 0.66 / 0.77 / 0.69 /
0.82 (ID 00). Subtle faults stay near chance for this detector, severe ones are found.

Everything is deterministic: a clip's random stream is derived from ``(seed, machine, ID, label,
index)``, so any subset of a dataset can be regenerated alone, and the machine sound and background
of clip ``i`` are the same at every SNR (as in MIMII, where one recording is mixed at 6, 0 and -6 dB).
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft
import scipy.signal

from edge_asd.audio import write_wav
from edge_asd.errors import ParameterError

__all__ = [
    "FAULTS",
    "MACHINES",
    "SEVERITIES",
    "SynthClip",
    "clip_path",
    "generate_dataset",
    "mahalanobis_auc",
    "synth_clip",
]

MACHINES = ("fan", "pump", "slider", "valve")
FAULTS: dict[str, tuple[str, ...]] = {
    "fan": ("unbalance", "contamination", "clogging"),
    "pump": ("leakage", "contamination", "clogging"),
    "slider": ("rail_damage", "no_grease", "loose_belt"),
    "valve": ("contamination", "leakage", "clogging"),
}
"""Fault types per machine type (MIMII paper, Table 1)."""
SEVERITIES = (0.25, 0.5, 1.0)
"""Nominal fault severities: subtle, moderate, severe. Each clip jitters its level by +-20 %."""

SPEED_OF_SOUND_M_S = 343.0
ARRAY_RADIUS_M = 0.05  # about the size of MIMII's 8-mic circular array: opposite mics 4.7 samples apart
OUTPUT_RMS = 0.03  # nominal mixture level, about -30 dBFS: distant impacts peak well below full scale
LEVEL_JITTER_DB = 1.5  # clip-to-clip microphone gain / distance variation (std)
SENSOR_NOISE_DB = -45.0  # independent noise per microphone, relative to the nominal mixture power
_LABEL_CODE = {"normal": 0, "anomaly": 1, "reference": 2}


@dataclass(frozen=True, kw_only=True)
class SynthClip:
    """One synthetic clip and how it was made."""

    samples: np.ndarray
    """float32, shape (n_samples, channels), in [-1, 1]."""
    sr: int
    """Sample rate, Hz."""
    machine: str
    id: str
    """``"id_00"``."""
    label: str
    """``"normal"`` or ``"anomaly"``."""
    snr_db: float
    """Power ratio of the normal machine sound to the background, dB."""
    fault: str | None
    """The fault of an anomalous clip, ``None`` for a normal one."""
    severity: float | None
    """Fault severity in (0, 1.5]; ``None`` for a normal one."""


# ---------------------------------------------------------------------------------------------
# signal building blocks (all vectorised over the whole clip)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    n: int
    sr: int

    @functools.cached_property
    def t(self) -> np.ndarray:
        return np.arange(self.n) / self.sr

    @functools.cached_property
    def f(self) -> np.ndarray:
        return scipy.fft.rfftfreq(self.n, 1.0 / self.sr)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)))) + 1e-12


def _unit(x: np.ndarray) -> np.ndarray:
    return x / _rms(x)


def _shaped_noise(rng: np.random.Generator, g: _Grid, gain: np.ndarray) -> np.ndarray:
    """Gaussian noise with amplitude spectrum ``gain(f)``, unit RMS (shaped in the frequency domain)."""
    spec = (rng.standard_normal(g.f.size) + 1j * rng.standard_normal(g.f.size)) * gain
    return _unit(scipy.fft.irfft(spec, g.n))


def _band(f: np.ndarray, lo: float, hi: float, order: int = 2) -> np.ndarray:
    """Butterworth-like band-pass magnitude (``lo <= 0``: low-pass only)."""
    f = np.maximum(f, 1.0)
    high = 1.0 / np.sqrt(1.0 + (f / hi) ** (2 * order))
    return high if lo <= 0 else high / np.sqrt(1.0 + (lo / f) ** (2 * order))


def _resonance(f: np.ndarray, fc: float, q: float) -> np.ndarray:
    """Magnitude of a second-order resonance at ``fc`` Hz with quality factor ``q``."""
    f = np.maximum(f, 1.0)
    return 1.0 / np.sqrt(1.0 + q**2 * (f / fc - fc / f) ** 2)


def _colour(f: np.ndarray, alpha: float, floor_hz: float = 20.0) -> np.ndarray:
    """``1/f**alpha`` power spectrum (amplitude ``f**(-alpha/2)``), flat below ``floor_hz``."""
    return np.maximum(f, floor_hz) ** (-alpha / 2.0)


def _slow(rng: np.random.Generator, g: _Grid, cutoff_hz: float) -> np.ndarray:
    """Smooth random fluctuation, unit RMS, band-limited to ``cutoff_hz`` (speed wander, gusts)."""
    return _shaped_noise(rng, g, _band(g.f, 0.0, cutoff_hz, order=4) * (g.f > 0))


def _harmonics(g: _Grid, f0: np.ndarray | float, amps: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """Sum of ``amps[k] * sqrt(2) * sin((k+1) * phase + random)`` for an instantaneous frequency ``f0(t)``.

    An amplitude of 1 is a unit-RMS sinusoid; harmonics above Nyquist are dropped.
    """
    f0_arr = np.broadcast_to(np.asarray(f0, dtype=np.float64), (g.n,))
    phase = 2.0 * np.pi * np.cumsum(f0_arr) / g.sr
    k = np.arange(1, len(amps) + 1)
    a = np.asarray(amps, dtype=np.float64) * (k * float(f0_arr.max()) < g.sr / 2)
    offsets = np.exp(1j * rng.uniform(0.0, 2.0 * np.pi, size=len(amps)))
    # Harmonic k is Im(e^{j k phase} e^{j offset_k}); powers of e^{j phase} by repeated multiplication
    # cost one complex product per harmonic instead of one sin per harmonic and sample.
    base = np.exp(1j * phase)
    power = base.copy()
    out = np.zeros(g.n)
    for a_k, off_k in zip(a, offsets):
        if a_k:
            out += a_k * (power * off_k).imag
        power *= base
    return np.sqrt(2.0) * out


def _modes_kernel(sr: int, freqs: Sequence[float], decays_s: Sequence[float], amps: Sequence[float]) -> np.ndarray:
    """Impulse response of decaying resonant modes (a click, a knock), peak-normalised to 1."""
    length = int(sr * 5 * max(decays_s)) + 1
    tk = np.arange(length) / sr
    h = sum(a * np.exp(-tk / d) * np.sin(2 * np.pi * fr * tk) for fr, d, a in zip(freqs, decays_s, amps))
    return h / (np.abs(h).max() + 1e-12)


def _burst_kernel(rng: np.random.Generator, sr: int, decay_s: float, lo: float, hi: float) -> np.ndarray:
    """A band-limited noise burst with an exponential decay (impacts, thumps), peak-normalised to 1."""
    length = int(sr * 5 * decay_s) + 1
    n_fft = scipy.fft.next_fast_len(length)
    f = scipy.fft.rfftfreq(n_fft, 1.0 / sr)
    noise = scipy.fft.irfft((rng.standard_normal(f.size) + 1j * rng.standard_normal(f.size)) * _band(f, lo, hi), n_fft)
    h = noise[:length] * np.exp(-np.arange(length) / (sr * decay_s))
    return h / (np.abs(h).max() + 1e-12)


def _events(g: _Grid, times_s: np.ndarray, amps: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Place ``kernel`` at each time with each amplitude (one sparse impulse train and one convolution)."""
    train = np.zeros(g.n)
    idx = np.round(np.asarray(times_s) * g.sr).astype(np.int64)
    keep = (idx >= 0) & (idx < g.n)
    np.add.at(train, idx[keep], np.asarray(amps, dtype=np.float64)[keep])
    return scipy.signal.oaconvolve(train, kernel)[: g.n]


def _poisson_times(rng: np.random.Generator, rate_hz: float, duration_s: float) -> np.ndarray:
    count = rng.poisson(rate_hz * duration_s)
    return np.sort(rng.uniform(0.0, duration_s, size=count))


def _db(x: float) -> float:
    return float(10.0 ** (x / 20.0))


# ---------------------------------------------------------------------------------------------
# machines
# ---------------------------------------------------------------------------------------------
# Each machine function gets the ID's parameters (drawn from the ID's own random stream), the
# clip's random stream, the fault (or None) and its severity, and returns the machine sound at the
# microphone before calibration. Random draws happen in the same order whatever the fault, so a
# normal clip and an anomalous clip differ by the fault, not by a reshuffled random stream.


def _fan_params(r: np.random.Generator) -> dict[str, float]:
    return {
        "rot_hz": r.uniform(16.0, 24.0),
        "blades": float(r.integers(5, 10)),
        "tone_decay": r.uniform(0.35, 0.7),
        "tone_w": r.uniform(0.35, 0.6),
        "alpha": r.uniform(0.5, 1.0),
        "housing_hz": r.uniform(600.0, 2000.0),
        "housing_q": r.uniform(1.0, 2.5),
        "am_depth": r.uniform(0.05, 0.15),
        "contam_hz": r.uniform(2500.0, 4500.0),
        "whistle_hz": r.uniform(1800.0, 3500.0),
    }


def _fan(p: dict[str, float], r: np.random.Generator, g: _Grid, fault: str | None, sev: float) -> np.ndarray:
    speed = 1.0 + 0.004 * r.standard_normal() + 0.002 * _slow(r, g, 0.5)
    tone_w = p["tone_w"] * _db(0.7 * r.standard_normal())
    flow_w = _db(0.7 * r.standard_normal())
    flow_gain = _colour(g.f, p["alpha"]) * (0.3 + _resonance(g.f, p["housing_hz"], p["housing_q"]))
    flow_gain *= _band(g.f, 40.0, 7000.0)
    flow_noise = _shaped_noise(r, g, flow_gain)
    extra_noise = _shaped_noise(r, g, _band(g.f, p["contam_hz"] * 0.7, p["contam_hz"] * 1.5, order=3))
    rub_times = _poisson_times(r, 12.0, g.n / g.sr)
    rub_amps = r.exponential(1.0, size=rub_times.size)
    rub_kernel = _modes_kernel(g.sr, [p["contam_hz"], 1.6 * p["contam_hz"]], [0.002, 0.0015], [1.0, 0.6])
    whistle_wander = _slow(r, g, 2.0)

    if fault == "clogging":  # less flow: the motor unloads and speeds up, the flow noise drops and darkens
        speed = speed * (1.0 + 0.03 * sev)
        flow_w *= _db(-4.0 * sev)
    rot = p["rot_hz"] * speed
    bpf = rot * p["blades"]
    tone_amps = tone_w * np.exp(-p["tone_decay"] * np.arange(8))
    x = _harmonics(g, bpf, tone_amps, r)
    x += 0.03 * _harmonics(g, rot, [1.0, 0.3], r)  # residual unbalance of a healthy rotor
    blade_am = 1.0 + p["am_depth"] * np.sin(2 * np.pi * np.cumsum(bpf) / g.sr)
    x += flow_w * flow_noise * blade_am
    if fault == "unbalance":  # once-per-revolution force: 1x/2x tones and a wobble of the whole sound
        x += 1.0 * sev * _harmonics(g, rot, [1.0, 0.45, 0.2], r)
        x *= 1.0 + 0.4 * sev * np.sin(2 * np.pi * np.cumsum(rot) / g.sr)
    elif fault == "contamination":  # dirt on the blades: extra turbulence and rubbing ticks
        x += 0.45 * sev * extra_noise
        x += 0.5 * sev * _events(g, rub_times, rub_amps, rub_kernel)
    elif fault == "clogging":  # a clogged filter whistles
        x += 0.08 * sev * _harmonics(g, p["whistle_hz"] * (1 + 0.01 * whistle_wander), [1.0], r)
    return x


def _pump_params(r: np.random.Generator) -> dict[str, float]:
    mains = float(r.choice([50.0, 60.0]))
    return {
        "mains_hz": mains,
        "rot_hz": mains / 2.0 * (1.0 - r.uniform(0.02, 0.05)),
        "vanes": float(r.integers(5, 8)),
        "hum_w": r.uniform(0.25, 0.45),
        "vane_w": r.uniform(0.3, 0.5),
        "pulse_depth": r.uniform(0.15, 0.35),
        "fluid_hi_hz": r.uniform(1500.0, 3000.0),
        "body_hz": r.uniform(400.0, 1200.0),
        "leak_hz": r.uniform(3500.0, 6000.0),
        "crackle_hz": r.uniform(2000.0, 4000.0),
    }


def _pump(p: dict[str, float], r: np.random.Generator, g: _Grid, fault: str | None, sev: float) -> np.ndarray:
    speed = 1.0 + 0.003 * r.standard_normal() + 0.0015 * _slow(r, g, 0.5)
    hum_w = p["hum_w"] * _db(0.6 * r.standard_normal())
    fluid_w = _db(0.7 * r.standard_normal())
    fluid_hi = p["fluid_hi_hz"]
    leak_noise = _shaped_noise(r, g, _band(g.f, p["leak_hz"] * 0.75, p["leak_hz"] * 1.3, order=4))
    leak_gust = 1.0 + 0.4 * _slow(r, g, 1.5)
    crackle_times = _poisson_times(r, 80.0, g.n / g.sr)
    crackle_amps = r.exponential(1.0, size=crackle_times.size)
    crackle_kernel = _modes_kernel(g.sr, [p["crackle_hz"], 1.4 * p["crackle_hz"]], [0.0012, 0.0008], [1.0, 0.7])

    pulse_depth, vane_w = p["pulse_depth"], p["vane_w"]
    if fault == "clogging":  # a blocked inlet: heavier load (slower), stronger pulsation, duller flow
        speed = speed * (1.0 - 0.015 * sev)
        pulse_depth = min(0.95, pulse_depth * (1.0 + 1.5 * sev))
        vane_w *= 1.0 + 0.6 * sev
        fluid_hi *= 1.0 - 0.2 * sev
    fluid = _shaped_noise(r, g, _band(g.f, 100.0, fluid_hi) * (0.5 + _resonance(g.f, p["body_hz"], 2.0)))
    rot = p["rot_hz"] * speed
    vpf = rot * p["vanes"]
    x = _harmonics(g, 2.0 * p["mains_hz"], hum_w * np.array([1.0, 0.5, 0.25, 0.12]), r)
    x += _harmonics(g, rot, [0.12, 0.08, 0.05], r)
    x += _harmonics(g, vpf, vane_w * np.array([1.0, 0.45, 0.2]), r)
    pulsation = 1.0 + pulse_depth * np.sin(2 * np.pi * np.cumsum(vpf) / g.sr)
    x += fluid_w * fluid * pulsation
    if fault == "leakage":  # escaping fluid hisses at high frequency, in gusts
        x += 0.4 * sev * leak_noise * leak_gust
    elif fault == "contamination":  # particles / cavitation: crackling
        x += 1.0 * sev * _events(g, crackle_times, crackle_amps, crackle_kernel)
    return x


def _slider_params(r: np.random.Generator) -> dict[str, float]:
    return {
        "period_s": r.uniform(0.9, 1.6),
        "dwell": r.uniform(0.15, 0.3),
        "whine_hz": r.uniform(250.0, 600.0),
        "whine_w": r.uniform(0.4, 0.6),
        "friction_hi_hz": r.uniform(3000.0, 5000.0),
        "click_hz": r.uniform(1500.0, 3500.0),
        "damage_pos": r.uniform(0.25, 0.75),
        "damage_hz": r.uniform(600.0, 1500.0),
        "squeal_hz": r.uniform(2000.0, 3500.0),
    }


def _slider(p: dict[str, float], r: np.random.Generator, g: _Grid, fault: str | None, sev: float) -> np.ndarray:
    period = p["period_s"] * (1.0 + 0.01 * r.standard_normal())
    t0 = r.uniform(0.0, period)
    fr_w = 0.8 * _db(0.7 * r.standard_normal())
    friction = _shaped_noise(r, g, _band(g.f, 800.0, p["friction_hi_hz"]))
    friction_bright = _shaped_noise(r, g, _band(g.f, 1500.0, 1.4 * p["friction_hi_hz"]))
    click_kernel = _modes_kernel(g.sr, [p["click_hz"], 2.3 * p["click_hz"]], [0.006, 0.003], [1.0, 0.5])
    damage_kernel = _modes_kernel(g.sr, [p["damage_hz"], 2.7 * p["damage_hz"]], [0.012, 0.005], [1.0, 0.6])
    slap_times = _poisson_times(r, 6.0, g.n / g.sr)
    slap_kernel = _burst_kernel(r, g.sr, 0.02, 80.0, 350.0)
    jitter = _slow(r, g, 3.0)

    phase = (g.t + t0) / period
    if fault == "loose_belt":  # the slipping belt makes the stroke timing irregular
        phase = phase + 0.03 * sev * jitter
    half = np.mod(2.0 * phase, 1.0)  # two strokes (out and back) per period
    moving = half < 1.0 - p["dwell"]
    u = np.where(moving, half / (1.0 - p["dwell"]), 0.0)
    speed = np.where(moving, np.sin(np.pi * u), 0.0)  # |velocity| / max, smooth start and stop
    position = np.where(np.mod(np.floor(2.0 * phase), 2) == 0, (1 - np.cos(np.pi * u)) / 2, (1 + np.cos(np.pi * u)) / 2)
    whine_f = p["whine_hz"] * (0.3 + 0.7 * speed)
    if fault == "loose_belt":
        whine_f = whine_f * (1.0 + 0.03 * sev * np.sin(2 * np.pi * 7.0 * g.t))
    x = speed * _harmonics(g, whine_f, p["whine_w"] * np.array([1.0, 0.5, 0.3, 0.15]), r)
    if fault == "no_grease":  # dry rail: louder, brighter friction and a squeal while moving
        x += fr_w * speed * friction * _db(6.0 * sev)
        x += 0.6 * sev * speed * friction_bright
        x += 0.3 * sev * speed * _harmonics(g, p["squeal_hz"] * (1 + 0.02 * jitter), [1.0, 0.3], r)
    else:
        x += fr_w * speed * friction
    stops = np.flatnonzero(np.diff(moving.astype(np.int8)) == -1) / g.sr  # end-stop of each stroke
    x += 1.5 * _events(g, stops, np.ones(stops.size), click_kernel)
    if fault == "rail_damage":  # a knock each time the carriage passes the damaged spot
        crossings = np.flatnonzero(np.diff(np.sign(position - p["damage_pos"])) != 0) / g.sr
        x += 2.0 * sev * _events(g, crossings, np.ones(crossings.size), damage_kernel)
    elif fault == "loose_belt":  # and slaps against the rail while moving
        slap_amps = np.interp(slap_times, g.t, speed)
        x += 1.2 * sev * _events(g, slap_times, slap_amps, slap_kernel)
    return x


def _valve_params(r: np.random.Generator) -> dict[str, float]:
    return {
        "period_s": r.uniform(0.6, 1.4),
        "open_frac": r.uniform(0.3, 0.55),
        "mode1_hz": r.uniform(1000.0, 2500.0),
        "mode2_hz": r.uniform(2800.0, 5000.0),
        "decay_s": r.uniform(0.005, 0.012),
        "flow_hi_hz": r.uniform(2000.0, 4000.0),
        "leak_hz": r.uniform(3500.0, 6000.0),
        "whistle_hz": r.uniform(1500.0, 3000.0),
    }


def _valve(p: dict[str, float], r: np.random.Generator, g: _Grid, fault: str | None, sev: float) -> np.ndarray:
    duration = g.n / g.sr
    period = p["period_s"] * (1.0 + 0.01 * r.standard_normal())
    t0 = r.uniform(0.0, period)
    starts = np.arange(-t0, duration + period, period)
    opens = starts + 0.005 * r.standard_normal(starts.size)
    open_frac = p["open_frac"]
    flow = _shaped_noise(r, g, _band(g.f, 300.0, p["flow_hi_hz"]))
    leak = _shaped_noise(r, g, _band(g.f, p["leak_hz"] * 0.75, p["leak_hz"] * 1.3, order=4))
    click_amps = _db(1.5) ** r.standard_normal((2, starts.size))
    bounce_delay = r.uniform(0.006, 0.02, size=starts.size)
    close_jitter = 0.005 * r.standard_normal(starts.size)

    modes = [p["mode1_hz"], p["mode2_hz"]]
    close_modes = modes
    if fault == "clogging":  # a partly blocked valve opens late and passes less flow
        open_frac *= 1.0 - 0.3 * sev
    if fault == "contamination":  # debris on the seat: a softer, lower, bouncing close
        close_modes = [m * (1.0 - 0.15 * sev) for m in modes]
    closes = opens + open_frac * period + close_jitter
    open_kernel = _modes_kernel(g.sr, modes, [p["decay_s"], 0.6 * p["decay_s"]], [1.0, 0.6])
    close_kernel = _modes_kernel(g.sr, close_modes, [p["decay_s"], 0.6 * p["decay_s"]], [1.0, 0.8])
    is_open = np.zeros(g.n, dtype=bool)
    for a, b in zip(np.round(opens * g.sr).astype(int), np.round(closes * g.sr).astype(int)):
        is_open[max(a, 0) : max(min(b, g.n), 0)] = True
    # 5 ms ramps so the flow starts and stops like a real valve, not with a rectangular gate
    ramp = scipy.signal.windows.hann(int(0.01 * g.sr))
    gate = np.convolve(is_open.astype(np.float64), ramp / ramp.sum(), mode="same")

    flow_w = 0.35
    if fault == "clogging":
        flow_w *= 1.0 - 0.6 * sev
    x = 0.8 * _events(g, opens, click_amps[0], open_kernel)
    close_w = 1.0 - 0.3 * sev if fault == "contamination" else 1.0
    x += close_w * _events(g, closes, click_amps[1], close_kernel)
    x += flow_w * flow * gate
    if fault == "contamination":  # the valve bounces and does not seal fully
        x += 0.6 * sev * _events(g, closes + bounce_delay, click_amps[1], close_kernel)
        x += 0.12 * sev * flow * (1.0 - gate)
    elif fault == "leakage":  # hiss through the closed valve
        x += 0.15 * sev * leak * (1.0 - gate)
    elif fault == "clogging":  # the narrowed orifice whistles while open
        x += 0.1 * sev * gate * _harmonics(g, p["whistle_hz"], [1.0], r)
    return x


_MACHINES: dict[str, tuple[Callable[[np.random.Generator], dict[str, float]], Callable[..., np.ndarray]]] = {
    "fan": (_fan_params, _fan),
    "pump": (_pump_params, _pump),
    "slider": (_slider_params, _slider),
    "valve": (_valve_params, _valve),
}


# ---------------------------------------------------------------------------------------------
# background and microphone array
# ---------------------------------------------------------------------------------------------


def _background(factory: np.random.Generator, r: np.random.Generator, g: _Grid) -> np.ndarray:
    """Factory background, unit RMS: coloured noise, mains hum, a distant drone and distant impacts.

    ``factory`` fixes the character of the hall (per dataset seed and machine type); ``r`` the clip.
    """
    alpha0, lp0 = factory.uniform(0.8, 1.4), factory.uniform(3000.0, 6000.0)
    mains = float(factory.choice([50.0, 60.0]))
    drone0 = factory.uniform(70.0, 300.0)
    alpha = alpha0 + 0.15 * r.standard_normal()
    noise = _shaped_noise(r, g, _colour(g.f, alpha, floor_hz=30.0) * _band(g.f, 0.0, lp0 * _db(2.0 * r.standard_normal())))
    hum = _harmonics(g, mains, np.array([1.0, 0.6, 0.4, 0.25, 0.15, 0.1]), r)
    drone = _harmonics(g, drone0 * (1 + 0.01 * r.standard_normal()), [1.0, 0.5, 0.3], r)
    times = _poisson_times(r, r.uniform(0.3, 1.5), g.n / g.sr)
    amps = r.lognormal(0.0, 0.6, size=times.size)
    kernel = _burst_kernel(r, g.sr, r.uniform(0.03, 0.15), 50.0, r.uniform(500.0, 2500.0))
    impacts = _events(g, times, amps, kernel)
    x = noise + r.uniform(0.05, 0.2) * hum + r.uniform(0.05, 0.25) * drone + 0.4 * impacts
    return _unit(x)


def _mic_angles(channels: int) -> np.ndarray:
    return 2.0 * np.pi * np.arange(channels) / channels


def _delays_s(azimuth: float, channels: int) -> np.ndarray:
    """Far-field arrival-time offsets at each microphone of the circular array, seconds."""
    if channels == 1:
        return np.zeros(1)
    return -ARRAY_RADIUS_M * np.cos(azimuth - _mic_angles(channels)) / SPEED_OF_SOUND_M_S


def _to_array(
    g: _Grid, sources: Sequence[tuple[np.ndarray, float]], channels: int, r: np.random.Generator, noise_rms: float
) -> np.ndarray:
    """Render mono sources from azimuths onto the array (fractional delays by phase shifts), plus
    independent white sensor noise per microphone. Returns ``(n, channels)``."""
    spec = np.zeros((channels, g.f.size), dtype=np.complex128)
    df = g.f[1] - g.f[0]
    for signal, azimuth in sources:
        # exp(-2j*pi*f_k*tau) = z**k with z = exp(-2j*pi*df*tau): a running product is several times
        # cheaper than a complex exp per bin, and its rounding error (~k * 1e-16) is far below 16 bits.
        z = np.exp(-2j * np.pi * df * _delays_s(azimuth, channels))
        steps = np.empty((channels, g.f.size), dtype=np.complex128)
        steps[:, 0] = 1.0
        steps[:, 1:] = z[:, None]
        spec += scipy.fft.rfft(signal)[None, :] * np.cumprod(steps, axis=1)
    out = scipy.fft.irfft(spec, g.n, axis=-1)
    out += noise_rms * r.standard_normal(out.shape, dtype=np.float32)
    return out.T


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------


def _crc(text: str) -> int:
    # crc32 is stable across processes (str hash() is salted), so seeds are reproducible anywhere.
    return zlib.crc32(text.encode("utf-8"))


def _id_name(machine_id: str | int) -> str:
    text = f"{machine_id:02d}" if isinstance(machine_id, int) else str(machine_id)
    text = text.removeprefix("id_")
    if not text or not text.isalnum():
        raise ParameterError(f"machine ID must be like '00' or 'id_00', got {machine_id!r}")
    return f"id_{text}"


def _check_common(machine: str, channels: int, duration_s: float, sr: int) -> None:
    if machine not in _MACHINES:
        raise ParameterError(f"machine must be one of {MACHINES}, got {machine!r}")
    if not isinstance(channels, int) or not 1 <= channels <= 16:
        raise ParameterError(f"channels must be an integer in 1..16, got {channels!r}")
    if not isinstance(sr, int) or sr < 8000:
        raise ParameterError(f"sr must be an integer >= 8000 Hz, got {sr!r}")
    if not 0.5 <= duration_s <= 60.0:
        raise ParameterError(f"duration_s must be in 0.5..60 s, got {duration_s!r}")


@functools.lru_cache(maxsize=64)
def _id_setup(seed: int, machine: str, id_name: str, n: int, sr: int) -> tuple[dict[str, float], float, float]:
    """Per-ID parameters, the calibration gain that puts a normal clip at unit RMS, and the azimuth."""
    params_fn, machine_fn = _MACHINES[machine]
    r = np.random.default_rng(np.random.SeedSequence([seed, _crc(machine), _crc(id_name), 7]))
    params = params_fn(r)
    azimuth = float(r.uniform(0.0, 2.0 * np.pi))
    # Calibrate on a dedicated reference normal clip, so the stated SNR holds for normal clips and a
    # fault keeps the power it adds or removes (a louder fault is louder, as it would be).
    ref = np.random.default_rng(np.random.SeedSequence([seed, _crc(machine), _crc(id_name), _LABEL_CODE["reference"]]))
    gain = 1.0 / _rms(machine_fn(params, ref, _Grid(n, sr), None, 0.0))
    return params, gain, azimuth


def synth_clip(
    machine: str,
    machine_id: str | int,
    *,
    label: str = "normal",
    index: int = 0,
    snr_db: float = 0.0,
    channels: int = 8,
    duration_s: float = 10.0,
    sr: int = 16000,
    seed: int = 0,
    fault: str | None = None,
    severity: float | None = None,
    components: dict[str, np.ndarray] | None = None,
) -> SynthClip:
    """Synthesise one clip in memory.

    Parameters
    ----------
    machine
        One of :data:`MACHINES`.
    machine_id
        ``"00"``, ``"id_00"`` or ``0``.
    label
        ``"normal"`` or ``"anomaly"``.
    index
        The clip's number within its (machine, ID, label) folder; with ``seed`` it fixes every
        random choice of the clip.
    snr_db
        Power ratio of the normal machine sound to the background, dB (MIMII: 6, 0, -6).
    channels
        Microphones of the circular array (MIMII: 8).
    duration_s, sr
        Clip length in seconds and sample rate in Hz.
    seed
        Dataset seed.
    fault, severity
        For an anomalous clip: the fault (one of ``FAULTS[machine]``) and its severity in (0, 1.5].
        ``None`` (default) picks them from ``index``: faults cycle through ``FAULTS[machine]`` and
        severities through :data:`SEVERITIES` (+-20 % jitter), so every fault appears at every
        severity in a large enough set.
    components
        If a dict is given, it receives the mono ``"source"`` (machine sound, calibrated so that a
        normal clip of this ID has unit RMS) and ``"background"`` (unit RMS) before mixing, so the
        SNR can be checked.

    Returns
    -------
    SynthClip
    """
    _check_common(machine, channels, duration_s, sr)
    if label not in ("normal", "anomaly"):
        raise ParameterError(f"label must be 'normal' or 'anomaly', got {label!r}")
    if not isinstance(index, int) or index < 0:
        raise ParameterError(f"index must be a non-negative integer, got {index!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ParameterError(f"seed must be a non-negative integer, got {seed!r}")
    id_name = _id_name(machine_id)
    clip_seq = np.random.SeedSequence([seed, _crc(machine), _crc(id_name), _LABEL_CODE[label], index])
    src_rng, bg_rng, mic_rng, choice_rng = (np.random.default_rng(s) for s in clip_seq.spawn(4))

    if label == "normal":
        if fault is not None or severity is not None:
            raise ParameterError("a normal clip has no fault or severity")
        sev = 0.0
    else:
        faults = FAULTS[machine]
        if fault is None:
            fault = faults[index % len(faults)]
        elif fault not in faults:
            raise ParameterError(f"fault for {machine} must be one of {faults}, got {fault!r}")
        if severity is None:
            level = SEVERITIES[(index // len(faults)) % len(SEVERITIES)]
            severity = level * float(choice_rng.uniform(0.8, 1.2))
        elif not 0.0 < severity <= 1.5:
            raise ParameterError(f"severity must be in (0, 1.5], got {severity!r}")
        sev = float(severity)

    g = _Grid(int(round(duration_s * sr)), sr)
    params, gain, azimuth = _id_setup(seed, machine, id_name, g.n, sr)
    source = gain * _MACHINES[machine][1](params, src_rng, g, fault, sev)
    factory = np.random.default_rng(np.random.SeedSequence([seed, _crc(machine), 11]))
    background = _background(factory, bg_rng, g)
    bg_azimuth = float(bg_rng.uniform(0.0, 2.0 * np.pi))
    if components is not None:  # white-box access for tests: the calibrated mono sources
        components["source"] = source
        components["background"] = background
    background = background * _db(-float(snr_db))
    # Nominal mixture power is 1 + 10**(-snr/10); normalise it to OUTPUT_RMS with a little gain jitter.
    level = OUTPUT_RMS * _db(LEVEL_JITTER_DB * float(mic_rng.standard_normal())) / np.sqrt(1.0 + 10.0 ** (-snr_db / 10.0))
    noise_rms = _db(SENSOR_NOISE_DB) * np.sqrt(1.0 + 10.0 ** (-snr_db / 10.0))
    mix = _to_array(g, [(source, azimuth), (background, bg_azimuth)], channels, mic_rng, noise_rms) * level
    samples = np.clip(mix, -1.0, 1.0).astype(np.float32)
    return SynthClip(
        samples=samples,
        sr=sr,
        machine=machine,
        id=id_name,
        label=label,
        snr_db=float(snr_db),
        fault=fault,
        severity=None if label == "normal" else sev,
    )


def _snr_dir(snr_db: float) -> str:
    return f"{snr_db:g}_dB"


def clip_path(out_dir: str | Path, machine: str, machine_id: str | int, label: str, index: int, snr_db: float) -> Path:
    """Where :func:`generate_dataset` writes a clip: the exact MIMII layout
    ``<out>/<snr>_dB_<machine>/<machine>/id_XX/{normal,abnormal}/NNNNNNNN.wav``."""
    folder = {"normal": "normal", "anomaly": "abnormal"}[label]
    return (
        Path(out_dir) / f"{_snr_dir(snr_db)}_{machine}" / machine / _id_name(machine_id) / folder / f"{index:08d}.wav"
    )


def _write_one(job: tuple[Path, str, str, float, str, int, int, float, int, int]) -> tuple[Path, str | None, float | None]:
    """Synthesise and write one clip (a top-level function so worker processes can run it)."""
    out, machine, machine_id, snr, label, index, channels, duration_s, sr, seed = job
    clip = synth_clip(
        machine, machine_id, label=label, index=index, snr_db=snr, channels=channels, duration_s=duration_s, sr=sr, seed=seed
    )
    path = clip_path(out, machine, machine_id, label, index, snr)
    write_wav(path, clip.samples, sr)
    return path, clip.fault, clip.severity


def generate_dataset(
    out_dir: str | Path,
    *,
    machines: Iterable[str] = MACHINES,
    ids: Iterable[str | int] = ("00", "02"),
    snrs_db: Iterable[float] = (6.0, 0.0, -6.0),
    n_normal: int = 100,
    n_abnormal: int = 30,
    channels: int = 8,
    duration_s: float = 10.0,
    sr: int = 16000,
    seed: int = 0,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Write a synthetic dataset in the exact MIMII layout (16-bit PCM wav files).

    A manifest ``synth_manifest.csv`` (path, machine, id, snr_db, label, fault, severity) is written
    beside the SNR folders; readers ignore it.

    Parameters
    ----------
    out_dir
        Destination folder (created). Existing files of the same names are overwritten.
    machines, ids, snrs_db
        Machine types (from :data:`MACHINES`), IDs (``"00"`` or ``"id_00"``) and SNRs in dB.
    n_normal, n_abnormal
        Clips per machine, ID and SNR.
    channels, duration_s, sr, seed
        As in :func:`synth_clip`.
    workers
        Processes generating clips in parallel. Every clip has its own random stream, so the files
        are identical whatever the number of workers.
    progress
        Called as ``progress(done, total)`` after each file.

    Returns
    -------
    list of Path
        The written wav files, in a fixed order (machine, ID, SNR, label, index).
    """
    machines, ids, snrs = list(machines), [_id_name(i) for i in ids], [float(s) for s in snrs_db]
    if not machines or not ids or not snrs:
        raise ParameterError("machines, ids and snrs_db must each name at least one value")
    if len(set(ids)) != len(ids) or len(set(snrs)) != len(snrs) or len(set(machines)) != len(machines):
        raise ParameterError("machines, ids and snrs_db must not repeat values")
    for m in machines:
        _check_common(m, channels, duration_s, sr)
    if not isinstance(n_normal, int) or not isinstance(n_abnormal, int) or n_normal < 0 or n_abnormal < 0:
        raise ParameterError(f"n_normal and n_abnormal must be non-negative integers, got {n_normal!r}, {n_abnormal!r}")
    if n_normal + n_abnormal == 0:
        raise ParameterError("nothing to generate: n_normal and n_abnormal are both 0")
    if not isinstance(seed, int) or seed < 0:
        raise ParameterError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(workers, int) or workers < 1:
        raise ParameterError(f"workers must be a positive integer, got {workers!r}")
    out = Path(out_dir)
    jobs = [
        (out, m, i, s, label, k, channels, duration_s, sr, seed)
        for m in machines
        for i in ids
        for s in snrs
        for label, count in (("normal", n_normal), ("anomaly", n_abnormal))
        for k in range(count)
    ]
    if workers == 1:
        results = map(_write_one, jobs)
        pool = None
    else:
        import concurrent.futures
        import multiprocessing

        # "spawn": a fresh interpreter per worker, safe even when the caller has TensorFlow threads
        pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        results = pool.map(_write_one, jobs, chunksize=4)
    written: list[Path] = []
    manifest = ["path,machine,id,snr_db,label,fault,severity"]
    try:
        for done, ((_, m, i, s, label, _k, *_), (path, fault, severity)) in enumerate(zip(jobs, results), start=1):
            written.append(path)
            sev = "" if severity is None else f"{severity:.3f}"
            manifest.append(f"{path.relative_to(out).as_posix()},{m},{i},{s:g},{label},{fault or ''},{sev}")
            if progress is not None:
                progress(done, len(jobs))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    (out / "synth_manifest.csv").write_text("\n".join(manifest) + "\n", encoding="utf-8")
    return written


def mahalanobis_auc(
    machine: str,
    *,
    machine_id: str | int = "00",
    snr_db: float = 0.0,
    duration_s: float = 2.0,
    n_train: int = 40,
    n_test: int = 30,
    channels: int = 8,
    seed: int = 0,
) -> float:
    """The difficulty check: AUC of a simple detector on synthetic clips made in memory.

    The detector is the per-clip mean log-Mel spectrum (``edge_asd.frontend`` defaults) and its
    Mahalanobis distance to ``n_train`` normal clips (Ledoit-Wolf shrunk covariance: there are
    fewer clips than bands). It is tested on ``n_test`` further normal clips and ``n_test``
    anomalous ones (faults and severities cycling). The data are meant to sit well inside
    (0.6, 0.99): learnable, not trivial.

    Returns
    -------
    float, the AUC.
    """
    from sklearn.covariance import LedoitWolf

    from edge_asd.frontend import FeatureConfig, compute_features
    from trainer.metrics import auc

    config = FeatureConfig()

    def features(label: str, indices: range) -> np.ndarray:
        return np.stack([
            compute_features(
                synth_clip(machine, machine_id, label=label, index=k, snr_db=snr_db, channels=channels,
                           duration_s=duration_s, seed=seed).samples,
                config,
            ).mean(axis=0)
            for k in indices
        ])

    model = LedoitWolf().fit(features("normal", range(n_train)))
    normal = model.mahalanobis(features("normal", range(n_train, n_train + n_test)))
    anomalous = model.mahalanobis(features("anomaly", range(n_test)))
    return auc(np.r_[np.zeros(n_test), np.ones(n_test)], np.r_[normal, anomalous])
