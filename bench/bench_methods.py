"""Training-step time of every method relative to SimCLR, on the same backbone, data and batch.

    python bench/bench_methods.py [--batch 256] [--width 0.25] [--size 16] [--repeats 5] [--device cpu] [--threads N]
                                  [--clock auto|wall|process]

One step is `Pretrainer.train_step` on the same batch of dataset indices: gather, two augmented views (plus BCL's
RandAugment_prob), one model call, the composed loss, backward, SGD step and the method's bookkeeping. Each method
runs its own epoch-start hook first (SDCLR's mask, COLT's ID/OOD boundary), then:
- bcl: weights of version 1 drawn uniformly in [0, 1] (epoch 2), so RandAugment ops are applied;
- gh: past the warm-up (λ > 0), 300 Sinkhorn iterations per view, a refreshed non-uniform prior;
- colt: half of the batch are OOD pool items, so the SupCon term is active.
Methods are timed round-robin, `--repeats` times each after one warm-up step; the fastest step of each is kept (the
least disturbed on a shared machine; medians are printed too). The Sinkhorn solve of GH (two views, B x K = batch x
100, 300 iterations) is also timed alone, to show how much of GH's overhead it is.
Clock: `wall` (perf_counter, synchronised on CUDA) or `process` (CPU seconds of this process, all threads). The
default `auto` takes `process` on CPU, where other jobs on a shared machine would otherwise distort wall times, and
`wall` on CUDA.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ltray.augment.randaugment import BCLWeights
from ltray.config import load_config
from ltray.data.loading import RunData
from ltray.data.sources import ArraySource
from ltray.data.splits import ItemList, Split
from ltray.data.train_data import TrainData
from ltray.losses.sinkhorn import sinkhorn_knopp
from ltray.train.loop import Pretrainer

METHODS = ("simclr", "sdclr", "focal", "lotar", "bcl", "gh", "sdclr+gh", "colt")


def images_for(n: int, size: int) -> np.ndarray:
    try:
        from ltray.data.embedded import load_embedded

        images = np.asarray(load_embedded("scenes-lt").train.images)
    except Exception:  # the embedded data may be unavailable in a bare checkout
        return np.random.default_rng(0).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    images = np.resize(images, (n, *images.shape[1:]))
    if images.shape[1] != size:
        images = np.repeat(np.repeat(images, size // images.shape[1], axis=1), size // images.shape[2], axis=2)
    return np.ascontiguousarray(images)


def run_data(n_id: int, pool: int, size: int) -> RunData:
    images = images_for(n_id + pool, size)
    labels = np.sort(np.arange(n_id) % 2).astype(np.int64)
    split = Split("bench", 1, 2, {"D_i": ItemList(labels, indices=np.arange(n_id))})
    source = ArraySource(images[:n_id], labels, "bench")
    train = TrainData(id_images=images[:n_id], id_labels=labels, pool_images=images[n_id:],
                      active_pool=np.arange(pool))
    return RunData("bench", split, source, source, train, 2, size, ("a", "b"))


def make_trainer(method: str, args: argparse.Namespace, output_dir: str) -> tuple[Pretrainer, np.ndarray]:
    cfg = load_config(None, {
        "method.name": method, "model.width": args.width, "optim.batch_size": args.batch, "optim.lr": 0.05,
        "optim.warmup_epochs": 0, "optim.epochs": 100, "run.device": args.device, "run.amp": "off",
        "run.progress": "off", "run.output_dir": output_dir, "run.name": method.replace("+", "_"),
        "method.gh.warmup": 0, "method.gh.ramp_epochs": 1, "method.gh.sinkhorn_iters": 300,
        "method.colt.warmup": 50, "method.colt.budget": args.batch // 2,
    })
    pool = args.batch // 2
    trainer = Pretrainer(cfg, data=run_data(args.batch, pool, args.size))
    trainer.epoch = 1
    trainer.method.on_epoch_start(trainer._epoch_context())
    parts = {p.name: p for p in trainer.method.parts}
    if "bcl" in parts:
        weights = torch.rand(trainer.train_data.index_space, generator=torch.Generator().manual_seed(0))
        parts["bcl"].augment.set_weights(BCLWeights(weights.to(trainer.device), version=1))
    if "gh" in parts:
        memory = torch.randn(trainer.train_data.index_space, cfg.method.gh.target_dim)
        parts["gh"].prior.update(torch.arange(trainer.train_data.index_space), memory.to(trainer.device), epoch=0)
        parts["gh"].prior.refresh()
    if method == "colt":  # half ID, half OOD
        index = np.concatenate([np.arange(args.batch // 2), args.batch + np.arange(pool)])
    else:
        index = np.arange(args.batch)
    return trainer, index


CLOCK = {"wall": time.perf_counter, "process": time.process_time}


def seconds(run: Callable[[], object], device: torch.device, clock: str) -> float:
    now = CLOCK[clock]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = now()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return now() - start


def sinkhorn_seconds(batch: int, k: int, device: torch.device, repeats: int, clock: str) -> float:
    t = torch.nn.functional.normalize(torch.randn(batch, k, device=device), dim=1)
    prior = torch.rand(k, device=device, dtype=torch.float64)

    def solve() -> None:
        sinkhorn_knopp(t, prior, 0.05, 300)
        sinkhorn_knopp(t, prior, 0.05, 300)

    seconds(solve, device, clock)
    return min(seconds(solve, device, clock) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--clock", choices=("auto", "wall", "process"), default="auto")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if "simclr" not in args.methods:
        args.methods.insert(0, "simclr")
    with tempfile.TemporaryDirectory() as output_dir:
        runs = {name: make_trainer(name, args, output_dir) for name in args.methods}
        device = runs["simclr"][0].device
        clock = args.clock if args.clock != "auto" else ("wall" if device.type == "cuda" else "process")
        times: dict[str, list[float]] = {name: [] for name in runs}
        for name, (trainer, index) in runs.items():
            seconds(lambda: trainer.train_step(index), device, clock)
        for _ in range(args.repeats):
            for name, (trainer, index) in runs.items():
                times[name].append(seconds(lambda: trainer.train_step(index), device, clock))
    base, base_median = min(times["simclr"]), statistics.median(times["simclr"])
    print(f"step time per method: R18 x{args.width}, {args.size}x{args.size}, batch {args.batch}, device {device}, "
          f"{torch.get_num_threads()} threads, {clock} clock, fastest of {args.repeats}")
    print(f"  {'method':<10} {'s/step':>8} {'x simclr':>9} {'(medians)':>10}")
    for name, values in times.items():
        print(f"  {name:<10} {min(values):8.3f} {min(values) / base:9.3f} {statistics.median(values) / base_median:10.3f}")
    solve = sinkhorn_seconds(args.batch, 100, device, args.repeats, clock)
    print(f"  GH's Sinkhorn alone (2 views, {args.batch} x 100, 300 iterations): {solve:.4f} s "
          f"= {solve / base:.3f} of a SimCLR step")


if __name__ == "__main__":
    main()
