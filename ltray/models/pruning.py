"""SDCLR's global magnitude pruning mask (docs/math/sdclr.md §2; Jiang et al., "Self-Damaging Contrastive Learning",
ICML 2021, §3.2).

Let a be the concatenation of |w| over every prunable conv weight, n = |a|, k = ⌈p·n⌉. The threshold is the
order statistic t = a₍min(k, n−1)₎ (0-based), and every tensor keeps M = 1[|w| ≥ t]: one threshold for the whole
network, ties at t kept. Masks are rebuilt from the current dense weights at each refresh, never compounded.

Fractions are read as the decimals they are written as, so ⌈0.3·10⌉ is 3 (not 4, as the binary float
0.3·10 = 3.0000000000000004 would give).
"""

from __future__ import annotations

import hashlib
import math
from fractions import Fraction

import numpy as np
import torch
import torch.nn as nn

from ltray.errors import ConfigError
from ltray.models.branch import MaskedConv2d


def prunable_convs(backbone: nn.Module) -> list[tuple[str, MaskedConv2d]]:
    """Every maskable conv under `backbone`, in module order: the stem, every block conv and the 1×1 shortcuts.

    Heads hold only Linear and BN layers, so they never contribute.
    """
    return [(name, m) for name, m in backbone.named_modules() if isinstance(m, MaskedConv2d)]


def _decimal(x: float) -> Fraction:
    return Fraction(repr(float(x)))


def _order_statistic(abs_weights: torch.Tensor, k: int) -> float:
    """a₍min(k, n−1)₎, the 0-based order statistic of the flattened tensor."""
    a = abs_weights.detach().reshape(-1)
    if a.numel() == 0:
        raise ValueError("cannot threshold an empty set of weights")
    j = min(k, a.numel() - 1)
    return float(torch.kthvalue(a, j + 1).values)


def magnitude_threshold(abs_weights: torch.Tensor, ratio: float) -> float:
    """t_p = a₍min(⌈p·n⌉, n−1)₎ over the flattened |w| (sdclr.md §2). Defined for p ∈ [0, 1]."""
    _check_fractions(ratio, 0.0)
    return _order_statistic(abs_weights, math.ceil(_decimal(ratio) * abs_weights.numel()))


def _check_fractions(ratio: float, random_fraction: float) -> None:
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"prune ratio must be in [0, 1], got {ratio!r}")
    if not 0.0 <= random_fraction <= ratio:
        raise ConfigError(f"random prune fraction must be in [0, prune ratio={ratio}], got {random_fraction!r}")


def compute_masks(
    weights: list[torch.Tensor],
    ratio: float,
    random_fraction: float = 0.0,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """Boolean masks, one per weight tensor, from one global threshold (sdclr.md §2).

    With `random_fraction` r > 0, the magnitude part uses p − r (k_mag = ⌈(p−r)·n⌉), and every survivor is then
    zeroed independently with probability ⌈r·n⌉ / (n − k_mag), drawn from `generator` (required).
    """
    _check_fractions(ratio, random_fraction)
    if not weights:
        return []
    magnitudes = [w.detach().abs() for w in weights]
    a = torch.cat([m.reshape(-1) for m in magnitudes])
    n = a.numel()
    p, r = _decimal(ratio), _decimal(random_fraction)
    k_mag = math.ceil((p - r) * n)
    threshold = _order_statistic(a, k_mag)
    masks = [m >= threshold for m in magnitudes]
    if r == 0:
        return masks
    if generator is None:
        raise ConfigError("random pruning (random_prune_fraction > 0) needs an explicit seed")
    drop_probability = math.ceil(r * n) / (n - k_mag)
    for mask in masks:
        drop = torch.rand(mask.shape, generator=generator, device=generator.device) < drop_probability
        mask &= ~drop.to(mask.device)
    return masks


def refresh_masks(model: nn.Module, ratio: float, random_fraction: float = 0.0, seed: int | None = None) -> None:
    """Recompute every `prune_mask` under `model` from its current dense weights (rebuilt, never compounded).

    The random component, if any, draws from a CPU generator seeded with `seed`, so it does not depend on device.
    """
    convs = prunable_convs(model)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    masks = compute_masks([m.weight for _, m in convs], ratio, random_fraction, generator)
    with torch.no_grad():
        for (_, conv), mask in zip(convs, masks):
            conv.prune_mask.copy_(mask)


def mask_checksum(model: nn.Module) -> int:
    """A 63-bit digest of every mask's shape and bits, in module order, for cross-worker agreement checks.

    Module names are left out, so a DDP-wrapped model and the bare model give the same value.
    """
    digest = hashlib.sha256()
    for _, conv in prunable_convs(model):
        mask = conv.prune_mask.detach().cpu().contiguous().numpy().reshape(-1)
        digest.update(repr(tuple(conv.prune_mask.shape)).encode())
        digest.update(np.packbits(mask).tobytes())
    return int.from_bytes(digest.digest()[:8], "big") >> 1


def mask_density(model: nn.Module) -> dict[str, float]:
    """Survivor fraction of every prunable conv, keyed by module name."""
    return {name: float(conv.prune_mask.float().mean()) for name, conv in prunable_convs(model)}
