"""The driver side of COLT's sharded pool embedding on Ray Train (docs/math/colt.md §2; `ltray.train.shard_embed`).

`fit_training` hands a COLT run's pool to the `TorchTrainer` as the Ray Dataset `colt_pool`, with columns
`pool_index` (int64) and `image` (the raw uint8 H×W×3 bytes, fixed-size binary, as in a Parquet pool):

- `embedded`: the bundled pool, built in the driver (small) and cut into blocks of whole model batches;
- `random300k`: read tasks that each memory-map the `.npy` and copy one block, so the driver never holds the array;
  a read task asks for a quarter CPU, so it can run beside training workers that hold whole CPUs;
- `parquet`: the pool folder's shards through `ray.data.read_parquet`.

`PoolShardConfig` splits it over the workers keeping every row; image-list pools get no dataset (rank 0 embeds
them through the list loader).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from ray.train import DataConfig

from ltray.data.pool_store import image_array
from ltray.errors import ConfigError
from ltray.eval.rows import INDEX
from ltray.pools.scoring import arrays_dataset
from ltray.train.shard_embed import EMBED_BATCH, IMAGE

if TYPE_CHECKING:
    import ray.data

    from ltray.config import Config

ROWS_PER_BLOCK = 2 * EMBED_BATCH  # Ray Data blocks of whole model batches
READ_CPUS = 0.25
ARRAY_POOLS = ("embedded", "random300k", "parquet")


class PoolShardConfig(DataConfig):
    """Ray Train's `DataConfig` for the pool: `streaming_split(equal=False)`, which keeps every row (Train's default
    split gives every worker as many rows by dropping up to world − 1 of them)."""

    @classmethod
    def for_pool(cls) -> PoolShardConfig:
        """With Ray Data's default execution options given explicitly: Train's own defaults set the deprecated
        `exclude_resources`, which warns on every run."""
        from ray.data import ExecutionOptions

        return cls(execution_options=ExecutionOptions())

    def configure(self, datasets: dict[str, Any], world_size: int, worker_handles: Any, worker_node_ids: Any,
                  **kwargs: Any) -> list[dict[str, Any]]:
        output: list[dict[str, Any]] = [{} for _ in range(world_size)]
        hints = worker_node_ids if self._enable_shard_locality else None
        for name, dataset in datasets.items():
            dataset = dataset.copy(dataset)
            dataset.context.execution_options = self._resolve_execution_options(name)
            dataset.context.enable_progress_bars = False  # one pass per resample: bars would flood the trial logs
            for rank, split in enumerate(dataset.streaming_split(world_size, equal=False, locality_hints=hints)):
                output[rank][name] = split
        return output


def _read_npy_rows(batch: dict[str, np.ndarray], path: str, rows: int) -> pa.Table:
    """Block number `batch["id"][0]` of a memory-mapped `.npy` pool as (`pool_index`, `image`)."""
    from ltray.data.sources import load_array_pool

    images = load_array_pool(path).images
    lo = int(batch["id"][0]) * rows
    hi = min(lo + rows, len(images))
    return pa.table({INDEX: pa.array(np.arange(lo, hi, dtype=np.int64)), IMAGE: image_array(images[lo:hi])})


def npy_pool_dataset(path: str, rows_per_block: int = ROWS_PER_BLOCK) -> ray.data.Dataset:
    """A uint8 [M, H, W, 3] `.npy` as a Ray Dataset of (`pool_index`, `image`), one read task per block."""
    import ray.data

    from ltray.data.sources import load_array_pool

    size = len(load_array_pool(path).images)
    blocks = -(-size // rows_per_block)
    return ray.data.range(blocks, override_num_blocks=blocks).map_batches(
        partial(_read_npy_rows, path=str(path), rows=rows_per_block), batch_size=1, num_cpus=READ_CPUS,
    )


def colt_pool_dataset(cfg: Config) -> ray.data.Dataset | None:
    """The `colt_pool` dataset of a COLT run with an array pool; None for other methods and image-list pools."""
    from ltray.method_names import parse_method

    c = cfg.method.colt
    if not parse_method(cfg.method.name).has("colt") or c.pool not in ARRAY_POOLS:
        return None
    if c.pool == "embedded":
        from ltray.data.embedded import embedded_pool

        return arrays_dataset(embedded_pool(n=c.pool_size).images, rows_per_block=ROWS_PER_BLOCK)
    if not c.pool_path:
        raise ConfigError(f"method.colt.pool_path is required for the {c.pool} pool")
    if c.pool == "random300k":
        return npy_pool_dataset(c.pool_path)
    from ltray.data.pool_store import open_pool_dataset

    # the workers check the shard hashes when they load the pool for training
    return open_pool_dataset(c.pool_path, verify=False)
