"""LoTaR distances and weights (docs/math/focal_lotar.md §2) against NumPy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ltray.errors import ConfigError
from ltray.losses.lotar import apply_lotar, lotar_distances, lotar_weights
from ltray.losses.ntxent import ntxent, ntxent_anchor_losses


def _batch(b: int = 5, d: int = 4, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    return (
        torch.tensor(rng.normal(size=(b, d)) * 3.0, dtype=torch.float32),
        torch.tensor(rng.normal(size=(b, d)), dtype=torch.float32),
    )


def _numpy_distance(z1: np.ndarray, z2: np.ndarray, kind: str) -> np.ndarray:
    z1, z2 = z1.astype(np.float64), z2.astype(np.float64)
    if kind == "euclid_raw":
        return np.sqrt(((z1 - z2) ** 2).sum(axis=1))
    u1 = z1 / np.linalg.norm(z1, axis=1, keepdims=True)
    u2 = z2 / np.linalg.norm(z2, axis=1, keepdims=True)
    if kind == "euclid_norm":
        return np.sqrt(((u1 - u2) ** 2).sum(axis=1))
    return 1.0 - (u1 * u2).sum(axis=1)


@pytest.mark.parametrize("kind", ["euclid_raw", "euclid_norm", "cosine"])
def test_distances_match_numpy(kind: str) -> None:
    z1, z2 = _batch()
    got = lotar_distances(z1, z2, kind)
    assert got.dtype == torch.float32 and got.shape == (5,)
    np.testing.assert_allclose(got.numpy(), _numpy_distance(z1.numpy(), z2.numpy(), kind), rtol=1e-5, atol=1e-6)


def test_euclid_raw_is_not_squared() -> None:
    z1 = torch.tensor([[3.0, 0.0], [0.0, 0.0]])
    z2 = torch.tensor([[0.0, 4.0], [0.0, 1.0]])
    assert lotar_distances(z1, z2).tolist() == [5.0, 1.0]


@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("kind", ["euclid_raw", "euclid_norm", "cosine"])
def test_weights_match_numpy(kind: str, sign: int) -> None:
    z1, z2 = _batch()
    d_np = _numpy_distance(z1.numpy(), z2.numpy(), kind)
    expected = 1.0 + sign * (d_np - d_np.mean()) / (d_np.max() - d_np.min())
    w, degenerate = lotar_weights(lotar_distances(z1, z2, kind), sign=sign)
    assert not degenerate
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert w.mean().item() == pytest.approx(1.0, abs=1e-6)
    d_mean, d_max, d_min, spread = d_np.mean(), d_np.max(), d_np.min(), d_np.max() - d_np.min()
    # σ = +1 maps [d_min, d_max] onto [1 − (d̄ − d_min)/R, 1 + (d_max − d̄)/R]; σ = −1 mirrors it
    low, high = 1 - (d_mean - d_min) / spread, 1 + (d_max - d_mean) / spread
    if sign == -1:
        low, high = 1 - (d_max - d_mean) / spread, 1 + (d_mean - d_min) / spread
    assert w.min().item() == pytest.approx(low, abs=1e-5)
    assert w.max().item() == pytest.approx(high, abs=1e-5)
    assert 0.0 <= low and high <= 2.0


def test_sign_orders_weights_by_distance() -> None:
    d = torch.tensor([0.0, 1.0, 3.0])
    plus, _ = lotar_weights(d, sign=1)
    minus, _ = lotar_weights(d, sign=-1)
    np.testing.assert_allclose(plus.numpy(), [1 - 4 / 9, 1 - 1 / 9, 1 + 5 / 9], rtol=1e-6)
    np.testing.assert_allclose(minus.numpy(), [1 + 4 / 9, 1 + 1 / 9, 1 - 5 / 9], rtol=1e-6)


@pytest.mark.parametrize("d", [torch.full((4,), 0.7), torch.tensor([2.0]), torch.tensor([1.0, 1.0 + 1e-13])])
def test_degenerate_batch_gives_ones(d: torch.Tensor) -> None:
    w, degenerate = lotar_weights(d.double())
    assert degenerate
    assert torch.equal(w, torch.ones(d.shape[0]))
    assert torch.isfinite(w).all()


def test_gradient_attached_by_default_and_detach_option() -> None:
    z1, z2 = _batch()
    coefficients = torch.tensor([0.3, -1.0, 2.0, 0.5, 1.5])
    a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    w, _ = lotar_weights(lotar_distances(a, b))
    assert w.requires_grad
    got = torch.autograd.grad((coefficients * w).sum(), (a, b))

    a64, b64 = z1.double().requires_grad_(True), z2.double().requires_grad_(True)
    d64 = torch.sqrt(((a64 - b64) ** 2).sum(dim=1))
    w64 = 1 + (d64 - d64.mean()) / (d64.max() - d64.min())
    expected = torch.autograd.grad((coefficients.double() * w64).sum(), (a64, b64))
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g.numpy(), e.numpy(), atol=1e-5)
        assert e.abs().max().item() > 1e-2

    a2, b2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    w_detached, _ = lotar_weights(lotar_distances(a2, b2), detach=True)
    assert not w_detached.requires_grad
    torch.testing.assert_close(w_detached, w.detach())


def test_apply_lotar_matches_anchor_sum() -> None:
    z1, z2 = _batch()
    w, _ = lotar_weights(lotar_distances(z1, z2), sign=1)
    _, base = ntxent(z1, z2, 0.2)
    mean, weighted = apply_lotar(base, w)
    anchors = ntxent_anchor_losses(z1, z2, 0.2)
    expected = sum(w[a % 5].item() * anchors[a].item() for a in range(10)) / 10
    assert mean.item() == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(weighted, w * base)
    assert mean.item() == pytest.approx(weighted.mean().item(), abs=1e-7)


def test_invalid_options() -> None:
    z1, z2 = _batch()
    with pytest.raises(ConfigError):
        lotar_distances(z1, z2, "manhattan")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        lotar_weights(torch.tensor([1.0, 2.0]), sign=0)
    with pytest.raises(ValueError):
        apply_lotar(torch.ones(3), torch.ones(4))
