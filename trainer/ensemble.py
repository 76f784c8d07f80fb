"""``asd-train ensemble``: one bundle that scores every window with two or more models.

The first bundle's directory is copied, every further bundle goes into it as a member
(``members/1``, ``members/2``, …), and ``bundle.json`` gains an ``ensemble`` section (schema 4, see
:mod:`edge_asd.scoring.bundle`). On the device each window is scored by every model with that model's own
normalisation and score scaling (standard deviations of its normal window scores), the scores are
averaged, and the average is standardised once more with the ensemble's scaling, fitted here on
the window scores of ``normal`` clips. The threshold is fitted on the same clips as ``asd-train
fit`` fits a bundle's (:func:`trainer.export.export_threshold`), so it reads in the same units.

Give normal clips neither model was trained on (their validation clips, or new recordings): on
training clips both models' errors are small, so the scale and threshold come out too low. Bundles
enrolled on site (``edge-asd enroll``, also ``--selective``) can be combined: each scores with its
site values, and the site's recordings are then the normal clips to give.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Callable, Sequence

import click

from edge_asd.decision.calibration import DEFAULT_FALSE_ALARMS_PER_DAY, resolve_rate
from edge_asd.cli.options import false_alarm_rate_options
from edge_asd.scoring.bundle import (
    Bundle,
    Ensemble,
    EnsembleMember,
    ensemble_problems,
    file_sha256,
    read_bundle,
    write_bundle,
)
from edge_asd.errors import BundleError, ParameterError

__all__ = ["make_ensemble", "ensemble"]

MEMBERS_DIR = "members"


def make_ensemble(
    bundles: Sequence[str | Path],
    out: str | Path,
    normal_paths: Sequence[str | Path],
    *,
    false_alarms_per_day: float = DEFAULT_FALSE_ALARMS_PER_DAY,
    log: Callable[[str], None] = lambda message: None,
) -> Bundle:
    """Build an ensemble bundle in ``out`` from ``bundles`` (the first is the primary).

    Parameters
    ----------
    bundles
        Two or more autoencoder or embedding-model bundles with the same features and windows.
    out
        The new bundle directory; it must not exist yet.
    normal_paths
        Normal wav files the ensemble's score scaling and threshold are fitted on.
    false_alarms_per_day
        Target rate of the threshold at the export's period length.

    Raises
    ------
    BundleError
        A bundle does not load or cannot be a member (the message says why).
    ParameterError
        Fewer than two bundles, ``out`` exists, or no normal clips.
    """
    from trainer.export import export_threshold, window_score_scaling
    from edge_asd.scoring.detector import Detector

    if len(bundles) < 2:
        raise ParameterError("an ensemble needs at least two bundles")
    out = Path(out)
    if out.exists():
        raise ParameterError(f"{out}: already exists; give a new directory for the ensemble")
    if not normal_paths:
        raise ParameterError("no normal clips to fit the ensemble's score scale and threshold on")
    read = [read_bundle(b) for b in bundles]
    primary, members = read[0], read[1:]
    for b in read:
        if b.ensemble is not None:
            raise BundleError(f"{b.path}: is an ensemble already; give the plain bundles it was made of")
    for m in members:
        problems = ensemble_problems(primary, m)
        if problems:
            raise BundleError(f"{m.path}: cannot be scored with {primary.path}: {'; '.join(problems)}")

    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        shutil.copytree(primary.path, staging)
        refs = []
        for i, m in enumerate(members, start=1):
            rel = f"{MEMBERS_DIR}/{i}"
            shutil.copytree(m.path, staging / rel)
            refs.append(EnsembleMember(path=rel, sha256=file_sha256(staging / rel / "bundle.json")))
        copied = read_bundle(staging)
        provenance = {**dict(primary.provenance),
                      "ensemble_of": [str(b.path) for b in read],
                      "ensemble_normal_clips": len(normal_paths)}
        # The first model keeps its enrollment record: a selective one scores under its site and factory
        # values as it would alone. enroll and --rollback refuse ensembles (that record's threshold is
        # in the first model's units, not the ensemble's).
        bundle = dataclasses.replace(copied, ensemble=Ensemble(members=tuple(refs)), provenance=provenance)
        normal = [(Path(p), None) for p in normal_paths]
        log(f"scoring {len(normal)} normal clips with {len(read)} int8 models for the ensemble's score scale")
        scaling, how = window_score_scaling(Detector(bundle, model="int8"), normal, "normal")
        bundle = dataclasses.replace(bundle, ensemble=dataclasses.replace(bundle.ensemble, score_scaling=scaling),
                                     provenance={**provenance, "ensemble_score_scaling": how})
        log("fitting the threshold on the combined scores")
        threshold = export_threshold(bundle, normal, false_alarms_per_day=false_alarms_per_day, source_clips="normal")
        bundle = dataclasses.replace(bundle, threshold=threshold)
        write_bundle(bundle)
        read_bundle(staging)  # everything written loads and verifies
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return read_bundle(out)


def _wav_paths(items: Sequence[Path]) -> list[Path]:
    from edge_asd.audio.sources import list_wavs

    paths: list[Path] = []
    for item in items:
        paths += list_wavs(item) if item.is_dir() else [item]
    return paths


@click.command("ensemble")
@click.argument("bundles", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--normal", "normal", multiple=True, required=True, type=click.Path(exists=True, path_type=Path),
              help="Normal wav files or folders the models were not trained on (repeatable): the ensemble's score "
              "scale and threshold are fitted on them.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="The new ensemble bundle directory.")
@false_alarm_rate_options
def ensemble(bundles: tuple[Path, ...], normal: tuple[Path, ...], out: Path, false_alarms_per_week: float | None,
             false_alarms_per_day: float | None) -> None:
    """Combine BUNDLES (the first is the primary) into one bundle whose device scores every window
    with all their int8 models and averages the standardised scores.

    The bundles must be autoencoders with the same features and windows (e.g. two recipes that
    share frames, or one recipe trained with two seeds).
    """
    false_alarms_per_day = resolve_rate(per_day=false_alarms_per_day, per_week=false_alarms_per_week)
    result = make_ensemble(list(bundles), out, _wav_paths(list(normal)), false_alarms_per_day=false_alarms_per_day,
                           log=lambda m: click.echo(m, err=True))
    e = result.ensemble
    click.echo(f"wrote {result.path}: {1 + len(e.members)} models ({', '.join(b.model.kind for b in (result, *result.load_members()))}), "
               f"threshold {result.threshold.value:.4g} ({result.threshold.method})")
