"""Generate ltray's own CIFAR-10-LT and CIFAR-100-LT splits 1..5 (sdclr protocol, data_and_eval.md §1).

    python -m ltray.data.make_shipped_splits --labels-dir CIFAR_LABELS_DIR --out ltray/splits/

where CIFAR_LABELS_DIR holds the train labels `cifar10_train_labels.npy` and `cifar100_train_fine_labels.npy`.

Only the train labels are read (int64 `.npy`, torchvision order); every selection is a seeded permutation of
`generate_split`, not SDCLR's published files. Split k uses seed k for the class ranks and the per-class
permutations; the validation hold-out and the full-shot subset use holdout seed 0, so all five splits share `val` and
`train_full`, as SDCLR's do, and reference one `{dataset}_val.npy` and `{dataset}_train_full.npy` file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ltray.data.lists import read_label_array
from ltray.data.splits import generate_split, write_split
from ltray.errors import LtrayError

IMBALANCE = 100.0
SPLIT_IDS = (1, 2, 3, 4, 5)
HOLDOUT_SEED = 0
TRAIN_SIZE = 50_000
SHARED_ROLES = ("train_full", "val")


@dataclass(frozen=True)
class ShippedDataset:
    """How one shipped data set's splits are generated."""

    name: str
    labels_file: str
    num_classes: int
    n_max: int
    val_per_class: int
    train_full_per_class: int | None


SHIPPED_DATASETS = (
    # pool = the 4 500 per class left after a 500-per-class validation hold-out; train_full = the pool
    ShippedDataset("cifar10", "cifar10_train_labels.npy", 10, 4500, 500, None),
    # pool = the 450 per class left after a 50-per-class hold-out; train_full = 400 per class of it
    ShippedDataset("cifar100", "cifar100_train_fine_labels.npy", 100, 450, 50, 400),
)


def make_shipped_splits(labels_dir: str | Path, out: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Generate and write every shipped split under `out/<dataset>/`; return the manifest paths."""
    labels_dir, out = Path(labels_dir), Path(out)
    manifests = []
    for spec in SHIPPED_DATASETS:
        labels = read_label_array(labels_dir / spec.labels_file, spec.num_classes, TRAIN_SIZE)
        for split_id in SPLIT_IDS:
            split = generate_split(
                labels,
                spec.num_classes,
                n_max=spec.n_max,
                imbalance=IMBALANCE,
                seed=split_id,
                val_per_class=spec.val_per_class,
                holdout_seed=HOLDOUT_SEED,
                train_full_per_class=spec.train_full_per_class,
                dataset=spec.name,
                split_id=split_id,
            )
            manifests.append(write_split(split, out / spec.name, overwrite=overwrite, shared_roles=SHARED_ROLES))
    return manifests


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ltray.data.make_shipped_splits",
        description="Generate ltray's CIFAR-10-LT and CIFAR-100-LT splits 1..5 from the CIFAR train labels.",
    )
    parser.add_argument("--labels-dir", type=Path, required=True, help="folder with the CIFAR train label .npy files")
    parser.add_argument("--out", type=Path, required=True, help="output folder (ltray/splits/)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing split files")
    arguments = parser.parse_args(argv)
    return print_manifests(lambda: make_shipped_splits(arguments.labels_dir, arguments.out, overwrite=arguments.overwrite))


def print_manifests(make: Callable[[], list[Path]]) -> int:
    """Run a split generator and print the manifest paths it wrote; exit status 2 and a one-line error on failure."""
    try:
        manifests = make()
    except LtrayError as error:
        print(f"ltray: error: {error}", file=sys.stderr)
        return 2
    for manifest in manifests:
        print(manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
