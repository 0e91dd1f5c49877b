"""Backbone + projection head, with one module call per training step (docs/math/sdclr.md §3–§4)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ltray.models.branch import DENSE, PRUNED, branch, set_branch
from ltray.models.heads import ProjectionHead, build_head
from ltray.models.resnet import Backbone, build_backbone


class ContrastiveModel(nn.Module):
    """`backbone` features followed by a projection `head`.

    `forward` is the only call a training step makes, so DDP sees one forward and one backward per step.
    """

    def __init__(self, backbone: Backbone, head: ProjectionHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(
        self, v1: torch.Tensor, v2: torch.Tensor, *, pruned_second: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Projections (z¹, z²) of the two views.

        - Default: one dense pass over [v¹; v²] (BN statistics over both views), split into halves.
        - `pruned_second` (SDCLR, sdclr.md §3): z¹ from the dense branch on v¹, z² from the pruned branch
          (masked convs, BN 1) on v². Each branch normalises with its own batch. The model is left on the dense
          branch afterwards.
        """
        if not pruned_second:
            set_branch(self, DENSE)
            z = self.head(self.backbone(torch.cat([v1, v2], dim=0)))
            return z[: v1.shape[0]], z[v1.shape[0] :]
        try:
            set_branch(self, DENSE)
            z1 = self.head(self.backbone(v1))
            set_branch(self, PRUNED)
            z2 = self.head(self.backbone(v2))
        finally:
            set_branch(self, DENSE)
        return z1, z2

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features on the dense branch (evaluation, MAK/COLT scoring)."""
        with branch(self, DENSE):
            return self.backbone(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Head output on the dense branch (COLT / MAK scoring)."""
        with branch(self, DENSE):
            return self.head(self.backbone(x))


def build_model(
    arch: str,
    *,
    width: float = 1.0,
    head: str = "simclr",
    dual_bn: bool = False,
    out_dim: int = 128,
    encoder_dim: int = 512,
) -> ContrastiveModel:
    """`build_backbone(arch, width, dual_bn)` topped by `build_head(head, backbone.out_dim, ...)`."""
    backbone = build_backbone(arch, width=width, dual_bn=dual_bn)
    projection = build_head(head, backbone.out_dim, out_dim=out_dim, dual_bn=dual_bn, encoder_dim=encoder_dim)
    return ContrastiveModel(backbone, projection)
