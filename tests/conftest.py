"""Shared test fixtures: where the real recordings are, and skipping cleanly when they are not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EDGE_ASD_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_data(sub: str) -> Path:
    """Path to a folder of real recordings in ``../shared/data``; skips the test where it is absent."""
    path = SHARED_DATA / sub
    if not path.is_dir():
        pytest.skip(f"real recordings not available: {path} is absent (see ../shared/data/README.md)")
    return path


@pytest.fixture
def mimii_samples() -> Path:
    return shared_data("mimii-samples")


@pytest.fixture
def dcase2020_samples() -> Path:
    return shared_data("dcase2020-samples")


@pytest.fixture
def dcase2023_toycar() -> Path:
    return shared_data("dcase2023-toycar")

# Real tiny model bundles (trainer issue 4): session fixtures ``tiny_wavs`` and ``tiny_bundle``.
from tests.bundle_factory import tiny_bundle, tiny_wavs  # noqa: E402,F401
