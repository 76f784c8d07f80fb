"""Synthetic anomalies made from normal clips: the trainer's validation signal when no fault was recorded.

A user of ``asd-train fit --recipe auto`` has recordings of their machine running normally and
none of it failing. Candidate training recipes are therefore ranked by how well each separates
held-out normal clips from *pseudo-anomalies* made from those same clips by adding or imposing one
of five fault families, modelled on the faults the MIMII and ToyADMOS papers describe:

========================  ==================================================  =======================
family                    what is done to the clip                            severity parameter
                                                                              (low / medium / high)
========================  ==================================================  =======================
``click``                 a train of short decaying broadband impulses        click peak re clip RMS:
                          exciting 1-3 damped resonances (chipped gear        +6 / +12 / +18 dB
                          tooth, loose part): periodic at a rotation rate
                          of 2-40 Hz with 3 % timing jitter, or sporadic
                          (Poisson, 0.5-5 per second)
``tone``                  a new harmonic series (1-4 partials, amplitudes     series RMS re clip RMS:
                          1/h) on a fundamental drawn log-uniformly in        -20 / -12 / -6 dB
                          100 Hz - 0.4 sr (bearing defect, unbalance)
``noise_burst``           band-pass noise (order-4 Butterworth, 1/3-1         noise RMS while on, re
                          octave wide, centre 200 Hz - 0.4 sr) switched on    clip RMS:
                          for 30-70 % of the clip in 1-3 bursts with 20 ms    -20 / -12 / -6 dB
                          raised-cosine edges (leak, friction)
``amplitude_modulation``  the clip's own sound times ``1 + m sin(2 pi f t)``  depth m:
                          with f drawn log-uniformly in 0.5-10 Hz (loose      0.1 / 0.25 / 0.5
                          belt, rubbing once per slow revolution)
``speed_change``          the clip's own sound resampled so every frequency   speed factor 1 +- p:
                          and event rate scales by 1 + p or 1 - p (sign       p = 1.5 / 3 / 6 %
                          drawn per clip): a motor running off its speed
========================  ==================================================  =======================

**How the severities were chosen.** A priori, from what a developing fault plausibly does, going
from "hard to hear" to "obvious", and never from any data set's test results (the pseudo-anomalies
are a validation signal; tuning them to a test set would leak it into recipe selection). Additive
components are set relative to the clip's own RMS so that a quiet and a loud machine get equally
(in)visible faults: a tone or band noise 20 dB below the clip is barely above the clip's own
spectrum in its band, 6 dB below is plainly audible. Clicks are set by their *peak*, because an
impulse's RMS over a clip says nothing about how it sounds: +6 dB is within the peaks broadband
machine noise already has (Gaussian noise reaches about +13 dB over 10 s), +18 dB stands clear of
them. Modulation depth 0.1 is a +-0.8 dB level wobble, 0.5 a -6 / +3.5 dB one. A speed change of
1.5 % is about a quarter of a semitone (a slipping belt or a sagging supply), 6 % a full semitone.
The steps are a factor of about two in amplitude (6-8 dB) per level for every family.

**Quiet and silent clips.** The reference level is the clip's RMS over all samples and channels,
floored at -60 dBFS (``LEVEL_FLOOR_DBFS``), so an additive fault is still added to a silent or
nearly silent clip (at -80 / -72 / -66 dBFS for a tone, for instance). The two families that act
on the clip's own sound (``amplitude_modulation``, ``speed_change``) return a silent clip unchanged:
there is no sound to modulate or speed up.

**Channels.** An added component is one source, added identically to every channel (coherently,
as a real source near the machine would be; the few-sample delays across a small array are
ignored). Modulation and resampling apply the same parameters to every channel.

**Determinism.** Everything a fault does is a function of ``(samples, sr, spec, seed)``. The
random parameters (frequencies, rates, bands, the click shape and timing, the burst placement) do
not depend on the severity: for one seed, the three severities of a family differ only in the
severity parameter, so their deviations from the clean clip are ordered. :func:`fault_parameters`
returns the parameters a ``(spec, seed)`` draws, for tests and reports. :func:`make_pseudo_anomalies`
gives every ``(clip, spec)`` pair its own seed derived from ``(seed, clip index, family, severity)``
through :class:`numpy.random.SeedSequence`, so adding a family or a clip never changes the others.

The output is clipped to [-1, 1] (only samples that a fault pushed past full scale change), is
float32 and never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import scipy.signal

from edge_asd.audio import read_wav, write_wav
from edge_asd.errors import ParameterError

__all__ = [
    "FAULT_FAMILIES",
    "SEVERITIES",
    "SEVERITY_PARAMETERS",
    "LEVEL_FLOOR_DBFS",
    "FaultSpec",
    "apply_fault",
    "fault_grid",
    "fault_parameters",
    "make_pseudo_anomalies",
    "write_pseudo_anomalies",
]

FAULT_FAMILIES: tuple[str, ...] = ("click", "tone", "noise_burst", "amplitude_modulation", "speed_change")
SEVERITIES: tuple[str, ...] = ("low", "medium", "high")

SEVERITY_PARAMETERS: dict[str, dict[str, float]] = {
    # click peak amplitude in dB re the clip's RMS
    "click": {"low": 6.0, "medium": 12.0, "high": 18.0},
    # RMS of the added harmonic series in dB re the clip's RMS
    "tone": {"low": -20.0, "medium": -12.0, "high": -6.0},
    # RMS of the band noise while a burst is on, in dB re the clip's RMS
    "noise_burst": {"low": -20.0, "medium": -12.0, "high": -6.0},
    # modulation depth m (dimensionless): gain 1 + m sin(2 pi f t)
    "amplitude_modulation": {"low": 0.1, "medium": 0.25, "high": 0.5},
    # relative speed change p (dimensionless): speed factor 1 + p or 1 - p
    "speed_change": {"low": 0.015, "medium": 0.03, "high": 0.06},
}
"""The severity parameter of each family at each level (units in the comments); see the module docstring."""

LEVEL_FLOOR_DBFS = -60.0
"""Floor of the reference level (dBFS, RMS), so that a fault is still added to a silent clip."""

MIN_SAMPLE_RATE_HZ = 2000
"""Below this the frequency ranges the families draw from (100 Hz ... 0.4 sr) have no room."""

# Frequency ranges drawn from, in Hz or as a fraction of the sample rate. Kept below 0.4-0.45 sr
# so every component sits well inside the band the front end and the anti-alias filters keep.
_TONE_MIN_HZ = 100.0
_TOP_FRACTION = 0.4
_NYQUIST_GUARD_FRACTION = 0.45
_CLICK_RESONANCE_MIN_HZ = 300.0
_CLICK_DECAY_MS = (0.5, 4.0)
_CLICK_PERIODIC_RATE_HZ = (2.0, 40.0)  # once per revolution of a part at 120-2400 rpm
_CLICK_SPORADIC_RATE_HZ = (0.5, 5.0)
_CLICK_JITTER = 0.03  # timing jitter, fraction of the period (slip, speed fluctuation)
_CLICK_AMPLITUDE_SPREAD = (0.7, 1.0)  # per-click amplitude, relative to the nominal peak
_BURST_CENTRE_MIN_HZ = 200.0
_BURST_WIDTH_OCTAVES = (1.0 / 3.0, 1.0)
_BURST_ON_FRACTION = (0.3, 0.7)
_BURST_EDGE_S = 0.02
_AM_RATE_HZ = (0.5, 10.0)
_SPEED_PAD_SAMPLES = 256  # reflected margin so resample_poly's edge transient falls outside the clip


@dataclass(frozen=True, kw_only=True)
class FaultSpec:
    """One fault family at one severity level.

    Attributes
    ----------
    family
        One of :data:`FAULT_FAMILIES`.
    severity
        One of :data:`SEVERITIES` (``"low"``, ``"medium"``, ``"high"``).
    """

    family: str
    severity: str

    def __post_init__(self) -> None:
        if self.family not in FAULT_FAMILIES:
            raise ParameterError(f"unknown fault family {self.family!r}; expected one of {', '.join(FAULT_FAMILIES)}")
        if self.severity not in SEVERITIES:
            raise ParameterError(f"unknown severity {self.severity!r}; expected one of {', '.join(SEVERITIES)}")

    @property
    def name(self) -> str:
        """``<family>_<severity>``, as used in file names."""
        return f"{self.family}_{self.severity}"

    @property
    def severity_parameter(self) -> float:
        """The family's severity parameter at this level (see :data:`SEVERITY_PARAMETERS`)."""
        return SEVERITY_PARAMETERS[self.family][self.severity]


def fault_grid(families: Sequence[str] = FAULT_FAMILIES, severities: Sequence[str] = SEVERITIES) -> list[FaultSpec]:
    """Every ``(family, severity)`` combination, family-major, in the order given."""
    if isinstance(families, str) or isinstance(severities, str):
        raise ParameterError("families and severities are sequences of names, not a single string")
    return [FaultSpec(family=f, severity=s) for f in families for s in severities]


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ParameterError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_sr(sr: Any) -> int:
    if isinstance(sr, bool) or not isinstance(sr, (int, np.integer)) or sr < MIN_SAMPLE_RATE_HZ:
        raise ParameterError(f"sample rate must be an integer >= {MIN_SAMPLE_RATE_HZ} Hz, got {sr!r}")
    return int(sr)


def _check_samples(samples: Any) -> np.ndarray:
    x = np.asarray(samples)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ParameterError(f"samples must have shape (n_samples, n_channels) with both >= 1, got {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ParameterError(f"samples must be floating point in [-1, 1], got dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise ParameterError("samples contain NaN or inf")
    return x


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _rngs(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    # Two independent streams: scalar parameters, and waveforms (noise, timing). The waveform
    # stream's consumption depends on the clip length, so keeping it apart keeps the drawn
    # parameters the same for every clip length.
    params, signal = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(params), np.random.default_rng(signal)


def _draw_parameters(spec: FaultSpec, sr: int, rng: np.random.Generator) -> dict[str, Any]:
    """Draw a family's random parameters. The draws never depend on the severity."""
    top = _TOP_FRACTION * sr
    guard = _NYQUIST_GUARD_FRACTION * sr
    p: dict[str, Any] = {"family": spec.family, "severity": spec.severity}
    if spec.family == "click":
        n_modes = int(rng.integers(1, 4))
        p["mode"] = "periodic" if rng.random() < 0.5 else "sporadic"
        rate_range = _CLICK_PERIODIC_RATE_HZ if p["mode"] == "periodic" else _CLICK_SPORADIC_RATE_HZ
        p["rate_hz"] = _log_uniform(rng, *rate_range)
        p["resonance_hz"] = tuple(sorted(_log_uniform(rng, _CLICK_RESONANCE_MIN_HZ, top) for _ in range(n_modes)))
        p["decay_ms"] = tuple(_log_uniform(rng, *_CLICK_DECAY_MS) for _ in range(n_modes))
        p["mode_gain"] = tuple(float(rng.uniform(0.5, 1.0)) for _ in range(n_modes))
        p["impulse_gain"] = float(rng.uniform(0.3, 1.0))  # broadband part of the knock
        p["peak_db_re_rms"] = spec.severity_parameter
    elif spec.family == "tone":
        f0 = _log_uniform(rng, _TONE_MIN_HZ, top)
        n_harm = int(rng.integers(1, 5))
        freqs = [h * f0 for h in range(1, n_harm + 1) if h * f0 < guard]
        p["f0_hz"] = f0
        p["frequencies_hz"] = tuple(freqs)
        p["phases_rad"] = tuple(float(rng.uniform(0, 2 * math.pi)) for _ in range(n_harm))[: len(freqs)]
        p["level_db_re_rms"] = spec.severity_parameter
    elif spec.family == "noise_burst":
        width = float(rng.uniform(*_BURST_WIDTH_OCTAVES))
        centre = _log_uniform(rng, _BURST_CENTRE_MIN_HZ, top)
        low, high = centre * 2 ** (-width / 2), centre * 2 ** (width / 2)
        if high > guard:  # keep the whole band clear of Nyquist by sliding it down
            low, high = low * guard / high, guard
        p["low_hz"], p["high_hz"] = float(low), float(high)
        p["on_fraction"] = float(rng.uniform(*_BURST_ON_FRACTION))
        p["n_bursts"] = int(rng.integers(1, 4))
        p["level_db_re_rms"] = spec.severity_parameter
    elif spec.family == "amplitude_modulation":
        p["rate_hz"] = _log_uniform(rng, *_AM_RATE_HZ)
        p["phase_rad"] = float(rng.uniform(0, 2 * math.pi))
        p["depth"] = spec.severity_parameter
    else:  # speed_change
        sign = 1.0 if rng.random() < 0.5 else -1.0
        # An exact small rational keeps resample_poly's filter short; the factor reported is the
        # one actually applied.
        ratio = Fraction(1.0 + sign * spec.severity_parameter).limit_denominator(1000)
        p["factor"] = float(ratio)
        p["ratio"] = (ratio.numerator, ratio.denominator)
    return p


def fault_parameters(spec: FaultSpec, sr: int, *, seed: int) -> dict[str, Any]:
    """The parameters :func:`apply_fault` draws for ``(spec, seed)`` at sample rate ``sr`` (Hz).

    Keys, besides ``family`` and ``severity``:

    - ``click``: ``mode`` (``"periodic"`` / ``"sporadic"``), ``rate_hz`` (clicks per second, mean
      for sporadic), ``resonance_hz``, ``decay_ms`` (time constants), ``mode_gain`` (per resonance),
      ``impulse_gain`` (broadband part), ``peak_db_re_rms``;
    - ``tone``: ``f0_hz``, ``frequencies_hz`` (partials kept below 0.45 sr), ``phases_rad``,
      ``level_db_re_rms`` (RMS of the whole series);
    - ``noise_burst``: ``low_hz``, ``high_hz`` (band edges), ``on_fraction``, ``n_bursts``,
      ``level_db_re_rms`` (while on);
    - ``amplitude_modulation``: ``rate_hz``, ``phase_rad``, ``depth``;
    - ``speed_change``: ``factor`` (every frequency in the output is ``factor`` times the input's),
      ``ratio`` (its exact ``(numerator, denominator)``).

    They do not depend on the clip's length or level, nor on the severity (except the severity
    parameter itself).
    """
    if not isinstance(spec, FaultSpec):
        raise ParameterError(f"spec must be a FaultSpec, got {type(spec).__name__}")
    params_rng, _ = _rngs(_check_seed(seed))
    return _draw_parameters(spec, _check_sr(sr), params_rng)


def _reference_rms(x: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    return max(rms, 10.0 ** (LEVEL_FLOOR_DBFS / 20.0))


def _click_component(p: dict[str, Any], n: int, sr: int, ref: float, rng: np.random.Generator) -> np.ndarray:
    # One knock = a very short decaying noise impulse (the broadband hit) exciting damped
    # resonances (the part ringing). The same part knocks every time, so one kernel serves all.
    taus = np.asarray(p["decay_ms"]) / 1000.0
    t = np.arange(int(math.ceil(5.0 * taus.max() * sr)) + 1) / sr
    kernel = np.zeros_like(t)
    for f, tau, g in zip(p["resonance_hz"], taus, p["mode_gain"]):
        kernel += g * np.exp(-t / tau) * np.sin(2 * math.pi * f * t)
    kernel += p["impulse_gain"] * rng.standard_normal(t.size) * np.exp(-t / 2e-4)
    kernel /= np.max(np.abs(kernel))

    duration = n / sr
    if p["mode"] == "periodic":
        period = 1.0 / p["rate_hz"]
        k = np.arange(int(math.ceil(duration / period)) + 1)
        times = rng.uniform(0, period) + k * period + rng.normal(0, _CLICK_JITTER * period, k.size)
    else:
        times = rng.uniform(0, duration, rng.poisson(p["rate_hz"] * duration))
    idx = np.round(times * sr).astype(np.int64)
    idx = idx[(idx >= 0) & (idx < n)]
    if idx.size == 0:  # a clip shorter than the gap between clicks still gets one
        idx = np.array([int(rng.integers(0, n))])
    amps = rng.uniform(*_CLICK_AMPLITUDE_SPREAD, idx.size)

    train = np.zeros(n)
    np.add.at(train, idx, amps)
    peak = ref * 10.0 ** (p["peak_db_re_rms"] / 20.0)
    return peak * scipy.signal.oaconvolve(train, kernel)[:n]


def _tone_component(p: dict[str, Any], n: int, sr: int, ref: float) -> np.ndarray:
    t = np.arange(n) / sr
    y = np.zeros(n)
    for h, (f, phase) in enumerate(zip(p["frequencies_hz"], p["phases_rad"]), start=1):
        y += np.sin(2 * math.pi * f * t + phase) / h
    # Scale by the analytic RMS of the series (sum of a_h^2 / 2), not the measured one, so a clip
    # shorter than a period gets the same amplitude as a long one.
    rms = math.sqrt(sum(1.0 / h**2 for h in range(1, len(p["frequencies_hz"]) + 1)) / 2.0)
    return y * (ref * 10.0 ** (p["level_db_re_rms"] / 20.0) / rms)


def _noise_burst_component(p: dict[str, Any], n: int, sr: int, ref: float, rng: np.random.Generator) -> np.ndarray:
    sos = scipy.signal.butter(4, [p["low_hz"], p["high_hz"]], btype="bandpass", fs=sr, output="sos")
    noise = scipy.signal.sosfilt(sos, rng.standard_normal(n))
    rms = float(np.sqrt(np.mean(noise**2)))
    noise *= ref * 10.0 ** (p["level_db_re_rms"] / 20.0) / rms if rms > 0 else 0.0

    # Bursts of equal length, one per equal slot of the clip (so they never overlap), placed at
    # random inside their slot, with raised-cosine edges so the onset is not itself a click.
    n_bursts = p["n_bursts"]
    slot = n // n_bursts
    length = max(1, int(p["on_fraction"] * n / n_bursts))
    alpha = min(1.0, 2.0 * _BURST_EDGE_S * sr / length)
    window = scipy.signal.windows.tukey(length, alpha) if length > 2 else np.ones(length)
    gate = np.zeros(n)
    for b in range(n_bursts):
        start = b * slot + int(rng.integers(0, max(1, slot - length + 1)))
        stop = min(n, start + length)
        gate[start:stop] = window[: stop - start]
    return noise * gate


def _amplitude_modulation(x: np.ndarray, p: dict[str, Any], sr: int) -> np.ndarray:
    t = np.arange(x.shape[0]) / sr
    gain = 1.0 + p["depth"] * np.sin(2 * math.pi * p["rate_hz"] * t + p["phase_rad"])
    return x * gain[:, None]


def _speed_change(x: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    # Output sample j is input time j * factor: resample by down/up = factor and play at the same
    # rate. A sped-up clip needs n * factor input samples, so the clip is extended by reflection
    # (continuous, and inconspicuous for a stationary machine sound) rather than zero-padded,
    # which would add a silent gap that is no fault at all.
    n = x.shape[0]
    num, den = p["ratio"]
    factor = num / den
    left = min(_SPEED_PAD_SAMPLES, n - 1)
    right = min(left + int(math.ceil(n * max(0.0, factor - 1.0))) + 1, n - 1)
    padded = np.pad(x, ((left, right), (0, 0)), mode="reflect") if n > 1 else x
    y = scipy.signal.resample_poly(padded, den, num, axis=0)
    start = int(round(left / factor))
    y = y[start : start + n]
    if y.shape[0] < n:  # only for clips too short to reflect; hold the last value
        y = np.pad(y, ((0, n - y.shape[0]), (0, 0)), mode="edge")
    return y


def apply_fault(samples: np.ndarray, sr: int, spec: FaultSpec, *, seed: int) -> np.ndarray:
    """Return a copy of ``samples`` with the fault ``spec`` in it.

    Parameters
    ----------
    samples
        Float audio, shape ``(n_samples, n_channels)``, values in [-1, 1]. Not modified.
    sr
        Sample rate in Hz (>= 2000).
    spec
        The fault family and severity.
    seed
        Non-negative integer; the output is a deterministic function of ``(samples, sr, spec, seed)``.

    Returns
    -------
    np.ndarray, float32, the same shape as ``samples``, clipped to [-1, 1].

    Additive families (``click``, ``tone``, ``noise_burst``) add one component, scaled relative to
    the clip's RMS over all samples and channels floored at -60 dBFS, identically to every channel.
    ``amplitude_modulation`` and ``speed_change`` transform every channel the same way (a silent
    clip stays silent). See the module docstring for the families and severities.

    Raises
    ------
    ParameterError
        Bad shape, non-float or non-finite samples, a sample rate below 2000 Hz, a negative or
        non-integer seed, or ``spec`` not a :class:`FaultSpec`.
    """
    if not isinstance(spec, FaultSpec):
        raise ParameterError(f"spec must be a FaultSpec, got {type(spec).__name__}")
    x = _check_samples(samples).astype(np.float64)
    sr = _check_sr(sr)
    params_rng, signal_rng = _rngs(_check_seed(seed))
    p = _draw_parameters(spec, sr, params_rng)
    n = x.shape[0]

    if spec.family == "click":
        y = x + _click_component(p, n, sr, _reference_rms(x), signal_rng)[:, None]
    elif spec.family == "tone":
        y = x + _tone_component(p, n, sr, _reference_rms(x))[:, None]
    elif spec.family == "noise_burst":
        y = x + _noise_burst_component(p, n, sr, _reference_rms(x), signal_rng)[:, None]
    elif spec.family == "amplitude_modulation":
        y = _amplitude_modulation(x, p, sr)
    else:
        y = _speed_change(x, p)
    return np.clip(y, -1.0, 1.0).astype(np.float32)


def _name_key(name: str) -> int:
    # SeedSequence takes arbitrarily large integers: the name's bytes as one integer never collide
    # the way a hash could.
    return int.from_bytes(name.encode("utf-8"), "little")


def _pair_seed(seed: int, key: Sequence[int], spec: FaultSpec) -> int:
    entropy = [seed, *key, _name_key(spec.family), _name_key(spec.severity)]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0])


def make_pseudo_anomalies(
    clips: Sequence[np.ndarray],
    sr: int,
    *,
    seed: int,
    specs: Sequence[FaultSpec] | None = None,
) -> list[tuple[int, FaultSpec, np.ndarray]]:
    """Apply every spec to every clip: ``[(clip_index, spec, faulty_samples), ...]``, clip-major.

    ``specs`` defaults to :func:`fault_grid` (15 specs). Each pair gets its own seed derived from
    ``(seed, clip index, family, severity)`` via :class:`numpy.random.SeedSequence`, so adding a
    family, a severity or a clip leaves every other pair's output unchanged. ``sr`` is in Hz.
    """
    seed = _check_seed(seed)
    specs = fault_grid() if specs is None else list(specs)
    out = []
    for i, clip in enumerate(clips):
        for spec in specs:
            out.append((i, spec, apply_fault(clip, sr, spec, seed=_pair_seed(seed, (0, i), spec))))
    return out


def write_pseudo_anomalies(
    paths: Sequence[Path],
    out_dir: Path,
    *,
    seed: int,
    specs: Sequence[FaultSpec] | None = None,
) -> list[tuple[Path, FaultSpec, Path]]:
    """Write every spec applied to every normal wav as ``out_dir/<stem>__<family>_<severity>.wav``.

    Each file is read with :func:`edge_asd.audio.read_wav` (its own rate and channels kept) and
    written as 16-bit PCM with :func:`edge_asd.audio.write_wav`. Returns
    ``[(source_path, spec, written_path), ...]``, file-major.

    The seed of each output is derived from ``(seed, source file stem, family, severity)``, not from
    the file's position in ``paths``: an output file's content depends only on its own name and the
    seed, so it is the same whichever other files are listed (the trainer's feature cache is keyed
    by path). Two sources with the same stem would write the same names: a ``ParameterError``.
    """
    seed = _check_seed(seed)
    specs = fault_grid() if specs is None else list(specs)
    paths = [Path(p) for p in paths]
    stems = [p.stem for p in paths]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise ParameterError(f"source files share a stem, so their pseudo-anomalies would collide: {', '.join(dupes)}")
    out_dir = Path(out_dir)
    written = []
    for path in paths:
        samples, sr = read_wav(path)
        for spec in specs:
            target = out_dir / f"{path.stem}__{spec.name}.wav"
            faulty = apply_fault(samples, sr, spec, seed=_pair_seed(seed, (1, _name_key(path.stem)), spec))
            write_wav(target, faulty, sr)
            written.append((path, spec, target))
    return written
