"""Focal contrastive loss (docs/math/focal_lotar.md §1) against a loop formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltray.errors import ConfigError
from ltray.losses.focal import focal, focal_anchor_losses
from ltray.losses.ntxent import ntxent_anchor_losses

TAU = 0.2


def _batch(seed: int = 5, b: int = 3, d: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    return (
        torch.tensor(rng.normal(size=(b, d)), dtype=torch.float32),
        torch.tensor(rng.normal(size=(b, d)), dtype=torch.float32),
    )


def _loop_focal(z1: np.ndarray, z2: np.ndarray, tau: float, gamma: float) -> list[float]:
    """ℓᶠ_a = −(1 − p_a)^γ log p_a with p_a = exp(s_{a,a⁺}/τ)/Σ_{k≠a} exp(s_ak/τ), in scalar loops."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    b = len(z1)
    out = []
    for a in range(2 * b):
        denominator = sum(math.exp(float(z[a] @ z[k]) / tau) for k in range(2 * b) if k != a)
        p = math.exp(float(z[a] @ z[(a + b) % (2 * b)]) / tau) / denominator
        out.append(-((1.0 - p) ** gamma) * math.log(p))
    return out


def test_gamma_zero_is_ntxent_exactly() -> None:
    z1, z2 = _batch()
    assert torch.equal(focal_anchor_losses(z1, z2, TAU, gamma=0.0), ntxent_anchor_losses(z1, z2, TAU))


@pytest.mark.parametrize("gamma", [1.0, 2.0, 3.5])
def test_matches_loop_formula(gamma: float) -> None:
    z1, z2 = _batch()
    expected = _loop_focal(z1.numpy(), z2.numpy(), TAU, gamma)
    got = focal_anchor_losses(z1, z2, TAU, gamma)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-6)
    mean, per_sample = focal(z1, z2, TAU, gamma)
    np.testing.assert_allclose(per_sample.numpy(), [0.5 * (expected[n] + expected[n + 3]) for n in range(3)], rtol=1e-4)
    assert mean.item() == pytest.approx(sum(expected) / 6, rel=1e-4)


def test_easy_anchor_contributes_almost_nothing() -> None:
    # image 0: identical views, orthogonal to everything else, so p ≈ 1 − 4e^{-10} at τ = 0.1
    z1 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.7, 0.7]])
    z2 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    base = ntxent_anchor_losses(z1, z2, 0.1)
    loss = focal_anchor_losses(z1, z2, 0.1, gamma=2.0)
    for easy in (0, 3):
        assert base[easy].item() == pytest.approx(4 * math.exp(-10), rel=1e-2)
        assert loss[easy].item() < 1e-10
    for hard in (1, 2, 4, 5):
        assert loss[hard].item() > 0.1 * base[hard].item()


def test_gradient_flows_through_modulating_factor() -> None:
    z1, z2 = _batch(seed=11)
    gamma = 2.0

    def reference(a: torch.Tensor, b: torch.Tensor, detach_factor: bool) -> torch.Tensor:
        z = F.normalize(torch.cat([a, b]), dim=1)
        n = a.shape[0]
        terms = []
        for i in range(2 * n):
            others = torch.stack([z[i] @ z[k] / TAU for k in range(2 * n) if k != i])
            log_p = z[i] @ z[(i + n) % (2 * n)] / TAU - torch.logsumexp(others, dim=0)
            factor = (1 - torch.exp(log_p)) ** gamma
            terms.append(-(factor.detach() if detach_factor else factor) * log_p)
        return torch.stack(terms).mean()

    a64 = z1.double().requires_grad_(True)
    b64 = z2.double().requires_grad_(True)
    expected = torch.autograd.grad(reference(a64, b64, False), (a64, b64))
    detached = torch.autograd.grad(reference(a64, b64, True), (a64, b64))
    a32, b32 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    got = torch.autograd.grad(focal(a32, b32, TAU, gamma)[0], (a32, b32))
    for g, e, dt in zip(got, expected, detached):
        np.testing.assert_allclose(g.numpy(), e.numpy(), atol=1e-5)
        assert (e - dt).abs().max().item() > 1e-3


def test_float32_under_autocast() -> None:
    z1, z2 = _batch(b=8, d=16)
    expected = focal_anchor_losses(z1, z2, TAU)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = focal_anchor_losses(z1, z2, TAU)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)


def test_negative_gamma_rejected() -> None:
    with pytest.raises(ConfigError):
        focal(*_batch(), TAU, gamma=-1.0)
