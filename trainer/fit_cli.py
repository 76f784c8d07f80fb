"""``asd-train fit`` and ``asd-train evaluate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import click

from edge_asd.decision.calibration import DEFAULT_FALSE_ALARMS_PER_DAY, resolve_rate
from edge_asd.cli.options import false_alarm_rate_options
from edge_asd.errors import DatasetError, ParameterError
from trainer import quiet_tensorflow_logs
from trainer.backends import BACKEND_CHOICES
from trainer.protocols import DEFAULT_SITE_CLIPS, LEAVE_ONE_GROUP_OUT, parse_holdout_group
from trainer.recipes import AUTO, AUTO_CANDIDATES, DEFAULT_RECIPE, RECIPES, Recipe, get_recipe
from trainer.models import EMBEDDING_KINDS, MODEL_KINDS

__all__ = ["fit", "evaluate", "recipes", "select_split", "fit_bundle", "default_protocol", "check_audio_formats"]

LAYOUT_CHOICES = ["auto", "mimii", "dcase2020", "dcase", "folder"]
PROTOCOL_CHOICES = ["normal-only", "mimii", "dcase", "supervised-8020", "holdout-n", LEAVE_ONE_GROUP_OUT]


def default_protocol(clips: Sequence[Any], layout: str) -> str:
    """The protocol a data set gets when none is named: its own when it can be applied, else
    ``normal-only``, which needs nothing but normal clips.

    MIMII with anomalous clips: ``mimii``; a DCASE layout with both ``train/`` and ``test/``: ``dcase``;
    a plain folder, or any data set without what its own protocol needs: ``normal-only``.
    """
    if layout == "mimii" and any(c.label == "anomaly" for c in clips):
        return "mimii"
    if layout in ("dcase", "dcase2020") and {c.split for c in clips} >= {"train", "test"}:
        return "dcase"
    return "normal-only"


def select_split(
    root: Path,
    *,
    layout: str = "auto",
    machine: Sequence[str] = (),
    ids: Sequence[str] = (),
    snr: Sequence[float] = (),
    protocol: str | None = None,
    seed: int = 0,
    n: int | None = None,
    holdout_group: str | None = None,
    site_clips: int | None = None,
) -> tuple[list[Any], list[Any], str, str]:
    """Read a data set, filter it and apply a protocol: ``(train clips, test clips, description, protocol)``.

    ``protocol=None`` picks :func:`default_protocol`. Several groups (e.g. MIMII IDs) are merged into
    one training set: one model for all of them (the ``id`` objective needs that; for an autoencoder
    it is one model per selection). ``leave-one-group-out`` (``holdout_group``, ``site_clips``): the
    held-out group's site clips come with the training clips, marked ``domain="target"`` as DCASE's
    target-domain training clips are; :func:`fit_bundle` keeps them out of the model's training.
    """
    from trainer.datasets import filter_clips, scan_dataset
    from trainer.protocols import make_splits

    found, clips = scan_dataset(root, layout=layout)
    clips = filter_clips(clips, machine=list(machine) or None, ids=list(ids) or None, snr_db=list(snr) or None)
    if not clips:
        raise ParameterError(f"{root}: no clips match machine={list(machine)} id={list(ids)} snr={list(snr)}")
    protocol = protocol or default_protocol(clips, found)
    group_options = {} if holdout_group is None else {"holdout_group": holdout_group}
    if site_clips is not None:
        group_options["site_clips"] = site_clips
    splits = make_splits(clips, protocol, seed=seed, n=n, **group_options)
    train = sorted({c for s in splits for c in s.train + s.site}, key=lambda c: str(c.path))
    test = sorted({c for s in splits for c in s.test}, key=lambda c: str(c.path))
    return train, test, "; ".join(s.name for s in splits), protocol


def check_audio_formats(paths: Sequence[Path]) -> tuple[int, int]:
    """``(sample rate Hz, channels)`` shared by every file; a :class:`DatasetError` names a file of
    each kind when they differ (one model is trained for one microphone set-up)."""
    from edge_asd.audio import wav_info

    kinds: dict[tuple[int, int], Path] = {}
    for path in paths:
        sr, channels, _ = wav_info(path)
        kinds.setdefault((sr, channels), path)
    if len(kinds) > 1:
        listed = "; ".join(f"{p} ({sr} Hz, {ch} ch)" for (sr, ch), p in sorted(kinds.items()))
        raise DatasetError(
            f"the clips differ in sample rate or channel count: {listed}. Record every clip with the same "
            "device profile, or train one bundle per set-up"
        )
    return next(iter(kinds)) if kinds else (0, 0)


def fit_bundle(
    root: Path,
    out: Path,
    *,
    layout: str = "auto",
    machine: Sequence[str] = (),
    ids: Sequence[str] = (),
    snr: Sequence[float] = (),
    recipe: str | Recipe = DEFAULT_RECIPE,
    overrides: Mapping[str, Any] | None = None,
    objective: str | None = None,
    protocol: str | None = None,
    epochs: int | None = None,
    seed: int = 0,
    run_evaluation: bool = True,
    false_alarms_per_day: float = DEFAULT_FALSE_ALARMS_PER_DAY,
    cache_dir: Path | None = None,
    candidates: Sequence[str] = AUTO_CANDIDATES,
    candidates_dir: Path | None = None,
    auto_validation: str = "clips",
    backend: str | None = None,
    holdout_group: str | None = None,
    site_clips: int | None = None,
    log=click.echo,
) -> dict[str, Any]:
    """Train, export and (by default) evaluate; the library form of ``asd-train fit``.

    Parameters
    ----------
    recipe
        A :class:`~trainer.recipes.Recipe`, a recipe name, or ``"auto"``: train every recipe of
        :data:`~trainer.recipes.AUTO_CANDIDATES` and keep the one that best separates held-out
        normal clips from synthetic faults made from them (:mod:`trainer.select`).
    overrides
        Recipe fields to override (the command-line flags), ``None`` values ignored.
    candidates
        ``"auto"`` only: the recipes to train and rank, best measured first.
    candidates_dir
        ``"auto"`` only: keep every candidate's bundle there (default: a temporary folder).
    auto_validation
        ``"auto"`` only: rank on synthetic faults made from ``"clips"`` (a random share of the
        normal clips) or ``"groups"`` (whole attribute groups held out of every candidate's training).
    backend
        A scoring back end over the autoencoder's per-band error vector or the embedding model's
        embedding (:mod:`trainer.backends`), ``"none"``, or ``None``: the recipe's (:attr:`Recipe.backend`). Target-domain training clips (DCASE layouts) fill its site slot.
    holdout_group, site_clips
        ``leave-one-group-out`` only (:func:`trainer.protocols.leave_one_group_out`): the group held
        out (``"car=B1"``) and how many of its training clips are site clips. The model never trains
        on them; they fill a back end's site slot and are listed in the bundle's provenance for
        ``edge-asd enroll``.

    Returns ``{"bundle": Path, "test_clips": [Clip], "evaluation": summary or None, "train_result",
    "protocol", "recipe": Recipe, "selection": table or None}``.
    """
    from trainer.datasets import attribute_group
    from trainer.evaluate import evaluate_clips
    from trainer.export import export_bundle
    from trainer.train import train

    overrides = dict(overrides or {})
    if epochs is not None:
        overrides["epochs"] = epochs
    auto = recipe == AUTO
    chosen = None if auto else (recipe if isinstance(recipe, Recipe) else get_recipe(recipe)).with_overrides(**overrides)
    train_clips, test_clips, split_name, protocol = select_split(
        root, layout=layout, machine=machine, ids=ids, snr=snr, protocol=protocol, seed=seed,
        holdout_group=holdout_group, site_clips=site_clips,
    )
    if not auto and chosen.needs_classes and objective is None and len({attribute_group(c) for c in train_clips}) < 2:
        raise ParameterError(
            f"recipe {chosen.name} ({chosen.model}) learns to tell machine IDs / attributes apart, and {root} holds "
            "one; use an autoencoder recipe (asd-train recipes)"
        )
    check_audio_formats([c.path for c in train_clips + test_clips])
    target_paths = [c.path for c in train_clips if c.domain == "target" and c.label == "normal"]
    provenance = {
        "data_root": str(Path(root).resolve()),
        "layout": layout,
        "protocol": protocol,
        "split": split_name,
        "selection": {"machine": list(machine), "id": list(ids), "snr_db": list(snr)},
    }
    if protocol == LEAVE_ONE_GROUP_OUT:
        # The held-out group plays the target domain: its site clips (domain "target") may enroll or
        # fill a site bank, never train the model.
        train_clips = [c for c in train_clips if c.domain != "target"]
        provenance["holdout_group"] = "=".join(parse_holdout_group(holdout_group))
        provenance["site_clips"] = [str(p) for p in target_paths]
        log(f"{provenance['holdout_group']} held out; its {len(target_paths)} site clips (for edge-asd enroll) are listed "
            "in bundle.json's provenance.site_clips")
    log(f"{split_name}: {len(train_clips)} training clips, {len(test_clips)} test clips")
    selection = None
    if auto:
        from trainer.select import select_recipe

        log("--recipe auto is experimental: on ToyCar its synthetic-fault ranking ran opposite to the real faults' "
            "(benchmarks/results/toycar_auto.md, toycar_auto_groups.md); the default recipe is the measured choice")

        normal_clips = [c for c in train_clips if c.label == "normal"]
        if auto_validation not in ("clips", "groups"):
            raise ParameterError(f"auto_validation must be 'clips' or 'groups', got {auto_validation!r}")
        groups = [attribute_group(c) for c in normal_clips] if auto_validation == "groups" else None
        picked = select_recipe(
            [c.path for c in normal_clips], out, holdout_groups=groups, candidates=candidates, overrides=overrides, seed=seed,
            cache_dir=cache_dir, candidates_dir=candidates_dir, provenance=provenance, log=log,
        )
        result, chosen, bundle, selection = picked.train_result, picked.recipe, picked.bundle, picked.table
        if backend not in (None, "none"):
            from trainer.export import add_backend

            bundle = add_backend(bundle.path, backend, train_paths=result.train_paths, val_paths=result.val_paths,
                                 target_paths=target_paths, seed=seed, false_alarms_per_day=false_alarms_per_day,
                                 cache_dir=cache_dir, log=log)
    else:
        config = chosen.train_config(seed=seed, objective=objective)
        obj = config.resolved_objective
        backend = chosen.backend if backend is None else backend
        if backend != "none" and obj != "reconstruction" and chosen.model not in EMBEDDING_KINDS:
            raise ParameterError(f"--backend {backend} scores an autoencoder's reconstruction error vectors or an embedding; "
                                 f"recipe {chosen.name} trains a {chosen.model} ({obj} objective): use an autoencoder recipe")
        if obj == "supervised" and protocol != "supervised-8020":
            raise ParameterError("the supervised objective needs --protocol supervised-8020 (it trains on anomalies)")
        if obj in ("reconstruction", "id"):
            train_clips = [c for c in train_clips if c.label == "normal"]
        labels = None
        if obj == "id":
            labels = [attribute_group(c) for c in train_clips]
        elif obj == "supervised":
            labels = [c.label for c in train_clips]
        log(f"recipe {chosen.name}: {chosen.model} on {chosen.features} {chosen.n_fft}/{chosen.hop_length}/{chosen.n_mels}")
        result = train([c.path for c in train_clips], chosen.feature_config(), config, labels=labels, cache_dir=cache_dir, log=log)
        bundle = export_bundle(
            result,
            out,
            false_alarms_per_day=false_alarms_per_day,
            provenance={**provenance, "recipe": {"name": chosen.name, "settings": chosen.settings(), "measured": chosen.measured}},
            backend=backend, target_paths=target_paths, cache_dir=cache_dir, log=log,
        )
    log(f"bundle written: {bundle.path} (recipe {chosen.name}, int8 {bundle.model_path('int8').stat().st_size / 1024:.1f} KB"
        + (f"; back end {bundle.backend.summary}" if bundle.backend is not None else "") + ")")
    summary = None
    if run_evaluation and test_clips:
        summary = evaluate_clips(
            bundle.path, test_clips, out / "report", title=f"{chosen.name} ({chosen.model} {chosen.features}) {split_name}",
            protocol=protocol, keras_model=result.model, cache_dir=cache_dir, recipe_selection=selection,
        )
    return {"bundle": bundle.path, "test_clips": test_clips, "evaluation": summary, "train_result": result,
            "protocol": protocol, "recipe": chosen, "selection": selection}


def _common(f):
    f = click.option("--layout", type=click.Choice(LAYOUT_CHOICES), default="auto", show_default=True)(f)
    f = click.option("--machine", multiple=True, help="Machine type(s), e.g. fan (repeatable).")(f)
    f = click.option("--id", "ids", multiple=True, help="Machine ID(s) / section(s), e.g. 00 (repeatable).")(f)
    f = click.option("--snr", type=float, multiple=True, help="MIMII SNR(s) in dB (repeatable).")(f)
    f = click.option("--protocol", type=click.Choice(PROTOCOL_CHOICES), default=None,
                     help="Evaluation protocol (default: mimii for MIMII data with anomalies, dcase for a DCASE layout "
                          "with train/ and test/, else normal-only: normal clips held out, no anomalies needed).")(f)
    f = click.option("--seed", type=int, default=0, show_default=True)(f)
    f = click.option("--holdout-group", default=None, metavar="ATTR=VALUE",
                     help="--protocol leave-one-group-out: the attribute group held out as the pseudo-target domain, e.g. "
                          "car=B1 (a bare value means car=VALUE).")(f)
    f = click.option("--site-clips", type=click.IntRange(min=1), default=DEFAULT_SITE_CLIPS, show_default=True,
                     help="--protocol leave-one-group-out: training clips of the held-out group kept as site clips.")(f)
    return f


@click.command("fit")
@click.argument("data_root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_common
@click.option("--recipe", default=DEFAULT_RECIPE, show_default=True,
              help="Named training settings (asd-train recipes), or 'auto': train every candidate recipe and keep the one "
                   "that best separates held-out normal clips from synthetic faults made from them. The flags below override it.")
@click.option("--model", type=click.Choice(list(MODEL_KINDS)), default=None, help="Override the recipe's model.")
@click.option("--objective", type=click.Choice(["id", "supervised"]), default=None, help="cnn-lstm only (default id; mobilefacenet is always id).")
@click.option("--features", "feature_kind", type=click.Choice(["logmel", "ims"]), default=None, help="Override the recipe's features.")
@click.option("--n-mels", type=int, default=None, help="Override the recipe's mel bands.")
@click.option("--n-fft", type=int, default=None, help="Override the recipe's FFT length, samples.")
@click.option("--hop-length", type=int, default=None, help="Override the recipe's samples between frames.")
@click.option("--n-frames", type=click.IntRange(min=1), default=None,
              help="Override the recipe's frames per model window (e.g. to match another bundle for asd-train ensemble).")
@click.option("--hop-frames", type=click.IntRange(min=1), default=None, help="Override the recipe's frames between windows.")
@click.option("--epochs", type=int, default=None, help="Override the recipe's maximum epochs.")
@click.option("--normalization", type=click.Choice(["per-feature", "global"]), default=None,
              help="Override the recipe's normalisation: standardise each band, or centre each band and use one common scale.")
@false_alarm_rate_options
@click.option("--backend", type=click.Choice(list(BACKEND_CHOICES)), default=None,
              help="Default: the recipe's (none, except knn for mfn-arcface). "
                   "Score windows with a back end over the autoencoder's per-band error vector instead of its mean, or over an "
                   "embedding model's embedding: "
                   "knn (factory and site memory banks), mahalanobis, selective-mahalanobis (DCASE 2023: source and "
                   "target statistics), gmm, ocsvm. Target-domain training clips fill the site bank / target statistics; "
                   "edge-asd enroll refills them on site.")
@click.option("--evaluate/--no-evaluate", "run_evaluation", default=True, show_default=True)
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Feature cache (default ~/.cache/edge-asd/features).")
@click.option("--candidates", "candidate_list", default=",".join(AUTO_CANDIDATES), show_default=True,
              help="--recipe auto: the recipes to train and rank (comma-separated).")
@click.option("--candidates-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="--recipe auto: keep every candidate's bundle here (default: discarded).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Bundle directory to write.")
def fit(data_root: Path, layout, machine, ids, snr, protocol, seed, holdout_group, site_clips, recipe, model, objective, feature_kind, n_mels, n_fft, hop_length,
        n_frames, hop_frames, epochs, normalization, false_alarms_per_week, false_alarms_per_day, backend, run_evaluation, cache_dir, candidate_list, candidates_dir, out) -> None:
    """Train a model on normal sound in DATA_ROOT, export a bundle to --out, evaluate it.

    A folder holding only normal/ trains as it is (the normal-only protocol); with an abnormal/
    folder beside it the report also gives AUC and pAUC.
    """
    quiet_tensorflow_logs()
    false_alarms_per_day = resolve_rate(per_day=false_alarms_per_day, per_week=false_alarms_per_week)
    overrides = {"model": model, "features": feature_kind, "n_mels": n_mels, "n_fft": n_fft, "hop_length": hop_length,
                 "n_frames": n_frames, "hop_frames": hop_frames, "epochs": epochs, "normalization": normalization}
    if recipe != AUTO:
        get_recipe(recipe).with_overrides(**overrides)  # a bad recipe or frame setting fails before any data is read
        if get_recipe(recipe).research:
            click.echo(f"note: {recipe} is a research recipe, measured not to work ({get_recipe(recipe).measured}); "
                       f"the default {DEFAULT_RECIPE} is the measured best", err=True)
    else:
        click.echo("note: --recipe auto is experimental: on ToyCar it chose the worst recipe (benchmarks/results/toycar_auto.md)",
                   err=True)
    candidates = tuple(name.strip() for name in candidate_list.split(",") if name.strip())
    if recipe == AUTO:
        if len(candidates) < 2:
            raise click.BadParameter("give at least two recipes to choose from", param_hint="--candidates")
        for name in candidates:
            get_recipe(name).with_overrides(**overrides)
    res = fit_bundle(
        data_root, out, layout=layout, machine=machine, ids=ids, snr=snr, recipe=recipe, overrides=overrides,
        objective=objective, protocol=protocol, seed=seed, run_evaluation=run_evaluation, false_alarms_per_day=false_alarms_per_day,
        cache_dir=cache_dir, candidates=candidates, candidates_dir=candidates_dir, backend=backend,
        holdout_group=holdout_group, site_clips=site_clips,
    )
    if res["selection"]:
        from trainer.report import selection_markdown

        click.echo(selection_markdown(res["selection"]))
    if res["evaluation"]:
        from trainer.evaluate import markdown_summary

        click.echo(markdown_summary(res["evaluation"]))


@click.command("recipes")
@click.option("--research", is_flag=True, help="Also list the research recipes, measured not to work (chance on "
              "ToyCar), and --recipe auto (experimental).")
def recipes(research: bool) -> None:
    """List the training recipes that work: what each sets and where it was measured."""
    for r in RECIPES.values():
        if r.research and not research:
            continue
        tag = " (default)" if r.name == DEFAULT_RECIPE else " (RESEARCH: measured not to work)" if r.research else ""
        auto = "" if r.name in AUTO_CANDIDATES else "; not an --recipe auto candidate: needs several machine IDs / attributes"
        click.echo(f"{r.name}{tag}: {r.summary}")
        click.echo(f"  sets      {r.model}, {r.features} n_fft {r.n_fft} / hop_length {r.hop_length} / n_mels {r.n_mels} at "
                   f"{r.sr} Hz, normalization {r.normalization}, window {r.n_frames or 'default'} frames every "
                   f"{r.hop_frames or 'default'}, batch {r.batch_size}, up to {r.epochs} epochs"
                   + (f", back end {r.backend}" if r.backend != "none" else "") + auto)
        click.echo(f"  measured  {r.measured or 'not measured'}")
    if not research:
        hidden = [r.name for r in RECIPES.values() if r.research]
        click.echo(f"(research recipes {', '.join(hidden)} and --recipe auto are measured not to work: asd-train recipes --research)")
        return
    click.echo(f"auto (RESEARCH): trains {', '.join(AUTO_CANDIDATES)} and keeps the best on synthetic faults made from held-out "
               "normal clips")
    click.echo("  experimental: on ToyCar it chose the worst of them (benchmarks/results/toycar_auto.md); use the default")


@click.command("evaluate")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("data_root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_common
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None, help="Report folder (default BUNDLE/report).")
@click.option("--no-store", is_flag=True, help="Do not write the metrics into bundle.json.")
def evaluate(bundle: Path, data_root: Path, layout, machine, ids, snr, protocol, seed, holdout_group, site_clips, out, no_store) -> None:
    """Score DATA_ROOT's test clips with BUNDLE's int8 and float models (device runtime)."""
    from edge_asd.scoring.bundle import read_bundle
    from trainer.evaluate import evaluate_clips, markdown_summary

    b = read_bundle(bundle)
    protocol = protocol or b.provenance.get("protocol")
    if protocol == LEAVE_ONE_GROUP_OUT:
        holdout_group = holdout_group or b.provenance.get("holdout_group")
    _, test, name, protocol = select_split(data_root, layout=layout, machine=machine, ids=ids, snr=snr, protocol=protocol, seed=seed,
                                           holdout_group=holdout_group, site_clips=site_clips)
    summary = evaluate_clips(bundle, test, out or bundle / "report", title=f"{b.model.kind} {name}", protocol=protocol, store_in_bundle=not no_store)
    click.echo(markdown_summary(summary))
    click.echo(json.dumps({k: summary[k] for k in ("auc_int8", "auc_float", "auc_int8_minus_float") if k in summary}))
