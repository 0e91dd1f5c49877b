"""The loss contract shared by every method (docs/math/README.md, convention 2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LossOutput:
    """What every loss returns.

    loss: the scalar that is backpropagated: the mean of the per-sample values over the global batch
        (before any world-size scaling).
    per_sample: one value per local image (shape [B_local]); the mean of its two anchors' terms plus any
        weighted extra terms, times any per-sample weight.
    index: the dataset indices of those local images (int64, shape [B_local]).
    """

    loss: torch.Tensor
    per_sample: torch.Tensor
    index: torch.Tensor
