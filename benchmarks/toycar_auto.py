"""Does ``--recipe auto`` choose well without anomalies? Checked on real ToyCar anomalies.

``asd-train fit --recipe auto`` ranks the candidate recipes by how well each int8 model separates
held-out normal training clips from synthetic faults made from them (:mod:`trainer.select`); it
never sees an anomalous recording. Here every candidate is also scored on the real source-domain
test set of DCASE 2023 ToyCar (50 normal + 50 anomalous clips), which the selection never touched,
and the two rankings are compared:

- Spearman's ρ between the candidates' pseudo-AUC and their real int8 AUC;
- the real AUC of the recipe ``auto`` picked against the best real AUC among the candidates.

With several seeds (``--seeds 0,1``) each seed is a full selection (training, synthetic faults and
validation split all follow the seed), and the summary gives ρ and the gap per seed and their mean.

    python -m benchmarks.toycar_auto [--seeds 0] [--epochs 12] [--out /tmp/edge-asd-toycar-auto] [--resume]

Writes ``benchmarks/results/toycar_auto.{json,md}``. Skips with a message if
``../shared/data/dcase2023-toycar`` is absent. About 15 min per seed on 2 cores (12-13 min measured with the feature cache warm).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import click
import numpy as np

from trainer import quiet_tensorflow_logs

quiet_tensorflow_logs()

from benchmarks.toycar import DATA, RESULTS  # noqa: E402

NAME = "toycar_auto"


def run_seed(seed: int, epochs: int | None, out: Path, resume: bool = False, validation: str = "clips") -> dict:
    """One ``--recipe auto`` fit on ToyCar's training clips, then every candidate on the real test."""
    from scipy.stats import spearmanr

    from trainer.datasets import read_dataset
    from trainer.evaluate import evaluate_clips, score_clips
    from trainer.metrics import auc
    from trainer.fit_cli import fit_bundle
    from trainer.protocols import make_splits

    from edge_asd.scoring.bundle import read_bundle

    t0 = time.perf_counter()
    candidates_dir = out / f"seed{seed}" / "candidates"
    bundle_dir = out / f"seed{seed}" / "bundle"
    resumed = resume and (bundle_dir / "bundle.json").is_file()
    if resumed:
        # A finished selection (e.g. an evaluation that failed afterwards): its table is in the provenance.
        selection = dict(read_bundle(bundle_dir).provenance["recipe_selection"])
        click.echo(f"seed {seed}: resuming from the selection in {bundle_dir}", err=True)
    else:
        res = fit_bundle(
            DATA, bundle_dir, recipe="auto", protocol="dcase", seed=seed, epochs=epochs,
            run_evaluation=False, candidates_dir=candidates_dir, auto_validation=validation, log=lambda s: click.echo(s, err=True),
        )
        selection = res["selection"]
    split = make_splits(read_dataset(DATA, layout="auto"), "dcase", seed=seed)[0]
    test = [c for c in split.test if c.domain == "source"]
    # Diagnoses, they choose nothing. Drift: does a recipe score the test set's *normal* clips above the
    # held-out normal training clips it was ranked on (0.5: no; near 1: the test normals sound new to it)?
    # Anomalies against held-out normals: would the real faults stand out against the normals the
    # ranking used? Together they split the real AUC into fault sensitivity and train-to-test drift.
    val_paths = [DATA / "ToyCar" / "train" / f"{stem}.wav"
                 for stem in sorted({p.name.split("__")[0] for p in (candidates_dir / "pseudo-anomalies-0").glob("*.wav")})]
    test_normal = [c.path for c in test if c.label == "normal"]
    test_anomaly = [c.path for c in test if c.label != "normal"]
    rows = []
    for cand in selection["candidates"]:
        scores = np.asarray(score_clips(
            read_bundle(cand["bundle"]), val_paths + test_normal + test_anomaly, models=("int8",), progress=False,
        )["int8"])
        val_s, normal_s, anomaly_s = np.split(scores, [len(val_paths), len(val_paths) + len(test_normal)])
        drift = auc(np.r_[np.zeros(len(val_s)), np.ones(len(normal_s))], np.r_[val_s, normal_s])
        anomaly_vs_heldout = auc(np.r_[np.zeros(len(val_s)), np.ones(len(anomaly_s))], np.r_[val_s, anomaly_s])
        summary = evaluate_clips(
            cand["bundle"], test, out / f"seed{seed}" / "reports" / cand["recipe"], title=f"ToyCar {cand['recipe']}",
            protocol="dcase", store_in_bundle=False, progress=False, plots=False,
        )
        rows.append({**cand, "auc_int8": summary["auc_int8"], "pauc_int8": summary["pauc_int8"], "auc_float": summary["auc_float"],
                     "normal_drift_auc": float(drift), "anomaly_vs_heldout_auc": float(anomaly_vs_heldout)})
        click.echo(f"{cand['recipe']}: pseudo-AUC {cand['pseudo_auc']:.4f}, real int8 AUC {summary['auc_int8']:.4f}", err=True)
    refit_auc = None
    if selection.get("refit_bundle"):  # --validation groups: the bundle a user gets, retrained on every group
        refit_auc = evaluate_clips(
            bundle_dir, test, out / f"seed{seed}" / "reports" / "chosen-refit", title="ToyCar auto (refit)",
            protocol="dcase", store_in_bundle=False, progress=False, plots=False,
        )["auc_int8"]
        click.echo(f"output bundle ({selection['chosen']} refit on every group): real int8 AUC {refit_auc:.4f}", err=True)
    rho = spearmanr([r["pseudo_auc"] for r in rows], [r["auc_int8"] for r in rows])
    best = max(rows, key=lambda r: r["auc_int8"])
    chosen = next(r for r in rows if r["recipe"] == selection["chosen"])
    return {
        "seed": seed,
        "validation": validation,
        "held_out_groups": selection.get("held_out_groups"),
        "chosen": selection["chosen"],
        "chosen_auc_int8": chosen["auc_int8"],
        "refit_auc_int8": refit_auc,
        "best_recipe": best["recipe"],
        "best_auc_int8": best["auc_int8"],
        "gap": best["auc_int8"] - chosen["auc_int8"],
        "spearman_rho": float(rho.statistic),
        "spearman_p": float(rho.pvalue),
        "n_val_clips": rows[0]["n_normal"],
        "n_faulted": rows[0]["n_faulted"],
        "rows": rows,
        "resumed": resumed,  # then time_s is the evaluation alone
        "time_s": round(time.perf_counter() - t0),
    }


def _rho(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def _diagnosis(row: dict, key: str) -> str:
    return f"{row[key]:.3f}" if key in row else "n/m"


def markdown(results: list[dict], epochs: int | None) -> str:
    lines = [
        "# --recipe auto on ToyCar: synthetic-fault ranking against the real test set",
        "",
        "`python -m benchmarks.toycar_auto` (DCASE 2023 ToyCar section 00, training clips of the dataset's own split; "
        f"maximum epochs {epochs or 'per recipe'}). Pseudo-AUC: the selection's score, from held-out normal training clips "
        "and synthetic faults made from them (no anomalous recording). Real AUC: int8 model on the source-domain test "
        "set (50 normal + 50 anomalous clips), which the selection never saw. Normal drift AUC (a diagnosis that "
        "chooses nothing): the AUC of the test set's 50 normal clips against the held-out normal training clips, "
        "int8 scores; 0.5 means the recipe hears the test normals as it heard the held-out ones. Anomalies vs held-out "
        "AUC (a diagnosis too): the test set's 50 anomalous clips against the held-out normal training clips, i.e. the "
        "real faults judged against the normals the ranking used.",
        "",
    ]
    if results and results[0].get("validation") == "groups":
        lines += [
            "`--validation groups`: every candidate trains without a few whole attribute groups (car × speed), and the "
            "ranking's normal clips and synthetic faults come from those groups only, so a candidate is judged on a "
            "condition it never trained on.",
            "",
        ]
    for r in results:
        families = list(r["rows"][0]["per_family"])
        lines += [
            f"## Seed {r['seed']}: auto chose **{r['chosen']}** (real AUC {r['chosen_auc_int8']:.4f}); best real: "
            f"{r['best_recipe']} ({r['best_auc_int8']:.4f}), gap {r['gap']:.4f}; Spearman ρ = {r['spearman_rho']:.2f} "
            f"(p = {r['spearman_p']:.2f}, {len(r['rows'])} recipes)",
            "",
            f"{r['n_val_clips']} held-out normal clips, {r['n_faulted']} synthetic faults."
            + (f" Held-out groups: {', '.join(r['held_out_groups'])}." if r.get("held_out_groups") else "")
            + (f" The output bundle ({r['chosen']} refit on every group): real AUC {r['refit_auc_int8']:.4f}."
               if r.get("refit_auc_int8") is not None else ""),
            "",
            "| recipe | pseudo-AUC | " + " | ".join(families)
            + " | real AUC (int8) | real pAUC (int8) | normal drift AUC | anomalies vs held-out AUC |",
            "|---|---|" + "---|" * len(families) + "---|---|---|---|",
        ]
        for row in r["rows"]:
            mark = " (chosen)" if row["recipe"] == r["chosen"] else ""
            lines.append(
                f"| {row['recipe']}{mark} | {row['pseudo_auc']:.4f} | " + " | ".join(f"{row['per_family'][f]:.3f}" for f in families)
                + f" | {row['auc_int8']:.4f} | {row['pauc_int8']:.4f} | {_diagnosis(row, 'normal_drift_auc')} "
                f"| {_diagnosis(row, 'anomaly_vs_heldout_auc')} |"
            )
        real = [row["auc_int8"] for row in r["rows"]]
        lines += [
            f"| *Spearman ρ with real AUC* | {r['spearman_rho']:.2f} | "
            + " | ".join(f"{_rho([row['per_family'][f] for row in r['rows']], real):.2f}" for f in families) + " | | | | |",
        ]
        if all("anomaly_vs_heldout_auc" in row for row in r["rows"]):
            pseudo = [row["pseudo_auc"] for row in r["rows"]]
            lines.append(
                "Spearman ρ of the pseudo-AUC with the anomalies-vs-held-out AUC: "
                f"{_rho(pseudo, [row['anomaly_vs_heldout_auc'] for row in r['rows']]):.2f}; "
                f"with the normal drift AUC: {_rho(pseudo, [row['normal_drift_auc'] for row in r['rows']]):.2f}."
            )
        lines.append("")
    if len(results) > 1:
        rhos, gaps = [r["spearman_rho"] for r in results], [r["gap"] for r in results]
        lines.append(
            f"Over {len(results)} seeds: Spearman ρ {statistics.fmean(rhos):.2f} ± {statistics.stdev(rhos):.2f}, "
            f"gap to the best real AUC {statistics.fmean(gaps):.4f} ± {statistics.stdev(gaps):.4f}."
        )
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds; each is a full selection.")
@click.option("--epochs", type=int, default=None, help="Maximum epochs for every candidate (default: each recipe's).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("/tmp/edge-asd-toycar-auto"), show_default=True)
@click.option("--resume", is_flag=True, help="Reuse a seed's finished selection in --out (its candidates' bundles) and only evaluate.")
@click.option("--validation", type=click.Choice(["clips", "groups"]), default="clips", show_default=True,
              help="Rank on synthetic faults made from random held-out clips, or from whole held-out attribute groups "
                   "(results go to toycar_auto_groups.*).")
def main(seeds: str, epochs: int | None, out: Path, resume: bool, validation: str) -> None:
    if not DATA.is_dir():
        click.echo(f"skipped: {DATA} is absent (see ../shared/data/README.md)")
        return
    try:
        seed_list = [int(x) for x in seeds.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {seeds!r}", param_hint="--seeds") from None
    name = NAME if validation == "clips" else f"{NAME}_{validation}"
    results = []
    for seed in seed_list:
        results.append(run_seed(seed, epochs, out, resume, validation))
        RESULTS.mkdir(parents=True, exist_ok=True)  # after every seed: a later failure keeps what finished
        (RESULTS / f"{name}.json").write_text(json.dumps({"data": str(DATA), "epochs": epochs, "results": results}, indent=2) + "\n")
        (RESULTS / f"{name}.md").write_text(markdown(results, epochs))
    click.echo(markdown(results, epochs))


if __name__ == "__main__":
    sys.exit(main())
