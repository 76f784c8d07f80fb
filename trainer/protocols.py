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
``"leave-one-group-out"``
    A development protocol for domain shift on data sets whose clips carry attributes (DCASE
    2021+): one attribute group (e.g. ``car=B1``) plays the target domain. The model trains on the
    other groups' source-domain training clips; :data:`DEFAULT_SITE_CLIPS` of the held-out group's
    training clips (seeded) are its site clips, all that enrollment or a site memory bank may use,
    as DCASE gives 10 target-domain training clips; the group's test clips are the pseudo-target
    test set and the other groups' test clips the pseudo-source test set (the test clips' ``domain``
    is rewritten to say so, so the DCASE 2022+ per-domain metrics apply unchanged). Only
    source-domain clips take part: the data set's real target-domain clips are left out, so no
    choice made with this protocol ever sees them. Run it once per group and pool the folds.

Random choices use a generator derived from the seed *and the group's name*, so a group's split does
not change when other machines or IDs are added to or removed from the dataset.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from edge_asd.errors import DatasetError, ParameterError
from trainer.datasets import Clip

__all__ = [
    "PROTOCOLS",
    "DEFAULT_SITE_CLIPS",
    "LEAVE_ONE_GROUP_OUT",
    "Split",
    "dcase_split",
    "holdout_n",
    "holdout_groups",
    "leave_one_group_out",
    "parse_holdout_group",
    "make_splits",
    "mimii_splits",
    "normal_only",
    "supervised_8020",
    "MIN_NORMAL_CLIPS",
]

LEAVE_ONE_GROUP_OUT = "leave-one-group-out"
PROTOCOLS = ("mimii", "dcase", "supervised-8020", "holdout-n", "normal-only", LEAVE_ONE_GROUP_OUT)
DEFAULT_HOLDOUT_ATTRIBUTE = "car"
"""The attribute whose groups ``leave-one-group-out`` holds out when ``--holdout-group`` names a value only (ToyCar's car model)."""
DEFAULT_SITE_CLIPS = 10
"""Site clips of the held-out group: as many as DCASE 2022-2024 give of the target domain."""
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
    site: list[Clip] = field(default_factory=list)
    """``leave-one-group-out`` only: the held-out group's site clips (``domain="target"``), sorted by
    path; what enrollment or a site memory bank may use. Never in :attr:`train`."""
    holdout: tuple[str, str] | None = None
    """``leave-one-group-out`` only: the held-out ``(attribute, value)``."""

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


def parse_holdout_group(text: str | tuple[str, str]) -> tuple[str, str]:
    """``"car=B1"`` -> ``("car", "B1")``; a bare ``"B1"`` takes :data:`DEFAULT_HOLDOUT_ATTRIBUTE`.

    Raises
    ------
    ParameterError
        An empty attribute or value.
    """
    if isinstance(text, tuple):
        attribute, value = text
    else:
        attribute, sep, value = str(text).strip().partition("=")
        if not sep:
            attribute, value = DEFAULT_HOLDOUT_ATTRIBUTE, attribute
    attribute, value = attribute.strip(), value.strip()
    if not attribute or not value:
        raise ParameterError(f"holdout group must read ATTRIBUTE=VALUE (e.g. car=B1) or VALUE, got {text!r}")
    return attribute, value


def _source_clips_with_attributes(clips: Sequence[Clip], attribute: str) -> list[Clip]:
    """The source-domain clips (all clips where the layout gives no domain), checked for attributes and a split."""
    clips = _nonempty(clips, LEAVE_ONE_GROUP_OUT)
    if not any(c.attributes for c in clips):
        raise DatasetError(
            f"{clips[0].path}: the clips carry no attributes (a DCASE 2021+ layout gives them in the file names or "
            f"attributes_XX.csv); the '{LEAVE_ONE_GROUP_OUT}' protocol holds out one attribute group - use another "
            "protocol for this dataset"
        )
    no_split = [c for c in clips if c.split is None]
    if no_split:
        raise DatasetError(
            f"{no_split[0].path}: has no train/test folder; the '{LEAVE_ONE_GROUP_OUT}' protocol needs a DCASE layout"
        )
    source = [c for c in clips if c.domain in (None, "source")]
    known = sorted({k for c in source for k in c.attributes})
    if attribute not in known:
        raise DatasetError(
            f"{clips[0].path.parent.parent}: no clip has the attribute {attribute!r}; its attributes are "
            f"{', '.join(known) or 'none'} - e.g. --holdout-group {known[0] if known else 'ATTR'}=VALUE"
        )
    return _sorted(source)


def holdout_groups(clips: Sequence[Clip], attribute: str = DEFAULT_HOLDOUT_ATTRIBUTE, *,
                   site_clips: int = DEFAULT_SITE_CLIPS) -> list[str]:
    """The values of ``attribute`` that ``leave-one-group-out`` can hold out: source-domain groups with
    more than ``site_clips`` normal training clips and some test clips, sorted. The folds to pool."""
    source = _source_clips_with_attributes(clips, attribute)
    values = sorted({c.attributes.get(attribute) for c in source} - {None})
    out = []
    for v in values:
        members = [c for c in source if c.attributes.get(attribute) == v]
        n_train = sum(c.split == "train" and c.label == "normal" for c in members)
        if n_train >= site_clips and any(c.split == "test" for c in members):
            out.append(v)
    return out


def leave_one_group_out(clips: Sequence[Clip], *, group: str | tuple[str, str], seed: int,
                        site_clips: int = DEFAULT_SITE_CLIPS) -> Split:
    """Hold one attribute group out of training: the development protocol for domain shift.

    Train: the normal ``train/`` clips of every other group (source domain only). Site: a seeded
    choice of ``site_clips`` of the held-out group's normal ``train/`` clips (``domain="target"``);
    its other training clips are not used. Test: every ``test/`` clip of the source domain, the
    held-out group's marked ``domain="target"`` (pseudo-target) and the others' ``domain="source"``
    (pseudo-source). The data set's real target-domain clips are left out of all three.

    Parameters
    ----------
    group
        ``"car=B1"``, ``("car", "B1")`` or a bare value of :data:`DEFAULT_HOLDOUT_ATTRIBUTE`.
    site_clips
        Site clips, default :data:`DEFAULT_SITE_CLIPS` (DCASE's 10 target-domain training clips).

    Raises
    ------
    ParameterError
        A malformed group, ``site_clips`` < 1, a bad seed.
    DatasetError
        Clips without attributes or without a train/test split, an attribute or value no source-domain
        clip has, a held-out group with fewer than ``site_clips`` normal training clips or without
        test clips, unlabelled test clips, or too few training clips left.
    """
    attribute, value = parse_holdout_group(group)
    if not isinstance(site_clips, (int, np.integer)) or isinstance(site_clips, bool) or site_clips < 1:
        raise ParameterError(f"site_clips must be a positive integer, got {site_clips!r}")
    seed = _check_seed(seed)
    source = _source_clips_with_attributes(clips, attribute)
    machines = sorted({c.machine for c in source})
    where = ",".join(machines)
    values = sorted({c.attributes.get(attribute) for c in source} - {None})
    held = [c for c in source if c.attributes.get(attribute) == value]
    if not held:
        real_target = any(c.domain == "target" and c.attributes.get(attribute) == value for c in clips)
        raise DatasetError(
            f"{where}: no source-domain clip has {attribute}={value}"
            + (" (its clips are the real target domain, which this protocol leaves out)" if real_target else "")
            + f"; hold out one of {attribute}={', '.join(values)}"
        )
    rest = [c for c in source if c.attributes.get(attribute) != value]
    held_train = [c for c in held if c.split == "train" and c.label == "normal"]
    held_test = _labelled([c for c in held if c.split == "test"], LEAVE_ONE_GROUP_OUT)
    if len(held_train) < site_clips:
        raise DatasetError(
            f"{where}: {attribute}={value} has {len(held_train)} normal training clip(s), {site_clips} site clips are "
            f"needed; lower --site-clips or hold out another group ({', '.join(holdout_groups(clips, attribute, site_clips=site_clips)) or 'none qualifies'})"
        )
    if not held_test:
        raise DatasetError(f"{where}: {attribute}={value} has no test clips to be the pseudo-target test set; hold out another group")
    train = _sorted(c for c in rest if c.split == "train" and c.label == "normal")
    check_enough_normal(train, f"{where} without {attribute}={value}")
    name = _group_name(LEAVE_ONE_GROUP_OUT, *machines, f"{attribute}-{value}", f"k{site_clips}", f"seed{seed}")
    chosen = sorted(_rng(seed, name).choice(len(held_train), size=site_clips, replace=False).tolist())
    site = [dataclasses.replace(held_train[i], domain="target") for i in chosen]
    test = _sorted([dataclasses.replace(c, domain="source") for c in _labelled([c for c in rest if c.split == "test"], LEAVE_ONE_GROUP_OUT)]
                   + [dataclasses.replace(c, domain="target") for c in held_test])
    n_tn = sum(c.label == "normal" for c in held_test)
    return Split(
        name=name,
        protocol=LEAVE_ONE_GROUP_OUT,
        description=f"{where}: {attribute}={value} held out as the pseudo-target domain ({site_clips} of its "
        f"{len(held_train)} training clips are site clips, seed {seed}; its {len(held_test)} test clips, {n_tn} normal, "
        f"are the pseudo-target test set); {len(train)} normal clips of the other groups train; real target-domain clips left out",
        train=train,
        test=test,
        seed=seed,
        site=site,
        holdout=(attribute, value),
    )


def make_splits(clips: Sequence[Clip], protocol: str, *, seed: int = 0, n: int | None = None,
                holdout_group: str | tuple[str, str] | None = None, site_clips: int = DEFAULT_SITE_CLIPS) -> list[Split]:
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
    holdout_group, site_clips
        For ``"leave-one-group-out"`` only: the group held out (``"car=B1"``, required there) and
        how many of its training clips are site clips.
    """
    if protocol not in PROTOCOLS:
        raise ParameterError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if n is not None and protocol != "holdout-n":
        raise ParameterError(f"n is only used by the 'holdout-n' protocol, not {protocol!r}")
    if holdout_group is not None and protocol != LEAVE_ONE_GROUP_OUT:
        raise ParameterError(f"a holdout group is only used by the '{LEAVE_ONE_GROUP_OUT}' protocol, not {protocol!r}")
    clips = _nonempty(clips, protocol)
    if protocol == LEAVE_ONE_GROUP_OUT:
        if holdout_group is None:
            raise ParameterError(f"the '{LEAVE_ONE_GROUP_OUT}' protocol needs the group to hold out, e.g. --holdout-group "
                                 f"{DEFAULT_HOLDOUT_ATTRIBUTE}=B1")
        return [leave_one_group_out(g, group=holdout_group, seed=seed, site_clips=site_clips) for g in _by_machine(clips).values()]
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
