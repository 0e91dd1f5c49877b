"""`ltray splits make | show | import`: generate, inspect and import long-tail split files."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from ltray.data.lists import import_sdclr_cifar_split, read_label_array
from ltray.data.make_shipped_splits import HOLDOUT_SEED, SHARED_ROLES, SHIPPED_DATASETS
from ltray.data.splits import generate_split, manifest_path, read_manifest, write_split
from ltray.errors import ConfigError, DataError

if TYPE_CHECKING:
    from ltray.data.sources import CifarName


def _dataset_defaults(dataset: str, labels: str | None) -> tuple[np.ndarray, int, int, int | None, int | None]:
    """(train labels, classes, n_max, validation per class, full-shot per class) of a data set; a new data set has
    no n_max (0) and no validation default (None)."""
    if dataset in ("scenes-lt", "digits-lt"):
        from ltray.data.embedded import load_embedded

        data = load_embedded(dataset)
        return data.train.labels, data.train.num_classes, data.n_max, data.val_per_class, None
    known = {spec.name: spec for spec in SHIPPED_DATASETS}
    if labels is None:
        raise ConfigError(f"--labels is required for {dataset} (int64 .npy train labels)")
    if dataset in known:
        spec = known[dataset]
        return (read_label_array(labels, spec.num_classes), spec.num_classes, spec.n_max, spec.val_per_class,
                spec.train_full_per_class)
    values = read_label_array(labels, None)
    if values.size == 0:
        raise DataError(f"{labels}: no labels")
    return values, int(values.max()) + 1, 0, None, None


def make_splits(
    dataset: str,
    out: str,
    *,
    labels: str | None,
    splits: int,
    seed: int,
    imbalance: float,
    n_max: int | None,
    val_per_class: int | None,
    overwrite: bool,
) -> list[Path]:
    """Generate splits 1..`splits` (split k seeded with seed + k) and write them under `out`."""
    if splits < 1:
        raise ConfigError(f"--splits must be >= 1, got {splits}")
    if imbalance < 1:
        raise ConfigError(f"--imbalance must be >= 1, got {imbalance}")
    values, num_classes, default_n_max, default_val, full_per_class = _dataset_defaults(dataset, labels)
    n_max = n_max if n_max is not None else default_n_max
    val = val_per_class if val_per_class is not None else default_val
    if n_max < 1:
        raise ConfigError(f"--n-max is required for {dataset} and must be >= 1")
    if val is None:
        raise ConfigError(f"--val-per-class is required for {dataset}: a new data set holds out that many images "
                          "per class for validation first (0 for none)")
    if val < 0:
        raise ConfigError(f"--val-per-class must be >= 0, got {val}")
    written = []
    for split_id in range(1, splits + 1):
        split = generate_split(
            values, num_classes, n_max=n_max, imbalance=imbalance, seed=seed + split_id, val_per_class=val or None,
            holdout_seed=HOLDOUT_SEED, train_full_per_class=full_per_class, dataset=dataset, split_id=split_id,
        )
        written.append(write_split(split, out, overwrite=overwrite, shared_roles=SHARED_ROLES))
    return written


def show_split(directory: str, dataset: str, split_id: int) -> str:
    """A short human-readable summary of a split manifest."""
    manifest = read_manifest(manifest_path(Path(directory), dataset, split_id))
    lines = [f"{dataset} split {split_id} ({manifest.get('protocol', '?')} protocol)"]
    for key in ("seed", "imbalance", "n_max", "num_classes", "origin"):
        if key in manifest:
            lines.append(f"  {key}: {manifest[key]}")
    order = manifest.get("class_order_head_to_tail")
    if order is not None:
        lines.append(f"  head -> tail: {' '.join(map(str, order))}")
    for role, entry in manifest.get("roles", {}).items():
        counts = entry.get("counts", [])
        lines.append(f"  {role:>10}: {sum(counts):6d} items  {entry.get('file', '')}  counts {counts[:12]}"
                     + (" ..." if len(counts) > 12 else ""))
    return "\n".join(lines)


def import_published(source: str, dataset: str, out: str, *, labels: str, overwrite: bool) -> list[Path]:
    """Import SDCLR's published CIFAR splits 1..5 into ltray's format (counts checked against the published profile)."""
    root = Path(source)
    if not root.is_dir():
        raise DataError(f"published split folder not found: {root}")
    num_classes = 10 if dataset == "cifar10" else 100
    values = read_label_array(labels, num_classes)
    written = []
    for split_id in range(1, 6):
        split = import_sdclr_cifar_split(root, cast("CifarName", dataset), split_id, values)  # checked there
        written.append(write_split(split, out, overwrite=overwrite, shared_roles=SHARED_ROLES))
    return written
