"""``edge-asd``: the device's command line (also ``python -m edge_asd``).

Expected mistakes (a bad file, a wrong bundle, no microphone) print one clear line and exit
non-zero; only bugs show a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np

from edge_asd import __version__
from edge_asd.cli.options import false_alarm_rate_options, load_config_or_default as _load_config
from edge_asd.errors import EdgeASDError

EXIT_CONFIG = 78
"""``edge-asd run``'s exit code for a configuration or bundle error (sysexits' EX_CONFIG): permanent
until someone fixes it, so the systemd unit does not restart on it. Other errors exit 1."""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge-asd")
def cli() -> None:
    """Detect failing machines by their sound, on the device next to the machine."""


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--kind", type=click.Choice(["logmel", "ims"]), default="logmel", show_default=True)
@click.option("--sr", type=int, default=16000, show_default=True, help="Sample rate, Hz (files are resampled).")
@click.option("--n-fft", type=int, default=1024, show_default=True)
@click.option("--hop-length", type=int, default=512, show_default=True)
@click.option("--n-mels", type=int, default=128, show_default=True)
@click.option("--n-sinc", type=int, default=40, show_default=True, help="Sinc bands (IMS only).")
@click.option("--fmin", type=float, default=0.0, show_default=True, help="Hz.")
@click.option("--fmax", type=float, default=None, help="Hz (default sr/2).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the features of one file to this .npy.")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), help="Write FILE.npy per input into this folder.")
def features(files, kind, sr, n_fft, hop_length, n_mels, n_sinc, fmin, fmax, out, out_dir) -> None:
    """Compute log-Mel or IMS features of wav FILES, print their shapes, optionally save them.

    Features are time-major (n_frames, n_features) float32 in dB, as the models see them.
    """
    from edge_asd.audio import read_wav
    from edge_asd.frontend import FeatureConfig, compute_features

    if out and len(files) != 1:
        raise click.UsageError("--out takes one input file; use --out-dir for several")
    config = FeatureConfig(
        kind=kind, sr=sr, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, n_sinc=n_sinc, fmin=fmin, fmax=fmax
    )
    failed = 0
    for path in files:
        try:
            samples, _ = read_wav(path, sr=config.sr)
        except EdgeASDError as exc:
            click.echo(f"error: {exc}", err=True)
            failed += 1
            continue
        feats = compute_features(samples, config)
        click.echo(f"{path}: {samples.shape[1]} ch, {samples.shape[0] / config.sr:.2f} s -> {kind} {feats.shape}")
        target = out if out else (out_dir / (Path(path).stem + ".npy") if out_dir else None)
        if target is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            np.save(target, feats, allow_pickle=False)
    if failed:
        raise EdgeASDError(f"{failed} of {len(files)} file(s) could not be read (see above)")


# ---------------------------------------------------------------------------------------------------
# Device commands. Heavy modules (the runtime, scipy.stats, paho, pyaudio) are imported inside the
# commands so `--help` is instant and nothing pulls in more than the command needs.

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
BENCH_CLIP_S = 10.0
"""Audio per bench repetition, seconds (one MIMII clip)."""
BENCH_CHANNELS = 8
BENCH_MIN_WINDOWS = 200
"""Window latencies measured at least (short clips are cycled)."""
BENCH_BLOCK_S = 0.1
"""Block size the bench pushes, seconds (the service's default)."""


def _setup_logging(level: str) -> None:
    import logging

    # journald adds its own timestamps; keep ours for plain terminals too (cheap, and greppable).
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level.upper()), format=LOG_FORMAT)


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Device TOML (firmware_config/*.toml). Default: built-in defaults.")
@click.option("--input", "input_spec", help="Override the input: a wav file, a folder, mic, mic:N or mic:NAME.")
@click.option("--bundle", type=click.Path(path_type=Path), help="Override device.bundle.")
@click.option("--device-id", help="Override device.id.")
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), help="Override store.path (SQLite file).")
@click.option("--realtime/--fast", default=None, help="Files: play at real speed or as fast as possible.")
@click.option("--loop/--no-loop", default=None, help="Files: start again at the end.")
@click.option("--mqtt-host", help="Enable MQTT and override mqtt.host.")
@click.option("--mqtt-port", type=int, help="Override mqtt.port.")
@click.option("--log-periods/--no-log-periods", default=None, help="Also print every period score as a JSON line.")
@click.option("--debug", is_flag=True, help="Debug logging.")
def run(config_path, input_spec, bundle, device_id, db, realtime, loop, mqtt_host, mqtt_port, log_periods, debug) -> None:
    """Run the detector service: audio → features → model → alarm → events.

    Events go to stdout as JSON lines, to the SQLite store and (if configured) to MQTT. SIGTERM or
    Ctrl-C finishes the current period, flushes the sinks and exits 0. A configuration or bundle
    error exits 78 (systemd does not restart on it), other errors 1.
    """
    import dataclasses

    from edge_asd.config import parse_input_spec
    from edge_asd.errors import BundleError, ConfigError, ParameterError
    from edge_asd.service import run_service

    try:
        config = _load_config(config_path)
    except (ConfigError, ParameterError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    replace = dataclasses.replace
    inp = parse_input_spec(input_spec, config.input) if input_spec else config.input
    if realtime is not None:
        inp = replace(inp, realtime=realtime)
    if loop is not None:
        inp = replace(inp, loop=loop)
    device = config.device
    if bundle is not None:
        device = replace(device, bundle=bundle)
    if device_id is not None:
        device = replace(device, id=device_id)
    store = replace(config.store, path=db) if db is not None else config.store
    mqtt = config.mqtt
    if mqtt_host is not None:
        mqtt = replace(mqtt, enabled=True, host=mqtt_host)
    if mqtt_port is not None:
        mqtt = replace(mqtt, port=mqtt_port)
    service_cfg = replace(config.service, log_level="debug") if debug else config.service
    if log_periods is not None:
        service_cfg = replace(service_cfg, log_periods=log_periods)
    config = replace(config, input=inp, device=device, store=store, mqtt=mqtt, service=service_cfg)
    _setup_logging(config.service.log_level)
    try:
        code = run_service(config)
    except (BundleError, ConfigError, ParameterError) as exc:
        # A wrong configuration or bundle does not fix itself: a distinct exit code that the unit's
        # RestartPreventExitStatus names, so systemd does not restart into the same error for ever.
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    sys.exit(code)


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Device TOML of the service (its [health] and [store] settings locate the state file). "
                   "Default: built-in defaults (/run/edge-asd/state.json under systemd).")
@click.option("--state-file", type=click.Path(dir_okay=False, path_type=Path), help="Read this state file instead.")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict and every figure as JSON.")
def status(config_path, state_file, as_json) -> None:
    """How the running service is doing: uptime, bundle and threshold, machine / sensor state, last
    period score, periods, losses, queue and store backlog, from the state file it keeps (no network).

    \b
    Exit codes:
      0  running, state fresh
      1  error (bad configuration, unreadable state file)
      3  not running (no state file, or the service stopped)
      4  stale: the service that wrote the state file is gone without a clean stop (killed,
         crashed), or has not updated it for 3 x health.write_interval_s (hung)
    """
    from edge_asd.events.health import format_status, read_status, resolve_state_file

    if state_file is None:
        config = _load_config(config_path)
        state_file = resolve_state_file(config.health, config.store.path)
    result = read_status(state_file)
    click.echo(result.to_json() if as_json else format_status(result))
    sys.exit(result.exit_code)


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--input", "input_spec", help="Normal audio: a wav file, a folder, mic, mic:N or mic:NAME. "
              "Default: the config's input.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Device TOML: input settings and alarm.period_s.")
@click.option("--seconds", type=click.FloatRange(min=1), default=600.0, show_default=True,
              help="Audio to record or read, seconds (files: at most this much).")
@false_alarm_rate_options
@click.option("--period-s", type=click.FloatRange(min=0, min_open=True), help="Scoring period, seconds (default: the config's alarm.period_s).")
@click.option("--tail-fraction", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True,
              help="Fraction of the highest period scores the gamma is fitted to.")
@click.option("--model", type=click.Choice(["int8", "float"]), default="int8", show_default=True)
@click.option("--class-label", help="Machine class (neg_log_prob bundles).")
@click.option("--dry-run", is_flag=True, help="Print the result; do not write the bundle.")
def calibrate(bundle, input_spec, config_path, seconds, false_alarms_per_week, false_alarms_per_day, period_s, tail_fraction, model,
              class_label, dry_run) -> None:
    """Set BUNDLE's threshold and evidence rule from normal audio recorded where the device is mounted.

    The audio is scored as the service scores it. A gamma is fitted to the tail of the period
    scores for the threshold; the evidence rule (a CUSUM that hears small faults that persist) has
    its alarm level simulated on the same periods. Together they are set for the requested false
    alarms per week (default 1; half each). The previous threshold is kept in the bundle's history. calibrate re-sets the threshold; enroll re-fits normalisation +
    score scaling + threshold; 'enroll --rollback' returns to factory.
    """
    from edge_asd.decision.calibration import calibrate_bundle, resolve_rate
    from edge_asd.config import parse_input_spec
    from edge_asd.audio.sources import describe_input

    false_alarms_per_day = resolve_rate(per_day=false_alarms_per_day, per_week=false_alarms_per_week)
    config = _load_config(config_path)
    inp = parse_input_spec(input_spec, config.input) if input_spec else config.input
    click.echo(f"scoring up to {seconds:g} s of normal audio from {describe_input(inp)} ...", err=True)
    done = calibrate_bundle(bundle, inp, seconds=seconds, period_s=period_s or config.alarm.period_s,
                            false_alarms_per_day=false_alarms_per_day, tail_fraction=tail_fraction, model=model,
                            class_label=class_label or config.device.class_label, dry_run=dry_run)
    click.echo(f"{done.audio_s:.1f} s of audio, {done.result.n_periods} periods")
    click.echo(done.rules.statement())
    click.echo(f"previous threshold {done.previous.value:.6g} ({done.previous.method}, {done.previous.source})")
    click.echo("dry run: bundle not changed" if dry_run else f"threshold written to {Path(bundle) / 'bundle.json'}")


def _expand_inputs(inputs: tuple[Path, ...]) -> list[Path]:
    from edge_asd.audio.sources import list_wavs

    files: list[Path] = []
    for item in inputs:
        files.extend(list_wavs(item) if item.is_dir() else [item])
    return files


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write file,score,decision rows here.")
@click.option("--model", type=click.Choice(["int8", "float"]), default="int8", show_default=True)
@click.option("--class-label", help="Machine class (neg_log_prob bundles).")
@click.option("--threshold", type=float, help="Decide with this threshold instead of the bundle's.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Device TOML: its [signal] and [machine] checks (default: built-in, with what enrollment learned).")
def score(bundle, inputs, csv_path, model, class_label, threshold, config_path) -> None:
    """Score wav files (or every wav below folders) with BUNDLE: one row per clip.

    Prints ``file,score,decision,quality`` (decision 1 = anomalous). ``quality`` is ``ok`` or why
    the clip cannot be judged: a sensor problem (silence, clipping, dropout, dc_offset,
    dead_channel, ...) or ``machine_idle``; such a clip is never an anomaly (decision 0), whatever
    its score. An unreadable file is reported and left out, never scored as 0; the exit code is then 1.
    """
    import csv
    import io

    from edge_asd.audio import read_wav
    from edge_asd.audio.resample import resample
    from edge_asd.scoring.detector import Detector
    from edge_asd.frontend import compute_features
    from edge_asd.decision.machine_state import clip_is_idle, resolve_gate
    from edge_asd.decision.signal_quality import assess_clip, learn_signal_config

    config = _load_config(config_path)
    detector = Detector.from_bundle(bundle, model=model, class_label=class_label)
    thr = detector.threshold_ if threshold is None else threshold
    site = detector.bundle.enrollment.site if detector.bundle.enrollment is not None else None
    signal_config, _ = learn_signal_config(config.signal, site.audio if site is not None else None)
    gate = resolve_gate(config.machine, detector.bundle)
    files = _expand_inputs(inputs)
    rows, failed = [], 0
    for path in files:
        try:
            samples, sr = read_wav(path)
            value = detector.score_clip(samples, sr=sr)
            quality = assess_clip(samples, sr, signal_config)[0] if config.signal.enabled else "ok"
            if quality == "ok" and config.machine.enabled:
                # The gate is on the bundle's features, so the clip is heard at the bundle's rate; the
                # front end's mono downmix first (resampling is linear), which keeps memory to one channel.
                mono = samples.mean(axis=1, keepdims=True, dtype=np.float32) if samples.ndim == 2 else samples
                at_rate = mono if sr == detector.config.sr else resample(mono, orig_sr=sr, target_sr=detector.config.sr)
                quality = "machine_idle" if clip_is_idle(compute_features(at_rate, detector.config), config.machine, gate) else "ok"
        except EdgeASDError as exc:
            # Name the file also when the error comes from past the reader (a clip too short for one window).
            message = str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}"
            click.echo(f"error: {message}", err=True)
            failed += 1
            continue
        decision = int(quality == "ok" and value > thr)
        if quality != "ok":
            why = "the machine is off" if quality == "machine_idle" else "a sensor problem, not the machine"
            click.echo(f"{path}: not decided: {quality} ({why}); score {value:.6g} ignored", err=True)
        rows.append((str(path), value, decision, quality))
        click.echo(f"{path},{value:.6g},{decision},{quality}")
    if csv_path is not None:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["file", "score", "decision", "quality"])
        writer.writerows((f, repr(s), d, q) for f, s, d, q in rows)
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        csv_path.write_text(buf.getvalue(), encoding="utf-8")
    if failed:
        raise EdgeASDError(f"{failed} of {len(files)} file(s) could not be scored (see above)")


@cli.command()
def devices() -> None:
    """List audio capture devices (index, channels, default rate), or say that there are none."""
    from edge_asd.audio.microphone import list_input_devices

    found = list_input_devices()
    if not found:
        click.echo("no audio input devices found (no sound card, or this user is not in the 'audio' group)")
        return
    for d in found:
        click.echo(f"{d.index}: {d.name} ({d.max_input_channels} ch, default {d.default_sample_rate_hz:g} Hz)")


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--no-model", is_flag=True, help="Only read bundle.json (do not load the model).")
def info(bundle, no_model) -> None:
    """Describe BUNDLE: model, features, window, threshold and its history, metrics."""
    import json

    from edge_asd.scoring.bundle import MODEL_FILES, read_bundle

    b = read_bundle(bundle)
    f, w, m, t = b.features, b.window, b.model, b.threshold
    click.echo(f"bundle     {b.path} (schema {b.schema_version})")
    click.echo(f"model      {m.kind}, objective {m.objective}, score {m.score}, input {m.input_shape} -> {m.output_shape}")
    if m.classes:
        click.echo(f"classes    {', '.join(m.classes)}")
    for which, name in MODEL_FILES.items():
        size = (b.path / name).stat().st_size
        click.echo(f"file       {name}: {size / 1024:.1f} KiB, sha256 {m.sha256.get(which, '?')[:16]}")
    for name, q in m.quantization.items():
        click.echo(f"quant      {name}: scale {q.scale:.6g}, zero point {q.zero_point}")
    click.echo(f"features   {f.kind}, {f.sr} Hz, n_fft {f.n_fft}, hop {f.hop_length}, {f.n_features} features/frame")
    click.echo(f"window     {w.n_frames} frames, hop {w.hop_frames} ({w.n_frames * f.hop_length / f.sr:.2f} s)")
    click.echo(f"threshold  {t.value:.6g} ({t.method}, from {t.source}, {t.created}"
               + (f", {t.false_alarms_per_day:g}/day at {t.period_s:g} s periods" if t.false_alarms_per_day and t.period_s else "") + ")")
    for line in str(t.details.get("statement", "")).splitlines():
        click.echo(f"           {line}")
    if t.calibrated_for:
        click.echo("           calibrated for " + ", ".join(f"{k} {v}" for k, v in t.calibrated_for.items()))
    if t.evidence is not None:
        e = t.evidence
        delay = e.delay_s(1.0)
        click.echo(f"evidence   CUSUM, alarm level h {e.decision_level:.3g} (k {e.allowance:g}) for {e.false_alarms_per_week:g} "
                   f"false alarm(s)/week at {e.period_s:g} s periods ({e.method})")
        click.echo(f"           period scores standardised with mean {e.reference_mean:.6g}, sd {e.reference_std:.6g}")
        if delay is not None:
            click.echo(f"           expected time to detect a shift of 1 sd: {delay:.0f} s"
                       + "".join(f"; {s} sd: {v:.0f} s" for s, v in dict(e.details.get("delay_s", {})).items() if s != "1" and v))
        bound = e.details.get("rate_bound_per_week")
        if bound is not None:
            click.echo(f"           the rate is the typical site's; nine sites in ten at most {bound:.2g}/week with "
                       f"{e.details.get('audio_s', 0):.0f} s of audio (record longer to narrow it)")
        if e.details.get("extrapolated"):
            click.echo("           the alarm level is extrapolated beyond the simulated rates (rarer than simulated)")
        device_rate = t.details.get("device_false_alarms_per_day")
        if device_rate:
            click.echo(f"           device target {7 * float(device_rate):g} false alarm(s)/week, threshold and evidence rule together")
    else:
        click.echo("evidence   none: " + str(t.details.get("evidence_note") or "this threshold was set before the evidence rule existed")
                   + "; 'edge-asd calibrate' with enough normal audio fits it")
    for old in t.history:
        click.echo(f"  earlier  {old.get('value'):.6g} ({old.get('method')}, from {old.get('source')}, {old.get('created')})")
    click.echo(f"score scale mean {b.score_scaling.mean:.6g}, std {b.score_scaling.std:.6g} (window scores are (raw - mean) / std)")
    if b.backend is not None:
        r = b.backend
        chosen = {k: v for k, v in r.fitted_on.items() if k in ("k", "shrinkage", "n_components", "nu", "gamma", "clips", "site_windows")}
        what = "unit embedding" if r.representation == "embedding" else f"{r.representation} error vector"
        click.echo(f"backend    {r.kind} over the {what} ({r.dim} dims): {r.summary}")
        click.echo(f"           file {r.file}, sha256 {r.sha256[:16]}" + (f"; fitted with {json.dumps(chosen, default=str)}" if chosen else ""))
    else:
        click.echo("backend    none (raw window score = the model's own score)")
    if b.ensemble is not None:
        e = b.ensemble
        click.echo(f"ensemble   {e.combine} of {1 + len(e.members)} models' standardised window scores, then "
                   f"(x - {e.score_scaling.mean:.6g}) / {e.score_scaling.std:.6g}")
        for ref, member in zip(e.members, b.load_members()):
            click.echo(f"  member   {ref.path}: {member.model.kind} ({member.model.objective}), "
                       f"int8 sha256 {member.model.sha256.get('int8', '?')[:16]}")
    from edge_asd.decision.enrollment import describe_enrollment

    for line in describe_enrollment(b):
        click.echo(line)
    if b.metrics:
        click.echo("metrics    " + json.dumps(dict(b.metrics), sort_keys=True, default=str)[:500])
    if b.provenance:
        click.echo("provenance " + json.dumps(dict(b.provenance), sort_keys=True, default=str)[:500])
    if not no_model:
        from edge_asd.scoring.detector import Detector

        d = Detector(b)
        click.echo(f"runtime    {d.model.runtime}: int8 model loads, input {d.model.input_dtype}, output {d.model.output_dtype}")


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--model", type=click.Choice(["int8", "float"]), default="int8", show_default=True)
@click.option("--seconds", type=click.FloatRange(min=1), default=BENCH_CLIP_S, show_default=True, help="Audio per repetition, s.")
@click.option("--channels", type=click.IntRange(min=1), default=BENCH_CHANNELS, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--num-threads", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--class-label", help="Machine class (neg_log_prob bundles).")
def bench(bundle, model, seconds, channels, repeats, num_threads, class_label) -> None:
    """Measure per-window latency and the end-to-end real-time factor on this device.

    Pushes noise in service-sized blocks through the streaming front end, windows and model (the
    service's path); reports the best and median of the repetitions.
    """
    import time

    from edge_asd.scoring.detector import Detector, window_view
    from edge_asd.service import StreamingScorer

    detector = Detector.from_bundle(bundle, model=model, num_threads=num_threads, class_label=class_label)
    sr = detector.config.sr
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal((int(seconds * sr), channels))).astype(np.float32)
    block = max(1, int(BENCH_BLOCK_S * sr))
    scorer = StreamingScorer(detector, n_channels=channels)
    scorer.push(audio[:block])  # warm-up: numba kernels, interpreter allocation
    scorer.reset()
    totals, fronts = [], []
    n_windows = 0
    for _ in range(repeats):
        scorer.reset()
        t0 = time.perf_counter()
        n = 0
        for start in range(0, audio.shape[0], block):
            n += len(scorer.push(audio[start : start + block]))
        n += len(scorer.flush())
        totals.append(time.perf_counter() - t0)
        n_windows = n
        fe = scorer.frontend
        t0 = time.perf_counter()
        for start in range(0, audio.shape[0], block):
            fe.push(audio[start : start + block])
        fe.flush()
        fronts.append(time.perf_counter() - t0)
    w = detector.bundle.window
    from edge_asd.frontend import compute_features

    # Raw windows, normalised in the timed call as the service does: for an ensemble, once per model.
    windows = window_view(compute_features(audio, detector.config), n_frames=w.n_frames, hop_frames=w.hop_frames)
    if len(windows) == 0:
        raise EdgeASDError(f"{seconds:g} s of audio is shorter than one model window; use a longer --seconds")
    lat = []
    for i in range(max(BENCH_MIN_WINDOWS, len(windows))):  # cycle short clips for stable percentiles
        t0 = time.perf_counter()
        detector.score_raw_window(windows[i % len(windows)])
        lat.append(time.perf_counter() - t0)
    lat_ms = np.array(lat) * 1e3
    best, med = min(totals), float(np.median(totals))
    kinds = " + ".join(d.bundle.model.kind for d in (detector, *detector.members))
    click.echo(f"bundle            {detector.bundle.path} ({kinds}, {model}, runtime {detector.model.runtime}, {num_threads} thread(s))")
    click.echo(f"audio             {seconds:g} s x {channels} ch at {sr} Hz, blocks of {block} samples, {n_windows} windows")
    click.echo(f"window latency    median {np.median(lat_ms):.3f} ms, p95 {np.percentile(lat_ms, 95):.3f} ms ({len(lat_ms)} windows)")
    click.echo(f"front end         {min(fronts) * 1e3:.2f} ms per {seconds:g} s (real-time factor {min(fronts) / seconds:.5f}); "
               f"kernels {fe.kernels.source}")
    click.echo(f"end to end        best {best * 1e3:.2f} ms, median {med * 1e3:.2f} ms per {seconds:g} s")
    click.echo(f"real-time factor  {best / seconds:.5f} (best), {med / seconds:.5f} (median)")


from edge_asd.cli.record import record  # noqa: E402
cli.add_command(record)
from edge_asd.cli.enroll import enroll  # noqa: E402
cli.add_command(enroll)
from edge_asd.cli.signing import keygen, sign, sign_bundle_command  # noqa: E402
cli.add_command(keygen)
cli.add_command(sign)
cli.add_command(sign_bundle_command)


def run_cli(group: click.Group, prog_name: str, argv: list[str] | None = None) -> None:
    """Run a click group, turning expected errors (:class:`EdgeASDError`) into one line on stderr
    and exit code 1; shared by ``edge-asd`` and ``asd-train``."""
    try:
        rv = group.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except EdgeASDError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``edge-asd``."""
    run_cli(cli, "edge-asd", argv)


if __name__ == "__main__":
    main()
