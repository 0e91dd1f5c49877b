"""Benchmark the Ray Data scoring job against a bare PyTorch loop over the same model and pool.

Usage: python bench/bench_scoring.py [--items 10000] [--width 0.25] [--actors 2] [--aug-passes 0] [--device cpu]

The pool is the embedded OOD pool (`ltray pool import embedded:N`), imported into a temporary folder first. The model
is a randomly initialised ResNet-18 (CIFAR stem) with the SimCLR head at `--width`. Both sides compute the same
columns (backbone features and normalised projections, plus `--aug-passes` augmented passes) with the same batch
size:
- bare loop: `embed_pool` over the in-memory images in this process (torch's default threads);
- Ray job: `score_pool`: read_parquet over the shards → map_batches on a fixed pool of `--actors` actors (the model
  reaches each actor as a state dict by object ref) → write_parquet → read back and merged. Its time includes
  starting the actors and loading the model in each, and the Parquet reading and writing.
Prints both throughputs (images/s) and their ratio, and checks that the two results are bit-identical.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ltray.data.pool_store import import_pool, read_pool_arrays  # noqa: E402
from ltray.pools.scoring import ModelRecipe, ScoringSpec, embed_pool, score_pool, state_dict_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000, help="pool size (embedded pool, default 10 000)")
    parser.add_argument("--width", type=float, default=0.25, help="ResNet-18 width multiplier (default 0.25)")
    parser.add_argument("--batch", type=int, default=256, help="model batch size on both sides (default 256)")
    parser.add_argument("--actors", type=int, default=2, help="Ray Data scoring actors (default 2)")
    parser.add_argument("--num-cpus", type=float, default=0.5, help="CPUs reserved per actor (default 0.5)")
    parser.add_argument("--threads", type=int, help="torch threads per actor (default: cores / actors)")
    parser.add_argument("--aug-passes", type=int, default=0, help="augmented passes R besides the inference pass")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where both sides run")
    args = parser.parse_args()

    import ray

    cores = os.cpu_count() or 1
    threads = args.threads or max(1, cores // args.actors)
    use_gpu = args.device == "cuda"
    spec = ScoringSpec(inference=True, aug_passes=args.aug_passes, seed=0, batch_size=args.batch)
    recipe = ModelRecipe("resnet18_cifar", width=args.width)
    torch.manual_seed(0)
    model = recipe.build().eval()

    with tempfile.TemporaryDirectory(prefix="ltray-bench-scoring-") as folder:
        pool = import_pool(f"embedded:{args.items}", Path(folder) / "pool")
        images = read_pool_arrays(pool).images
        print(f"pool: {args.items} images {images.shape[1]}x{images.shape[2]}, resnet18_cifar width {args.width}, "
              f"batch {args.batch}, {spec.aug_passes} augmented passes, device {args.device}, {cores} cores")

        device_model = model.to(args.device)
        begin = time.perf_counter()
        bare = embed_pool(device_model, images, spec)
        if use_gpu:
            torch.cuda.synchronize()
        bare_s = time.perf_counter() - begin
        model = device_model.cpu()

        ray.init(num_cpus=cores, num_gpus=1 if use_gpu else 0, include_dashboard=False, logging_level="error")
        try:
            source = state_dict_model(model, recipe)
            begin = time.perf_counter()
            scored = score_pool(pool, source, spec, Path(folder) / "scores", actors=args.actors,
                                num_cpus=args.num_cpus, num_gpus=1.0 / args.actors if use_gpu else 0.0,
                                threads=threads)
            ray_s = time.perf_counter() - begin
        finally:
            ray.shutdown()

    identical = np.array_equal(bare.features, scored.features) and np.array_equal(bare.projections, scored.projections)
    identical = identical and all(np.array_equal(a, b) for a, b in zip(bare.aug_projections, scored.aug_projections))
    bare_ips, ray_ips = args.items / bare_s, args.items / ray_s
    print(f"{'side':<34} {'seconds':>9} {'images/s':>10}")
    print(f"{'bare PyTorch loop (this process)':<34} {bare_s:>9.2f} {bare_ips:>10.0f}")
    label = f"Ray Data job ({args.actors} actors x {threads} thr)"
    print(f"{label:<34} {ray_s:>9.2f} {ray_ips:>10.0f}")
    print(f"ratio Ray / bare: {ray_ips / bare_ips:.2f}")
    print(f"results bit-identical: {identical}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
