"""COLT selection math against hand-derived cases (docs/math/colt.md §1, §4, §7)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ltray.errors import ConfigError, DataError
from ltray.select.colt import (
    cluster_budgets,
    colt_lr_total,
    colt_select,
    greedy_nearest_unused,
    is_resample_epoch,
    validate_colt_config,
)


def unit(degrees: float) -> tuple[float, float]:
    return (math.cos(math.radians(degrees)), math.sin(math.radians(degrees)))


def hand_pool() -> np.ndarray:
    """Seven unit vectors in the plane, with two exact ties built from shared coordinates.

    With centres "right" (1, 0) and "up" (0, 1), δ_right = 1 − x and δ_up = 1 − y:
        idx  angle   δ_right  δ_up
        0     50°    0.357    0.234
        1    −20°    0.0603   1.342
        2     20°    0.0603   0.658   (x equal to idx 1: exact tie for "right")
        3     90°    1        0
        4     40°    0.234    0.357
        5     70°    0.658    0.0603
        6    130°    1.643    0.234   (mirror of idx 0: exact tie for "up")
    """
    x0, y0 = unit(50)
    x20, y20 = unit(20)
    return np.array(
        [[x0, y0], [x20, -y20], [x20, y20], [0.0, 1.0], unit(40), unit(70), [-x0, y0]], dtype=np.float32
    )


# Centres are deliberately not unit length: the selection renormalises them.
RIGHT_UP = np.array([[2.0, 0.0], [0.0, 0.5]])


def test_resample_epochs_with_defaults() -> None:
    epochs = [e for e in range(1, 2001) if is_resample_epoch(e, warmup=100, interval=25)]
    assert epochs[:3] == [101, 126, 151]
    assert epochs[-1] == 1976
    assert len(epochs) == 76  # (1976 − 101)/25 + 1
    assert epochs == list(range(101, 1977, 25))
    assert not is_resample_epoch(100, 100, 25)
    assert not is_resample_epoch(102, 100, 25)


def test_resample_every_epoch_without_warmup() -> None:
    assert all(is_resample_epoch(e, warmup=0, interval=1) for e in range(1, 20))
    assert [e for e in range(1, 12) if is_resample_epoch(e, 2, 3)] == [3, 6, 9]


@pytest.mark.parametrize(
    ("warmup", "interval", "budget", "pool"), [(-1, 25, 10, 100), (100, 0, 10, 100), (100, 25, 101, 100), (0, 1, 0, 5)]
)
def test_invalid_colt_config(warmup: int, interval: int, budget: int, pool: int) -> None:
    with pytest.raises(ConfigError):
        validate_colt_config(warmup, interval, budget, pool)


def test_valid_colt_config_passes() -> None:
    validate_colt_config(0, 1, 100, 100)
    with pytest.raises(ConfigError):
        is_resample_epoch(5, -1, -1)


def test_budgets_hand_numbers() -> None:
    # m = [1, 2, 3]: mean 2, unbiased std 1, z = [1, 0, −1];
    # q = [e, 1, 1/e] / 4.0862 = [0.6652, 0.2447, 0.0900]; q·10 = [6.65, 2.45, 0.90] → [6, 2], last 10 − 8 = 2.
    np.testing.assert_array_equal(cluster_budgets(np.array([1.0, 2.0, 3.0]), 10), [6, 2, 2])
    # τ_c = 0.5: z/τ = [2, 0, −2], q = [7.389, 1, 0.1353]/8.5245 = [0.8668, 0.1173, 0.0159];
    # q·100 = [86.68, 11.73, 1.59] → [86, 11], last 100 − 97 = 3.
    np.testing.assert_array_equal(cluster_budgets(np.array([1.0, 2.0, 3.0]), 100, temperature=0.5), [86, 11, 3])


def test_budgets_std_zero_split_equally_with_remainder_last() -> None:
    # z ≡ 0 → q = 1/4 each → 2.5 → trunc 2, 2, 2; the last takes 10 − 6 = 4.
    budgets = cluster_budgets(np.full(4, 0.1), 10)
    np.testing.assert_array_equal(budgets, [2, 2, 2, 4])
    assert budgets.sum() == 10


def test_budgets_sum_exactly_k_and_favour_low_scores() -> None:
    rng = np.random.default_rng(3)
    for budget in (1, 7, 999, 10_000):
        scores = rng.random(10)
        budgets = cluster_budgets(scores, budget)
        assert budgets.sum() == budget
        assert budgets.dtype == np.int64
        assert np.all(budgets[:-1] >= 0)
        head = budgets[:-1]
        order = np.argsort(scores[:-1])
        assert np.all(np.diff(head[order]) <= 0)  # lower mean score → no smaller budget
    np.testing.assert_array_equal(cluster_budgets(np.array([4.2]), 17), [17])


def test_budgets_reject_bad_input() -> None:
    with pytest.raises(ConfigError):
        cluster_budgets(np.array([1.0, 2.0]), 10, temperature=0.0)
    with pytest.raises(DataError):
        cluster_budgets(np.array([1.0, np.nan]), 10)


def test_greedy_hand_example_earlier_cluster_takes_first() -> None:
    # "right" (b=4): δ order 1, 2 (tie → lower index first), 4, 0 → [1, 2, 4, 0].
    # "up" (b=3): δ order 3, 5, 0, 6 (0 and 6 tie), …; idx 0 was taken by "right" → [3, 5, 6].
    picks = greedy_nearest_unused(hand_pool(), RIGHT_UP, np.array([4, 3]))
    np.testing.assert_array_equal(picks, [1, 2, 4, 0, 3, 5, 6])


def test_greedy_hand_example_tie_goes_to_lower_index() -> None:
    # "right" (b=1): idx 1 and 2 tie at 0.0603 → idx 1. "up" (b=3): 3, 5, then 0 before its tie 6.
    picks = greedy_nearest_unused(hand_pool(), RIGHT_UP, np.array([1, 3]))
    np.testing.assert_array_equal(picks, [1, 3, 5, 0])


def test_greedy_hand_example_cluster_order_matters() -> None:
    # Swap the clusters: "up" (b=3) picks first → [3, 5, 0]; "right" (b=4): 1, 2, 4, (0 taken), 5 taken,
    # 3 taken, then 6 → [1, 2, 4, 6].
    picks = greedy_nearest_unused(hand_pool(), RIGHT_UP[::-1].copy(), np.array([3, 4]))
    np.testing.assert_array_equal(picks, [3, 5, 0, 1, 2, 4, 6])


def loop_greedy(pool: np.ndarray, centres: np.ndarray, budgets: np.ndarray) -> list[int]:
    """A plain-Python version of §4 steps 6–8, sorting (δ, index) tuples."""
    centre_hat = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    taken: set[int] = set()
    picks: list[int] = []
    for c, count in enumerate(budgets):
        delta = [(1.0 - float(np.dot(pool[j], centre_hat[c])), j) for j in range(len(pool))]
        chosen = [j for _, j in sorted(delta) if j not in taken][:count]
        taken.update(chosen)
        picks.extend(chosen)
    return picks


def test_greedy_matches_loop_on_random_data() -> None:
    rng = np.random.default_rng(0)
    pool = rng.normal(size=(200, 4))
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    centres = rng.normal(size=(5, 4))
    budgets = np.array([30, 0, 25, 40, 45])
    picks = greedy_nearest_unused(torch.from_numpy(pool), centres, budgets)
    assert picks.tolist() == loop_greedy(pool.astype(np.float32).astype(np.float64), centres, budgets)
    assert len(set(picks.tolist())) == 140


def test_greedy_uses_the_whole_pool_when_k_equals_m() -> None:
    picks = greedy_nearest_unused(hand_pool(), RIGHT_UP, np.array([0, 7]))
    np.testing.assert_array_equal(picks, [3, 5, 0, 6, 4, 2, 1])


def test_greedy_rejects_small_pool_and_bad_budgets() -> None:
    with pytest.raises(ConfigError):
        greedy_nearest_unused(hand_pool(), RIGHT_UP, np.array([4, 4]))
    with pytest.raises(DataError):
        greedy_nearest_unused(hand_pool(), RIGHT_UP, np.array([1, 1, 1]))
    with pytest.raises(ConfigError):
        greedy_nearest_unused(hand_pool(), RIGHT_UP, np.array([-1, 3]))
    with pytest.raises(DataError):
        greedy_nearest_unused(hand_pool(), np.ones((2, 3)), np.array([1, 1]))


def test_colt_select_with_injected_clusters() -> None:
    # Cluster 0 ("right") holds ID items 0, 1 (S = 0.9, 0.7 → m = 0.8); cluster 1 ("up") holds 2, 3 (m = 0.2).
    # mean 0.5, unbiased std √(0.09 + 0.09) = 0.4243 → z = [−0.7071, 0.7071];
    # q = [0.4931, 2.0281]/2.5212 = [0.1956, 0.8044]; K = 7 → b_0 = trunc(1.369) = 1, b_1 = 6.
    # "right" takes idx 1 (tie with 2); "up" takes 3, 5, 0, 6, 4, 2.
    id_emb = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]], dtype=np.float32)
    scores = np.array([0.9, 0.7, 0.1, 0.3])
    labels = np.array([0, 0, 1, 1])
    selection = colt_select(id_emb, scores, hand_pool(), budget=7, clusters=(labels, RIGHT_UP))
    np.testing.assert_allclose(selection.cluster_scores, [0.8, 0.2])
    np.testing.assert_array_equal(selection.budgets, [1, 6])
    np.testing.assert_array_equal(selection.picks, [1, 3, 5, 0, 6, 4, 2])
    np.testing.assert_array_equal(selection.dataset_indices(4), [5, 7, 9, 4, 10, 8, 6])
    assert selection.backend == "injected"


def test_colt_select_with_kmeans_on_separated_blobs() -> None:
    rng = np.random.default_rng(1)
    directions = np.eye(3, dtype=np.float32)
    id_emb = np.concatenate([d + 0.05 * rng.normal(size=(40, 3)) for d in directions]).astype(np.float32)
    id_emb /= np.linalg.norm(id_emb, axis=1, keepdims=True)
    scores = np.repeat([0.9, 0.5, 0.1], 40)  # blob 2 is the most tail-like
    pool = rng.normal(size=(300, 3)).astype(np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    selection = colt_select(id_emb, scores, pool, budget=60, n_clusters=3)
    assert "n_init=10" in selection.backend
    assert selection.budgets.sum() == 60
    assert len(set(selection.picks.tolist())) == 60
    blob_cluster = [np.bincount(selection.labels[40 * k : 40 * (k + 1)]).argmax() for k in range(3)]
    assert len(set(blob_cluster)) == 3
    assert selection.budgets[blob_cluster[2]] > selection.budgets[blob_cluster[0]]
    np.testing.assert_allclose(selection.cluster_scores[blob_cluster], [0.9, 0.5, 0.1])


def test_colt_select_rejects_bad_input() -> None:
    id_emb = np.eye(2, dtype=np.float32)
    with pytest.raises(ConfigError):
        colt_select(id_emb, np.zeros(2), hand_pool(), budget=8, clusters=(np.array([0, 1]), RIGHT_UP))
    with pytest.raises(DataError):
        colt_select(id_emb, np.zeros(3), hand_pool(), budget=2, clusters=(np.array([0, 1]), RIGHT_UP))
    with pytest.raises(DataError):  # cluster 1 has no member
        colt_select(id_emb, np.zeros(2), hand_pool(), budget=2, clusters=(np.array([0, 0]), RIGHT_UP))


def test_lr_total_reference_and_exact() -> None:
    # N_id = 10 847, b = 512: L_id = ⌈10847/512⌉ = 22; ⌊10000/512⌋ = 19.
    # Reference: 100·22 + 1900·(22 + 19 + 1) = 2200 + 79 800 = 82 000.
    assert colt_lr_total(100, 2000, 22, 10_000, 512) == 82_000
    # Exact: ⌈20 847/512⌉ = 41 per mixed epoch → 2200 + 1900·41 = 80 100 (one fewer per epoch).
    assert colt_lr_total(100, 2000, 22, 10_000, 512, exact=True, n_id=10_847) == 80_100
    # Two workers with b = 256 each: ⌈⌈20 847/2⌉/256⌉ = ⌈10 424/256⌉ = 41.
    assert colt_lr_total(100, 2000, 22, 10_000, 256, exact=True, n_id=10_847, world_size=2) == 2200 + 1900 * 41


def test_lr_total_without_mixed_epochs_and_errors() -> None:
    assert colt_lr_total(100, 50, 22, 10_000, 512) == 50 * 22
    assert colt_lr_total(0, 3, 10, 1024, 512) == 3 * (10 + 2 + 1)
    with pytest.raises(ConfigError):
        colt_lr_total(100, 2000, 22, 10_000, 512, exact=True)
    with pytest.raises(ConfigError):
        colt_lr_total(-1, 2000, 22, 10_000, 512)


def test_colt_select_normalises_embeddings() -> None:
    # Scaling the pool rows must not change the picks: the pool is L2-normalised inside (tied pairs 1, 2 and 0, 6
    # share a scale so their ties stay exact).
    id_emb = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]], dtype=np.float32)
    scores = np.array([0.9, 0.7, 0.1, 0.3])
    scaled_pool = hand_pool() * np.array([[3.0], [3.0], [3.0], [0.5], [2.0], [7.0], [3.0]], dtype=np.float32)
    selection = colt_select(id_emb, scores, scaled_pool, budget=7, clusters=(np.array([0, 0, 1, 1]), RIGHT_UP))
    np.testing.assert_array_equal(selection.picks, [1, 3, 5, 0, 6, 4, 2])
    with pytest.raises(DataError):
        colt_select(id_emb, scores, np.ones(7), budget=2, clusters=(np.array([0, 0, 1, 1]), RIGHT_UP))
