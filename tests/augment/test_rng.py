from __future__ import annotations

import numpy as np
import pytest
import torch

from ltray.augment import rng
from ltray.errors import ConfigError

M64 = (1 << 64) - 1


def splitmix_step(value: int) -> int:
    """splitmix64 (Steele et al. 2014) on Python integers: z += γ, then the two multiply-xorshift rounds."""
    z = (value + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def chain(seed: int, epoch: int, index: int, view: int, slot: int) -> int:
    h = 0x6C7472617961756D
    for key in (seed, epoch, view, index, slot):
        h = splitmix_step(h ^ key)
    return h


def as_unsigned(values: torch.Tensor) -> list[int]:
    return [int(v) & M64 for v in values.tolist()]


def test_int64_tensor_hash_equals_exact_uint64_reference() -> None:
    index = torch.tensor([0, 1, 2, 7, 12345, 2**40 + 3, 2**62])
    for seed, epoch, view, slot in [(0, 0, 0, 0), (10, 3, 1, 5), (2**33, 1999, 1 << 20, 63)]:
        bits = rng.random_bits(seed, epoch, index, view, slot)
        expected = [chain(seed, epoch, int(i), view, slot) for i in index.tolist()]
        assert as_unsigned(bits) == expected


def test_uniform_is_top_24_bits_over_two_to_the_24() -> None:
    index = torch.arange(50)
    u = rng.uniform(4, 2, index, 1, 9)
    expected = [(chain(4, 2, i, 1, 9) >> 40) / 2**24 for i in range(50)]
    assert u.dtype == torch.float32
    assert u.tolist() == expected


def test_uniform_range_mean_variance_and_histogram() -> None:
    u = rng.uniform(0, 0, torch.arange(200_000), 0, 0).double().numpy()
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.003  # std of the mean ≈ 0.00065
    assert abs(u.var() - 1.0 / 12.0) < 0.002
    counts, _ = np.histogram(u, bins=20, range=(0.0, 1.0))
    expected = len(u) / 20
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 50.0  # 19 degrees of freedom: P(chi2 > 50) < 1e-4


@pytest.mark.parametrize(
    "other",
    [
        dict(seed=0, epoch=0, view=0, slot=1),  # neighbouring slot
        dict(seed=0, epoch=0, view=1, slot=0),  # other view
        dict(seed=0, epoch=1, view=0, slot=0),  # next epoch
        dict(seed=1, epoch=0, view=0, slot=0),  # other seed
    ],
)
def test_streams_of_different_keys_are_uncorrelated(other: dict) -> None:
    index = torch.arange(100_000)
    a = rng.uniform(0, 0, index, 0, 0).double().numpy()
    b = rng.uniform(other["seed"], other["epoch"], index, other["view"], other["slot"]).double().numpy()
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.015  # std ≈ 0.003
    assert np.mean(a == b) < 1e-3


def test_neighbouring_indices_are_uncorrelated() -> None:
    u = rng.uniform(3, 5, torch.arange(100_001), 0, 2).double().numpy()
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.015


def test_independent_of_batch_split_and_order() -> None:
    index = torch.tensor([9, 3, 500, 7, 3, 1 << 30, 0, 42])
    whole = rng.uniform(10, 4, index, 1, 7)
    perm = torch.randperm(len(index), generator=torch.Generator().manual_seed(0))
    assert torch.equal(rng.uniform(10, 4, index[perm], 1, 7), whole[perm])
    parts = [rng.uniform(10, 4, part, 1, 7) for part in index.split(3)]
    assert torch.equal(torch.cat(parts), whole)
    # the duplicate index 3 gets the same number both times
    assert whole[1] == whole[4]


def test_slot_tensor_broadcasts_against_index() -> None:
    index = torch.tensor([4, 8, 15])
    slots = torch.arange(6)
    table = rng.uniform(1, 2, index[:, None], 0, slots)
    assert table.shape == (3, 6)
    for s in range(6):
        assert torch.equal(table[:, s], rng.uniform(1, 2, index, 0, s))


def test_seed_for_is_deterministic_and_key_sensitive() -> None:
    base = rng.seed_for(10, 3, 77, 0)
    assert base == rng.seed_for(10, 3, 77, 0)
    assert 0 <= base < 2**63
    assert len({base, rng.seed_for(10, 3, 77, 1), rng.seed_for(10, 4, 77, 0), rng.seed_for(10, 3, 78, 0)}) == 4


def test_bad_keys_are_rejected() -> None:
    with pytest.raises(ConfigError):
        rng.uniform(-1, 0, torch.arange(3), 0, 0)
    with pytest.raises(ConfigError):
        rng.uniform(0, 0, torch.arange(3), 0, -2)
    with pytest.raises(ConfigError):
        rng.uniform(0, 0.5, torch.arange(3), 0, 0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        rng.uniform(0, 0, torch.rand(3), 0, 0)
