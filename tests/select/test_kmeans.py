"""The shared k-means wrapper (docs/math/colt.md §4 step 1, docs/math/mak.md §4 step 2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ltray.errors import ConfigError, DataError
from ltray.select.kmeans import backend_name, kmeans, l2_normalise


def blobs() -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = np.array([[5.0, 0.0], [0.0, 5.0], [-5.0, -5.0]])
    return np.concatenate([c + 0.1 * rng.normal(size=(30, 2)) for c in centres]).astype(np.float32)


def test_kmeans_recovers_separated_blobs() -> None:
    labels, centres, backend = kmeans(blobs(), 3)
    assert labels.dtype == np.int64 and labels.shape == (90,)
    for k in range(3):
        assert len(set(labels[30 * k : 30 * (k + 1)].tolist())) == 1
    found = sorted(map(tuple, np.round(centres).tolist()))
    assert found == sorted([(5.0, 0.0), (0.0, 5.0), (-5.0, -5.0)])
    assert backend == backend_name(10) and "n_init=10" in backend


def test_kmeans_is_deterministic_and_accepts_tensors() -> None:
    first = kmeans(blobs(), 3, random_state=4)
    second = kmeans(torch.from_numpy(blobs()), 3, random_state=4)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_kmeans_rejects_bad_input() -> None:
    with pytest.raises(DataError):
        kmeans(np.zeros(5), 2)
    with pytest.raises(DataError):
        kmeans(np.zeros((2, 3)), 3)
    with pytest.raises(ConfigError):
        kmeans(np.zeros((4, 3)), 0)
    with pytest.raises(ConfigError):
        kmeans(np.zeros((4, 3)), 2, n_init=0)


def test_l2_normalise_rows_and_zero_row() -> None:
    out = l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])
    assert out.dtype == np.float32
