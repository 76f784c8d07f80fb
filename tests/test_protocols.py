"""Evaluation protocols: exact counts, disjoint sets, seeding, and clear errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from edge_asd.errors import DatasetError, ParameterError
from trainer.datasets import Clip, read_dataset
from trainer.protocols import MIN_NORMAL_CLIPS, PROTOCOLS, dcase_split, holdout_n, make_splits, mimii_splits, normal_only, supervised_8020


def mimii_clips(machines=("fan", "valve"), ids=("id_00", "id_02"), snrs=(6.0, -6.0), n_normal=20, n_abnormal=6):
    clips = []
    for m in machines:
        for i in ids:
            for snr in snrs:
                for label, count in (("normal", n_normal), ("anomaly", n_abnormal)):
                    folder = "normal" if label == "normal" else "abnormal"
                    clips += [
                        Clip(path=Path(f"/d/{snr:g}_dB_{m}/{m}/{i}/{folder}/{k:08d}.wav"), machine=m, id=i, snr_db=snr, label=label)
                        for k in range(count)
                    ]
    return clips


def assert_disjoint(split) -> None:
    assert not set(split.train) & set(split.test)
    assert split.train == sorted(split.train, key=lambda c: c.path)
    assert split.test == sorted(split.test, key=lambda c: c.path)


def test_mimii_exact_counts_and_disjoint() -> None:
    clips = mimii_clips()
    splits = mimii_splits(clips, seed=0)
    assert len(splits) == 2 * 2 * 2
    assert len({s.name for s in splits}) == len(splits)
    seen = set()
    for s in splits:
        assert_disjoint(s)
        assert s.protocol == "mimii" and not s.reported_apart
        assert s.counts == {"train_normal": 14, "train_anomaly": 0, "test_normal": 6, "test_anomaly": 6, "test_unknown": 0}
        group = {(c.machine, c.id, c.snr_db) for c in s.train + s.test}
        assert len(group) == 1  # one machine / ID / SNR per split
        seen |= set(s.train) | set(s.test)
    assert seen == set(clips)  # every clip used exactly once
    assert splits[0].name == "mimii_fan_id_00_6dB"


def test_mimii_seeding() -> None:
    clips = mimii_clips()
    a, b, c = (mimii_splits(clips, seed=s) for s in (0, 0, 1))
    assert [s.test for s in a] == [s.test for s in b]
    assert [s.test for s in a] != [s.test for s in c]
    # a group's split does not depend on which other groups are present
    only_fan = mimii_splits([x for x in clips if x.machine == "fan"], seed=0)
    assert [s.test for s in only_fan] == [s.test for s in a if s.name.startswith("mimii_fan")]


def test_mimii_errors() -> None:
    clips = mimii_clips(machines=("fan",), ids=("id_00",), snrs=(0.0,))
    with pytest.raises(DatasetError, match="fan id_00 at 0 dB: no anomalous clips"):
        mimii_splits([c for c in clips if c.label == "normal"], seed=0)
    few = mimii_clips(machines=("fan",), ids=("id_00",), snrs=(0.0,), n_normal=6, n_abnormal=6)
    with pytest.raises(DatasetError, match="6 normal and 6 anomalous"):
        mimii_splits(few, seed=0)
    unlabelled = [*clips, Clip(path=Path("/d/x.wav"), machine="fan", id="id_00", snr_db=0.0)]
    with pytest.raises(DatasetError, match=r"/d/x\.wav.*needs labels"):
        mimii_splits(unlabelled, seed=0)
    with pytest.raises(ParameterError, match="seed"):
        mimii_splits(clips, seed=-1)


def test_dcase_split_on_real_toycar(dcase2023_toycar: Path) -> None:
    clips = read_dataset(dcase2023_toycar)
    split = dcase_split(clips)
    assert_disjoint(split)
    assert split.counts == {"train_normal": 340, "train_anomaly": 0, "test_normal": 50, "test_anomaly": 50, "test_unknown": 0}
    assert all(c.split == "train" for c in split.train) and all(c.split == "test" for c in split.test)
    assert split.seed is None and split.name == "dcase_ToyCar"


def test_dcase_split_errors_and_unlabelled_test() -> None:
    def clip(name, split, label):
        return Clip(path=Path(f"/d/fan/{split}/{name}.wav"), machine="fan", id="id_00", split=split, label=label)

    ok = dcase_split([clip("a", "train", "normal"), clip("b", "test", "unknown")])
    assert ok.counts["test_unknown"] == 1
    with pytest.raises(DatasetError, match=r"anomaly clip in a train/ folder"):
        dcase_split([clip("a", "train", "anomaly"), clip("b", "test", "normal")])
    with pytest.raises(DatasetError, match="no clips in the test/ folder"):
        dcase_split([clip("a", "train", "normal")])
    with pytest.raises(DatasetError, match="has no train/test folder"):
        dcase_split(mimii_clips(n_normal=2, n_abnormal=1))


def test_supervised_8020_is_stratified_and_flagged() -> None:
    clips = mimii_clips(machines=("pump",), ids=("id_00",), snrs=(0.0,), n_normal=40, n_abnormal=10)
    split = supervised_8020(clips, seed=0)
    assert_disjoint(split)
    assert split.reported_apart and "reported apart" in split.description
    assert split.counts == {"train_normal": 32, "train_anomaly": 8, "test_normal": 8, "test_anomaly": 2, "test_unknown": 0}
    assert set(split.train) | set(split.test) == set(clips)
    assert supervised_8020(clips, seed=0).test == split.test
    assert supervised_8020(clips, seed=1).test != split.test
    with pytest.raises(DatasetError, match="at least 2 anomaly"):
        supervised_8020(clips[:41], seed=0)


def test_supervised_8020_stratifies_by_group_when_possible() -> None:
    clips = mimii_clips(machines=("fan",), ids=("id_00", "id_02"), snrs=(6.0,), n_normal=20, n_abnormal=10)
    split = supervised_8020(clips, seed=3)
    per_group = Counter((c.id, c.label) for c in split.test)
    assert per_group == Counter({("id_00", "normal"): 4, ("id_02", "normal"): 4, ("id_00", "anomaly"): 2, ("id_02", "anomaly"): 2})


def test_holdout_n_exact_counts() -> None:
    clips = mimii_clips(machines=("slider",), ids=("id_00",), snrs=(0.0,), n_normal=30, n_abnormal=8)
    split = holdout_n(clips, n=5, seed=4)
    assert_disjoint(split)
    assert split.counts == {"train_normal": 25, "train_anomaly": 0, "test_normal": 5, "test_anomaly": 5, "test_unknown": 0}
    repeats = [holdout_n(clips, n=5, seed=s).test for s in range(5)]
    assert len({tuple(c.path for c in t) for t in repeats}) == 5  # repeated over seeds: different hold-outs
    assert holdout_n(clips, n=5, seed=4).test == split.test
    with pytest.raises(DatasetError, match="n=9 but only 8 anomalous"):
        holdout_n(clips, n=9, seed=0)
    with pytest.raises(DatasetError, match="none would be left to train"):
        holdout_n([c for c in clips if c.label == "anomaly"] + [c for c in clips if c.label == "normal"][:3], n=3, seed=0)
    with pytest.raises(ParameterError, match="n must be a positive integer"):
        holdout_n(clips, n=0, seed=0)


def test_make_splits_dispatch() -> None:
    clips = mimii_clips(n_normal=10, n_abnormal=4)
    assert PROTOCOLS == ("mimii", "dcase", "supervised-8020", "holdout-n", "normal-only", "leave-one-group-out")
    assert len(make_splits(clips, "mimii", seed=1)) == 8
    per_machine = make_splits(clips, "holdout-n", seed=1, n=3)
    assert [s.name for s in per_machine] == ["holdout-n_fan_n3_seed1", "holdout-n_valve_n3_seed1"]
    assert all({c.machine for c in s.train + s.test} == {s.name.split("_")[1]} for s in per_machine)
    sup = make_splits(clips, "supervised-8020", seed=0)
    assert len(sup) == 2 and all(s.reported_apart for s in sup)
    with pytest.raises(ParameterError, match="protocol must be one of"):
        make_splits(clips, "dcase2020")
    with pytest.raises(ParameterError, match="needs n"):
        make_splits(clips, "holdout-n")
    with pytest.raises(ParameterError, match="only used by"):
        make_splits(clips, "mimii", n=3)
    with pytest.raises(DatasetError, match="no clips"):
        make_splits([], "mimii")


def test_normal_only_holds_out_whole_normal_clips_and_tests_every_anomaly() -> None:
    clips = mimii_clips(machines=("fan",), ids=("id_00",), snrs=(6.0,), n_normal=30, n_abnormal=5)
    split = normal_only(clips, seed=3)
    assert_disjoint(split)
    counts = split.counts
    assert counts == {"train_normal": 24, "train_anomaly": 0, "test_normal": 6, "test_anomaly": 5, "test_unknown": 0}
    assert split.protocol == "normal-only" and not split.reported_apart
    assert normal_only(clips, seed=3).test == split.test  # seeded
    assert normal_only(clips, seed=4).test != split.test
    assert "AUC and pAUC" in split.description


def test_normal_only_needs_no_anomalies_and_says_what_it_measures() -> None:
    normals = mimii_clips(machines=("fan",), ids=("id_00",), snrs=(6.0,), n_normal=10, n_abnormal=0)
    split = normal_only(normals, seed=0)
    assert split.counts["test_normal"] == 2 and split.counts["train_normal"] == 8 and split.counts["test_anomaly"] == 0
    assert "no AUC" in split.description
    # the protocols that test on anomalies point to it
    with pytest.raises(DatasetError, match="normal-only"):
        mimii_splits(normals, seed=0)
    with pytest.raises(DatasetError, match="normal-only"):
        holdout_n(normals, n=2, seed=0)
    with pytest.raises(DatasetError, match="normal-only"):
        supervised_8020(normals, seed=0)


def test_normal_only_too_few_clips_says_how_much_audio_is_needed() -> None:
    few = mimii_clips(machines=("fan",), ids=("id_00",), snrs=(6.0,), n_normal=MIN_NORMAL_CLIPS - 1, n_abnormal=3)
    with pytest.raises(DatasetError, match=r"9 normal clip\(s\); training needs at least 10 .*edge-asd record"):
        make_splits(few, "normal-only")
