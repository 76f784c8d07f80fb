"""``edge-asd record``: record normal audio on the device into a training folder.

Registered on the ``edge-asd`` group in :mod:`edge_asd.cli`. Device side: never imports TensorFlow
(nor the runtime); numpy, the audio sources and the recorder are imported when the command runs.
"""

from __future__ import annotations

from pathlib import Path

import click

BYTES_PER_MB = 1_000_000


@click.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Device TOML (firmware_config/*.toml): input channels, sample rate, device id. "
              "Default: built-in defaults (1 channel, 16 kHz).")
@click.option("--input", "input_spec", help="Override the input: mic, mic:N, mic:NAME, a wav file or a folder "
              "(files are re-cut as fast as possible).")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=600.0, show_default=True,
              help="Total audio to record, seconds (whole clips only).")
@click.option("--clip-seconds", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Length of each clip, seconds.")
@click.option("--device-id", help="Clip name prefix (default: the profile's device.id).")
@click.option("--min-free-mb", type=click.FloatRange(min=0), default=50.0, show_default=True,
              help="Disk space to keep free, MB (10^6 bytes): recording stops before the disk gets fuller.")
def record(out_dir, config_path, input_spec, seconds, clip_seconds, device_id, min_free_mb) -> None:
    """Record normal machine sound into OUT_DIR/normal/ as 16-bit wav clips, for training.

    Clips are named <device-id>_<UTC start>_<NNNN>.wav and have the profile's channels and sample
    rate; a session sidecar OUT_DIR/sessions/<session>.json describes each run. Running again adds
    a new session and never overwrites a clip. The trainer reads OUT_DIR with --layout folder.

    Exit code 0 when every clip was written, the input ended, or Ctrl-C / SIGTERM stopped it; 1 when
    the disk filled up first (the finished clips are kept).
    """
    import dataclasses
    import logging
    import sys
    import threading

    from edge_asd.audio.sources import open_source
    from edge_asd.config import Config, load_config, parse_input_spec
    from edge_asd.audio.recorder import (
        STOP_DISK_FULL,
        STOP_INTERRUPTED,
        STOP_SOURCE_ENDED,
        DiskFullError,
        RecordingPlan,
        check_free_space,
        record_clips,
        stop_on_signals,
    )

    # Capture problems (a microphone reconnecting) are logged by the audio modules: show them.
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(config_path) if config_path is not None else Config()
    inp = parse_input_spec(input_spec, config.input) if input_spec else config.input
    # Validated like the profile's own id: it ends up in every file name.
    dev_id = dataclasses.replace(config.device, id=device_id).id if device_id is not None else config.device.id
    plan = RecordingPlan(
        device_id=dev_id,
        seconds=seconds,
        clip_seconds=clip_seconds,
        min_free_bytes=round(min_free_mb * BYTES_PER_MB),
        profile=str(Path(config.source_path).resolve()) if config.source_path is not None else None,
        input_desc="",  # filled in once the source is open (a microphone's index is resolved then)
    )
    source = open_source(inp, realtime=False, loop=False)
    try:
        plan = dataclasses.replace(plan, input_desc=_describe(inp, source))
        sr, n_ch = source.sr, source.n_channels
        n_clips = plan.n_clips(sr)
        check_free_space(out_dir, plan, sr=sr, n_channels=n_ch)  # fail before announcing anything
        click.echo(f"recording {n_clips} clip(s) of {plan.clip_seconds:g} s ({n_ch} ch, {sr} Hz, 16-bit) "
                   f"from {plan.input_desc} into {out_dir / 'normal'}", err=True)
        tail = seconds - n_clips * plan.clip_samples(sr) / sr
        if tail > 1e-9:
            click.echo(f"note: --seconds {seconds:g} is not a whole number of clips; the last {tail:g} s "
                       "will not be recorded", err=True)

        def progress(path: Path, done: int, total: int) -> None:
            click.echo(f"clip {done}/{total}: {path.name}", err=True)

        stop = threading.Event()
        with stop_on_signals(stop, source):
            result = record_clips(source, out_dir, plan, stop=stop, on_clip=progress,
                                  queue_blocks=inp.queue_blocks)
    finally:
        source.close()

    click.echo(f"{len(result.clips)} clip(s), {result.seconds_recorded:g} s of {result.seconds_requested:g} s "
               f"requested, written to {out_dir / 'normal'}; session {result.sidecar}", err=True)
    if result.seconds_discarded > 0:
        click.echo(f"discarded {result.seconds_discarded:g} s of audio that did not make a whole clip", err=True)
    if result.overflows:
        click.echo(f"warning: {result.overflows} audio block(s) were lost while capturing; the clips listed "
                   f"under clips_with_gaps in {result.sidecar} contain a gap", err=True)
    if result.sidecar_error:
        click.echo(f"warning: {result.sidecar_error}", err=True)
    if result.stop_reason == STOP_SOURCE_ENDED:
        click.echo(f"the input ended after {result.seconds_recorded + result.seconds_discarded:g} s", err=True)
    elif result.stop_reason == STOP_INTERRUPTED:
        click.echo("interrupted: the finished clips are kept", err=True)
    elif result.stop_reason == STOP_DISK_FULL:
        raise DiskFullError(
            f"{out_dir}: the disk is full: stopped after {len(result.clips)} of {result.clips_requested} clip(s) "
            f"({result.seconds_recorded:g} of {result.seconds_requested:g} s); "
            f"{result.free_bytes / BYTES_PER_MB:.1f} MB free, {result.needed_bytes / BYTES_PER_MB:.1f} MB needed "
            f"for a clip plus the {plan.min_free_bytes / BYTES_PER_MB:g} MB kept free (--min-free-mb). "
            f"The finished clips are kept; free some space (or record to another disk) and run again to add more"
        )


def _describe(inp, source) -> str:
    """How the sidecar and the messages name the input."""
    if inp.kind == "microphone":
        wanted = "the default microphone" if inp.device is None else f"microphone {inp.device!r}"
        index = getattr(source, "index", None)
        return wanted + (f" (device {index})" if index is not None else "")
    if inp.kind == "folder":
        return f"folder {Path(inp.path).resolve()} ({len(source.files)} wav file(s))"
    return f"wav file {Path(inp.path).resolve()}"
