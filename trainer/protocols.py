"""Evaluation protocols: how a dataset's clips are split into training and test sets.

The protocol names are the ones reports carry (``../shared/docs/design.md``):

``"mimii"``
    Per machine type, machine ID and SNR: every anomalous clip plus as many normal clips (a seeded
    random choice) form the test set; the remaining normal clips train. Normal-only training.
``"dcase"``
    The dataset's own ``train/`` and ``test/`` folders (DCASE 2020 and 2021-2024), one split per
    machine type; training is normal-only. Per-section and per-domain scores come from the report.
``"supervised-8020"``
    Seed 000's protocol: a stratified 80/20 split *with anomalies in training*. It answers a
    different question (recognising known fault types) and must be reported apart.
``"holdout-n"``
    Seed 004's protocol: ``n`` normal and ``n`` anomalous clips held out for testing, training on the
    remaining normal clips; repeated over seeds by the caller.
``"normal-only"``
    For recordings of a machine running normally, the common case in the field: a seeded
    :data:`NORMAL_ONLY_TEST_FRACTION` of the normal clips (whole clips, at least
    :data:`NORMAL_ONLY_MIN_TEST` of them) is held out to measure the normal score distribution and
    the false alarms to expect; every anomalous clip there is (an ``abnormal/`` folder) joins the
    test set, so AUC and pAUC are reported when anomalies exist and nothing fails when none do.

Random choices use a generator derived from the seed *and the group's name*, so a group's split does
not change when other machines or IDs are added to or removed from the dataset.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from edge_asd.errors import DatasetError, ParameterError
from trainer.datasets import Clip

__all__ = [
    "PROTOCOLS",
    "Split",
    "dcase_split",
    "holdout_n",
    "make_splits",
    "mimii_splits",
    "normal_only",
    "supervised_8020",
    "MIN_NORMAL_CLIPS",
]

PROTOCOLS = ("mimii", "dcase", "supervised-8020", "holdout-n", "normal-only")
NORMAL_ONLY_TEST_FRACTION = 0.2
NORMAL_ONLY_MIN_TEST = 2
MIN_NORMAL_CLIPS = 10
"""Fewer normal clips than this cannot train, hold out validation clips and test (about 100 s of audio
at 10 s per clip; a few minutes are better)."""


@dataclass(frozen=True, kw_only=True)
class Split:
    """One training set and the test set it is evaluated on."""

    name: str
    """Unique, file-name-safe name, e.g. ``"mimii_fan_id_00_0dB"``."""
    protocol: str
    """One of :data:`PROTOCOLS`."""
    description: str
    """The group and the rule in words, for reports."""
    train: list[Clip]
    """Training clips, sorted by path (normal only except for ``supervised-8020``)."""
    test: list[Clip]
    """Test clips, sorted by path."""
    seed: int | None = None
    """The seed of the random choice, ``None`` for the deterministic ``dcase`` protocol."""

    @property
    def reported_apart(self) -> bool:
        """True for protocols whose numbers must never be mixed with the normal-only ones."""
        return self.protocol == "supervised-8020"

    @property
    def counts(self) -> dict[str, int]:
        """``train_normal``, ``train_anomaly``, ``test_normal``, ``test_anomaly``, ``test_unknown``."""
        return {
            "train_normal": sum(c.label == "normal" for c in self.train),
            "train_anomaly": sum(c.label == "anomaly" for c in self.train),
            "test_normal": sum(c.label == "normal" for c in self.test),
            "test_anomaly": sum(c.label == "anomaly" for c in self.test),
            "test_unknown": sum(c.label == "unknown" for c in self.test),
        }


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _check_seed(seed: int) -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ParameterError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _rng(seed: int, group: str) -> np.random.Generator:
    # crc32 is stable across runs and platforms (Python's hash() of a str is salted per process).
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(group.encode("utf-8"))]))


def _snr_text(snr_db: float | None) -> str:
    return "" if snr_db is None else f"{snr_db:g}dB"


def _group_name(*parts: str) -> str:
    return "_".join(p for p in parts if p)


def _sorted(clips: Iterable[Clip]) -> list[Clip]:
    return sorted(clips, key=lambda c: c.path)


def _labelled(clips: Sequence[Clip], protocol: str) -> list[Clip]:
    unknown = [c for c in clips if c.label == "unknown"]
    if unknown:
        raise DatasetError(
            f"{len(unknown)} clip(s) have no normal/anomaly label, e.g. {unknown[0].path}; the '{protocol}' "
            "protocol needs labels: use the 'dcase' protocol for unlabelled evaluation sets or leave them out"
        )
    return list(clips)


def _by_machine(clips: Iterable[Clip]) -> dict[str, list[Clip]]:
    groups: dict[str, list[Clip]] = defaultdict(list)
    for c in clips:
        groups[c.machine].append(c)
    return dict(sorted(groups.items()))


def _nonempty(clips: Sequence[Clip], protocol: str) -> Sequence[Clip]:
    if not clips:
        raise DatasetError(f"no clips to split with the '{protocol}' protocol; check the dataset path and filters")
    return clips


# ---------------------------------------------------------------------------------------------
# protocols
# ---------------------------------------------------------------------------------------------


def mimii_splits(clips: Sequence[Clip], *, seed: int) -> list[Split]:
    """The MIMII protocol: one split per (machine type, machine ID, SNR) group.

    Test: all anomalous clips of the group and as many normal clips, chosen at random (seeded).
    Train: the remaining normal clips.

    Raises
    ------
    DatasetError
        A clip has no label, a group has no anomalous clip, or a group has no more normal clips than
        anomalous ones (nothing would be left to train on).
    """
    seed = _check_seed(seed)
    clips = _labelled(_nonempty(clips, "mimii"), "mimii")
    groups: dict[tuple[str, str, float | None], list[Clip]] = defaultdict(list)
    for c in clips:
        groups[(c.machine, c.id, c.snr_db)].append(c)

    def order(key: tuple[str, str, float | None]) -> tuple[str, str, bool, float]:
        machine, id_, snr = key
        return machine, id_, snr is None, 0.0 if snr is None else -snr  # SNR 6, 0, -6 as MIMII reads

    splits = []
    for machine, id_, snr in sorted(groups, key=order):
        members = _sorted(groups[(machine, id_, snr)])
        name = _group_name("mimii", machine, id_, _snr_text(snr))
        where = " ".join(p for p in (machine, id_, f"at {snr:g} dB" if snr is not None else "") if p)
        normals = [c for c in members if c.label == "normal"]
        anomalies = [c for c in members if c.label == "anomaly"]
        if not anomalies:
            raise DatasetError(
                f"{where}: no anomalous clips (e.g. {members[0].path.parent.parent}); the 'mimii' protocol "
                "tests on all anomalous clips of each group - use --protocol normal-only (no anomalies needed) or add the abnormal/ folder"
            )
        if len(normals) <= len(anomalies):
            raise DatasetError(
                f"{where}: {len(normals)} normal and {len(anomalies)} anomalous clips; the 'mimii' protocol "
                "needs more normal clips than anomalous ones to leave some for training"
            )
        chosen = set(_rng(seed, name).choice(len(normals), size=len(anomalies), replace=False).tolist())
        test = _sorted(anomalies + [normals[i] for i in chosen])
        train = [c for i, c in enumerate(normals) if i not in chosen]
        splits.append(
            Split(
                name=name,
                protocol="mimii",
                description=f"{where}: {len(anomalies)} anomalous + {len(anomalies)} normal clips test, "
                f"{len(train)} normal clips train",
                train=train,
                test=test,
                seed=seed,
            )
        )
    return splits


def dcase_split(clips: Sequence[Clip]) -> Split:
    """The DCASE protocol: the dataset's own ``train/`` and ``test/`` folders, normal-only training.

    Unlabelled test clips (evaluation sets) are kept in the test set; reports score them but leave
    them out of AUC.

    Raises
    ------
    DatasetError
        A clip has no train/test split (the layout has none), an anomalous clip sits in ``train/``,
        or the training or test set is empty.
    """
    clips = _nonempty(clips, "dcase")
    no_split = [c for c in clips if c.split is None]
    if no_split:
        raise DatasetError(
            f"{no_split[0].path}: has no train/test folder; the 'dcase' protocol needs a DCASE layout - "
            "use --protocol normal-only (or mimii / holdout-n where there are anomalous clips) for this dataset"
        )
    train = _sorted(c for c in clips if c.split == "train")
    test = _sorted(c for c in clips if c.split == "test")
    bad = [c for c in train if c.label != "normal"]
    if bad:
        raise DatasetError(
            f"{bad[0].path}: a {bad[0].label} clip in a train/ folder; DCASE training data are normal only - "
            "move it to test/"
        )
    machines = sorted({c.machine for c in clips})
    where = ",".join(machines)
    if not train or not test:
        missing = "train" if not train else "test"
        raise DatasetError(
            f"{where}: no clips in the {missing}/ folder; the 'dcase' protocol needs both - use --protocol "
            "normal-only to hold out normal clips for testing instead"
        )
    return Split(
        name=_group_name("dcase", *machines),
        protocol="dcase",
        description=f"{where}: the dataset's own split, {len(train)} normal clips train, {len(test)} clips test",
        train=train,
        test=test,
        seed=None,
    )


def supervised_8020(clips: Sequence[Clip], *, seed: int) -> Split:
    """Seed 000's protocol: stratified 80/20 split, anomalies in training. Report it apart.

    Stratified by label and, where every stratum then has at least two clips, also by machine type,
    ID and SNR (``sklearn.model_selection.train_test_split``).

    Raises
    ------
    DatasetError
        Unlabelled clips, or fewer than two clips of a class.
    """
    from sklearn.model_selection import train_test_split

    seed = _check_seed(seed)
    clips = _sorted(_labelled(_nonempty(clips, "supervised-8020"), "supervised-8020"))
    labels = [c.label for c in clips]
    for label in ("normal", "anomaly"):
        if labels.count(label) < 2:
            raise DatasetError(
                f"the 'supervised-8020' protocol needs at least 2 {label} clips to stratify, got {labels.count(label)}"
                + ("; without anomalous clips use --protocol normal-only" if label == "anomaly" else "")
            )
    fine = [f"{c.machine}|{c.id}|{c.snr_db}|{c.label}" for c in clips]
    strata = fine if min(fine.count(k) for k in set(fine)) >= 2 else labels
    index = np.arange(len(clips))
    train_idx, test_idx = train_test_split(index, test_size=0.2, random_state=seed, stratify=strata)
    machines = sorted({c.machine for c in clips})
    train = _sorted(clips[i] for i in train_idx)
    test = _sorted(clips[i] for i in test_idx)
    return Split(
        name=_group_name("supervised-8020", *machines, f"seed{seed}"),
        protocol="supervised-8020",
        description=f"{','.join(machines)}: stratified 80/20 split WITH anomalies in training "
        f"({len(train)} train, {len(test)} test) - a supervised result, reported apart",
        train=train,
        test=test,
        seed=seed,
    )


def holdout_n(clips: Sequence[Clip], *, n: int, seed: int) -> Split:
    """Seed 004's protocol: ``n`` normal + ``n`` anomalous clips held out; train on the other normals.

    Anomalous clips not held out are not used. Repeat with several seeds for a mean and spread.

    Raises
    ------
    ParameterError
        ``n`` is not a positive integer.
    DatasetError
        Unlabelled clips, fewer than ``n`` anomalous clips, or no more than ``n`` normal clips.
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ParameterError(f"n must be a positive integer, got {n!r}")
    seed = _check_seed(seed)
    clips = _sorted(_labelled(_nonempty(clips, "holdout-n"), "holdout-n"))
    normals = [c for c in clips if c.label == "normal"]
    anomalies = [c for c in clips if c.label == "anomaly"]
    machines = sorted({c.machine for c in clips})
    where = ",".join(machines)
    if len(anomalies) < n:
        raise DatasetError(
            f"{where}: n={n} but only {len(anomalies)} anomalous clip(s); lower --n"
            + (" or, without anomalous clips, use --protocol normal-only" if not anomalies else "")
        )
    if len(normals) <= n:
        raise DatasetError(f"{where}: n={n} but only {len(normals)} normal clip(s), none would be left to train; lower --n")
    name = _group_name("holdout-n", *machines, f"n{n}", f"seed{seed}")
    rng = _rng(seed, name)
    held_normal = set(rng.choice(len(normals), size=n, replace=False).tolist())
    held_anomaly = rng.choice(len(anomalies), size=n, replace=False).tolist()
    test = _sorted([normals[i] for i in held_normal] + [anomalies[i] for i in held_anomaly])
    train = [c for i, c in enumerate(normals) if i not in held_normal]
    return Split(
        name=name,
        protocol="holdout-n",
        description=f"{where}: {n} normal + {n} anomalous clips held out (seed {seed}), "
        f"{len(train)} normal clips train",
        train=train,
        test=test,
        seed=seed,
    )


def check_enough_normal(clips: Sequence[Clip], where: str) -> None:
    """Raise a :class:`DatasetError` that says how much audio is needed when there are fewer than
    :data:`MIN_NORMAL_CLIPS` normal clips."""
    n = sum(c.label == "normal" for c in clips)
    if n < MIN_NORMAL_CLIPS:
        raise DatasetError(
            f"{where}: {n} normal clip(s); training needs at least {MIN_NORMAL_CLIPS} (about "
            f"{MIN_NORMAL_CLIPS * 10} s of normal sound in 10 s clips, and 5 minutes or more train better): "
            "record more, e.g. edge-asd record OUT_DIR --seconds 600"
        )


def normal_only(clips: Sequence[Clip], *, seed: int) -> Split:
    """The normal-only protocol: hold out whole normal clips (seeded) for testing; anomalies, if any, test too.

    Unlabelled clips (DCASE evaluation sets) are left out. Training is on the remaining normal
    clips; the trainer holds out a further validation share of those for early stopping and the
    exported threshold.

    Raises
    ------
    DatasetError
        Fewer than :data:`MIN_NORMAL_CLIPS` normal clips (the message says how much audio is needed).
    """
    seed = _check_seed(seed)
    clips = _sorted(c for c in _nonempty(clips, "normal-only") if c.label != "unknown")
    machines = sorted({c.machine for c in clips})
    where = ",".join(machines) or "the data set"
    check_enough_normal(clips, where)
    normals = [c for c in clips if c.label == "normal"]
    anomalies = [c for c in clips if c.label == "anomaly"]
    name = _group_name("normal-only", *machines, f"seed{seed}")
    n_test = max(NORMAL_ONLY_MIN_TEST, int(round(NORMAL_ONLY_TEST_FRACTION * len(normals))))
    held = set(_rng(seed, name).choice(len(normals), size=n_test, replace=False).tolist())
    test = _sorted([normals[i] for i in held] + anomalies)
    train = [c for i, c in enumerate(normals) if i not in held]
    evaluation = (
        f"{len(anomalies)} anomalous clips: AUC and pAUC" if anomalies
        else "no anomalous clips: the normal score distribution and the expected false alarms, no AUC"
    )
    return Split(
        name=name,
        protocol="normal-only",
        description=f"{where}: {n_test} of {len(normals)} normal clips held out (seed {seed}) and {evaluation}; "
        f"{len(train)} normal clips train",
        train=train,
        test=test,
        seed=seed,
    )


def make_splits(clips: Sequence[Clip], protocol: str, *, seed: int = 0, n: int | None = None) -> list[Split]:
    """Split a dataset by a named protocol.

    ``"mimii"`` gives one split per machine type, ID and SNR; the other protocols one split per
    machine type (one model per machine type, as the DCASE baselines train).

    Parameters
    ----------
    clips
        From :func:`trainer.datasets.read_dataset`, possibly filtered.
    protocol
        One of :data:`PROTOCOLS`.
    seed
        Seed of the random choices (ignored by ``"dcase"``).
    n
        Clips of each class held out, for ``"holdout-n"`` only (required there).
    """
    if protocol not in PROTOCOLS:
        raise ParameterError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if n is not None and protocol != "holdout-n":
        raise ParameterError(f"n is only used by the 'holdout-n' protocol, not {protocol!r}")
    clips = _nonempty(clips, protocol)
    if protocol == "mimii":
        return mimii_splits(clips, seed=seed)
    groups = _by_machine(clips).values()
    if protocol == "dcase":
        return [dcase_split(g) for g in groups]
    if protocol == "supervised-8020":
        return [supervised_8020(g, seed=seed) for g in groups]
    if protocol == "normal-only":
        return [normal_only(g, seed=seed) for g in groups]
    if n is None:
        raise ParameterError("the 'holdout-n' protocol needs n (clips of each class held out)")
    return [holdout_n(g, n=n, seed=seed) for g in groups]
