"""The synthetic MIMII-like generator: layout, determinism, mixing, array channels, and difficulty."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.io.wavfile
import scipy.signal
from click.testing import CliRunner

from edge_asd.audio import read_wav
from edge_asd.errors import ParameterError
from trainer.datasets import count_clips, read_dataset
from trainer.synth import (
    ARRAY_RADIUS_M,
    FAULTS,
    MACHINES,
    SEVERITIES,
    SPEED_OF_SOUND_M_S,
    clip_path,
    generate_dataset,
    mahalanobis_auc,
    synth_clip,
)


def test_exact_mimii_layout_and_format(tmp_path: Path) -> None:
    paths = generate_dataset(
        tmp_path, machines=MACHINES, ids=("00", "02"), snrs_db=(6, -6), n_normal=2, n_abnormal=1,
        channels=8, duration_s=0.5, seed=1,
    )
    assert len(paths) == 4 * 2 * 2 * 3
    assert tmp_path / "-6_dB_valve" / "valve" / "id_02" / "abnormal" / "00000000.wav" in paths
    assert tmp_path / "6_dB_fan" / "fan" / "id_00" / "normal" / "00000001.wav" in paths
    sr, data = scipy.io.wavfile.read(paths[0])
    assert (sr, data.dtype, data.shape) == (16000, np.int16, (8000, 8))
    clips = read_dataset(tmp_path)
    assert {c.path for c in clips} == set(paths)  # the manifest beside the wavs is ignored
    assert count_clips(clips, "snr_db", "label")[(-6.0, "anomaly")] == 4 * 2
    with (tmp_path / "synth_manifest.csv").open() as fh:
        manifest = list(csv.DictReader(fh))
    assert len(manifest) == len(paths)
    faults = {r["fault"] for r in manifest if r["label"] == "anomaly"}
    assert faults <= {f for fs in FAULTS.values() for f in fs} and "" not in faults


def test_deterministic_and_subset_reproducible(tmp_path: Path) -> None:
    kwargs = dict(machines=("pump",), ids=("00",), snrs_db=(0,), n_normal=3, n_abnormal=2, channels=2, duration_s=0.5)
    paths = generate_dataset(tmp_path / "a", seed=5, **kwargs)
    again = generate_dataset(tmp_path / "b", seed=5, **kwargs)
    parallel = generate_dataset(tmp_path / "p", seed=5, workers=2, **kwargs)
    other = generate_dataset(tmp_path / "c", seed=6, **kwargs)
    for p, q, w, r in zip(paths, again, parallel, other, strict=True):
        assert p.read_bytes() == q.read_bytes() == w.read_bytes()
        assert p.read_bytes()[44:] != r.read_bytes()[44:]
    # one clip made alone equals the same clip inside the dataset (to 16-bit quantisation)
    alone = synth_clip("pump", "id_00", label="anomaly", index=1, snr_db=0, channels=2, duration_s=0.5, seed=5)
    stored, _ = read_wav(clip_path(tmp_path / "a", "pump", "00", "anomaly", 1, 0))
    np.testing.assert_allclose(stored, alone.samples, atol=1.0 / 32768)


def test_mixed_at_the_stated_snr() -> None:
    for machine in MACHINES:
        parts: dict[str, np.ndarray] = {}
        synth_clip(machine, "00", index=3, snr_db=6, duration_s=2.0, channels=1, components=parts)
        assert np.sqrt(np.mean(parts["background"] ** 2)) == pytest.approx(1.0, rel=1e-6)
        # a normal clip's machine sound is calibrated to unit power: SNR within clip-to-clip variation
        snr = 10 * np.log10(np.mean(parts["source"] ** 2))
        assert abs(snr) < 3.0, (machine, snr)
    # the same machine sound and background at every SNR (as MIMII mixes one recording three ways)
    a: dict[str, np.ndarray] = {}
    b: dict[str, np.ndarray] = {}
    quiet = synth_clip("fan", "00", index=2, snr_db=6, duration_s=1.0, channels=1, components=a)
    loud = synth_clip("fan", "00", index=2, snr_db=-6, duration_s=1.0, channels=1, components=b)
    np.testing.assert_array_equal(a["source"], b["source"])
    np.testing.assert_array_equal(a["background"], b["background"])
    assert not np.allclose(quiet.samples, loud.samples)


def test_faults_cycle_through_types_and_severities() -> None:
    seen = Counter()
    for k in range(9):
        clip = synth_clip("slider", "00", label="anomaly", index=k, duration_s=0.5, channels=1)
        level = min(SEVERITIES, key=lambda s: abs(s - clip.severity))
        assert 0.8 * level <= clip.severity <= 1.2 * level
        seen[(clip.fault, level)] += 1
    assert seen == Counter({(f, s): 1 for f in FAULTS["slider"] for s in SEVERITIES})
    normal = synth_clip("slider", "00", duration_s=0.5, channels=1)
    assert (normal.fault, normal.severity, normal.label) == (None, None, "normal")
    forced = synth_clip("valve", "00", label="anomaly", fault="leakage", severity=0.1, duration_s=0.5, channels=1)
    assert (forced.fault, forced.severity) == ("leakage", 0.1)


def test_array_channels_have_small_delays_and_independent_noise() -> None:
    clip = synth_clip("pump", "00", snr_db=6, channels=8, duration_s=2.0, seed=2)
    x = clip.samples.astype(np.float64)
    assert x.shape == (32000, 8)
    assert np.abs(x).max() < 1.0
    # below 1 kHz (wavelengths >> 5 cm) the microphones hear nearly the same scene
    low = scipy.signal.sosfiltfilt(scipy.signal.butter(4, 1000, fs=16000, output="sos"), x, axis=0)
    lags = []
    for ch in range(1, 8):
        assert not np.allclose(x[:, 0], x[:, ch])
        corr = np.correlate(x[4000:-4000, ch], x[4000 - 8 : -4000 + 8, 0], mode="valid")
        lags.append(int(np.argmax(corr)) - 8)
        assert 0.8 < np.corrcoef(low[:, 0], low[:, ch])[0, 1] < 0.9999
    # two microphones of a 5 cm-radius array are at most 10 cm apart: 0.29 ms, 4.7 samples
    assert max(abs(lag) for lag in lags) <= int(np.ceil(2 * ARRAY_RADIUS_M / SPEED_OF_SOUND_M_S * 16000))
    assert len(set(lags)) > 1


def test_parameter_errors(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="machine must be one of"):
        synth_clip("drill", "00")
    with pytest.raises(ParameterError, match="fault for fan"):
        synth_clip("fan", "00", label="anomaly", fault="leakage")
    with pytest.raises(ParameterError, match="no fault"):
        synth_clip("fan", "00", fault="clogging")
    with pytest.raises(ParameterError, match="machine ID"):
        synth_clip("fan", "id_/0")
    with pytest.raises(ParameterError, match="nothing to generate"):
        generate_dataset(tmp_path, n_normal=0, n_abnormal=0)


def test_synth_cli(tmp_path: Path) -> None:
    from trainer.cli import cli

    out = tmp_path / "synth"
    args = ["synth", str(out), "--machines", "valve", "--ids", "04", "--snr", "0", "--normal", "2",
            "--abnormal", "1", "--channels", "1", "--duration", "0.5", "--seed", "3", "--quiet"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "wrote 3 clips" in result.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.wav")) == [
        "0_dB_valve/valve/id_04/abnormal/00000000.wav",
        "0_dB_valve/valve/id_04/normal/00000000.wav",
        "0_dB_valve/valve/id_04/normal/00000001.wav",
    ]
    bad = CliRunner().invoke(cli, ["synth", str(out), "--machines", "drill", "--quiet"])
    assert isinstance(bad.exception, ParameterError)


# The difficulty requirement: a simple detector (per-clip mean log-Mel, Mahalanobis distance to the
# normal training clips) must find the anomalies, but not all of them. 2 s clips keep this fast; the
# same check on 10 s clips is recorded in the issue note (mahalanobis_auc(..., duration_s=10)).
@pytest.mark.slow
@pytest.mark.parametrize("machine", MACHINES)
def test_learnable_but_not_trivial_at_0db(machine: str) -> None:
    value = mahalanobis_auc(machine, snr_db=0.0, duration_s=2.0, n_train=40, n_test=30)
    print(f"\nMahalanobis AUC, {machine}, 0 dB, 2 s clips: {value:.3f}")
    assert 0.6 < value < 0.99
