"""Scoring back ends over the autoencoder's error vector (issue 18 item 3): device cost and ToyCar quality.

    python -m benchmarks.backends [--seeds 0,1] [--epochs N] [--out /tmp/edge-asd-backends]
    python -m benchmarks.backends --from-json benchmarks/results/backends.json   # rewrite the markdown

**Quality (DCASE 2023 ToyCar, ``../shared/data``; skipped with a message if absent).** For each seed
the default recipe (``short-conv-ae``) is trained once on the 330 *source-domain* training clips (the
factory) and exported (int8 + float). Its per-band error vectors (:func:`edge_asd.scoring.backends.band_errors`,
int8 model) are computed once for the training, validation, target and test clips, and every back end
is fitted on them (scikit-learn, :mod:`trainer.backends`) and scored in numpy
(:mod:`edge_asd.scoring.backends`), clip score = mean window score as on the device:

- factory part: the source training windows (the trainer's split: validation clips held out);
- site part (``knn`` site bank, ``selective-mahalanobis`` target statistics): the 10 target-domain
  training clips (other cars, speeds and microphone), as the DCASE protocol allows: they are
  training data. ``mahalanobis``, ``gmm`` and ``ocsvm`` have no site slot (factory only);
- hyper-parameters and the representation (``band_mse`` or ``log_band_mse``) are chosen per kind on
  *validation data only*: the held-out source normal clips against synthetic faults made from them
  (:mod:`trainer.faults`, 5 families x 3 severities), the pseudo-AUC of ``--recipe auto``
  (:func:`trainer.select.pseudo_auc_table`). Shrinkage (Mahalanobis) and components (GMM) are chosen
  inside the fit by the validation normals' likelihood. The test set is never used for a choice.

Reported per back end, mean ± sd over seeds: on the shared source test (50 + 50 clips) the AUC
(source), pAUC and the int8 − float AUC; the test has no target-domain clips, so AUC (target) and
the official score are not measurable there. A **pseudo-target** figure stands in: each of the 10
target training clips is scored with the site slot fitted on the *other 9* (leave one out; never on
itself) and counted as a target-domain normal clip beside the source test; AUC (target) = those 10
against the 50 (source) test anomalies, pAUC over all 110 clips, official = harmonic mean of the
three (DCASE 2022+ definitions, :func:`trainer.metrics.domain_metrics`). The AE never saw a
target clip.

Each chosen back end is also attached to a copy of the seed's bundle (``trainer.export.add_backend``:
factory score scaling and threshold re-fitted through it) and three test clips are scored through
``edge_asd.scoring.detector.Detector`` (TFLite, the device path) against the numpy figure above.

**Device cost.** On seed 0's bundles: per-window latency (median, one thread) of the AE alone and of
the AE + back end as the detector runs them, and the real-time factor of the streaming path
(``StreamingScorer``: streaming front end, windows, model, back end) over a 12 s ToyCar clip in
100 ms blocks, this process pinned to one core, best of 5. Without ToyCar the cost part runs on a
tiny synthetic-data bundle (smaller banks than ToyCar's) and says so.

Writes ``benchmarks/results/backends.{json,md}``. About 20 min per seed on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._common import machine  # sets one thread per library first

import click  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.toycar import DATA, RESULTS  # noqa: E402

NAME = "backends"
KINDS = ("none", "knn", "mahalanobis", "selective-mahalanobis", "gmm", "ocsvm")
REPRESENTATIONS = ("band_mse", "log_band_mse")
GRIDS: dict[str, list[dict[str, Any]]] = {
    "none": [{}],
    "knn": [{"k": k} for k in (1, 4, 16)],
    "mahalanobis": [{}],
    "selective-mahalanobis": [{}],
    "gmm": [{}],
    "ocsvm": [{"nu": nu, "gamma_factor": g} for nu in (0.01, 0.05, 0.2) for g in (0.3, 1.0, 3.0)],
}
"""Hyper-parameters tried on validation per kind (``gamma_factor`` scales scikit-learn's ``"scale"``
gamma, 1 / (d · var)); Mahalanobis shrinkage and GMM components are chosen inside the fit."""
SELECTION_STRIDE = 4
"""Every 4th window of a validation / synthetic-fault clip in the selection (187 of 748 windows a
clip): a clip mean is well estimated from them and the grid runs 4x faster."""
RTF_GOAL = 0.005
BLOCK_S = 0.1
N_DEVICE_CHECK = 3


def log(message: str) -> None:
    click.echo(message, err=True)


# -- vectors --------------------------------------------------------------------------------------


def band_errors_of(detector: Any, paths: list[Path], *, cache_dir: Path | None) -> list[np.ndarray]:
    """``band_mse`` vectors ``(n_windows, n_features)`` of each clip through ``detector``'s model."""
    from trainer.backends import clip_vectors

    return clip_vectors(detector, paths, representation="band_mse", cache_dir=cache_dir, log=log)


def represent_all(errors: list[np.ndarray], representation: str) -> list[np.ndarray]:
    from edge_asd.scoring.backends import represent

    return [represent(e, representation) for e in errors]


def clip_means(backend: Any, vectors: list[np.ndarray], *, stride: int = 1) -> np.ndarray:
    """Clip scores: mean window score of each clip (``backend`` None: the MSE, the model's own score)."""
    out = []
    for v in vectors:
        v = v[::stride]
        out.append(float(v.mean()) if backend is None else float(backend.score(v).mean()))
    return np.array(out)


def _mse_vectors(errors: list[np.ndarray]) -> list[np.ndarray]:
    """The model's own window score (the band errors' mean), as one-column 'vectors'."""
    return [e.mean(axis=1) for e in errors]


# -- fitting and choosing -------------------------------------------------------------------------


def _fit(kind: str, rep: str, params: dict[str, Any], vec: dict[str, Any], *, seed: int, with_target: bool) -> Any:
    from trainer.backends import fit_backend

    params = dict(params)
    if "gamma_factor" in params:  # scikit-learn's "scale" gamma, scaled
        train = np.concatenate(vec["train"][rep])
        params["gamma"] = params.pop("gamma_factor") / (train.shape[1] * train.var())
    target = np.concatenate(vec["target"][rep]) if with_target else None
    return fit_backend(kind, np.concatenate(vec["train"][rep]), val=np.concatenate(vec["val"][rep]), target=target,
                       seed=seed, params=params)


def select(kind: str, vec: dict[str, Any], specs: list[Any], *, seed: int) -> list[dict[str, Any]]:
    """Every (representation, hyper-parameters) of ``kind`` on validation: pseudo-AUC of the held-out
    normal clips against their synthetic faults. Returns the rows, best first."""
    from trainer.select import pseudo_auc_table

    rows = []
    reps = ("band_mse",) if kind == "none" else REPRESENTATIONS
    for rep in reps:
        for params in GRIDS[kind]:
            t0 = time.perf_counter()
            if kind == "none":
                normal = clip_means(None, _mse_vectors(vec["val"]["band_mse"]), stride=SELECTION_STRIDE)
                faulted = clip_means(None, _mse_vectors(vec["faults"]["band_mse"]), stride=SELECTION_STRIDE)
                chosen_inside: dict[str, Any] = {}
            else:
                fitted = _fit(kind, rep, params, vec, seed=seed, with_target=False)
                normal = clip_means(fitted.backend, vec["val"][rep], stride=SELECTION_STRIDE)
                faulted = clip_means(fitted.backend, vec["faults"][rep], stride=SELECTION_STRIDE)
                chosen_inside = {k: fitted.fitted_on[k] for k in ("shrinkage", "n_components", "gamma") if k in fitted.fitted_on}
            value, per_family, _ = pseudo_auc_table(normal, faulted, specs)
            rows.append({"representation": rep, "params": params, "pseudo_auc": value, "per_family": per_family,
                         "chosen_inside_fit": chosen_inside, "time_s": round(time.perf_counter() - t0, 1)})
            log(f"  {kind} {rep} {params}: pseudo-AUC {value:.4f} {chosen_inside}")
    return sorted(rows, key=lambda r: -r["pseudo_auc"])


def loo_target_scores(kind: str, fitted: Any, target_vectors: list[np.ndarray]) -> np.ndarray:
    """Clip scores of the target training clips, each with the site slot fitted on the other clips
    (kinds without a site slot: the factory back end)."""
    backend = fitted.backend
    if not hasattr(backend, "with_site"):
        return clip_means(backend, target_vectors)
    out = []
    for i, v in enumerate(target_vectors):
        others = np.concatenate([w for j, w in enumerate(target_vectors) if j != i])
        out.append(float(backend.with_site(others).score(v).mean()))
    return np.array(out)


# -- one seed -------------------------------------------------------------------------------------


def run_seed(seed: int, epochs: int | None, out: Path) -> dict[str, Any]:
    from edge_asd.scoring.bundle import read_bundle
    from edge_asd.scoring.detector import Detector
    from trainer.datasets import read_dataset
    from trainer.export import add_backend, export_bundle
    from trainer.faults import write_pseudo_anomalies
    from trainer.metrics import auc, domain_metrics, pauc
    from trainer.protocols import make_splits
    from trainer.recipes import DEFAULT_RECIPE, get_recipe
    from trainer.train import train

    recipe = get_recipe(DEFAULT_RECIPE)
    split = make_splits(read_dataset(DATA, layout="auto"), "dcase", seed=seed)[0]
    source_train = [c.path for c in split.train if c.domain == "source"]
    target = [c.path for c in split.train if c.domain == "target"]
    test = list(split.test)
    y = np.array([c.label == "anomaly" for c in test])
    work = out / f"seed{seed}"
    cache = work / "cache"
    log(f"seed {seed}: training {recipe.name} on {len(source_train)} source clips ({len(target)} target clips for the site slot)")
    t0 = time.perf_counter()
    result = train(source_train, recipe.feature_config(), recipe.train_config(seed=seed, epochs=epochs), cache_dir=cache, log=log)
    base = export_bundle(result, work / "bundles" / "none",
                         provenance={"data_root": str(DATA), "protocol": "dcase, source-domain training only"}).path
    train_s = time.perf_counter() - t0
    int8 = Detector(read_bundle(base), model="int8", backend=None)
    flt = Detector(read_bundle(base), model="float", backend=None)
    log("error vectors: training, validation, target, test (int8 and float), synthetic faults")
    faults = write_pseudo_anomalies(result.val_paths, work / "faults", seed=seed)
    errors = {
        "train": band_errors_of(int8, result.train_paths, cache_dir=cache),
        "val": band_errors_of(int8, result.val_paths, cache_dir=cache),
        "target": band_errors_of(int8, target, cache_dir=cache),
        "test": band_errors_of(int8, [c.path for c in test], cache_dir=cache),
        "faults": band_errors_of(int8, [w for _, _, w in faults], cache_dir=None),
    }
    errors_float = band_errors_of(flt, [c.path for c in test], cache_dir=cache)
    vec = {part: {rep: represent_all(e, rep) for rep in REPRESENTATIONS} for part, e in errors.items()}
    test_float = {rep: represent_all(errors_float, rep) for rep in REPRESENTATIONS}
    specs = [s for _, s, _ in faults]
    rows = []
    for kind in KINDS:
        log(f"seed {seed}: {kind}")
        t1 = time.perf_counter()
        selection = select(kind if kind != "selective-mahalanobis" else "mahalanobis", vec, specs, seed=seed)
        best = selection[0]
        rep = best["representation"]
        if kind == "none":
            fitted, s_int8, s_float = None, clip_means(None, _mse_vectors(errors["test"])), clip_means(None, _mse_vectors(errors_float))
            s_target = clip_means(None, _mse_vectors(errors["target"]))
        else:
            fitted = _fit(kind, rep, best["params"], vec, seed=seed, with_target=True)
            s_int8, s_float = clip_means(fitted.backend, vec["test"][rep]), clip_means(fitted.backend, test_float[rep])
            s_target = loo_target_scores(kind, fitted, vec["target"][rep])
        fit_s = time.perf_counter() - t1
        shared = domain_metrics(y, s_int8, [c.domain for c in test])
        pseudo = domain_metrics(np.r_[y, np.zeros(len(target), bool)], np.r_[s_int8, s_target],
                                [c.domain for c in test] + ["target"] * len(target))
        row = {
            "kind": kind, "seed": seed, "representation": rep if kind != "none" else "mse", "params": best["params"],
            "chosen_inside_fit": best["chosen_inside_fit"], "pseudo_auc_val": best["pseudo_auc"], "selection": selection,
            "auc_source_int8": shared.auc_source, "pauc_int8": pauc(y, s_int8), "auc_float": auc(y, s_float),
            "auc_int8_minus_float": shared.auc_source - auc(y, s_float),
            "shared_not_measurable": dict(shared.not_measurable),
            "pseudo_auc_target": pseudo.auc_target, "pseudo_pauc": pseudo.pauc, "pseudo_official": pseudo.score,
            "summary": fitted.backend.describe() if fitted else "the model's own score (window MSE)",
            "fitted_on": {k: v for k, v in (fitted.fitted_on if fitted else {}).items() if "log_likelihood" not in k},
            "fit_and_score_s": round(fit_s, 1), "train_s": round(train_s, 1),
        }
        if fitted is not None:
            row["device_check"] = device_check(base, work / "bundles" / kind, kind, fitted, rep, result, test, s_int8, add_backend)
        rows.append(row)
        log(json.dumps({k: v for k, v in row.items() if k not in ("selection", "fitted_on")}, default=str))
    return {"seed": seed, "recipe": recipe.name, "n_train": len(result.train_paths), "n_val": len(result.val_paths),
            "n_target": len(target), "n_faults": len(faults), "train_s": round(train_s, 1), "rows": rows,
            "bundles": {r["kind"]: str(work / "bundles" / r["kind"]) for r in rows}}


def device_check(base: Path, dst: Path, kind: str, fitted: Any, rep: str, result: Any, test: list, s_int8: np.ndarray, add_backend) -> dict:
    """Attach the back end to a copy of the bundle and score a few test clips through the device's
    detector: the relative difference to the numpy clip score (scaled by the bundle's score scaling)."""
    from edge_asd.audio import read_wav
    from edge_asd.scoring.detector import Detector

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(base, dst)
    bundle = add_backend(dst, kind, fitted=fitted, representation=rep, train_paths=result.train_paths, val_paths=result.val_paths)
    det = Detector(bundle)
    diffs = []
    for i in range(N_DEVICE_CHECK):
        samples, sr = read_wav(test[i].path)
        expected = bundle.score_scaling.apply(s_int8[i])
        diffs.append(abs(det.score_clip(samples, sr=sr) - expected) / max(abs(expected), 1e-12))
    return {"clips": N_DEVICE_CHECK, "max_relative_difference": float(max(diffs)), "threshold": bundle.threshold.value,
            "threshold_method": bundle.threshold.method}


# -- device cost ----------------------------------------------------------------------------------


def cost(bundles: dict[str, Path], clip: np.ndarray, *, rounds: int = 9, n_windows: int = 400) -> dict[str, Any]:
    """Per-window latency and streaming real-time factor of each bundle, one thread, one core.

    The bundles are measured in turns, ``rounds`` times, and each figure is the best round (the
    median round in ``*_median``): on a shared machine, a burst of load then hits every back end
    alike instead of whichever ran at that moment.
    """
    from edge_asd.scoring.detector import Detector, window_view
    from edge_asd.frontend import compute_features
    from edge_asd.service import StreamingScorer

    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(affinity)})
    load_before = os.getloadavg()
    seen: dict[str, dict[str, list[float]]] = {k: {"ae_ms": [], "window_ms": [], "rtf": []} for k in bundles}
    try:
        dets = {kind: Detector.from_bundle(path, num_threads=1) for kind, path in bundles.items()}
        first = next(iter(dets.values()))
        w, f = first.bundle.window, first.config
        block = int(BLOCK_S * f.sr)
        audio_s = clip.shape[0] / f.sr
        windows = {kind: np.ascontiguousarray(window_view(d.normalize(compute_features(clip, f)), n_frames=w.n_frames,
                                                          hop_frames=w.hop_frames))[:n_windows] for kind, d in dets.items()}
        for _ in range(rounds):
            for kind, det in dets.items():
                wins = windows[kind]
                for fn, key in ((det.model, "ae_ms"), (det.score_window, "window_ms")):
                    fn(wins[0])
                    times = []
                    for win in wins:
                        t0 = time.perf_counter()
                        fn(win)
                        times.append(time.perf_counter() - t0)
                    seen[kind][key].append(1e3 * statistics.median(times))
                scorer = StreamingScorer(det, n_channels=clip.shape[1])
                t0 = time.perf_counter()
                for start in range(0, clip.shape[0], block):
                    scorer.push(clip[start : start + block])
                scorer.flush()
                seen[kind]["rtf"].append((time.perf_counter() - t0) / audio_s)
    finally:
        os.sched_setaffinity(0, affinity)
    out: dict[str, Any] = {}
    for kind, det in dets.items():
        v = seen[kind]
        ae, full = min(v["ae_ms"]), min(v["window_ms"])
        out[kind] = {
            "summary": det.bundle.backend.summary if det.bundle.backend else "the model's own score",
            "ae_ms": ae, "window_ms": full, "backend_ms": full - ae,
            "windows_per_s": f.sr / (f.hop_length * w.hop_frames),
            "rtf_best": min(v["rtf"]), "rtf_median": statistics.median(v["rtf"]), "audio_s": audio_s, "rounds": rounds,
            "load_average_before": load_before[0], "load_average_after": os.getloadavg()[0],
        }
        log(f"cost {kind}: {json.dumps(out[kind])}")
    return out


def synthetic_cost_bundles(work: Path) -> dict[str, Path]:
    """Without ToyCar: a short-conv-ae-shaped bundle trained briefly on synthetic clips, with each back end."""
    from tests.bundle_factory import make_wavs
    from trainer.export import add_backend, export_bundle
    from trainer.recipes import DEFAULT_RECIPE, get_recipe
    from trainer.train import train

    recipe = get_recipe(DEFAULT_RECIPE)
    wavs = make_wavs(work / "wavs", n_normal=12, n_anomaly=0, duration_s=6.0)["normal"]
    result = train(wavs, recipe.feature_config(), recipe.train_config(seed=0, epochs=1), cache_dir=work / "cache", log=log)
    base = export_bundle(result, work / "none").path
    out = {"none": base}
    for kind in KINDS[1:]:
        dst = work / kind
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(base, dst)
        add_backend(dst, kind, train_paths=result.train_paths, val_paths=result.val_paths, target_paths=wavs[:2], cache_dir=work / "cache")
        out[kind] = dst
    return out


# -- report ---------------------------------------------------------------------------------------


def _ms(values: list[float]) -> str:
    m = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{m:.3f} ± {sd:.3f}"


def _params_text(row: dict) -> str:
    parts = [f"{k}={v}" for k, v in row["params"].items()]
    inside = row.get("chosen_inside_fit") or {}
    if "shrinkage" in inside:
        parts.append(f"shrinkage={inside['shrinkage']:.3g}")
    if "n_components" in inside:
        parts.append(f"{inside['n_components']} comp.")
    return ", ".join(parts) or "—"


GOAL = {"pseudo_official": 0.65, "pseudo_auc_target": 0.70, "auc_source_int8": 0.77}
"""Issue 18's goal (official score, AUC (target), AUC (source) kept), here on the pseudo-target figures."""


def comparison(seeds: list[dict]) -> list[str]:
    """Each back end paired with ``none`` (the same AE and seed): mean [min, max] of the per-seed
    differences, the best back end per figure, and the issue's goal."""
    by = {(row["kind"], s["seed"]): row for s in seeds for row in s["rows"]}
    seed_ids = [s["seed"] for s in seeds]
    figures = (("auc_source_int8", "AUC (source)"), ("pauc_int8", "pAUC (source test)"),
               ("pseudo_auc_target", "pseudo AUC (target)"), ("pseudo_official", "pseudo official"))
    lines = ["Paired with `none` (the same AE, per seed): difference, mean [min, max] over the seeds.", "",
             "| back end | " + " | ".join(f"Δ {label}" for _, label in figures) + " |", "|---|" + "---|" * len(figures)]
    for kind in KINDS[1:]:
        cells = []
        for key, _ in figures:
            d = [by[(kind, sd)][key] - by[("none", sd)][key] for sd in seed_ids if (kind, sd) in by and ("none", sd) in by]
            cells.append(f"{statistics.fmean(d):+.3f} [{min(d):+.3f}, {max(d):+.3f}]" if d else "—")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    means = {kind: {key: statistics.fmean([by[(kind, sd)][key] for sd in seed_ids if (kind, sd) in by]) for key, _ in figures}
             for kind in KINDS if any((kind, sd) in by for sd in seed_ids)}
    lines.append("")
    for key, label in figures:
        best = max(means, key=lambda k: means[k][key])
        lines.append(f"- highest mean {label}: {best} ({means[best][key]:.3f}; none {means['none'][key]:.3f})")
    met = [k for k, m in means.items() if all(m[key] >= v for key, v in GOAL.items())]
    best = max(means, key=lambda k: means[k]["pseudo_official"])
    lines.append(f"- issue 18's goal (official ≥ {GOAL['pseudo_official']}, AUC (target) ≥ {GOAL['pseudo_auc_target']}, AUC "
                 f"(source) ≥ {GOAL['auc_source_int8']}), on the pseudo-target figures: "
                 + (f"met by {', '.join(met)}" if met else
                    f"not met by any back end (best pseudo official {means[best]['pseudo_official']:.3f}, {best}, with "
                    f"pseudo AUC (target) {means[best]['pseudo_auc_target']:.3f} and AUC (source) {means[best]['auc_source_int8']:.3f})"))
    return lines


def markdown(r: dict) -> str:
    lines = ["# Scoring back ends over the autoencoder's per-band error vector", "",
             f"`python -m benchmarks.backends` — measured {r['date']} on `{r['machine']['host']}` ({r['machine']['cpu']}, "
             f"nproc {r['machine']['nproc']}).", ""]
    seeds = r.get("seeds") or []
    if seeds:
        first = seeds[0]
        lines += [
            f"## ToyCar (DCASE 2023 dev, section 00): {first['recipe']} int8, seeds {', '.join(str(s['seed']) for s in seeds)}",
            "",
            f"The AE is trained once per seed on the {first['n_train'] + first['n_val']} source-domain training clips "
            f"({first['n_val']} held out for validation); every back end is fitted on its int8 error vectors of the "
            f"{first['n_train']} training clips. Site slot (k-NN site bank, selective Mahalanobis' target statistics): the "
            f"{first['n_target']} target-domain training clips. Representation and hyper-parameters chosen per kind and seed on "
            f"validation only: {first['n_val']} held-out normal clips against {first['n_faults']} synthetic faults made from them "
            "(pseudo-AUC); never on the test set. Clip score = mean window score.",
            "",
            "| back end | chosen on validation (seed 0) | pseudo-AUC (validation) | AUC (source, int8) | pAUC (source test, int8) "
            "| int8 − float AUC | pseudo-target AUC (target) | pseudo-target pAUC | pseudo-target official score |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for kind in KINDS:
            group = [row for s in seeds for row in s["rows"] if row["kind"] == kind]
            if not group:
                continue
            chosen = f"{group[0]['representation']}; {_params_text(group[0])}" if kind != "none" else "—"
            cells = [_ms([g[k] for g in group]) for k in ("pseudo_auc_val", "auc_source_int8", "pauc_int8")]
            worst = max((g["auc_int8_minus_float"] for g in group), key=abs)
            cells.append(f"{worst:+.4f} (worst)")
            cells += [_ms([g[k] for g in group]) for k in ("pseudo_auc_target", "pseudo_pauc", "pseudo_official")]
            lines.append(f"| {kind} | {chosen} | " + " | ".join(cells) + " |")
        none = [row for s in seeds for row in s["rows"] if row["kind"] == "none"]
        nm = none[0]["shared_not_measurable"] if none else {}
        lines += [
            "",
            "Mean ± sd over the seeds. `none` is today's score (window MSE) of the same AE. On the shared test (source "
            "domain only) AUC (target) and the official score are not measurable"
            + (f" ({nm.get('auc_target', '')})" if nm.get("auc_target") else "") + ". **Pseudo-target** (not the "
            "official target test): each of the 10 target-domain training clips, scored with the site slot fitted on the "
            "other 9, counts as a target-domain normal clip beside the source test; AUC (target) = those 10 against the 50 "
            "source test anomalies; pAUC over all 110 clips; official = harmonic mean of AUC (source), pseudo AUC (target) "
            "and pseudo pAUC. Target anomalies are not in `../shared`, so this says how target *normals* rank, not how "
            "target anomalies are found.",
            "",
            "Per seed:",
            "",
            "| back end | seed | representation | hyper-parameters (validation) | pseudo-AUC | AUC (source) | pAUC | AUC float | "
            "pseudo AUC (target) | pseudo official | device check (max rel. diff., 3 clips) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for s in seeds:
            for g in s["rows"]:
                dc = g.get("device_check")
                check = "—" if not dc else f"{dc['max_relative_difference']:.1e}"
                lines.append(
                    f"| {g['kind']} | {g['seed']} | {g['representation']} | {_params_text(g)} | {g['pseudo_auc_val']:.4f} | "
                    f"{g['auc_source_int8']:.4f} | {g['pauc_int8']:.4f} | {g['auc_float']:.4f} | {g['pseudo_auc_target']:.4f} | "
                    f"{g['pseudo_official']:.4f} | {check} |")
        lines += [""] + comparison(seeds) + [""]
        lines += ["Validation search (seed 0): pseudo-AUC of every representation × hyper-parameters tried.", "",
                  "| back end | representation | hyper-parameters | pseudo-AUC |", "|---|---|---|---|"]
        for g in seeds[0]["rows"]:
            if g["kind"] == "selective-mahalanobis":
                continue  # without target clips in validation it is Mahalanobis: the same search
            for sel in g["selection"]:
                lines.append(f"| {g['kind']} | {sel['representation']} | {_params_text(sel)} | {sel['pseudo_auc']:.4f} |")
        lines.append("")
    else:
        lines += [f"ToyCar quality: skipped ({r.get('skipped', '')}).", ""]
    c = r.get("cost") or {}
    if c:
        src = r.get("cost_source", "")
        lines += [
            f"## Device cost per window ({src})", "",
            "One thread, this process pinned to one core. Latency: median per window as the detector runs it (AE: the "
            "TFLite int8 call alone; back end: the rest, i.e. error vector, representation and back end). Real-time factor: "
            f"the streaming path (front end, windows, model, back end) over {next(iter(c.values()))['audio_s']:.0f} s of "
            f"audio in {BLOCK_S * 1000:.0f} ms blocks. The bundles are measured in turns, {next(iter(c.values()))['rounds']} "
            "rounds; best round (median round in brackets). Load average of the (shared) machine: "
            f"{next(iter(c.values()))['load_average_before']:.1f} before, {next(iter(c.values()))['load_average_after']:.1f} "
            f"after. Goal ≤ {RTF_GOAL}.", "",
            "| back end | what it holds | AE ms/window | AE + back end ms/window | back end ms/window | windows/s of audio | real-time factor |",
            "|---|---|---|---|---|---|---|",
        ]
        for kind, v in c.items():
            ok = "" if v["rtf_best"] <= RTF_GOAL else " (over the goal)"
            lines.append(f"| {kind} | {v['summary']} | {v['ae_ms']:.4f} | {v['window_ms']:.4f} | {max(v['backend_ms'], 0):.4f} | "
                         f"{v['windows_per_s']:.1f} | {v['rtf_best']:.5f} ({v['rtf_median']:.5f}){ok} |")
        lines.append("")
    return "\n".join(lines)


@click.command()
@click.option("--seeds", default="0,1", show_default=True, help="Comma-separated training seeds.")
@click.option("--epochs", type=int, default=None, help="Maximum epochs (default: the recipe's).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("/tmp/edge-asd-backends"), show_default=True)
@click.option("--from-json", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Only rewrite the markdown from a finished run's JSON.")
@click.option("--cost-only", is_flag=True, help="Measure the device cost again on the bundles of the finished run in "
              "benchmarks/results/backends.json (e.g. on a quieter machine) and rewrite the results.")
def main(seeds: str, epochs: int | None, out: Path, from_json: Path | None, cost_only: bool) -> None:
    import datetime as dt

    if from_json is not None:
        (RESULTS / f"{NAME}.md").write_text(markdown(json.loads(from_json.read_text())))
        return
    if cost_only:
        from edge_asd.audio import read_wav

        r = json.loads((RESULTS / f"{NAME}.json").read_text())
        if not r.get("seeds"):
            raise click.UsageError("--cost-only needs a finished ToyCar run in benchmarks/results/backends.json")
        clip = read_wav(sorted((DATA / "ToyCar" / "test").glob("*.wav"))[0], channels=1)[0]
        r["cost"] = cost({k: Path(v) for k, v in r["seeds"][0]["bundles"].items()}, clip)
        r["cost_date"] = dt.date.today().isoformat()
        (RESULTS / f"{NAME}.json").write_text(json.dumps(r, indent=2, default=str) + "\n")
        (RESULTS / f"{NAME}.md").write_text(markdown(r))
        click.echo(markdown(r))
        return
    seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    r: dict[str, Any] = {"date": dt.date.today().isoformat(), "machine": machine(), "seeds": []}
    RESULTS.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        (RESULTS / f"{NAME}.json").write_text(json.dumps(r, indent=2, default=str) + "\n")
        (RESULTS / f"{NAME}.md").write_text(markdown(r))

    if DATA.is_dir():
        for seed in seed_list:
            r["seeds"].append(run_seed(seed, epochs, out))
            save()
        from edge_asd.audio import read_wav

        clip = read_wav(sorted((DATA / "ToyCar" / "test").glob("*.wav"))[0], channels=1)[0]
        bundles = {k: Path(v) for k, v in r["seeds"][0]["bundles"].items()}
        r["cost_source"] = f"ToyCar seed {seed_list[0]}'s bundles, a 12 s ToyCar test clip"
    else:
        click.echo(f"ToyCar skipped: {DATA} is absent (see ../shared/data/README.md); measuring the cost on synthetic data")
        r["skipped"] = f"{DATA} is absent"
        bundles = synthetic_cost_bundles(out / "synthetic")
        rng = np.random.default_rng(0)
        clip = (0.05 * rng.standard_normal((12 * 16000, 1))).astype(np.float32)
        r["cost_source"] = "a tiny synthetic-data bundle (banks smaller than ToyCar's), 12 s of noise"
    r["cost"] = cost(bundles, clip)
    save()
    click.echo(markdown(r))


if __name__ == "__main__":
    sys.exit(main())

