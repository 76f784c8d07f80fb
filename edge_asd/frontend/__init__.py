"""The shared feature front end: one implementation for the trainer and the device."""

from edge_asd.frontend.config import FEATURE_KINDS, FeatureConfig
from edge_asd.frontend.filters import mel_filterbank, sinc_filterbank, sinc_filters
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
