"""The component interface: a method part is a set of optional hooks around the plain training step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np
import torch

from ltray.errors import DataError

if TYPE_CHECKING:
    from pathlib import Path

    from ltray.config import Config
    from ltray.data.list_data import ListTrainData
    from ltray.data.sources import ImageListSource
    from ltray.data.train_data import TrainData
    from ltray.models.contrastive import ContrastiveModel


@dataclass
class Step:
    """One optimiser step's global batch, as every rank sees it after the all-gather.

    z1, z2: [B, d] projector outputs (the local slice keeps its gradient); index: [B] dataset indices;
    epoch: 0-based; iteration: 1-based global optimiser step; label: [B] class ids, −1 for pool items (the
    batch record's label, README convention 1: for diagnostics only, never an input of a self-supervised loss).
    """

    z1: torch.Tensor
    z2: torch.Tensor
    index: torch.Tensor
    epoch: int
    iteration: int
    label: torch.Tensor | None = None


@dataclass
class Term:
    """An extra loss term decomposed per image: the loss adds weight · per_sample."""

    name: str
    weight: float
    per_sample: torch.Tensor


@dataclass
class EpochContext:
    """What epoch hooks may read or change: the model, the training data and embedding functions.

    `embed` embeds the given images in this process. `embed_pool` embeds the whole pool, spread over the ranks
    (or, on Ray Train, over the workers' shards of the pool dataset; `ltray.train.shard_embed`).
    """

    epoch: int
    model: ContrastiveModel
    data: TrainData | ListTrainData
    device: torch.device
    embed: Callable[[np.ndarray | ImageListSource], np.ndarray]
    log_artifact: Callable[[str, str], None]
    embed_pool: Callable[[], np.ndarray | None] | None = None

    def pool_embedding(self) -> np.ndarray | None:
        """The pool's embeddings [M, d] in pool-index order on rank 0 (other ranks may get None). Every rank must
        call it at the same point, as it may hold collectives. Without `embed_pool`: `embed` of the whole pool."""
        if self.embed_pool is not None:
            return self.embed_pool()
        if self.data.pool_images is None:
            raise DataError("the training data has no pool to embed")
        return self.embed(self.data.pool_images)


class Stages(Protocol):
    """What a driver (`ltray.cluster.trial.TrialStages`) lends a part's pre-stages from the layers above: `folder(part)`
    for what `part` makes; `train(cfg, stage)`, the final checkpoint file of `cfg` trained as this run's `stage`;
    `sample(cfg, checkpoint, out)`, MAK's sampling of `method.mak.pool` with that extractor into `out` (returned)."""

    def folder(self, part: str) -> Path: ...
    def train(self, cfg: Config, stage: str) -> Path: ...
    def sample(self, cfg: Config, checkpoint: Path, out: Path) -> Path: ...


@dataclass(frozen=True)
class Cost:
    """What a part adds to a run's dry-run cost (`ltray.cluster.dryrun`) beyond epochs × N pre-training images."""

    train_images: int = 0
    inference_images: int = 0
    note: str = ""


class Component:
    """Default no-op hooks; a component overrides the ones it needs."""

    name: str = "component"

    def __init__(self, cfg: Config, dataset_size: int, device: torch.device) -> None:
        self.cfg = cfg
        self.dataset_size = dataset_size
        self.device = device

    @classmethod
    def model_shape(cls, cfg: Config) -> dict[str, Any]:
        """The model options this part fixes in the saved model (head, dual BN): evaluation and pool scoring
        rebuild a checkpoint's model from them (`ltray.methods.method.model_shape`)."""
        return {}

    @classmethod
    def input_paths(cls, cfg: Config) -> dict[str, str | None]:
        """The files and folders beyond the `data` section that a run of this part reads (config key → path): every
        node must reach them."""
        return {}

    @classmethod
    def prepare(cls, cfg: Config, stages: Stages) -> Config:
        """Run the part's stages before training (MAK's extractor and sampling) with a driver's `stages`; returns the
        config to train."""
        return cfg

    @classmethod
    def cost(cls, cfg: Config, train_size: int, pool_size: Callable[[Path], int | None]) -> Cost:
        """What the part adds to the cost of a run on `train_size` images; `pool_size(path)`: a pool's size or None."""
        return Cost()

    def model_options(self) -> dict[str, Any]:
        """The options of the model this part trains: its `model_shape` plus training-only ones."""
        return self.model_shape(self.cfg)

    def schedule_iterations(self, id_loader_len: int, local_batch: int, num_id: int, world_size: int) -> int | None:
        """The length T of the per-iteration learning-rate schedule when this part sets it (None: E·⌈N/B⌉)."""
        return None

    def on_epoch_start(self, ctx: EpochContext) -> None:
        return None

    def anchor_losses(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor | None:
        return None

    def sample_weights(self, step: Step) -> torch.Tensor | None:
        return None

    def extra_terms(self, step: Step) -> list[Term]:
        return []

    def observe(self, step: Step, base_per_sample: torch.Tensor) -> None:
        return None

    def on_epoch_end(self, ctx: EpochContext) -> None:
        return None

    def view_hook(self) -> Callable[..., torch.Tensor] | None:
        return None

    def metrics(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
