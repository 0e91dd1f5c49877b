"""Per-class k-shot probe train sets (data_and_eval.md §1 "Variants", §8 `bcl_adam`)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from ltray.errors import ConfigError, DataError


def _labels_array(labels: np.ndarray | torch.Tensor | Sequence[int]) -> np.ndarray:
    array = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise DataError(f"labels must be a 1-D integer array, got shape {array.shape} and dtype {array.dtype}")
    if array.size and array.min() < 0:
        raise DataError("labels must be non-negative class ids")
    return array.astype(np.int64, copy=False)


def kshot_indices(
    labels: np.ndarray | torch.Tensor | Sequence[int], k: int, draws: int, seed: int
) -> list[np.ndarray]:
    """`draws` independent k-shot subsets: positions into `labels`, k per class present.

    Draw j permutes each class's positions (ascending first) with NumPy's generator seeded by (seed, j) and keeps
    the first k; the result is grouped by ascending class id, permutation order within a class. A class with fewer
    than k examples contributes all of them (with a warning).
    """
    if k < 1 or draws < 1:
        raise ConfigError(f"k and draws must be positive, got k={k}, draws={draws}")
    array = _labels_array(labels)
    classes = np.unique(array)
    members = [np.flatnonzero(array == label) for label in classes]
    short = [int(label) for label, positions in zip(classes, members) if positions.size < k]
    if short:
        warnings.warn(f"classes {short} have fewer than {k} examples; all of theirs are used", stacklevel=2)
    subsets = []
    for draw in range(draws):
        generator = np.random.default_rng([seed, draw])
        subsets.append(np.concatenate([generator.permutation(positions)[:k] for positions in members]).astype(np.int64))
    return subsets


def fixed_shot_subsets(
    pool_indices: np.ndarray | Sequence[int],
    labels: np.ndarray | torch.Tensor | Sequence[int],
    shots: Sequence[int],
    k: int,
) -> dict[int, np.ndarray]:
    """BCL's fixed few-shot probe sets: for each shot count s, the first s images per class of one permutation of
    the pool (sorted ascending, then permuted by NumPy's generator seeded with k), so smaller sets are subsets of
    larger ones (50-shot ⊂ 100-shot).

    `pool_indices` are dataset indices (e.g. `cifar100_trainIdxList`), `labels` the labels of the whole dataset
    indexed by dataset index. Returns int64 dataset indices grouped by ascending class id.
    """
    pool = np.asarray(pool_indices)
    if pool.ndim != 1 or pool.size == 0 or not np.issubdtype(pool.dtype, np.integer):
        raise DataError("pool_indices must be a non-empty 1-D integer array")
    if np.unique(pool).size != pool.size:
        raise DataError("pool_indices hold duplicates")
    all_labels = _labels_array(labels)
    if pool.min() < 0 or pool.max() >= all_labels.size:
        raise DataError(f"pool_indices fall outside the {all_labels.size} labelled images")
    if not shots or min(shots) < 1:
        raise ConfigError(f"shots must be positive counts, got {list(shots)}")
    permuted = np.random.default_rng(k).permutation(np.sort(pool).astype(np.int64))
    permuted_labels = all_labels[permuted]
    classes = np.unique(permuted_labels)
    per_class = [permuted[permuted_labels == label] for label in classes]
    smallest = min(members.size for members in per_class)
    if max(shots) > smallest:
        raise DataError(f"a {max(shots)}-shot set needs {max(shots)} images per class; some class has {smallest}")
    return {int(shot): np.concatenate([members[:shot] for members in per_class]) for shot in shots}
