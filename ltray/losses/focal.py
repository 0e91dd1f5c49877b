"""Focal contrastive loss: the `focal` baseline of Geometric Harmonization (Zhou et al., NeurIPS 2023),
the focal modulation of Lin et al. (ICCV 2017) applied to NT-Xent. Spec: docs/math/focal_lotar.md §1."""

from __future__ import annotations

import torch

from ltray.errors import ConfigError
from ltray.losses.ntxent import ntxent_anchor_losses, per_image


def focal_anchor_losses(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float, gamma: float = 2.0
) -> torch.Tensor:
    """Per-anchor focal loss ℓᶠ_a = −(1 − p_a)^γ·log p_a = (1 − e^{−ℓ_a})^γ·ℓ_a, shape [2B], float32.

    ℓ_a is the log-sum-exp NT-Xent anchor loss and p_a = exp(−ℓ_a) the softmax probability of the positive among
    the non-self entries of the row (focal_lotar.md §1). Nothing is detached: the gradient flows through the
    modulating factor as well. Anchors are ordered [first views; second views].
    """
    if gamma < 0:
        raise ConfigError(f"focal gamma must be >= 0, got {gamma}")
    with torch.autocast(device_type=z1.device.type, enabled=False):
        anchor = ntxent_anchor_losses(z1.float(), z2.float(), temperature)
        one_minus_p = -torch.expm1(-anchor)
        return one_minus_p.pow(gamma) * anchor


def focal(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float, gamma: float = 2.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Focal contrastive loss over B images: (mean, per-image Lᶠ_n = ½(ℓᶠ_n + ℓᶠ_{n+B}) of shape [B])."""
    per_sample = per_image(focal_anchor_losses(z1, z2, temperature, gamma))
    return per_sample.mean(), per_sample
