"""COLT: online OOD sampling around tail-like ID regions plus the domain-level SupCon term (docs/math/colt.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ltray.common import distributed as dist_utils
from ltray.common.state import IndexedEMA
from ltray.losses.supcon import domain_supcon
from ltray.losses.tailness import colt_instant_tailness
from ltray.methods.base import Component, Cost, EpochContext, Step, Term
from ltray.methods.registry import register
from ltray.select.colt import colt_lr_total, colt_select, is_resample_epoch, validate_colt_config


def colt_resamples(epochs: int, warmup: int, interval: int) -> int:
    """Resample epochs e (1-based) with e − 1 ≥ warmup and (e − 1 − warmup) mod interval = 0 (docs/math/colt.md §1)."""
    return 0 if epochs - 1 < warmup else (epochs - 1 - warmup) // interval + 1


@register("colt")
class COLT(Component):
    """Tracks the tailness EMA S of ID items in the training step; at resample epochs replaces the OOD subset of
    the training set with `budget` pool items picked near low-S k-means clusters of the ID embeddings.

    At a resample every rank takes part in embedding the pool (`EpochContext.pool_embedding`); rank 0 embeds the ID
    set, selects, logs the picks and broadcasts them."""

    def __init__(self, cfg, dataset_size: int, device: torch.device) -> None:
        super().__init__(cfg, dataset_size, device)
        self.tailness = IndexedEMA(dataset_size, device=device)
        self.num_id = dataset_size
        self.resamples = 0
        self.ood_fraction = 0.0

    @classmethod
    def input_paths(cls, cfg) -> dict[str, str | None]:
        c = cfg.method.colt
        return {} if c.pool == "embedded" else {"method.colt.pool_path": c.pool_path}

    @classmethod
    def cost(cls, cfg, train_size: int, pool_size: Callable[[Path], int | None]) -> Cost:
        """The budget's items after the warm-up (docs/math/colt.md §1, §5); the pool and ID set at each resample (§2)."""
        c, epochs = cfg.method.colt, cfg.optim.epochs
        pool = {"embedded": c.pool_size, "random300k": 300_000}.get(c.pool)  # 300K Random Images: colt.md §2
        if c.pool in ("list", "parquet") and c.pool_path:
            pool = pool_size(Path(c.pool_path))
        resamples = colt_resamples(epochs, c.warmup, c.interval)
        note = "; COLT pool size unknown (give method.colt.pool_path): its scoring is not counted"
        return Cost((epochs - min(c.warmup, epochs)) * c.budget, resamples * ((pool or 0) + train_size),
                    note if pool is None and resamples else "")

    def schedule_iterations(self, id_loader_len: int, local_batch: int, num_id: int, world_size: int) -> int:
        """The warm-up + cosine length over the ID-only and the mixed epochs (docs/math/colt.md §7)."""
        c = self.cfg.method.colt
        return colt_lr_total(c.warmup, self.cfg.optim.epochs, id_loader_len, c.budget, local_batch,
                             exact=c.lr_total == "exact", n_id=num_id, world_size=world_size)

    def on_epoch_start(self, ctx: EpochContext) -> None:
        c = self.cfg.method.colt
        self.num_id = ctx.data.num_id
        validate_colt_config(c.warmup, c.interval, c.budget, ctx.data.pool_size)
        if not is_resample_epoch(ctx.epoch + 1, c.warmup, c.interval):
            return
        pool_emb = ctx.pool_embedding()  # on every rank: the pool may be embedded in shards and gathered
        picks = torch.zeros(c.budget, dtype=torch.int64, device=ctx.device)
        if dist_utils.rank() == 0:
            assert pool_emb is not None
            id_emb = ctx.embed(ctx.data.id_images)
            scores = self.tailness.values[: self.num_id].cpu().numpy()
            selection = colt_select(
                id_emb, scores, pool_emb, c.budget, n_clusters=c.clusters,
                cluster_temperature=c.cluster_temperature, random_state=c.kmeans_seed,
            )
            picks = torch.from_numpy(np.asarray(selection.picks, dtype=np.int64)).to(ctx.device)
            ctx.log_artifact(
                f"colt_picks_epoch{ctx.epoch + 1:04d}.json",
                json.dumps({"epoch": ctx.epoch + 1, "kmeans_backend": selection.backend,
                            "kmeans_seed": c.kmeans_seed, "clusters": c.clusters,
                            "cluster_scores": np.asarray(selection.cluster_scores).tolist(),
                            "budgets": np.asarray(selection.budgets).tolist(), "picks": picks.cpu().tolist()}),
            )
        if dist_utils.is_distributed():
            torch.distributed.broadcast(picks, src=0)
        ctx.data.set_active_pool(picks.cpu().numpy())
        self.resamples += 1

    def extra_terms(self, step: Step) -> list[Term]:
        c = self.cfg.method.colt
        is_ood = step.index >= self.num_id
        self.ood_fraction = float(is_ood.float().mean())
        if c.sup_weight == 0 or not bool(is_ood.any()):
            return []
        _, per_sample = domain_supcon(step.z1, step.z2, is_ood, self.cfg.method.temperature)
        return [Term("colt_sup", c.sup_weight, per_sample)]

    def observe(self, step: Step, base_per_sample: torch.Tensor) -> None:
        c = self.cfg.method.colt
        h = colt_instant_tailness(step.z1.detach(), step.z2.detach(), self.cfg.method.temperature, c.topk)
        is_id = step.index < self.num_id
        self.tailness.update(step.index[is_id], h[is_id], step.epoch, c.beta)

    def metrics(self) -> dict[str, float]:
        return {"colt_resamples": float(self.resamples), "colt_ood_fraction_last_batch": self.ood_fraction}

    def state_dict(self) -> dict[str, Any]:
        return {"tailness": self.tailness.state_dict(), "resamples": self.resamples, "num_id": self.num_id}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tailness.load_state_dict(state["tailness"])
        self.resamples = int(state["resamples"])
        self.num_id = int(state["num_id"])
