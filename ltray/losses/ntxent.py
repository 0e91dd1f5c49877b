"""NT-Xent (Chen et al., SimCLR, ICML 2020, eq. 1), as specified in docs/math/data_and_eval.md §6."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def similarity_logits(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cosine-similarity logits s_ij / τ over the stacked 2B anchors [z1; z2], float32, diagonal masked to -inf.

    z1, z2: [B, d] projector outputs (not yet normalised). Returns [2B, 2B].
    """
    with torch.autocast(device_type=z1.device.type, enabled=False):
        z = F.normalize(torch.cat([z1, z2], dim=0).float(), dim=1)
        logits = z @ z.t() / temperature
        eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
        return logits.masked_fill(eye, float("-inf"))


def positive_index(batch_size: int, device: torch.device | None = None) -> torch.Tensor:
    """a⁺ = a + B (mod 2B) for every anchor a of a stacked 2B batch."""
    a = torch.arange(2 * batch_size, device=device)
    return (a + batch_size) % (2 * batch_size)


def ntxent_anchor_losses(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-anchor NT-Xent ℓ_a = −s_{a,a⁺}/τ + log Σ_{k≠a} exp(s_ak/τ), shape [2B], float32.

    Anchors are ordered [all first views; all second views], so anchor n and n+B belong to image n.
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    logits = similarity_logits(z1, z2, temperature)
    pos = positive_index(z1.shape[0], logits.device)
    return torch.logsumexp(logits, dim=1) - logits[torch.arange(logits.shape[0], device=logits.device), pos]


def per_image(anchor_values: torch.Tensor) -> torch.Tensor:
    """L_n = ½(v_n + v_{n+B}): fold a [2B] per-anchor vector into a [B] per-image vector."""
    b = anchor_values.shape[0] // 2
    return 0.5 * (anchor_values[:b] + anchor_values[b:])


def ntxent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent over a batch of B images. Returns (mean loss, per-image losses L_n of shape [B])."""
    per_sample = per_image(ntxent_anchor_losses(z1, z2, temperature))
    return per_sample.mean(), per_sample
