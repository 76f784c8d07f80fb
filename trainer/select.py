"""``--recipe auto``: choose a recipe without a single recording of the machine failing.

Every candidate recipe is trained on the same normal clips and exported as a real bundle. The
trainer's validation clips (whole normal clips the optimiser never saw, the same for every
candidate because the split depends only on the seed) are turned into synthetic faults
(:mod:`trainer.faults`: clicks, tones, noise bursts, amplitude modulation, speed change, each at
three severities). Each candidate's int8 model scores the validation clips and their faulted
copies through the device runtime, and the candidate whose scores best separate the two wins.

The score of a candidate is the mean over fault families of the AUC of normal against that family's
faults (pooled over severities), so that each kind of fault counts the same however many clips it
makes. Ties go to the recipe listed first (the best measured). No test clip is ever used.
"""

from __future__ import annotations

import dataclasses
import shutil
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from edge_asd.scoring.bundle import Bundle, read_bundle, write_bundle
from edge_asd.errors import ParameterError
from trainer.recipes import AUTO_CANDIDATES, Recipe, get_recipe
from trainer.report import selection_markdown

__all__ = ["SelectedRecipe", "CandidateScore", "pseudo_auc_table", "select_recipe", "selection_markdown", "MIN_VAL_CLIPS"]

MIN_VAL_CLIPS = 3
"""Validation clips wanted for the ranking; small data sets hold out a larger share (up to
:data:`MAX_VAL_FRACTION`) to reach it."""
MAX_VAL_FRACTION = 0.3


@dataclass(frozen=True, kw_only=True)
class CandidateScore:
    """How well one candidate separated held-out normal clips from synthetic faults."""

    recipe: str
    pseudo_auc: float
    """Mean over fault families of the family's AUC (normal clips against its faults)."""
    per_family: Mapping[str, float]
    per_severity: Mapping[str, float]
    """AUC of normal clips against all faults of one severity."""
    n_normal: int
    n_faulted: int
    train_time_s: float
    int8_kb: float
    bundle: str


@dataclass(frozen=True, kw_only=True)
class SelectedRecipe:
    """The winner of ``--recipe auto``, already written as the output bundle."""

    recipe: Recipe
    bundle: Bundle
    train_result: Any
    table: dict[str, Any]
    """JSON-able: ``chosen``, ``metric``, ``candidates`` (one :class:`CandidateScore` dict each), ``seed``."""


def pseudo_auc_table(normal_scores: np.ndarray, faulted_scores: np.ndarray, specs: Sequence[Any]) -> tuple[float, dict, dict]:
    """``(pseudo-AUC, AUC per family, AUC per severity)`` of clip scores (higher = more anomalous).

    ``specs[i]`` is the :class:`trainer.faults.FaultSpec` of ``faulted_scores[i]``.
    """
    from trainer.metrics import auc

    def auc_of(mask: np.ndarray) -> float:
        s = np.concatenate([normal_scores, faulted_scores[mask]])
        y = np.r_[np.zeros(len(normal_scores)), np.ones(int(mask.sum()))]
        return float(auc(y, s))

    families = np.array([s.family for s in specs])
    severities = np.array([s.severity for s in specs])
    per_family = {f: auc_of(families == f) for f in dict.fromkeys(families.tolist())}
    per_severity = {v: auc_of(severities == v) for v in dict.fromkeys(severities.tolist())}
    return statistics.fmean(per_family.values()), per_family, per_severity


def _copy_bundle(src: Path, dst: Path, provenance: Mapping[str, Any]) -> Bundle:
    """Copy a candidate's bundle files to ``dst`` and add to its provenance."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file():
            shutil.copy2(f, dst / f.name)
    copied = read_bundle(dst)
    new = dataclasses.replace(copied, provenance={**dict(copied.provenance), **dict(provenance)})
    write_bundle(new)
    return new


def select_recipe(
    train_paths: Sequence[Path],
    out: Path,
    *,
    candidates: Sequence[str] = AUTO_CANDIDATES,
    overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
    cache_dir: Path | None = None,
    candidates_dir: Path | None = None,
    provenance: Mapping[str, Any] | None = None,
    holdout_groups: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
) -> SelectedRecipe:
    """Train every candidate recipe, rank them on synthetic faults, write the winner's bundle to ``out``.

    Parameters
    ----------
    train_paths
        Normal training clips (wav files).
    out
        The bundle folder to write the chosen candidate to.
    candidates
        Recipe names, best measured first (ties go to the earlier one).
    overrides
        Recipe fields every candidate takes (e.g. ``epochs``).
    candidates_dir
        Where each candidate's bundle and the synthetic faults are kept (default: a temporary
        folder, removed afterwards).
    holdout_groups
        One group name per training clip (attribute group, recording session). When given, the
        ranking's normal clips are whole held-out groups (see :func:`trainer.train.train`), so a
        candidate is judged on a condition it never trained on; otherwise a random share of clips.
    """
    from trainer.export import export_bundle
    from trainer.faults import write_pseudo_anomalies
    from trainer.evaluate import score_clips
    from trainer.train import train

    if len(candidates) < 2:
        raise ParameterError("--recipe auto needs at least two candidate recipes")
    overrides = dict(overrides or {})
    tmp = None
    if candidates_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="edge-asd-candidates-")
        work = Path(tmp.name)
    else:
        work = Path(candidates_dir)
        work.mkdir(parents=True, exist_ok=True)
    try:
        n = len(train_paths)
        val_fraction = min(MAX_VAL_FRACTION, max(0.1, MIN_VAL_CLIPS / max(n, 1)))
        pseudo: dict[tuple[str, ...], list[tuple[Path, Any, Path]]] = {}
        rows: list[CandidateScore] = []
        kept: dict[str, tuple[Recipe, Any, Bundle]] = {}
        def fit(recipe: Recipe, groups: Sequence[str] | None, folder: Path) -> tuple[Any, Bundle]:
            config = dataclasses.replace(recipe.train_config(seed=seed), val_fraction=val_fraction)
            result = train(list(train_paths), recipe.feature_config(), config, holdout_groups=groups, cache_dir=cache_dir, log=log)
            recipe_note = {"name": recipe.name, "settings": recipe.settings(), "measured": recipe.measured}
            return result, export_bundle(result, folder, provenance={**dict(provenance or {}), "recipe": recipe_note})

        for i, name in enumerate(candidates, 1):
            recipe = get_recipe(name).with_overrides(**overrides)
            log(f"--recipe auto: candidate {i}/{len(candidates)}: {recipe.name}")
            result, bundle = fit(recipe, holdout_groups, work / recipe.name)
            val = tuple(str(p) for p in result.val_paths)
            if not val:
                raise ParameterError("--recipe auto needs at least two training clips (one held out for the ranking)")
            if val not in pseudo:
                log(f"making synthetic faults from {len(val)} held-out normal clip(s)")
                pseudo[val] = write_pseudo_anomalies([Path(p) for p in val], work / f"pseudo-anomalies-{len(pseudo)}", seed=seed)
            made = pseudo[val]
            scores = score_clips(bundle, [Path(p) for p in val] + [w for _, _, w in made], models=("int8",), progress=False)["int8"]
            value, per_family, per_severity = pseudo_auc_table(scores[: len(val)], scores[len(val):], [s for _, s, _ in made])
            rows.append(CandidateScore(
                recipe=recipe.name, pseudo_auc=value, per_family=per_family, per_severity=per_severity,
                n_normal=len(val), n_faulted=len(made), train_time_s=round(result.train_time_s, 1),
                int8_kb=round(bundle.model_path("int8").stat().st_size / 1024, 1), bundle=str(bundle.path),
            ))
            log(f"{recipe.name}: pseudo-AUC {value:.4f} (" + ", ".join(f"{k} {v:.3f}" for k, v in per_family.items()) + ")")
            kept[recipe.name] = (recipe, result, bundle)
        held_out = set(next(iter(pseudo)))  # the validation split depends on the seed only: one for all candidates
        best = max(rows, key=lambda r: r.pseudo_auc)  # max keeps the first of equals: the better measured recipe
        table = {
            "chosen": best.recipe,
            "metric": "mean over fault families of AUC(held-out normal clips vs their synthetic faults), int8 clip scores",
            "seed": seed,
            "validation": "whole held-out groups" if holdout_groups is not None else "random held-out clips",
            "held_out_groups": sorted({g for p, g in zip(train_paths, holdout_groups) if str(p) in held_out})
            if holdout_groups is not None else None,
            "candidates": [dataclasses.asdict(r) | {"per_family": dict(r.per_family), "per_severity": dict(r.per_severity)} for r in rows],
        }
        if tmp is not None:
            for row in table["candidates"]:
                row["bundle"] = None  # removed with the temporary folder
        recipe, result, _ = kept[best.recipe]
        log(f"--recipe auto chose {best.recipe} (pseudo-AUC {best.pseudo_auc:.4f})")
        chosen_dir = work / best.recipe
        if holdout_groups is not None:
            # The candidates never saw the held-out groups; the bundle a user runs must.
            log(f"refitting {best.recipe} on every group (validation: a random share of clips)")
            chosen_dir = work / f"{best.recipe}-refit"
            result, _ = fit(recipe, None, chosen_dir)
            table["refit_bundle"] = str(chosen_dir) if tmp is None else None
        chosen = _copy_bundle(chosen_dir, Path(out), {"recipe_selection": table})
        return SelectedRecipe(recipe=recipe, bundle=chosen, train_result=result, table=table)
    finally:
        if tmp is not None:
            tmp.cleanup()


