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
``../shared/data/dcase2023-toycar`` is absent. About 30 min per seed on 2 cores.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import click

from trainer import quiet_tensorflow_logs

quiet_tensorflow_logs()

from benchmarks.toycar import DATA, RESULTS  # noqa: E402

NAME = "toycar_auto"


def run_seed(seed: int, epochs: int | None, out: Path, resume: bool = False) -> dict:
    """One ``--recipe auto`` fit on ToyCar's training clips, then every candidate on the real test."""
    from scipy.stats import spearmanr

    from trainer.datasets import read_dataset
    from trainer.evaluate import evaluate_clips
    from trainer.fit_cli import fit_bundle
    from trainer.protocols import make_splits

    from edge_asd.bundle import read_bundle

    t0 = time.perf_counter()
    candidates_dir = out / f"seed{seed}" / "candidates"
    bundle_dir = out / f"seed{seed}" / "bundle"
    if resume and (bundle_dir / "bundle.json").is_file():
        # A finished selection (e.g. an evaluation that failed afterwards): its table is in the provenance.
        selection = dict(read_bundle(bundle_dir).provenance["recipe_selection"])
        click.echo(f"seed {seed}: resuming from the selection in {bundle_dir}", err=True)
    else:
        res = fit_bundle(
            DATA, bundle_dir, recipe="auto", protocol="dcase", seed=seed, epochs=epochs,
            run_evaluation=False, candidates_dir=candidates_dir, log=lambda s: click.echo(s, err=True),
        )
        selection = res["selection"]
    split = make_splits(read_dataset(DATA, layout="auto"), "dcase", seed=seed)[0]
    test = [c for c in split.test if c.domain == "source"]
    rows = []
    for cand in selection["candidates"]:
        summary = evaluate_clips(
            cand["bundle"], test, out / f"seed{seed}" / "reports" / cand["recipe"], title=f"ToyCar {cand['recipe']}",
            protocol="dcase", store_in_bundle=False, progress=False, plots=False,
        )
        rows.append({**cand, "auc_int8": summary["auc_int8"], "pauc_int8": summary["pauc_int8"], "auc_float": summary["auc_float"]})
        click.echo(f"{cand['recipe']}: pseudo-AUC {cand['pseudo_auc']:.4f}, real int8 AUC {summary['auc_int8']:.4f}", err=True)
    rho = spearmanr([r["pseudo_auc"] for r in rows], [r["auc_int8"] for r in rows])
    best = max(rows, key=lambda r: r["auc_int8"])
    chosen = next(r for r in rows if r["recipe"] == selection["chosen"])
    return {
        "seed": seed,
        "chosen": selection["chosen"],
        "chosen_auc_int8": chosen["auc_int8"],
        "best_recipe": best["recipe"],
        "best_auc_int8": best["auc_int8"],
        "gap": best["auc_int8"] - chosen["auc_int8"],
        "spearman_rho": float(rho.statistic),
        "spearman_p": float(rho.pvalue),
        "n_val_clips": rows[0]["n_normal"],
        "n_faulted": rows[0]["n_faulted"],
        "rows": rows,
        "time_s": round(time.perf_counter() - t0),
    }


def markdown(results: list[dict], epochs: int | None) -> str:
    lines = [
        "# --recipe auto on ToyCar: synthetic-fault ranking against the real test set",
        "",
        "`python -m benchmarks.toycar_auto` (DCASE 2023 ToyCar section 00, training clips of the dataset's own split; "
        f"maximum epochs {epochs or 'per recipe'}). Pseudo-AUC: the selection's score, from held-out normal training clips "
        "and synthetic faults made from them (no anomalous recording). Real AUC: int8 model on the source-domain test "
        "set (50 normal + 50 anomalous clips), which the selection never saw.",
        "",
    ]
    for r in results:
        families = list(r["rows"][0]["per_family"])
        lines += [
            f"## Seed {r['seed']}: auto chose **{r['chosen']}** (real AUC {r['chosen_auc_int8']:.4f}); best real: "
            f"{r['best_recipe']} ({r['best_auc_int8']:.4f}), gap {r['gap']:.4f}; Spearman ρ = {r['spearman_rho']:.2f} "
            f"(p = {r['spearman_p']:.2f}, {len(r['rows'])} recipes)",
            "",
            f"{r['n_val_clips']} held-out normal clips, {r['n_faulted']} synthetic faults.",
            "",
            "| recipe | pseudo-AUC | " + " | ".join(families) + " | real AUC (int8) | real pAUC (int8) |",
            "|---|---|" + "---|" * len(families) + "---|---|",
        ]
        for row in r["rows"]:
            mark = " (chosen)" if row["recipe"] == r["chosen"] else ""
            lines.append(
                f"| {row['recipe']}{mark} | {row['pseudo_auc']:.4f} | " + " | ".join(f"{row['per_family'][f]:.3f}" for f in families)
                + f" | {row['auc_int8']:.4f} | {row['pauc_int8']:.4f} |"
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
def main(seeds: str, epochs: int | None, out: Path, resume: bool) -> None:
    if not DATA.is_dir():
        click.echo(f"skipped: {DATA} is absent (see ../shared/data/README.md)")
        return
    try:
        seed_list = [int(x) for x in seeds.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {seeds!r}", param_hint="--seeds") from None
    results = []
    for seed in seed_list:
        results.append(run_seed(seed, epochs, out, resume))
        RESULTS.mkdir(parents=True, exist_ok=True)  # after every seed: a later failure keeps what finished
        (RESULTS / f"{NAME}.json").write_text(json.dumps({"data": str(DATA), "epochs": epochs, "results": results}, indent=2) + "\n")
        (RESULTS / f"{NAME}.md").write_text(markdown(results, epochs))
    click.echo(markdown(results, epochs))


if __name__ == "__main__":
    sys.exit(main())
