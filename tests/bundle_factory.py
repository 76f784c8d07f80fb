"""Real model bundles for tests, trained in seconds on tiny synthetic wav files.

``make_bundle`` trains a small model on a few short generated clips and exports a real bundle
(float + int8 TFLite, ``bundle.json``) through the same code as ``asd-train fit``. The
session-scoped ``tiny_bundle`` fixture builds one conv-ae bundle per test session.

Register the fixtures with ``from tests.bundle_factory import tiny_bundle, tiny_wavs`` in
``tests/conftest.py``.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from edge_asd.audio import write_wav
from edge_asd.frontend import FeatureConfig

__all__ = ["TINY_FEATURES", "make_wavs", "make_bundle", "tiny_bundle", "tiny_wavs"]

TINY_FEATURES = FeatureConfig(kind="logmel", sr=16000, n_fft=512, hop_length=256, n_mels=32)
"""Small features (32 mel bands, 16 ms hop) so tiny models train in a second."""

TINY_SR = 16000


def _machine_tone(rng: np.random.Generator, duration_s: float, sr: int, *, anomaly: bool) -> np.ndarray:
    """A hum with harmonics plus noise; anomalies add a rattle (bursts of a high tone)."""
    t = np.arange(int(duration_s * sr)) / sr
    f0 = 120.0 * (1 + 0.01 * rng.standard_normal())
    x = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 6))
    x = 0.2 * x + 0.05 * rng.standard_normal(t.size)
    if anomaly:
        bursts = (np.sin(2 * np.pi * 7.0 * t) > 0.6).astype(float)
        x = x + 0.3 * bursts * np.sin(2 * np.pi * 3100.0 * t)
    return (x / np.max(np.abs(x)) * 0.5).astype(np.float32)


def make_wavs(
    out_dir: Path, *, n_normal: int = 6, n_anomaly: int = 2, duration_s: float = 2.0, seed: int = 0, channels: int = 1
) -> dict[str, list[Path]]:
    """Write short synthetic clips ``out_dir/{normal,abnormal}/NNNN.wav``; return their paths by label."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[Path]] = {"normal": [], "anomaly": []}
    for label, folder, n in (("normal", "normal", n_normal), ("anomaly", "abnormal", n_anomaly)):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            path = out_dir / folder / f"{i:04d}.wav"
            x = _machine_tone(rng, duration_s, TINY_SR, anomaly=label == "anomaly")
            write_wav(path, np.repeat(x[:, None], channels, axis=1), TINY_SR)
            out[label].append(path)
    return out


def make_bundle(
    out_dir: Path,
    *,
    kind: str = "conv-ae",
    features: FeatureConfig | None = None,
    train_wavs: list[Path] | None = None,
    epochs: int = 1,
    seed: int = 0,
    labels: list[str] | None = None,
) -> Path:
    """Train a tiny ``kind`` model and export a real bundle into ``out_dir/bundle``.

    Parameters
    ----------
    out_dir
        Working folder (wavs, feature cache and the bundle go below it).
    kind
        Model kind; the classifiers (``cnn-lstm``, ``mobilefacenet``) use the ``id`` objective with
        two synthetic classes unless ``labels`` are given; ``mobilefacenet`` exports with a k-NN back end.
    features
        Front-end configuration (default :data:`TINY_FEATURES`).
    train_wavs
        Training files (default: 6 generated 2 s normal clips).
    labels
        Per-file class labels for ``cnn-lstm``.

    Returns
    -------
    Path of the bundle directory.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from trainer.export import export_bundle
    from trainer.models import CLASSIFIER_KINDS, EMBEDDING_KINDS, default_window
    from trainer.train import TrainConfig, train

    out_dir = Path(out_dir)
    features = features or TINY_FEATURES
    if train_wavs is None:
        train_wavs = make_wavs(out_dir / "wavs", seed=seed)["normal"]
    n_frames, hop = default_window(kind)
    if kind in CLASSIFIER_KINDS and labels is None:
        labels = [f"machine/id_{i % 2:02d}" for i in range(len(train_wavs))]
    config = TrainConfig(
        model=kind,
        n_frames=min(n_frames, 16),
        hop_frames=min(hop, 8),
        epochs=epochs,
        batch_size=32,
        seed=seed,
        val_fraction=0.25,
        width=8,
    )
    result = train(train_wavs, features, config, labels=labels, cache_dir=out_dir / "cache", log=lambda s: None, progress=False)
    # An embedding model is scored by a back end: k-NN, the recipe's.
    bundle = export_bundle(result, out_dir / "bundle", provenance={"data_root": str(out_dir / "wavs"), "protocol": "test"},
                           backend="knn" if kind in EMBEDDING_KINDS else "none")
    return bundle.path


@functools.lru_cache(maxsize=1)
def session_wavs_and_bundle() -> tuple[dict[str, list[Path]], Path]:
    """The tiny clips and the conv-ae bundle trained on them, built once per test process and
    shared by the fixtures and the device tests' helpers (training twice would only cost time)."""
    root = Path(tempfile.mkdtemp(prefix="edge-asd-tiny-bundle-"))
    wavs = make_wavs(root / "wavs")
    return wavs, make_bundle(root / "train", train_wavs=wavs["normal"])


@pytest.fixture(scope="session")
def tiny_wavs() -> dict[str, list[Path]]:
    """Synthetic 2 s mono clips at 16 kHz: ``{"normal": [6 paths], "anomaly": [2 paths]}``."""
    return session_wavs_and_bundle()[0]


@pytest.fixture(scope="session")
def tiny_bundle() -> Path:
    """A real conv-ae bundle (float + int8) trained for one epoch on :func:`tiny_wavs`."""
    return session_wavs_and_bundle()[1]
