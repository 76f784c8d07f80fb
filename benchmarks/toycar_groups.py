"""Where the ToyCar scores go wrong: each attribute group's share of training and test clips, and
where its test clips rank in the scores of a finished ``benchmarks.toycar`` run.

This table splits the test clips by (car, speed) group. In this subset the groups that hold the
normal test clips are not the groups that hold most of the anomalies: cars C1 and D1, and B1 at 31
and 40 V, have anomalous test clips only. Restricted to the groups that hold both kinds, the AUC
shows how well a model detects anomalies within one operating condition, apart from how it ranks the
groups. Half the normal test clips also come from the three groups with only 8 training clips each.
A last table pairs each run with its in-run dense-ae on the same clips (DeLong's test), to tell a
lead from test-set noise, and another pairs each run with the DCASE reference system
(``dense-ae_dcase``) where the run has one.

    python -m benchmarks.toycar_groups [--reports /tmp/edge-asd-toycar/reports] [--runs dense-ae_logmel,conv-ae_logmel]

Reads each run's per-clip int8 scores (``<reports>/<run>/score_int8/anomaly_score_*.csv``) and
writes ``benchmarks/results/toycar_groups.md``. Skips with a message if the data is absent.
"""

from __future__ import annotations

import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import click
from scipy.stats import rankdata

from benchmarks.toycar import DATA, REFERENCE, RESULTS, SETTINGS, labelled_scores, p_text, paired_test, report_int8_scores

if TYPE_CHECKING:
    from trainer.datasets import Clip

SPARSE_GROUP_MAX_CLIPS = 10
"""A group with at most this many training clips counts as sparse (the sparsest groups of the subset have 8)."""


def group_of(clip: Clip) -> str:
    """The clip's (car, speed) group, e.g. ``"B1 34V"``."""
    return f"{clip.attributes.get('car', '?')} {clip.attributes.get('spd', '?')}"


def score_percentiles(scores: dict[str, float]) -> dict[str, float]:
    """Each clip's score as a percentile of the run's scores, 0–100. 100 is the most anomalous."""
    names = list(scores)
    ranks = rankdata([scores[n] for n in names])
    return {n: 100.0 * (r - 1) / max(len(names) - 1, 1) for n, r in zip(names, ranks)}


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _percentile_cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def group_rows(train: Sequence[Clip], test: Sequence[Clip], runs: dict[str, dict[str, float]]) -> list[dict]:
    """One row per (car, speed) group in the test set: training clips, test normal and anomalous clips,
    and per run the mean score percentile of the group's normal and anomalous test clips."""
    n_train = Counter(group_of(c) for c in train)
    percentiles = {run: score_percentiles(scores) for run, scores in runs.items()}
    rows = []
    for group in sorted({group_of(c) for c in test}):
        members = [c for c in test if group_of(c) == group]
        row: dict = {"group": group, "train": n_train.get(group, 0),
                     "normal": sum(c.label == "normal" for c in members),
                     "anomaly": sum(c.label == "anomaly" for c in members)}
        for run, pct in percentiles.items():
            for label in ("normal", "anomaly"):
                row[f"{run}:{label}"] = _mean([pct[c.path.name] for c in members if c.label == label and c.path.name in pct])
        rows.append(row)
    return rows


def sparse_summary(rows: Sequence[dict], runs: Sequence[str]) -> list[str]:
    """Test clips in sparse groups against the rest, and each run's mean normal percentile in both."""
    sparse = [r for r in rows if r["train"] <= SPARSE_GROUP_MAX_CLIPS]
    dense = [r for r in rows if r["train"] > SPARSE_GROUP_MAX_CLIPS]

    def weighted(group: Sequence[dict], key: str, label: str) -> float | None:
        pairs = [(r[key], r[label]) for r in group if r[key] is not None and r[label]]
        total = sum(n for _, n in pairs)
        return sum(v * n for v, n in pairs) / total if total else None

    lines = [
        f"- groups with ≤ {SPARSE_GROUP_MAX_CLIPS} training clips hold {sum(r['normal'] for r in sparse)} of "
        f"{sum(r['normal'] for r in rows)} normal test clips and {sum(r['anomaly'] for r in sparse)} of "
        f"{sum(r['anomaly'] for r in rows)} anomalous ones"
    ]
    for run in runs:
        a, b = weighted(sparse, f"{run}:normal", "normal"), weighted(dense, f"{run}:normal", "normal")
        lines.append(f"- {run}: normal clips' mean score percentile {_percentile_cell(a)} in sparse groups, "
                     f"{_percentile_cell(b)} in the others")
    return lines


def roc(test: Sequence[Clip], scores: dict[str, float]) -> float:
    """AUC over every labelled test clip that has a score."""
    from trainer.metrics import auc

    scored = labelled_scores(test, scores)
    return auc([c["anomaly"] for c in scored], [c["score"] for c in scored])


def _has_normals(test: Sequence[Clip]) -> set[str]:
    return {group_of(c) for c in test if c.label == "normal"}


def mixed_group_auc(test: Sequence[Clip], scores: dict[str, float]) -> float:
    """AUC over the test clips of the groups that hold both normal and anomalous clips: how well a
    model tells them apart within an operating condition, whatever it makes of the other groups."""
    with_normals = _has_normals(test)
    return roc([c for c in test if group_of(c) in with_normals], scores)


def lone_anomalies_above_median(test: Sequence[Clip], scores: dict[str, float]) -> tuple[int, int]:
    """``(above, total)``: anomalous clips of groups without normal test clips, and how many of
    them score above the median of all scores (they lift the whole-set AUC)."""
    with_normals = _has_normals(test)
    lone = [scores[c.path.name] for c in test if group_of(c) not in with_normals and c.path.name in scores]
    median = statistics.median(scores.values())
    return sum(v > median for v in lone), len(lone)


def markdown(rows: Sequence[dict], runs: Sequence[str]) -> str:
    head = "| group (car, speed) | training clips | test normal | test anomaly |" + "".join(f" {r} normal / anomaly |" for r in runs)
    lines = [head, "|---|---|---|---|" + "---|" * len(runs)]
    for row in rows:
        cells = "".join(
            " " + " / ".join(_percentile_cell(row[f"{run}:{lab}"]) for lab in ("normal", "anomaly")) + " |"
            for run in runs
        )
        lines.append(f"| {row['group']} | {row['train']} | {row['normal']} | {row['anomaly']} |{cells}")
    return "\n".join(lines)


def _kind_of(run_name: str) -> str | None:
    """The model kind a run name starts with (``lstm-ae_ims_seed2`` → ``lstm-ae``), or ``None``."""
    return next((k for k in SETTINGS if run_name.startswith(k + "_")), None)


def baseline_run(name: str) -> str | None:
    """The in-run dense-ae run a run is compared with: same features and seed (``lstm-ae_ims_seed2`` →
    ``dense-ae_ims_seed2``); ``None`` for a dense-ae run or a name that starts with no known model."""
    kind = _kind_of(name)
    return None if kind in (None, "dense-ae") else "dense-ae" + name[len(kind):]


def reference_run(name: str) -> str | None:
    """The DCASE reference run of the same seed (``conv-ae_logmel_seed2`` → ``dense-ae_dcase_seed2``);
    ``None`` for the reference itself."""
    kind = _kind_of(name)
    if kind is None:
        return None
    seed = name[name.rfind("_seed"):] if "_seed" in name else ""
    base = f"dense-ae_{REFERENCE}{seed}"
    return None if name == base else base


def paired_rows(test: Sequence[Clip], scores: dict[str, dict[str, float]], baseline: Callable[[str], str | None] = baseline_run) -> list[dict]:
    """Each run against its ``baseline(run)`` on the clips both scored: AUCs, difference, its 95 %
    confidence interval and DeLong's p-value (the test-set sampling part of "does it beat the baseline")."""
    rows = []
    for name, run_scores in scores.items():
        base = baseline(name)
        if base not in scores:
            continue
        r = paired_test(labelled_scores(test, run_scores), labelled_scores(test, scores[base]))
        if r is None:  # neither run scored a clip of this test set
            continue
        rows.append({"run": name, "baseline": base, "clips": len(run_scores.keys() & scores[base].keys()), **r.to_dict()})
    return rows


def paired_markdown(rows: Sequence[dict], baseline_label: str = "in-run dense-ae") -> str:
    lines = [f"| run | AUC | {baseline_label} AUC | difference | 95 % CI | p (DeLong) |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['auc_a']:.4f} | {r['auc_b']:.4f} | {r['difference']:+.4f} | "
              f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] | {p_text(r['p_value'])} |" for r in rows]
    return "\n".join(lines)


def _run_order(name: str) -> tuple[int, str]:
    """Runs in the ToyCar table's model order (``dense-ae_logmel_seed0`` → dense-ae first)."""
    kind = _kind_of(name)
    return (list(SETTINGS).index(kind) if kind else len(SETTINGS)), name


@click.command()
@click.option("--reports", type=click.Path(path_type=Path), default=Path("/tmp/edge-asd-toycar/reports"), show_default=True,
              help="The reports folder of a finished `python -m benchmarks.toycar` run.")
@click.option("--runs", default="", help="Comma-separated run names (folders under --reports); default all.")
def main(reports: Path, runs: str) -> None:
    if not DATA.is_dir():
        click.echo(f"skipped: {DATA} is absent (see ../shared/data/README.md)")
        return
    from trainer.datasets import read_dataset

    names = [r for r in runs.split(",") if r] or sorted((p.name for p in reports.glob("*") if p.is_dir()), key=_run_order)
    scores = {n: report_int8_scores(reports / n) for n in names}
    missing = [n for n, run_scores in scores.items() if not run_scores]
    if not names or missing:
        raise click.UsageError(f"no int8 score files for {missing or 'any run'} under {reports}; "
                               "run `python -m benchmarks.toycar` first or pass --reports")
    clips = read_dataset(DATA, layout="auto", check_headers=False)
    train = [c for c in clips if c.split == "train" and c.domain == "source"]
    test = [c for c in clips if c.split == "test" and c.domain == "source"]
    rows = group_rows(train, test, scores)
    n_mixed = sum(1 for r in rows if r["normal"] and r["anomaly"])
    auc_lines = [f"- {n}: AUC {roc(test, scores[n]):.4f} on all test clips, {mixed_group_auc(test, scores[n]):.4f} on the "
                 f"{n_mixed} groups with both normal and anomalous clips; anomalies of groups without normal clips above "
                 "the median score: {} of {}".format(*lone_anomalies_above_median(test, scores[n])) for n in names]
    text = (
        "# ToyCar attribute groups: training clips and test score percentiles\n\n"
        f"Per-clip int8 scores from `{reports}` (written by `python -m benchmarks.toycar`). A cell is the mean score percentile of the group's "
        "normal / anomalous test clips (100 is the most anomalous score). Training clips are source-domain only.\n\n"
        + markdown(rows, names) + "\n\n" + "\n".join(sparse_summary(rows, names) + auc_lines) + "\n"
    )
    paired = paired_rows(test, scores)
    if paired:
        text += (
            "\n## Against the in-run dense-ae on the same clips\n\n"
            "DeLong's paired test of the int8 AUC difference: the spread that comes from which clips are in the "
            "test set, with both models scoring the same clips. The seed-to-seed spread of training comes on top "
            "(`python -m benchmarks.toycar --seeds`).\n\n" + paired_markdown(paired) + "\n"
        )
    against_reference = paired_rows(test, scores, baseline=reference_run)
    if against_reference:
        text += (
            "\n## Against the DCASE reference system on the same clips\n\n"
            "The reference: dense-ae on log-Mel with DCASE's frames (n_fft 1024, hop 512), trained in the same run. "
            "This is where the short frames' gain shows, for every model.\n\n"
            + paired_markdown(against_reference, "DCASE reference") + "\n"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "toycar_groups.md").write_text(text)
    click.echo(text)


if __name__ == "__main__":
    sys.exit(main())
