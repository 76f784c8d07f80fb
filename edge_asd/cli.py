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
from edge_asd.errors import EdgeASDError


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


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning expected errors into one line and exit code 1."""
    try:
        rv = cli.main(args=argv, prog_name="edge-asd", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except EdgeASDError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
