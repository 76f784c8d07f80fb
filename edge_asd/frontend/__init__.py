"""The shared feature front end: one implementation for the trainer and the device.

The streaming front end and its kernels are imported on first use of ``StreamingFrontend`` /
``compute_features``, not with the package: reading a bundle's ``FeatureConfig`` (``edge-asd
status``, bundle checks) does not need them. The kernels are numba's, compiled ahead of time at
installation (:mod:`edge_asd.frontend.aot`), or just in time when that module is absent (numba
and LLVM then cost the process ~130 MB).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from edge_asd.frontend.config import FEATURE_KINDS, FeatureConfig
from edge_asd.frontend.filters import mel_filterbank, sinc_filterbank, sinc_filters

if TYPE_CHECKING:
    from edge_asd.frontend.streaming import StreamingFrontend, compute_features

__all__ = [
    "FEATURE_KINDS",
    "FeatureConfig",
    "StreamingFrontend",
    "compute_features",
    "mel_filterbank",
    "sinc_filterbank",
    "sinc_filters",
]

_LAZY = {"StreamingFrontend": "edge_asd.frontend.streaming", "compute_features": "edge_asd.frontend.streaming"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
