"""The contrastive pre-training loop: plain PyTorch, single-process; Ray Train runs the same function per worker.

One epoch: method epoch hooks (SDCLR mask refresh, COLT resampling) → shuffled distributed sampler over the
current training set → per batch: gather uint8 images by dataset index, two batched augmented views, one model
call, all-gather of the projections, the composed loss over the global batch, one backward, one optimiser step,
per-index state updates → epoch hooks (BCL weights) → metrics, checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, cast

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DistributedSampler

from ltray.augment.batched import SimCLRViews
from ltray.common import distributed as dist_utils
from ltray.config import Config, config_from_dict
from ltray.data.list_data import ListViewLoader
from ltray.data.loading import RunData, load_run_data
from ltray.data.train_data import TrainData
from ltray.errors import CheckpointError, ConfigError, TrainingDiverged
from ltray.eval.features import extract_features
from ltray.losses.gh import gh_two_stage_lr
from ltray.method_names import parse_method
from ltray.methods.base import EpochContext, Step
from ltray.methods.method import Method, build_method
from ltray.models.contrastive import ContrastiveModel, build_model
from ltray.train.checkpoint import (
    CHECKPOINT_FOLDER,
    checkpoint_name,
    gather_rng_states,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_states,
    save_checkpoint,
)
from ltray.train.optim import build_optimizer, iteration_lr, set_lr
from ltray.train.shard_embed import PoolEmbedder, default_pool_embedder

METRICS_FILE = "metrics.jsonl"  # one JSON line of metrics per epoch, in the run folder


class EpochReporter(Protocol):
    """Receives per-epoch metrics and, on checkpoint epochs, the checkpoint folder (Ray Train / Tune plug in here)."""

    def __call__(self, epoch: int, metrics: dict[str, float], checkpoint_dir: Path | None) -> None: ...


@dataclass
class PretrainResult:
    run_dir: Path
    checkpoint: Path
    history: list[dict[str, float]] = field(default_factory=list)


def select_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("run.device=cuda but no CUDA device is available")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on GPU by default; off on CPU (losses always run in float32)."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "fp16":
        return torch.float16
    return torch.bfloat16


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def local_batch_size(cfg: Config) -> int:
    world = dist_utils.world_size()
    if cfg.optim.batch_size % world:
        raise ConfigError(f"optim.batch_size={cfg.optim.batch_size} is not divisible by the {world} workers")
    return cfg.optim.batch_size // world


def iterations_per_epoch(num_items: int, local_batch: int) -> int:
    per_rank = math.ceil(num_items / dist_utils.world_size())
    return math.ceil(per_rank / local_batch)


def total_iterations(cfg: Config, method: Method, num_id: int, local_batch: int, num_items: int) -> int:
    """T for the per-iteration schedule: E·⌈N/B⌉ over the whole training set of `num_items` (MAK's retraining adds
    its fixed selection to the `num_id` ID items, data_and_eval.md §7), unless a method part sets its own length
    (COLT's OOD phase, docs/math/colt.md §7)."""
    id_len = iterations_per_epoch(num_id, local_batch)
    own = method.schedule_iterations(id_len, local_batch, num_id, dist_utils.world_size())
    if own is not None:
        return own
    return cfg.optim.epochs * iterations_per_epoch(num_items, local_batch)


def _wrap_distributed(model: ContrastiveModel, cfg: Config, device: torch.device) -> nn.Module:
    if not dist_utils.is_distributed():
        return model
    if cfg.model.sync_bn:
        # the root is no BatchNorm, so the same model comes back
        model = cast(ContrastiveModel, dist_utils.convert_sync_batchnorm(model, device))
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def _unwrap(model: nn.Module) -> ContrastiveModel:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model  # type: ignore[return-value]


def embed_images(model: ContrastiveModel, images: np.ndarray, device: torch.device) -> np.ndarray:
    """L2-normalised 128-d head outputs in eval mode with the inference transform (no augmentation)."""
    if len(images) == 0:
        return np.zeros((0, 128), dtype=np.float32)
    return extract_features(model, images, forward=model.embed, normalize=True, device=device).numpy()


class Pretrainer:
    """Owns one pre-training run: model, optimiser, method state, data, checkpoints.

    `pool_embedder` makes COLT's whole-pool embedding (`ltray.train.shard_embed`) from the training data; None: the
    ranks share the pool array. A Ray Train worker passes one that embeds its shard of the pool dataset."""

    def __init__(self, cfg: Config, data: RunData | None = None, reporter: EpochReporter | None = None,
                 pool_embedder: Callable[[Any], PoolEmbedder] | None = None) -> None:
        self.cfg = cfg
        self.rank = dist_utils.rank()
        self.world = dist_utils.world_size()
        self.device = select_device(cfg.run.device)
        seed_everything(cfg.run.seed + self.rank)
        self.data = data if data is not None else load_run_data(cfg)
        self.train_data = self.data.train
        self.method = build_method(cfg, self.train_data.index_space, self.device)
        options = self.method.model_options()
        with torch.random.fork_rng(devices=[]):  # the same initial weights on every rank; each keeps its own stream
            torch.manual_seed(cfg.run.seed)
            self.model = build_model(
                cfg.model.arch, width=cfg.model.width, head=options["head"], dual_bn=options["dual_bn"]
            ).to(self.device)
        if cfg.model.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.pruned_second = bool(options["pruned_second"])
        self.ddp_model = _wrap_distributed(self.model, cfg, self.device)
        self.model = _unwrap(self.ddp_model)
        o = cfg.optim
        self.optimizer = build_optimizer(self.ddp_model.parameters(), o.optimizer, o.lr, o.momentum, o.weight_decay,
                                         o.lars_eta)
        self.amp_dtype = autocast_dtype(cfg.run.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.local_batch = local_batch_size(cfg)
        # the training set as it starts: D_i plus a fixed extra selection (MAK); COLT's pool joins later
        start_size = len(self.train_data)
        self.total_iters = total_iterations(cfg, self.method, self.train_data.num_id, self.local_batch, start_size)
        self.warmup_iters = o.warmup_epochs * iterations_per_epoch(start_size, self.local_batch)
        # array data: batched views made here; list data: per-item views made by loader workers
        hook = self.method.view_hook()
        self.list_views = ListViewLoader.for_run(cfg, self.data, hook, self.device) if self.data.is_list else None
        self.views = (
            None if self.list_views else SimCLRViews(self.data.image_size, preset=cfg.data.aug_preset, extra=hook)
        )
        self.reporter = reporter
        self.epoch = 0
        self.iteration = 0
        self.history: list[dict[str, float]] = []
        self.run_dir = cfg.run_dir
        self.ckpt_dir = self.run_dir / CHECKPOINT_FOLDER
        self.pool_embedder = pool_embedder(self.train_data) if pool_embedder is not None else None

    # ----- checkpoints -------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The full resumable state; a collective call (every rank's RNG state is gathered, complete on rank 0)."""
        return {
            "epoch": self.epoch,
            "iteration": self.iteration,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "method": self.method.state_dict(),
            "active_pool": torch.from_numpy(self.train_data.active_pool.copy()),
            "rng": gather_rng_states(),
            "config": self.cfg.to_dict(),
            "history": self.history,
        }

    def load_state(self, state: dict[str, Any], source: Path) -> None:
        saved = config_from_dict(state["config"])
        if parse_method(saved.method.name).canonical != self.method.name:
            raise CheckpointError(f"checkpoint {source} was made with method {saved.method.name}; refusing to resume")
        for key in ("model.arch", "model.width", "data.dataset", "data.split", "data.subset"):
            section, name = key.split(".")
            if getattr(getattr(saved, section), name) != getattr(getattr(self.cfg, section), name):
                raise CheckpointError(f"checkpoint {source} was made with a different {key}; refusing to resume")
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint {source} does not fit the model: {str(exc).splitlines()[0]}") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.method.load_state_dict(state["method"])
        self.train_data.set_active_pool(state["active_pool"].numpy())
        restore_rng_states(state["rng"], seed=self.cfg.run.seed, epoch=int(state["epoch"]))
        self.epoch = int(state["epoch"])
        self.iteration = int(state["iteration"])
        self.history = list(state.get("history", []))

    def resume_from(self, path: Path) -> None:
        """Continue from checkpoint `path`; `metrics.jsonl` is rewritten from its history, dropping the lines of
        epochs trained after that checkpoint, which run again."""
        self.load_state(load_checkpoint(path, map_location=self.device), path)
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            staging = self.run_dir / f".{METRICS_FILE}.tmp"
            staging.write_text("".join(json.dumps(metrics) + "\n" for metrics in self.history))
            os.replace(staging, self.run_dir / METRICS_FILE)

    def save(self) -> Path:
        path = self.ckpt_dir / checkpoint_name(self.epoch)
        state = self.state()  # on every rank: it gathers the RNG states
        if self.rank == 0:
            save_checkpoint(path, state)
        return path

    # ----- training ----------------------------------------------------------------------------------------
    def _epoch_context(self) -> EpochContext:
        def log_artifact(name: str, text: str) -> None:
            if self.rank == 0:
                (self.run_dir / "artifacts").mkdir(parents=True, exist_ok=True)
                (self.run_dir / "artifacts" / name).write_text(text)

        def embed(images: Any) -> np.ndarray:
            if self.list_views is None:
                return embed_images(self.model, images, self.device)
            return self.list_views.embed(self.model, images, self.device)

        def embed_pool() -> np.ndarray | None:
            embedder = self.pool_embedder or default_pool_embedder(self.train_data.pool_images, embed)
            return embedder(self.model, self.device)

        return EpochContext(
            epoch=self.epoch,
            model=self.model,
            data=self.train_data,
            device=self.device,
            embed=embed,
            log_artifact=log_artifact,
            embed_pool=embed_pool,
        )

    def _lr(self) -> float:
        o = self.cfg.optim
        if o.schedule == "gh_two_stage":
            return gh_two_stage_lr(
                self.epoch + 1, o.lr, self.cfg.method.gh.warmup, o.epochs,
                lr_min_stage1=o.gh_lr_min_stage1, lr_max_stage2=o.gh_lr_max_stage2,
            )
        return iteration_lr(
            self.iteration, lr=o.lr, warmup_iters=self.warmup_iters, total_iters=self.total_iters,
            min_lr=o.min_lr, step_after=o.lr_step_after,
        )

    def _batches(self) -> list[np.ndarray]:
        members = self.train_data.members()
        sampler: DistributedSampler[int] = DistributedSampler(
            range(len(members)),  # type: ignore[arg-type]  # torch types a Dataset; the sampler only takes its len
            num_replicas=self.world, rank=self.rank, shuffle=True, seed=self.cfg.run.seed,
            drop_last=False,
        )
        sampler.set_epoch(self.epoch)
        order = members[np.fromiter(iter(sampler), dtype=np.int64)]
        return [order[i : i + self.local_batch] for i in range(0, len(order), self.local_batch)]

    def _views(self, index: np.ndarray, index_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both views of one batch, made here: batched augmentation of the gathered arrays, or the list pipeline."""
        if self.list_views is not None:
            v1, v2 = self.list_views.views_of(index, self.epoch)
            return v1.to(self.device), v2.to(self.device)
        assert self.views is not None
        train_data = cast(TrainData, self.train_data)  # array data: no list views
        images = torch.from_numpy(train_data.images(index)).to(self.device, non_blocking=True)
        return self.views(images, index_t, self.epoch, self.cfg.run.seed)

    def train_step(self, index: np.ndarray, views: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, float]:
        """One optimiser step on the batch `index`; `views` are its two views when a loader already made them."""
        index_t = torch.from_numpy(index).to(self.device)
        if views is None:
            v1, v2 = self._views(index, index_t)
        else:
            v1, v2 = (view.to(self.device, non_blocking=True) for view in views)
        if self.cfg.model.channels_last:
            v1 = v1.contiguous(memory_format=torch.channels_last)
            v2 = v2.contiguous(memory_format=torch.channels_last)
        self.iteration += 1
        lr = self._lr()
        set_lr(self.optimizer, lr)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            z1_local, z2_local = self.ddp_model(v1, v2, pruned_second=self.pruned_second)
        z1 = dist_utils.gather_with_grad(z1_local.float())
        z2 = dist_utils.gather_with_grad(z2_local.float())
        step_index = dist_utils.gather(index_t)
        step_label = torch.from_numpy(self.train_data.labels(step_index.cpu().numpy())).to(self.device)
        step = Step(z1=z1, z2=z2, index=step_index, epoch=self.epoch, iteration=self.iteration, label=step_label)
        result = self.method.compute_loss(step)
        if not torch.isfinite(result.loss):
            raise TrainingDiverged(
                f"loss is {float(result.loss.detach())} at epoch {self.epoch + 1}, iteration {self.iteration}; "
                "lower optim.lr or check the data"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(result.loss * self.world).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.method.observe(step, result)
        return {"loss": float(result.loss.detach()), "lr": lr, **result.terms}

    def train_epoch(self) -> dict[str, float]:
        ctx = self._epoch_context()
        self.method.on_epoch_start(ctx)
        self.ddp_model.train()
        batches = self._batches()
        sums: dict[str, float] = {}
        started = time.perf_counter()
        show = self.cfg.run.progress == "on" or (self.cfg.run.progress == "auto" and sys.stderr.isatty())
        iterator: Any = (
            self.list_views.epoch(batches, self.epoch) if self.list_views else ((index, None) for index in batches)
        )
        if show and self.rank == 0:
            from tqdm import tqdm

            iterator = tqdm(
                iterator, total=len(batches), desc=f"epoch {self.epoch + 1}/{self.cfg.optim.epochs}", leave=False
            )
        seen = 0
        for index, views in iterator:
            values = self.train_step(index, views)
            seen += len(index)
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value
        elapsed = time.perf_counter() - started
        self.method.on_epoch_end(ctx)
        metrics = {key: value / max(1, len(batches)) for key, value in sums.items()}
        metrics["lr"] = values["lr"] if batches else 0.0
        metrics["epoch_time_s"] = elapsed
        metrics["images_per_s"] = seen * self.world / elapsed if elapsed > 0 else 0.0
        metrics["train_size"] = float(len(self.train_data))
        metrics.update(self.method.metrics())
        return metrics

    def run(self, monitor: Callable[[ContrastiveModel, int], dict[str, float]] | None = None) -> PretrainResult:
        last: Path | None = latest_checkpoint(self.ckpt_dir)
        while self.epoch < self.cfg.optim.epochs:
            metrics = self.train_epoch()
            self.epoch += 1
            metrics["epoch"] = float(self.epoch)
            if monitor is not None:
                metrics.update(monitor(self.model, self.epoch))
            self.history.append(metrics)
            checkpoint_dir = None
            if self.epoch % self.cfg.run.checkpoint_every == 0 or self.epoch == self.cfg.optim.epochs:
                last = self.save()
                checkpoint_dir = self.ckpt_dir
            if self.rank == 0:
                self._write_metrics(metrics)
            if self.reporter is not None:
                self.reporter(self.epoch, metrics, checkpoint_dir)
        assert last is not None
        return PretrainResult(run_dir=self.run_dir, checkpoint=last, history=self.history)

    def _write_metrics(self, metrics: dict[str, float]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(metrics) + "\n")


def prepare_run_dir(cfg: Config, resume: bool) -> Path | None:
    """Return the checkpoint to resume from; refuse to reuse a run folder that holds checkpoints without --resume."""
    ckpt_dir = cfg.run_dir / CHECKPOINT_FOLDER
    latest = latest_checkpoint(ckpt_dir)
    if latest is not None and not resume:
        raise ConfigError(
            f"{cfg.run_dir} already holds checkpoints; pass --resume to continue it or choose another run.name"
        )
    if resume and latest is None:
        raise CheckpointError(f"--resume given but {ckpt_dir} holds no checkpoint")
    return latest


class TrainingRun:
    """One pre-training run as every driver runs it: `ltray pretrain` (`pretrain`), a Ray Train worker and an
    in-process sweep trial (`ltray.cluster.train_worker`). The drivers differ only in the collaborators they pass
    (the epoch reporter, COLT's pool embedder, the kNN interval) and in where a checkpoint to resume comes from;
    the trainer, the resume, the kNN monitor and the epochs are set up here."""

    def __init__(self, cfg: Config, *, reporter: EpochReporter | None = None, data: RunData | None = None,
                 pool_embedder: Callable[[Any], PoolEmbedder] | None = None, knn_every: int = 0) -> None:
        self.cfg = cfg
        self.trainer = Pretrainer(cfg, data=data, reporter=reporter, pool_embedder=pool_embedder)
        self.knn_every = knn_every or cfg.eval.knn_every
        self.resumed_from: Path | None = None

    @property
    def checkpoint_dir(self) -> Path:
        return self.trainer.ckpt_dir

    @property
    def finished(self) -> bool:
        return self.trainer.epoch >= self.cfg.optim.epochs

    def resume(self, path: Path) -> int:
        """Continue from checkpoint `path` (`Pretrainer.resume_from`); returns the epoch it holds."""
        self.trainer.resume_from(path)
        self.resumed_from = path
        return self.trainer.epoch

    def run(self) -> PretrainResult:
        """Train the remaining epochs (kNN monitor every `knn_every` epochs, else `eval.knn_every`); a run resumed
        from its final checkpoint returns that checkpoint."""
        if self.finished and self.resumed_from is not None:
            return PretrainResult(self.trainer.run_dir, self.resumed_from, self.trainer.history)
        monitor = None
        if self.knn_every > 0:
            from ltray.train.monitor import knn_monitor

            monitor = knn_monitor(self.trainer.data, self.knn_every, self.cfg.eval.knn_k, self.cfg.data.loader_workers)
        return self.trainer.run(monitor)


def pretrain(cfg: Config, *, resume: bool = False, reporter: EpochReporter | None = None,
             data: RunData | None = None) -> PretrainResult:
    """Pre-train one model from a validated config in this process (`ltray pretrain`): a run folder holding
    checkpoints is continued only with `resume`."""
    latest = prepare_run_dir(cfg, resume) if dist_utils.rank() == 0 else None
    run = TrainingRun(cfg, reporter=reporter, data=data)
    if resume:
        path = latest or latest_checkpoint(run.checkpoint_dir)
        if path is None:
            raise CheckpointError(f"--resume given but {run.checkpoint_dir} holds no checkpoint")
        run.resume(path)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    if dist_utils.rank() == 0:
        (cfg.run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    return run.run()
