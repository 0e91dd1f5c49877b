"""The run's training dataset: the long-tailed ID items (indices 0..N_id−1) plus an optional pool part
(indices N_id + pool position), as in docs/math/README.md convention 1.

Array-backed: every item is a uint8 HxWx3 image gathered by index from in-memory (or memory-mapped) arrays, so a
batch is one fancy-indexing call and augmentation runs batched in the training process.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import torch

from ltray.errors import DataError


class IndexSpace(ABC):
    """The dataset-index space shared by array and image-list training sets: ID items 0..N_id−1, pool position j
    at N_id + j, and the pool positions currently active. Subclasses provide `num_id`, `pool_size` and the
    `active_pool` attribute."""

    active_pool: np.ndarray

    @property
    @abstractmethod
    def num_id(self) -> int: ...

    @property
    @abstractmethod
    def pool_size(self) -> int: ...

    @property
    def index_space(self) -> int:
        """Size of the dataset-index space: every per-index state buffer has this length."""
        return self.num_id + self.pool_size

    def set_active_pool(self, positions: np.ndarray) -> None:
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) and (positions.min() < 0 or positions.max() >= self.pool_size):
            raise DataError("active pool positions out of range")
        if len(np.unique(positions)) != len(positions):
            raise DataError("active pool positions contain duplicates")
        self.active_pool = positions

    def members(self) -> np.ndarray:
        """Dataset indices of the current training set, ID first."""
        return np.concatenate([np.arange(self.num_id, dtype=np.int64), self.num_id + self.active_pool])

    def __len__(self) -> int:
        return self.num_id + len(self.active_pool)

    def is_ood(self, index: torch.Tensor) -> torch.Tensor:
        """The ID/OOD domain comes from the index range, never from labels (convention 1)."""
        return index >= self.num_id


@dataclass
class TrainData(IndexSpace):
    """ID items from `id_images` (N_id rows) plus the active subset of `pool_images`.

    `active_pool` holds the pool positions currently in the training set (COLT's current selection, or MAK's fixed
    extra data). Dataset index N_id + j always means pool position j, whatever is active.
    """

    id_images: np.ndarray
    id_labels: np.ndarray
    pool_images: np.ndarray | None = None
    pool_labels: np.ndarray | None = None
    active_pool: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        if self.id_images.ndim != 4 or self.id_images.shape[-1] != 3 or self.id_images.dtype != np.uint8:
            raise DataError(f"ID images must be uint8 N x H x W x 3, got {self.id_images.dtype} {self.id_images.shape}")
        if len(self.id_labels) != len(self.id_images):
            raise DataError(f"{len(self.id_labels)} labels for {len(self.id_images)} ID images")
        if self.pool_images is not None:
            if self.pool_images.shape[1:] != self.id_images.shape[1:] or self.pool_images.dtype != np.uint8:
                raise DataError(
                    f"pool images must be uint8 with the ID image shape {self.id_images.shape[1:]}, "
                    f"got {self.pool_images.dtype} {self.pool_images.shape[1:]}"
                )
            if self.pool_labels is None:
                self.pool_labels = np.full(len(self.pool_images), -1, dtype=np.int64)
        self.set_active_pool(self.active_pool)

    @property
    def num_id(self) -> int:
        return len(self.id_images)

    @property
    def pool_size(self) -> int:
        return 0 if self.pool_images is None else len(self.pool_images)

    def images(self, index: np.ndarray) -> np.ndarray:
        """uint8 images [B, H, W, 3] for dataset indices."""
        index = np.asarray(index, dtype=np.int64)
        is_id = index < self.num_id
        if is_id.all():
            return np.asarray(self.id_images[index])
        out = np.empty((len(index), *self.id_images.shape[1:]), dtype=np.uint8)
        out[is_id] = self.id_images[index[is_id]]
        assert self.pool_images is not None
        pool_pos = index[~is_id] - self.num_id
        order = np.argsort(pool_pos)
        out[np.flatnonzero(~is_id)[order]] = self.pool_images[pool_pos[order]]
        return out

    def labels(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64)
        out = np.full(len(index), -1, dtype=np.int64)
        is_id = index < self.num_id
        out[is_id] = self.id_labels[index[is_id]]
        if self.pool_labels is not None and (~is_id).any():
            out[~is_id] = self.pool_labels[index[~is_id] - self.num_id]
        return out
