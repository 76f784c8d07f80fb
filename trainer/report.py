"""Evaluation reports: DCASE-compatible score files, a JSON summary, markdown tables and plots.

From a list of scored clips (one or more score columns per clip, e.g. the float model's and the
int8 model's score), :func:`write_report` writes into ``out_dir``::

    summary.json                    every metric below, per score column (machine-readable)
    report.md                       markdown tables per score column
    <column>/[<snr>_dB/]anomaly_score_<machine>_<id>.csv   file,score (no header; DCASE baseline;
                                                           MIMII's repeated names get their folder:
                                                           abnormal/00000000.wav)
    <column>/[<snr>_dB/]result.csv                         AUC and pAUC per ID, average per machine type
    plots/<column>_roc_<machine>[_<snr>_dB].png            ROC curves, one per ID
    plots/<column>_hist_<machine>[_<snr>_dB].png           score histograms normal vs anomalous, per ID

The ``<snr>_dB/`` level appears only when the clips come from several SNRs (MIMII), so that each
folder is exactly what a DCASE evaluator expects. DCASE 2021+ sections are written as
``anomaly_score_<machine>_section_XX_test.csv``, the name the 2021-2024 evaluators look for.

Metrics (see :mod:`trainer.metrics`): AUC and pAUC (DCASE evaluator definition; the raw-area
variant too) per machine type, ID/section and SNR; AUC (source) and AUC (target) with the
evaluator's rule where domains are known, and the DCASE 2023 official score; per machine type and
SNR the mean AUC, mean pAUC and mAUC (worst ID), and accuracy, precision, recall and F1 at each ID's
Youden-J threshold. Unlabelled clips are written to the score files but left out of every metric.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_asd.errors import ParameterError
from trainer import metrics as M
from trainer.datasets import Clip

__all__ = [
    "ColumnSummary",
    "GroupMetrics",
    "MachineMetrics",
    "ReportSummary",
    "ScoredRow",
    "evaluate_rows",
    "selection_markdown",
    "write_report",
]

_COLUMN_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
PAUC_DEFINITION = "dcase: sklearn.metrics.roc_auc_score(max_fpr=0.1), McClish-standardised, as the DCASE evaluators"


@dataclass(frozen=True, kw_only=True)
class ScoredRow:
    """One scored clip: the primary ``score`` and any further score columns in ``extra``."""

    clip: Clip
    score: float
    """The primary anomaly score (column ``"score"``); higher is more anomalous."""
    extra: Mapping[str, float] = field(default_factory=dict)
    """Further score columns by name, e.g. ``{"score_int8": 1.7}``."""

    def value(self, column: str) -> float:
        if column == "score":
            return float(self.score)
        if column not in self.extra:
            raise ParameterError(f"{self.clip.path}: no score column {column!r}; it has {['score', *self.extra]}")
        return float(self.extra[column])


RowLike = ScoredRow | Mapping[str, Any]


def _as_row(row: RowLike) -> ScoredRow:
    if isinstance(row, ScoredRow):
        return row
    if isinstance(row, Mapping) and isinstance(row.get("clip"), Clip):
        extra = {k: float(v) for k, v in row.items() if k not in ("clip", "score")}
        # A mapping without "score" is fine as long as only its named columns are evaluated; the NaN
        # makes evaluating "score" fail with the clip's name.
        return ScoredRow(clip=row["clip"], score=float(row.get("score", math.nan)), extra=extra)
    raise ParameterError(f"a scored row must be a ScoredRow or a mapping with a 'clip' key, got {type(row).__name__}")


# ---------------------------------------------------------------------------------------------
# metrics per group
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class GroupMetrics:
    """Metrics of one machine type, ID (or section) and SNR. ``None`` where a class is missing."""

    machine: str
    id: str
    snr_db: float | None
    n_normal: int
    n_anomaly: int
    n_unknown: int
    auc: float | None
    pauc: float | None
    """DCASE evaluator definition (McClish-standardised, max FPR 0.1)."""
    pauc_raw: float | None
    """Raw partial area / 0.1 (the DCASE papers' formula)."""
    auc_source: float | None = None
    """Source-domain normals against all anomalies (DCASE 2022+ evaluator rule)."""
    auc_target: float | None = None
    youden: M.ThresholdMetrics | None = None
    """Decisions at this group's Youden-J threshold (chosen on these labels: optimistic)."""
    domains: M.DomainMetrics | None = None
    """DCASE 2021-2024 metrics (per-domain AUCs, within-domain AUCs, the section's harmonic mean,
    reasons for what is not measurable); ``None`` when no clip of the group carries a domain."""

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("machine", "id", "snr_db", "n_normal", "n_anomaly", "n_unknown")}
        d.update({k: _num(getattr(self, k)) for k in ("auc", "pauc", "pauc_raw", "auc_source", "auc_target")})
        d["youden"] = self.youden.to_dict() if self.youden else None
        d["domains"] = self.domains.to_dict() if self.domains else None
        return d

    @property
    def name(self) -> str:
        """``machine/id`` (with the SNR when there is one), as reasons and tables name the group."""
        return f"{self.machine}/{self.id or 'all'}" + (f" {_snr_label(self.snr_db)}" if self.snr_db is not None else "")


@dataclass(frozen=True, kw_only=True)
class MachineMetrics:
    """Aggregates over the IDs of one machine type at one SNR."""

    machine: str
    snr_db: float | None
    n_ids: int
    auc: float | None
    """Mean of the per-ID AUCs (DCASE's "Average")."""
    pauc: float | None
    """Mean of the per-ID pAUCs."""
    mauc: float | None
    """Worst per-ID AUC."""
    accuracy: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    """Threshold metrics from the summed confusion matrices at each ID's Youden-J threshold."""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"machine": self.machine, "snr_db": self.snr_db, "n_ids": self.n_ids}
        for k in ("auc", "pauc", "mauc", "accuracy", "precision", "recall", "f1"):
            d[k] = _num(getattr(self, k))
        return d


@dataclass(frozen=True, kw_only=True)
class ColumnSummary:
    """All metrics of one score column."""

    column: str
    groups: tuple[GroupMetrics, ...]
    machines: tuple[MachineMetrics, ...]
    dcase2023_official_score: float | None
    """Harmonic mean over AUC (source), AUC (target) and pAUC of all sections that carry domains;
    ``None`` unless every such section has all three (:attr:`dcase_overall` says why)."""
    dcase_overall: M.SectionAverage | None = None
    """DCASE 2021-2024 figures over every section with domains (``None`` when no clip has a domain)."""
    dcase_by_machine: Mapping[str, M.SectionAverage] = field(default_factory=dict)
    """The same per machine type (the evaluator's per-machine-type means and harmonic mean)."""

    def group(self, machine: str, id: str, snr_db: float | None = None) -> GroupMetrics:
        for g in self.groups:
            if (g.machine, g.id, g.snr_db) == (machine, id, snr_db):
                return g
        raise KeyError((machine, id, snr_db))

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": [g.to_dict() for g in self.groups],
            "machines": [m.to_dict() for m in self.machines],
            "dcase2023_official_score": _num(self.dcase2023_official_score),
            "dcase_overall": self.dcase_overall.to_dict() if self.dcase_overall else None,
            "dcase_by_machine": {k: v.to_dict() for k, v in self.dcase_by_machine.items()},
        }


@dataclass(frozen=True, kw_only=True)
class ReportSummary:
    """What :func:`write_report` measured and wrote."""

    title: str
    out_dir: Path
    n_clips: int
    score_columns: tuple[str, ...]
    columns: Mapping[str, ColumnSummary]
    files: tuple[Path, ...]
    """Every file written, relative paths resolved against ``out_dir``."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "n_clips": self.n_clips,
            "score_columns": list(self.score_columns),
            "pauc_definition": PAUC_DEFINITION,
            "columns": {name: col.to_dict() for name, col in self.columns.items()},
        }


def _num(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _group_key(c: Clip) -> tuple[str, str, float | None]:
    return c.machine, c.id, c.snr_db


def _sort_key(key: tuple[str, str, float | None]) -> tuple[str, bool, float, str]:
    machine, id_, snr = key
    # SNR descending (6, 0, -6) as MIMII tables are read; unknown SNR last
    return machine, snr is None, -(snr or 0.0), id_


def _group_metrics(key: tuple[str, str, float | None], rows: Sequence[ScoredRow], column: str) -> GroupMetrics:
    labelled = [r for r in rows if r.clip.label != "unknown"]
    y = np.array([r.clip.is_anomaly for r in labelled], dtype=bool)
    s = np.array([r.value(column) for r in labelled], dtype=np.float64)
    both = y.any() and (~y).any()
    auc = M.auc(y, s) if both else None
    pauc = M.pauc(y, s) if both else None
    pauc_raw = M.pauc(y, s, definition="raw") if both else None
    # Domain metrics only for DCASE 2021+ groups (any clip with a domain, labelled or not); the
    # metrics module reports what the clips cannot support instead of failing.
    dm = M.domain_metrics(y, s, [r.clip.domain for r in labelled]) if any(r.clip.domain for r in rows) else None
    youden = M.threshold_metrics(y, s, M.youden_threshold(y, s)) if both else None
    return GroupMetrics(
        machine=key[0],
        id=key[1],
        snr_db=key[2],
        n_normal=int((~y).sum()),
        n_anomaly=int(y.sum()),
        n_unknown=len(rows) - len(labelled),
        auc=auc,
        pauc=pauc,
        pauc_raw=pauc_raw,
        auc_source=dm.auc_source if dm else None,
        auc_target=dm.auc_target if dm else None,
        youden=youden,
        domains=dm,
    )


def _machine_metrics(machine: str, snr: float | None, groups: Sequence[GroupMetrics]) -> MachineMetrics:
    aucs = [g.auc for g in groups if g.auc is not None]
    paucs = [g.pauc for g in groups if g.pauc is not None]
    tms = [g.youden for g in groups if g.youden is not None]
    acc = prec = rec = f1 = None
    if tms:
        tn, fp, fn, tp = (sum(getattr(t, k) for t in tms) for k in ("tn", "fp", "fn", "tp"))
        acc = (tp + tn) / (tn + fp + fn + tp)
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return MachineMetrics(
        machine=machine,
        snr_db=snr,
        n_ids=len(groups),
        auc=float(np.mean(aucs)) if aucs else None,
        pauc=float(np.mean(paucs)) if paucs else None,
        mauc=M.mauc(aucs) if aucs else None,
        accuracy=acc,
        precision=prec,
        recall=rec,
        f1=f1,
    )


def _normalise_rows(rows: Iterable[RowLike]) -> list[ScoredRow]:
    out = [_as_row(r) for r in rows]
    if not out:
        raise ParameterError("no scored rows to report on")
    paths = [r.clip.path for r in out]
    if len(set(paths)) != len(paths):
        dup = next(p for p in paths if paths.count(p) > 1)
        raise ParameterError(f"{dup}: scored more than once; each clip must appear in one row")
    return out


def evaluate_rows(rows: Iterable[RowLike], column: str = "score") -> ColumnSummary:
    """All metrics of one score column, without writing anything.

    Parameters
    ----------
    rows
        :class:`ScoredRow` objects, or mappings ``{"clip": Clip, "score": float, "<column>": float}``.
    column
        ``"score"`` or the name of an extra column.
    """
    return _evaluate(_normalise_rows(rows), column)


def _evaluate(rows: Sequence[ScoredRow], column: str) -> ColumnSummary:
    for r in rows:
        if not math.isfinite(r.value(column)):
            raise ParameterError(f"{r.clip.path}: score {column!r} is {r.value(column)}; a clip that cannot be scored is an error")
    by_group: dict[tuple[str, str, float | None], list[ScoredRow]] = defaultdict(list)
    for r in rows:
        by_group[_group_key(r.clip)].append(r)
    groups = tuple(_group_metrics(k, by_group[k], column) for k in sorted(by_group, key=_sort_key))
    by_machine: dict[tuple[str, float | None], list[GroupMetrics]] = defaultdict(list)
    for g in groups:
        by_machine[(g.machine, g.snr_db)].append(g)
    machines = tuple(
        _machine_metrics(m, snr, gs)
        for (m, snr), gs in sorted(by_machine.items(), key=lambda kv: _sort_key((kv[0][0], "", kv[0][1])))
    )
    sections = {g.name: g.domains for g in groups if g.domains is not None}
    overall = M.section_average(sections) if sections else None
    by_machine = {
        m: M.section_average({g.name: g.domains for g in groups if g.machine == m and g.domains is not None})
        for m in dict.fromkeys(g.machine for g in groups if g.domains is not None)
    }
    return ColumnSummary(column=column, groups=groups, machines=machines,
                         dcase2023_official_score=overall.score if overall else None,
                         dcase_overall=overall, dcase_by_machine=by_machine)


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------


def _fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _snr_label(snr: float | None) -> str:
    return "n/a" if snr is None else f"{snr:g} dB"


def _snr_dir(snr: float | None) -> str:
    return "unknown_snr" if snr is None else f"{snr:g}_dB"


def _id_stem(id_: str) -> str:
    """The ID part of a DCASE score-file name."""
    if not id_:
        return "all"
    return f"{id_}_test" if id_.startswith("section_") else id_


def _id_short(id_: str) -> str:
    """``id_00`` -> ``00`` as DCASE result tables print it; sections stay whole."""
    return id_.split("_", 1)[1] if id_.startswith("id_") else (id_ or "all")


def _write_csv(path: Path, rows: Iterable[Sequence[Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)
    return path


def _write_dcase(rows: Sequence[ScoredRow], summary: ColumnSummary, folder: Path, multi_snr: bool) -> list[Path]:
    written: list[Path] = []
    snrs = sorted({r.clip.snr_db for r in rows}, key=lambda s: (s is None, -(s or 0.0)))
    has_domains = summary.dcase_overall is not None
    for snr in snrs:
        where = folder / _snr_dir(snr) if multi_snr else folder
        subset = [r for r in rows if r.clip.snr_db == snr]
        by_group: dict[tuple[str, str], list[ScoredRow]] = defaultdict(list)
        for r in subset:
            by_group[(r.clip.machine, r.clip.id)].append(r)
        for (machine, id_), members in sorted(by_group.items()):
            names = [r.clip.path.name for r in members]
            if len(set(names)) != len(names):  # MIMII: normal/00000000.wav and abnormal/00000000.wav
                names = [f"{r.clip.path.parent.name}/{r.clip.path.name}" for r in members]
            lines = sorted(((n, repr(r.value(summary.column))) for n, r in zip(names, members)))
            written.append(_write_csv(where / f"anomaly_score_{machine}_{_id_stem(id_)}.csv", lines))
        # result.csv: the DCASE 2020 baseline's shape, plus domain AUCs for DCASE 2021+ data
        table: list[list[str]] = []
        for m in [mm for mm in summary.machines if mm.snr_db == snr]:
            ids = [g for g in summary.groups if g.machine == m.machine and g.snr_db == snr]
            first = "section" if any(g.id.startswith("section_") for g in ids) else "id"
            header = [first, "AUC", "pAUC"] + ([M.DOMAIN_METRIC_LABELS[k] for k in _CSV_DOMAIN] if has_domains else [])
            table += [[m.machine], header]
            for g in ids:
                row = [_id_short(g.id), _csv_num(g.auc), _csv_num(g.pauc)]
                table.append(row + ([_csv_num(getattr(g.domains, k) if g.domains else None) for k in _CSV_DOMAIN]
                                    if has_domains else []))
            avg = ["Average", _csv_num(m.auc), _csv_num(m.pauc)]
            if has_domains:
                # The machine type's DCASE figures: means over its sections; "official score" is
                # the harmonic mean over its sections' AUC (source), AUC (target) and pAUC.
                dm = summary.dcase_by_machine.get(m.machine)
                avg += [_csv_num(getattr(dm, k) if dm else None) for k in _CSV_DOMAIN]
            table += [avg, []]
        if has_domains and summary.dcase_overall is not None:
            # An empty cell alone would not say why: the reason goes in the next column.
            why = summary.dcase_overall.not_measurable.get("score")
            table.append(["official score", _csv_num(summary.dcase_overall.score)] + ([f"not measurable: {why}"] if why else []))
        written.append(_write_csv(where / "result.csv", table))
    return written


_CSV_DOMAIN = ("auc_source", "auc_target", "auc_source_within", "auc_target_within", "score")
"""Domain columns of result.csv and the markdown per-section table, after AUC and pAUC (over all clips)."""


def _csv_num(x: float | None) -> str:
    return "" if x is None else repr(float(x))


def _markdown(summary: ReportSummary) -> str:
    out = [f"# {summary.title}", ""]
    out.append(f"{summary.n_clips} clips. pAUC: max FPR 0.1, DCASE evaluator definition (McClish-standardised); "
               "accuracy, precision, recall and F1 at each ID's Youden-J threshold, chosen on the test labels "
               "(an optimistic operating point).")
    out.append("")
    for name, col in summary.columns.items():
        out += [f"## Score column `{name}`", ""]
        out += ["| Machine | SNR | AUC | pAUC | mAUC | Accuracy | Precision | Recall | F1-Score |",
                "|---|---|---|---|---|---|---|---|---|"]
        for m in col.machines:
            out.append(
                f"| {m.machine} | {_snr_label(m.snr_db)} | {_fmt(m.auc, 3)} | {_fmt(m.pauc, 3)} | {_fmt(m.mauc, 3)} | "
                f"{_fmt(m.accuracy)} | {_fmt(m.precision)} | {_fmt(m.recall)} | {_fmt(m.f1)} |"
            )
        out.append("")
        machines = sorted({m.machine for m in col.machines})
        snrs = sorted({m.snr_db for m in col.machines}, key=lambda s: (s is None, -(s or 0.0)))
        lookup = {(m.machine, m.snr_db): m for m in col.machines}
        out += ["AUC by SNR and machine type:", "", "| SNR | " + " | ".join(machines) + " |",
                "|---|" + "---|" * len(machines)]
        for snr in snrs:
            cells = [_fmt(lookup[(m, snr)].auc, 3) if (m, snr) in lookup else "" for m in machines]
            out.append(f"| {_snr_label(snr)} | " + " | ".join(cells) + " |")
        out.append("")
        has_domains = col.dcase_overall is not None
        head = "| Machine | ID | SNR | normal | anomalous | AUC | pAUC |" + (
            "".join(f" {M.DOMAIN_METRIC_LABELS[k]} |" for k in _CSV_DOMAIN) if has_domains else "")
        out += ["Per ID / section:", "", head, "|" + "---|" * (head.count("|") - 1)]
        for g in col.groups:
            line = (f"| {g.machine} | {g.id or 'all'} | {_snr_label(g.snr_db)} | {g.n_normal} | {g.n_anomaly} | "
                    f"{_fmt(g.auc, 3)} | {_fmt(g.pauc, 3)} |")
            if has_domains:
                line += "".join(f" {_fmt(getattr(g.domains, k) if g.domains else None, 3)} |" for k in _CSV_DOMAIN)
            out.append(line)
        if has_domains:
            out += ["", domain_notes(col)]
        out.append("")
    return "\n".join(out)


def domain_notes(col: ColumnSummary) -> str:
    """Markdown lines under the per-section table: the definitions, the official score, and why
    each ``n/a`` domain figure is not measurable."""
    lines = [
        "AUC (source/target): that domain's normal clips against the anomalous clips of both domains (DCASE 2022+); "
        "within: against that domain's anomalies only (DCASE 2021); pAUC over all clips; official score: harmonic "
        "mean of AUC (source), AUC (target) and pAUC (per section; overall, over every section's three values)."
    ]
    overall = col.dcase_overall
    if overall is not None:
        if overall.score is not None:
            lines.append(f"DCASE official score over {overall.n_sections} section(s): {overall.score:.4f}")
        else:
            lines.append(f"DCASE official score: not measurable ({overall.not_measurable['score']}).")
    for g in col.groups:
        if g.domains is not None:
            for k, why in g.domains.not_measurable.items():
                if k != "score":  # the score's reason repeats its parts'
                    lines.append(f"- {g.name}: {M.DOMAIN_METRIC_LABELS[k]} not measurable: {why}")
    return "\n".join(lines)


def _plots(rows: Sequence[ScoredRow], summary: ColumnSummary, folder: Path) -> list[Path]:
    """ROC curves and score histograms, one figure of each per machine type and SNR."""
    # matplotlib is imported here so that reading and scoring never pay for it. The object API
    # (Figure + FigureCanvasAgg) draws off-screen without touching pyplot's global backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_curve

    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    multi_snr = len({r.clip.snr_db for r in rows}) > 1
    by_ms: dict[tuple[str, float | None], dict[str, list[ScoredRow]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.clip.label != "unknown":
            by_ms[(r.clip.machine, r.clip.snr_db)][r.clip.id].append(r)
    for (machine, snr), ids in sorted(by_ms.items(), key=lambda kv: _sort_key((kv[0][0], "", kv[0][1]))):
        stem = f"{summary.column}_{{kind}}_{machine}" + (f"_{_snr_dir(snr)}" if multi_snr else "")
        title = f"{machine}" + (f", {_snr_label(snr)}" if snr is not None else "") + f" ({summary.column})"

        fig = Figure(figsize=(5, 5), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
        ax.axvline(M.MAX_FPR, color="0.85", linewidth=1)
        for id_, members in sorted(ids.items()):
            y = np.array([m.clip.is_anomaly for m in members])
            s = np.array([m.value(summary.column) for m in members])
            if y.any() and (~y).any():
                fpr, tpr, _ = roc_curve(y, s)
                ax.plot(fpr, tpr, linewidth=1.5, label=f"{id_ or 'all'}  AUC {M.auc(y, s):.3f}")
        ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01),
               title=f"ROC, {title}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize=8)
        path = folder / (stem.format(kind="roc") + ".png")
        fig.savefig(path)
        written.append(path)

        fig = Figure(figsize=(4 * len(ids), 3.2), dpi=100)
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, len(ids), squeeze=False)[0]
        for ax, (id_, members) in zip(axes, sorted(ids.items())):
            s = np.array([m.value(summary.column) for m in members])
            y = np.array([m.clip.is_anomaly for m in members])
            bins = np.histogram_bin_edges(s, bins=30)
            ax.hist(s[~y], bins=bins, alpha=0.6, label=f"normal ({int((~y).sum())})", color="tab:blue")
            ax.hist(s[y], bins=bins, alpha=0.6, label=f"anomalous ({int(y.sum())})", color="tab:red")
            ax.set(title=f"{machine} {id_ or ''}".strip(), xlabel=summary.column, ylabel="clips")
            ax.legend(fontsize=8)
        fig.suptitle(f"Scores, {title}", fontsize=10)
        fig.tight_layout()
        path = folder / (stem.format(kind="hist") + ".png")
        fig.savefig(path)
        written.append(path)
    return written


def write_report(
    rows: Iterable[RowLike],
    out_dir: str | Path,
    *,
    title: str,
    score_columns: Sequence[str] = ("score",),
    plots: bool = True,
) -> ReportSummary:
    """Measure and write a full evaluation report (see the module docstring for the files).

    Parameters
    ----------
    rows
        One :class:`ScoredRow` (or mapping ``{"clip": Clip, "score": ..., "<column>": ...}``) per
        clip. Clips labelled ``"unknown"`` are written to the score files only.
    out_dir
        Destination folder (created; files of the same names are overwritten).
    title
        Report title (markdown heading and JSON ``title``): say the protocol and model here.
    score_columns
        Columns to evaluate, each independently: ``"score"`` and/or names in ``ScoredRow.extra``
        (e.g. ``("score", "score_int8")``). Names must be file-name safe.
    plots
        Draw the PNG plots (needs matplotlib).

    Returns
    -------
    ReportSummary
        The metrics per column (``summary.columns["score"].groups`` etc.) and the files written.

    Raises
    ------
    ParameterError
        No rows, a clip twice, a missing or non-finite score, a bad column name.
    """
    columns = tuple(score_columns)
    if not columns or len(set(columns)) != len(columns):
        raise ParameterError(f"score_columns must name at least one column, without repeats, got {score_columns!r}")
    for c in columns:
        if not _COLUMN_NAME.match(c) or c in ("plots",):
            raise ParameterError(f"score column name {c!r} must be file-name safe (letters, digits, _ . -), not 'plots'")
    data = _normalise_rows(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    multi_snr = len({r.clip.snr_db for r in data}) > 1
    summaries = {c: _evaluate(data, c) for c in columns}
    files: list[Path] = []
    for c, col in summaries.items():
        files += _write_dcase(data, col, out / c, multi_snr)
        if plots:
            files += _plots(data, col, out / "plots")
    report = ReportSummary(
        title=title, out_dir=out, n_clips=len(data), score_columns=columns, columns=summaries, files=()
    )
    json_path = out / "summary.json"
    json_path.write_text(json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    md_path = out / "report.md"
    md_path.write_text(_markdown(report), encoding="utf-8")
    return ReportSummary(
        title=title,
        out_dir=out,
        n_clips=len(data),
        score_columns=columns,
        columns=summaries,
        files=tuple([json_path, md_path, *files]),
    )


def selection_markdown(table: Mapping[str, Any]) -> str:
    """The ``--recipe auto`` table: every candidate's pseudo-AUC, per fault family and severity."""
    rows = table["candidates"]
    families = list(rows[0]["per_family"]) if rows else []
    severities = list(rows[0]["per_severity"]) if rows else []
    lines = [
        f"Recipe chosen without anomalies (--recipe auto, seed {table.get('seed', 0)}): **{table['chosen']}**. "
        f"Pseudo-AUC = {table['metric']}.",
        "",
        "| recipe | pseudo-AUC | " + " | ".join(families) + " | " + " | ".join(severities) + " | int8 KB | train s |",
        "|---|---|" + "---|" * (len(families) + len(severities)) + "---|---|",
    ]
    for r in rows:
        mark = " (chosen)" if r["recipe"] == table["chosen"] else ""
        lines.append(
            f"| {r['recipe']}{mark} | {r['pseudo_auc']:.4f} | " + " | ".join(f"{r['per_family'][f]:.3f}" for f in families)
            + " | " + " | ".join(f"{r['per_severity'][s]:.3f}" for s in severities) + f" | {r['int8_kb']:.1f} | {r['train_time_s']:.0f} |"
        )
    lines.append(f"\n{rows[0]['n_normal'] if rows else 0} held-out normal clips, {rows[0]['n_faulted'] if rows else 0} synthetic faults made from them.")
    return "\n".join(lines)
