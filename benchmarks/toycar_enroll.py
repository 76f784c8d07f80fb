"""What enrollment on site changes: ToyCar's 10 target-domain clips as the site.

A bundle is trained on ToyCar's 330 source-domain training clips only (cars B–D, mic 1) with a
recipe (default: the product's default), and exported with its factory threshold (fitted on the
source validation clips for one false alarm a day at 10 s periods). The site is the target domain:
other cars (A1, A2), other speeds, another microphone, whose 10 normal training clips the bundle
never saw.

- Before: how many of the 10 target clips score above the factory threshold.
- After, leave one out: for each target clip, the factory bundle is enrolled (``edge-asd enroll``'s
  code: normalisation, score scaling and threshold re-fitted) on the 9 others, and the held-out
  clip is scored; the count of held-out clips above their enrolled threshold.
- The source test normals and anomalies at the factory threshold, for the factory's own operating point.

A clip's score is the mean of its window scores over 12 s, compared with thresholds fitted for 10 s
periods (the service's default period).

    python -m benchmarks.toycar_enroll [--recipe short-conv-ae] [--seed 0] [--epochs 12]

Writes ``benchmarks/results/toycar_enroll.{json,md}``; skips with a message if
``../shared/data/dcase2023-toycar`` is absent. About 5–10 min on 2 cores (short-conv-ae).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import click
import numpy as np

from trainer import quiet_tensorflow_logs

quiet_tensorflow_logs()

from benchmarks.toycar import DATA, RESULTS  # noqa: E402

NAME = "toycar_enroll"
PERIOD_S = 10.0


def _clip_scores(bundle: Path, paths: list[Path]) -> np.ndarray:
    from edge_asd.audio import read_wav
    from edge_asd.scoring.detector import Detector

    det = Detector.from_bundle(bundle)
    out = []
    for p in paths:
        samples, sr = read_wav(p)
        out.append(det.score_clip(samples, sr=sr))
    return np.array(out)


def run(recipe_name: str, seed: int, epochs: int | None, out: Path) -> dict:
    import dataclasses

    from edge_asd.scoring.bundle import read_bundle
    from edge_asd.config import InputConfig
    from edge_asd.decision.enrollment import enroll_bundle
    from trainer.datasets import read_dataset
    from trainer.export import export_bundle
    from trainer.metrics import auc
    from trainer.protocols import make_splits
    from trainer.recipes import get_recipe
    from trainer.train import train

    recipe = get_recipe(recipe_name)
    split = make_splits(read_dataset(DATA, layout="auto"), "dcase", seed=seed)[0]
    source_train = [c.path for c in split.train if c.domain == "source"]
    target = [c.path for c in split.train if c.domain == "target"]
    test = [c for c in split.test if c.domain == "source"]
    click.echo(f"training {recipe.name} on {len(source_train)} source clips; site: {len(target)} target clips", err=True)
    result = train(source_train, recipe.feature_config(), recipe.train_config(seed=seed, epochs=epochs),
                   log=lambda s: click.echo(s, err=True))
    factory = export_bundle(result, out / "factory", provenance={"data_root": str(DATA), "protocol": "source-only training"}).path
    factory_threshold = read_bundle(factory).threshold

    target_factory = _clip_scores(factory, target)
    test_scores = _clip_scores(factory, [c.path for c in test])
    y = np.array([c.label == "anomaly" for c in test])
    held_out = []
    for i, clip in enumerate(target):
        site = out / "site" / f"without_{i:02d}"
        shutil.rmtree(site, ignore_errors=True)
        (site / "audio").mkdir(parents=True)
        for j, other in enumerate(target):
            if j != i:
                (site / "audio" / other.name).symlink_to(other)
        bundle = site / "bundle"
        shutil.copytree(factory, bundle)
        inp = InputConfig(kind="folder", path=site / "audio", channels=1, sample_rate_hz=16000, realtime=False)
        res = enroll_bundle(bundle, inp, seconds=3600.0, period_s=PERIOD_S)
        score = float(_clip_scores(bundle, [clip])[0])
        held_out.append({
            "clip": clip.name, "factory_score": float(target_factory[i]), "factory_threshold": factory_threshold.value,
            "site_score": score, "site_threshold": res.bundle.threshold.value,
            "factory_above": bool(target_factory[i] > factory_threshold.value), "site_above": bool(score > res.bundle.threshold.value),
            "enroll_periods": res.n_periods,
        })
        click.echo(f"{clip.name}: factory {target_factory[i]:.3f} / {factory_threshold.value:.3f}, "
                   f"enrolled on the 9 others {score:.3f} / {res.bundle.threshold.value:.3f}", err=True)
    return {
        "recipe": recipe.name,
        "seed": seed,
        "factory_threshold": dataclasses.asdict(factory_threshold) | {"history": []},
        "source_test": {
            "auc": float(auc(y, test_scores)),
            "normal_above": int((test_scores[~y] > factory_threshold.value).sum()), "n_normal": int((~y).sum()),
            "anomaly_above": int((test_scores[y] > factory_threshold.value).sum()), "n_anomaly": int(y.sum()),
        },
        "target_factory_above": int(sum(r["factory_above"] for r in held_out)),
        "target_site_above": int(sum(r["site_above"] for r in held_out)),
        "n_target": len(held_out),
        "held_out": held_out,
    }


def markdown(r: dict) -> str:
    st = r["source_test"]
    lines = [
        "# Enrollment on site: ToyCar's target domain as the site",
        "",
        f"`python -m benchmarks.toycar_enroll` — {r['recipe']} (seed {r['seed']}) trained on ToyCar's source-domain training "
        "clips only; factory threshold fitted on its source validation clips for 1 false alarm/day at 10 s periods "
        f"({r['factory_threshold']['value']:.4g}, {r['factory_threshold']['method']}). Site: the 10 target-domain clips (other "
        "cars, speeds and microphone), never trained on. After: leave one out, enrolled on the other 9 (108 s of audio).",
        "",
        "| | target clips above the threshold |",
        "|---|---|",
        f"| factory threshold | {r['target_factory_above']} of {r['n_target']} |",
        f"| enrolled on the other 9 target clips | {r['target_site_above']} of {r['n_target']} |",
        "",
        f"Held-out target clip scores (in standard deviations of normal window scores, 0 = the normal mean the "
        f"scaling was fitted on): mean {np.mean([h['factory_score'] for h in r['held_out']]):.3f} with the factory values, "
        f"{np.mean([h['site_score'] for h in r['held_out']]):.3f} after enrollment.",
        "",
        f"Factory bundle on the source test: AUC {st['auc']:.4f}; at the factory threshold {st['normal_above']} of "
        f"{st['n_normal']} normal and {st['anomaly_above']} of {st['n_anomaly']} anomalous clips above.",
        "",
        "| held-out target clip | factory score | factory threshold | enrolled score | enrolled threshold |",
        "|---|---|---|---|---|",
    ]
    for h in r["held_out"]:
        lines.append(f"| {h['clip']} | {h['factory_score']:.4g} | {h['factory_threshold']:.4g} | {h['site_score']:.4g} | {h['site_threshold']:.4g} |")
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--from-json", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Only rewrite the markdown from a finished run's JSON.")
@click.option("--recipe", "recipe_name", default="short-conv-ae", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--epochs", type=int, default=None, help="Maximum epochs (default: the recipe's).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("/tmp/edge-asd-toycar-enroll"), show_default=True)
def main(from_json: Path | None, recipe_name: str, seed: int, epochs: int | None, out: Path) -> None:
    if from_json is not None:
        (RESULTS / f"{NAME}.md").write_text(markdown(json.loads(from_json.read_text())))
        return
    if not DATA.is_dir():
        click.echo(f"skipped: {DATA} is absent (see ../shared/data/README.md)")
        return
    r = run(recipe_name, seed, epochs, out)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{NAME}.json").write_text(json.dumps(r, indent=2, default=str) + "\n")
    (RESULTS / f"{NAME}.md").write_text(markdown(r))
    click.echo(markdown(r))


if __name__ == "__main__":
    sys.exit(main())
