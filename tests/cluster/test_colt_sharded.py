"""COLT's pool embedding spread over workers (docs/math/colt.md §2, §4; ltray.train.shard_embed): rows embedded in
batches fixed by pool index have the same bits whichever rows share their batch, the gather by index keeps every
index exactly once, and a 2-worker Ray Train run that embeds its Ray Data shards picks what one process picks from
the same model state."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ltray.config import load_config
from ltray.data.embedded import embedded_pool
from ltray.models.contrastive import build_model
from ltray.train.checkpoint import checkpoint_name, load_checkpoint
from ltray.train.loop import Pretrainer, embed_images
from ltray.train.shard_embed import ArrayPoolEmbedder, PoolShardError, embed_rows, merge_by_index

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("resnet18_cifar", width=0.125)


def test_merge_by_index_sorts_and_keeps_duplicates_once() -> None:
    index = np.array([3, 0, 2, 1, 3, 0])  # two shards that both carry indices 0 and 3 (padding duplicates)
    rows = np.arange(6, dtype=np.float32)[:, None] * np.ones((1, 2), dtype=np.float32)
    merged = merge_by_index(index, rows, 4)
    assert merged[:, 0].tolist() == [1.0, 3.0, 2.0, 0.0]


def test_merge_by_index_refuses_missing_and_foreign_indices() -> None:
    rows = np.zeros((3, 2), dtype=np.float32)
    with pytest.raises(PoolShardError, match=r"1 of 4 pool items were embedded by no worker \(first missing: \[2\]\)"):
        merge_by_index(np.array([0, 1, 3]), rows, 4)
    with pytest.raises(PoolShardError, match="pool index 7 is outside the pool of 4 items"):
        merge_by_index(np.array([0, 1, 7]), rows, 4)
    with pytest.raises(PoolShardError, match="pool index -1"):
        merge_by_index(np.array([-1, 1, 2]), rows, 3)
    with pytest.raises(PoolShardError, match="3 pool embeddings came with 2 indices"):
        merge_by_index(np.array([0, 1]), rows, 2)


def test_a_rows_embedding_does_not_depend_on_the_other_rows_of_its_shard() -> None:
    model = _model()
    images = embedded_pool(n=300).images
    whole = ArrayPoolEmbedder(images, batch_size=128)(model, CPU)
    assert whole is not None and whole.shape == (300, 128)
    rng = np.random.default_rng(0)
    shard = np.sort(rng.choice(300, size=70, replace=False))  # any subset, e.g. the blocks one worker receives
    assert np.array_equal(embed_rows(model, images[shard], shard, batch_size=128), whole[shard])
    # the same computation as the loop's embed_images (eval mode, inference transform, normalised head output)
    np.testing.assert_allclose(whole, embed_images(model, images, CPU), atol=1e-5)
    assert model.training  # the model's mode is restored


def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model = _model()
        images = embedded_pool(n=300).images
        results = {size: ArrayPoolEmbedder(images[:size], batch_size=128)(model, CPU) for size in (300, 100)}
        torch.save({size: None if rows is None else torch.from_numpy(rows) for size, rows in results.items()},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ddp_ranks_embed_alternate_batches_and_rank_zero_gets_them_all(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))  # the spawned children import this module by name
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    mp.start_processes(_ddp_worker, args=(port, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert rank1 == {300: None, 100: None}
    model, images = _model(), embedded_pool(n=300).images
    for size in (300, 100):  # 300: rank 0 embeds batches 0 and 2, rank 1 batch 1; 100: rank 1 embeds nothing
        single = ArrayPoolEmbedder(images[:size], batch_size=128)(model, CPU)
        assert torch.equal(rank0[size], torch.from_numpy(single))


def _colt_config(tmp_path: Path, pool_path: Path, name: str):
    return load_config(ROOT / "ltray" / "configs" / "digits_tiny.yaml", {
        "method.name": "colt", "method.colt.pool": "random300k", "method.colt.pool_path": str(pool_path),
        "method.colt.warmup": 1, "method.colt.interval": 1, "method.colt.budget": 16, "method.colt.clusters": 3,
        "method.colt.topk": 3, "optim.epochs": 2, "optim.batch_size": 64, "run.checkpoint_every": 1,
        "run.device": "cpu", "run.progress": "off", "run.name": name, "run.output_dir": str(tmp_path / "runs"),
    })


@pytest.mark.slow
def test_two_ray_workers_embedding_their_shards_pick_what_one_process_picks(connected, tmp_path: Path) -> None:
    from ltray.cluster.train_worker import TrainSettings, fit_training

    pool_path = tmp_path / "pool.npy"
    np.save(pool_path, embedded_pool(n=1100).images)  # three Ray Data blocks: 512, 512, 76 rows
    cfg = _colt_config(tmp_path, pool_path, "sharded")
    settings = TrainSettings(storage_path=str(tmp_path / "train"), workers=2, cpus_per_worker=0.5, max_failures=0)
    fit_training(cfg, "sharded", settings)
    saved = {p.name: p for p in (tmp_path / "train" / "sharded").rglob("*.pt")}
    before = load_checkpoint(saved[checkpoint_name(1)])  # the state the resample of epoch 2 started from
    after = load_checkpoint(saved[checkpoint_name(2)])
    assert len(after["active_pool"]) == 16 and after["method"]["colt"]["resamples"] == 1

    single = Pretrainer(_colt_config(tmp_path, pool_path, "single"))
    single.model.load_state_dict(before["model"])
    single.method.load_state_dict(before["method"])
    single.epoch = 1
    single.method.on_epoch_start(single._epoch_context())
    assert single.train_data.active_pool.tolist() == after["active_pool"].tolist()


@pytest.mark.slow
def test_every_array_pool_becomes_a_dataset_of_index_and_image_rows(connected, tmp_path: Path) -> None:
    import ray

    from ltray.cluster.pool_dataset import colt_pool_dataset
    from ltray.data.pool_store import images_from_column, import_pool
    from ltray.train.shard_embed import IMAGE

    images = embedded_pool(n=600).images
    np.save(tmp_path / "pool.npy", images)
    folder = import_pool(tmp_path / "pool.npy", tmp_path / "pool", shard_rows=250)
    sources = {"embedded": None, "random300k": tmp_path / "pool.npy", "parquet": folder}
    for pool, path in sources.items():
        cfg = _colt_config(tmp_path, path, pool).replace({"method.colt.pool": pool, "method.colt.pool_size": 600})
        rows = pa.concat_tables(ray.get(colt_pool_dataset(cfg).to_arrow_refs()))
        index = rows.column("pool_index").to_numpy()
        assert sorted(index.tolist()) == list(range(600)), pool
        assert np.array_equal(images_from_column(rows.column(IMAGE), (16, 16, 3)), images[index]), pool
    assert colt_pool_dataset(_colt_config(tmp_path, tmp_path, "x").replace({"method.name": "simclr"})) is None
