"""Long-tailed splits: the profile, the split container, seeded generation, validation and ltray's split files.

Specification: docs/math/data_and_eval.md §1 (profile, SDCLR split structure, generating splits, variants) and §2 (file
formats, load checks). A split of a data set is a set of item lists ("roles") of one base collection:

- `D_i`: the long-tailed pre-training set; `D_b`: the balanced pre-training set; `S_b`: the few-shot probe set;
- `train_full`: the full-shot probe train set; `val`: validation; `test`: the test set where it is a list;
- `shot{s}_{k}`: BCL's fixed s-shot probe sets, k = 1..5.

On disk a split is one int64 `.npy` (index lists) or UTF-8 text file (path lists) per role, named
`{dataset}_split{k}_{role}.npy|.txt`, plus the manifest `{dataset}_split{k}.json` holding the provenance, the
per-class counts of every role and the sha256 of every file. Index lists are grouped by ascending class id, so the
manifest counts give every item's label.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from ltray.errors import ConfigError, DataError

MANIFEST_FORMAT = "ltray-split/1"
PROTOCOLS = ("sdclr", "cao")
NESTED_ROLES = ("S_b", "D_b", "D_i")
EVALUATION_ROLES = ("val", "test")
BASE_ROLES = ("D_i", "D_b", "S_b", "train_full", "val", "test")
SHOT_ROLE = re.compile(r"shot([1-9][0-9]*)_([1-9][0-9]*)")
DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

# Every random selection uses its own generator numpy.random.default_rng((seed, step[, class id])).
STEP_CLASS_RANKS = 0
STEP_POOL_PERMUTATION = 1
STEP_VALIDATION = 2
STEP_TRAIN_FULL = 3
RNG_DESCRIPTION = (
    "numpy.random.default_rng((seed, step, class_id)) per class and selection; steps: 0 class ranks (no class id, "
    "seed), 1 pool permutation (seed), 2 validation hold-out (holdout_seed), 3 full-shot subset (holdout_seed); "
    "each class pool is sorted ascending before it is permuted"
)


def lt_profile(n_max: int, num_classes: int, imbalance: float) -> np.ndarray:
    """Per-rank counts n(r) = ⌊n_max·ρ^(−r/(C−1))⌋ for ranks r = 0..C−1, head to tail, in float64 (§1).

    Reproduces the tables of docs/math/data_and_eval.md §1 exactly, e.g. CIFAR-10 (4500, 10, 100) → 4500 2697 1617 …
    75 45 (total 11 165).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ConfigError(f"a long-tailed profile needs at least 2 classes, got {num_classes!r}")
    if isinstance(n_max, bool) or not isinstance(n_max, (int, np.integer)) or n_max < 1:
        raise ConfigError(f"n_max must be a positive integer, got {n_max!r}")
    if not math.isfinite(float(imbalance)) or float(imbalance) < 1.0:
        raise ConfigError(f"the imbalance ratio must be a finite number ≥ 1, got {imbalance!r}")
    ranks = np.arange(num_classes, dtype=np.float64)
    counts = np.floor(int(n_max) * np.power(float(imbalance), -ranks / (num_classes - 1)))
    return counts.astype(np.int64)


def head_to_tail_order(counts: np.ndarray | Sequence[int]) -> np.ndarray:
    """Class ids sorted by descending count, ties broken by ascending class id."""
    return np.argsort(-np.asarray(counts, dtype=np.int64), kind="stable").astype(np.int64)


def _read_only_int64(values: Any, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise DataError(f"{what} must be a 1-D integer array, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{what} must hold integers, got dtype {array.dtype}")
    array = array.astype(np.int64, copy=True)
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class ItemList:
    """An ordered list of items of one base collection, with their class labels.

    Items are named either by `indices` (int64 positions into an array-backed base set, e.g. CIFAR train order) or
    by `paths` (relative to an image root); `sources` optionally names each path's root (MAK's ImageNet/Places mix;
    an empty string means the default root).
    """

    labels: np.ndarray
    indices: np.ndarray | None = None
    paths: tuple[str, ...] | None = None
    sources: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        labels = _read_only_int64(self.labels, "item labels")
        object.__setattr__(self, "labels", labels)
        if (self.indices is None) == (self.paths is None):
            raise DataError("an item list names its items either by indices or by paths")
        if self.indices is not None:
            indices = _read_only_int64(self.indices, "item indices")
            if indices.shape != labels.shape:
                raise DataError(f"{indices.size} item indices for {labels.size} labels")
            if indices.size and indices.min() < 0:
                raise DataError(f"item indices must be non-negative, found {int(indices.min())}")
            object.__setattr__(self, "indices", indices)
            if self.sources is not None:
                raise DataError("sources name image roots and need paths, not indices")
            return
        paths = tuple(str(path) for path in cast(tuple[str, ...], self.paths))  # no indices, so paths (checked above)
        if len(paths) != labels.size:
            raise DataError(f"{len(paths)} item paths for {labels.size} labels")
        object.__setattr__(self, "paths", paths)
        if self.sources is not None:
            sources = tuple(str(source) for source in self.sources)
            if len(sources) != len(paths):
                raise DataError(f"{len(sources)} item sources for {len(paths)} paths")
            object.__setattr__(self, "sources", sources)

    def __len__(self) -> int:
        return int(self.labels.size)

    def class_counts(self, num_classes: int) -> np.ndarray:
        """Number of items of each class 0..num_classes−1 (int64); labels outside that range raise DataError."""
        return np.bincount(_labels_vector(self.labels, num_classes), minlength=num_classes).astype(np.int64)

    def keys(self) -> np.ndarray:
        """One comparable key per item: the index, or the (source, path) pair joined by a tab."""
        if self.indices is not None:
            return self.indices
        paths = cast(tuple[str, ...], self.paths)  # no indices, so paths (`__post_init__`)
        sources = self.sources if self.sources is not None else ("",) * len(paths)
        return np.asarray([f"{source}\t{path}" for source, path in zip(sources, paths)], dtype=str)

    def is_grouped(self) -> bool:
        return bool(np.all(self.labels[1:] >= self.labels[:-1]))


def is_role(name: str) -> bool:
    return name in BASE_ROLES or SHOT_ROLE.fullmatch(name) is not None


@dataclass
class Split:
    """One long-tailed split of a data set: its item lists by role, and its manifest (provenance and counts)."""

    dataset: str
    split_id: int
    num_classes: int
    lists: dict[str, ItemList]
    manifest: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or DATASET_NAME.fullmatch(self.dataset) is None:
            raise DataError(f"invalid data set name {self.dataset!r} (letters, digits, '_', '.', '-')")
        if isinstance(self.split_id, bool) or not isinstance(self.split_id, (int, np.integer)) or self.split_id < 0:
            raise DataError(f"{self.dataset}: the split id must be a non-negative integer, got {self.split_id!r}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, (int, np.integer)):
            raise DataError(f"{self.dataset}: the number of classes must be an integer, got {self.num_classes!r}")
        if self.num_classes < 2:
            raise DataError(f"{self.dataset}: a split needs at least 2 classes, got {self.num_classes}")
        self.split_id = int(self.split_id)
        self.num_classes = int(self.num_classes)
        unknown = [role for role in self.lists if not is_role(role)]
        if unknown:
            raise DataError(f"{self.name}: unknown role {unknown[0]!r}")
        not_lists = [role for role, items in self.lists.items() if not isinstance(items, ItemList)]
        if not_lists:
            raise DataError(f"{self.name}: role {not_lists[0]} is not an ItemList")
        if "D_i" not in self.lists:
            raise DataError(f"{self.name}: the long-tailed pre-training list D_i is missing")

    @property
    def name(self) -> str:
        return f"{self.dataset} split {self.split_id}"

    def role(self, name: str) -> ItemList:
        if name not in self.lists:
            raise DataError(f"{self.name} has no {name} list (roles: {', '.join(self.lists)})")
        return self.lists[name]

    def pretrain_counts(self) -> np.ndarray:
        """Per-class counts of `D_i`, the counts every Many/Medium/Few grouping of this split uses."""
        return self.lists["D_i"].class_counts(self.num_classes)

    def head_to_tail(self) -> np.ndarray:
        """Class ids from head to tail by `D_i` count, ties by ascending class id."""
        return head_to_tail_order(self.pretrain_counts())


def role_summary(items: ItemList, num_classes: int) -> dict[str, Any]:
    """The manifest entry of a role: total and per-class counts."""
    counts = items.class_counts(num_classes)
    return {"total": int(counts.sum()), "counts": counts.tolist()}


def data_manifest(
    dataset: str, split_id: int, num_classes: int, lists: Mapping[str, ItemList], **fields: Any
) -> dict[str, Any]:
    """The manifest fields derived from the lists themselves, plus `fields` (provenance)."""
    d_i_counts = lists["D_i"].class_counts(num_classes)
    order = head_to_tail_order(d_i_counts)
    rank = np.empty(num_classes, dtype=np.int64)
    rank[order] = np.arange(num_classes)
    return {
        "format": MANIFEST_FORMAT, "dataset": dataset, "split_id": int(split_id), "num_classes": int(num_classes),
        **fields,
        "class_order_head_to_tail": order.tolist(),
        "class_rank_by_count": rank.tolist(),
        "roles": {role: role_summary(items, num_classes) for role, items in lists.items()},
    }


def _labels_vector(labels: Any, num_classes: int) -> np.ndarray:
    array = _read_only_int64(labels, "labels")
    if array.size and (array.min() < 0 or array.max() >= num_classes):
        bad = int(array[(array < 0) | (array >= num_classes)][0])
        raise DataError(f"label {bad} is outside 0..{num_classes - 1}")
    return array


def _index_set(values: Any, size: int, what: str) -> np.ndarray:
    array = _read_only_int64(values, what)
    if array.size and (array.min() < 0 or array.max() >= size):
        bad = int(array[(array < 0) | (array >= size)][0])
        raise DataError(f"{what}: index {bad} is outside the {size} labelled items")
    unique = np.unique(array)
    if unique.size != array.size:
        raise DataError(f"{what} holds {array.size - unique.size} duplicate indices")
    return array


def _class_pools(labels: np.ndarray, candidates: np.ndarray, num_classes: int) -> list[np.ndarray]:
    ordered = np.sort(candidates)
    candidate_labels = labels[ordered]
    return [ordered[candidate_labels == label] for label in range(num_classes)]


def _permuted(pool: np.ndarray, seed: int, step: int, label: int) -> np.ndarray:
    return np.random.default_rng((seed, step, label)).permutation(pool)


def _hold_out(
    labels: np.ndarray, candidates: np.ndarray, num_classes: int, per_class: int, seed: int, step: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` items of every class by a seeded permutation (grouped by class) and the sorted remainder."""
    pools = _class_pools(labels, candidates, num_classes)
    smallest = int(np.argmin([pool.size for pool in pools]))
    if pools[smallest].size < per_class:
        raise DataError(
            f"{what}: class {smallest} has {pools[smallest].size} candidate items, fewer than {per_class} per class"
        )
    held = np.concatenate([_permuted(pool, seed, step, label)[:per_class] for label, pool in enumerate(pools)])
    return held, np.setdiff1d(candidates, held)


def _grouped_by_class(indices: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return indices[np.argsort(labels[indices], kind="stable")]


def _index_items(indices: np.ndarray, labels: np.ndarray) -> ItemList:
    return ItemList(labels=labels[indices], indices=indices)


def generate_split(
    labels: np.ndarray | Sequence[int],
    num_classes: int,
    *,
    n_max: int,
    imbalance: float,
    seed: int,
    val_per_class: int | None,
    pool: np.ndarray | Sequence[int] | None = None,
    shuffle_classes: bool = True,
    dataset: str,
    split_id: int,
    val_indices: np.ndarray | Sequence[int] | None = None,
    holdout_seed: int | None = None,
    train_full_per_class: int | None = None,
    protocol: str = "sdclr",
) -> Split:
    """Generate one long-tailed split from the labels of a base set (data_and_eval.md §1 "Generating splits").

    - Validation: `val_indices` when given; otherwise `val_per_class` items per class held out from the candidates
      (`pool`, or every item) by a seeded permutation of its own; otherwise none (`cao`). The pool of the
      pre-training sets is the candidates minus validation; `pool` must not overlap `val_indices`.
    - Ranks: a seeded permutation of the class ids (identity when `shuffle_classes` is false); the class at rank r
      gets n(r) = `lt_profile(n_max, C, imbalance)[r]` items.
    - Each class pool is sorted ascending, then permuted (seeded); `S_b`, `D_b` and `D_i` are the prefixes of
      lengths N_S = ⌊0.01·n_max⌋, N_B = ⌊|D_i|/C⌋ and n(r_c); n_max must not exceed the smallest pool.
    - `train_full`: the pool, or `train_full_per_class` items per class of it (seeded, like CIFAR-100's 400-per-class
      `trainIdxList` inside the 450-per-class pool).
    - Every list is grouped by ascending class id, permutation order within a class.

    `seed` drives the class ranks and the pool permutations; `holdout_seed` (default `seed`) drives validation and
    the full-shot subset, so splits sharing it share `val` and `train_full`, as SDCLR's five splits do. Under
    `protocol="cao"` the pool is the whole train set without validation; GH uses `shuffle_classes=False`.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown split protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    if protocol == "cao" and (
        pool is not None or val_per_class is not None or val_indices is not None or train_full_per_class is not None
    ):
        raise ConfigError("the cao protocol draws from the whole train set: no pool, validation or full-shot subset")
    if val_per_class is not None and val_indices is not None:
        raise ConfigError("give either val_per_class or val_indices, not both")
    for name, value in (("val_per_class", val_per_class), ("train_full_per_class", train_full_per_class)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    counts_by_rank = lt_profile(n_max, num_classes, imbalance)
    if counts_by_rank[-1] < 1:
        raise ConfigError(f"n_max {n_max} with imbalance {imbalance} leaves the tail class no items")
    n_few_shot = int(n_max) // 100
    if n_few_shot < 1:
        raise ConfigError(f"n_max {n_max} gives an empty few-shot set S_b (N_S = ⌊0.01·n_max⌋ = 0)")
    holdout_seed = seed if holdout_seed is None else holdout_seed
    base_labels = _labels_vector(labels, num_classes)
    size = base_labels.size

    candidates = np.arange(size, dtype=np.int64) if pool is None else np.sort(_index_set(pool, size, "pool"))
    pool_definition = "every item of the base set" if pool is None else "the given pool"
    validation: dict[str, Any] | None = None
    val: np.ndarray | None = None
    if val_indices is not None:
        val = _grouped_by_class(_index_set(val_indices, size, "validation indices"), base_labels)
        overlap = np.intersect1d(candidates, val).size
        if pool is not None and overlap:
            raise DataError(f"the pool and the validation indices share {overlap} items")
        candidates = np.setdiff1d(candidates, val)
        pool_definition += " minus the given validation indices"
        validation = {"definition": "given validation indices"}
    elif val_per_class is not None:
        val, candidates = _hold_out(
            base_labels, candidates, num_classes, int(val_per_class), holdout_seed, STEP_VALIDATION, "validation"
        )
        pool_definition += f" minus a {val_per_class}-per-class validation hold-out"
        validation = {"definition": "per-class hold-out", "per_class": int(val_per_class), "seed": holdout_seed}

    pools = _class_pools(base_labels, candidates, num_classes)
    smallest = int(np.argmin([class_pool.size for class_pool in pools]))
    if int(n_max) > pools[smallest].size:
        raise DataError(
            f"n_max {n_max} exceeds the smallest class pool (class {smallest}: {pools[smallest].size} items)"
        )

    rank_permutation = (
        np.random.default_rng((seed, STEP_CLASS_RANKS)).permutation(num_classes)
        if shuffle_classes
        else np.arange(num_classes)
    )
    class_rank = np.empty(num_classes, dtype=np.int64)
    class_rank[rank_permutation] = np.arange(num_classes)
    n_per_class = counts_by_rank[class_rank]
    n_balanced = int(n_per_class.sum()) // num_classes
    permutations = [_permuted(class_pool, seed, STEP_POOL_PERMUTATION, label) for label, class_pool in enumerate(pools)]

    def prefixes(lengths: Iterable[int]) -> np.ndarray:
        return np.concatenate([order[:length] for order, length in zip(permutations, lengths)]).astype(np.int64)

    if train_full_per_class is None:
        train_full = np.concatenate(pools).astype(np.int64)
        train_full_definition: dict[str, Any] = {"definition": "the pool"}
    else:
        train_full, _ = _hold_out(
            base_labels, candidates, num_classes, int(train_full_per_class), holdout_seed, STEP_TRAIN_FULL, "train_full"
        )
        train_full_definition = {
            "definition": "per-class subset of the pool",
            "per_class": int(train_full_per_class),
            "seed": holdout_seed,
        }
    lists = {
        "D_i": _index_items(prefixes(n_per_class), base_labels),
        "D_b": _index_items(prefixes([n_balanced] * num_classes), base_labels),
        "S_b": _index_items(prefixes([n_few_shot] * num_classes), base_labels),
        "train_full": _index_items(train_full, base_labels),
    }
    if val is not None:
        lists["val"] = _index_items(val, base_labels)

    pool_counts = np.asarray([class_pool.size for class_pool in pools], dtype=np.int64)
    manifest = data_manifest(
        dataset,
        split_id,
        num_classes,
        lists,
        origin="generated",
        protocol=protocol,
        nested=True,
        seed=int(seed),
        holdout_seed=int(holdout_seed),
        rng=RNG_DESCRIPTION,
        imbalance=float(imbalance),
        n_max=int(n_max),
        n_balanced=n_balanced,
        n_few_shot=n_few_shot,
        shuffle_classes=bool(shuffle_classes),
        base_size=int(size),
        rank_permutation=rank_permutation.tolist(),
        class_rank=class_rank.tolist(),
        pool={"definition": pool_definition, "total": int(pool_counts.sum()), "counts": pool_counts.tolist()},
        validation=validation,
        train_full=train_full_definition,
    )
    split = Split(dataset=dataset, split_id=split_id, num_classes=num_classes, lists=lists, manifest=manifest)
    validate_split(split, base_labels)
    return split


def add_shot_sets(split: Split, shots: Sequence[int] = (100, 50), subsets: int = 5) -> Split:
    """A copy of `split` with BCL's fixed few-shot probe sets `shot{s}_{k}` (data_and_eval.md §1 "Variants").

    For k = 1..subsets: sort the `train_full` indices ascending, permute them with `numpy.random.default_rng(k)`,
    and keep the first s items of every class in that order, so the 50-shot set ⊂ the 100-shot set.
    """
    if not shots or min(shots) < 1 or subsets < 1:
        raise ConfigError(f"shots and subsets must be positive, got shots={list(shots)}, subsets={subsets}")
    pool = split.role("train_full")
    if pool.indices is None:
        raise DataError(f"{split.name}: fixed-shot sets need an index-based train_full list")
    counts = pool.class_counts(split.num_classes)
    if counts.min() < max(shots):
        raise DataError(
            f"{split.name}: class {int(np.argmin(counts))} has {int(counts.min())} train_full items, "
            f"fewer than {max(shots)}"
        )
    from ltray.eval.shots import fixed_shot_subsets

    full_labels = np.zeros(int(pool.indices.max()) + 1, dtype=np.int64)
    full_labels[pool.indices] = pool.labels
    lists = dict(split.lists)
    for subset in range(1, subsets + 1):
        for shot, indices in fixed_shot_subsets(pool.indices, full_labels, shots, subset).items():
            labels = np.repeat(np.arange(split.num_classes, dtype=np.int64), shot)
            lists[f"shot{shot}_{subset}"] = ItemList(labels=labels, indices=indices)
    manifest = copy.deepcopy(split.manifest)
    manifest["shot_sets"] = {
        "definition": "per-class prefixes of numpy.random.default_rng(k).permutation(sorted train_full)",
        "shots": [int(shot) for shot in shots],
        "seeds": list(range(1, subsets + 1)),
    }
    manifest.setdefault("roles", {})
    for role, items in lists.items():
        manifest["roles"][role] = {**manifest["roles"].get(role, {}), **role_summary(items, split.num_classes)}
    result = Split(split.dataset, split.split_id, split.num_classes, lists, manifest)
    validate_split(result)
    return result


def _check_prefixes(split: Split, first: str, second: str) -> None:
    """Per class, the shorter of the two lists is a prefix of the longer one (both in list order)."""
    num_classes = split.num_classes
    sequences = []
    for role in (first, second):
        items = split.lists[role]
        order = np.argsort(items.labels, kind="stable")
        bounds = np.cumsum(items.class_counts(num_classes))[:-1]
        sequences.append(np.split(items.keys()[order], bounds))
    for label, (a, b) in enumerate(zip(*sequences)):
        shorter, longer = (a, b) if a.size <= b.size else (b, a)
        if not np.array_equal(longer[: shorter.size], shorter):
            raise DataError(f"{split.name}: {first} and {second} are not prefixes of one permutation in class {label}")


def validate_split(split: Split, labels: np.ndarray | Sequence[int] | None = None) -> None:
    """The load checks (data_and_eval.md §2); the first failure raises a one-line DataError.

    - labels in range; with `labels` (the base set's), index lists are in range and carry the base labels;
    - no duplicates within a role; `val` and `test` disjoint from every other role;
    - per-class counts equal the manifest's `roles` entries, and the head-to-tail order its
      `class_order_head_to_tail`;
    - nested splits (`manifest["nested"]`): `S_b`, `D_b` and `D_i` are prefixes of one permutation per class;
    - generated splits: `D_i` follows the profile under `class_rank`, `D_b` and `S_b` are balanced at N_B and N_S.
    """
    num_classes = split.num_classes
    base_labels = None if labels is None else _labels_vector(labels, num_classes)
    counts: dict[str, np.ndarray] = {}
    keys: dict[str, np.ndarray] = {}
    for role, items in split.lists.items():
        try:
            counts[role] = items.class_counts(num_classes)
        except DataError as error:
            raise DataError(f"{split.name}, {role}: {error}") from error
        keys[role] = items.keys()
        duplicates = keys[role].size - np.unique(keys[role]).size
        if duplicates:
            raise DataError(f"{split.name}: {role} holds {duplicates} duplicate items")
        if base_labels is not None and items.indices is not None:
            if items.indices.size and items.indices.max() >= base_labels.size:
                raise DataError(
                    f"{split.name}: {role} index {int(items.indices.max())} is outside the "
                    f"{base_labels.size} labelled items"
                )
            if not np.array_equal(base_labels[items.indices], items.labels):
                raise DataError(f"{split.name}: {role} labels differ from the base set's labels")
    for held_out in EVALUATION_ROLES:
        if held_out not in keys:
            continue
        for role in split.lists:
            if role != held_out:
                shared = np.intersect1d(keys[held_out], keys[role]).size
                if shared:
                    raise DataError(f"{split.name}: {held_out} shares {shared} items with {role}")

    manifest = split.manifest
    roles = manifest.get("roles")
    if roles is not None:
        if set(roles) != set(split.lists):
            raise DataError(
                f"{split.name}: the manifest lists roles {sorted(roles)}, the split has {sorted(split.lists)}"
            )
        for role, entry in roles.items():
            if list(entry.get("counts", [])) != counts[role].tolist():
                raise DataError(f"{split.name}: per-class counts of {role} differ from the manifest")
    order = manifest.get("class_order_head_to_tail")
    if order is not None and list(order) != split.head_to_tail().tolist():
        raise DataError(f"{split.name}: the head-to-tail class order differs from the manifest")
    if manifest.get("nested"):
        present = [role for role in NESTED_ROLES if role in split.lists]
        for position, first in enumerate(present):
            for second in present[position + 1 :]:
                _check_prefixes(split, first, second)
    if manifest.get("origin") == "generated":
        _check_generated_counts(split, counts)


def _check_generated_counts(split: Split, counts: Mapping[str, np.ndarray]) -> None:
    manifest = split.manifest
    try:
        profile = lt_profile(int(manifest["n_max"]), split.num_classes, float(manifest["imbalance"]))
        class_rank = np.asarray(manifest["class_rank"], dtype=np.int64)
        expected = {
            "D_i": profile[class_rank],
            "D_b": np.full(split.num_classes, int(manifest["n_balanced"])),
            "S_b": np.full(split.num_classes, int(manifest["n_few_shot"])),
        }
    except (KeyError, TypeError, ValueError, IndexError, ConfigError) as error:
        raise DataError(f"{split.name}: malformed generation fields in the manifest ({error})") from error
    if expected["D_b"][0] != int(expected["D_i"].sum()) // split.num_classes:
        raise DataError(f"{split.name}: N_B {int(expected['D_b'][0])} is not ⌊|D_i|/C⌋")
    for role, wanted in expected.items():
        if role in counts and not np.array_equal(counts[role], wanted):
            raise DataError(f"{split.name}: per-class counts of {role} do not follow the generation parameters")


def manifest_path(directory: str | Path, dataset: str, split_id: int) -> Path:
    return Path(directory) / f"{dataset}_split{split_id}.json"


def role_file_name(dataset: str, split_id: int, role: str, items: ItemList, *, shared: bool = False) -> str:
    """`{dataset}_split{k}_{role}` (or `{dataset}_{role}` for a role shared by several splits) plus `.npy` for
    index lists or `.txt` for path lists."""
    stem = f"{dataset}_{role}" if shared else f"{dataset}_split{split_id}_{role}"
    return stem + (".npy" if items.indices is not None else ".txt")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _temporary_path(directory: Path, name: str) -> Path:
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    os.close(handle)
    return Path(temporary)


def _json_text(value: Any, depth: int = 0) -> str:
    """JSON with one key per line and every list on one line."""
    if isinstance(value, dict) and value:
        pad = " " * (depth + 1)
        entries = [f"{pad}{json.dumps(key)}: {_json_text(item, depth + 1)}" for key, item in value.items()]
        return "{\n" + ",\n".join(entries) + "\n" + " " * depth + "}"
    return json.dumps(value, ensure_ascii=False)


def write_split(
    split: Split, directory: str | Path, *, overwrite: bool = False, shared_roles: Sequence[str] = ()
) -> Path:
    """Write `split` into `directory` atomically; return the manifest's path.

    Every file is written under a temporary name and renamed into place once all are written and checked, the
    manifest last. An existing split (manifest or any role file) is refused unless `overwrite` is true. Roles in
    `shared_roles` (e.g. `val` and `train_full` of splits sharing a hold-out seed) go to `{dataset}_{role}` files that
    several splits reference; an existing shared file with the same bytes is kept, one with other bytes is refused
    unless `overwrite` is true. Index lists must be grouped by ascending class id, as the manifest counts define their
    labels.
    """
    from ltray.data.lists import write_text_list  # lists builds on this module

    validate_split(split)
    unknown = sorted(set(shared_roles) - set(split.lists))
    if unknown:
        raise DataError(f"{split.name} has no {unknown[0]} list to share")
    directory = Path(directory)
    target_manifest = manifest_path(directory, split.dataset, split.split_id)
    names = {
        role: role_file_name(split.dataset, split.split_id, role, items, shared=role in shared_roles)
        for role, items in split.lists.items()
    }
    if not overwrite:
        own_files = [directory / name for role, name in names.items() if role not in shared_roles]
        existing = [path for path in [target_manifest, *own_files] if path.exists()]
        if existing:
            raise DataError(f"refusing to overwrite the existing split file {existing[0]} (overwrite=True replaces it)")
    for role, items in split.lists.items():
        if items.indices is not None and not items.is_grouped():
            raise DataError(f"{split.name}: {role} is not grouped by ascending class id and cannot be written")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create the split folder {directory}: {error.strerror}") from error

    manifest = copy.deepcopy(split.manifest)
    manifest.update(
        format=MANIFEST_FORMAT, dataset=split.dataset, split_id=split.split_id, num_classes=split.num_classes
    )
    manifest["roles"] = {}
    staged: list[tuple[Path, Path]] = []
    try:
        for role, items in split.lists.items():
            target = directory / names[role]
            temporary = _temporary_path(directory, names[role])
            staged.append((temporary, target))
            if items.indices is not None:
                with open(temporary, "wb") as handle:
                    np.save(handle, np.ascontiguousarray(items.indices, dtype="<i8"), allow_pickle=False)
            else:
                write_text_list(items, temporary)
            sha256 = file_sha256(temporary)
            if role in shared_roles and target.exists() and not overwrite:
                if file_sha256(target) != sha256:
                    raise DataError(
                        f"refusing to overwrite the shared split file {target}, which holds a different {role} list"
                    )
                staged.pop()
                temporary.unlink()
            manifest["roles"][role] = {"file": names[role], "sha256": sha256, **role_summary(items, split.num_classes)}
        temporary = _temporary_path(directory, target_manifest.name)
        staged.append((temporary, target_manifest))
        temporary.write_text(_json_text(manifest) + "\n", encoding="utf-8")
        for temporary, target in staged:
            os.replace(temporary, target)
    except OSError as error:
        raise DataError(f"cannot write split files into {directory}: {error.strerror or error}") from error
    finally:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
    return target_manifest


def read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"split manifest not found: {path}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise DataError(f"{path}: not a valid JSON manifest ({error})") from error
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DataError(f"{path}: not an ltray split manifest (format {MANIFEST_FORMAT} expected)")
    return manifest


def read_split(
    directory: str | Path, dataset: str, split_id: int, labels: np.ndarray | Sequence[int] | None = None
) -> Split:
    """Read a split written by `write_split`, verifying every file's sha256 and the load checks.

    Without `labels` the labels of index lists come from the manifest counts (the lists are grouped by class);
    with `labels` (the base set's) the per-class counts are recomputed from them and checked against the manifest.
    """
    from ltray.data.lists import read_index_list, read_text_list  # lists builds on this module

    directory = Path(directory)
    path = manifest_path(directory, dataset, split_id)
    manifest = read_manifest(path)
    try:
        num_classes = int(manifest["num_classes"])
        if manifest["dataset"] != dataset or int(manifest["split_id"]) != int(split_id):
            raise DataError(f"{path}: describes {manifest['dataset']} split {manifest['split_id']}")
        entries = {
            str(role): (str(entry["file"]), str(entry["sha256"]), np.asarray(entry["counts"], dtype=np.int64))
            for role, entry in dict(manifest["roles"]).items()
        }
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"{path}: malformed manifest ({type(error).__name__}: {error})") from error
    base_labels = None if labels is None else _labels_vector(labels, num_classes)
    lists: dict[str, ItemList] = {}
    for role, (name, sha256, counts) in entries.items():
        stems = (f"{dataset}_split{split_id}_{role}", f"{dataset}_{role}")
        allowed = {stem + suffix for stem in stems for suffix in (".npy", ".txt")}
        if name not in allowed:
            raise DataError(f"{path}: role {role} names an unexpected file {name!r}")
        if counts.shape != (num_classes,) or (counts.size and counts.min() < 0):
            raise DataError(f"{path}: role {role} needs {num_classes} non-negative per-class counts")
        file = directory / name
        if not file.is_file():
            raise DataError(f"split file not found: {file}")
        if file_sha256(file) != sha256:
            raise DataError(f"{file}: sha256 differs from the manifest (corrupt or modified file)")
        if name.endswith(".txt"):
            lists[role] = read_text_list(file)
            continue
        indices = read_index_list(file)
        if indices.size != counts.sum():
            raise DataError(f"{file}: {indices.size} indices, the manifest counts {int(counts.sum())}")
        grouped_labels = np.repeat(np.arange(num_classes, dtype=np.int64), counts)
        if base_labels is not None:
            if indices.size and indices.max() >= base_labels.size:
                raise DataError(f"{file}: index {int(indices.max())} is outside the {base_labels.size} labelled items")
            if not np.array_equal(np.bincount(base_labels[indices], minlength=num_classes), counts):
                raise DataError(f"{file}: per-class counts from the labels differ from the manifest")
            if not np.array_equal(base_labels[indices], grouped_labels):
                raise DataError(f"{file}: items are not grouped by ascending class id")
        lists[role] = ItemList(labels=grouped_labels, indices=indices)
    split = Split(dataset=dataset, split_id=int(split_id), num_classes=num_classes, lists=lists, manifest=manifest)
    validate_split(split, base_labels)
    return split
