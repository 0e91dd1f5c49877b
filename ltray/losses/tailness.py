"""COLT instant tailness score: the top-k negative mass of an image's NT-Xent rows (Bai et al., "On the
Effectiveness of Out-of-Distribution Data in Self-Supervised Long-Tail Learning", ICLR 2023). Spec: docs/math/colt.md §3."""

from __future__ import annotations

import torch

from ltray.errors import ConfigError
from ltray.losses.ntxent import similarity_logits


@torch.no_grad()
def colt_instant_tailness(z1: torch.Tensor, z2: torch.Tensor, temperature: float, topk: int = 10) -> torch.Tensor:
    """Instant score h_n of every image of the batch, shape [B], float32, no gradient (colt.md §3).

    p_aj = exp(s_aj/τ)/Dₐ for j ∉ {a, a⁺}; both anchors of image n share the negative set {0..2B−1} \\ {n, n+B},
    so P̄_n[j] = ½(p_{n,j} + p_{n+B,j}) over those 2B − 2 entries, and h_n is the sum of the `topk` largest
    entries of P̄_n (all of them when 2B − 2 < topk). A large h_n means a crowded, head-like neighbourhood.
    """
    if topk < 1:
        raise ConfigError(f"colt_topk must be >= 1, got {topk}")
    b = z1.shape[0]
    with torch.autocast(device_type=z1.device.type, enabled=False):
        logits = similarity_logits(z1.float(), z2.float(), temperature)
        prob = torch.softmax(logits, dim=1)
        mean_prob = 0.5 * (prob[:b] + prob[b:])
        rows = torch.arange(b, device=z1.device)
        mean_prob[rows, rows] = float("-inf")
        mean_prob[rows, rows + b] = float("-inf")
        k = min(topk, 2 * b - 2)
        return mean_prob.topk(k, dim=1).values.sum(dim=1)
