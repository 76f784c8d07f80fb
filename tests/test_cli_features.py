"""``edge-asd features`` and ``--version``, run as real subprocesses."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from edge_asd import __version__
from edge_asd.audio import write_wav


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_asd", *args], capture_output=True, text=True, timeout=120)


def test_version():
    result = run("--version")
    assert result.returncode == 0 and __version__ in result.stdout


def test_features_of_real_mimii_clip_to_npy(mimii_samples, tmp_path):
    clip = next(mimii_samples.rglob("*.wav"))
    out = tmp_path / "f.npy"
    result = run("features", str(clip), "--kind", "ims", "--n-mels", "64", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "(313, 104)" in result.stdout
    feats = np.load(out, allow_pickle=False)
    assert feats.shape == (313, 104) and feats.dtype == np.float32 and np.isfinite(feats).all()


def test_features_many_files_to_dir_and_bad_file_reported(tmp_path):
    for i in range(2):
        write_wav(tmp_path / f"c{i}.wav", 0.1 * np.random.default_rng(i).standard_normal(8000), 16000)
    (tmp_path / "broken.wav").write_bytes(b"RIFF....")
    result = run("features", str(tmp_path / "c0.wav"), str(tmp_path / "broken.wav"), str(tmp_path / "c1.wav"),
                 "--out-dir", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "broken.wav" in result.stderr and "Traceback" not in result.stderr
    # the good files were still processed
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["c0.npy", "c1.npy"]
    assert np.load(tmp_path / "out" / "c0.npy").shape == (16, 128)


def test_features_bad_parameters_are_clear(tmp_path):
    write_wav(tmp_path / "c.wav", np.zeros(8000), 16000)
    result = run("features", str(tmp_path / "c.wav"), "--fmax", "12000")
    assert result.returncode != 0
    assert "fmax" in result.stderr and "Traceback" not in result.stderr
