"""BCL: memorisation-boosted augmentation driven by a per-sample momentum loss (docs/math/bcl.md)."""

from __future__ import annotations

from typing import Any, Callable

import torch

from ltray.augment.randaugment import BCLWeights, RandAugmentProb, check_weights_version
from ltray.common.state import IndexedEMA
from ltray.errors import TrainingDiverged
from ltray.methods.base import Component, EpochContext, Step
from ltray.methods.registry import register


def memorisation_weights(momentum: torch.Tensor) -> torch.Tensor:
    """w = ½·u/max|u| + ½ with u = (m − mean m)/std m (unbiased), docs/math/bcl.md §3; w ≡ ½ when std or max|u| is 0."""
    m = momentum.double()
    if not bool(torch.isfinite(m).all()):
        raise TrainingDiverged("BCL momentum loss holds non-finite values")
    if m.numel() < 2:
        return torch.full_like(momentum, 0.5)
    std = m.std(unbiased=True)
    if float(std) == 0.0:
        return torch.full_like(momentum, 0.5)
    u = (m - m.mean()) / std
    peak = u.abs().max()
    if float(peak) == 0.0:
        return torch.full_like(momentum, 0.5)
    return (0.5 * u / peak + 0.5).to(momentum.dtype)


@register("bcl")
class BCL(Component):
    """Tracks the base per-sample loss as a momentum loss per dataset index; at each epoch's end turns it into
    weights in [0, 1] that set the RandAugment strength and probability of every item in the next epoch."""

    def __init__(self, cfg, dataset_size: int, device: torch.device) -> None:
        super().__init__(cfg, dataset_size, device)
        b = cfg.method.bcl
        self.momentum = IndexedEMA(dataset_size, device=device)
        self.augment = RandAugmentProb(BCLWeights.initial(dataset_size).to(device), rand_k=b.rand_k, strength=b.strength)

    def view_hook(self) -> Callable[..., torch.Tensor]:
        return self.augment

    def observe(self, step: Step, base_per_sample: torch.Tensor) -> None:
        if self.augment.last_version is not None:
            check_weights_version(self.augment.last_version, step.epoch)
        self.momentum.update(step.index, base_per_sample, step.epoch, self.cfg.method.bcl.beta)

    def on_epoch_end(self, ctx: EpochContext) -> None:
        weights = torch.zeros(self.dataset_size, dtype=torch.float32, device=self.momentum.values.device)
        seen = self.momentum.visited
        weights[seen] = memorisation_weights(self.momentum.values[seen])
        self.augment.set_weights(BCLWeights(weights, version=ctx.epoch + 1))

    def metrics(self) -> dict[str, float]:
        w = self.augment.weights.values
        return {"bcl_weight_mean": float(w.mean()), "bcl_weight_version": float(self.augment.weights.version)}

    def state_dict(self) -> dict[str, Any]:
        return {"momentum": self.momentum.state_dict(), "weights": self.augment.weights.values.cpu(),
                "version": self.augment.weights.version}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.momentum.load_state_dict(state["momentum"])
        device = self.momentum.values.device
        self.augment.set_weights(BCLWeights(state["weights"].to(device), version=int(state["version"])))
