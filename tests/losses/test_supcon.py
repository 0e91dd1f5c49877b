"""COLT domain-level SupCon term (docs/math/colt.md §6) against a loop formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ltray.losses.ntxent import ntxent_anchor_losses
from ltray.losses.supcon import domain_supcon

TAU = 0.2


def _batch(b: int, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    return (
        torch.tensor(rng.normal(size=(b, 4)), dtype=torch.float32),
        torch.tensor(rng.normal(size=(b, 4)), dtype=torch.float32),
    )


def _loop_supcon(z1: np.ndarray, z2: np.ndarray, is_ood: list[bool], tau: float) -> list[float]:
    """L_sup(a) = (1/|P_a|) Σ_{j∈P_a} −log(exp(s_aj/τ)/Dₐ), P_a = {j ≠ a : y_j = y_a} over both views."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    domain = list(is_ood) + list(is_ood)
    out = []
    for a in range(len(z)):
        denominator = sum(math.exp(float(z[a] @ z[k]) / tau) for k in range(len(z)) if k != a)
        positives = [j for j in range(len(z)) if j != a and domain[j] == domain[a]]
        out.append(
            sum(-math.log(math.exp(float(z[a] @ z[j]) / tau) / denominator) for j in positives) / len(positives)
        )
    return out


@pytest.mark.parametrize("is_ood", [[False, True, False, True, False], [True, True, True, True, True]])
def test_matches_loop_formula(is_ood: list[bool]) -> None:
    z1, z2 = _batch(5)
    anchors = _loop_supcon(z1.numpy(), z2.numpy(), is_ood, TAU)
    mean, per_sample = domain_supcon(z1, z2, torch.tensor(is_ood), TAU)
    assert per_sample.dtype == torch.float32 and per_sample.shape == (5,)
    np.testing.assert_allclose(per_sample.numpy(), [0.5 * (anchors[n] + anchors[n + 5]) for n in range(5)], rtol=1e-5)
    assert mean.item() == pytest.approx(sum(anchors) / 10, rel=1e-5)


def test_single_ood_image_reduces_to_ntxent_for_its_anchors() -> None:
    z1, z2 = _batch(4)
    is_ood = torch.tensor([False, False, True, False])
    _, per_sample = domain_supcon(z1, z2, is_ood, TAU)
    nt = ntxent_anchor_losses(z1, z2, TAU)
    assert per_sample[2].item() == pytest.approx(0.5 * (nt[2] + nt[6]).item(), rel=1e-6)


def test_zero_without_ood() -> None:
    z1, z2 = _batch(4)
    mean, per_sample = domain_supcon(z1.requires_grad_(True), z2, torch.zeros(4, dtype=torch.bool), TAU)
    assert torch.equal(per_sample, torch.zeros(4))
    assert mean.item() == 0.0


def test_gradient_is_finite() -> None:
    z1, z2 = _batch(4)
    z1.requires_grad_(True)
    mean, _ = domain_supcon(z1, z2, torch.tensor([True, False, False, True]), TAU)
    mean.backward()
    assert z1.grad is not None and torch.isfinite(z1.grad).all() and z1.grad.abs().max() > 0


def test_float32_under_autocast() -> None:
    z1, z2 = _batch(6)
    is_ood = torch.tensor([True, False, False, True, False, False])
    expected = domain_supcon(z1, z2, is_ood, TAU)[1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = domain_supcon(z1, z2, is_ood, TAU)[1]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)


def test_bad_mask_shape() -> None:
    with pytest.raises(ValueError):
        domain_supcon(*_batch(4), torch.tensor([True, False]), TAU)
