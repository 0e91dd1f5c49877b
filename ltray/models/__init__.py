"""Backbones, projection heads, SDCLR's dense/pruned branches and pruning masks, published-checkpoint loading."""

from ltray.models.branch import DENSE, PRUNED, DualBatchNorm, MaskedConv2d, branch, set_branch
from ltray.models.contrastive import ContrastiveModel, build_model
from ltray.models.heads import ProjectionHead, build_head
from ltray.models.pruning import (
    compute_masks,
    magnitude_threshold,
    mask_checksum,
    mask_density,
    prunable_convs,
    refresh_masks,
)
from ltray.models.published import load_published_backbone
from ltray.models.resnet import Backbone, build_backbone

__all__ = [
    "DENSE",
    "PRUNED",
    "Backbone",
    "ContrastiveModel",
    "DualBatchNorm",
    "MaskedConv2d",
    "ProjectionHead",
    "branch",
    "build_backbone",
    "build_head",
    "build_model",
    "compute_masks",
    "load_published_backbone",
    "magnitude_threshold",
    "mask_checksum",
    "mask_density",
    "prunable_convs",
    "refresh_masks",
    "set_branch",
]
