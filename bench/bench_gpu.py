"""Training throughput of the paper settings on one accelerator: the numbers behind the GPU-hour estimates.

    python bench/bench_gpu.py [--device cuda] [--iters 20] [--out throughput.json]

For each setting, `Pretrainer.train_step` (the real step: images gathered by dataset index, the two batched
augmented views on the device, one model call, the composed loss, backward, optimiser step, per-index state) runs
on in-memory uint8 images of the setting's size; after warm-up steps, `--iters` steps are timed with the device
synchronised. Printed: images/s (training images, each seen in two views) and, per setting, the ratio of bf16
autocast + channels_last to float32 measured in the same run. Image-list data sets (ImageNet-100-LT, ImageNet-LT,
Places-LT) decode JPEGs on CPU loader workers in real runs; this measures the GPU side only, so for them it is an
upper bound on throughput (a lower bound on GPU-hours).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ltray.config import load_config  # noqa: E402
from ltray.data.loading import RunData  # noqa: E402
from ltray.data.sources import ArraySource  # noqa: E402
from ltray.data.splits import ItemList, Split  # noqa: E402
from ltray.data.train_data import TrainData  # noqa: E402
from ltray.train.loop import Pretrainer  # noqa: E402


@dataclass(frozen=True)
class Setting:
    name: str
    arch: str
    size: int
    batch: int
    method: str
    aug_preset: str = "sdclr"


SETTINGS = (
    Setting("cifar_r18_simclr", "resnet18_cifar", 32, 512, "simclr"),
    Setting("cifar_r18_sdclr", "resnet18_cifar", 32, 512, "sdclr"),
    Setting("cifar_r18_bcl", "resnet18_cifar", 32, 512, "bcl"),
    Setting("cifar_r18_sdclr+gh", "resnet18_cifar", 32, 512, "sdclr+gh", "gh"),
    Setting("cifar_r18_gh", "resnet18_cifar", 32, 512, "gh", "gh"),
    Setting("cifar_r18_focal", "resnet18_cifar", 32, 512, "focal"),
    Setting("cifar_r18_lotar", "resnet18_cifar", 32, 512, "lotar"),
    Setting("cifar_r18_colt", "resnet18_cifar", 32, 512, "colt"),
    Setting("cifar_r50_simclr", "resnet50_cifar", 32, 512, "simclr"),
    Setting("imagenet_r50_simclr", "resnet50", 224, 256, "simclr", "lotar"),
    Setting("imagenet_r50_sdclr", "resnet50", 224, 256, "sdclr", "lotar"),
    Setting("imagenet_r50_gh", "resnet50", 224, 256, "gh", "lotar"),
    Setting("imagenet_r50_colt", "resnet50", 224, 256, "colt", "lotar"),
)


def run_data(n: int, size: int) -> RunData:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    labels = np.sort(rng.integers(0, 10, size=n)).astype(np.int64)
    split = Split("bench", 1, 10, {"D_i": ItemList(labels, indices=np.arange(n))})
    source = ArraySource(images, labels, "bench")
    train = TrainData(id_images=images, id_labels=labels)
    return RunData("bench", split, source, source, train, 10, size, tuple(str(c) for c in range(10)))


def images_per_second(setting: Setting, device: str, fast: bool, iters: int, data: RunData) -> float:
    with tempfile.TemporaryDirectory() as output_dir:
        cfg = load_config(None, {
            "method.name": setting.method, "model.arch": setting.arch, "data.aug_preset": setting.aug_preset,
            "optim.batch_size": setting.batch, "optim.epochs": 1000, "optim.warmup_epochs": 0, "optim.lr": 0.05,
            "run.device": device, "run.amp": "bf16" if fast else "off", "model.channels_last": fast,
            "run.progress": "off", "run.output_dir": output_dir, "run.name": "bench",
            "method.gh.warmup": 0, "method.colt.warmup": 1000, "method.colt.budget": 1,
        })
        trainer = Pretrainer(cfg, data=data)
        rng = np.random.default_rng(1)
        batches = [np.sort(rng.choice(len(data.train), setting.batch, replace=False)) for _ in range(iters + 3)]
        sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
        for index in batches[:3]:
            trainer.train_step(index)
        sync()
        start = time.perf_counter()
        for index in batches[3:]:
            trainer.train_step(index)
        sync()
        elapsed = time.perf_counter() - start
    return iters * setting.batch / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--only", help="comma-separated setting names")
    parser.add_argument("--out", type=Path, help="write the measurements as JSON")
    args = parser.parse_args()
    chosen = [s for s in SETTINGS if not args.only or s.name in args.only.split(",")]
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}, {args.iters} timed steps per setting")
    rows = []
    datasets: dict[int, RunData] = {}
    for setting in chosen:
        data = datasets.setdefault(setting.size, run_data(2048 if setting.size <= 64 else 1024, setting.size))
        fp32 = images_per_second(setting, args.device, False, args.iters, data)
        fast = images_per_second(setting, args.device, True, args.iters, data)
        print(f"{setting.name:22s} {setting.arch:15s} {setting.size:3d}px batch {setting.batch:4d}: "
              f"fp32 {fp32:8.0f} img/s, bf16+channels_last {fast:8.0f} img/s, ratio {fast / fp32:.2f}", flush=True)
        rows.append({"setting": setting.name, "arch": setting.arch, "image_size": setting.size,
                     "batch": setting.batch, "method": setting.method, "device": name,
                     "images_per_s_fp32": round(fp32, 1), "images_per_s_bf16_channels_last": round(fast, 1)})
    if args.out:
        args.out.write_text(json.dumps({"device": name, "torch": torch.__version__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
