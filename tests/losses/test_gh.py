"""Geometric Harmonization pieces (docs/math/gh.md §2, §4–§7)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltray.errors import CheckpointError, ConfigError
from ltray.losses.etf import simplex_etf
from ltray.losses.gh import GHPrior, geometric_logits, gh_loss, gh_two_stage_lr, gh_weight
from ltray.losses.sinkhorn import sinkhorn_knopp


def _unit_rows(b: int, k: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    t = rng.normal(size=(b, k))
    return torch.tensor(t / np.linalg.norm(t, axis=1, keepdims=True), dtype=torch.float32)


# ---- geometric logits (§2)


def test_geometric_logits_match_numpy_and_are_bounded() -> None:
    w = simplex_etf(5, 8, seed=0)
    z = torch.tensor(np.random.default_rng(1).normal(size=(4, 8)) * 50.0, dtype=torch.float32)
    t = geometric_logits(z, w)
    raw = z.double().numpy() @ w.double().numpy().T
    expected = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    np.testing.assert_allclose(t.numpy(), expected, atol=1e-6)
    assert t.dtype == torch.float32 and t.abs().max().item() <= 1.0 + 1e-6
    np.testing.assert_allclose(torch.linalg.vector_norm(t, dim=1).numpy(), np.ones(4), atol=1e-6)


def test_geometric_logits_ignore_the_scale_of_z() -> None:
    # rownorm(z Wᵀ) removes any positive per-row scale, so the raw z and ẑ give the same t
    w = simplex_etf(5, 8, seed=0)
    z = torch.randn(3, 8) * torch.tensor([[0.1], [3.0], [40.0]])
    torch.testing.assert_close(geometric_logits(z, w), geometric_logits(F.normalize(z, dim=1), w))


def test_geometric_logits_gradient_reaches_z_only() -> None:
    w = simplex_etf(5, 8, seed=0).requires_grad_(True)
    z = torch.randn(3, 8, requires_grad=True)
    geometric_logits(z, w)[:, 0].sum().backward()
    assert z.grad is not None and z.grad.abs().max() > 0
    assert w.grad is None


# ---- population prior (§4)


def test_refresh_schedule() -> None:
    def refresh_epochs(warm_up: int, epochs: int = 60) -> list[int]:
        return [e for e in range(epochs) if GHPrior.should_refresh(e, warm_up)]

    assert refresh_epochs(3) == [2, 19, 39, 59]
    assert refresh_epochs(0) == [19, 39, 59]
    assert refresh_epochs(20) == [19, 39, 59]
    assert refresh_epochs(25) == [24, 39, 59]
    assert refresh_epochs(500, 530) == [499, 519]


def test_memory_update_rules() -> None:
    prior = GHPrior(size=4, k=3, warm_up=3, beta=0.999)
    t_a = torch.tensor([[0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
    t_dup = torch.tensor([[1.0, 0.0, 0.0]])
    # epoch 0: m ← m + t = t; a duplicated index keeps its first occurrence
    updated = prior.update(torch.tensor([1, 2, 1]), torch.cat([t_a, t_dup]), epoch=0)
    assert sorted(updated.tolist()) == [1, 2]
    torch.testing.assert_close(prior.logits[1], t_a[0])
    torch.testing.assert_close(prior.logits[2], t_a[1])
    assert torch.equal(prior.logits[0], torch.zeros(3))
    # a second update of the same index in the same epoch is dropped
    prior.update(torch.tensor([1]), t_dup, epoch=0)
    torch.testing.assert_close(prior.logits[1], t_a[0])
    # e = 1 < warm_up: β = 0.9
    prior.update(torch.tensor([1]), t_dup, epoch=1)
    torch.testing.assert_close(prior.logits[1], 0.9 * t_a[0] + 0.1 * t_dup[0])
    # e = 3 ≥ warm_up: β = gh_beta
    before = prior.logits[1].clone()
    prior.update(torch.tensor([1]), t_a[1:], epoch=3)
    torch.testing.assert_close(prior.logits[1], 0.999 * before + 0.001 * t_a[1])
    assert prior.beta_at(2) == 0.9 and prior.beta_at(3) == 0.999
    assert GHPrior(4, 3, warm_up=0, beta=0.999).beta_at(1) == 0.999


def test_prior_counts_argmax_with_ties_to_smallest_k() -> None:
    prior = GHPrior(size=5, k=3, warm_up=1)
    assert prior.prior is None
    t = torch.tensor([[0.5, 0.5, 0.1], [0.1, 0.7, 0.7], [0.0, 0.2, 0.9], [0.3, 0.9, 0.1]])
    prior.update(torch.tensor([0, 1, 2, 3]), t, epoch=0)
    pi = prior.refresh()
    # rows: 0 (tie 0/1 → 0), 1 (tie 1/2 → 1), 2, 1, and the unvisited zero row → 0
    assert pi.dtype == torch.float64
    assert pi.tolist() == [2 / 5, 2 / 5, 1 / 5]
    assert prior.prior is pi


def test_iteration_mode_refreshes_inside_refresh_epochs_only() -> None:
    prior = GHPrior(size=3, k=2, warm_up=3)
    index = torch.tensor([0, 1, 2])
    head = torch.tensor([[1.0, 0.0]] * 3)
    tail = torch.tensor([[0.0, 1.0]] * 3)
    for epoch in (0, 1):
        prior.update(index, head, epoch)
        assert not prior.after_iteration(epoch) and not prior.end_epoch(epoch)
    assert prior.prior is None
    # epoch 2 (e + 1 = warm_up, β = 0.9): iteration j sees the π left by iteration j − 1
    prior.update(index[:1], tail[:1] * 100, epoch=2)
    assert prior.after_iteration(2)
    assert prior.prior.tolist() == [2 / 3, 1 / 3]
    prior.update(index[1:], tail[1:] * 100, epoch=2)
    assert prior.after_iteration(2)
    assert prior.prior.tolist() == [0.0, 1.0]
    assert prior.end_epoch(2)
    # epoch 3 is no refresh epoch: π holds although the memory moves back to the head direction
    prior.update(index, head * 1e5, epoch=3)
    assert not prior.after_iteration(3) and not prior.end_epoch(3)
    assert prior.prior.tolist() == [0.0, 1.0]
    assert prior.refresh().tolist() == [1.0, 0.0]


def test_epoch_end_mode() -> None:
    prior = GHPrior(size=2, k=2, warm_up=0, refresh_mode="epoch_end")
    index = torch.tensor([0, 1])
    for epoch in range(20):
        prior.update(index, torch.tensor([[0.0, 1.0], [1.0, 0.0]]), epoch)
        assert not prior.after_iteration(epoch)
        assert prior.end_epoch(epoch) == (epoch == 19)
        assert (prior.prior is None) == (epoch < 19)
    assert prior.prior.tolist() == [0.5, 0.5]


def test_state_round_trip(tmp_path: Path) -> None:
    prior = GHPrior(size=6, k=4, warm_up=2)
    prior.update(torch.tensor([0, 3, 5]), _unit_rows(3, 4, 0), epoch=0)
    prior.update(torch.tensor([3]), _unit_rows(1, 4, 1), epoch=1)
    prior.refresh()
    path = tmp_path / "state.pt"
    torch.save(prior.state_dict(), path)
    restored = GHPrior(size=6, k=4, warm_up=2)
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert torch.equal(restored.logits, prior.logits)
    assert torch.equal(restored.prior, prior.prior)
    for p in (prior, restored):
        p.update(torch.tensor([3, 4]), _unit_rows(2, 4, 2), epoch=1)  # 3 is dropped: already updated in epoch 1
    assert torch.equal(restored.logits, prior.logits)
    assert torch.equal(restored.memory.last_epoch, prior.memory.last_epoch)

    fresh = GHPrior(size=6, k=4, warm_up=2)
    fresh.load_state_dict(GHPrior(size=6, k=4, warm_up=2).state_dict())
    assert fresh.prior is None
    with pytest.raises(CheckpointError):
        GHPrior(size=7, k=4, warm_up=2).load_state_dict(prior.state_dict())


def test_prior_invalid_options() -> None:
    with pytest.raises(ConfigError):
        GHPrior(4, 3, warm_up=-1)
    with pytest.raises(ConfigError):
        GHPrior(4, 3, warm_up=0, refresh_mode="batch")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        GHPrior(4, 3, warm_up=0, beta=1.0)


# ---- GH loss (§5)


def _numpy_sinkhorn(t: np.ndarray, a: np.ndarray, epsilon: float, iterations: int) -> np.ndarray:
    q = np.exp(t / epsilon).T
    b = q.shape[1]
    c = np.full(b, 1.0 / b)
    for _ in range(iterations):
        r = a / (q @ c)
        c = (1.0 / b) / (q.T @ r)
    return b * (r[:, None] * q * c[None, :]).T


def _log_softmax_rows(x: np.ndarray) -> list[list[float]]:
    out = []
    for row in x:
        top = max(row)
        log_z = top + math.log(sum(math.exp(v - top) for v in row))
        out.append([v - log_z for v in row])
    return out


@pytest.mark.parametrize("with_prior", [False, True])
def test_gh_loss_matches_loop_formula(with_prior: bool) -> None:
    t1, t2 = _unit_rows(6, 5, 3), _unit_rows(6, 5, 4)
    pi = torch.tensor([0.3, 0.1, 0.2, 0.0, 0.4], dtype=torch.float64) if with_prior else None
    a = pi.numpy() / pi.numpy().sum() if pi is not None else np.full(5, 0.2)
    q1 = _numpy_sinkhorn(t1.double().numpy(), a, 0.05, 300)
    q2 = _numpy_sinkhorn(t2.double().numpy(), a, 0.05, 300)
    ls1 = _log_softmax_rows(t1.double().numpy() / 0.1)
    ls2 = _log_softmax_rows(t2.double().numpy() / 0.1)
    expected = [
        -sum(q1[i, k] * ls2[i][k] for k in range(5)) - sum(q2[i, k] * ls1[i][k] for k in range(5)) for i in range(6)
    ]
    mean, per_sample = gh_loss(t1, t2, pi)
    assert per_sample.dtype == torch.float32 and per_sample.shape == (6,)
    np.testing.assert_allclose(per_sample.numpy(), expected, rtol=1e-4, atol=1e-5)
    assert mean.item() == pytest.approx(sum(expected) / 6, rel=1e-4)


def test_gh_loss_gradient_treats_targets_as_constants() -> None:
    # with q constant and rows of q summing to 1: ∂L/∂t² = (softmax(t²/γ) − q¹)/(γB), ∂L/∂t¹ = (softmax(t¹/γ) − q²)/(γB)
    gamma, b = 0.1, 6
    t1 = _unit_rows(b, 5, 5).requires_grad_(True)
    t2 = _unit_rows(b, 5, 6).requires_grad_(True)
    mean, _ = gh_loss(t1, t2, None, gamma=gamma)
    g1, g2 = torch.autograd.grad(mean, (t1, t2))
    q1 = sinkhorn_knopp(t1, None)
    q2 = sinkhorn_knopp(t2, None)
    torch.testing.assert_close(g2, (torch.softmax(t2.detach() / gamma, dim=1) - q1) / (gamma * b), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g1, (torch.softmax(t1.detach() / gamma, dim=1) - q2) / (gamma * b), atol=1e-5, rtol=1e-4)


def test_gh_loss_float32_under_autocast() -> None:
    t1, t2 = _unit_rows(4, 5, 7), _unit_rows(4, 5, 8)
    expected = gh_loss(t1, t2, None, iterations=20)[1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = gh_loss(t1, t2, None, iterations=20)[1]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)


# ---- weight ramp and schedule (§6, §7)


def test_gh_weight_ramp() -> None:
    assert [gh_weight(e, 500, 10) for e in (1, 499, 500)] == [0.0, 0.0, 0.0]
    np.testing.assert_allclose([gh_weight(e, 500, 10) for e in range(501, 511)], np.arange(1, 11) / 10)
    assert gh_weight(511, 500, 10) == 1.0 and gh_weight(1000, 500, 10) == 1.0
    assert gh_weight(1, 0, 10) == pytest.approx(0.1)
    assert gh_weight(415, 400, 30) == pytest.approx(0.5)
    with pytest.raises(ConfigError):
        gh_weight(10, 5, 0)


def test_two_stage_lr_cifar() -> None:
    def lr_at(e: int) -> float:
        return gh_two_stage_lr(e, 0.5, warm_up=500, epochs=1000)

    assert lr_at(1) == pytest.approx(0.05)
    assert lr_at(9) == pytest.approx(0.45)
    assert lr_at(10) == pytest.approx(0.5)
    assert lr_at(255) == pytest.approx(0.4)  # halfway through [10, 500]: 0.3 + 0.2·½
    assert lr_at(499) == pytest.approx(0.3 + 0.2 * 0.5 * (1 + math.cos(math.pi * 489 / 490)))
    assert lr_at(500) == pytest.approx(0.3)
    assert lr_at(750) == pytest.approx(1e-6 + (0.3 - 1e-6) * 0.5)
    assert lr_at(1000) == pytest.approx(1e-6)


def test_two_stage_lr_imagenet_and_no_warm_up() -> None:
    assert gh_two_stage_lr(400, 0.5, 400, 500, 0.1, 0.1) == pytest.approx(0.1)
    assert gh_two_stage_lr(205, 0.5, 400, 500, 0.1, 0.1) == pytest.approx(0.3)
    assert gh_two_stage_lr(450, 0.5, 400, 500, 0.1, 0.1) == pytest.approx(1e-6 + (0.1 - 1e-6) * 0.5)
    # warm_up = 0: the same ramp, then cosine(lr → 1e-6) over [10, epochs]
    assert gh_two_stage_lr(5, 0.5, 0, 1000) == pytest.approx(0.25)
    assert gh_two_stage_lr(10, 0.5, 0, 1000) == pytest.approx(0.5)
    assert gh_two_stage_lr(505, 0.5, 0, 1000) == pytest.approx(1e-6 + (0.5 - 1e-6) * 0.5)
    assert gh_two_stage_lr(1000, 0.5, 0, 1000) == pytest.approx(1e-6)
    # warm_up shorter than the linear ramp: stage 2 starts at epoch 10
    assert gh_two_stage_lr(5, 0.5, 5, 105) == pytest.approx(0.25)
    assert gh_two_stage_lr(55, 0.5, 5, 105) == pytest.approx(1e-6 + (0.3 - 1e-6) * 0.5)
    with pytest.raises(ConfigError):
        gh_two_stage_lr(0, 0.5, 500, 1000)
    with pytest.raises(ConfigError):
        gh_two_stage_lr(1001, 0.5, 500, 1000)
