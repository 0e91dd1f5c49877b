from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ltray.errors import ConfigError, DataError
from ltray.eval.shots import fixed_shot_subsets, kshot_indices


def toy_labels() -> np.ndarray:
    return np.random.default_rng(0).permutation(np.repeat(np.arange(4), [20, 15, 12, 30]))


def test_kshot_draws_are_per_class_deterministic_and_distinct() -> None:
    labels = toy_labels()
    draws = kshot_indices(labels, k=10, draws=3, seed=4)
    assert len(draws) == 3
    for subset in draws:
        assert subset.dtype == np.int64 and np.unique(subset).size == subset.size == 40
        assert labels[subset].tolist() == [0] * 10 + [1] * 10 + [2] * 10 + [3] * 10
    assert not np.array_equal(draws[0], draws[1])
    again = kshot_indices(labels, k=10, draws=3, seed=4)
    assert all(np.array_equal(first, second) for first, second in zip(draws, again))
    assert not np.array_equal(kshot_indices(labels, k=10, draws=1, seed=5)[0], draws[0])


def test_kshot_uses_every_example_of_a_short_class_with_a_warning() -> None:
    labels = toy_labels()
    with pytest.warns(UserWarning, match=r"\[1, 2\]"):
        (subset,) = kshot_indices(labels, k=16, draws=1, seed=0)
    assert np.bincount(labels[subset]).tolist() == [16, 15, 12, 16]
    assert sorted(subset[labels[subset] == 2].tolist()) == np.flatnonzero(labels == 2).tolist()
    with pytest.raises(ConfigError):
        kshot_indices(labels, k=0, draws=1, seed=0)
    with pytest.raises(DataError):
        kshot_indices(np.array([0.5, 1.0]), k=1, draws=1, seed=0)


def test_fixed_shot_subsets_are_nested_prefixes() -> None:
    labels = np.repeat(np.arange(3), 40)[np.random.default_rng(1).permutation(120)]
    pool = np.flatnonzero(np.arange(120) % 4 != 0)  # 90 of the 120 images, 30 per class on average
    subsets = fixed_shot_subsets(pool, labels, shots=(10, 5), k=1)
    ten, five = subsets[10], subsets[5]
    assert np.bincount(labels[ten]).tolist() == [10, 10, 10]
    assert np.bincount(labels[five]).tolist() == [5, 5, 5]
    assert set(five) <= set(ten) and set(ten) <= set(pool)
    assert np.all(np.diff(labels[ten]) >= 0)
    for label in range(3):
        assert ten[labels[ten] == label][:5].tolist() == five[labels[five] == label].tolist()
    permuted = np.random.default_rng(1).permutation(np.sort(pool))
    assert ten[labels[ten] == 0].tolist() == permuted[labels[permuted] == 0][:10].tolist()
    assert np.array_equal(fixed_shot_subsets(pool[::-1], labels, shots=(10,), k=1)[10], ten)
    assert not np.array_equal(fixed_shot_subsets(pool, labels, shots=(10,), k=2)[10], ten)


def test_fixed_shot_subsets_reject_bad_input() -> None:
    labels = np.repeat(np.arange(2), 10)
    with pytest.raises(DataError):
        fixed_shot_subsets(np.arange(20), labels, shots=(11,), k=1)
    with pytest.raises(DataError):
        fixed_shot_subsets(np.array([0, 0, 1]), labels, shots=(1,), k=1)
    with pytest.raises(DataError):
        fixed_shot_subsets(np.array([0, 25]), labels, shots=(1,), k=1)
    with pytest.raises(ConfigError):
        fixed_shot_subsets(np.arange(20), labels, shots=(0,), k=1)


def test_bcl_100_and_50_shot_on_the_published_cifar100_pool() -> None:
    root = Path(__file__).resolve().parents[3] / "shared" / "reference_splits"
    pool_file = root / "sdclr" / "cifar100" / "cifar100_trainIdxList.npy"
    labels_file = root / "cifar_labels" / "cifar100_train_fine_labels.npy"
    if not (pool_file.exists() and labels_file.exists()):
        pytest.skip("published split data not available")
    pool, labels = np.load(pool_file), np.load(labels_file)
    for k in (1, 2):
        subsets = fixed_shot_subsets(pool, labels, shots=(100, 50), k=k)
        assert np.bincount(labels[subsets[100]], minlength=100).tolist() == [100] * 100
        assert np.bincount(labels[subsets[50]], minlength=100).tolist() == [50] * 100
        assert np.isin(subsets[50], subsets[100]).all() and np.isin(subsets[100], pool).all()
