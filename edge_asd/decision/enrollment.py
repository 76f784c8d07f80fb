"""Enrollment on site: re-fit a bundle's normalisation, score scaling and threshold from normal audio
recorded where the device is mounted, keeping the factory values for an exact rollback.

One story for the three on-site commands:

- ``edge-asd calibrate`` re-sets the threshold only (the previous one goes to its history);
- ``edge-asd enroll`` re-fits the feature normalisation, the score scaling and the threshold;
- ``edge-asd enroll --rollback`` returns to the factory values, exactly as exported.

Enrollment reads the audio once (microphone, wav file or folder, through
:func:`edge_asd.audio.sources.open_source`), checks it (:mod:`edge_asd.decision.signal_quality`: silence,
flat-lined channels, clipping) and keeps its mono downmix in memory (4 bytes per sample at the
bundle's rate: 38 MB for 10 minutes at 16 kHz) so that every later step sees the same samples:

1. normalisation: per-feature mean and std of the site's feature frames (one common std when the
   factory normalisation was "global");
2. score scaling: mean and std of the site's window scores under that normalisation;
3. threshold: the site's period scores, scored as the service scores them
   (:func:`edge_asd.decision.calibration.score_periods`), and a gamma tail fit for the false-alarm rate
   and the sequential evidence rule (:func:`edge_asd.decision.calibration.fit_alarm_rules`), as ``calibrate`` does.

A bundle whose scoring back end has a site slot (:mod:`edge_asd.scoring.backends`: the k-NN site bank,
selective Mahalanobis' target statistics) also gets it filled from the site's windows. A window
is at distance zero from itself in a bank, so the scores the scale and threshold come from are
*cross-fitted*: the audio is cut in two halves at a period boundary, each half is scored with the
site slot fitted on the other half, and the back end written holds the windows of both halves
(a larger bank only brings normal windows closer, so the threshold errs towards fewer alarms).
Its file, ``backend_site_<digest>.npz``, sits beside the factory one, which rollback makes active
again (the site file is then removed).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edge_asd.scoring.backends import Backend, load_backend, save_backend
from edge_asd.scoring.bundle import (
    BackendRef, Bundle, Enrollment, EnrollmentValues, Normalization, ScoreScaling, SiteEnrollment, file_sha256, read_bundle,
    write_bundle,
)
from edge_asd.audio.sources import describe_input
from edge_asd.decision.calibration import DEFAULT_FALSE_ALARMS_PER_DAY, MIN_PERIODS, AlarmRules, CalibrationResult, fit_alarm_rules, score_periods, threshold_record
from edge_asd.errors import AudioFileError, BundleError, ParameterError
from edge_asd.decision.machine_state import frame_level_record
from edge_asd.decision.signal_quality import SignalStats, SignalSummary, channel_correlation, check_enrollment_audio

__all__ = ["EnrollmentResult", "enroll_bundle", "rollback_bundle", "describe_input", "describe_enrollment", "STD_FLOOR_DB"]

STD_FLOOR_DB = 1e-3
"""Floor on per-feature standard deviations, dB (the trainer's ``trainer.train.STD_FLOOR_DB``): a
constant band, e.g. above a low-pass, would otherwise divide by zero."""
REPLAY_BLOCK = 1600
"""Samples per block when the recorded audio is replayed through the service's scorer."""
SITE_BACKEND_PREFIX = "backend_site_"
"""File names of site back ends: ``backend_site_<first 12 hex digits of its SHA-256>.npz``."""


@dataclass(frozen=True, kw_only=True)
class EnrollmentResult:
    """What enrollment fitted and how the factory values did on the same audio."""

    bundle: Bundle
    """The bundle with the site values active (written unless a dry run)."""
    site: SiteEnrollment
    calibration: CalibrationResult
    rules: AlarmRules
    """Both alarm rules fitted on the site's periods (``calibration`` is their threshold part)."""
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
    from edge_asd.frontend.aot import frontend_kernels

    downmix_into = frontend_kernels().downmix_into

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
    false_alarms_per_day: float = DEFAULT_FALSE_ALARMS_PER_DAY,
    model: str = "int8",
    class_label: str | None = None,
    dry_run: bool = False,
    selective: bool = False,
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
        The device's false-alarm target per day, both alarm rules together (:func:`edge_asd.decision.calibration.fit_alarm_rules`).
    model, class_label
        The model the service runs (``int8`` / ``float``) and its machine class (``neg_log_prob``).
    selective
        Keep scoring under the factory values too: each window's score is the lower of its site
        and factory scores, and the threshold is fitted on those (sound like the training data and
        sound like the site both count as normal). Not with a scoring back end.

    Raises
    ------
    AudioFileError, SignalQualityError, ParameterError, BundleError, AudioDeviceError
        Audio that cannot match the bundle (rate below the bundle's, wrong channel count), silent,
        flat-lined or clipped audio, too little audio; every message names the input.
    """
    from edge_asd.audio.sources import open_source
    from edge_asd.scoring.detector import Detector
    from edge_asd.frontend import compute_features

    bundle = read_bundle(bundle_path)
    if bundle.ensemble is not None:
        raise ParameterError(f"{bundle.path}: is an ensemble ({1 + len(bundle.ensemble.members)} models); enroll does "
                             "not refit ensembles yet: enroll each member bundle, then rebuild the ensemble with "
                             "'asd-train ensemble', or use 'edge-asd calibrate' to refit its threshold on site")
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
    source = open_source(inp, sr=sr, realtime=False, loop=False)
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
    factory_ref = bundle.enrollment.factory.backend if bundle.enrollment is not None else bundle.backend
    if selective and factory_ref is not None:
        raise ParameterError(f"{bundle.path}: --selective scores with the model's own score; this bundle scores with "
                             f"a {factory_ref.kind} back end, whose site slot does the same job: enroll without --selective")
    # A bundle never enrolled (schema 1, or upgraded by calibrate): its values now are the factory ones.
    factory_values = bundle.enrollment.factory if bundle.enrollment is not None else EnrollmentValues(
        normalization=bundle.normalization, score_scaling=bundle.score_scaling, threshold=bundle.threshold)
    # enrollment=None: the site values alone (a bundle enrolled --selective before would score selectively).
    base = dataclasses.replace(bundle, normalization=normalization, score_scaling=ScoreScaling(), backend=factory_ref,
                               enrollment=None)
    factory_backend = None if factory_ref is None else load_backend(bundle.path / factory_ref.file, dim=factory_ref.dim)
    site_slot = None
    if hasattr(factory_backend, "with_site"):  # k-NN site bank, selective Mahalanobis' target statistics
        site_slot = _cross_fit(base, factory_backend, mono, period_s=period_s, model=model, log=log)
        raw = site_slot.window_scores
    else:
        raw = Detector(base, model=model, class_label=class_label).score_windows(frames)
    if raw.size < 2 or not float(raw.std()) > 0:
        raise ParameterError(f"{where}: the site audio gives {raw.size} window score(s) without spread; record more audio")
    scaling = ScoreScaling(mean=float(raw.mean()), std=float(raw.std()))

    site_bundle = dataclasses.replace(base, score_scaling=scaling)
    if site_slot is None:
        also = (factory_values.normalization, factory_values.score_scaling) if selective else None
        site_detector = Detector(site_bundle, model=model, class_label=class_label, selective_with=also)
        periods, _ = score_periods(site_detector, _Replay(mono, sr), period_s=period_s)
    else:
        periods = np.concatenate([
            score_periods(Detector(site_bundle, model=model, backend=other), _Replay(half, sr), period_s=period_s)[0]
            for half, other in ((site_slot.halves[0], site_slot.backends[1]), (site_slot.halves[1], site_slot.backends[0]))
        ])
    try:
        rules = fit_alarm_rules(periods, period_s=period_s, false_alarms_per_day=false_alarms_per_day)
    except ParameterError as exc:
        raise ParameterError(f"{where}: {exc}") from exc
    fit = rules.threshold
    calibrated_for = {"period_s": period_s, "model": model, "class_label": class_label, "n_channels": inp.channels}
    threshold = threshold_record(rules, input_desc=where, model=model, source="enrollment", calibrated_for=calibrated_for)
    threshold = bundle.threshold.superseded_by(threshold)

    site_ref, site_file = factory_ref, None
    if site_slot is not None:
        site_ref, site_file = _site_backend_file(bundle.path, factory_ref, site_slot, dry_run=dry_run)
    site = SiteEnrollment(
        values=EnrollmentValues(normalization=normalization, score_scaling=scaling, threshold=threshold, backend=site_ref),
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
            # edge_asd.decision.signal_quality.learn_signal_config and edge_asd.decision.machine_state.resolve_gate).
            "quality": {"channel_correlation_p05": correlation_p05, "frame_level_db": frame_level_record(frames)},
            "factory_on_site": {
                "periods_above_threshold": factory_exceedances,
                "n_periods": int(factory_periods.size),
                "mean_period_score": float(factory_periods.mean()) if factory_periods.size else None,
                "threshold": factory_detector.threshold_,
            },
            **({} if site_slot is None else {"backend": {
                "site_windows": int(sum(len(v) for v in site_slot.vectors)),
                "scores": "cross-fitted: each half of the audio scored with the site slot fitted on the other half",
                "halves_s": [h.size / sr for h in site_slot.halves],
            }}),
        },
    )
    previous = bundle.enrollment if bundle.enrollment is not None else Enrollment(factory=factory_values)
    history = previous.history
    if previous.site is not None:
        history += ({"event": "replaced", "created": site.created, "site": previous.site.to_json()},)
    enrollment = Enrollment(factory=previous.factory, active="site", site=site, history=history, selective=selective)
    new = dataclasses.replace(site_bundle, threshold=threshold, enrollment=enrollment, backend=site_ref)
    if not dry_run:
        write_bundle(new)
        _remove_site_backends(bundle.path, keep=site_file)
    return EnrollmentResult(bundle=new, site=site, calibration=fit, rules=rules, factory_exceedances=factory_exceedances,
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
    if bundle.ensemble is not None:
        raise ParameterError(f"{bundle.path}: is an ensemble; its first model's enrollment record is not the ensemble's "
                             "(the threshold is in other units): roll back the member bundles and rebuild the ensemble")
    e = bundle.enrollment
    if e is None:
        raise BundleError(
            f"{bundle.path / 'bundle.json'}: holds no factory record (never enrolled, schema {bundle.schema_version}); "
            "its values are the ones it was exported with, nothing to roll back"
        )
    from edge_asd.scoring.bundle import _utcnow

    event = {"event": "rollback", "created": _utcnow(), "site": None if e.site is None else e.site.to_json(),
             "replaced_threshold": bundle.threshold.to_dict()}
    new = dataclasses.replace(
        bundle,
        normalization=e.factory.normalization,
        score_scaling=e.factory.score_scaling,
        threshold=e.factory.threshold,
        backend=e.factory.backend,
        enrollment=dataclasses.replace(e, active="factory", site=None, history=e.history + (event,), selective=False),
    )
    write_bundle(new)
    _remove_site_backends(bundle.path, keep=None)
    return new


@dataclass(frozen=True, kw_only=True)
class _SiteSlot:
    """A back end's site slot fitted by halves (see the module docstring)."""

    halves: tuple[np.ndarray, np.ndarray]
    """The mono audio's two halves."""
    vectors: tuple[np.ndarray, np.ndarray]
    """Their windows' representation vectors."""
    backends: tuple[Backend, Backend]
    """The factory back end with the site slot fitted on half 0 and on half 1."""
    window_scores: np.ndarray
    """Raw window scores: half 0 under ``backends[1]``, then half 1 under ``backends[0]``."""


def _cross_fit(base: Bundle, factory_backend: Any, mono: np.ndarray, *, period_s: float, model: str, log) -> _SiteSlot:
    """Fill the site slot of ``factory_backend`` from each half of ``mono`` and score the other half."""
    from edge_asd.scoring.detector import Detector
    from edge_asd.frontend import compute_features

    sr = base.features.sr
    n_periods = int(mono.size // round(period_s * sr))
    cut = (n_periods // 2) * round(period_s * sr)
    halves = (mono[:cut], mono[cut:])
    detector = Detector(base, model=model, backend=None)
    vectors = tuple(detector.window_vectors(compute_features(h, base.features)) for h in halves)
    if min(len(v) for v in vectors) < 2:
        raise ParameterError(f"too little audio to fill the back end's site slot: {[len(v) for v in vectors]} windows per half")
    log(f"back end: site slot from {len(vectors[0])} + {len(vectors[1])} windows (each half scored against the other)")
    backends = (factory_backend.with_site(vectors[0]), factory_backend.with_site(vectors[1]))
    scores = np.concatenate([backends[1].score(vectors[0]), backends[0].score(vectors[1])])
    return _SiteSlot(halves=halves, vectors=vectors, backends=backends, window_scores=scores)


def _site_backend_file(folder: Path, factory_ref: BackendRef, slot: _SiteSlot, *, dry_run: bool) -> tuple[BackendRef, str | None]:
    """The factory back end with the site slot fitted on all site windows, written (unless a dry
    run) as ``backend_site_<digest>.npz``; ``(its reference, its file name or None)``."""
    import tempfile

    backend = load_backend(folder / factory_ref.file, dim=factory_ref.dim).with_site(np.concatenate(slot.vectors))
    fitted_on = {**dict(factory_ref.fitted_on), "site_windows": int(sum(len(v) for v in slot.vectors))}
    with tempfile.TemporaryDirectory(dir=None if dry_run else folder) as tmp:
        path = save_backend(backend, Path(tmp) / "site.npz")
        digest = file_sha256(path)
        name = f"{SITE_BACKEND_PREFIX}{digest[:12]}.npz"
        if not dry_run:
            # A unique name, written before bundle.json refers to it: bundle.json never names a
            # file that is not complete (a crash leaves at most an unused file).
            path.replace(folder / name)
    ref = BackendRef(kind=factory_ref.kind, file=name, sha256=digest, representation=factory_ref.representation,
                     dim=factory_ref.dim, summary=backend.describe(), fitted_on=fitted_on)
    return ref, (None if dry_run else name)


def _remove_site_backends(folder: Path, *, keep: str | None) -> None:
    """Delete site back end files bundle.json no longer names (replaced or rolled back)."""
    for path in Path(folder).glob(f"{SITE_BACKEND_PREFIX}*.npz"):
        if path.name != keep:
            path.unlink(missing_ok=True)


def _summary(values: EnrollmentValues) -> str:
    """One line per value set, for messages and ``edge-asd info``."""
    n = values.normalization
    t = values.threshold
    rate = f", {t.false_alarms_per_day:g}/day at {t.period_s:g} s periods" if t.false_alarms_per_day and t.period_s else ""
    backend = f"; back end {values.backend.summary or values.backend.kind}" if values.backend is not None else ""
    return (f"normalisation mean {np.mean(n.mean):.2f} dB, std {np.mean(n.std):.3g} dB (averages over "
            f"{len(n.mean)} features{', one common std' if n.is_global() else ''}); score scale mean "
            f"{values.score_scaling.mean:.6g}, std {values.score_scaling.std:.6g}; threshold {t.value:.6g} "
            f"({t.method}, {t.source}{rate}){backend}")


def describe_enrollment(bundle: Bundle) -> list[str]:
    """Lines for ``edge-asd info``: factory and site values and which are active."""
    e = bundle.enrollment
    if e is None:
        return ["enrollment none (never enrolled; the values above are the ones the bundle was exported with)"]
    lines = [f"enrollment active: {e.active} normalisation and score scaling"
             + (" (selective: each window scored under site and factory values, the lower counts)" if e.selective else "")
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
