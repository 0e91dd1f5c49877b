"""K-center greedy (farthest-first in cosine space) for MAK's diversity step (Jiang et al., "Improving Contrastive
Learning on Imbalanced Seed Data via Open-World Sampling", NeurIPS 2021; docs/math/mak.md §6).

Every round picks j* = argmin_j μ_j, where μ_j is the largest similarity of pool item j to the start set and the
items selected so far; ties go to the lowest pool position. All dot products are float32.
"""

from __future__ import annotations

import numpy as np
import torch

from ltray.errors import ConfigError, DataError


def _as_features(
    pool: np.ndarray | torch.Tensor, start: np.ndarray | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    pool_t = torch.as_tensor(pool).detach().float()
    start_t = torch.as_tensor(start).detach().to(pool_t.device, torch.float32)
    if pool_t.dim() != 2 or start_t.dim() != 2:
        raise DataError(f"pool and start set must be 2-d, got {tuple(pool_t.shape)} and {tuple(start_t.shape)}")
    if start_t.shape[0] and start_t.shape[1] != pool_t.shape[1]:
        raise DataError(f"pool dim {pool_t.shape[1]} differs from start-set dim {start_t.shape[1]}")
    return pool_t, start_t


def _check_budget(budget: int, pool_size: int) -> None:
    if budget < 0 or budget > pool_size:
        raise ConfigError(f"the K-center budget must lie in [0, {pool_size}] (the pool size), got {budget}")


def max_similarity(pool: torch.Tensor, start: torch.Tensor, block_size: int) -> torch.Tensor:
    """μ_j = max_s p_j·s over the start set, with blocked matrix products (one block_size² block in memory).

    Returns −inf for every j when the start set is empty.
    """
    mu = torch.full((pool.shape[0],), float("-inf"), dtype=torch.float32, device=pool.device)
    for lo in range(0, pool.shape[0], block_size):
        rows = pool[lo : lo + block_size]
        best = mu[lo : lo + block_size]
        for s_lo in range(0, start.shape[0], block_size):
            torch.maximum(best, (rows @ start[s_lo : s_lo + block_size].t()).amax(dim=1), out=best)
    return mu


def kcenter_greedy(
    pool: np.ndarray | torch.Tensor, start: np.ndarray | torch.Tensor, budget: int, block_size: int = 4096
) -> np.ndarray:
    """Incremental K-center greedy (docs/math/mak.md §6, scalable implementation).

    pool: [M, d] L2-normalised features (the work runs on their device); start: [S, d] L2-normalised start set S₀
    (S may be 0). μ starts as the max similarity to S₀ (blocked matmuls); each of `budget` rounds picks
    j* = argmin μ (first occurrence), then μ ← max(μ, P·p_{j*}) and μ_{j*} = +∞. O(M·(S + K)·d) time, O(M) state.
    Returns the picked pool positions (int64 [budget]) in pick order.
    """
    pool_t, start_t = _as_features(pool, start)
    _check_budget(budget, pool_t.shape[0])
    if block_size < 1:
        raise ConfigError(f"block_size must be >= 1, got {block_size}")
    mu = max_similarity(pool_t, start_t, block_size)
    similarity = torch.empty_like(mu)
    picks = torch.empty(budget, dtype=torch.int64, device=pool_t.device)
    for round_ in range(budget):
        j = torch.argmin(mu).view(1)
        picks[round_ : round_ + 1] = j
        torch.mv(pool_t, pool_t.index_select(0, j).view(-1), out=similarity)
        torch.maximum(mu, similarity, out=mu)
        mu.index_fill_(0, j, float("inf"))
    return picks.cpu().numpy()


def kcenter_greedy_naive(pool: np.ndarray | torch.Tensor, start: np.ndarray | torch.Tensor, budget: int) -> np.ndarray:
    """Reference-style K-center greedy, quadratic in the budget: every round recomputes the max similarity of every
    pool item to the whole growing selected set (the start-set term is computed once; the reference recomputes it
    every round as well). For tests and benchmarks only.
    """
    pool_t, start_t = _as_features(pool, start)
    _check_budget(budget, pool_t.shape[0])
    if start_t.shape[0]:
        start_term = (pool_t @ start_t.t()).amax(dim=1)
    else:
        start_term = torch.full((pool_t.shape[0],), float("-inf"), device=pool_t.device)
    selected: list[int] = []
    for _ in range(budget):
        mu = start_term.clone()
        if selected:
            mu = torch.maximum(mu, (pool_t @ pool_t[selected].t()).amax(dim=1))
            mu[selected] = float("inf")
        selected.append(int(torch.argmin(mu)))
    return np.asarray(selected, dtype=np.int64)
