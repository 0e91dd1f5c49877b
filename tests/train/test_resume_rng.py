"""Every rank keeps its own random stream across a resume (docs/math/README.md convention 6: seed + rank).

Two gloo ranks on 127.0.0.1 train a tiny run without interruption, train it again stopped after epoch 1 and resume
it: right after the resume and at the end, each rank's Python / NumPy / torch streams equal that rank's streams of
the uninterrupted run, and the two ranks' streams differ. A checkpoint of another world size cannot give each rank
its own state, so every rank is reseeded from (seed + rank, epoch) and rank 0 says so. All two-process work runs in
one spawn (module fixture).
"""

from __future__ import annotations

import contextlib
import io
import random
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ltray.config import Config
from ltray.data.loading import RunData
from ltray.train.checkpoint import (
    checkpoint_name,
    load_checkpoint,
    reseed,
    restore_rng_states,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from ltray.train.loop import Pretrainer, pretrain

WORLD = 2
EPOCHS = 3
STOP = 1
TIMING = ("epoch_time_s", "images_per_s")


class Interrupted(Exception):
    """Raised by the reporter right after the checkpoint of epoch STOP, like a killed worker."""


def peek_streams() -> tuple[float, float, list[float]]:
    """The next draws of Python, NumPy and torch, leaving every generator where it was."""
    saved = rng_state()
    draws = (random.random(), float(np.random.rand()), torch.rand(3).tolist())
    set_rng_state(saved)
    return draws


def _losses(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{key: value for key, value in epoch.items() if key not in TIMING} for epoch in history]


def _named(cfg: Config, name: str) -> Config:
    return cfg.replace({"run.name": name})


def _worker(rank: int, world: int, port: int, out_dir: str, cfg: Config, data: RunData) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results: dict[str, Any] = {}

        at_stop: dict[str, Any] = {}

        def record(epoch: int, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
            if epoch == STOP:
                at_stop["streams"] = peek_streams()

        full = pretrain(_named(cfg, "full"), reporter=record, data=data)
        results["full_at_stop"], results["full_end"] = at_stop["streams"], peek_streams()
        results["full_losses"] = _losses(full.history)

        def stop(epoch: int, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
            if epoch == STOP:
                raise Interrupted

        interrupted = _named(cfg, "interrupted")
        with contextlib.suppress(Interrupted):
            pretrain(interrupted, reporter=stop, data=data)
        dist.barrier()  # rank 0 has written the checkpoint
        checkpoint = interrupted.run_dir / "checkpoints" / checkpoint_name(STOP)
        results["saved_rng_ranks"] = len(load_checkpoint(checkpoint)["rng"])
        trainer = Pretrainer(interrupted, data=data)
        trainer.resume_from(checkpoint)
        results["resumed_at_stop"] = peek_streams()
        results["resumed_losses"] = _losses(trainer.run().history)
        results["resumed_end"] = peek_streams()

        # a checkpoint written by one process: its single RNG state cannot serve two ranks
        shrunk = _named(cfg, "shrunk")
        single = shrunk.run_dir / "checkpoints" / checkpoint_name(STOP)
        if rank == 0:
            state = load_checkpoint(checkpoint)
            state["rng"] = state["rng"][:1]
            save_checkpoint(single, {key: value for key, value in state.items() if key != "format"})
        dist.barrier()
        trainer = Pretrainer(shrunk, data=data)
        log = io.StringIO()
        with contextlib.redirect_stderr(log):
            trainer.resume_from(single)
        results["reseeded"], results["reseed_log"] = peek_streams(), log.getvalue()
        reseed(cfg.run.seed, rank, STOP)
        results["expected_reseeded"] = peek_streams()
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("resume-rng")
    repo_root = str(Path(__file__).resolve().parents[2])
    mp_path = pytest.MonkeyPatch()
    mp_path.syspath_prepend(repo_root)  # the spawned children import this module by name
    try:
        from tests.train.conftest import synthetic_run_data, tiny_config

        cfg = tiny_config(out / "runs", optim__epochs=EPOCHS)
        data = synthetic_run_data(n=16)
        context = mp.start_processes(
            _worker, args=(WORLD, _free_port(), str(out), cfg, data), nprocs=WORLD, join=False, start_method="spawn"
        )
        deadline = time.monotonic() + 240
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                for process in context.processes:
                    if process.is_alive():
                        process.kill()
                pytest.fail("the two-process run did not finish within 240 s")
    finally:
        mp_path.undo()
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.slow
def test_the_checkpoint_holds_every_ranks_rng_state(ranks: list[dict[str, Any]]) -> None:
    assert [result["saved_rng_ranks"] for result in ranks] == [WORLD, WORLD]


@pytest.mark.slow
def test_each_rank_resumes_its_own_stream(ranks: list[dict[str, Any]]) -> None:
    for result in ranks:
        assert result["resumed_at_stop"] == result["full_at_stop"]
        assert result["resumed_end"] == result["full_end"]
        assert result["resumed_losses"] == result["full_losses"]
    rank0, rank1 = ranks
    for moment in ("resumed_at_stop", "resumed_end"):
        for generator in range(3):
            assert rank0[moment][generator] != rank1[moment][generator], (moment, generator)


@pytest.mark.slow
def test_another_world_size_reseeds_every_rank_from_seed_rank_and_epoch(ranks: list[dict[str, Any]]) -> None:
    rank0, rank1 = ranks
    for result in ranks:
        assert result["reseeded"] == result["expected_reseeded"]
    assert all(rank0["reseeded"][generator] != rank1["reseeded"][generator] for generator in range(3))
    assert "holds the RNG states of 1 rank(s) but 2 are running" in rank0["reseed_log"]
    assert rank1["reseed_log"] == ""


def test_single_process_restores_exactly_also_from_a_one_state_checkpoint(tmp_path: Path) -> None:
    saved = rng_state()
    expected = peek_streams()
    torch.manual_seed(123)
    assert restore_rng_states(saved, seed=10, epoch=1) is True  # checkpoints written before every rank's state
    assert peek_streams() == expected
    torch.manual_seed(123)
    save_checkpoint(tmp_path / "rng.pt", {"rng": [saved]})
    assert restore_rng_states(load_checkpoint(tmp_path / "rng.pt")["rng"], seed=10, epoch=1) is True
    assert peek_streams() == expected


def test_single_process_reseeds_from_a_two_rank_checkpoint(capsys: pytest.CaptureFixture[str]) -> None:
    assert restore_rng_states([rng_state(), rng_state()], seed=10, epoch=4) is False
    reseeded = peek_streams()
    reseed(10, 0, 4)
    assert peek_streams() == reseeded
    assert "reseeded every rank from (seed + rank, epoch 4)" in capsys.readouterr().err
