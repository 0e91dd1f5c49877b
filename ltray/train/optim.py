"""Optimisers and learning-rate schedules (docs/math/data_and_eval.md §7, docs/math/gh.md §7)."""

from __future__ import annotations

import math
from typing import Iterable

import torch


class LARS(torch.optim.Optimizer):
    """LARS (You et al., 2017) as in docs/math/data_and_eval.md §7, on all parameters.

    Per tensor: λ = η‖w‖/(‖g‖ + wd‖w‖) (λ = 1 when ‖w‖ or ‖g‖ < 1e-15); v ← m·v + λ·lr·(g + wd·w); w ← w − v.
    """

    def __init__(
        self, params: Iterable[torch.Tensor], lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 1e-3
    ) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, momentum, wd, eta = group["lr"], group["momentum"], group["weight_decay"], group["eta"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                w_norm = torch.linalg.vector_norm(p)
                g_norm = torch.linalg.vector_norm(g)
                trust = eta * w_norm / (g_norm + wd * w_norm)
                ok = (w_norm >= 1e-15) & (g_norm >= 1e-15)
                scale = torch.where(ok, trust, torch.ones_like(trust))
                update = scale * lr * (g + wd * p)
                state = self.state[p]
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(p)
                v = state["velocity"]
                v.mul_(momentum).add_(update)
                p.sub_(v)
        return loss


def build_optimizer(params: Iterable[torch.Tensor], name: str, lr: float, momentum: float, weight_decay: float, eta: float):
    """SGD (momentum, no Nesterov) or LARS, weight decay on every parameter (BN and biases included)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=False)
    if name == "lars":
        return LARS(params, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta)
    raise ValueError(f"unknown optimiser {name!r}")


def warmup_cosine_factor(i: int, warmup_iters: int, total_iters: int, lr: float, min_lr: float = 1e-6) -> float:
    """f(i) of docs/math/data_and_eval.md §7: i/W for i < W, else m + (1 − m)·½(1 + cos(π(i − W)/(T − W))), m = min_lr/lr."""
    m = min_lr / lr
    if i < warmup_iters:
        return i / warmup_iters
    if total_iters <= warmup_iters:
        return 1.0
    progress = min(1.0, (i - warmup_iters) / (total_iters - warmup_iters))
    return m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * progress))


def iteration_lr(i: int, *, lr: float, warmup_iters: int, total_iters: int, min_lr: float, step_after: bool) -> float:
    """The lr used by update i (1-based): lr·f(i), or lr·f(i − 1) with `lr_step_after` (LoTaR)."""
    return lr * warmup_cosine_factor(i - 1 if step_after else i, warmup_iters, total_iters, lr, min_lr)


def set_lr(optimizer: torch.optim.Optimizer, value: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = value
