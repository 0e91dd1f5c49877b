"""A whole ltray training epoch against the bare model step, on the same model and the same batches.

    python bench/bench_epoch.py [--setting scenes|cifar|both] [--repeats 5] [--device cpu] [--threads N] [--profile]
                                [--clock auto|wall|process] [--memory-format]

ours: `Pretrainer.train_epoch` of SimCLR: shuffled sampler, uint8 images gathered by dataset index, two batched
      augmented views, one model call, the composed loss, backward, SGD step, per-index bookkeeping, metrics.
bare: forward of two views that are already augmented and in memory + NT-Xent + backward + SGD step, nothing else.

Settings (uint8 images: the embedded `scenes-lt` train images when they are available, else random ones):
- scenes: width-0.25 CIFAR ResNet-18 at 16x16, batch 256, 4 batches; goal bare/ours >= 0.80.
- cifar:  width-1 CIFAR ResNet-18 at 32x32, batch 128, 2 batches; goal bare/ours >= 0.95.
Each repeat times one epoch of each (after one warm-up epoch each), alternating; the fastest of the repeats is kept
(on a machine shared with other jobs the minimum is the least disturbed run; the median is printed too). The printed
ratio is bare_time / our_time (1.0: no overhead). --profile prints where our epoch spends its time (cProfile).
Clock: `wall` (perf_counter, synchronised on CUDA) or `process` (CPU seconds of this process, all threads); `auto`
takes `process` on CPU, where other jobs on a shared machine would otherwise distort wall times, and `wall` on CUDA.
On a shared CPU use --threads 1 as well: contended OpenMP threads spin and make both timings erratic.
--memory-format instead times our epoch with `model.channels_last` on and off (alternating, same batches) and prints
contiguous_time / channels_last_time (above 1: channels_last is faster; the embedded configs turn it on).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ltray.augment.batched import SimCLRViews
from ltray.config import Config, load_config
from ltray.data.loading import RunData
from ltray.data.sources import ArraySource
from ltray.data.splits import ItemList, Split
from ltray.data.train_data import TrainData
from ltray.losses.ntxent import ntxent
from ltray.models.contrastive import build_model
from ltray.train.loop import Pretrainer
from ltray.train.optim import build_optimizer


@dataclass(frozen=True)
class Setting:
    name: str
    width: float
    size: int
    batch: int
    batches: int
    goal: float


SETTINGS = {
    "scenes": Setting("scenes-lt size (R18 x0.25, 16x16, batch 256)", 0.25, 16, 256, 4, 0.80),
    "cifar": Setting("CIFAR size (R18 x1, 32x32, batch 128)", 1.0, 32, 128, 2, 0.95),
}


def source_images(n: int, size: int) -> tuple[np.ndarray, str]:
    """n uint8 images of size x size: embedded scenes-lt photos (tiled up to 32x32 if needed), else random."""
    try:
        from ltray.data.embedded import load_embedded

        images = np.asarray(load_embedded("scenes-lt").train.images)
        origin = "scenes-lt images"
    except Exception as error:  # the embedded data may be unavailable in a bare checkout
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8), f"random images ({error})"
    images = np.resize(images, (n, *images.shape[1:]))
    if images.shape[1] != size:
        images = np.repeat(np.repeat(images, size // images.shape[1], axis=1), size // images.shape[2], axis=2)
    return np.ascontiguousarray(images), origin


def run_data(images: np.ndarray) -> RunData:
    labels = np.zeros(len(images), dtype=np.int64)
    labels[1::2] = 1
    labels.sort()
    split = Split("bench", 1, 2, {"D_i": ItemList(labels, indices=np.arange(len(images)))})
    source = ArraySource(images, labels, "bench")
    train = TrainData(id_images=images, id_labels=labels)
    return RunData("bench", split, source, source, train, 2, images.shape[1], ("a", "b"))


def bench_config(setting: Setting, device: str, output_dir: str, method: str = "simclr",
                 channels_last: bool = False) -> Config:
    return load_config(None, {"model.channels_last": channels_last,
        "method.name": method, "model.width": setting.width, "optim.batch_size": setting.batch,
        "optim.epochs": 1000, "optim.warmup_epochs": 0, "optim.lr": 0.05, "run.device": device, "run.amp": "off",
        "run.progress": "off", "run.output_dir": output_dir, "run.name": "bench",
        "method.gh.warmup": 0, "method.colt.warmup": 0, "method.colt.budget": 1,
    })


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Bare:
    """The same architecture and optimiser stepping over pre-augmented views held in memory."""

    def __init__(self, cfg: Config, trainer: Pretrainer) -> None:
        self.device = trainer.device
        self.temperature = cfg.method.temperature
        torch.manual_seed(cfg.run.seed)
        self.model = build_model(cfg.model.arch, width=cfg.model.width).to(self.device)
        o = cfg.optim
        self.optimizer = build_optimizer(self.model.parameters(), "sgd", o.lr, o.momentum, o.weight_decay, o.lars_eta)
        views = SimCLRViews(trainer.data.image_size)
        self.views = []
        for index in trainer._batches():
            images = torch.from_numpy(trainer.train_data.images(index)).to(self.device)
            self.views.append(views(images, torch.from_numpy(index).to(self.device), 0, 0))

    def epoch(self) -> None:
        self.model.train()
        for v1, v2 in self.views:
            z1, z2 = self.model(v1, v2)
            loss, _ = ntxent(z1.float(), z2.float(), self.temperature)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()


CLOCK = {"wall": time.perf_counter, "process": time.process_time}


def resolve_clock(clock: str, device: torch.device) -> str:
    """`auto`: `wall` on CUDA, `process` on CPU."""
    if clock == "auto":
        return "wall" if device.type == "cuda" else "process"
    return clock


def timed(run: Callable[[], None], device: torch.device, clock: str) -> float:
    """Seconds of `run()` on `clock`, synchronised on CUDA."""
    now = CLOCK[clock]
    synchronise(device)
    start = now()
    run()
    synchronise(device)
    return now() - start


def epoch_runner(trainer: Pretrainer) -> Callable[[], None]:
    def run() -> None:
        trainer.train_epoch()
        trainer.epoch += 1
    return run


def measure(setting: Setting, device: str, repeats: int, profile: bool, clock: str) -> float:
    images, origin = source_images(setting.batch * setting.batches, setting.size)
    with tempfile.TemporaryDirectory() as output_dir:
        cfg = bench_config(setting, device, output_dir)
        trainer = Pretrainer(cfg, data=run_data(images))
        bare = Bare(cfg, trainer)
        ours = epoch_runner(trainer)
        dev = trainer.device
        clock = resolve_clock(clock, dev)
        timed(ours, dev, clock)
        timed(bare.epoch, dev, clock)
        our_times, bare_times = [], []
        for _ in range(repeats):
            our_times.append(timed(ours, dev, clock))
            bare_times.append(timed(bare.epoch, dev, clock))
        ours_s, bare_s = min(our_times), min(bare_times)
        ratio = bare_s / ours_s
        median_ratio = statistics.median(bare_times) / statistics.median(our_times)
        images_per_epoch = setting.batch * setting.batches
        print(f"{setting.name}: {origin}, {setting.batches} batches, device {dev}, "
              f"{torch.get_num_threads()} threads, {clock} clock, fastest of {repeats}")
        print(f"  ours  {ours_s:8.3f} s/epoch  {images_per_epoch / ours_s:8.1f} img/s")
        print(f"  bare  {bare_s:8.3f} s/epoch  {images_per_epoch / bare_s:8.1f} img/s")
        verdict = "meets" if ratio >= setting.goal else "BELOW"
        print(f"  ratio bare/ours = {ratio:.3f}  ({verdict} the goal {setting.goal:.2f}; ratio of medians {median_ratio:.3f})")
        if profile or ratio < setting.goal:
            profiler = cProfile.Profile()
            profiler.enable()
            ours()
            synchronise(dev)
            profiler.disable()
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(18)
            print("  where our epoch spends its time (cProfile, cumulative):")
            print("\n".join("    " + line for line in text.getvalue().splitlines() if line.strip()))
    return ratio


def measure_memory_format(setting: Setting, device: str, repeats: int, clock: str) -> float:
    """Our epoch with contiguous weights and inputs against the same epoch in channels_last, alternating."""
    images, origin = source_images(setting.batch * setting.batches, setting.size)
    with tempfile.TemporaryDirectory() as output_dir:
        trainers = {layout: Pretrainer(bench_config(setting, device, output_dir, channels_last=layout == "channels_last"),
                                       data=run_data(images))
                    for layout in ("contiguous", "channels_last")}
        dev = trainers["contiguous"].device
        clock = resolve_clock(clock, dev)
        times: dict[str, list[float]] = {layout: [] for layout in trainers}
        for repeat in range(repeats + 1):
            for layout, trainer in trainers.items():
                elapsed = timed(epoch_runner(trainer), dev, clock)
                if repeat:  # the first epoch of each is a warm-up
                    times[layout].append(elapsed)
        images_per_epoch = setting.batch * setting.batches
        print(f"{setting.name}: {origin}, {setting.batches} batches, device {dev}, "
              f"{torch.get_num_threads()} threads, fastest of {repeats}")
        for layout, values in times.items():
            print(f"  {layout:<14}{min(values):8.3f} s/epoch  {images_per_epoch / min(values):8.1f} img/s")
        ratio = min(times["contiguous"]) / min(times["channels_last"])
        print(f"  ratio contiguous/channels_last = {ratio:.3f}")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=("scenes", "cifar", "both"), default="both")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--clock", choices=("auto", "wall", "process"), default="auto")
    parser.add_argument("--memory-format", action="store_true",
                        help="compare our epoch in channels_last against contiguous instead of against the bare step")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = ("scenes", "cifar") if args.setting == "both" else (args.setting,)
    for name in names:
        if args.memory_format:
            measure_memory_format(SETTINGS[name], args.device, args.repeats, args.clock)
        else:
            measure(SETTINGS[name], args.device, args.repeats, args.profile, args.clock)


if __name__ == "__main__":
    main()
