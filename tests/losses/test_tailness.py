"""COLT instant tailness score (docs/math/colt.md §3) against a loop formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ltray.errors import ConfigError
from ltray.losses.tailness import colt_instant_tailness

TAU = 0.2


def _batch(b: int, seed: int = 13) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    return (
        torch.tensor(rng.normal(size=(b, 4)), dtype=torch.float32),
        torch.tensor(rng.normal(size=(b, 4)), dtype=torch.float32),
    )


def _loop_tailness(z1: np.ndarray, z2: np.ndarray, tau: float, topk: int) -> list[float]:
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    b = len(z1)

    def p(a: int, j: int) -> float:
        denominator = sum(math.exp(float(z[a] @ z[k]) / tau) for k in range(2 * b) if k != a)
        return math.exp(float(z[a] @ z[j]) / tau) / denominator

    scores = []
    for n in range(b):
        averaged = [0.5 * (p(n, j) + p(n + b, j)) for j in range(2 * b) if j not in (n, n + b)]
        scores.append(sum(sorted(averaged, reverse=True)[:topk]))
    return scores


@pytest.mark.parametrize("topk", [1, 3, 7])
def test_matches_loop_formula(topk: int) -> None:
    z1, z2 = _batch(5)
    got = colt_instant_tailness(z1, z2, TAU, topk)
    assert got.dtype == torch.float32 and got.shape == (5,)
    np.testing.assert_allclose(got.numpy(), _loop_tailness(z1.numpy(), z2.numpy(), TAU, topk), rtol=1e-5)


def test_topk_beyond_negatives_sums_all_negative_mass() -> None:
    z1, z2 = _batch(3)
    got = colt_instant_tailness(z1, z2, TAU, topk=10)
    np.testing.assert_allclose(got.numpy(), _loop_tailness(z1.numpy(), z2.numpy(), TAU, 10), rtol=1e-5)
    # all 2B − 2 negatives: Σ_j p_aj = 1 − p_{a,a⁺}, averaged over the two anchors
    z = torch.nn.functional.normalize(torch.cat([z1, z2]).double(), dim=1)
    logits = (z @ z.t() / TAU).fill_diagonal_(float("-inf"))
    prob = torch.softmax(logits, dim=1)
    positive = prob[torch.arange(6), (torch.arange(6) + 3) % 6]
    np.testing.assert_allclose(got.numpy(), (1 - 0.5 * (positive[:3] + positive[3:])).numpy(), rtol=1e-5)


def test_no_gradient_and_single_image() -> None:
    z1, z2 = _batch(4)
    z1.requires_grad_(True)
    assert not colt_instant_tailness(z1, z2, TAU).requires_grad
    assert colt_instant_tailness(z1[:1], z2[:1], TAU).tolist() == [0.0]


def test_crowded_neighbourhood_scores_higher() -> None:
    # images 0 and 1 are near-duplicates (head-like); image 2 is isolated
    z1 = torch.tensor([[1.0, 0.0, 0.0], [0.99, 0.1, 0.0], [0.0, 0.0, 1.0]])
    z2 = torch.tensor([[0.98, 0.0, 0.1], [1.0, 0.05, 0.0], [0.0, 0.1, 1.0]])
    scores = colt_instant_tailness(z1, z2, TAU, topk=2)
    assert scores[0] > scores[2] and scores[1] > scores[2]


def test_invalid_topk() -> None:
    with pytest.raises(ConfigError):
        colt_instant_tailness(*_batch(3), TAU, topk=0)
