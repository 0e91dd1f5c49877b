"""Focal contrastive loss as the base (docs/math/focal_lotar.md §1)."""

from __future__ import annotations

import torch

from ltray.losses.focal import focal_anchor_losses
from ltray.methods.base import Component
from ltray.methods.registry import register


@register("focal")
class Focal(Component):
    """Replaces NT-Xent's per-anchor term with (1 − p_a)^γ·ℓ_a."""

    def anchor_losses(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return focal_anchor_losses(z1, z2, self.cfg.method.temperature, self.cfg.method.focal.gamma)
