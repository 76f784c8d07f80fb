"""Evaluation: score test clips with a bundle's int8 and float TFLite models and compare them.

Clip score = mean of the window scores, computed by :class:`edge_asd.scoring.detector.Detector` (the
device's runtime and scoring code, LiteRT first), so a clip scores the same here and on the
device. Features are computed once per clip with the device front end (cached) and fed to both
models. The Keras model can be scored too, as a reference for the conversion.

Float-vs-int8 parity = AUC and pAUC of both models on the same clips, and their differences.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import click
import numpy as np

from edge_asd.scoring.bundle import Bundle, read_bundle
from edge_asd.scoring.detector import Detector, window_view
from edge_asd.errors import ParameterError
from trainer.datasets import Clip, attribute_group
from trainer.features_cache import clip_features, default_cache_dir
from trainer.metrics import DOMAIN_METRIC_LABELS, DOMAIN_METRICS, auc, domain_metrics, pauc, section_average

__all__ = ["MODELS", "class_label_for", "score_clips", "keras_window_scores", "parity", "domain_summary", "evaluate_clips",
           "markdown_summary"]

MODELS = ("int8", "float")


def class_label_for(bundle: Bundle, clip: Clip, class_label: Callable[[Clip], str] = attribute_group) -> str | None:
    """The class a clip is scored against: ``class_label(clip)`` (by default its attribute group /
    machine ID, the same function training used) for ``neg_log_prob`` bundles, ``None`` otherwise.

    Raises
    ------
    ParameterError
        The clip's group was never seen in training (no class to score against).
    """
    if bundle.model.score != "neg_log_prob":
        return None
    group = class_label(clip)
    if group not in bundle.model.classes:
        raise ParameterError(
            f"{clip.path}: its class {group!r} is not one of the bundle's {len(bundle.model.classes)} "
            "training classes; evaluate with clips of machines/sections the model was trained on"
        )
    return group


def keras_window_scores(model: Any, windows: np.ndarray, bundle: Bundle, class_index: int | None, *, backend: Any = "bundle") -> np.ndarray:
    """Window scores of the Keras model on normalised windows (same definitions as the detector,
    including the bundle's scoring back end and score scaling, so Keras, float and int8 scores
    compare directly). ``backend``: the bundle's back end already loaded (default: loaded here)."""
    from edge_asd.scoring.backends import represent

    y = np.asarray(model.predict(windows, batch_size=256, verbose=0), dtype=np.float64)
    if isinstance(backend, str):
        backend = bundle.load_backend()
    if bundle.model.score == "embedding":
        if backend is None:
            raise ParameterError("an embedding model scores through a back end, and this bundle has none")
        raw = backend.score(represent(y, "embedding"))
    elif backend is not None:
        d = y.reshape(windows.shape) - windows
        raw = backend.score(represent((d * d).mean(axis=1), bundle.backend.representation))
    elif bundle.model.score == "reconstruction_mse":
        raw = ((y.reshape(len(y), -1) - windows.reshape(len(windows), -1)) ** 2).mean(axis=1)
    else:
        z = y - y.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        if bundle.model.score == "neg_log_prob":
            raw = -log_p[:, class_index]
        else:
            raw = np.exp(log_p[:, bundle.model.classes.index("anomaly")])
    return bundle.score_scaling.apply(raw)


def score_clips(
    bundle: Bundle,
    paths: Sequence[Path],
    *,
    class_labels: Sequence[str | None] | None = None,
    models: Sequence[str] = MODELS,
    keras_model: Any | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Clip scores of wav files, one array per model (``"int8"``, ``"float"``, ``"keras"``).

    Returns
    -------
    dict mapping model name to float64 ``(n_clips,)`` clip scores (higher = more anomalous).
    """
    detectors = {m: Detector(bundle, model=m) for m in models}  # type: ignore[arg-type]
    backend = next(iter(detectors.values())).backend if detectors else bundle.load_backend()
    labels = list(class_labels) if class_labels is not None else [None] * len(paths)
    out = {m: np.empty(len(paths)) for m in detectors}
    if keras_model is not None:
        out["keras"] = np.empty(len(paths))
    w = bundle.window
    with click.progressbar(
        list(enumerate(paths)), label=f"scoring {len(paths)} clips", file=None if progress else open(os.devnull, "w")
    ) as bar:
        for i, path in bar:
            frames = clip_features(Path(path), bundle.features, cache_dir=cache_dir)
            for m, det in detectors.items():
                s = det.score_windows(frames, class_label=labels[i])
                if s.size == 0:
                    raise ParameterError(f"{path}: too short for one window of {w.n_frames} frames")
                out[m][i] = s.mean()
            if keras_model is not None:
                det = next(iter(detectors.values()))
                win = np.ascontiguousarray(window_view(det.normalize(frames), n_frames=w.n_frames, hop_frames=w.hop_frames))
                idx = bundle.model.classes.index(labels[i]) if labels[i] is not None else None
                out["keras"][i] = keras_window_scores(keras_model, win, bundle, idx, backend=backend).mean()
    return out


def parity(y_true: np.ndarray, scores: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """AUC and pAUC (DCASE definition, FPR ≤ 0.1) per model and the int8 − float differences."""
    res: dict[str, Any] = {}
    for m, s in scores.items():
        res[f"auc_{m}"] = float(auc(y_true, s))
        res[f"pauc_{m}"] = float(pauc(y_true, s))
    if "int8" in scores and "float" in scores:
        res["auc_int8_minus_float"] = res["auc_int8"] - res["auc_float"]
        res["pauc_int8_minus_float"] = res["pauc_int8"] - res["pauc_float"]
        res["score_corr_int8_float"] = float(np.corrcoef(scores["int8"], scores["float"])[0, 1])
    return res


def domain_summary(clips: Sequence[Clip], y: np.ndarray, scores: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """DCASE 2021-2024 domain metrics of every model, per section and over the sections.

    Returns ``{model: {"sections": {"<machine>/<section>": DomainMetrics dict}, "overall":
    SectionAverage dict}}`` (see :func:`trainer.metrics.domain_metrics`): AUC (source), AUC
    (target), pAUC, the official harmonic-mean score, the within-domain AUCs, and for each figure
    the clips cannot support, ``None`` with the reason under ``not_measurable``.
    """
    sections: dict[str, list[int]] = {}
    for i, c in enumerate(clips):
        sections.setdefault(f"{c.machine}/{c.id}" if c.id else c.machine, []).append(i)
    domains = np.array([c.domain for c in clips], dtype=object)
    out: dict[str, Any] = {}
    for m, s in scores.items():
        per = {name: domain_metrics(y[idx], s[idx], domains[idx]) for name, idx in sections.items()}
        out[m] = {"sections": {k: v.to_dict() for k, v in per.items()}, "overall": section_average(per).to_dict()}
    return out


def evaluate_clips(
    bundle_path: str | os.PathLike,
    clips: Sequence[Clip],
    out_dir: str | os.PathLike,
    *,
    title: str = "evaluation",
    protocol: str = "",
    keras_model: Any | None = None,
    cache_dir: Path | None = None,
    store_in_bundle: bool = True,
    progress: bool = True,
    plots: bool = True,
    class_label: Callable[[Clip], str] | None = None,
    recipe_selection: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score labelled test clips with both models, write reports, return the JSON summary.

    Test sets of normal clips only (the ``normal-only`` protocol without an ``abnormal/`` folder)
    get what can be measured without anomalies: the held-out normal score distribution and the
    false alarms to expect at the bundle's threshold (:func:`normal_score_summary`); AUC and pAUC
    are added when anomalous clips exist. ``recipe_selection`` (from ``--recipe auto``) goes into
    the summary and the markdown. Clips with DCASE domains add ``summary["domains"]``
    (:func:`domain_summary`: AUC (source), AUC (target), pAUC, the official score, within-domain
    AUCs, and the reason for each figure the test set cannot give) and its table in the markdown.

    ``class_label`` maps a clip to its class for ``neg_log_prob`` bundles; it must be the function
    the labels were made with at training (default :func:`trainer.datasets.attribute_group`).

    Writes ``out_dir/evaluation.json`` and ``out_dir/evaluation.md`` (parity table) and, through
    :func:`trainer.report.write_report`, the DCASE-style CSVs and plots. With ``store_in_bundle``
    the summary goes into ``bundle.json``'s ``metrics``.
    """
    bundle = read_bundle(bundle_path)
    labelled = [c for c in clips if c.label in ("normal", "anomaly")]
    if not labelled:
        raise ParameterError("no labelled test clips (normal/anomaly) to evaluate")
    y = np.array([c.is_anomaly for c in labelled], dtype=int)
    if y.min() == 1:
        raise ParameterError("the test clips are all anomalous; hold out normal clips too (e.g. --protocol normal-only)")
    class_labels = [class_label_for(bundle, c, class_label or attribute_group) for c in labelled]
    scores = score_clips(
        bundle,
        [c.path for c in labelled],
        class_labels=class_labels,
        keras_model=keras_model,
        cache_dir=cache_dir if cache_dir is not None else default_cache_dir(),
        progress=progress,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "title": title,
        "protocol": protocol,
        "bundle": str(Path(bundle_path)),
        "model": bundle.model.kind,
        "features": bundle.features.kind,
        "n_test": {"normal": int((y == 0).sum()), "anomaly": int((y == 1).sum())},
        **(parity(y, scores) if y.max() == 1 else {"auc_not_measured": "the test set holds no anomalous clips"}),
        "normal_scores": normal_score_summary(
            scores["int8"][y == 0], bundle, clip_s=[_duration_s(c.path) for c, yy in zip(labelled, y) if yy == 0]
        ),
        "int8_size_bytes": bundle.model_path("int8").stat().st_size,
        "threshold": bundle.threshold.value,
        "scoring": "clip score = mean window score via edge_asd.scoring.detector.Detector (TFLite, LiteRT)"
        + (f"; window score = {bundle.backend.kind} back end over {bundle.backend.representation} ({bundle.backend.summary})"
           if bundle.backend is not None else ""),
    }
    if bundle.backend is not None:
        summary["backend"] = {"kind": bundle.backend.kind, "representation": bundle.backend.representation,
                              "summary": bundle.backend.summary}
    if recipe_selection:
        summary["recipe_selection"] = dict(recipe_selection)
    # Per-group AUC (machine ID / section): the DCASE and MIMII tables.
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(labelled):
        groups.setdefault(f"{c.machine}/{c.id}" if c.id else c.machine, []).append(i)
    per_group = {}
    for g, idx in groups.items():
        yy = y[idx]
        if yy.min() != yy.max():
            per_group[g] = {m: float(auc(yy, s[idx])) for m, s in scores.items()}
    summary["per_group_auc"] = per_group
    if any(c.domain for c in labelled):  # DCASE 2021-2024 clips: per-domain AUCs and the official score
        summary["domains"] = domain_summary(labelled, y, scores)
    if y.max() == 0:  # no anomalies: no ROC, no DCASE result table; the scores and the summary are the report
        summary["report"] = _write_normal_scores(labelled, scores, out)
        _finish(summary, out, bundle, store_in_bundle)
        return summary
    rows = [
        {"clip": c, "score": float(scores["int8"][i]), **{f"score_{m}": float(s[i]) for m, s in scores.items()}}
        for i, c in enumerate(labelled)
    ]
    summary["report"] = _write_dcase_report(
        rows, out, title=title, score_columns=tuple(f"score_{m}" for m in scores), plots=plots
    )
    _finish(summary, out, bundle, store_in_bundle)
    return summary


def _finish(summary: dict[str, Any], out: Path, bundle: Bundle, store_in_bundle: bool) -> None:
    (out / "evaluation.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / "evaluation.md").write_text(markdown_summary(summary), encoding="utf-8")
    if store_in_bundle:
        from trainer.export import with_metrics

        with_metrics(bundle, {"evaluation": {k: v for k, v in summary.items() if k != "report"}})


def _duration_s(path: Path) -> float:
    from edge_asd.audio import wav_info

    sr, _, n = wav_info(path)
    return n / sr


def _write_normal_scores(clips: Sequence[Clip], scores: Mapping[str, np.ndarray], out: Path) -> dict[str, str]:
    """``normal_scores.csv``: file and the score of each model, for a test set without anomalies."""
    import csv

    path = out / "normal_scores.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", *(f"score_{m}" for m in scores)])
        for i, c in enumerate(clips):
            writer.writerow([str(c.path), *(repr(float(s[i])) for s in scores.values())])
    return {"normal_scores_csv": str(path)}


NORMAL_SCORE_QUANTILES = (0.5, 0.9, 0.99)
CONFIDENCE = 0.95


def normal_score_summary(scores: np.ndarray, bundle: Bundle, *, clip_s: Sequence[float]) -> dict[str, Any]:
    """What held-out normal clips say without any anomaly: their score distribution and the false
    alarms to expect at the bundle's threshold.

    A clip's score is the mean of its window scores, as a period's is on the device; with clips as
    long as the threshold's period, the share of clips above the threshold estimates the share of
    false-alarm periods. Few clips bound that share only loosely, so the one-sided Clopper-Pearson
    upper bound at :data:`CONFIDENCE` is given beside the estimate (0 of 6 clips is not "no false
    alarms": it is at most 39 % of periods).

    Parameters
    ----------
    scores
        int8 clip scores of the held-out normal clips.
    clip_s
        Their durations, seconds.
    """
    from scipy.stats import beta

    t = bundle.threshold
    n = int(scores.size)
    above = int((scores > t.value).sum())
    upper = float(beta.ppf(CONFIDENCE, above + 1, n - above)) if above < n else 1.0
    period_s = t.period_s or (float(np.mean(clip_s)) if len(clip_s) else None)
    per_day = 86400.0 / period_s if period_s else None
    out: dict[str, Any] = {
        "n_clips": n,
        "clip_s_mean": float(np.mean(clip_s)) if len(clip_s) else None,
        "mean": float(scores.mean()) if n else None,
        "std": float(scores.std()) if n else None,
        "quantiles": {f"{q:g}": float(np.quantile(scores, q)) for q in NORMAL_SCORE_QUANTILES} if n else {},
        "max": float(scores.max()) if n else None,
        "threshold": t.value,
        "threshold_method": t.method,
        "threshold_false_alarms_per_day": t.false_alarms_per_day,
        "threshold_period_s": period_s,
        "clips_above_threshold": above,
        "fraction_above_threshold": above / n if n else None,
        f"fraction_above_threshold_upper_{int(CONFIDENCE * 100)}": upper if n else None,
    }
    if per_day and n:
        out["expected_false_alarms_per_day"] = above / n * per_day
        out[f"expected_false_alarms_per_day_upper_{int(CONFIDENCE * 100)}"] = upper * per_day
    return out


def _write_dcase_report(
    rows: list[dict[str, Any]], out: Path, *, title: str, score_columns: tuple[str, ...], plots: bool = True
) -> Any:
    """The trainer-data issue's reports: DCASE CSVs, result.csv, JSON, markdown, plots."""
    from trainer.report import write_report

    # rows: {"clip": Clip, "score": int8 score, "score_int8": ..., "score_float": ...}
    return write_report(rows, out, title=title, score_columns=score_columns, plots=plots).to_dict()


def _cell(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def domain_markdown(domains: Mapping[str, Any]) -> list[str]:
    """Markdown lines of :func:`domain_summary`'s result: one row per model and section (and over
    the sections when there are several), then why each ``n/a`` is not measurable."""
    lines = ["| model | section | " + " | ".join(DOMAIN_METRIC_LABELS[k] for k in DOMAIN_METRICS) + " |",
             "|---|---|" + "---|" * len(DOMAIN_METRICS)]
    for m in ("float", "int8", "keras"):
        if m not in domains:
            continue
        entries = list(domains[m]["sections"].items())
        if len(entries) > 1:
            entries.append(("all sections", domains[m]["overall"]))
        for name, d in entries:
            lines.append(f"| {m} | {name} | " + " | ".join(_cell(d[k]) for k in DOMAIN_METRICS) + " |")
    lines += ["", "AUC (source/target): that domain's normal clips against the anomalous clips of both domains "
              "(DCASE 2022+); within: against that domain's anomalies only (DCASE 2021); pAUC over all clips of the "
              "section; official score: harmonic mean of AUC (source), AUC (target) and pAUC, over sections the harmonic "
              "mean of every section's three values."]
    # The reasons depend on which clips exist, not on the model: list them once.
    first = next(iter(domains.values()))
    for name, d in first["sections"].items():
        for k, why in d["not_measurable"].items():
            lines.append(f"- {name}: {DOMAIN_METRIC_LABELS[k]} not measurable: {why}")
    lines.append("")
    return lines


def markdown_summary(summary: Mapping[str, Any]) -> str:
    """The parity table in markdown."""
    lines = [
        f"# {summary.get('title', 'evaluation')}",
        "",
        f"{summary.get('model')} on {summary.get('features')} features; protocol {summary.get('protocol') or '-'}; "
        f"test clips: {summary['n_test']['normal']} normal, {summary['n_test']['anomaly']} anomalous. "
        "Clip score = mean window score through the device runtime"
        + (f"; window score = {summary['backend']['kind']} back end over the {summary['backend']['representation']} "
           f"error vector ({summary['backend']['summary']})." if summary.get("backend") else "."),
        "",
        "| model | AUC | pAUC (FPR≤0.1) |",
        "|---|---|---|",
    ]
    if "auc_not_measured" in summary:
        lines[-2:] = [f"AUC / pAUC not measured: {summary['auc_not_measured']}."]
    for m in ("float", "int8", "keras"):
        if f"auc_{m}" in summary:
            lines.append(f"| {m} | {summary[f'auc_{m}']:.4f} | {summary[f'pauc_{m}']:.4f} |")
    if "auc_int8_minus_float" in summary:
        lines.append(
            f"| **int8 − float** | {summary['auc_int8_minus_float']:+.4f} | {summary['pauc_int8_minus_float']:+.4f} |"
        )
    lines += ["", f"int8 model: {summary.get('int8_size_bytes', 0) / 1024:.1f} KB", ""]
    if summary.get("domains"):
        lines += domain_markdown(summary["domains"])
    ns = summary.get("normal_scores")
    if ns and ns.get("n_clips"):
        upper = int(CONFIDENCE * 100)
        q = ns["quantiles"]
        lines += [
            f"Held-out normal clips ({ns['n_clips']}, {ns['clip_s_mean']:.1f} s each), int8 scores: mean {ns['mean']:.4g}, "
            f"median {q['0.5']:.4g}, 90th percentile {q['0.9']:.4g}, max {ns['max']:.4g}.",
            f"At the bundle's threshold {ns['threshold']:.4g} ({ns['threshold_method']}"
            + (f", set for {ns['threshold_false_alarms_per_day']:g} false alarm(s)/day" if ns.get("threshold_false_alarms_per_day") else "")
            + f"): {ns['clips_above_threshold']} of {ns['n_clips']} clips above"
            + (f", i.e. about {ns['expected_false_alarms_per_day']:.3g} false alarms/day at {ns['threshold_period_s']:g} s periods "
               f"(at most {ns[f'expected_false_alarms_per_day_upper_{upper}']:.3g}/day with {upper} % confidence: more held-out "
               "audio narrows this; the device's calibrate/enroll fits the rate on site)" if "expected_false_alarms_per_day" in ns else "")
            + ".",
            "",
        ]
    sel = summary.get("recipe_selection")
    if sel:
        from trainer.report import selection_markdown

        lines += [selection_markdown(sel), ""]
    return "\n".join(lines)
