"""NT-Xent (docs/math/data_and_eval.md §6) against plain-loop implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ltray.losses.ntxent import ntxent, ntxent_anchor_losses, per_image, positive_index, similarity_logits

TAU = 0.2


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _loop_anchor_losses(views: np.ndarray, partner: list[int], tau: float) -> list[float]:
    """ℓ_a = −s_{a,partner(a)}/τ + log Σ_{k≠a} exp(s_ak/τ), written with scalar loops."""
    z = _unit(views.astype(np.float64))
    losses = []
    for a in range(len(z)):
        denominator = 0.0
        for k in range(len(z)):
            if k != a:
                denominator += math.exp(float(z[a] @ z[k]) / tau)
        losses.append(-float(z[a] @ z[partner[a]]) / tau + math.log(denominator))
    return losses


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(3)
    return torch.tensor(rng.normal(size=(3, 4)), dtype=torch.float32), torch.tensor(
        rng.normal(size=(3, 4)), dtype=torch.float32
    )


def test_anchor_losses_match_loop(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    z1, z2 = batch
    b = z1.shape[0]
    stacked = np.concatenate([z1.numpy(), z2.numpy()])
    expected = _loop_anchor_losses(stacked, [(a + b) % (2 * b) for a in range(2 * b)], TAU)
    got = ntxent_anchor_losses(z1, z2, TAU)
    assert got.dtype == torch.float32 and got.shape == (2 * b,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_mean_and_per_image_match_loop(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    z1, z2 = batch
    b = z1.shape[0]
    stacked = np.concatenate([z1.numpy(), z2.numpy()])
    anchors = _loop_anchor_losses(stacked, [(a + b) % (2 * b) for a in range(2 * b)], TAU)
    expected_per_image = [0.5 * (anchors[n] + anchors[n + b]) for n in range(b)]
    mean, per_sample = ntxent(z1, z2, TAU)
    np.testing.assert_allclose(per_sample.numpy(), expected_per_image, rtol=1e-5, atol=1e-5)
    assert mean.item() == pytest.approx(sum(anchors) / (2 * b), abs=1e-5)
    assert mean.item() == pytest.approx(per_sample.mean().item(), abs=1e-7)


def test_interleaved_layout_gives_same_values(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    z1, z2 = batch
    b = z1.shape[0]
    interleaved = np.empty((2 * b, 4), dtype=np.float64)
    interleaved[0::2], interleaved[1::2] = z1.numpy(), z2.numpy()
    anchors = _loop_anchor_losses(interleaved, [a ^ 1 for a in range(2 * b)], TAU)
    per_image_interleaved = [0.5 * (anchors[2 * n] + anchors[2 * n + 1]) for n in range(b)]
    mean, per_sample = ntxent(z1, z2, TAU)
    np.testing.assert_allclose(per_sample.numpy(), per_image_interleaved, rtol=1e-5, atol=1e-5)
    assert mean.item() == pytest.approx(sum(anchors) / (2 * b), abs=1e-5)


def test_similarity_logits_and_positive_index(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    z1, z2 = batch
    logits = similarity_logits(z1, z2, TAU)
    assert torch.isinf(torch.diagonal(logits)).all()
    stacked = _unit(np.concatenate([z1.numpy(), z2.numpy()]).astype(np.float64))
    off = ~np.eye(6, dtype=bool)
    np.testing.assert_allclose(logits.numpy()[off], (stacked @ stacked.T / TAU)[off], atol=1e-5)
    assert positive_index(3).tolist() == [3, 4, 5, 0, 1, 2]


def test_per_image_folds_two_anchors() -> None:
    assert per_image(torch.tensor([1.0, 2.0, 3.0, 5.0])).tolist() == [2.0, 3.5]


def test_invalid_temperature(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    with pytest.raises(ValueError):
        ntxent_anchor_losses(*batch, 0.0)
