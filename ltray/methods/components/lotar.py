"""LoTaR per-sample weighting by view distance (docs/math/focal_lotar.md §2)."""

from __future__ import annotations

from typing import cast

import torch

from ltray.losses.lotar import LotarDistance, lotar_distances, lotar_weights
from ltray.methods.base import Component, Step
from ltray.methods.registry import register


@register("lotar")
class LoTaR(Component):
    """w_n = 1 + σ(d_n − d̄)/(d_max − d_min) over the global batch multiplies each image's loss."""

    degenerate_batches = 0

    def sample_weights(self, step: Step) -> torch.Tensor:
        options = self.cfg.method.lotar
        distances = lotar_distances(step.z1, step.z2, cast(LotarDistance, options.distance))  # `config.validate`
        weights, degenerate = lotar_weights(distances, options.sign, options.detach_weight)
        self.degenerate_batches += int(degenerate)
        return weights

    def metrics(self) -> dict[str, float]:
        return {"lotar_degenerate_batches": float(self.degenerate_batches)}

    def state_dict(self) -> dict[str, int]:
        return {"degenerate_batches": self.degenerate_batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.degenerate_batches = int(state["degenerate_batches"])
