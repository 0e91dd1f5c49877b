"""Everything one run reads from disk: the base sets, the split, the training set and the probe sets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from ltray.config import LIST_DATASETS, Config
from ltray.data.sources import ArraySource, CifarName, ImageListSource, load_array_pool, load_cifar
from ltray.data.splits import Split, read_split
from ltray.data.train_data import TrainData
from ltray.errors import ConfigError, DataError
from ltray.shipped import shipped_splits_dir

if TYPE_CHECKING:
    from ltray.data.list_data import ListTrainData

IMAGE_SIZE = {"scenes-lt": 16, "digits-lt": 16, "cifar10": 32, "cifar100": 32}


def default_splits_dir() -> Path:
    """The split files shipped with ltray (`ltray/splits/`), one folder per data set."""
    return shipped_splits_dir()


@dataclass
class RunData:
    """The base train and test sets, the split that indexes into the base train set, and the training set.

    Image-list data sets (`ltray.data.list_data`) have no base arrays (`base_train` and `test` are None): every
    role of their split is read through its own source in `sources`, and `train` is a `ListTrainData`.
    """

    dataset: str
    split: Split
    base_train: ArraySource | None
    test: ArraySource | None
    train: TrainData | ListTrainData
    num_classes: int
    image_size: int
    class_names: tuple[str, ...]
    sources: dict[str, ImageListSource] = field(default_factory=dict)

    @property
    def is_list(self) -> bool:
        """Whether the items are read from image lists (decoded and augmented per item in loader workers)."""
        return bool(self.sources)

    def role_source(self, role: str) -> ImageListSource:
        """The image source of one split role of a list data set (`D_i`, `S_b`, `train_full`, `val`, `test`)."""
        if role not in self.sources:
            from ltray.data.list_data import ROLE_KEYS

            hint = f" (set data.{ROLE_KEYS[role]})" if role in ROLE_KEYS else ""
            raise DataError(f"{self.dataset} has no {role} list{hint}")
        return self.sources[role]

    def role_images(self, role: str) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images and labels of one split role (`train_full`, `val`, `S_b`, `D_i`, ...)."""
        items = self.split.role(role)
        if items.indices is None or self.base_train is None:
            raise DataError(f"split role {role} of {self.dataset} is a path list, not an index list")
        return self.base_train.take(items.indices), self.base_train.labels[items.indices]

    @property
    def pretrain_counts(self) -> np.ndarray:
        """Per-class counts of D_i in this split: the counts behind Many / Medium / Few (also for D_b models)."""
        return self.split.pretrain_counts()


def splits_directory(cfg: Config) -> Path:
    directory = Path(cfg.data.splits_dir) if cfg.data.splits_dir else default_splits_dir() / cfg.data.dataset
    if not directory.is_dir():
        raise DataError(f"split folder not found: {directory} (set data.splits_dir)")
    return directory


def load_base_sets_and_split(cfg: Config) -> tuple[ArraySource, ArraySource, tuple[str, ...], Split]:
    """The base train and test sets, the class names and the configured split (file hashes and counts checked)."""
    name = cfg.data.dataset
    if name in ("scenes-lt", "digits-lt"):
        from ltray.data.embedded import load_embedded_split

        data, split = load_embedded_split(name, cfg.data.split, splits_directory(cfg))
        return data.train, data.test, tuple(data.class_names), split
    if name in ("cifar10", "cifar100"):
        if cfg.data.root is None:
            raise ConfigError(f"data.root is required for {name}: a local torchvision-format CIFAR folder")
        train, test = load_cifar(cfg.data.root, cast(CifarName, name))
        split = read_split(splits_directory(cfg), name, cfg.data.split, labels=train.labels)
        return train, test, tuple(str(c) for c in range(train.num_classes)), split
    raise ConfigError(f"data set {name} is read from image lists; array training supports {', '.join(IMAGE_SIZE)}")


def load_pool(cfg: Config, image_size: int) -> ArraySource:
    """The auxiliary pool of COLT: the embedded OOD pool or a uint8 N x H x W x 3 `.npy` (memory-mapped)."""
    c = cfg.method.colt
    if c.pool == "embedded":
        from ltray.data.embedded import embedded_pool

        return embedded_pool(n=c.pool_size)
    if c.pool in ("random300k",):
        if not c.pool_path:
            raise ConfigError("method.colt.pool_path is required for the random300k pool")
        return load_array_pool(c.pool_path)
    if c.pool == "parquet":
        if not c.pool_path:
            raise ConfigError("method.colt.pool_path is required for a parquet pool")
        from ltray.data.pool_store import read_pool_arrays

        return read_pool_arrays(c.pool_path)
    raise ConfigError(f"method.colt.pool={c.pool} is not an array pool")


def load_run_data(cfg: Config) -> RunData:
    from ltray.method_names import parse_method

    if cfg.data.dataset in LIST_DATASETS:
        from ltray.data.list_data import load_list_run_data

        return load_list_run_data(cfg)
    base_train, test, class_names, split = load_base_sets_and_split(cfg)
    subset = split.role(cfg.data.subset)
    if subset.indices is None:
        raise DataError(f"split role {cfg.data.subset} is not an index list")
    size = IMAGE_SIZE[cfg.data.dataset]
    pool_images = pool_labels = None
    active = np.zeros(0, dtype=np.int64)
    if parse_method(cfg.method.name).has("colt"):
        pool = load_pool(cfg, size)
        if pool.images.shape[1:3] != (size, size):
            raise DataError(f"pool images are {pool.images.shape[1:3]}, the data set's are {(size, size)}")
        pool_images, pool_labels = pool.images, pool.labels
        if cfg.method.colt.budget > len(pool):
            raise ConfigError(f"method.colt.budget={cfg.method.colt.budget} exceeds the pool size {len(pool)}")
    elif cfg.data.extra_data:
        from ltray.data.selection import read_selection

        pool, active = read_selection(cfg.data.extra_data)  # a MAK selection: the pool it indexes, the chosen positions
        pool_images, pool_labels = pool.images, pool.labels
    train = TrainData(
        id_images=base_train.take(subset.indices),
        id_labels=base_train.labels[subset.indices],
        pool_images=pool_images,
        pool_labels=pool_labels,
        active_pool=active,
    )
    return RunData(
        dataset=cfg.data.dataset,
        split=split,
        base_train=base_train,
        test=test,
        train=train,
        num_classes=split.num_classes,
        image_size=size,
        class_names=class_names,
    )
