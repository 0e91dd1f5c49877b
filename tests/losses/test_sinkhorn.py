"""Sinkhorn-Knopp surrogate labels (docs/math/gh.md §3) against a hand derivation and an independent NumPy version."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ltray.errors import ConfigError
from ltray.losses.sinkhorn import sinkhorn_knopp

EPS = 0.05


def _numpy_sinkhorn(t: np.ndarray, prior: np.ndarray | None, epsilon: float, iterations: int) -> np.ndarray:
    q = np.exp(t.astype(np.float64) / epsilon).T  # K × B
    k, b = q.shape
    a = np.full(k, 1.0 / k) if prior is None else prior / prior.sum()
    col = np.full(b, 1.0 / b)
    c = np.full(b, 1.0 / b)
    r = np.zeros(k)
    for _ in range(iterations):
        for kk in range(k):
            r[kk] = a[kk] / sum(q[kk, j] * c[j] for j in range(b))
        for j in range(b):
            c[j] = col[j] / sum(q[kk, j] * r[kk] for kk in range(k))
    return b * (r[:, None] * q * c[None, :]).T


def _fixed_t() -> np.ndarray:
    rng = np.random.default_rng(0)
    t = rng.normal(size=(6, 4))
    return t / np.linalg.norm(t, axis=1, keepdims=True)


def test_one_iteration_hand_derived() -> None:
    # Q = exp(t/ε)ᵀ = [[1, 2], [3, 4]]; c = (½, ½): Qc = (3/2, 7/2), r = (1/3, 1/7);
    # Qᵀr = (16/21, 26/21), c = (21/32, 21/52); q_ik = 2·r_k·Q_ki·c_i
    t = torch.tensor([[0.0, np.log(3.0)], [np.log(2.0), np.log(4.0)]], dtype=torch.float32) * EPS
    q = sinkhorn_knopp(t, None, EPS, iterations=1)
    np.testing.assert_allclose(q.numpy(), [[7 / 16, 9 / 16], [7 / 13, 6 / 13]], rtol=1e-6)


@pytest.mark.parametrize("iterations", [1, 3, 300])
@pytest.mark.parametrize("with_prior", [False, True])
def test_matches_numpy(iterations: int, with_prior: bool) -> None:
    t = _fixed_t()
    prior = np.array([0.4, 0.1, 0.3, 0.2]) if with_prior else None
    expected = _numpy_sinkhorn(t, prior, EPS, iterations)
    got = sinkhorn_knopp(
        torch.tensor(t, dtype=torch.float32), None if prior is None else torch.tensor(prior), EPS, iterations
    )
    assert got.dtype == torch.float32 and got.shape == (6, 4)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-6)


def test_marginals() -> None:
    t = torch.tensor(_fixed_t(), dtype=torch.float32)
    prior = torch.tensor([4.0, 1.0, 3.0, 2.0], dtype=torch.float64)
    for iterations in (1, 3, 300):
        q = sinkhorn_knopp(t, prior, EPS, iterations)
        np.testing.assert_allclose(q.sum(dim=1).numpy(), np.ones(6), atol=1e-6)
    np.testing.assert_allclose(q.sum(dim=0).numpy(), 6 * np.array([0.4, 0.1, 0.3, 0.2]), atol=1e-4)
    uniform = sinkhorn_knopp(t, None, EPS, 300)
    np.testing.assert_allclose(uniform.sum(dim=0).numpy(), np.full(4, 6 / 4), atol=1e-4)
    torch.testing.assert_close(sinkhorn_knopp(t, torch.ones(4), EPS, 300), uniform)


def test_zero_prior_entry_gives_zero_column() -> None:
    t = torch.tensor(_fixed_t(), dtype=torch.float32)
    q = sinkhorn_knopp(t, torch.tensor([0.5, 0.0, 0.5, 0.0], dtype=torch.float64), EPS, 300)
    assert torch.isfinite(q).all()
    assert torch.equal(q[:, 1], torch.zeros(6)) and torch.equal(q[:, 3], torch.zeros(6))
    np.testing.assert_allclose(q.sum(dim=1).numpy(), np.ones(6), atol=1e-6)
    np.testing.assert_allclose(q.sum(dim=0).numpy(), [3.0, 0.0, 3.0, 0.0], atol=1e-4)


def test_no_gradient_and_float32_under_autocast() -> None:
    t = torch.tensor(_fixed_t(), dtype=torch.float32, requires_grad=True)
    expected = sinkhorn_knopp(t, None, EPS, 10)
    assert not expected.requires_grad
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = sinkhorn_knopp(t, None, EPS, 10)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)


def test_invalid_arguments() -> None:
    t = torch.tensor(_fixed_t(), dtype=torch.float32)
    with pytest.raises(ConfigError):
        sinkhorn_knopp(t, None, 0.0, 10)
    with pytest.raises(ConfigError):
        sinkhorn_knopp(t, None, EPS, 0)
    with pytest.raises(ValueError):
        sinkhorn_knopp(t, torch.tensor([1.0, -1.0, 1.0, 1.0]), EPS, 10)
    with pytest.raises(ValueError):
        sinkhorn_knopp(t, torch.zeros(4), EPS, 10)
    with pytest.raises(ValueError):
        sinkhorn_knopp(t, torch.ones(3), EPS, 10)
