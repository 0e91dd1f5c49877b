"""SDCLR: the pruned self-competitor with dual BN (docs/math/sdclr.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ltray.common import distributed as dist_utils
from ltray.errors import TrainingDiverged
from ltray.methods.base import Component, EpochContext
from ltray.methods.registry import register
from ltray.models.pruning import mask_checksum, prunable_convs, refresh_masks

if TYPE_CHECKING:
    from ltray.config import Config


@register("sdclr")
class SDCLR(Component):
    """Dense branch on view 1, pruned branch (global magnitude mask, BN 1) on view 2; the mask is rebuilt from
    the dense weights before every epoch's first iteration and checked to agree across workers."""

    density = 1.0

    @classmethod
    def model_shape(cls, cfg: Config) -> dict[str, Any]:
        s = cfg.method.sdclr
        return {"head": "sdclr3" if s.head_layers == 3 else "simclr", "dual_bn": s.dual_bn}

    def model_options(self) -> dict[str, Any]:
        return {**self.model_shape(self.cfg), "pruned_second": True}

    def on_epoch_start(self, ctx: EpochContext) -> None:
        s = self.cfg.method.sdclr
        seed = s.mask_seed + ctx.epoch if s.random_prune_fraction > 0 else None
        refresh_masks(ctx.model.backbone, s.prune_ratio, s.random_prune_fraction, seed=seed)
        if dist_utils.is_distributed():
            local = torch.tensor([mask_checksum(ctx.model.backbone)], dtype=torch.int64, device=ctx.device)
            every = dist_utils.gather(local)
            if not bool((every == local).all()):
                raise TrainingDiverged(f"SDCLR pruning masks differ across workers at epoch {ctx.epoch + 1}")
        masks = [conv.prune_mask for _, conv in prunable_convs(ctx.model.backbone)]
        self.density = float(sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks))

    def metrics(self) -> dict[str, float]:
        return {"sdclr_mask_density": self.density}
