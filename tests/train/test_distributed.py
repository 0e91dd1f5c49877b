"""Distributed equivalence with two real processes (docs/math/README.md convention 4, sdclr.md §4, gh.md §3–§4).

Two gloo ranks on 127.0.0.1 each hold half of a fixed batch of fixed view tensors; the model goes through the
training loop's own wrapping (SyncBN conversion, DDP), z¹/z² are all-gathered with gradient, the method's
`compute_loss` runs on the global batch and `loss × world size` is backpropagated. The loss, the per-sample values,
every parameter gradient and every BN running statistic must equal those of one process on the whole batch.
All two-process work runs in one spawn (module fixture); the single-process references run in the test process.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ltray.common import distributed as dist_utils
from ltray.common.state import IndexedEMA
from ltray.config import Config, load_config
from ltray.data.loading import RunData
from ltray.data.sources import ArraySource
from ltray.data.splits import ItemList, Split
from ltray.data.train_data import TrainData
from ltray.errors import TrainingDiverged
from ltray.methods.base import EpochContext, Step
from ltray.methods.method import build_method
from ltray.models.contrastive import build_model
from ltray.models.pruning import refresh_masks
from ltray.train.loop import Pretrainer, _unwrap, _wrap_distributed

WORLD = 2
BATCH = 8  # global batch: 4 images per rank
SIZE = 8  # 8x8 views
INDEX_SPACE = 64
NUM_ID = 12  # COLT case: indices >= 12 are OOD
CASES: dict[str, dict[str, Any]] = {
    "simclr": {"method.name": "simclr"},
    "focal": {"method.name": "focal"},
    "sdclr": {"method.name": "sdclr", "method.sdclr.prune_ratio": 0.5},
    "sdclr_single_bn": {"method.name": "sdclr", "method.sdclr.prune_ratio": 0.5, "method.sdclr.dual_bn": False},
    "lotar": {"method.name": "lotar"},
    "gh": {"method.name": "gh", "method.gh.warmup": 0, "method.gh.ramp_epochs": 1},
    "sdclr_gh": {"method.name": "sdclr+gh", "method.sdclr.prune_ratio": 0.5, "method.gh.warmup": 0,
                 "method.gh.ramp_epochs": 1},
    "colt": {"method.name": "colt"},
}
EMA_N = 7
EMA_EPOCHS = 3
EMA_BETA = 0.6
EMA_BATCHES = (4, 8)  # global batch sizes: 2 steps/epoch (duplicate in a later step) or 1 (duplicate in the step)


def _config(overrides: dict[str, Any], batch_size: int = BATCH) -> Config:
    base = {"model.width": 0.125, "optim.batch_size": batch_size, "run.device": "cpu", "run.progress": "off"}
    return load_config(None, {**base, **overrides})


def _fixed_views() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    v1 = torch.rand(BATCH, 3, SIZE, SIZE, generator=g)
    v2 = (v1 + 0.3 * torch.rand(BATCH, 3, SIZE, SIZE, generator=g)).clamp(0, 1)
    index = torch.tensor([3, 17, 8, 40, 22, 5, 61, 30], dtype=torch.int64)
    return v1, v2, index


def _prepare_method(case: str, method) -> None:
    """Put GH on a non-uniform prior (the batch-level Sinkhorn then depends on it) and tell COLT where OOD starts."""
    for part in method.parts:
        if part.name == "gh":
            g = torch.Generator().manual_seed(99)
            memory = torch.randn(INDEX_SPACE, part.prior.k, generator=g)
            part.prior.update(torch.arange(INDEX_SPACE), memory, epoch=0)
            part.prior.refresh()
        if part.name == "colt":
            part.num_id = NUM_ID


def one_step(case: str, rank: int, world: int) -> dict[str, Any]:
    """One training step's loss and gradients as rank `rank` of `world` sees them (world 1: one process)."""
    cfg = _config(CASES[case])
    device = torch.device("cpu")
    method = build_method(cfg, INDEX_SPACE, device)
    options = method.model_options()
    torch.manual_seed(0)
    model = build_model("resnet18_cifar", width=0.125, head=options["head"], dual_bn=options["dual_bn"])
    if options["pruned_second"]:
        refresh_masks(model.backbone, cfg.method.sdclr.prune_ratio)
    _prepare_method(case, method)
    net = _wrap_distributed(model, cfg, device)
    model = _unwrap(net)
    v1, v2, index = _fixed_views()
    local = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    net.train()
    z1_local, z2_local = net(v1[local], v2[local], pruned_second=options["pruned_second"])
    z1 = dist_utils.gather_with_grad(z1_local.float())
    z2 = dist_utils.gather_with_grad(z2_local.float())
    step = Step(z1=z1, z2=z2, index=dist_utils.gather(index[local]), epoch=0, iteration=1)
    result = method.compute_loss(step)
    (result.loss * world).backward()
    return {
        "loss": result.loss.detach().clone(),
        "per_sample": result.per_sample.detach().clone(),
        "index": step.index.clone(),
        "terms": dict(result.terms),
        "grads": {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None},
        "params": [name for name, _ in model.named_parameters()],
        "buffers": {name: b.detach().clone() for name, b in model.named_buffers() if "running" in name},
        "sync_bn": sum(isinstance(m, (dist_utils.CPUSyncBatchNorm, torch.nn.SyncBatchNorm)) for m in model.modules()),
    }


def synthetic_run_data(n: int, size: int = SIZE, num_classes: int = 2, seed: int = 0) -> RunData:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    labels = np.sort(rng.integers(0, num_classes, size=n)).astype(np.int64)
    labels[:num_classes] = np.arange(num_classes)
    labels.sort()
    split = Split("synthetic", 1, num_classes, {"D_i": ItemList(labels, indices=np.arange(n))})
    source = ArraySource(images, labels, "synthetic")
    train = TrainData(id_images=images, id_labels=labels)
    return RunData("synthetic", split, source, source, train, num_classes, size, ("a", "b")[:num_classes])


def ema_value(index: torch.Tensor, epoch: int, occurrence: torch.Tensor) -> torch.Tensor:
    """The value an item reports: a function of (index, epoch), plus 100 per earlier visit in the same epoch, so
    applying a sampler-padding duplicate would show."""
    return torch.sin(index.double() * 1.7 + epoch).float() * (epoch + 1) + 100.0 * occurrence.float()


def ema_epochs(batch_size: int, output_dir: str) -> IndexedEMA:
    """EMA_EPOCHS epochs of the loop's own batches over EMA_N items, gathered over ranks and folded into an EMA."""
    cfg = _config({"method.name": "simclr", "run.output_dir": output_dir}, batch_size=batch_size)
    trainer = Pretrainer(cfg, data=synthetic_run_data(EMA_N))
    ema = IndexedEMA(EMA_N)
    for epoch in range(EMA_EPOCHS):
        trainer.epoch = epoch
        seen = torch.zeros(EMA_N, dtype=torch.int64)
        for local in trainer._batches():
            index = dist_utils.gather(torch.from_numpy(local))
            occurrence = torch.zeros_like(index)
            for j, i in enumerate(index.tolist()):
                occurrence[j] = seen[i]
                seen[i] += 1
            ema.update(index, ema_value(index, epoch, occurrence), epoch, EMA_BETA)
    return ema


def mask_agreement(rank: int) -> tuple[float, str | None]:
    """SDCLR's epoch-start refresh on every rank: identical weights agree; weights that differ on rank 1 (which
    DDP would never allow) give different masks, and every rank must stop (sdclr.md §4)."""
    cfg = _config(CASES["sdclr"])
    method = build_method(cfg, INDEX_SPACE, torch.device("cpu"))
    torch.manual_seed(0)
    model = build_model("resnet18_cifar", width=0.125, head="sdclr3", dual_bn=True)
    ctx = EpochContext(epoch=0, model=model, data=synthetic_run_data(4).train, device=torch.device("cpu"),
                       embed=lambda images: images, log_artifact=lambda name, text: None)
    method.on_epoch_start(ctx)
    density = method.metrics()["sdclr_mask_density"]
    if rank == 1:
        with torch.no_grad():
            model.backbone.conv1.weight.mul_(3.0)
    try:
        method.on_epoch_start(ctx)
    except TrainingDiverged as error:
        return density, str(error)
    return density, None


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results: dict[str, Any] = {"steps": {case: one_step(case, rank, world) for case in CASES}}
        lengths = (3, 5)
        mine = torch.arange(lengths[rank], dtype=torch.float32)[:, None] * torch.tensor([1.0, -1.0]) + 10 * rank
        results["gather_unequal"] = dist_utils.gather(mine)
        results["gather_empty"] = dist_utils.gather(torch.zeros((0 if rank == 0 else 2), dtype=torch.int64) + rank)
        results["ema"] = {b: ema_epochs(b, out_dir).state_dict() for b in EMA_BATCHES}
        results["mask"] = mask_agreement(rank)
        results["world"] = (dist_utils.world_size(), dist_utils.rank(), dist_utils.is_distributed())
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("ddp")
    repo_root = str(Path(__file__).resolve().parents[2])
    mp_path = pytest.MonkeyPatch()
    mp_path.syspath_prepend(repo_root)  # the spawned children import this module by name
    try:
        context = mp.start_processes(
            _worker, args=(WORLD, _free_port(), str(out)), nprocs=WORLD, join=False, start_method="spawn"
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


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, floor: float = 0.0) -> None:
    """Equal up to float32 summation order: 1e-4 of the tensor's own scale, plus `floor` for tensors whose exact
    value is 0 (the bias of a Linear before BN gets only rounding noise)."""
    atol = 1e-4 * float(expected.abs().max()) + floor
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=atol, msg=lambda m: f"{what}: {m}")


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_equal_one_process(ranks: list[dict[str, Any]], case: str) -> None:
    single = one_step(case, 0, 1)
    assert single["sync_bn"] == 0
    for r, result in enumerate(ranks):
        got = result["steps"][case]
        assert got["sync_bn"] > 0, "BN layers were not converted to SyncBN"
        torch.testing.assert_close(got["index"], single["index"], rtol=0, atol=0)
        _assert_close(got["loss"], single["loss"], f"{case} loss on rank {r}")
        _assert_close(got["per_sample"], single["per_sample"], f"{case} per-sample on rank {r}")
        for key, value in single["terms"].items():
            assert got["terms"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), f"{case} {key}"
        # every parameter receives a gradient in both settings (DDP runs without unused-parameter detection)
        assert set(got["grads"]) == set(single["grads"]) == set(single["params"])
        largest = max(float(g.abs().max()) for g in single["grads"].values())
        for name, grad in single["grads"].items():
            _assert_close(got["grads"][name], grad, f"{case} grad {name} on rank {r}", floor=1e-6 * largest)
        assert set(got["buffers"]) == set(single["buffers"])
        for name, buffer in single["buffers"].items():
            _assert_close(got["buffers"][name], buffer, f"{case} buffer {name} on rank {r}")


@pytest.mark.slow
def test_gh_and_colt_cases_exercise_their_terms(ranks: list[dict[str, Any]]) -> None:
    assert ranks[0]["steps"]["gh"]["terms"]["weight_gh"] == 1.0
    assert ranks[0]["steps"]["sdclr_gh"]["terms"]["loss_gh"] > 0
    assert ranks[0]["steps"]["colt"]["terms"]["weight_colt_sup"] == pytest.approx(0.2)
    # SDCLR's dual BN: the pruned copy (bn_list.1) gets its own statistics and gradient
    grads = ranks[0]["steps"]["sdclr"]["grads"]
    assert any(".bn_list.1." in name for name in grads)
    assert all(ranks[r]["world"] == (2, r, True) for r in range(WORLD))


@pytest.mark.slow
def test_sdclr_masks_agree_and_a_divergent_mask_stops_every_rank(ranks: list[dict[str, Any]]) -> None:
    densities = [result["mask"][0] for result in ranks]
    assert densities[0] == densities[1] and 0.45 < densities[0] < 0.55
    for result in ranks:
        assert result["mask"][1] == "SDCLR pruning masks differ across workers at epoch 1"


@pytest.mark.slow
def test_gather_handles_unequal_lengths(ranks: list[dict[str, Any]]) -> None:
    expected = torch.cat([
        torch.arange(3, dtype=torch.float32)[:, None] * torch.tensor([1.0, -1.0]),
        torch.arange(5, dtype=torch.float32)[:, None] * torch.tensor([1.0, -1.0]) + 10,
    ])
    for result in ranks:
        torch.testing.assert_close(result["gather_unequal"], expected, rtol=0, atol=0)
        torch.testing.assert_close(result["gather_empty"], torch.tensor([1, 1]), rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", EMA_BATCHES)
def test_padding_duplicates_never_double_update(
    ranks: list[dict[str, Any]], batch_size: int, tmp_path: Path
) -> None:
    # one process over the same 7 items: no padding, every item visited once per epoch
    single = ema_epochs(batch_size, str(tmp_path)).state_dict()
    # the expected EMA by hand: raw value at the first visit, then (1 − β)·value + β·old, once per epoch
    expected = np.zeros(EMA_N)
    for epoch in range(EMA_EPOCHS):
        value = ema_value(torch.arange(EMA_N), epoch, torch.zeros(EMA_N, dtype=torch.int64)).double().numpy()
        expected = value if epoch == 0 else (1 - EMA_BETA) * value + EMA_BETA * expected
    np.testing.assert_allclose(single["values"].double().numpy(), expected, rtol=1e-6)
    for result in ranks:
        got = result["ema"][batch_size]
        torch.testing.assert_close(got["values"], single["values"], rtol=0, atol=0)
        assert bool(got["visited"].all())
        assert got["last_epoch"].tolist() == [EMA_EPOCHS - 1] * EMA_N


def test_single_process_helpers_are_no_ops() -> None:
    x = torch.randn(3, 2, requires_grad=True)
    assert dist_utils.gather_with_grad(x) is x
    assert dist_utils.gather(x) is x
    assert (dist_utils.world_size(), dist_utils.rank(), dist_utils.is_distributed()) == (1, 0, False)
    torch.testing.assert_close(dist_utils.local_slice(torch.arange(6), 2), torch.tensor([0, 1]))


def test_cpu_sync_batchnorm_is_batchnorm_in_one_process() -> None:
    torch.manual_seed(0)
    plain = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5)
        plain.bias.uniform_(-0.5, 0.5)
    synced = dist_utils.CPUSyncBatchNorm(3)
    synced.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 5, 5)
    for mode in (True, False):
        plain.train(mode)
        synced.train(mode)
        torch.testing.assert_close(synced(x), plain(x))
    torch.testing.assert_close(synced.running_var, plain.running_var)
    with pytest.raises(ValueError, match="2D"):
        synced(torch.randn(3))


def test_convert_sync_batchnorm_shares_parameters_and_keeps_names() -> None:
    model = build_model("resnet18_cifar", width=0.125, head="sdclr3", dual_bn=True)
    before = dict(model.named_parameters())
    buffers = {name: b for name, b in model.named_buffers()}
    converted = dist_utils.convert_sync_batchnorm(model, torch.device("cpu"))
    assert converted is model
    kinds = [type(m) for m in model.modules()]
    assert torch.nn.BatchNorm2d not in kinds and torch.nn.BatchNorm1d not in kinds
    # every dual-BN copy became its own synchronised BN: 2 per BN of the backbone and of the 3-layer head
    assert kinds.count(dist_utils.CPUSyncBatchNorm) == 2 * (20 + 3)
    after = dict(model.named_parameters())
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert all(b is buffers[name] for name, b in model.named_buffers())
    gpu_style = dist_utils.convert_sync_batchnorm(
        build_model("resnet18_cifar", width=0.125), torch.device("cuda")
    )
    assert any(type(m) is torch.nn.SyncBatchNorm for m in gpu_style.modules())
