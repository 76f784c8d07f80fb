"""The leave-one-group-out protocol (issue 18): a pseudo-target domain made of one attribute group,
on a tiny DCASE 2023-style folder whose file names carry the attributes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from edge_asd.audio import write_wav
from edge_asd.errors import DatasetError, ParameterError
from trainer.datasets import read_dataset
from trainer.fit_cli import select_split
from trainer.protocols import holdout_groups, leave_one_group_out, make_splits, parse_holdout_group

TINY = np.zeros((16, 1), dtype=np.float32)  # 1 ms of silence: a valid wav, cheap to write
CARS = {"B1": 14, "C1": 12, "D1": 16}
"""Source cars and their normal training clips."""


def _wav(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(path, TINY, 16000)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    """ToyCar-like: three source cars (train + test, C1 with anomalous test clips only, as in the real
    subset) and a real target-domain car A1 with three training clips and two test clips."""
    root = tmp_path_factory.mktemp("dev")
    n = 0
    for car, n_train in CARS.items():
        for i in range(n_train):
            n += 1
            _wav(root / f"ToyCar/train/section_00_source_train_normal_{n:04d}_car_{car}_spd_{31 + i % 2 * 3}V_mic_1.wav")
        for label, count in (("normal", 0 if car == "C1" else 3), ("anomaly", 2)):
            for _ in range(count):
                n += 1
                _wav(root / f"ToyCar/test/section_00_source_test_{label}_{n:04d}_car_{car}_spd_31V_mic_1.wav")
    for i in range(3):
        _wav(root / f"ToyCar/train/section_00_target_train_normal_{i:04d}_car_A1_spd_28V_mic_2.wav")
    for label in ("normal", "anomaly"):
        _wav(root / f"ToyCar/test/section_00_target_test_{label}_0000_car_A1_spd_28V_mic_2.wav")
    return root


def test_whole_group_held_out_k_site_clips_and_disjoint_sets(toy: Path) -> None:
    clips = read_dataset(toy, layout="auto")
    assert holdout_groups(clips) == ["B1", "C1", "D1"]  # A1 is the real target domain: never a fold
    s = leave_one_group_out(clips, group="car=D1", seed=0)
    assert s.protocol == "leave-one-group-out" and s.holdout == ("car", "D1")
    # No clip of D1 trains; every other source car's training clip does.
    assert Counter(c.attributes["car"] for c in s.train) == {"B1": 14, "C1": 12}
    assert all(c.label == "normal" and c.split == "train" for c in s.train)
    # K = 10 site clips, all D1 training clips, marked as the (pseudo-)target domain.
    assert len(s.site) == 10 and all(c.attributes["car"] == "D1" and c.split == "train" and c.domain == "target" for c in s.site)
    # Test: D1's test clips are the pseudo-target set, the others' the pseudo-source set.
    assert Counter((c.attributes["car"], c.domain, c.label) for c in s.test) == {
        ("D1", "target", "normal"): 3, ("D1", "target", "anomaly"): 2, ("B1", "source", "normal"): 3,
        ("B1", "source", "anomaly"): 2, ("C1", "source", "anomaly"): 2}
    paths = [{c.path for c in part} for part in (s.train, s.site, s.test)]
    assert sum(map(len, paths)) == len(set().union(*paths)), "a clip is in two sets"
    assert not any("target" in c.path.name for part in (s.train, s.site, s.test) for c in part), "real target clips leaked"


def test_site_choice_is_seeded(toy: Path) -> None:
    clips = read_dataset(toy, layout="auto")
    site = {seed: [c.path for c in leave_one_group_out(clips, group="D1", seed=seed).site] for seed in range(4)}
    assert site[0] == [c.path for c in leave_one_group_out(clips, group=("car", "D1"), seed=0).site]
    assert len({tuple(v) for v in site.values()}) > 1  # 10 of 16: four seeds cannot all draw the same
    # The training and test sets do not depend on the seed; only the site clips do.
    a, b = (leave_one_group_out(clips, group="D1", seed=seed) for seed in (0, 1))
    assert a.train == b.train and a.test == b.test


def test_errors_name_what_to_do(toy: Path, tmp_path: Path) -> None:
    clips = read_dataset(toy, layout="auto")
    with pytest.raises(DatasetError, match=r"no clip has the attribute 'colour'.*car, mic, spd"):
        leave_one_group_out(clips, group="colour=red", seed=0)
    with pytest.raises(DatasetError, match=r"no source-domain clip has car=A1 \(its clips are the real target domain"):
        leave_one_group_out(clips, group="A1", seed=0)
    with pytest.raises(DatasetError, match=r"car=C1 has 12 normal training clip\(s\), 13 site clips are needed.*\(B1, D1\)"):
        leave_one_group_out(clips, group="C1", seed=0, site_clips=13)
    with pytest.raises(ParameterError, match="ATTRIBUTE=VALUE"):
        parse_holdout_group("car=")
    with pytest.raises(ParameterError, match="needs the group to hold out"):
        make_splits(clips, "leave-one-group-out")
    with pytest.raises(ParameterError, match="only used by the 'leave-one-group-out' protocol"):
        make_splits(clips, "dcase", holdout_group="B1")
    plain = tmp_path / "plain"
    for i in range(12):
        _wav(plain / "normal" / f"clip_{i:02d}.wav")
    with pytest.raises(DatasetError, match="carry no attributes"):
        leave_one_group_out(read_dataset(plain, layout="auto"), group="B1", seed=0)


def test_asd_train_split_gives_site_clips_as_target_domain(toy: Path) -> None:
    # What asd-train fit / evaluate read: the site clips come with the training clips as target-domain
    # clips (they fill a back end's site slot; fit_bundle keeps them out of the model's training).
    train, test, name, protocol = select_split(toy, protocol="leave-one-group-out", holdout_group="car=B1", site_clips=5, seed=3)
    assert protocol == "leave-one-group-out" and "car-B1_k5_seed3" in name
    assert Counter((c.attributes["car"], c.domain) for c in train) == {("C1", "source"): 12, ("D1", "source"): 16, ("B1", "target"): 5}
    assert {c.domain for c in test if c.attributes["car"] == "B1"} == {"target"}


def test_benchmark_pools_only_the_folds_that_define_a_metric() -> None:
    from benchmarks.toycar_domain import markdown, pooled

    def row(car, variant, target):
        why = {} if target is not None else {"auc_target": "no target-domain normal clips"}
        return {"car": car, "seed": 0, "variant": variant, "auc_source": 0.7, "auc_target": target, "pauc": 0.5,
                "score": None if target is None else 0.6, "auc_target_within": target, "not_measurable": why,
                "counts": {"source_normal": 40, "source_anomaly": 40, "target_normal": 0 if target is None else 9,
                           "target_anomaly": 9}, "train_time_s": 1.0, "epochs_run": 1}

    rows = [row("B1", "factory", 0.6), row("B2", "factory", 0.8), row("C1", "factory", None),
            row("B1", "enrolled", 0.7), row("B2", "enrolled", 0.9), row("C1", "enrolled", None)]
    pool = {p["variant"]: p for p in pooled(rows, ["factory", "enrolled"])}
    assert pool["factory"]["auc_target"]["n"] == 2 and pool["factory"]["auc_target"]["mean"] == pytest.approx(0.7)
    assert pool["factory"]["auc_source"]["n"] == 3
    text = markdown(rows, list(pool.values()), {"command": "x", "recipe": "r", "epochs": 1, "seeds": [0], "site_clips": 10})
    assert "| C1 | 0 | factory | 40 / 40, 0 / 9 | 0.7000 | n/m |" in text
    assert "car C1 held out (it is the target domain): AUC (target) not measurable" in text
    assert "| enrolled | +0.0000 ± 0.0000 (n=3) | +0.1000 ± 0.0000 (n=2) |" in text  # paired with factory per fold
