"""``asd-train demo``: the end-to-end run on built-in synthetic data.

Generates a small MIMII-like data set (one fan, 6 dB, 60 normal + 20 abnormal clips of 10 s,
mono), trains a ``conv-ae`` on log-Mel features with the ``mimii`` protocol, exports float and int8
models into a bundle, scores the test clips with both through the device runtime, prints the AUC
table with the int8 − float difference, and finally streams normal → anomalous → normal test clips
through the real device service (``edge-asd run``, a process that never imports TensorFlow) and
prints the events it raised. A few minutes on 2 cores (``--quick``: about one).
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


def _demo_recipe():
    from trainer.recipes import Recipe

    # The synthetic fan's faults are tonal and broadband, not clicks: DCASE's frames resolve them, and
    # per-band standardisation with the kind's default window trains in a minute on 2 cores.
    return Recipe(
        name="demo", summary="conv-ae on DCASE frames for the synthetic demo fan", measured="the demo's AUC table",
        model="conv-ae", n_mels=64, normalization="per-feature", train_hop_s=None,
    )


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
        recipe=_demo_recipe(),
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


def stream_demo(
    bundle: Path, clips: list[Path], labels: list[str], out_dir: Path, *, n_normal: int = 4, n_anomalous: int = 10
) -> dict[str, Any]:
    """Replay ``n_normal`` normal, ``n_anomalous`` anomalous, then ``n_normal`` normal test clips
    through ``edge-asd run`` (the alarm needs k anomalous periods out of n, so a fault has to last).

    The service runs as its own process with the demo device profile (``firmware_config/
    default.toml``), as fast as possible, storing events in ``out_dir/events.sqlite``.

    Returns
    -------
    dict with ``events`` (the JSON events it printed), ``order`` (the labels streamed, in order),
    ``returncode`` and ``stderr``.
    """
    normal = [c for c, lab in zip(clips, labels) if lab == "normal"]
    anomaly = [c for c, lab in zip(clips, labels) if lab == "anomaly"]
    n = min(n_normal, len(normal) // 2)
    order = [("normal", c) for c in normal[:n]] + [("anomaly", c) for c in anomaly[:n_anomalous]] + [("normal", c) for c in normal[n : 2 * n]]
    stream = out_dir / "stream"
    stream.mkdir(parents=True, exist_ok=True)
    for old in stream.glob("*.wav"):
        old.unlink()
    for i, (label, clip) in enumerate(order):
        # the folder source plays files in name order
        (stream / f"{i:03d}_{label}.wav").write_bytes(Path(clip).read_bytes())
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
    streamed = stream_demo(Path(res["bundle"]), res["test_clips"], res["test_labels"], out)
    click.echo(f"streaming {len(streamed['order'])} test clips through the device service (edge-asd run, int8): " + " ".join("N" if lab == "normal" else "A" for lab in streamed["order"]))
    if streamed["returncode"] != 0:
        raise click.ClickException(f"the device service failed:\n{streamed['stderr'][-2000:]}")
    for e in streamed["events"]:
        click.echo(f"  event {e['kind']:<15} at {e['stream_time_s']:6.1f} s  score {e['score']:.3f}  (threshold {e['threshold']:.3f})")
    if not streamed["events"]:
        click.echo("  no events: the alarm never fired (see the AUC above)")
    click.echo(f"events stored in {streamed['db']}")
    click.echo(f"done in {time.perf_counter() - started:.0f} s")
