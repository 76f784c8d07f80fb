"""Dataset readers: the real sample folders, synthetic trees of every layout, and malformed folders."""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge_asd.audio import write_wav
from edge_asd.errors import DatasetError, ParameterError
from trainer.datasets import (
    LAYOUTS,
    Clip,
    attribute_group,
    count_clips,
    detect_layout,
    filter_clips,
    read_dataset,
    scan_dataset,
)

TINY = np.zeros((16, 1), dtype=np.float32)  # 1 ms of silence: a valid wav, cheap to write


def touch_wav(path: Path) -> Path:
    write_wav(path, TINY, 16000)
    return path


def make_tree(root: Path, rel_paths: list[str]) -> Path:
    for rel in rel_paths:
        touch_wav(root / rel)
    return root


def mimii_paths(snrs=("6", "-6"), machines=("fan", "valve"), ids=("id_00", "id_02"), n_normal=3, n_abnormal=2):
    out = []
    for snr in snrs:
        for m in machines:
            for i in ids:
                out += [f"{snr}_dB_{m}/{m}/{i}/normal/{k:08d}.wav" for k in range(n_normal)]
                out += [f"{snr}_dB_{m}/{m}/{i}/abnormal/{k:08d}.wav" for k in range(n_abnormal)]
    return out


# --------------------------------------------------------------------------------------------
# real folders
# --------------------------------------------------------------------------------------------


def test_mimii_samples_machine_folder_as_root(mimii_samples: Path) -> None:
    clips = read_dataset(mimii_samples)
    assert detect_layout(mimii_samples) == "mimii"
    assert len(clips) == 4
    assert {c.machine for c in clips} == {"valve"}
    assert all(c.snr_db is None and c.split is None and c.domain is None for c in clips)
    assert count_clips(clips, "id", "label") == Counter(
        {("id_00", "normal"): 2, ("id_06", "normal"): 1, ("id_06", "anomaly"): 1}
    )
    assert [c.path for c in clips] == sorted(c.path for c in clips)
    # the machine folder itself as the root gives the same clips
    assert read_dataset(mimii_samples / "valve") == clips


def test_dcase2020_samples(dcase2020_samples: Path) -> None:
    layout, clips = scan_dataset(dcase2020_samples)
    assert layout == "dcase2020"
    assert count_clips(clips, "machine", "id", "split", "label") == Counter(
        {("unknown", "id_00", "train", "normal"): 75, ("unknown", "id_00", "test", "anomaly"): 1}
    )
    anomaly = next(c for c in clips if c.is_anomaly)
    assert anomaly.path.name == "anomaly_id_00_00000000.wav"


def test_dcase2023_toycar_counts_domains_and_attributes(dcase2023_toycar: Path) -> None:
    clips = read_dataset(dcase2023_toycar)
    assert detect_layout(dcase2023_toycar) == "dcase"
    train = filter_clips(clips, split="train")
    test = filter_clips(clips, split="test")
    assert len(train) == 340 and len(test) == 100
    assert count_clips(train, "domain", "label") == Counter({("source", "normal"): 330, ("target", "normal"): 10})
    assert count_clips(test, "domain", "label") == Counter({("source", "normal"): 50, ("source", "anomaly"): 50})
    assert {c.machine for c in clips} == {"ToyCar"} and {c.id for c in clips} == {"section_00"}
    # attributes come from attributes_00.csv, in column order
    target = next(c for c in train if c.domain == "target")
    assert list(target.attributes) == ["car", "spd", "mic"]
    assert target.attributes["mic"] == "2"
    assert target.attributes["car"] == target.path.stem.split("_car_")[1].split("_")[0]
    assert attribute_group(target).startswith("ToyCar/section_00/car_")
    groups = {attribute_group(c) for c in train}
    assert len(groups) > 6  # cars x speeds x mics: a real multi-class objective


# --------------------------------------------------------------------------------------------
# synthetic trees
# --------------------------------------------------------------------------------------------


def test_full_mimii_tree(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "mimii", mimii_paths())
    clips = read_dataset(root)
    assert len(clips) == 2 * 2 * 2 * 5
    assert {c.snr_db for c in clips} == {6.0, -6.0}
    assert count_clips(clips, "label") == Counter({("normal",): 24, ("anomaly",): 16})
    one = filter_clips(clips, machine="fan", ids=["00"], snr_db=-6)
    assert len(one) == 5 and all(c.machine == "fan" and c.id == "id_00" and c.snr_db == -6.0 for c in one)
    assert filter_clips(clips, machine="fan", ids="id_00", snr_db=-6) == one
    assert filter_clips(clips, ids=0, machine=["fan"], snr_db=[-6.0]) == one
    assert attribute_group(one[0]) == "fan/id_00"
    # deterministic: a second listing is identical
    assert read_dataset(root) == clips


def test_mimii_snr_folder_as_root(tmp_path: Path) -> None:
    root = make_tree(tmp_path, mimii_paths(snrs=("0",), machines=("pump",)))
    clips = read_dataset(root / "0_dB_pump")
    assert {(c.machine, c.snr_db) for c in clips} == {("pump", 0.0)}
    clips = read_dataset(root / "0_dB_pump" / "pump")  # one machine folder inside an SNR folder
    assert {(c.machine, c.snr_db) for c in clips} == {("pump", 0.0)}


def test_dcase2020_tree_with_unlabelled_eval_clips(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path / "dev",
        ["fan/train/normal_id_00_00000000.wav", "fan/test/anomaly_id_02_00000001.wav", "fan/test/id_04_00000002.wav"],
    )
    clips = read_dataset(root)
    assert [(c.id, c.split, c.label) for c in clips] == [
        ("id_02", "test", "anomaly"),
        ("id_04", "test", "unknown"),
        ("id_00", "train", "normal"),
    ]


def test_dcase2021_tree_attributes_from_file_names(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path / "dev",
        [
            "ToyTrain/train/section_01_source_train_normal_0000_car_A1_spd_28V.wav",
            "ToyTrain/test/section_01_target_test_anomaly_0001_car_B2_spd_31V.wav",
            "slider/train/section_00_source_train_normal_0000_noAttribute.wav",
            "slider/test/section_00_0003.wav",
        ],
    )
    clips = {c.path.name: c for c in read_dataset(root)}
    a = clips["section_01_source_train_normal_0000_car_A1_spd_28V.wav"]
    assert (a.machine, a.id, a.domain, a.split, a.label) == ("ToyTrain", "section_01", "source", "train", "normal")
    assert dict(a.attributes) == {"car": "A1", "spd": "28V"}
    assert attribute_group(a) == "ToyTrain/section_01/car_A1_spd_28V"
    b = clips["section_01_target_test_anomaly_0001_car_B2_spd_31V.wav"]
    assert (b.domain, b.label, b.is_anomaly) == ("target", "anomaly", True)
    assert dict(clips["section_00_source_train_normal_0000_noAttribute.wav"].attributes) == {}
    ev = clips["section_00_0003.wav"]
    assert (ev.label, ev.domain, ev.split, ev.is_anomaly) == ("unknown", None, "test", False)


def test_attribute_csv_overrides_file_name(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "dev", ["bearing/train/section_00_source_train_normal_0000_vel_6_loc_A.wav"])
    (root / "bearing" / "attributes_00.csv").write_text(
        "file_name,d1p,d1v,d2p,d2v\nbearing/train/section_00_source_train_normal_0000_vel_6_loc_A.wav,vel,6,loc,B\n"
    )
    (clip,) = read_dataset(root)
    assert dict(clip.attributes) == {"vel": "6", "loc": "B"}


def test_plain_folder(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "press_line_3", ["normal/a.wav", "normal/b.wav", "abnormal/c.wav"])
    clips = read_dataset(root)
    assert detect_layout(root) == "folder"
    assert [(c.machine, c.id, c.label) for c in clips] == [
        ("press_line_3", "", "anomaly"),
        ("press_line_3", "", "normal"),
        ("press_line_3", "", "normal"),
    ]
    assert attribute_group(clips[0]) == "press_line_3"
    only_normal = make_tree(tmp_path / "site", ["normal/a.wav"])
    assert [c.label for c in read_dataset(only_normal)] == ["normal"]


def test_forced_layout(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "d", ["normal/a.wav"])
    assert len(read_dataset(root, layout="folder")) == 1
    with pytest.raises(DatasetError, match=r"do not follow the 'mimii' layout.*a\.wav"):
        read_dataset(root, layout="mimii")
    with pytest.raises(ParameterError, match="layout must be"):
        read_dataset(root, layout="dcase2019")


def test_listing_never_decodes_audio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_tree(tmp_path / "mimii", mimii_paths(n_normal=20))

    def refuse(*args, **kwargs):
        raise AssertionError("audio was decoded while listing")

    monkeypatch.setattr("scipy.io.wavfile.read", refuse)
    monkeypatch.setattr("edge_asd.audio.wav.read_wav", refuse)
    assert len(read_dataset(root)) == 2 * 2 * 2 * 22


def test_clip_is_frozen_hashable_and_picklable(tmp_path: Path) -> None:
    clip = Clip(path=tmp_path / "a.wav", machine="ToyCar", id="section_00", label="normal", attributes={"car": "A1"})
    assert {clip, clip} == {clip}
    assert pickle.loads(pickle.dumps(clip)) == clip
    assert clip.attributes == {"car": "A1"}
    with pytest.raises(AttributeError):
        clip.label = "anomaly"  # type: ignore[misc]
    with pytest.raises(TypeError):
        clip.attributes["car"] = "B1"  # type: ignore[index]
    with pytest.raises(ParameterError, match="label"):
        Clip(path=tmp_path / "a.wav", machine="fan", label="abnormal")
    assert not clip.is_anomaly


# --------------------------------------------------------------------------------------------
# malformed folders: every error names the path
# --------------------------------------------------------------------------------------------


def test_missing_and_non_folder_roots(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=f"{tmp_path / 'nope'}.*no such folder"):
        read_dataset(tmp_path / "nope")
    f = touch_wav(tmp_path / "x.wav")
    with pytest.raises(DatasetError, match="is a file"):
        read_dataset(f)


def test_no_wav_files(tmp_path: Path) -> None:
    (tmp_path / "normal").mkdir()
    (tmp_path / "normal" / "notes.txt").write_text("no audio here")
    with pytest.raises(DatasetError, match=f"{tmp_path}: no wav files"):
        read_dataset(tmp_path)


def test_unknown_layout(tmp_path: Path) -> None:
    make_tree(tmp_path, ["recordings/monday/a.wav"])
    with pytest.raises(DatasetError, match=r"match no known layout.*recordings/monday/a\.wav"):
        detect_layout(tmp_path)


def test_stray_file_in_a_known_layout(tmp_path: Path) -> None:
    make_tree(tmp_path, mimii_paths(snrs=("6",), machines=("fan",), ids=("id_00",)) + ["6_dB_fan/stray.wav"])
    with pytest.raises(DatasetError, match=r"1 of 6 wav files match no known layout.*the others look like 'mimii'.*stray\.wav"):
        read_dataset(tmp_path)


def test_mixed_layouts(tmp_path: Path) -> None:
    make_tree(tmp_path, ["normal/a.wav", "fan/id_00/normal/00000000.wav"])
    with pytest.raises(DatasetError, match=r"mixed layouts.*'mimii'.*'folder'"):
        read_dataset(tmp_path)


def test_unreadable_file(tmp_path: Path) -> None:
    make_tree(tmp_path, ["normal/good.wav"])
    bad = tmp_path / "normal" / "bad.wav"
    bad.write_bytes(b"this is not a wav file at all")
    with pytest.raises(DatasetError, match=f"{bad}: not a wav file"):
        read_dataset(tmp_path)
    empty = tmp_path / "normal" / "empty.wav"
    bad.unlink()
    empty.write_bytes(b"")
    with pytest.raises(DatasetError, match=f"{empty}: not a wav file"):
        read_dataset(tmp_path)
    assert len(read_dataset(tmp_path, check_headers=False)) == 2


def test_bad_attribute_table(tmp_path: Path) -> None:
    root = make_tree(tmp_path, ["gearbox/train/section_00_source_train_normal_0000_volt_1.0.wav"])
    table = root / "gearbox" / "attributes_00.csv"
    table.write_text("name,d1p\nx,y\n")
    with pytest.raises(DatasetError, match=f"{table}: not a DCASE attribute table"):
        read_dataset(root)


# --------------------------------------------------------------------------------------------
# asd-train inspect
# --------------------------------------------------------------------------------------------


def test_inspect_cli(tmp_path: Path) -> None:
    from trainer.cli import cli

    root = make_tree(tmp_path / "mimii", mimii_paths(machines=("fan",), ids=("id_00",)))
    result = CliRunner().invoke(cli, ["inspect", str(root)])
    assert result.exit_code == 0, result.output
    assert "layout 'mimii', 10 clips" in result.output
    lines = [line.split() for line in result.output.splitlines()[2:]]
    assert ["fan", "id_00", "6", "dB", "-", "-", "3", "2", "0", "5"] in lines
    assert ["total", "6", "4", "0", "10"] in lines
    forced = CliRunner().invoke(cli, ["inspect", str(root), "--layout", "folder"])
    assert isinstance(forced.exception, DatasetError)
    help_text = CliRunner().invoke(cli, ["inspect", "--help"]).output
    assert all(layout in help_text for layout in LAYOUTS)
