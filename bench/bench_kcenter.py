"""Benchmark the incremental K-center greedy against the reference-style quadratic version (docs/math/mak.md §6).

Usage: python bench/bench_kcenter.py [--quick] [--device cpu|cuda]

Prints one table comparing both implementations on the same features (and checks that their picks are identical),
then how the incremental version's time grows with the pool size N (fixed K) and with the budget K (fixed N), as
ratios to the smallest case. Features are random unit vectors rounded to multiples of 2⁻¹⁰, so every float32 dot
product is exact and both implementations see bit-identical similarities whatever their summation order.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ltray.select.kcenter import kcenter_greedy, kcenter_greedy_naive  # noqa: E402

SIZES = {
    "full": {"pool": 20_000, "start": 5_000, "budget": 1_000, "pools": (5_000, 10_000, 20_000, 40_000),
             "budgets": (250, 500, 1_000, 2_000)},
    "quick": {"pool": 4_000, "start": 1_000, "budget": 200, "pools": (1_000, 2_000, 4_000, 8_000),
              "budgets": (50, 100, 200, 400)},
}


def grid_unit_vectors(rows: int, dim: int, rng: np.random.Generator, device: torch.device) -> torch.Tensor:
    x = rng.normal(size=(rows, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return torch.from_numpy((np.round(x * 1024) / 1024).astype(np.float32)).to(device)


def timed(run: Callable[[], np.ndarray], device: torch.device, repeats: int) -> tuple[float, np.ndarray]:
    """Best wall time over `repeats` runs (the device synchronised before and after) and the last result."""
    best, result = float("inf"), np.empty(0)
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        begin = time.perf_counter()
        result = run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - begin)
    return best, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (seconds instead of minutes)")
    parser.add_argument("--device", default="cpu", help="torch device for the features (default cpu)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the incremental version (best kept)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = SIZES["quick" if args.quick else "full"]
    device = torch.device(args.device)
    rng = np.random.default_rng(args.seed)
    start = grid_unit_vectors(sizes["start"], args.dim, rng, device)
    largest_pool = grid_unit_vectors(max(sizes["pools"]), args.dim, rng, device)

    pool = largest_pool[: sizes["pool"]]
    budget = sizes["budget"]
    kcenter_greedy(pool[:100], start[:100], 10)  # warm-up: library initialisation is not part of the timing
    ours, our_picks = timed(lambda: kcenter_greedy(pool, start, budget), device, args.repeats)
    naive, naive_picks = timed(lambda: kcenter_greedy_naive(pool, start, budget), device, 1)
    identical = np.array_equal(our_picks, naive_picks)

    print(f"K-center greedy, N={pool.shape[0]}, d={args.dim}, |S0|={start.shape[0]}, K={budget}, "
          f"device={device}, torch threads={torch.get_num_threads()}")
    print(f"{'implementation':<34}{'seconds':>10}")
    print(f"{'naive (recompute over selected)':<34}{naive:>10.3f}")
    print(f"{'incremental (ltray)':<34}{ours:>10.3f}")
    print(f"ratio naive/incremental: {naive / ours:.1f}x    picks identical: {'yes' if identical else 'NO'}")

    print(f"\ngrowth with N (K={budget}, |S0|={start.shape[0]})")
    print(f"{'N':>8}{'seconds':>10}{'ratio':>8}")
    base = None
    for rows in sizes["pools"]:
        seconds, _ = timed(lambda: kcenter_greedy(largest_pool[:rows], start, budget), device, args.repeats)
        base = base or seconds
        print(f"{rows:>8}{seconds:>10.3f}{seconds / base:>8.2f}")

    print(f"\ngrowth with K (N={pool.shape[0]}, |S0|={start.shape[0]})")
    print(f"{'K':>8}{'seconds':>10}{'ratio':>8}")
    base = None
    for count in sizes["budgets"]:
        seconds, _ = timed(lambda: kcenter_greedy(pool, start, count), device, args.repeats)
        base = base or seconds
        print(f"{count:>8}{seconds:>10.3f}{seconds / base:>8.2f}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
