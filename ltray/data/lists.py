"""Readers and writers for the published split formats, and importers that turn published files into `Split`s.

Specification: docs/math/data_and_eval.md §2.
- CIFAR `.npy`: a 1-D int64 array of indices into the torchvision-ordered train set.
- ImageNet/Places text lists: UTF-8, one image per line, `path label [source]`, whitespace-separated.
- SDCLR's layout (VITA-Group/SDCLR `split/`): `cifar10_imbSub_with_subsets/split{s}_{D_i,D_b,S_b}.npy`,
  `cifar10/{trainIdxList,valIdxList}.npy`, `cifar100_imbSub_with_subsets/cifar100_split{s}_{D_i,D_b,S_b}.npy`,
  `cifar100/cifar100_{trainIdxList,valIdxList}.npy`, `imagenet-100/*.txt` and `ImageNet_LT/*.txt`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np

from ltray.data.splits import ItemList, Split, data_manifest, file_sha256, lt_profile, validate_split
from ltray.errors import DataError
from ltray.storage import atomic_file

# dataset: (subset file pattern, full-shot train list, validation list, number of classes, n_max,
#           full-shot and validation images per class)
SDCLR_CIFAR_LAYOUT: dict[str, tuple[str, str, str, int, int, int, int]] = {
    "cifar10": (
        "cifar10_imbSub_with_subsets/split{split}_{role}.npy",
        "cifar10/trainIdxList.npy",
        "cifar10/valIdxList.npy",
        10,
        4500,
        4500,
        500,
    ),
    "cifar100": (
        "cifar100_imbSub_with_subsets/cifar100_split{split}_{role}.npy",
        "cifar100/cifar100_trainIdxList.npy",
        "cifar100/cifar100_valIdxList.npy",
        100,
        450,
        400,
        50,
    ),
}
SDCLR_IMBALANCE = 100.0

# dataset: (number of classes, role → list file under the SDCLR `split/` folder). Not every file is published
# (data_and_eval.md §2): ImageNet_100_train and the ImageNet-LT train lists are supplied by the user.
SDCLR_IMAGENET_LAYOUT: dict[str, tuple[int, dict[str, str]]] = {
    "imagenet100": (
        100,
        {
            "D_i": "imagenet-100/imageNet_100_LT_train.txt",
            "D_b": "imagenet-100/imageNet_100_BL_train.txt",
            "S_b": "imagenet-100/imageNet_100_sub_balance_train_0.01.txt",
            "train_full": "imagenet-100/ImageNet_100_train.txt",
            "val": "imagenet-100/ImageNet_100_val.txt",
            "test": "imagenet-100/ImageNet_100_test.txt",
        },
    ),
    "imagenet_lt": (
        1000,
        {
            "D_i": "ImageNet_LT/ImageNet_LT_train.txt",
            "D_b": "ImageNet_LT/ImageNet_BL_train.txt",
            "S_b": "ImageNet_LT/imageNet_sub_balance_train_0.01.txt",
            "train_full": "ImageNet_LT/ImageNet_train.txt",
            "val": "ImageNet_LT/ImageNet_LT_val.txt",
            "test": "ImageNet_LT/ImageNet_LT_test.txt",
        },
    ),
}
# the sizes data_and_eval.md §2 gives for the published lists
SDCLR_IMAGENET_TOTALS: dict[str, dict[str, int]] = {
    "imagenet100": {"D_i": 12205, "D_b": 12200, "S_b": 1200, "val": 2000, "test": 5000},
    "imagenet_lt": {"S_b": 12000, "val": 20000, "test": 50000},
}
_REQUIRED_PUBLISHED_ROLES = ("D_i", "S_b", "val", "test")
_LABEL = re.compile(r"[0-9]+")


def read_index_list(path: str | Path) -> np.ndarray:
    """A 1-D int64 `.npy` index array; a missing, corrupt, non-int64, non-1-D or negative one raises DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"index list not found: {path}")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"{path}: not a readable .npy array ({reason})") from error
    if not isinstance(array, np.ndarray):
        raise DataError(f"{path}: expected one .npy array, found an archive")
    if array.dtype.kind != "i" or array.dtype.itemsize != 8:
        raise DataError(f"{path}: index lists are int64, found {array.dtype}")
    if array.ndim != 1:
        raise DataError(f"{path}: index lists are 1-D, found shape {array.shape}")
    if array.size and array.min() < 0:
        raise DataError(f"{path}: negative index {int(array.min())}")
    return array.astype(np.int64, copy=False)


def read_label_array(path: str | Path, num_classes: int | None, length: int | None = None) -> np.ndarray:
    """A 1-D int64 `.npy` label vector (e.g. `cifar_labels/`), checked against the class range (when
    `num_classes` is given) and `length`."""
    if not Path(path).is_file():
        raise DataError(f"label file not found: {path}")
    labels = read_index_list(path)
    if length is not None and labels.size != length:
        raise DataError(f"{path}: {labels.size} labels, expected {length}")
    if num_classes is not None and labels.size and labels.max() >= num_classes:
        raise DataError(f"{path}: label {int(labels.max())} is outside 0..{num_classes - 1}")
    return labels


def read_text_list(path: str | Path) -> ItemList:
    """An ImageNet/Places list: UTF-8 lines `path label [source]`; blank lines are skipped.

    Lines without a source get the empty source (the default root) when other lines name one. A malformed line
    raises DataError naming `file:line`.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError as error:
        raise DataError(f"list file not found: {path}") from error
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not valid UTF-8 (byte {error.start})") from error
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror}") from error
    entries: list[tuple[str, int, str]] = []
    for line_number, line in enumerate(text.split("\n"), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) not in (2, 3):
            raise DataError(f"{path}:{line_number}: expected 'path label [source]', found {len(fields)} fields")
        if _LABEL.fullmatch(fields[1]) is None:
            raise DataError(f"{path}:{line_number}: label {fields[1]!r} is not a non-negative integer")
        entries.append((fields[0], int(fields[1]), fields[2] if len(fields) == 3 else ""))
    if not entries:
        raise DataError(f"{path}: the list has no entries")
    paths, labels, sources = zip(*entries)
    return ItemList(labels=np.asarray(labels, dtype=np.int64), paths=paths, sources=sources if any(sources) else None)


def write_text_list(items: ItemList, path: str | Path) -> None:
    """Write a path list as `path label [source]` lines, atomically (temporary file, then rename)."""
    path = Path(path)
    if items.paths is None:
        raise DataError(f"{path}: only path lists can be written as text lists")
    sources = items.sources if items.sources is not None else ("",) * len(items)
    lines = []
    for item_path, label, source in zip(items.paths, items.labels.tolist(), sources):
        if not item_path or any(character.isspace() for character in item_path + source):
            raise DataError(f"{path}: item path {item_path!r} or source {source!r} is empty or holds whitespace")
        lines.append(f"{item_path} {label} {source}" if source else f"{item_path} {label}")
    try:
        with atomic_file(path, encoding="utf-8", newline="\n") as stream:
            stream.write("\n".join(lines) + "\n")
    except OSError as error:
        raise DataError(f"cannot write {path}: {error.strerror or error}") from error


def _summary_fields(lists: Mapping[str, ItemList], num_classes: int) -> dict[str, object]:
    d_i = lists["D_i"].class_counts(num_classes)
    fields: dict[str, object] = {"n_max": int(d_i.max()), "imbalance_observed": float(d_i.max() / max(d_i.min(), 1))}
    for role, key in (("D_b", "n_balanced"), ("S_b", "n_few_shot")):
        if role in lists:
            counts = lists[role].class_counts(num_classes)
            fields[key] = int(counts[0]) if np.all(counts == counts[0]) else None
    return fields


def import_sdclr_cifar_split(
    root: str | Path, dataset: Literal["cifar10", "cifar100"], split_id: int, labels: np.ndarray
) -> Split:
    """A published SDCLR CIFAR split (`root` is SDCLR's `split/` folder) as a checked `Split`.

    Roles: `D_i`, `D_b`, `S_b` of split `split_id`, `train_full` (`trainIdxList`) and `val` (`valIdxList`).
    `labels` are the 50 000 train labels in torchvision order; the manifest is derived from the data. Besides the
    load checks, the per-class counts must be those of docs/math/data_and_eval.md §1: `D_i` follows the ρ = 100
    profile, `D_b` and `S_b` hold N_B = ⌊|D_i|/C⌋ and N_S = ⌊0.01·n_max⌋ per class, and `train_full` and `val` are balanced.
    """
    if dataset not in SDCLR_CIFAR_LAYOUT:
        raise DataError(f"unknown SDCLR CIFAR data set {dataset!r}; expected cifar10 or cifar100")
    subset_pattern, train_file, val_file, num_classes, n_max, train_per_class, val_per_class = (
        SDCLR_CIFAR_LAYOUT[dataset]
    )
    root = Path(root)
    base_labels = np.asarray(labels)
    if base_labels.ndim != 1 or not np.issubdtype(base_labels.dtype, np.integer):
        raise DataError(f"{dataset}: labels must be a 1-D integer array, got shape {base_labels.shape}")
    files = {role: subset_pattern.format(split=split_id, role=role) for role in ("D_i", "D_b", "S_b")}
    files.update({"train_full": train_file, "val": val_file})
    lists: dict[str, ItemList] = {}
    for role, relative in files.items():
        indices = read_index_list(root / relative)
        if indices.size and indices.max() >= base_labels.size:
            raise DataError(f"{root / relative}: index {int(indices.max())} is outside the {base_labels.size} labels")
        lists[role] = ItemList(labels=base_labels[indices], indices=indices)
    manifest = data_manifest(
        dataset,
        split_id,
        num_classes,
        lists,
        origin="published",
        protocol="sdclr",
        nested=True,
        source={
            "layout": "VITA-Group/SDCLR split/",
            "files": files,
            "sha256": {role: file_sha256(root / relative) for role, relative in files.items()},
        },
        **_summary_fields(lists, num_classes),
    )
    split = Split(dataset=dataset, split_id=split_id, num_classes=num_classes, lists=lists, manifest=manifest)
    validate_split(split, base_labels)
    profile = lt_profile(n_max, num_classes, SDCLR_IMBALANCE)
    expected = {
        "D_b": int(profile.sum()) // num_classes,
        "S_b": n_max // 100,
        "train_full": train_per_class,
        "val": val_per_class,
    }
    if sorted(split.pretrain_counts().tolist(), reverse=True) != profile.tolist():
        raise DataError(f"{root / files['D_i']}: per-class counts are not the ρ = 100 profile with n_max {n_max}")
    for role, per_class in expected.items():
        if split.lists[role].class_counts(num_classes).tolist() != [per_class] * num_classes:
            raise DataError(f"{root / files[role]}: expected {per_class} images of every class")
    return split


def sdclr_imagenet_files(root: str | Path, dataset: Literal["imagenet100", "imagenet_lt"]) -> dict[str, Path]:
    """Role → list file of the SDCLR ImageNet layout under `root`; optional roles only where the file exists."""
    if dataset not in SDCLR_IMAGENET_LAYOUT:
        raise DataError(f"unknown SDCLR ImageNet data set {dataset!r}; expected imagenet100 or imagenet_lt")
    root = Path(root)
    _, layout = SDCLR_IMAGENET_LAYOUT[dataset]
    return {
        role: root / relative
        for role, relative in layout.items()
        if role in _REQUIRED_PUBLISHED_ROLES or (root / relative).is_file()
    }


def import_imagenet_lists(
    dataset: str,
    num_classes: int,
    files: Mapping[str, str | Path],
    split_id: int = 1,
    *,
    expected_totals: Mapping[str, int] | None = None,
    protocol: str = "sdclr",
) -> Split:
    """ImageNet-100-LT, ImageNet-LT or Places-LT text lists as a checked `Split`.

    `files` maps roles to list files: `D_i` (the LT train list, required), `S_b` (the 0.01 sub-balance list),
    `D_b`, `val`, `test` and `train_full` (the full-shot probe list, not published). These lists are not nested
    (the sub-balance list is not a subset of the LT list), so only labels, duplicates, disjointness of `val` and
    `test` from the rest, and the sizes in `expected_totals` (role → number of lines) are checked.
    """
    if "D_i" not in files:
        raise DataError(f"{dataset}: the long-tailed train list (role D_i) is required")
    lists = {role: read_text_list(path) for role, path in files.items()}
    for role, items in lists.items():
        try:
            items.class_counts(num_classes)
        except DataError as error:
            raise DataError(f"{files[role]}: {error}") from error
    manifest = data_manifest(
        dataset,
        split_id,
        num_classes,
        lists,
        origin="lists",
        protocol=protocol,
        nested=False,
        source={
            "files": {role: str(path) for role, path in files.items()},
            "sha256": {role: file_sha256(Path(path)) for role, path in files.items()},
        },
        **_summary_fields(lists, num_classes),
    )
    split = Split(dataset=dataset, split_id=split_id, num_classes=num_classes, lists=lists, manifest=manifest)
    validate_split(split)
    for role, total in (expected_totals or {}).items():
        if role in lists and len(lists[role]) != total:
            raise DataError(f"{files[role]}: {len(lists[role])} entries, expected {total}")
    return split


def import_sdclr_imagenet_split(root: str | Path, dataset: Literal["imagenet100", "imagenet_lt"]) -> Split:
    """The SDCLR ImageNet-100-LT or ImageNet-LT lists under `root` (SDCLR's `split/` folder) as a checked `Split`,
    with the published lists' sizes checked (data_and_eval.md §2). ImageNet-LT's `D_i` list is supplied by the
    user under its SDCLR name."""
    files = sdclr_imagenet_files(root, dataset)
    num_classes = SDCLR_IMAGENET_LAYOUT[dataset][0]
    return import_imagenet_lists(dataset, num_classes, files, expected_totals=SDCLR_IMAGENET_TOTALS[dataset])
