"""Issue 18's development protocol for domain shift on ToyCar: leave one car model out.

ToyCar's shared data has no target-domain test clips, so the target domain cannot be measured on it
without touching something that later decides. This benchmark makes a pseudo-target domain out of
the source domain with ``trainer.protocols.leave_one_group_out``: for each source car model
(B1, B2, C1, C2, D1, D2, one fold each) the default recipe trains on the other five cars' training
clips; :data:`~trainer.protocols.DEFAULT_SITE_CLIPS` (10, as DCASE gives of the target domain) of the
held-out car's training clips are the site clips; the held-out car's test clips are the
pseudo-target test set, the other cars' test clips the pseudo-source test set. Nothing here reads
the real target-domain clips.

Each fold's int8 model is scored through the device runtime (clip score = mean window score):

- ``factory``: as trained and exported;
- ``enrolled``: after ``edge-asd enroll``'s code (:func:`edge_asd.decision.enrollment.enroll_bundle`) on the
  site clips: normalisation, score scaling and threshold re-fitted;
- ``knn-factory``: a k-NN back end (:mod:`trainer.backends`) over the per-band error vectors with
  the factory memory bank only (training clips of the other cars);
- ``knn-site``: that bundle enrolled on the site clips: the site memory bank holds the site clips
  (and normalisation and score scaling are re-fitted, as ``edge-asd enroll`` does).

Metrics per fold, DCASE 2022+ definitions (:func:`trainer.metrics.domain_metrics`): AUC (source) =
pseudo-source normals against every anomaly, AUC (target) = held-out car's normals against every
anomaly, pAUC (FPR ≤ 0.1) over all test clips, official score = their harmonic mean. Folds where a
metric is undefined (cars C1 and D1 have no normal test clips, so no AUC (target) and no official
score) are listed, never filled in. The folds are pooled as mean ± standard deviation over the
folds (and seeds) that define the metric.

    python -m benchmarks.toycar_domain [--folds B1,B2,C2,D2,C1,D1] [--seeds 0] [--epochs 12]
                                       [--variants factory,enrolled,knn-factory,knn-site]
                                       [--work benchmarks/work/toycar_domain] [--resume] [--cached-only]
                                       [--recipe mfn-arcface] [--shared-test] [--ensemble-with RECIPE]

Every fold's bundles and scores are kept under ``--work``; ``--resume`` re-uses what is there
(trained bundles and per-clip scores) instead of training again. Writes
``benchmarks/results/toycar_domain.{json,md}`` after every fold; skips with a message if
``../shared/data/dcase2023-toycar`` is absent. About 5–8 min per fold on 2 busy cores.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import click
import numpy as np

from trainer import quiet_tensorflow_logs

quiet_tensorflow_logs()

from benchmarks._common import comma_list  # noqa: E402
from benchmarks.toycar import DATA, RESULTS, REPO  # noqa: E402
from benchmarks.toycar_enroll import PERIOD_S, _clip_scores  # noqa: E402

NAME = "toycar_domain"
FOLD_ORDER = ("B1", "B2", "C2", "D2", "C1", "D1")
"""Cars with normal test clips first: a run cut short still has folds with an AUC (target)."""
VARIANTS = ("factory", "enrolled", "enrolled-selective", "knn-factory", "knn-site")
ENSEMBLE_VARIANTS = ("member", "ensemble", "ensemble-selective")
"""With ``--ensemble-with RECIPE``: that recipe's model alone, trained on the fold with the primary's
frames and windows, and the ensemble of both (``asd-train ensemble``)."""
VARIANT_TEXT = {
    "factory": "as trained (factory normalisation, scaling)",
    "enrolled": "enroll_bundle on the 10 site clips (normalisation + score scaling re-fitted)",
    "enrolled-selective": "enroll_bundle --selective: each window scored under the site and the factory values, the lower counts",
    "knn-factory": "k-NN back end, factory bank only",
    "knn-site": "k-NN back end enrolled on the 10 site clips (site bank + normalisation + scaling)",
    "member": "the --ensemble-with recipe alone, trained on the same clips with the same frames and windows",
    "ensemble": "factory + member in one ensemble bundle (mean of the standardised window scores, re-standardised "
                "and thresholded on the fold's validation normal clips)",
    "ensemble-selective": "both models enrolled --selective on the 10 site clips, then one ensemble (re-standardised and "
                          "thresholded on the site clips)",
}
METRICS = (("auc_source", "AUC (source)"), ("auc_target", "AUC (target)"), ("pauc", "pAUC"), ("score", "official"),
           ("auc_target_within", "AUC (target, within)"))
"""Row fields and headings. The last is DCASE 2021's within-domain AUC (held-out car's normals against its own
anomalies only): what a device enrolled on that car meets, as it hears no other car."""
DEFAULT_WORK = REPO / "benchmarks" / "work" / NAME
ENROLL_SECONDS = 3600.0
"""More than the site clips hold: enroll reads all of them."""


def _json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)  # a run killed mid-write leaves no half file for --resume


def _site_folder(split, d: Path) -> Path:
    """The site clips as a folder of symlinks: what ``edge-asd enroll --input folder`` reads."""
    site = d / "site_audio"
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    for c in split.site:
        (site / c.path.name).symlink_to(c.path.resolve())
    return site


def _enroll(src: Path, dst: Path, site: Path, *, selective: bool = False) -> dict:
    from edge_asd.config import InputConfig
    from edge_asd.decision.enrollment import enroll_bundle

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    inp = InputConfig(kind="folder", path=site, channels=1, sample_rate_hz=16000, realtime=False)
    res = enroll_bundle(dst, inp, seconds=ENROLL_SECONDS, period_s=PERIOD_S, selective=selective)
    return {"enroll_periods": res.n_periods, "threshold": res.bundle.threshold.value}


def train_fold(split, recipe, *, seed: int, epochs: int | None, d: Path, resume: bool, out: str = "factory") -> dict:
    """Train and export the fold's bundle ``d/out`` (the factory bundle, or with ``out="member"`` the
    ensemble member), or re-use it with ``resume``."""
    from trainer.export import export_bundle
    from trainer.train import train

    meta_path = d / ("fold.json" if out == "factory" else f"{out}.json")
    if resume and meta_path.exists() and (d / out / "bundle.json").exists():
        click.echo(f"{split.name}: re-using {d / out}", err=True)
        return json.loads(meta_path.read_text())
    from trainer.datasets import attribute_group

    click.echo(f"=== {split.name}: training {recipe.name} on {len(split.train)} clips", err=True)
    t0 = time.perf_counter()
    # A classifier recipe learns the training cars' attribute groups (car x speed x mic), as asd-train fit does.
    labels = [attribute_group(c) for c in split.train] if recipe.needs_classes else None
    result = train([c.path for c in split.train], recipe.feature_config(), recipe.train_config(seed=seed, epochs=epochs),
                   labels=labels, log=lambda s: click.echo(s, err=True), progress=False)
    export_bundle(result, d / out, provenance={"data_root": str(DATA), "protocol": split.protocol, "split": split.name},
                  backend=recipe.backend)
    meta = {"split": split.name, "description": split.description, "recipe": recipe.name, "seed": seed,
            "train_paths": [str(p) for p in result.train_paths], "val_paths": [str(p) for p in result.val_paths],
            "site": [str(c.path) for c in split.site], "train_time_s": result.train_time_s,
            "epochs_run": len(result.history), "export_time_s": time.perf_counter() - t0 - result.train_time_s}
    _json(meta_path, meta)
    return meta


def make_variant(variant: str, d: Path, meta: dict, site: Path, seed: int) -> Path:
    """The variant's bundle folder under ``d`` (the factory bundle, or a copy enrolled / given a back end)."""
    from trainer.export import add_backend

    if variant == "factory":
        return d / "factory"
    if variant == "member":
        return d / "member"
    if variant == "ensemble":
        from trainer.ensemble import make_ensemble

        shutil.rmtree(d / "ensemble", ignore_errors=True)
        # The validation clips of both models (same clips, same seed): neither optimiser saw them.
        return make_ensemble([d / "factory", d / "member"], d / "ensemble", [Path(p) for p in meta["val_paths"]]).path
    if variant == "ensemble-selective":
        from trainer.ensemble import make_ensemble

        for model, enrolled in (("factory", "enrolled-selective"), ("member", "member-selective")):
            if not (d / enrolled / "bundle.json").exists():
                _enroll(d / model, d / enrolled, site, selective=True)
        shutil.rmtree(d / variant, ignore_errors=True)
        return make_ensemble([d / "enrolled-selective", d / "member-selective"], d / variant, sorted(site.iterdir())).path
    if variant in ("enrolled", "enrolled-selective"):
        _enroll(d / "factory", d / variant, site, selective=variant == "enrolled-selective")
        return d / variant
    if variant in ("knn-factory", "knn-site"):
        knn = d / "knn-factory"
        if not (knn / "bundle.json").exists() or not (d / "knn-factory.done").exists():
            shutil.rmtree(knn, ignore_errors=True)
            shutil.copytree(d / "factory", knn)
            add_backend(knn, "knn", train_paths=[Path(p) for p in meta["train_paths"]],
                        val_paths=[Path(p) for p in meta["val_paths"]], seed=seed)
            (d / "knn-factory.done").write_text("")
        if variant == "knn-factory":
            return knn
        _enroll(knn, d / "knn-site", site)
        return d / "knn-site"
    raise click.BadParameter(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS + ENSEMBLE_VARIANTS)}",
                             param_hint="--variants")


def fold_metrics(test, scores: dict[str, float]) -> dict:
    """DCASE 2022+ domain metrics of one fold's per-clip scores (``None`` + reason where undefined)."""
    from trainer.metrics import domain_metrics

    y = np.array([c.label == "anomaly" for c in test])
    s = np.array([scores[c.path.name] for c in test])
    return domain_metrics(y, s, [c.domain for c in test]).to_dict()


def run_fold(clips, car: str, seed: int, recipe, *, epochs: int | None, variants: list[str], work: Path, resume: bool,
             cached_only: bool = False, member_recipe=None) -> list[dict]:
    """One fold's rows; with ``cached_only`` only from what ``work`` holds (``[]`` for a fold never trained)."""
    from trainer.protocols import leave_one_group_out

    split = leave_one_group_out(clips, group=("car", car), seed=seed)
    d = work / _fold_name(car, seed, epochs)
    if cached_only and not (d / "fold.json").exists():
        click.echo(f"{split.name}: not in {work}, left out (--cached-only)", err=True)
        return []
    meta = train_fold(split, recipe, seed=seed, epochs=epochs, d=d, resume=resume)
    if member_recipe is not None:
        member = train_fold(split, member_recipe, seed=seed, epochs=epochs, d=d, resume=resume, out="member")
        if member["val_paths"] != meta["val_paths"]:
            raise RuntimeError(f"{split.name}: the member's validation clips differ from the factory model's")
    site = _site_folder(split, d)
    rows = []
    for variant in variants:
        score_path = d / f"scores_{variant}.json"
        if resume and score_path.exists():
            scores = json.loads(score_path.read_text())
        else:
            t0 = time.perf_counter()
            bundle = make_variant(variant, d, meta, site, seed)
            scores = dict(zip([c.path.name for c in split.test], map(float, _clip_scores(bundle, [c.path for c in split.test]))))
            _json(score_path, scores)
            click.echo(f"{split.name} {variant}: {time.perf_counter() - t0:.0f} s", err=True)
        m = fold_metrics(split.test, scores)
        row = {"car": car, "seed": seed, "variant": variant, "split": split.name, "train_clips": len(split.train),
               "site_clips": len(split.site), "train_time_s": meta["train_time_s"], "epochs_run": meta["epochs_run"], **m}
        click.echo(json.dumps({k: row[k] for k in ("car", "seed", "variant", "auc_source", "auc_target", "pauc", "score")}), err=True)
        rows.append(row)
    return rows


def device_cost(fold_dir: Path, variants: list[str], *, seconds: float = 12.0, repeats: int = 5) -> dict[str, dict]:
    """``edge-asd bench`` of each variant's bundle in ``fold_dir`` (one core, a mono stream of
    ``seconds``): window latency (median ms) and real-time factor (best, median)."""
    import re
    import subprocess

    out = {}
    for variant in variants:
        bundle = fold_dir / variant
        if not (bundle / "bundle.json").exists():
            continue
        run = subprocess.run([sys.executable, "-m", "edge_asd", "bench", str(bundle), "--seconds", f"{seconds:g}",
                              "--repeats", str(repeats)], capture_output=True, text=True, cwd=REPO, timeout=600)
        if run.returncode != 0:
            raise RuntimeError(f"edge-asd bench {bundle} failed: {run.stderr[-1000:]}")
        latency = re.search(r"window latency\s+median ([0-9.]+) ms", run.stdout)
        rtf = re.search(r"real-time factor\s+([0-9.]+) \(best\), ([0-9.]+) \(median\)", run.stdout)
        out[variant] = {"window_ms": float(latency.group(1)), "rtf_best": float(rtf.group(1)), "rtf_median": float(rtf.group(2))}
    return out


def shared_test(recipe, seed: int, *, epochs: int | None, work: Path, resume: bool) -> dict:
    """The recipe trained as ``asd-train fit`` trains it on the whole shared training set (DCASE
    protocol: 330 source clips and the 10 target-domain ones, which fill a back end's site slot) and
    scored on the shared source test (50 + 50 clips): int8 and float AUC and pAUC."""
    from trainer.fit_cli import fit_bundle

    d = work / f"shared_seed{seed}_epochs-{'recipe' if epochs is None else epochs}"
    meta_path = d / "shared.json"
    if resume and meta_path.exists():
        click.echo(f"shared test, seed {seed}: re-using {d}", err=True)
        return json.loads(meta_path.read_text())
    shutil.rmtree(d, ignore_errors=True)
    t0 = time.perf_counter()
    res = fit_bundle(DATA, d / "bundle", recipe=recipe, seed=seed, epochs=epochs, protocol="dcase",
                     log=lambda s: click.echo(s, err=True))
    ev = res["evaluation"]
    row = {"seed": seed, **{k: ev[k] for k in ("auc_int8", "auc_float", "pauc_int8", "pauc_float", "auc_int8_minus_float")},
           "int8_kb": (d / "bundle" / "model_int8.tflite").stat().st_size / 1024, "train_time_s": res["train_result"].train_time_s,
           "epochs_run": len(res["train_result"].history), "total_s": time.perf_counter() - t0}
    _json(meta_path, row)
    return row


def _fold_name(car: str, seed: int, epochs: int | None) -> str:
    # The epochs are in the name: --resume must never mix folds trained for different lengths.
    return f"car-{car}_seed{seed}_epochs-{'recipe' if epochs is None else epochs}"


def _cell(v: float | None) -> str:
    return "n/m" if v is None else f"{v:.4f}"


def pooled(rows: list[dict], variants: list[str]) -> list[dict]:
    """Per variant and metric: mean, sd, and how many folds define it."""
    out = []
    for variant in variants:
        group = [r for r in rows if r["variant"] == variant]
        if not group:
            continue
        entry: dict = {"variant": variant, "folds": len(group)}
        for key, _ in METRICS:
            vals = [r[key] for r in group if r[key] is not None]
            entry[key] = {"mean": statistics.fmean(vals) if vals else None,
                          "sd": statistics.stdev(vals) if len(vals) > 1 else None, "n": len(vals)}
        out.append(entry)
    return out


def markdown(rows: list[dict], pool: list[dict], meta: dict) -> str:
    lines = [
        "# ToyCar: leave one car out (a development protocol for domain shift)",
        "",
        f"`{meta['command']}` — recipe {meta['recipe']}, epochs {meta['epochs']}, seeds {meta['seeds']}, "
        + (f"ensemble member {meta['member_recipe']} at the recipe's frames and windows ({json.dumps(meta['member_settings'])}), "
           if meta.get("member_recipe") else "") +
        f"{meta['site_clips']} site clips per fold. Protocol `leave-one-group-out` (`trainer/protocols.py`): for each "
        "source car the model trains on the other five cars' training clips; 10 of the held-out car's training clips "
        "are the site clips (enrollment / site memory bank); its test clips are the **pseudo-target** test set, the "
        "other cars' test clips the **pseudo-source** test set. The real target-domain clips are never read. "
        "int8 through the device runtime, clip score = mean window score. DCASE 2022+ metrics: AUC (source) = "
        "pseudo-source normals vs all anomalies of the fold's test set; AUC (target) = held-out car's normals vs all "
        "anomalies; pAUC (FPR ≤ 0.1) over all test clips; official = harmonic mean of the three; AUC (target, within) = "
        "held-out car's normals vs its own anomalies only (DCASE 2021), what a device enrolled on that car meets. "
        "An enrolled bundle scores every test clip with the site's normalisation: its AUC (source) says how the site "
        "fit carries over to the other cars, as DCASE's one-system-for-both-domains rule asks. n/m = not measurable.",
        "",
        "**These are the protocol's numbers (pseudo-target), not the shared test set's.** The shared source test "
        "(train on all 330 source clips, score the 100 source test clips) is in `benchmarks/results/toycar.md` / "
        "`toycar_seeds.md`: conv-ae (= short-conv-ae) int8 AUC 0.7828 (seed 0), 0.7701 ± 0.0176 over seeds 0–2; it "
        "has no target-domain normal clips, so no AUC (target) or official score there. Not re-run here.",
        "",
        "## Pooled over folds" + (" and seeds" if len(meta["seeds"]) > 1 else "") + " (mean ± sd; n = runs that define the metric)",
        "",
        "| variant | what | runs (fold × seed) | " + " | ".join(label for _, label in METRICS) + " |",
        "|---|---|---|" + "---|" * len(METRICS),
    ]
    for p in pool:
        cells = []
        for key, _ in METRICS:
            s = p[key]
            cells.append("n/m" if s["mean"] is None else f"{s['mean']:.4f}" + (f" ± {s['sd']:.4f}" if s["sd"] is not None else "")
                         + f" (n={s['n']})")
        lines.append(f"| {p['variant']} | {VARIANT_TEXT[p['variant']]} | {p['folds']} | " + " | ".join(cells) + " |")
    base = {(r["car"], r["seed"]): r for r in rows if r["variant"] == "factory"}
    others = [p["variant"] for p in pool if p["variant"] != "factory"]
    if base and others:
        lines += ["", "Difference from `factory` on the same fold and seed (mean ± sd over runs where both are defined; the "
                  "fold-to-fold spread above cancels here):", "",
                  "| variant | " + " | ".join(f"Δ {label}" for _, label in METRICS) + " |", "|---|" + "---|" * len(METRICS)]
        for variant in others:
            cells = []
            for key, _ in METRICS:
                diffs = [r[key] - base[(r["car"], r["seed"])][key] for r in rows if r["variant"] == variant
                         and (r["car"], r["seed"]) in base and r[key] is not None and base[(r["car"], r["seed"])][key] is not None]
                cells.append("n/m" if not diffs else f"{statistics.fmean(diffs):+.4f}"
                             + (f" ± {statistics.stdev(diffs):.4f}" if len(diffs) > 1 else "") + f" (n={len(diffs)})")
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    seeds = sorted({r["seed"] for r in rows})
    if len(seeds) > 1:
        lines += ["", "## Per seed (mean over that seed's folds; folds differ where a seed is incomplete)", "",
                  "| variant | seed | folds | " + " | ".join(label for _, label in METRICS) + " |",
                  "|---|---|---|" + "---|" * len(METRICS)]
        for p in pool:
            for seed in seeds:
                group = [r for r in rows if r["variant"] == p["variant"] and r["seed"] == seed]
                if not group:
                    continue
                cells = []
                for key, _ in METRICS:
                    vals = [r[key] for r in group if r[key] is not None]
                    cells.append(f"{statistics.fmean(vals):.4f} (n={len(vals)})" if vals else "n/m")
                lines.append(f"| {p['variant']} | {seed} | {','.join(r['car'] for r in group)} | " + " | ".join(cells) + " |")
    lines += ["", "## Per fold", "",
              "| held-out car | seed | variant | test: source normal / anomaly, target normal / anomaly | "
              + " | ".join(label for _, label in METRICS) + " | train s | epochs |",
              "|---|---|---|---|" + "---|" * len(METRICS) + "---|---|"]
    for r in rows:
        c = r["counts"]
        counts = f"{c['source_normal']} / {c['source_anomaly']}, {c['target_normal']} / {c['target_anomaly']}"
        lines.append(f"| {r['car']} | {r['seed']} | {r['variant']} | {counts} | "
                     + " | ".join(_cell(r[k]) for k, _ in METRICS) + f" | {r['train_time_s']:.0f} | {r['epochs_run']} |")
    reasons = dict.fromkeys(f"- car {r['car']} held out (it is the target domain): {dict(METRICS)[k]} not measurable: {why}"
                            for r in rows for k, why in r["not_measurable"].items() if k in dict(METRICS))
    if reasons:
        lines += ["", "Undefined metrics (left out of the pooled means, never filled in):", "", *reasons]
    if meta.get("device_cost"):
        lines += ["", f"## Device cost (`edge-asd bench`, fold {meta['device_cost_fold']}, one core, 12 s mono stream, median of 5)", "",
                  "| bundle | window latency, median ms | real-time factor (best) | real-time factor (median) |", "|---|---|---|---|"]
        for variant, c in meta["device_cost"].items():
            lines.append(f"| {variant} | {c['window_ms']:.3f} | {c['rtf_best']:.5f} | {c['rtf_median']:.5f} |")
    shared = meta.get("shared_test") or []
    if shared:
        lines += ["", f"## The shared source test (`--shared-test`): {meta['recipe']} trained on all of ToyCar/train, "
                  "scored on ToyCar/test (50 normal + 50 anomalous source-domain clips)", "",
                  "| seed | AUC (int8) | AUC (float) | pAUC (int8) | int8 − float AUC | int8 KB | train s | epochs |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in shared:
            lines.append(f"| {r['seed']} | {r['auc_int8']:.4f} | {r['auc_float']:.4f} | {r['pauc_int8']:.4f} | "
                         f"{r['auc_int8_minus_float']:+.4f} | {r['int8_kb']:.1f} | {r['train_time_s']:.0f} | {r['epochs_run']} |")
        if len(shared) > 1:
            cells = [f"{statistics.fmean(r[k] for r in shared):.4f} ± {statistics.stdev(r[k] for r in shared):.4f}"
                     for k in ("auc_int8", "auc_float", "pauc_int8")]
            lines.append(f"| mean ± sd | {' | '.join(cells)} | | | | |")
    if meta.get("notes"):
        lines += ["", *meta["notes"]]
    return "\n".join(lines) + "\n"


def write(rows: list[dict], variants: list[str], meta: dict) -> None:
    pool = pooled(rows, variants)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = meta.get("results_name", NAME)
    _json(RESULTS / f"{name}.json", {**meta, "pooled": pool, "rows": rows})
    (RESULTS / f"{name}.md").write_text(markdown(rows, pool, meta))


@click.command()
@click.option("--folds", default=",".join(FOLD_ORDER), show_default=True, help="Held-out car models, comma-separated.")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds (training and site-clip choice).")
@click.option("--epochs", type=int, default=None, help="Maximum epochs (default: the recipe's).")
@click.option("--variants", default=",".join(VARIANTS), show_default=True, help=f"Comma-separated, of {', '.join(VARIANTS)}.")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_WORK, show_default=True,
              help="Keeps every fold's bundles and per-clip scores.")
@click.option("--resume", is_flag=True, help="Re-use trained folds and scores found under --work.")
@click.option("--cached-only", is_flag=True, help="Only the folds --work already holds (implies --resume): train nothing, "
              "score the variants not yet scored from their cached bundles.")
@click.option("--recipe", "recipe_name", default=None, metavar="RECIPE",
              help="The recipe each fold trains (default: asd-train fit's default). Another recipe works under "
              "--work/RECIPE and writes toycar_domain_RECIPE.*.")
@click.option("--shared-test", "shared_test_flag", is_flag=True, help="Also train the recipe on all of ToyCar/train per seed and score the "
              "shared source test (as asd-train fit does).")
@click.option("--ensemble-with", "ensemble_with", default=None, metavar="RECIPE",
              help="Also train this recipe per fold, with the primary's frames and windows, and score it alone (variant "
              "member) and in an ensemble with the factory model (variant ensemble). Writes toycar_domain_ensemble.*.")
def main(folds: str, seeds: str, epochs: int | None, variants: str, work: Path, resume: bool, cached_only: bool,
         recipe_name: str | None, shared_test_flag: bool, ensemble_with: str | None) -> None:
    if not DATA.is_dir():
        click.echo(f"skipped: {DATA} is absent (see ../shared/data/README.md)")
        return
    from trainer.datasets import read_dataset
    from trainer.protocols import DEFAULT_SITE_CLIPS, holdout_groups
    from trainer.recipes import DEFAULT_RECIPE, get_recipe

    try:
        seed_list = [int(x) for x in comma_list(seeds, "--seeds")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {seeds!r}", param_hint="--seeds") from None
    variant_list = comma_list(variants, "--variants")
    allowed = VARIANTS + (ENSEMBLE_VARIANTS if ensemble_with else ())
    unknown = sorted(set(variant_list) - set(allowed))
    if unknown:
        raise click.BadParameter(f"unknown variants {unknown}; choose from {', '.join(allowed)} (member and ensemble "
                                 "need --ensemble-with)", param_hint="--variants")
    clips = read_dataset(DATA, layout="auto")
    fold_list = comma_list(folds, "--folds")
    available = holdout_groups(clips, "car")
    bad = sorted(set(fold_list) - set(available))
    if bad:
        raise click.BadParameter(f"cars {bad} cannot be held out; choose from {', '.join(available)}", param_hint="--folds")
    recipe = get_recipe(recipe_name or DEFAULT_RECIPE)
    if recipe.backend != "none" and {"knn-factory", "knn-site"} & set(variant_list):
        raise click.BadParameter(f"recipe {recipe.name} exports with a {recipe.backend} back end already: its variants are "
                                 "factory and enrolled (which fills the site slot)", param_hint="--variants")
    if recipe.name != DEFAULT_RECIPE:
        # Folds are cached by car, seed and epochs: another recipe's must never be re-used as the default's.
        work = work / recipe.name
    # The member sees the primary's frames and windows: an ensemble scores the same windows with both.
    member_recipe = None if ensemble_with is None else get_recipe(ensemble_with).with_overrides(
        n_fft=recipe.n_fft, hop_length=recipe.hop_length, n_mels=recipe.n_mels, features=recipe.features,
        n_frames=recipe.n_frames, hop_frames=recipe.hop_frames)
    argv = " ".join(sys.argv[1:])
    meta = {"command": f"python -m benchmarks.{NAME}" + (f" {argv}" if argv else ""), "recipe": recipe.name,
            "epochs": epochs or recipe.epochs, "seeds": seed_list, "folds": fold_list, "site_clips": DEFAULT_SITE_CLIPS,
            "data": str(DATA), "period_s": PERIOD_S}
    if recipe.name != DEFAULT_RECIPE:
        meta.update(results_name=f"{NAME}_{recipe.name}")
    if member_recipe is not None:
        meta.update(results_name=f"{NAME}_ensemble", member_recipe=member_recipe.name,
                    member_settings={k: v for k, v in member_recipe.settings().items() if v is not None})
    rows: list[dict] = []
    for seed in seed_list:
        for car in fold_list:
            new = run_fold(clips, car, seed, recipe, epochs=epochs, variants=variant_list, work=work,
                           resume=resume or cached_only, cached_only=cached_only, member_recipe=member_recipe)
            if not new:
                meta.setdefault("notes", []).append(f"- car {car}, seed {seed}: not run (left out of every table)")
            rows += new
            write(rows, variant_list, meta)
    if shared_test_flag:
        meta["shared_test"] = []
        for seed in seed_list:
            meta["shared_test"].append(shared_test(recipe, seed, epochs=epochs, work=work, resume=resume or cached_only))
            write(rows, variant_list, meta)
    if (member_recipe is not None or recipe.name != DEFAULT_RECIPE) and rows:
        first = work / _fold_name(rows[0]["car"], rows[0]["seed"], epochs)
        bundles = ["factory", "member", "ensemble"] if member_recipe is not None else ["factory"]
        meta.update(device_cost=device_cost(first, bundles), device_cost_fold=first.name)
        write(rows, variant_list, meta)
    click.echo(markdown(rows, pooled(rows, variant_list), meta))


if __name__ == "__main__":
    sys.exit(main())
