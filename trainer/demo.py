"""``asd-train demo``: the end-to-end run on built-in synthetic data.

Generates a small MIMII-like data set (one fan, 6 dB, 60 normal + 20 abnormal clips of 10 s,
mono), trains the default recipe (``short-conv-ae``: conv-ae on 8 ms log-Mel frames) with the ``mimii`` protocol, exports float and int8
models into a bundle, scores the test clips with both through the device runtime, prints the AUC
table with the int8 − float difference, calibrates the bundle's alarm rules on site (``edge-asd
calibrate`` on six minutes of new normal clips: the threshold and the evidence rule, for one false
alarm a week), and finally streams new clips of the same machine, normal → a fault that grows →
normal, through the real device service (``edge-asd run``, a process that never imports
TensorFlow) and prints the events it raised. A few minutes on 2 cores (``--quick``: about one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from trainer import quiet_tensorflow_logs

__all__ = ["run_demo", "stream_demo", "demo"]

REPO = Path(__file__).resolve().parents[1]
DEMO_PROFILE = REPO / "firmware_config" / "default.toml"


def run_demo(
    out_dir: str | os.PathLike,
    *,
    quick: bool = False,
    seed: int = 0,
    machine: str = "fan",
    duration_s: float = 10.0,
    log=click.echo,
) -> dict[str, Any]:
    """Run the demo into ``out_dir``.

    Returns
    -------
    dict with ``bundle`` (Path of the bundle directory), ``data_root``, ``test_clips`` (list of
    Paths), ``test_labels`` (``"normal"``/``"anomaly"``), ``evaluation`` (the JSON summary) and
    ``elapsed_s``. The device side can stream ``test_clips`` through ``bundle`` next.
    """
    quiet_tensorflow_logs()
    from trainer.fit_cli import fit_bundle
    from trainer.recipes import DEFAULT_RECIPE
    from trainer.synth import generate_dataset

    start = time.perf_counter()
    out = Path(out_dir)
    data = out / "data"
    n_normal, n_abnormal = (30, 10) if quick else (60, 20)
    log(f"generating {n_normal} normal + {n_abnormal} abnormal synthetic {machine} clips ({duration_s:g} s, 6 dB) in {data}")
    generate_dataset(
        data, machines=[machine], ids=["00"], snrs_db=[6.0], n_normal=n_normal, n_abnormal=n_abnormal,
        channels=1, duration_s=duration_s, seed=seed,
    )
    res = fit_bundle(
        data,
        out / "bundle",
        layout="mimii",
        recipe=DEFAULT_RECIPE,
        protocol="mimii",
        epochs=5 if quick else 15,
        seed=seed,
        cache_dir=out / "cache",
        log=log,
    )
    ev = res["evaluation"]
    return {
        "bundle": res["bundle"],
        "data_root": data,
        "test_clips": [c.path for c in res["test_clips"]],
        "test_labels": [c.label for c in res["test_clips"]],
        "evaluation": ev,
        "elapsed_s": time.perf_counter() - start,
    }


DEVELOPING_FAULT = {"fan": "contamination", "pump": "contamination", "slider": "no_grease", "valve": "contamination"}
"""The fault that develops in the stream, per machine type: dirt building up (a slider drying out)."""
DEVELOPING_FAULT_SEVERITIES = (0.6, 0.8, 1.0, 1.2, 1.4, 1.5, 1.5, 1.5)
"""Severities (the generator's scale, (0, 1.5]) of the fault clips streamed one after another: a
fault that grows, as a failing bearing does, rather than the test set's mix of subtle and severe."""
STREAM_NORMAL_CLIPS = 4
STREAM_REPAIRED_CLIPS = 36
"""Normal clips after the fault (the machine repaired): back to normal needs the evidence drained,
about twice the evidence rule's alarm level in periods (k = 0.5 a normal period)."""
SITE_CLIPS = 120
"""Normal clips the demo calibrates on (20 min at 10 s): the evidence rule needs at least 30 periods, and
its alarm level falls as the recording grows (its reference is less uncertain)."""
SITE_INDEX = 20_000
STREAM_INDEX = 10_000
"""Clip numbers of the streamed clips: far above the data set's, so none of them was trained or tested on."""


def write_stream(
    out_dir: Path, *, machine: str = "fan", seed: int = 0, duration_s: float = 10.0, snr_db: float = 6.0,
    severities: tuple[float, ...] = DEVELOPING_FAULT_SEVERITIES, n_normal: int = STREAM_NORMAL_CLIPS,
    n_repaired: int = STREAM_REPAIRED_CLIPS,
) -> list[tuple[str, Path]]:
    """Write the stream the device hears: ``n_normal`` normal clips, the machine's
    :data:`DEVELOPING_FAULT` growing through ``severities``, then ``n_repaired`` normal clips, as
    ``out_dir/NNN_<label>.wav`` (the folder source plays them in name order). New clips of the same
    synthetic machine (same seed, ID and SNR as the training data), never seen in training."""
    from edge_asd.audio import write_wav
    from trainer.synth import synth_clip

    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.wav"):
        old.unlink()
    plan = [("normal", None)] * n_normal + [("anomaly", s) for s in severities] + [("normal", None)] * n_repaired
    written = []
    for i, (label, severity) in enumerate(plan):
        clip = synth_clip(machine, "00", label=label, index=STREAM_INDEX + i, snr_db=snr_db, channels=1,
                          duration_s=duration_s, seed=seed, fault=DEVELOPING_FAULT[machine] if severity else None, severity=severity)
        path = out_dir / f"{i:03d}_{label}.wav"
        write_wav(path, clip.samples, clip.sr)
        written.append((label, path))
    return written


def write_site_clips(out_dir: Path, *, machine: str = "fan", seed: int = 0, duration_s: float = 10.0,
                     n_clips: int = SITE_CLIPS) -> Path:
    """New normal clips of the machine (never trained or tested on) for the on-site calibration."""
    from edge_asd.audio import write_wav
    from trainer.synth import synth_clip

    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.wav"):
        old.unlink()
    for i in range(n_clips):
        clip = synth_clip(machine, "00", label="normal", index=SITE_INDEX + i, snr_db=6.0, channels=1,
                          duration_s=duration_s, seed=seed)
        write_wav(out_dir / f"{i:03d}_normal.wav", clip.samples, clip.sr)
    return out_dir


def calibrate_on_site(bundle: Path, out_dir: Path, *, machine: str = "fan", seed: int = 0, duration_s: float = 10.0) -> dict[str, Any]:
    """``edge-asd calibrate`` the bundle on :data:`SITE_CLIPS` new normal clips, as a user does after
    copying a bundle to the device; returns ``returncode``, ``stdout`` and ``stderr``."""
    site = write_site_clips(out_dir / "site", machine=machine, seed=seed, duration_s=duration_s)
    cmd = [sys.executable, "-m", "edge_asd", "calibrate", str(bundle), "--config", str(DEMO_PROFILE), "--input", str(site),
           "--seconds", str(SITE_CLIPS * duration_s)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return {"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}


def stream_demo(bundle: Path, out_dir: Path, *, machine: str = "fan", seed: int = 0, duration_s: float = 10.0) -> dict[str, Any]:
    """Stream normal clips, a developing fault, and normal clips again (:func:`write_stream`) through
    ``edge-asd run`` (the alarm needs k anomalous periods out of n, so a fault has to last).

    The service runs as its own process with the demo device profile (``firmware_config/
    default.toml``), as fast as possible, storing events in ``out_dir/events.sqlite``.

    Returns
    -------
    dict with ``events`` (the JSON events it printed), ``order`` (the labels streamed, in order),
    ``returncode`` and ``stderr``.
    """
    order = write_stream(out_dir / "stream", machine=machine, seed=seed, duration_s=duration_s)
    stream = out_dir / "stream"
    db = out_dir / "events.sqlite"
    db.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "edge_asd", "run", "--config", str(DEMO_PROFILE), "--bundle", str(bundle),
           "--input", str(stream), "--db", str(db), "--fast", "--device-id", "demo"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {"events": [e for e in events if e.get("type") == "event"], "order": [lab for lab, _ in order],
            "returncode": proc.returncode, "stderr": proc.stderr, "db": db}


@click.command("demo")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("asd-demo"), show_default=True)
@click.option("--quick", is_flag=True, help="Fewer clips and epochs (about a minute).")
@click.option("--seed", type=int, default=0, show_default=True)
def demo(out: Path, quick: bool, seed: int) -> None:
    """Synthetic data → conv-ae → float + int8 bundle → AUC table with int8 − float."""
    from trainer.evaluate import markdown_summary

    started = time.perf_counter()

    res = run_demo(out, quick=quick, seed=seed)
    click.echo("")
    click.echo(markdown_summary(res["evaluation"]))
    click.echo(f"bundle: {res['bundle']}")
    click.echo("")
    site = calibrate_on_site(Path(res["bundle"]), out, seed=seed)
    if site["returncode"] != 0:
        raise click.ClickException(f"edge-asd calibrate failed:\n{site['stderr'][-2000:]}")
    click.echo(f"calibrated on site ({SITE_CLIPS} new normal clips, edge-asd calibrate):")
    for line in site["stdout"].splitlines():
        click.echo(f"  {line}")
    click.echo("")
    streamed = stream_demo(Path(res["bundle"]), out, seed=seed)
    click.echo(f"streaming {len(streamed['order'])} new clips, normal / a growing fault / normal, through the device "
               "service (edge-asd run, int8): " + " ".join("N" if lab == "normal" else "A" for lab in streamed["order"]))
    if streamed["returncode"] != 0:
        raise click.ClickException(f"the device service failed:\n{streamed['stderr'][-2000:]}")
    fault_s = STREAM_NORMAL_CLIPS * 10.0
    for e in streamed["events"]:
        rules = e.get("details", {}).get("rules")
        click.echo(f"  event {e['kind']:<15} at {e['stream_time_s']:6.1f} s  score {e['score']:.3f}  (threshold {e['threshold']:.3f})"
                   + (f"  rule: {' + '.join(rules)}" if rules else "")
                   + (f", {e['stream_time_s'] - fault_s:.0f} s after the fault began at {fault_s:.0f} s" if e["kind"] == "onset" else ""))
    if not streamed["events"]:
        click.echo("  no events: the alarm never fired (see the AUC above)")
    click.echo(f"events stored in {streamed['db']}")
    click.echo(f"done in {time.perf_counter() - started:.0f} s")
