"""LoTaR per-sample weighting by view distance (andrew15818/SimCLR, master's thesis). Spec: docs/math/focal_lotar.md §2."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ltray.errors import ConfigError

LotarDistance = Literal["euclid_raw", "euclid_norm", "cosine"]
LOTAR_DISTANCES: tuple[str, ...] = ("euclid_raw", "euclid_norm", "cosine")
DEGENERATE_RANGE = 1e-12


def lotar_distances(z1: torch.Tensor, z2: torch.Tensor, kind: LotarDistance = "euclid_raw") -> torch.Tensor:
    """Distance d_n between the two projector outputs of image n, shape [B], float32 (focal_lotar.md §2.1).

    euclid_raw: ‖z¹_n − z²_n‖₂ on the raw outputs (not squared); euclid_norm: ‖ẑ¹_n − ẑ²_n‖₂;
    cosine: 1 − ẑ¹_n·ẑ²_n.
    """
    if kind not in LOTAR_DISTANCES:
        raise ConfigError(f"lotar_distance must be one of {', '.join(LOTAR_DISTANCES)}, got {kind!r}")
    with torch.autocast(device_type=z1.device.type, enabled=False):
        a, b = z1.float(), z2.float()
        if kind == "euclid_raw":
            return torch.linalg.vector_norm(a - b, dim=1)
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
        if kind == "euclid_norm":
            return torch.linalg.vector_norm(a - b, dim=1)
        return 1.0 - (a * b).sum(dim=1)


def lotar_weights(d: torch.Tensor, sign: int = 1, detach: bool = False) -> tuple[torch.Tensor, bool]:
    """LoTaR weight w_n = 1 + σ·(d_n − d̄)/(d_max − d_min) over the batch (focal_lotar.md §2.2).

    Returns (w of shape [B], degenerate). The batch mean of w is 1 and w ∈ [0, 2]. The gradient flows through
    d_n, d̄, d_max and d_min unless `detach` (the reference does not detach). If R = d_max − d_min ≤ 1e-12
    (this includes B ≤ 1) the batch is degenerate: w ≡ 1 and degenerate=True, so the caller can count it.
    """
    if sign not in (1, -1):
        raise ConfigError(f"lotar_sign must be +1 or -1, got {sign}")
    with torch.autocast(device_type=d.device.type, enabled=False):
        d = d.float()
        if d.numel() <= 1:
            return torch.ones_like(d), True
        d_max, d_min = d.max(), d.min()
        spread = d_max - d_min
        if spread.item() <= DEGENERATE_RANGE:
            return torch.ones_like(d), True
        w = 1.0 + sign * (d - d.mean()) / spread
        return (w.detach() if detach else w), False


def apply_lotar(per_sample_base: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted loss (focal_lotar.md §2.3): per-sample w_n·L_n and its mean L = (1/2B)Σ_a w_{n(a)}ℓ_a.

    Returns (mean, weighted per-sample of shape [B]).
    """
    if per_sample_base.shape != weights.shape:
        raise ValueError(f"per-sample loss {tuple(per_sample_base.shape)} and weights {tuple(weights.shape)} differ")
    weighted = per_sample_base.float() * weights.float()
    return weighted.mean(), weighted
