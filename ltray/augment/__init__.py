"""Augmentation: batched tensor views for in-memory data, BCL's RandAugment_prob, and per-item PIL pipelines."""

from ltray.augment.batched import PRESETS, SimCLRViews, ViewParams
from ltray.augment.randaugment import (
    BCLWeights,
    ItemRequest,
    RandAugmentProb,
    StaleWeightsError,
    WeightedRequestSampler,
    bcl_params,
    check_weights_version,
)
from ltray.augment.rng import uniform

__all__ = [
    "PRESETS",
    "BCLWeights",
    "ItemRequest",
    "RandAugmentProb",
    "SimCLRViews",
    "StaleWeightsError",
    "ViewParams",
    "WeightedRequestSampler",
    "bcl_params",
    "check_weights_version",
    "uniform",
]
