"""Throughput of the batched SimCLR augmentation against torchvision's per-item PIL pipeline.

    python bench/bench_augment.py [--batch 512] [--repeats 5] [--device cpu] [--threads N]

For 16x16 and 32x32 uint8 images (B images in memory, as the small-data training holds them) it prints:
- batched SimCLRViews (two views per image) in images/s, on the chosen device;
- torchvision's PIL pipeline (Image.fromarray + the same transforms, two views) in images/s, one process, CPU;
- their ratio;
- the overhead of BCL's RandAugmentProb hook (weights uniform in [0, 1], BCL-I and BCL-D) as a time ratio.
Times are the median over --repeats runs after one warm-up run. --threads sets torch's intra-op threads for this
script only (default: torch's own choice); on a machine shared with other jobs one thread is often faster.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ltray.augment.batched import SimCLRViews
from ltray.augment.pil import TwoViews, cifar_train_views_pil
from ltray.augment.randaugment import BCLWeights, RandAugmentProb


def median_seconds(run: Callable[[], object], repeats: int, device: torch.device) -> float:
    def synchronised() -> float:
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    synchronised()
    return statistics.median(synchronised() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch = args.batch
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, batch {batch}")

    for size in (16, 32):
        generator = torch.Generator().manual_seed(size)
        images = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=generator)
        on_device = images.to(device)
        index = torch.arange(batch, device=device)
        views = SimCLRViews(size)
        epoch = iter(range(1_000_000))
        batched = median_seconds(lambda: views(on_device, index, next(epoch), 0), args.repeats, device)

        pipeline = TwoViews(cifar_train_views_pil(size))
        arrays = images.numpy()

        def per_item() -> None:
            for array in arrays:
                pipeline(Image.fromarray(array))

        per_item_s = median_seconds(per_item, max(1, args.repeats // 2), torch.device("cpu"))

        weights = BCLWeights(torch.rand(batch, generator=generator), 1)
        overhead = {}
        for rand_k in (1, 2):
            bcl = SimCLRViews(size, extra=RandAugmentProb(weights.to(device), rand_k=rand_k))
            overhead[rand_k] = median_seconds(lambda: bcl(on_device, index, next(epoch), 0), args.repeats, device)

        print(
            f"{size}x{size}: batched {batch / batched:9.0f} img/s | torchvision PIL {batch / per_item_s:7.0f} img/s "
            f"| ratio {per_item_s / batched:5.1f}x | RandAugmentProb time ratio BCL-I {overhead[1] / batched:.2f}, "
            f"BCL-D {overhead[2] / batched:.2f}"
        )


if __name__ == "__main__":
    main()
