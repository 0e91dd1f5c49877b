"""MAK selection math (Jiang et al., "Improving Contrastive Learning on Imbalanced Seed Data via Open-World
Sampling", NeurIPS 2021): pass merging (docs/math/mak.md §2), ECLE tailness (§3), proximity (§4), score and core set
(§5), K-center diversity (§6) and the run-name template (§7).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import vmap

from ltray.errors import ConfigError, DataError
from ltray.losses.ntxent import ntxent_anchor_losses, per_image
from ltray.select.kcenter import kcenter_greedy
from ltray.select.kmeans import as_numpy, kmeans, l2_normalise

ArrayLike = np.ndarray | torch.Tensor

_PROXIMITY_ROWS = 65536


def _float_tensor(values: ArrayLike) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.detach().float()
    return torch.from_numpy(np.array(values, dtype=np.float32))


def _first_occurrence_order(index: np.ndarray) -> np.ndarray:
    order = np.argsort(index, kind="stable")
    sorted_index = index[order]
    first = np.ones(sorted_index.shape[0], dtype=bool)
    first[1:] = sorted_index[1:] != sorted_index[:-1]
    return order[first]


def _take_rows(values: ArrayLike, rows: np.ndarray) -> ArrayLike:
    if isinstance(values, torch.Tensor):
        return values[torch.as_tensor(rows, device=values.device)]
    return np.asarray(values)[rows]


def _dedupe_pass(number: int, index: ArrayLike, values: ArrayLike) -> tuple[np.ndarray, ArrayLike]:
    flat = as_numpy(index).astype(np.int64).reshape(-1)
    if flat.shape[0] != values.shape[0]:
        raise DataError(f"pass {number} has {flat.shape[0]} indices but {values.shape[0]} rows")
    rows = _first_occurrence_order(flat)
    return flat[rows], _take_rows(values, rows)


def merge_passes(
    passes: Sequence[tuple[ArrayLike, ArrayLike]], expected_size: int | None = None
) -> tuple[np.ndarray, list[ArrayLike]]:
    """Merge inference passes keyed by candidate index (docs/math/mak.md §2).

    Each pass is (index [n], values [n, ...]); rows are sorted by index and only the first occurrence of a repeated
    index (distributed padding) is kept. Every pass must cover the same index set, and, when `expected_size` is
    given, that set must be 0..expected_size − 1. Returns (the sorted unique index, the per-pass values aligned to it).
    """
    if not passes:
        raise DataError("no inference pass to merge")
    merged = [_dedupe_pass(number, index, values) for number, (index, values) in enumerate(passes)]
    merged_index = merged[0][0]
    for number, (unique, _) in enumerate(merged[1:], start=1):
        if not np.array_equal(unique, merged_index):
            raise DataError(f"pass {number} covers a different candidate index set than pass 0")
    if expected_size is not None and not np.array_equal(merged_index, np.arange(expected_size)):
        raise DataError(f"the passes cover {merged_index.shape[0]} indices, not exactly 0..{expected_size - 1}")
    return merged_index, [values for _, values in merged]


def regrouping_batches(permutation: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut one permutation π of M candidates into ECLE batches (docs/math/mak.md §3 step 1).

    With B = min(batch_size, M) and n_b = ⌈M/B⌉, batch β < n_b − 1 is π[βB, (β+1)B) and the last one is π[M − B, M).
    Returns (candidate indices [n_b, B], keep mask [n_b, B]); in the last batch only entries at permutation
    positions ≥ (n_b − 1)·B are kept, so every candidate is kept exactly once.
    """
    size = permutation.shape[0]
    width = min(batch_size, size)
    n_batches = math.ceil(size / width)
    device = permutation.device
    starts = torch.arange(n_batches, device=device) * width
    starts[-1] = size - width
    positions = starts[:, None] + torch.arange(width, device=device)[None, :]
    keep = positions >= (torch.arange(n_batches, device=device) * width)[:, None]
    return permutation[positions], keep


def _batched_per_sample_losses(view_a: torch.Tensor, view_b: torch.Tensor, temperature: float) -> torch.Tensor:
    return vmap(lambda first, second: per_image(ntxent_anchor_losses(first, second, temperature)))(view_a, view_b)


def ecle(
    aug_embeddings: Sequence[ArrayLike],
    batch_size: int = 512,
    temperature: float = 0.2,
    regroupings: int = 10,
    seed: int = 0,
    max_logits_per_chunk: int = 2**25,
) -> np.ndarray:
    """ECLE_n, the empirical contrastive loss expectation (docs/math/mak.md §3).

    aug_embeddings: R ≥ 2 passes Z⁽ʳ⁾ [M, d] of head outputs under the training augmentation (normalised inside the
    loss). For every pair a < b in order (0,1), (0,2), …, and each of the Q = `regroupings` consecutive permutations
    drawn from one CPU `torch.Generator` seeded once with `seed`, the candidates are cut into batches of B_E
    (`regrouping_batches`) and candidate n gets the per-sample NT-Xent L_n (τ_E) with views z⁽ᵃ⁾_n and z⁽ᵇ⁾_n. ECLE_n is
    the mean over the Q·P values. Runs on the device of the first tensor; batches are evaluated together, about
    `max_logits_per_chunk` similarity entries at a time. Returns float64 [M].
    """
    if len(aug_embeddings) < 2:
        raise DataError(f"ECLE needs at least 2 augmented passes, got {len(aug_embeddings)}")
    if batch_size < 1 or regroupings < 1:
        raise ConfigError(f"ECLE batch size and regroupings must be >= 1, got {batch_size} and {regroupings}")
    if temperature <= 0:
        raise ConfigError(f"ECLE temperature must be > 0, got {temperature}")
    device = next((z.device for z in aug_embeddings if isinstance(z, torch.Tensor)), torch.device("cpu"))
    views = [torch.as_tensor(z).detach().to(device, torch.float32) for z in aug_embeddings]
    if any(v.dim() != 2 or v.shape != views[0].shape for v in views):
        raise DataError(f"every augmented pass must have the same 2-d shape, got {[tuple(v.shape) for v in views]}")
    size = views[0].shape[0]
    if size == 0:
        raise DataError("ECLE needs at least one candidate")

    generator = torch.Generator().manual_seed(seed)
    width = min(batch_size, size)
    chunk = max(1, max_logits_per_chunk // (4 * width * width))
    totals = torch.zeros(size, dtype=torch.float64, device=device)
    pairs = [(a, b) for a in range(len(views)) for b in range(a + 1, len(views))]
    with torch.no_grad():
        for a, b in pairs:
            for _ in range(regroupings):
                permutation = torch.randperm(size, generator=generator).to(device)
                batches, keep = regrouping_batches(permutation, batch_size)
                for lo in range(0, batches.shape[0], chunk):
                    members = batches[lo : lo + chunk]
                    losses = _batched_per_sample_losses(views[a][members], views[b][members], temperature)
                    kept = keep[lo : lo + chunk]
                    totals.index_add_(0, members[kept], losses[kept].double())
    return (totals / (regroupings * len(pairs))).cpu().numpy()


def proximity(
    id_features: ArrayLike, cand_features: ArrayLike, n_clusters: int = 10, random_state: int = 0
) -> np.ndarray:
    """d_n = 1 − max_k f̂_n·ĉ_k, the cosine distance of each candidate to its nearest ID centroid (docs/math/mak.md §4).

    The ID backbone features are L2-normalised and clustered by k-means (n_init 10, `random_state`); the centres are
    renormalised; candidates are L2-normalised in row blocks. Returns float32 [M].
    """
    id_hat = l2_normalise(id_features)
    if cand_features.ndim != 2 or id_hat.ndim != 2 or cand_features.shape[1] != id_hat.shape[1]:
        raise DataError(f"candidate features {tuple(cand_features.shape)} do not match ID features {id_hat.shape}")
    _, centres, _ = kmeans(id_hat, n_clusters, random_state=random_state)
    centre_hat = l2_normalise(centres)
    size = int(cand_features.shape[0])
    distance = np.empty(size, dtype=np.float32)
    for lo in range(0, size, _PROXIMITY_ROWS):
        rows = l2_normalise(cand_features[lo : lo + _PROXIMITY_ROWS])
        distance[lo : lo + _PROXIMITY_ROWS] = 1.0 - (rows @ centre_hat.T).max(axis=1)
    return distance


def _standardise(values: np.ndarray) -> np.ndarray:
    if values.size == 0 or np.all(values == values[0]):
        return np.zeros_like(values)
    return (values - values.mean()) / values.std()


def mak_scores(ecle_values: ArrayLike, distance: ArrayLike, loss_weight: float = 0.5) -> np.ndarray:
    """score_n = w·L̂_n − (1 − w)·D̂_n with population-std standardisation, 0 where a std is 0 (docs/math/mak.md §5)."""
    losses = as_numpy(ecle_values).astype(np.float64).reshape(-1)
    distances = as_numpy(distance).astype(np.float64).reshape(-1)
    if losses.shape != distances.shape:
        raise DataError(f"{losses.shape[0]} ECLE values but {distances.shape[0]} distances")
    if not 0.0 <= loss_weight <= 1.0:
        raise ConfigError(f"mak_loss_weight must lie in [0, 1], got {loss_weight}")
    return loss_weight * _standardise(losses) - (1.0 - loss_weight) * _standardise(distances)


def core_set(scores: ArrayLike, budget: int, core_ratio: float = 1.5) -> np.ndarray:
    """The M_core = min(int(core_ratio·budget), M) highest-scoring candidates, in ascending score order: the last
    M_core entries of a stable ascending sort, so ties follow the candidate index (docs/math/mak.md §5 step 3).
    """
    values = as_numpy(scores).reshape(-1)
    if budget < 1:
        raise ConfigError(f"the MAK budget must be >= 1, got {budget}")
    if core_ratio <= 0:
        raise ConfigError(f"core_ratio must be > 0, got {core_ratio}")
    core_size = min(int(core_ratio * budget), values.shape[0])
    order = np.argsort(values, kind="stable")
    return order[order.shape[0] - core_size :].astype(np.int64)


def mak_select(
    ecle_values: ArrayLike,
    distance: ArrayLike,
    cand_features: ArrayLike,
    id_features: ArrayLike,
    budget: int,
    loss_weight: float = 0.5,
    core_ratio: float = 1.5,
) -> np.ndarray:
    """The MAK selection (docs/math/mak.md §5–§6): score, core set, then K-center greedy when the core set exceeds the
    budget, started from all ID backbone features. Returns candidate indices (int64) in output order.
    """
    scores = mak_scores(ecle_values, distance, loss_weight)
    if int(cand_features.shape[0]) != scores.shape[0]:
        raise DataError(f"{cand_features.shape[0]} candidate feature rows for {scores.shape[0]} scores")
    core = core_set(scores, budget, core_ratio)
    if core.shape[0] <= budget:
        return core
    pool = F.normalize(_float_tensor(_take_rows(cand_features, core)), dim=1)
    start = F.normalize(_float_tensor(id_features).to(pool.device), dim=1)
    return core[kcenter_greedy(pool, start, budget)]


def mak_run_name(w: float, R: int, K_p: int, core_ratio: float, budget: int, seed: int) -> str:
    """The reference name template `optimize_{w}lossR{R}_nearK{K_p}_coreR{core_ratio}_num{budget}_s{seed}`."""
    return f"optimize_{float(w)}lossR{int(R)}_nearK{int(K_p)}_coreR{float(core_ratio)}_num{int(budget)}_s{int(seed)}"
