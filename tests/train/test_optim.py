"""Optimisers and the per-iteration schedule (docs/math/data_and_eval.md §7) and GH's per-epoch schedule in the loop."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn as nn

from ltray.config import Config
from ltray.data.loading import RunData
from ltray.losses.gh import gh_two_stage_lr
from ltray.train.loop import Pretrainer
from ltray.train.optim import LARS, build_optimizer, iteration_lr, set_lr, warmup_cosine_factor

# ---- f(i)


def test_schedule_hand_values() -> None:
    lr, w, t, min_lr = 0.5, 10, 110, 1e-6
    m = min_lr / lr
    assert iteration_lr(1, lr=lr, warmup_iters=w, total_iters=t, min_lr=min_lr, step_after=False) == lr / w
    assert iteration_lr(5, lr=lr, warmup_iters=w, total_iters=t, min_lr=min_lr, step_after=False) == lr * 5 / w
    assert iteration_lr(w, lr=lr, warmup_iters=w, total_iters=t, min_lr=min_lr, step_after=False) == lr
    mid = iteration_lr(60, lr=lr, warmup_iters=w, total_iters=t, min_lr=min_lr, step_after=False)
    assert mid == pytest.approx(lr * (m + (1 - m) * 0.5))  # cos(π/2) = 0
    quarter = warmup_cosine_factor(35, w, t, lr, min_lr)
    assert quarter == pytest.approx(m + (1 - m) * 0.5 * (1 + math.cos(math.pi / 4)))
    assert iteration_lr(t, lr=lr, warmup_iters=w, total_iters=t, min_lr=min_lr, step_after=False) == min_lr


@pytest.mark.parametrize("lr", [0.5, 0.3, 5.0, 0.05])
@pytest.mark.parametrize("min_lr", [1e-6, 3e-4])
def test_last_update_is_exactly_min_lr(lr: float, min_lr: float) -> None:
    assert iteration_lr(77, lr=lr, warmup_iters=7, total_iters=77, min_lr=min_lr, step_after=False) == min_lr


def test_step_after_shifts_by_one_update() -> None:
    kwargs = dict(lr=0.5, warmup_iters=4, total_iters=20, min_lr=1e-6)
    assert iteration_lr(1, step_after=True, **kwargs) == 0.0
    assert iteration_lr(2, step_after=True, **kwargs) == 0.5 / 4
    for i in range(2, 21):
        assert iteration_lr(i, step_after=True, **kwargs) == iteration_lr(i - 1, step_after=False, **kwargs)


def test_schedule_without_warmup_and_degenerate_total() -> None:
    assert warmup_cosine_factor(0, 0, 10, 0.5) == 1.0
    assert warmup_cosine_factor(3, 5, 5, 0.5) == 3 / 5
    assert warmup_cosine_factor(7, 5, 5, 0.5) == 1.0
    assert warmup_cosine_factor(50, 5, 10, 0.5, 1e-6) == pytest.approx(2e-6)  # past T it stays at m


# ---- the schedule as the loop applies it


def _lrs_of_run(cfg: Config, data: RunData) -> list[float]:
    trainer = Pretrainer(cfg, data=data)
    seen: list[float] = []
    for epoch in range(cfg.optim.epochs):
        trainer.epoch = epoch
        for index in trainer._batches():
            seen.append(trainer.train_step(index)["lr"])
            assert trainer.optimizer.param_groups[0]["lr"] == seen[-1]
    return seen


def test_loop_uses_lr_f_i_per_update(config: Callable[..., Config], run_data: Callable[..., RunData]) -> None:
    # N = 20, batch 8: I = 3 iterations per epoch, W = 1·3, T = 2·3
    cfg = config(optim__epochs=2, optim__warmup_epochs=1, optim__lr=0.2, optim__min_lr=1e-4)
    lrs = _lrs_of_run(cfg, run_data(n=20))
    expected = [0.2 * warmup_cosine_factor(i, 3, 6, 0.2, 1e-4) for i in range(1, 7)]
    assert lrs == expected
    assert lrs[0] == 0.2 / 3 and lrs[-1] == 1e-4


def test_loop_step_after_starts_at_zero(config: Callable[..., Config], run_data: Callable[..., RunData]) -> None:
    cfg = config(optim__epochs=1, optim__warmup_epochs=1, optim__lr_step_after=True)
    lrs = _lrs_of_run(cfg, run_data(n=16))
    assert lrs == [0.0, 0.1 / 2]


def test_loop_gh_two_stage_is_per_epoch(config: Callable[..., Config], run_data: Callable[..., RunData]) -> None:
    cfg = config(method__name="gh", method__gh__warmup=2, optim__epochs=3, optim__schedule="gh_two_stage",
                 optim__lr=0.5)
    lrs = _lrs_of_run(cfg, run_data(n=16))
    expected = [gh_two_stage_lr(e, 0.5, 2, 3) for e in (1, 1, 2, 2, 3, 3)]
    assert lrs == expected and lrs[0] == 0.05


# ---- LARS


def _numpy_lars(w: np.ndarray, grads: list[np.ndarray], lr: float, momentum: float, wd: float, eta: float) -> np.ndarray:
    v = np.zeros_like(w)
    for g in grads:
        w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
        trust = eta * w_norm / (g_norm + wd * w_norm) if w_norm >= 1e-15 and g_norm >= 1e-15 else 1.0
        v = momentum * v + trust * lr * (g + wd * w)
        w = w - v
    return w


def test_lars_first_step_by_hand() -> None:
    # ‖w‖ = 5, ‖g‖ = 1: λ = 1e-3·5/(1 + 0.1·5) = 1/300; update = λ·0.5·(g + 0.1·w) = (1/600)·[0.9, 1.2]
    p = nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    p.grad = torch.tensor([0.6, 0.8], dtype=torch.float64)
    LARS([p], lr=0.5, momentum=0.9, weight_decay=0.1, eta=1e-3).step()
    np.testing.assert_allclose(p.detach().numpy(), [3.0 - 0.0015, 4.0 - 0.002], rtol=0, atol=1e-15)


def test_lars_momentum_over_steps_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(3, 4))
    grads = [rng.normal(size=(3, 4)) for _ in range(4)]
    p = nn.Parameter(torch.tensor(w0))
    opt = LARS([p], lr=0.7, momentum=0.9, weight_decay=1e-4, eta=1e-3)
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
    np.testing.assert_allclose(p.detach().numpy(), _numpy_lars(w0, grads, 0.7, 0.9, 1e-4, 1e-3), rtol=1e-12)


def test_lars_trust_ratio_is_one_for_tiny_norms() -> None:
    # ‖w‖ < 1e-15: λ = 1, so w ← w − lr·(g + wd·w) = −lr·g
    p = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    p.grad = torch.tensor([1.0, -2.0], dtype=torch.float64)
    LARS([p], lr=0.5, momentum=0.9, weight_decay=0.1).step()
    assert p.detach().tolist() == [-0.5, 1.0]
    # ‖g‖ < 1e-15: λ = 1, so the step is the plain weight decay lr·wd·w
    q = nn.Parameter(torch.tensor([2.0, 0.0], dtype=torch.float64))
    q.grad = torch.zeros(2, dtype=torch.float64)
    LARS([q], lr=0.5, momentum=0.9, weight_decay=0.1).step()
    assert q.detach().tolist() == pytest.approx([2.0 - 0.5 * 0.1 * 2.0, 0.0])
    # a parameter without gradient is left alone
    r = nn.Parameter(torch.ones(2))
    LARS([r], lr=0.5).step()
    assert r.detach().tolist() == [1.0, 1.0]


# ---- SGD


def test_sgd_decays_every_parameter_including_bn_and_bias() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand_like(p) + 0.5)
    before = [p.detach().clone() for p in model.parameters()]
    opt = build_optimizer(model.parameters(), "sgd", lr=0.5, momentum=0.9, weight_decay=0.01, eta=1e-3)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["nesterov"] is False
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for p, old in zip(model.parameters(), before):
        torch.testing.assert_close(p.detach(), old * (1 - 0.5 * 0.01))


def test_sgd_momentum_by_hand_and_set_lr() -> None:
    p = nn.Parameter(torch.tensor([1.0]))
    opt = build_optimizer([p], "sgd", lr=0.1, momentum=0.9, weight_decay=0.0, eta=1e-3)
    p.grad = torch.tensor([1.0])
    opt.step()  # v = 1, w = 1 − 0.1
    set_lr(opt, 0.2)
    opt.step()  # v = 0.9 + 1 = 1.9, w = 0.9 − 0.2·1.9
    assert p.item() == pytest.approx(0.9 - 0.38)


def test_build_optimizer_rejects_unknown_name() -> None:
    with pytest.raises(ValueError, match="adam"):
        build_optimizer([nn.Parameter(torch.zeros(1))], "adam", 0.1, 0.9, 0.0, 1e-3)
    lars = build_optimizer([nn.Parameter(torch.zeros(1))], "lars", 0.1, 0.9, 1e-6, 1e-3)
    assert isinstance(lars, LARS) and lars.param_groups[0]["eta"] == 1e-3
