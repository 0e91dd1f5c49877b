"""COLT's pool embedding at a resample, spread over the training workers (docs/math/colt.md §2, §4).

The whole pool is embedded at every resample with the current weights (eval mode, inference transform, L2-normalised
head output, as `ltray.train.loop.embed_images`), and the selection runs once, on rank 0. Where the embedding runs:

- plain PyTorch (one process or DDP), `ArrayPoolEmbedder`: rank r embeds the model batches g ≡ r (mod world) of the
  memory-mapped pool array;
- Ray Train, `DatasetShardEmbedder`: the driver hands the trainer the pool as a Ray Data dataset named
  `colt_pool` (`pool_index`, `image`: the raw uint8 H×W×3 bytes; `ltray.cluster.pool_dataset`), split over the
  workers without dropping rows; each worker embeds the rows of its shard;
- image-list pools (`RankZeroEmbedder`): rank 0 embeds the list through the list loader.

Each row's embedding is computed in a model batch of `EMBED_BATCH` rows fixed by its pool index: rows with index in
[gB, (g+1)B) form batch g, each at slot index − gB, and the slots no local row fills are zero padding
(`ltray.eval.rows.score_rows`, shared with pool scoring). Eval-mode rows do not interact, so a row's embedding has
the same bits whichever worker embeds it and whichever other rows share its batch, and the selection equals a single
process's. The rows are then gathered to rank 0 by pool index (`merge_by_index`): sorted, duplicates dropped, every
index exactly once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np
import torch
import torch.distributed as dist

from ltray.common import distributed as dist_utils
from ltray.data.pool_store import images_from_column
from ltray.errors import ConfigError, DataError
from ltray.eval.rows import INDEX, PROJECTION, ScoringSpec, score_rows

if TYPE_CHECKING:
    from ltray.models.contrastive import ContrastiveModel

POOL_DATASET = "colt_pool"
IMAGE = "image"
EMBED_BATCH = 256


class PoolShardError(DataError):
    """The gathered pool embedding does not cover every pool index exactly once."""


class PoolEmbedder(Protocol):
    """Embeds the whole pool with `model`; every rank calls it at the same point (it may hold collectives).
    Returns [M, d] float32 rows in pool-index order on rank 0, None on the other ranks."""

    def __call__(self, model: ContrastiveModel, device: torch.device) -> np.ndarray | None: ...


# ----- the per-row computation and the gather -------------------------------------------------------------------


def embed_rows(model: ContrastiveModel, images: np.ndarray, index: np.ndarray,
               batch_size: int = EMBED_BATCH) -> np.ndarray:
    """L2-normalised head outputs [n, d] (float32) of uint8 images [n, H, W, 3] with pool indices `index`, each in
    the model batch its index fixes (module docstring); rows in input order, on the model's device."""
    spec = ScoringSpec(inference=True, batch_size=batch_size)
    return score_rows(model, images, index, index, spec)[PROJECTION]


def merge_by_index(index: np.ndarray, embeddings: np.ndarray, size: int) -> np.ndarray:
    """Rows keyed by pool index as [size, d] in index order. A row that arrives twice (the same index from two
    shards) is kept once; an index outside 0..size−1, or one that no row carries, raises PoolShardError."""
    index = np.asarray(index, dtype=np.int64)
    if index.shape != (embeddings.shape[0],):
        raise PoolShardError(f"{embeddings.shape[0]} pool embeddings came with {index.shape[0]} indices")
    order = np.argsort(index, kind="stable")
    index, embeddings = index[order], embeddings[order]
    first = np.ones(len(index), dtype=bool)
    first[1:] = index[1:] != index[:-1]
    index, embeddings = index[first], embeddings[first]
    if len(index) and (index[0] < 0 or index[-1] >= size):
        bad = index[0] if index[0] < 0 else index[-1]
        raise PoolShardError(f"pool index {bad} is outside the pool of {size} items")
    if len(index) != size:
        missing = np.setdiff1d(np.arange(size, dtype=np.int64), index)
        raise PoolShardError(
            f"{len(missing)} of {size} pool items were embedded by no worker (first missing: {missing[:5].tolist()})"
        )
    return embeddings


def gather_to_rank0(index: np.ndarray, embeddings: np.ndarray, size: int, device: torch.device) -> np.ndarray | None:
    """Every rank's (index, embedding) rows merged by pool index on rank 0 (`merge_by_index`); None elsewhere.
    A rank with no rows sends none (the embedding width is agreed first)."""
    if not dist_utils.is_distributed():
        return merge_by_index(index, embeddings, size)
    width = torch.tensor([embeddings.shape[1] if len(embeddings) else 0], device=device)
    dist.all_reduce(width, op=dist.ReduceOp.MAX)
    rows = embeddings if len(embeddings) else np.zeros((0, int(width.item())), dtype=np.float32)
    all_index = dist_utils.gather(torch.from_numpy(np.asarray(index, dtype=np.int64)).to(device))
    all_rows = dist_utils.gather(torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32)).to(device))
    if dist_utils.rank() != 0:
        return None
    return merge_by_index(all_index.cpu().numpy(), all_rows.cpu().numpy(), size)


def _stacked(index_parts: list[np.ndarray], row_parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """One rank's (index, rows) from its batches; a rank without batches has no rows (width agreed later)."""
    if not index_parts:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(index_parts), np.concatenate(row_parts)


# ----- embedders ---------------------------------------------------------------------------------------------------


class ArrayPoolEmbedder:
    """Plain PyTorch: rank r embeds the model batches g ≡ r (mod world) of a uint8 [M, H, W, 3] pool (read in
    batches, so a memory-mapped array stays on disk), then the rows are gathered to rank 0."""

    def __init__(self, images: np.ndarray, batch_size: int = EMBED_BATCH) -> None:
        self.images = images
        self.batch_size = batch_size

    def __call__(self, model: ContrastiveModel, device: torch.device) -> np.ndarray | None:
        size, step = len(self.images), self.batch_size
        index_parts, row_parts = [], []
        for lo in range(dist_utils.rank() * step, size, dist_utils.world_size() * step):
            index = np.arange(lo, min(lo + step, size), dtype=np.int64)
            index_parts.append(index)
            row_parts.append(embed_rows(model, np.ascontiguousarray(self.images[lo : lo + step]), index, step))
        return gather_to_rank0(*_stacked(index_parts, row_parts), size, device)


class RankZeroEmbedder:
    """Image-list pools: rank 0 embeds the whole pool with `embed` (the list loader's inference pipeline)."""

    def __init__(self, pool: Any, embed: Callable[[Any], np.ndarray]) -> None:
        self.pool = pool
        self.embed = embed

    def __call__(self, model: ContrastiveModel, device: torch.device) -> np.ndarray | None:
        return self.embed(self.pool) if dist_utils.rank() == 0 else None


class DatasetShardEmbedder:
    """Ray Train: this worker embeds the rows of its shard of the `colt_pool` dataset (`ray.train.get_dataset_shard`)
    at each resample; the rows are gathered to rank 0 by pool index. Every worker iterates its shard at the same
    resample (a streaming split starts each pass on all shards together)."""

    def __init__(self, shard: Any, image_shape: tuple[int, int, int], size: int,
                 batch_size: int = EMBED_BATCH) -> None:
        self.shard = shard
        self.image_shape = tuple(int(v) for v in image_shape)
        self.size = size
        self.batch_size = batch_size

    def __call__(self, model: ContrastiveModel, device: torch.device) -> np.ndarray | None:
        index_parts, row_parts = [], []
        for batch in self.shard.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1):
            if batch.num_rows == 0:
                continue
            index = batch.column(INDEX).to_numpy().astype(np.int64)
            images = images_from_column(batch.column(IMAGE), self.image_shape)  # type: ignore[arg-type]
            index_parts.append(index)
            row_parts.append(embed_rows(model, images, index, self.batch_size))
        return gather_to_rank0(*_stacked(index_parts, row_parts), self.size, device)


def default_pool_embedder(pool: Any, embed: Callable[[Any], np.ndarray]) -> PoolEmbedder:
    """The plain-PyTorch embedder of a run's pool: sharded by rank for arrays, rank 0 for image lists."""
    if pool is None:
        raise ConfigError("this run has no pool to embed")
    return ArrayPoolEmbedder(pool) if isinstance(pool, np.ndarray) else RankZeroEmbedder(pool, embed)
