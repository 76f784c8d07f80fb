"""Enrollment on site: re-fit a bundle's normalisation, score scaling and threshold from normal audio
recorded where the device is mounted, keeping the factory values for an exact rollback.

One story for the three on-site commands:

- ``edge-asd calibrate`` re-sets the threshold only (the previous one goes to its history);
- ``edge-asd enroll`` re-fits the feature normalisation, the score scaling and the threshold;
- ``edge-asd enroll --rollback`` returns to the factory values, exactly as exported.

Enrollment reads the audio once (microphone, wav file or folder, through
:func:`edge_asd.audio.sources.open_source`), checks it (:mod:`edge_asd.signal_quality`: silence,
flat-lined channels, clipping) and keeps its mono downmix in memory (4 bytes per sample at the
bundle's rate: 38 MB for 10 minutes at 16 kHz) so that every later step sees the same samples:

1. normalisation: per-feature mean and std of the site's feature frames (one common std when the
   factory normalisation was "global");
2. score scaling: mean and std of the site's window scores under that normalisation;
3. threshold: the site's period scores, scored as the service scores them
   (:func:`edge_asd.calibration.score_periods`), and a gamma tail fit for the false-alarm rate
   (:func:`edge_asd.calibration.fit_threshold`), as ``calibrate`` does.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edge_asd.bundle import (
    Bundle, Enrollment, EnrollmentValues, Normalization, ScoreScaling, SiteEnrollment, read_bundle, write_bundle,
)
from edge_asd.calibration import MIN_PERIODS, CalibrationResult, fit_threshold, score_periods, threshold_record
from edge_asd.errors import AudioFileError, BundleError, ParameterError
from edge_asd.machine_state import frame_level_record
from edge_asd.signal_quality import SignalStats, SignalSummary, channel_correlation, check_enrollment_audio

__all__ = ["EnrollmentResult", "enroll_bundle", "rollback_bundle", "describe_input", "describe_enrollment", "STD_FLOOR_DB"]

STD_FLOOR_DB = 1e-3
"""Floor on per-feature standard deviations, dB (the trainer's ``trainer.train.STD_FLOOR_DB``): a
constant band, e.g. above a low-pass, would otherwise divide by zero."""
REPLAY_BLOCK = 1600
"""Samples per block when the recorded audio is replayed through the service's scorer."""


def describe_input(inp: Any) -> str:
    """How an :class:`edge_asd.config.InputConfig` is named in messages and records."""
    if inp.kind == "microphone":
        return f"microphone {inp.device if inp.device is not None else '(default)'}"
    return str(inp.path)


@dataclass(frozen=True, kw_only=True)
class EnrollmentResult:
    """What enrollment fitted and how the factory values did on the same audio."""

    bundle: Bundle
    """The bundle with the site values active (written unless a dry run)."""
    site: SiteEnrollment
    calibration: CalibrationResult
    factory_exceedances: int
    """Site periods above the factory threshold with the factory values."""
    n_periods: int
    written: bool


class _Replay:
    """The recorded mono audio as an :class:`~edge_asd.audio.sources.AudioSource` (one channel:
    the front end's downmix of one channel is the sample itself, so frames are unchanged)."""

    n_channels = 1
    realtime = False
    overflows = 0

    def __init__(self, mono: np.ndarray, sr: int) -> None:
        self.mono, self.sr = mono, sr

    def blocks(self) -> Iterator[np.ndarray]:
        for start in range(0, self.mono.size, REPLAY_BLOCK):
            yield self.mono[start : start + REPLAY_BLOCK, None]

    def stop(self) -> None:
        pass

    def close(self) -> None:
        pass


def _check_files(inp: Any, *, sr: int, seconds: float, need_s: float) -> None:
    """Refuse files that cannot match the bundle or are too short, naming the file."""
    from edge_asd.audio.sources import list_wavs
    from edge_asd.audio.wav import wav_info

    files = list_wavs(inp.path) if inp.kind == "folder" else [Path(inp.path)]
    total = 0.0
    for path in files:
        file_sr, file_ch, n = wav_info(path)
        if file_sr < sr:
            raise AudioFileError(
                f"{path}: recorded at {file_sr} Hz but the bundle's features need {sr} Hz; upsampling cannot "
                f"create the missing band above {file_sr / 2:g} Hz: record at {sr} Hz or more"
            )
        if file_ch != inp.channels:
            raise AudioFileError(
                f"{path}: has {file_ch} channel(s) but the profile captures {inp.channels} (input.channels); "
                "enroll with audio from the configured microphone array, or pass the matching --config"
            )
        total += n / file_sr
    if min(total, seconds) < need_s:
        raise ParameterError(
            f"{inp.path}: {min(total, seconds):.1f} s of audio is too little to enroll: at least {MIN_PERIODS} periods "
            f"are needed, i.e. >= {need_s:g} s (add recordings or a longer --seconds)"
        )


def _record(source: Any, *, seconds: float) -> tuple[np.ndarray, SignalSummary, float | None]:
    """Read up to ``seconds`` from ``source``: its mono downmix (float32, the front end's own
    kernel), the signal figures of the raw channels and the 5th percentile over blocks of the
    lowest channel-to-others correlation (``None`` for one channel), which the sensor monitor's
    decorrelation check learns from."""
    from edge_asd.frontend.kernels import downmix_into

    limit = int(round(seconds * source.sr))
    mono = np.empty(limit, dtype=np.float32)
    stats = SignalStats(source.n_channels)
    lowest: list[float] = []
    n = 0
    try:
        for block in source.blocks():
            block = np.ascontiguousarray(block[: limit - n], dtype=np.float32)
            stats.update(block)
            if source.n_channels > 1:
                corr = channel_correlation(block)
                if np.isfinite(corr).any():
                    lowest.append(float(np.nanmin(corr)))
            downmix_into(block, mono, n)
            n += block.shape[0]
            if n >= limit:
                break
    finally:
        source.close()
    return mono[:n], stats.summary(), (float(np.percentile(lowest, 5)) if lowest else None)


def _site_normalization(frames: np.ndarray, factory: Normalization) -> tuple[Normalization, str]:
    """Per-feature mean and std of the site frames; one common std if the factory had one."""
    x = frames.astype(np.float64)
    mean = x.mean(axis=0)
    if factory.is_global():
        std = np.full_like(mean, max(float((x - mean).std()), STD_FLOOR_DB))
        kind = "global"
    else:
        std = np.maximum(x.std(axis=0), STD_FLOOR_DB)
        kind = "per-feature"
    return Normalization(mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std)), kind


def enroll_bundle(
    bundle_path: str | Path,
    inp: Any,
    *,
    seconds: float,
    period_s: float,
    false_alarms_per_day: float = 1.0,
    model: str = "int8",
    class_label: str | None = None,
    dry_run: bool = False,
    log=lambda message: None,
) -> EnrollmentResult:
    """Enroll a bundle on normal site audio (see the module docstring).

    Parameters
    ----------
    bundle_path
        The bundle directory (rewritten unless ``dry_run``).
    inp
        An :class:`edge_asd.config.InputConfig`: microphone, wav file or folder.
    seconds
        Audio to record or read, seconds (files: at most this much).
    period_s
        Scoring period of the service, seconds (the threshold is for period means).
    false_alarms_per_day
        Target rate of normal periods above the threshold, per day.
    model, class_label
        The model the service runs (``int8`` / ``float``) and its machine class (``neg_log_prob``).

    Raises
    ------
    AudioFileError, SignalQualityError, ParameterError, BundleError, AudioDeviceError
        Audio that cannot match the bundle (rate below the bundle's, wrong channel count), silent,
        flat-lined or clipped audio, too little audio; every message names the input.
    """
    from edge_asd.audio.sources import open_source
    from edge_asd.detector import Detector
    from edge_asd.frontend import compute_features

    bundle = read_bundle(bundle_path)
    sr = bundle.features.sr
    where = describe_input(inp)
    need_s = MIN_PERIODS * period_s
    if inp.kind == "microphone":
        if seconds < need_s:
            raise ParameterError(
                f"{where}: --seconds {seconds:g} is too little to enroll: at least {MIN_PERIODS} periods of {period_s:g} s "
                f"are needed, i.e. --seconds {need_s:g} or more"
            )
    else:
        _check_files(inp, sr=sr, seconds=seconds, need_s=need_s)
    factory_detector = Detector(bundle, model=model, class_label=class_label)  # checks model and class first
    source = open_source(inp, sr=sr, realtime=False)
    log(f"reading up to {seconds:g} s of normal audio from {where} ...")
    mono, signal, correlation_p05 = _record(source, seconds=seconds)
    check_enrollment_audio(signal, where=where)
    audio_s = mono.size / sr
    if audio_s < need_s:
        raise ParameterError(
            f"{where}: only {audio_s:.1f} s of audio arrived; at least {MIN_PERIODS} periods of {period_s:g} s are "
            f"needed, i.e. >= {need_s:g} s"
        )

    factory_periods, _ = score_periods(factory_detector, _Replay(mono, sr), period_s=period_s)
    factory_exceedances = int((factory_periods > factory_detector.threshold_).sum())

    frames = compute_features(mono, bundle.features)
    normalization, kind = _site_normalization(frames, bundle.normalization)
    raw = Detector(dataclasses.replace(bundle, normalization=normalization, score_scaling=ScoreScaling()),
                   model=model, class_label=class_label).score_windows(frames)
    if raw.size < 2 or not float(raw.std()) > 0:
        raise ParameterError(f"{where}: the site audio gives {raw.size} window score(s) without spread; record more audio")
    scaling = ScoreScaling(mean=float(raw.mean()), std=float(raw.std()))

    site_bundle = dataclasses.replace(bundle, normalization=normalization, score_scaling=scaling)
    site_detector = Detector(site_bundle, model=model, class_label=class_label)
    periods, _ = score_periods(site_detector, _Replay(mono, sr), period_s=period_s)
    try:
        fit = fit_threshold(periods, period_s=period_s, false_alarms_per_day=false_alarms_per_day)
    except ParameterError as exc:
        raise ParameterError(f"{where}: {exc}") from exc
    calibrated_for = {"period_s": period_s, "model": model, "class_label": class_label, "n_channels": inp.channels}
    threshold = threshold_record(fit, input_desc=where, model=model, source="enrollment", calibrated_for=calibrated_for)
    threshold = bundle.threshold.superseded_by(threshold)

    site = SiteEnrollment(
        values=EnrollmentValues(normalization=normalization, score_scaling=scaling, threshold=threshold),
        normalization_kind=kind,
        audio={
            "input": where,
            "seconds": audio_s,
            "period_s": period_s,
            "periods": int(periods.size),
            "n_frames": int(frames.shape[0]),
            "n_windows": int(raw.size),
            "signal": signal.to_dict(),
            # What the service's sensor and machine-state monitors learn from (see
            # edge_asd.signal_quality.learn_signal_config and edge_asd.machine_state.resolve_gate).
            "quality": {"channel_correlation_p05": correlation_p05, "frame_level_db": frame_level_record(frames)},
            "factory_on_site": {
                "periods_above_threshold": factory_exceedances,
                "n_periods": int(factory_periods.size),
                "mean_period_score": float(factory_periods.mean()) if factory_periods.size else None,
                "threshold": factory_detector.threshold_,
            },
        },
    )
    previous = bundle.enrollment
    if previous is None:
        # A bundle never enrolled (schema 1, or upgraded by calibrate): its values now are the factory ones.
        previous = Enrollment(factory=EnrollmentValues(
            normalization=bundle.normalization, score_scaling=bundle.score_scaling, threshold=bundle.threshold))
    history = previous.history
    if previous.site is not None:
        history += ({"event": "replaced", "created": site.created, "site": previous.site.to_json()},)
    enrollment = Enrollment(factory=previous.factory, active="site", site=site, history=history)
    new = dataclasses.replace(site_bundle, threshold=threshold, enrollment=enrollment)
    if not dry_run:
        write_bundle(new)
    return EnrollmentResult(bundle=new, site=site, calibration=fit, factory_exceedances=factory_exceedances,
                            n_periods=int(periods.size), written=not dry_run)


def rollback_bundle(bundle_path: str | Path) -> Bundle:
    """Restore the factory normalisation, score scaling and threshold exactly as exported; the site
    record (and the threshold it replaces) go to ``enrollment.history``.

    Raises
    ------
    BundleError
        The bundle holds no factory record (a schema 1 bundle never enrolled): nothing to roll back to.
    """
    bundle = read_bundle(bundle_path, verify_files=False)
    e = bundle.enrollment
    if e is None:
        raise BundleError(
            f"{bundle.path / 'bundle.json'}: holds no factory record (never enrolled, schema {bundle.schema_version}); "
            "its values are the ones it was exported with, nothing to roll back"
        )
    from edge_asd.bundle import _utcnow

    event = {"event": "rollback", "created": _utcnow(), "site": None if e.site is None else e.site.to_json(),
             "replaced_threshold": bundle.threshold.to_dict()}
    new = dataclasses.replace(
        bundle,
        normalization=e.factory.normalization,
        score_scaling=e.factory.score_scaling,
        threshold=e.factory.threshold,
        enrollment=dataclasses.replace(e, active="factory", site=None, history=e.history + (event,)),
    )
    write_bundle(new)
    return new


def _summary(values: EnrollmentValues) -> str:
    """One line per value set, for messages and ``edge-asd info``."""
    n = values.normalization
    t = values.threshold
    rate = f", {t.false_alarms_per_day:g}/day at {t.period_s:g} s periods" if t.false_alarms_per_day and t.period_s else ""
    return (f"normalisation mean {np.mean(n.mean):.2f} dB, std {np.mean(n.std):.3g} dB (averages over "
            f"{len(n.mean)} features{', one common std' if n.is_global() else ''}); score scale mean "
            f"{values.score_scaling.mean:.6g}, std {values.score_scaling.std:.6g}; threshold {t.value:.6g} "
            f"({t.method}, {t.source}{rate})")


def describe_enrollment(bundle: Bundle) -> list[str]:
    """Lines for ``edge-asd info``: factory and site values and which are active."""
    e = bundle.enrollment
    if e is None:
        return ["enrollment none (never enrolled; the values above are the ones the bundle was exported with)"]
    lines = [f"enrollment active: {e.active} normalisation and score scaling"
             + ("" if math.isclose(bundle.threshold.value, (e.site.values if e.active == 'site' and e.site else e.factory).threshold.value)
                else "; threshold re-set by calibrate since")]
    lines.append(f"  factory  {_summary(e.factory)}")
    if e.site is not None:
        a = e.site.audio
        lines.append(f"  site     {_summary(e.site.values)}")
        sig = a.get("signal", {})
        lines.append(
            f"           enrolled {e.site.created} on {a.get('seconds', 0):.0f} s from {a.get('input')} ({a.get('periods')} "
            f"periods of {a.get('period_s')} s; RMS {sig.get('rms_dbfs', float('nan')):.1f} dBFS, "
            f"{100 * sig.get('clipped_fraction', 0):.2f} % clipped); factory values alarmed on "
            f"{a.get('factory_on_site', {}).get('periods_above_threshold')} of them"
        )
    else:
        lines.append("  site     none (run 'edge-asd enroll BUNDLE --input ...' on normal audio where the device is mounted)")
    if e.history:
        lines.append(f"  history  {len(e.history)} event(s): " + ", ".join(f"{h.get('event')} {h.get('created')}" for h in e.history))
    return lines
