"""``asd-train synth``: write a synthetic MIMII-like dataset (see :mod:`trainer.synth`)."""

from __future__ import annotations

import os
import time

import click

from edge_asd.errors import ParameterError
from trainer.synth import MACHINES, generate_dataset


def _csv(value: str, what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ParameterError(f"--{what} needs at least one value, got {value!r}")
    return items


def _floats(value: str, what: str) -> list[float]:
    try:
        return [float(v) for v in _csv(value, what)]
    except ValueError as exc:
        raise ParameterError(f"--{what} must be comma-separated numbers, got {value!r}") from exc


@click.command("synth")
@click.argument("out_dir", type=click.Path(file_okay=False, writable=True))
@click.option("--machines", default=",".join(MACHINES), show_default=True, help="Comma-separated machine types.")
@click.option("--ids", default="00,02", show_default=True, help="Comma-separated machine IDs.")
@click.option("--snr", "snr", default="6,0,-6", show_default=True, help="Comma-separated SNRs in dB.")
@click.option("--normal", "n_normal", type=click.IntRange(min=0), default=100, show_default=True,
              help="Normal clips per machine, ID and SNR.")
@click.option("--abnormal", "n_abnormal", type=click.IntRange(min=0), default=30, show_default=True,
              help="Anomalous clips per machine, ID and SNR.")
@click.option("--channels", type=click.IntRange(1, 16), default=8, show_default=True, help="Microphones.")
@click.option("--duration", "duration_s", type=float, default=10.0, show_default=True, help="Clip length, s.")
@click.option("--sr", type=int, default=16000, show_default=True, help="Sample rate, Hz.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Dataset seed.")
@click.option("--workers", type=click.IntRange(min=1), default=min(4, os.cpu_count() or 1), show_default=True,
              help="Parallel processes (the files are the same for any number).")
@click.option("--quiet", is_flag=True, help="No progress output.")
def synth(
    out_dir: str,
    machines: str,
    ids: str,
    snr: str,
    n_normal: int,
    n_abnormal: int,
    channels: int,
    duration_s: float,
    sr: int,
    seed: int,
    workers: int,
    quiet: bool,
) -> None:
    """Generate a synthetic MIMII-like dataset in OUT_DIR, in the exact MIMII layout.

    Files: OUT_DIR/<snr>_dB_<machine>/<machine>/id_XX/{normal,abnormal}/NNNNNNNN.wav
    (16-bit PCM), plus OUT_DIR/synth_manifest.csv naming each clip's fault and severity.
    The same seed always gives the same files.
    """
    started = time.monotonic()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if not quiet and (now - last[0] > 2.0 or done == total):
            last[0] = now
            click.echo(f"\r{done}/{total} clips", nl=done == total, err=True)

    paths = generate_dataset(
        out_dir,
        machines=_csv(machines, "machines"),
        ids=_csv(ids, "ids"),
        snrs_db=_floats(snr, "snr"),
        n_normal=n_normal,
        n_abnormal=n_abnormal,
        channels=channels,
        duration_s=duration_s,
        sr=sr,
        seed=seed,
        workers=workers,
        progress=progress,
    )
    click.echo(f"wrote {len(paths)} clips to {out_dir} in {time.monotonic() - started:.1f} s")
