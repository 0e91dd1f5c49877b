"""K-center greedy (docs/math/mak.md §6): incremental version against a hand example and the quadratic reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ltray.errors import ConfigError, DataError
from ltray.select.kcenter import kcenter_greedy, kcenter_greedy_naive, max_similarity


def grid_features(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    """Unit vectors rounded to multiples of 2⁻¹⁰: every float32 dot product of them is exact (products need ≤ 22
    bits and partial sums stay below 2 in magnitude), so any summation order gives the same bits and exact ties
    are real ties."""
    x = rng.normal(size=(rows, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return (np.round(x * 1024) / 1024).astype(np.float32)


def test_hand_example() -> None:
    # S₀ = {(1, 0)}. Pool: p0 = (0, 1), p1 = (−1, 0), p2 = (0.6, 0.8), p3 = (0, −1), p4 = (−0.6, −0.8).
    # μ = [0, −1, 0.6, 0, −0.6] → pick p1. p·p1 = [0, ·, −0.6, 0, 0.6] → μ = [0, ∞, 0.6, 0, 0.6].
    # p0 and p3 tie at 0 → pick p0 (lower index). p·p0 = [·, ·, 0.8, −1, −0.8] → μ = [∞, ∞, 0.8, 0, 0.6].
    # → pick p3. p·p3 = [·, ·, −0.8, ·, 0.8] → μ = [∞, ∞, 0.8, ∞, 0.8]: a tie at 0.8 → p2, then p4.
    start = np.array([[1.0, 0.0]], dtype=np.float32)
    pool = np.array([[0.0, 1.0], [-1.0, 0.0], [0.6, 0.8], [0.0, -1.0], [-0.6, -0.8]], dtype=np.float32)
    np.testing.assert_array_equal(kcenter_greedy(pool, start, 3), [1, 0, 3])
    np.testing.assert_array_equal(kcenter_greedy_naive(pool, start, 3), [1, 0, 3])
    np.testing.assert_array_equal(kcenter_greedy(pool, start, 5, block_size=2), [1, 0, 3, 2, 4])


def test_max_similarity_blocked_equals_direct() -> None:
    rng = np.random.default_rng(5)
    pool = torch.from_numpy(grid_features(rng, 37, 8))
    start = torch.from_numpy(grid_features(rng, 23, 8))
    direct = (pool @ start.t()).amax(dim=1)
    for block in (5, 16, 100):
        assert torch.equal(max_similarity(pool, start, block), direct)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_incremental_equals_naive_on_random_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pool = grid_features(rng, 200, 16)
    start = grid_features(rng, 50, 16)
    naive = kcenter_greedy_naive(pool, start, 30)
    for block in (7, 4096):
        np.testing.assert_array_equal(kcenter_greedy(pool, start, 30, block_size=block), naive)
    assert len(set(naive.tolist())) == 30


@pytest.mark.parametrize("seed", [0, 1])
def test_incremental_equals_naive_with_duplicate_points(seed: int) -> None:
    rng = np.random.default_rng(seed)
    base = grid_features(rng, 40, 3)
    pool = np.concatenate([base, base[::-1], base[:10]])  # every point at least twice: exact ties everywhere
    start = np.concatenate([grid_features(rng, 5, 3), base[:3]])
    naive = kcenter_greedy_naive(pool, start, 90)
    np.testing.assert_array_equal(kcenter_greedy(pool, start, 90, block_size=9), naive)
    np.testing.assert_array_equal(kcenter_greedy(torch.from_numpy(pool), torch.from_numpy(start), 90), naive)
    assert len(set(naive.tolist())) == 90


def test_empty_start_set_starts_at_position_zero() -> None:
    rng = np.random.default_rng(9)
    pool = grid_features(rng, 50, 4)
    start = np.zeros((0, 4), dtype=np.float32)
    picks = kcenter_greedy(pool, start, 10)
    assert picks[0] == 0
    np.testing.assert_array_equal(picks, kcenter_greedy_naive(pool, start, 10))


def test_whole_pool_and_zero_budget() -> None:
    rng = np.random.default_rng(2)
    pool = grid_features(rng, 12, 3)
    start = grid_features(rng, 2, 3)
    picks = kcenter_greedy(pool, start, 12)
    assert sorted(picks.tolist()) == list(range(12))
    assert kcenter_greedy(pool, start, 0).shape == (0,)


def test_rejects_bad_input() -> None:
    pool = np.eye(3, dtype=np.float32)
    with pytest.raises(ConfigError):
        kcenter_greedy(pool, pool, 4)
    with pytest.raises(ConfigError):
        kcenter_greedy(pool, pool, 1, block_size=0)
    with pytest.raises(DataError):
        kcenter_greedy(pool, np.ones((2, 4), dtype=np.float32), 1)
    with pytest.raises(ConfigError):
        kcenter_greedy_naive(pool, pool, -1)
