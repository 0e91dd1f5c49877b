"""Geometric Harmonization on top of any base (docs/math/gh.md)."""

from __future__ import annotations

from typing import Any

import torch

from ltray.losses.etf import build_gh_target
from ltray.losses.gh import GHPrior, geometric_logits, gh_loss, gh_weight
from ltray.methods.base import Component, EpochContext, Step, Term
from ltray.methods.registry import register


@register("gh")
class GH(Component):
    """Adds λ_E·L_GH after the warm-up; keeps the per-index logit memory and the population prior π."""

    def __init__(self, cfg, dataset_size: int, device: torch.device) -> None:
        super().__init__(cfg, dataset_size, device)
        g = cfg.method.gh
        self.target = build_gh_target(
            g.target_dim, 128, construction=g.target_construction, approximate=g.approximate_target, seed=g.target_seed
        ).weight.to(device)
        self.prior = GHPrior(
            dataset_size, g.target_dim, warm_up=g.warmup, beta=g.beta, refresh_mode=g.prior_refresh, device=device
        )
        self.last_weight = 0.0

    def extra_terms(self, step: Step) -> list[Term]:
        g = self.cfg.method.gh
        weight = gh_weight(step.epoch + 1, g.warmup, g.ramp_epochs)
        self.last_weight = weight
        if weight == 0.0:
            return []
        t1 = geometric_logits(step.z1, self.target)
        t2 = geometric_logits(step.z2, self.target)
        _, per_sample = gh_loss(t1, t2, self.prior.prior, iterations=g.sinkhorn_iters)
        return [Term("gh", weight, per_sample)]

    def observe(self, step: Step, base_per_sample: torch.Tensor) -> None:
        with torch.no_grad():
            t1 = geometric_logits(step.z1.detach(), self.target)
        self.prior.update(step.index, t1, step.epoch)
        self.prior.after_iteration(step.epoch)

    def on_epoch_end(self, ctx: EpochContext) -> None:
        self.prior.end_epoch(ctx.epoch)

    def metrics(self) -> dict[str, float]:
        return {"gh_weight": self.last_weight}

    def state_dict(self) -> dict[str, Any]:
        return self.prior.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.prior.load_state_dict(state)
