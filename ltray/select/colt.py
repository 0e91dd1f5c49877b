"""COLT selection math (Bai et al., "On the Effectiveness of Out-of-Distribution Data in Self-Supervised Long-Tail
Learning", ICLR 2023): the resampling schedule (docs/math/colt.md §1), the cluster-budgeted pick of OOD pool items
(§4) and the length of the learning-rate schedule (§7). Epochs are 1-based here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ltray.errors import ConfigError, DataError
from ltray.select.kmeans import as_numpy, kmeans, l2_normalise


@dataclass
class ColtSelection:
    """The outcome of one COLT resample (docs/math/colt.md §4).

    picks: pool positions j (int64 [K]), concatenated in cluster order; their dataset indices are N_id + j.
    budgets: b_c per cluster (int64 [C], summing to K).
    labels: the cluster of every ID item (int64 [N_id]).
    cluster_scores: m_c, the mean tailness score of each cluster (float64 [C]).
    backend: the k-means backend, or "injected" when the clusters were given.
    """

    picks: np.ndarray
    budgets: np.ndarray
    labels: np.ndarray
    cluster_scores: np.ndarray
    backend: str

    def dataset_indices(self, n_id: int) -> np.ndarray:
        """The picks as dataset indices N_id + j (docs/math/README.md, convention 1)."""
        return self.picks + n_id


def _check_schedule(warmup: int, interval: int) -> None:
    if warmup < 0:
        raise ConfigError(f"colt_warmup must be >= 0, got {warmup}")
    if interval < 1:
        raise ConfigError(f"colt_interval must be >= 1, got {interval}")


def _check_budget(budget: int, pool_size: int) -> None:
    if budget < 1:
        raise ConfigError(f"colt_budget must be >= 1, got {budget}")
    if budget > pool_size:
        raise ConfigError(f"colt_budget ({budget}) exceeds the OOD pool size ({pool_size})")


def validate_colt_config(warmup: int, interval: int, budget: int, pool_size: int) -> None:
    """Configuration checks of docs/math/colt.md §1: warmup ≥ 0, interval ≥ 1, 1 ≤ K ≤ pool size."""
    _check_schedule(warmup, interval)
    _check_budget(budget, pool_size)


def is_resample_epoch(epoch: int, warmup: int, interval: int) -> bool:
    """True when 1-based epoch e starts with a resample: e − 1 ≥ warmup and (e − 1 − warmup) mod interval = 0."""
    _check_schedule(warmup, interval)
    return epoch - 1 >= warmup and (epoch - 1 - warmup) % interval == 0


def cluster_budgets(cluster_scores_mean: np.ndarray, budget: int, temperature: float = 1.0) -> np.ndarray:
    """Per-cluster budgets b_c (docs/math/colt.md §4 steps 3–5).

    z_c = −(m_c − mean(m)) / std(m) with the unbiased std (z ≡ 0 when all m_c are equal), q = softmax(z / τ_c),
    b_c = trunc(q_c·K) for c < C − 1 and the last cluster absorbs the remainder, so Σ b_c = K exactly.
    """
    scores = np.asarray(cluster_scores_mean, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        raise DataError("cluster_budgets needs at least one cluster score")
    if not np.all(np.isfinite(scores)):
        raise DataError("cluster scores must be finite")
    if budget < 0:
        raise ConfigError(f"budget must be >= 0, got {budget}")
    if temperature <= 0:
        raise ConfigError(f"colt_cluster_temperature must be > 0, got {temperature}")
    if scores.size < 2 or np.all(scores == scores[0]):
        z = np.zeros_like(scores)
    else:
        z = -(scores - scores.mean()) / scores.std(ddof=1)
    logits = z / temperature
    q = np.exp(logits - logits.max())
    q /= q.sum()
    budgets = np.trunc(q * budget).astype(np.int64)
    budgets[-1] = budget - budgets[:-1].sum()
    return budgets


def greedy_nearest_unused(
    pool_emb: np.ndarray | torch.Tensor, centres: np.ndarray | torch.Tensor, budgets: np.ndarray
) -> np.ndarray:
    """Cluster-ordered nearest-unused picking (docs/math/colt.md §4 steps 6–8).

    pool_emb: [M, d] L2-normalised pool embeddings (NumPy or a tensor on any device; the work runs there).
    centres: [C, d] k-means centres, renormalised here. budgets: [C] non-negative ints summing to K ≤ M.
    Clusters are visited in index order; cluster c takes its b_c untaken items with the smallest
    δ_jc = 1 − o_j·ĉ_c (ties to the lower pool index). Returns the K distinct pool positions in pick order.
    """
    pool = torch.as_tensor(pool_emb).detach().float()
    if pool.dim() != 2:
        raise DataError(f"pool embeddings must be 2-d, got shape {tuple(pool.shape)}")
    centre_hat = F.normalize(torch.as_tensor(centres).detach().to(pool.device, torch.float32), dim=1)
    if centre_hat.dim() != 2 or centre_hat.shape[1] != pool.shape[1]:
        raise DataError(f"centres of shape {tuple(centre_hat.shape)} do not match the pool dim {pool.shape[1]}")
    counts = np.asarray(budgets, dtype=np.int64).reshape(-1)
    if counts.shape[0] != centre_hat.shape[0]:
        raise DataError(f"{counts.shape[0]} budgets for {centre_hat.shape[0]} clusters")
    if np.any(counts < 0):
        raise ConfigError("cluster budgets must be non-negative")
    total = int(counts.sum())
    pool_size = pool.shape[0]
    if pool_size < total:
        raise ConfigError(f"the OOD pool has {pool_size} items, fewer than the budget {total}")

    distance = 1.0 - pool @ centre_hat.t()
    taken = torch.zeros(pool_size, dtype=torch.bool, device=pool.device)
    picks = []
    for c, count in enumerate(counts.tolist()):
        order = torch.argsort(distance[:, c], stable=True)
        chosen = order[~taken[order]][:count]
        taken[chosen] = True
        picks.append(chosen)
    result = torch.cat(picks).cpu().numpy().astype(np.int64)
    if result.size != total or np.unique(result).size != total:
        raise RuntimeError(f"COLT picked {result.size} items ({np.unique(result).size} distinct), not {total}")
    return result


def colt_select(
    id_emb: np.ndarray | torch.Tensor,
    id_scores: np.ndarray | torch.Tensor,
    pool_emb: np.ndarray | torch.Tensor,
    budget: int,
    n_clusters: int = 10,
    cluster_temperature: float = 1.0,
    random_state: int = 0,
    clusters: tuple[np.ndarray, np.ndarray] | None = None,
) -> ColtSelection:
    """One COLT resample (docs/math/colt.md §4).

    id_emb: [N_id, d] ID embeddings; id_scores: the tailness S [N_id]; pool_emb: [M, d] pool embeddings (a tensor
    keeps the work on its device). Both embeddings are L2-normalised here (a no-op for normalised input). k-means
    (n_init 10, `random_state`) clusters the ID embeddings unless `clusters` = (labels [N_id], centres [C, d]) is
    given. Every cluster must have at least one member.
    """
    scores = as_numpy(id_scores).astype(np.float64).reshape(-1)
    if pool_emb.ndim != 2 or id_emb.ndim != 2:
        raise DataError(f"embeddings must be 2-d, got {tuple(id_emb.shape)} (ID) and {tuple(pool_emb.shape)} (pool)")
    pool_size = int(pool_emb.shape[0])
    _check_budget(budget, pool_size)
    pool_hat = F.normalize(torch.as_tensor(pool_emb).detach().float(), dim=1)
    if clusters is None:
        labels, centres, backend = kmeans(l2_normalise(id_emb), n_clusters, random_state=random_state)
    else:
        labels = as_numpy(clusters[0]).astype(np.int64).reshape(-1)
        centres = as_numpy(clusters[1])
        backend = "injected"
    n_id = int(id_emb.shape[0])
    if scores.shape[0] != n_id or labels.shape[0] != n_id:
        raise DataError(f"{n_id} ID embeddings, {scores.shape[0]} scores and {labels.shape[0]} cluster labels")
    n_found = centres.shape[0]
    if labels.size and (labels.min() < 0 or labels.max() >= n_found):
        raise DataError(f"cluster labels must lie in [0, {n_found})")
    members = np.bincount(labels, minlength=n_found)
    if np.any(members == 0):
        raise DataError(f"cluster {int(np.argmin(members))} has no ID members")
    cluster_scores = np.bincount(labels, weights=scores, minlength=n_found) / members
    budgets = cluster_budgets(cluster_scores, budget, cluster_temperature)
    picks = greedy_nearest_unused(pool_hat, centres, budgets)
    return ColtSelection(picks=picks, budgets=budgets, labels=labels, cluster_scores=cluster_scores, backend=backend)


def colt_lr_total(
    warmup: int,
    epochs: int,
    id_loader_len: int,
    budget: int,
    per_worker_batch: int,
    exact: bool = False,
    n_id: int | None = None,
    world_size: int = 1,
) -> int:
    """Total iterations T of the warm-up + cosine schedule with COLT (docs/math/colt.md §7).

    Reference formula (default): T = warmup·L_id + (epochs − warmup)·(L_id + ⌊K/b⌋ + 1).
    exact=True counts the real mixed-phase loader length per epoch instead: ⌈⌈(N_id + K)/world_size⌉ / b⌉, which is
    ⌈(N_id + K)/b⌉ on one worker (needs n_id). With epochs ≤ warmup no mixed epoch happens and T = epochs·L_id.
    """
    if warmup < 0:
        raise ConfigError(f"colt_warmup must be >= 0, got {warmup}")
    if epochs < 1 or id_loader_len < 1 or per_worker_batch < 1 or world_size < 1:
        raise ConfigError("epochs, the ID loader length, the per-worker batch and the world size must be >= 1")
    if budget < 0:
        raise ConfigError(f"colt_budget must be >= 0, got {budget}")
    id_epochs = min(warmup, epochs)
    mixed_epochs = epochs - id_epochs
    if exact:
        if n_id is None or n_id < 1:
            raise ConfigError("colt_lr_total=exact needs the ID set size n_id >= 1")
        mixed_len = math.ceil(math.ceil((n_id + budget) / world_size) / per_worker_batch)
    else:
        mixed_len = id_loader_len + budget // per_worker_batch + 1
    return id_epochs * id_loader_len + mixed_epochs * mixed_len
