"""Feature extraction for training, cached on disk.

Features come only from :func:`edge_asd.frontend.compute_features` (the device's own code). Each
clip's ``(n_frames, n_features)`` float32 array is cached as a ``.npy`` file whose name is a hash
of the feature configuration and the file's absolute path, size and modification time, so a
changed configuration or a rewritten wav file never reads a stale entry. Entries are loaded with
``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import click
import numpy as np

from edge_asd.audio import read_wav
from edge_asd.errors import AudioFileError
from edge_asd.frontend import FeatureConfig, compute_features

__all__ = ["default_cache_dir", "cache_key", "clip_features", "extract_features"]


def default_cache_dir() -> Path:
    """``$EDGE_ASD_CACHE`` or ``~/.cache/edge-asd/features``."""
    env = os.environ.get("EDGE_ASD_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "edge-asd" / "features"


def _config_hash(config: FeatureConfig) -> str:
    text = json.dumps(config.to_dict(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_key(path: Path, config: FeatureConfig) -> str:
    """Cache file stem for ``path`` under ``config`` (changes when the file or config changes)."""
    path = Path(path).resolve()
    try:
        st = path.stat()
    except OSError as exc:
        raise AudioFileError(f"{path}: cannot be read ({exc.strerror})") from exc
    ident = f"{_config_hash(config)}|{path}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha256(ident.encode()).hexdigest()[:32]


def clip_features(path: Path, config: FeatureConfig, *, cache_dir: Path | None = None) -> np.ndarray:
    """Feature frames of one wav file, ``float32 (n_frames, n_features)`` in dB.

    ``cache_dir=None`` disables the cache.
    """
    target = None
    if cache_dir is not None:
        target = Path(cache_dir) / _config_hash(config) / f"{cache_key(path, config)}.npy"
        if target.is_file():
            try:
                cached = np.load(target, allow_pickle=False)
                if cached.ndim == 2 and cached.shape[1] == config.n_features and cached.dtype == np.float32:
                    return cached
            except (OSError, ValueError):
                pass  # a damaged entry (e.g. an interrupted write) is recomputed below
    samples, sr = read_wav(path)
    if sr != config.sr:
        from edge_asd.audio.resample import resample

        samples = resample(samples, orig_sr=sr, target_sr=config.sr)
    frames = np.ascontiguousarray(compute_features(samples, config), dtype=np.float32)
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, frames, allow_pickle=False)
        os.replace(tmp, target)  # atomic: concurrent runs never see half a file
    return frames


def extract_features(
    paths: Sequence[Path],
    config: FeatureConfig,
    *,
    cache_dir: Path | None = None,
    label: str = "features",
    progress: bool = True,
) -> list[np.ndarray]:
    """Feature frames of many files, with a click progress bar on stderr.

    Returns
    -------
    list of ``float32 (n_frames, n_features)`` arrays, in the order of ``paths``.
    """
    out: list[np.ndarray] = []
    with click.progressbar(
        list(paths), label=f"{label} ({config.kind}, {len(paths)} clips)", file=None if progress else open(os.devnull, "w")
    ) as bar:
        for path in bar:
            out.append(clip_features(Path(path), config, cache_dir=cache_dir))
    return out
