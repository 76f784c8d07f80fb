"""``asd-train inspect``: what a dataset folder holds, by layout, machine, ID, SNR, domain, split and label."""

from __future__ import annotations

import time

import click

from trainer.datasets import LAYOUTS, Clip, count_clips, scan_dataset


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g} dB"
    return str(value) or "-"


def _group_order(key: tuple[object, ...]) -> tuple[object, ...]:
    machine, id_, snr, domain, split = key
    # SNR descending as MIMII tables read (6, 0, -6), unknown last; None sorts as ""
    return machine, id_, snr is None, -(snr or 0.0), domain or "", split or ""


def format_counts(clips: list[Clip]) -> str:
    """A plain-text table: one line per machine / ID / SNR / domain / split with its label counts."""
    keys = ("machine", "id", "snr_db", "domain", "split")
    counts = count_clips(clips, *keys, "label")
    groups = sorted({k[:-1] for k in counts}, key=_group_order)
    header = ("machine", "id", "snr", "domain", "split", "normal", "anomaly", "unknown", "total")
    rows = [header]
    for g in groups:
        n = [counts.get((*g, label), 0) for label in ("normal", "anomaly", "unknown")]
        rows.append((*(_cell(v) for v in g), *(str(x) for x in n), str(sum(n))))
    totals = [sum(c for k, c in counts.items() if k[-1] == label) for label in ("normal", "anomaly", "unknown")]
    rows.append(("total", "", "", "", "", *(str(x) for x in totals), str(sum(totals))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows)


@click.command("inspect")
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.option("--layout", type=click.Choice(("auto", *LAYOUTS)), default="auto", show_default=True,
              help="Force a layout instead of detecting it.")
def inspect(root: str, layout: str) -> None:
    """List the clips of the dataset in ROOT without decoding audio.

    Prints the detected layout and the number of normal, anomalous and unlabelled clips per machine
    type, machine ID or section, SNR, domain and split.
    """
    started = time.monotonic()
    layout, clips = scan_dataset(root, layout=layout)
    click.echo(f"{root}: layout '{layout}', {len(clips)} clips (listed in {time.monotonic() - started:.2f} s)")
    click.echo(format_counts(clips))
