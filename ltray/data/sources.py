"""Base collections that training and evaluation index into: in-memory or memory-mapped arrays, CIFAR, image lists.

See docs/math/data_and_eval.md §2 (file formats) and colt.md §2 (the memory-mapped OOD pool).
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
from PIL import Image, UnidentifiedImageError

from ltray.errors import DataError

if TYPE_CHECKING:
    from ltray.data.splits import ItemList

CIFAR_IMAGE_SHAPE = (3, 32, 32)
CIFAR_LAYOUT: dict[str, tuple[str, tuple[str, ...], str, str, int]] = {
    # dataset: (folder, train files, test file, label key, number of classes)
    "cifar10": (
        "cifar-10-batches-py",
        ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"),
        "test_batch",
        "labels",
        10,
    ),
    "cifar100": ("cifar-100-python", ("train",), "test", "fine_labels", 100),
}


@dataclass(frozen=True)
class ArraySource:
    """Images held as one uint8 array [N, H, W, 3] (in memory or a `np.memmap`) with int64 labels (−1 = unknown)."""

    images: np.ndarray
    labels: np.ndarray
    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.images, np.ndarray) or self.images.dtype != np.uint8:
            raise DataError(f"{self.name}: images must be a uint8 array, got {_describe(self.images)}")
        if self.images.ndim != 4 or self.images.shape[3] != 3:
            raise DataError(f"{self.name}: images must have shape [N, H, W, 3], got {self.images.shape}")
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{self.name}: labels must be a 1-D integer array, got {_describe(labels)}")
        if labels.shape[0] != self.images.shape[0]:
            raise DataError(f"{self.name}: {labels.shape[0]} labels for {self.images.shape[0]} images")
        if labels.size and labels.min() < -1:
            raise DataError(f"{self.name}: labels must be ≥ 0, or −1 for unknown; found {int(labels.min())}")
        object.__setattr__(self, "labels", labels.astype(np.int64, copy=False))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of every image."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    @property
    def num_classes(self) -> int:
        """1 + the largest known label (0 when every label is unknown)."""
        return int(self.labels.max()) + 1 if self.labels.size else 0

    def take(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """The images at `indices` as a new in-memory array [len(indices), H, W, 3]; reads only those rows."""
        index = np.asarray(indices, dtype=np.int64)
        if index.ndim != 1:
            raise DataError(f"{self.name}: indices must be 1-D, got shape {index.shape}")
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            bad = int(index[(index < 0) | (index >= len(self))][0])
            raise DataError(f"{self.name}: index {bad} is out of range for {len(self)} images")
        return np.asarray(self.images[index])


def load_array_pool(path: str | Path, name: str | None = None) -> ArraySource:
    """Memory-map a uint8 `.npy` array [N, H, W, 3] (e.g. 300K Random Images, colt.md §2) with every label −1."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"image array not found: {file}")
    try:
        images = np.load(file, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as error:
        raise DataError(f"cannot read image array {file}: {error}") from error
    labels = np.full(images.shape[0] if images.ndim else 0, -1, dtype=np.int64)
    return ArraySource(images=images, labels=labels, name=name or file.stem)


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds the NumPy arrays and built-in containers a CIFAR batch holds."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
        ("copyreg", "_reconstructor"),
        ("builtins", "object"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        if module.startswith("numpy.core"):
            module = module.replace("numpy.core", "numpy._core", 1)
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"CIFAR file not found: {path}")
    try:
        payload = _CifarUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except Exception as error:  # any unpickling failure means the file is not a CIFAR batch
        raise DataError(f"corrupt CIFAR file {path}: {type(error).__name__}: {error}") from error
    if not isinstance(payload, dict):
        raise DataError(f"corrupt CIFAR file {path}: expected a dict, got {type(payload).__name__}")
    entries = {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in payload.items()}
    if "data" not in entries or label_key not in entries:
        raise DataError(f"corrupt CIFAR file {path}: missing key 'data' or {label_key!r}")
    data = np.asarray(entries["data"])
    labels = np.asarray(entries[label_key])
    pixels = int(np.prod(CIFAR_IMAGE_SHAPE))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != pixels:
        raise DataError(f"corrupt CIFAR file {path}: data must be uint8 [N, {pixels}], got {_describe(data)}")
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"corrupt CIFAR file {path}: {_describe(labels)} labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"corrupt CIFAR file {path}: labels outside 0..{num_classes - 1}")
    images = data.reshape(-1, *CIFAR_IMAGE_SHAPE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


CifarName = Literal["cifar10", "cifar100"]


def load_cifar(root: str | Path, dataset: CifarName) -> tuple[ArraySource, ArraySource]:
    """(train, test) of CIFAR-10/100 from a local torchvision-format folder; never downloads.

    `root` holds `cifar-10-batches-py/` or `cifar-100-python/`. The train set keeps torchvision's order
    (data_batch_1..5 concatenated), which the published `.npy` split indices refer to. Images are HWC uint8;
    CIFAR-100 labels are the fine labels.
    """
    if dataset not in CIFAR_LAYOUT:
        raise DataError(f"unknown CIFAR dataset {dataset!r}; expected one of {sorted(CIFAR_LAYOUT)}")
    folder_name, train_files, test_file, label_key, num_classes = CIFAR_LAYOUT[dataset]
    folder = Path(root) / folder_name
    if not folder.is_dir():
        raise DataError(f"CIFAR folder not found: {folder} (ltray never downloads; place the extracted archive there)")
    parts = [_read_cifar_batch(folder / file, label_key, num_classes) for file in train_files]
    train_images = np.concatenate([images for images, _ in parts])
    train_labels = np.concatenate([labels for _, labels in parts])
    test_images, test_labels = _read_cifar_batch(folder / test_file, label_key, num_classes)
    return (
        ArraySource(train_images, train_labels, f"{dataset}-train"),
        ArraySource(test_images, test_labels, f"{dataset}-test"),
    )


@dataclass(frozen=True)
class ImageListSource:
    """Images named by an `ItemList` (paths relative to a root), read lazily as RGB PIL images.

    Items whose list entry names a source (MAK's ImageNet/Places mix, data_and_eval.md §2) are read from
    `source_roots[source]`; the others from `root`.
    """

    items: ItemList
    root: Path
    source_roots: Mapping[str, Path] = field(default_factory=dict)
    name: str = "image-list"

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        object.__setattr__(self, "source_roots", {key: Path(value) for key, value in self.source_roots.items()})
        if self.items.paths is None:
            raise DataError(f"{self.name}: an image list source needs a path list, got an index list")
        missing = sorted({source for source in self.items.sources or () if source and source not in self.source_roots})
        if missing:
            raise DataError(f"{self.name}: no image root given for source(s) {', '.join(missing)}")

    def __len__(self) -> int:
        return len(self.items)

    @cached_property
    def labels(self) -> np.ndarray:
        """The int64 labels, read-only (computed once: the training step looks them up every batch)."""
        labels = np.array(self.items.labels, dtype=np.int64)
        labels.setflags(write=False)
        return labels

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if self.labels.size else 0

    def roots(self) -> list[Path]:
        """The image roots the items use: `root` for items without a source, and each named source's root."""
        sources = set(self.items.sources) if self.items.sources is not None else {""}
        return sorted({self.source_roots[source] if source else self.root for source in sources})

    def path(self, index: int) -> Path:
        if not 0 <= index < len(self):
            raise DataError(f"{self.name}: index {index} is out of range for {len(self)} images")
        source = self.items.sources[index] if self.items.sources is not None else ""
        root = self.source_roots[source] if source else self.root
        return root / cast(tuple[str, ...], self.items.paths)[index]  # a path list: checked in __post_init__

    def load(self, index: int) -> Image.Image:
        """Item `index` as an RGB PIL image; a missing or unreadable file raises DataError naming it."""
        file = self.path(index)
        try:
            with Image.open(file) as image:
                return image.convert("RGB")
        except FileNotFoundError as error:
            raise DataError(f"{self.name}: image not found: {file}") from error
        except (UnidentifiedImageError, OSError) as error:
            raise DataError(f"{self.name}: cannot read image {file}: {error}") from error

    def check_exists(self, sample: int = 8) -> None:
        """Check that every root is a folder and that `sample` evenly spaced items exist (0: the roots only)."""
        for root in self.roots():
            if not root.is_dir():
                raise DataError(f"{self.name}: image root not found: {root}")
        count = max(0, min(sample, len(self)))
        for index in np.unique(np.linspace(0, len(self) - 1, count).round().astype(np.int64)):
            file = self.path(int(index))
            if not file.is_file():
                raise DataError(f"{self.name}: image not found: {file}")


def labels_for(source: ArraySource | ImageListSource) -> np.ndarray:
    """The int64 label vector of a source (−1 = unknown)."""
    return source.labels


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__
