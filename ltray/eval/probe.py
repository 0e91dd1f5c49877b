"""Linear probes on a frozen backbone (data_and_eval.md §8).

- `sdclr_sgd_probe`: the `sdclr_sgd` protocol (SDCLR `train_cifar.py` / `train_imagenet.py`): SGD on a new linear
  layer, step schedule, validation-based checkpoint selection, one test of the selected checkpoint.
- `adam_probe`: the `bcl_adam`, `gh_adam` and `lotar_adam` protocols on precomputed features; the last epoch is
  reported.
- `kshot_probe`: an Adam probe averaged over several k-shot draws of the probe train set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ltray.errors import ConfigError, DataError, LtrayError, TrainingDiverged
from ltray.eval.augment import random_crop_flip
from ltray.eval.features import ImageArray, evaluating, extract_features, module_device, to_float_nchw
from ltray.eval.metrics import RunSummary, evaluate_logits, summarize_runs, topk_accuracy
from ltray.eval.shots import kshot_indices


@dataclass(frozen=True)
class ProbeSchedule:
    """One `sdclr_sgd` run of the §8 table. Epochs are 1-based; the lr of epoch e is lr·gamma^(milestones ≤ e)."""

    name: str
    epochs: int
    batch_size: int
    milestones: tuple[int, ...]
    validate_every: int
    select_by: Literal["top1", "top5"]
    lr: float = 30.0
    gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"probe schedule {self.name!r}: epochs and batch_size must be positive")
        if not 1 <= self.validate_every <= self.epochs:
            raise ConfigError(f"probe schedule {self.name!r}: validate_every must lie in [1, epochs]")
        if self.select_by not in ("top1", "top5"):
            raise ConfigError(f"probe schedule {self.name!r}: select_by must be 'top1' or 'top5'")

    def lr_at(self, epoch: int) -> float:
        """The learning rate used throughout 1-based `epoch`."""
        if not 1 <= epoch <= self.epochs:
            raise ConfigError(f"epoch {epoch} outside 1..{self.epochs}")
        return self.lr * self.gamma ** sum(epoch >= milestone for milestone in self.milestones)

    def validation_epochs(self) -> tuple[int, ...]:
        """Epochs after which the probe is validated (every `validate_every`-th, as the reference's test_freq)."""
        return tuple(range(self.validate_every, self.epochs + 1, self.validate_every))


CIFAR_FULL = ProbeSchedule("cifar_full", epochs=30, batch_size=128, milestones=(10, 20), validate_every=1, select_by="top1")
CIFAR_FEW = ProbeSchedule("cifar_few", epochs=100, batch_size=128, milestones=(40, 60), validate_every=5, select_by="top1")
IN100_FULL = ProbeSchedule("in100_full", epochs=30, batch_size=512, milestones=(11, 21), validate_every=2, select_by="top5")
IN100_FEW = ProbeSchedule("in100_few", epochs=100, batch_size=512, milestones=(41, 61), validate_every=10, select_by="top5")
PROBE_SCHEDULES: dict[str, ProbeSchedule] = {s.name: s for s in (CIFAR_FULL, CIFAR_FEW, IN100_FULL, IN100_FEW)}


@dataclass(frozen=True)
class AdamProbePreset:
    """An Adam probe on precomputed features. With `final_lr`, epoch e (1-based) of E uses lr·γ^(e−1) with
    γ = (final_lr/lr)^(1/E) (BCL's ExponentialLR stepped after every epoch); otherwise the lr is constant."""

    name: str
    lr: float
    weight_decay: float
    epochs: int
    batch_size: int
    final_lr: float | None

    def decay_factor(self, epochs: int | None = None) -> float:
        """γ, the per-epoch lr factor (1 for a constant lr)."""
        total = self.epochs if epochs is None else epochs
        return 1.0 if self.final_lr is None else (self.final_lr / self.lr) ** (1.0 / total)

    def lr_at(self, epoch: int, epochs: int | None = None) -> float:
        """The learning rate used throughout 1-based `epoch` of a run of `epochs` (default: the preset's)."""
        total = self.epochs if epochs is None else epochs
        if not 1 <= epoch <= total:
            raise ConfigError(f"epoch {epoch} outside 1..{total}")
        return self.lr * self.decay_factor(total) ** (epoch - 1)


_BCL_ADAM = AdamProbePreset("bcl_adam", lr=1e-2, weight_decay=5e-6, epochs=500, batch_size=1000, final_lr=1e-6)
ADAM_PRESETS: dict[str, AdamProbePreset] = {
    "bcl_adam": _BCL_ADAM,
    "gh_adam": dataclasses.replace(_BCL_ADAM, name="gh_adam"),
    "lotar_adam": AdamProbePreset("lotar_adam", lr=3e-4, weight_decay=0.0, epochs=90, batch_size=512, final_lr=None),
}
AdamPresetName = Literal["bcl_adam", "gh_adam", "lotar_adam"]  # the names of ADAM_PRESETS


@dataclass
class ProbeResult:
    """Outcome of one probe. Accuracies in %; `report` as `metrics.long_tail_report`."""

    per_class_acc: np.ndarray
    report: dict[str, float]
    best_epoch: int
    """The epoch whose classifier was tested: best validation epoch (`sdclr_sgd`) or the last epoch (Adam)."""
    val_curve: list[tuple[int, float]] = field(default_factory=list)
    """(epoch, validation accuracy by the schedule's `select_by`), for `sdclr_sgd`."""
    epoch_loss: list[float] = field(default_factory=list)
    """Mean training cross-entropy of each epoch."""
    classifier: dict[str, torch.Tensor] = field(default_factory=dict)
    """State dict (on CPU) of the tested linear layer."""


@dataclass
class KShotResult:
    """An Adam probe repeated over k-shot draws; `summary` as `metrics.summarize_runs` (runs "draw0", ...)."""

    subsets: list[np.ndarray]
    results: list[ProbeResult]
    summary: RunSummary

    @property
    def mean_report(self) -> dict[str, float]:
        return dict(self.summary["mean"])


def _assert_frozen(backbone: nn.Module) -> None:
    training = [name or "<root>" for name, module in backbone.named_modules() if module.training]
    if training:
        raise LtrayError(f"the probe's backbone must stay in eval mode; in train mode: {training[:5]}")
    trainable = [name for name, parameter in backbone.named_parameters() if parameter.requires_grad]
    if trainable:
        raise LtrayError(f"the probe's backbone must stay frozen; parameters requiring grad: {trainable[:5]}")


@contextmanager
def frozen_backbone(backbone: nn.Module) -> Iterator[nn.Module]:
    """Freeze `backbone` for a linear probe: eval mode (BN frozen) and no grad on any parameter.

    On a normal exit, checks that every parameter and buffer (BN statistics included) is bit-identical to its value
    on entry and raises `LtrayError` otherwise. Modes and `requires_grad` flags are restored in all cases.
    """
    flags = [(parameter, parameter.requires_grad) for parameter in backbone.parameters()]
    with evaluating(backbone):
        try:
            for parameter, _ in flags:
                parameter.requires_grad_(False)
            _assert_frozen(backbone)
            snapshot = {name: tensor.detach().clone() for name, tensor in backbone.state_dict().items()}
            yield backbone
            _assert_frozen(backbone)
            after = backbone.state_dict()
            changed = [name for name, tensor in snapshot.items() if name in after and not torch.equal(tensor, after[name])]
            changed += sorted(set(after) ^ set(snapshot))
            if changed:
                raise LtrayError(f"the frozen backbone changed during the probe: {changed[:5]}")
        finally:
            for parameter, requires_grad in flags:
                parameter.requires_grad_(requires_grad)


def _labels_tensor(labels: np.ndarray | torch.Tensor, count: int, num_classes: int, name: str) -> torch.Tensor:
    tensor = labels.detach().cpu() if isinstance(labels, torch.Tensor) else torch.from_numpy(np.asarray(labels))
    if tensor.ndim != 1 or tensor.is_floating_point() or tensor.is_complex():
        raise DataError(f"{name} must be a 1-D integer array")
    if tensor.numel() != count:
        raise DataError(f"{name} has {tensor.numel()} entries for {count} samples")
    if count == 0:
        raise DataError(f"{name} is empty")
    if tensor.min() < 0 or tensor.max() >= num_classes:
        raise DataError(f"{name} holds labels outside [0, {num_classes})")
    return tensor.to(torch.int64)


def _linear(in_features: int, num_classes: int, generator: torch.Generator, init: Literal["sdclr", "default"]) -> nn.Linear:
    """A new classifier: `sdclr` draws W ~ N(0, 0.01²) with b = 0 (SDCLR `cvt_state_dict`); `default` is PyTorch's
    nn.Linear initialisation, W, b ~ U(−1/√d, 1/√d) (BCL, LoTaR); both from `generator`."""
    layer = nn.Linear(in_features, num_classes)
    with torch.no_grad():
        if init == "sdclr":
            layer.weight.copy_(torch.randn(num_classes, in_features, generator=generator) * 0.01)
            layer.bias.zero_()
        else:
            bound = 1.0 / in_features**0.5
            layer.weight.copy_(torch.empty(num_classes, in_features).uniform_(-bound, bound, generator=generator))
            layer.bias.copy_(torch.empty(num_classes).uniform_(-bound, bound, generator=generator))
    return layer


def _train_epoch(
    linear: nn.Linear,
    optimizer: torch.optim.Optimizer,
    batch_features: Callable[[torch.Tensor], torch.Tensor],
    labels: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
) -> float:
    """One pass over a fresh permutation, keeping the last partial batch; returns the mean cross-entropy."""
    count = labels.shape[0]
    order = torch.randperm(count, generator=generator)
    total = torch.zeros((), device=labels.device)
    for start in range(0, count, batch_size):
        batch = order[start : start + batch_size]
        loss = F.cross_entropy(linear(batch_features(batch)), labels[batch.to(labels.device)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * batch.numel()
    mean_loss = float(total / count)
    if not np.isfinite(mean_loss):
        raise TrainingDiverged(f"the linear probe's loss became {mean_loss}")
    return mean_loss


def _take(images: ImageArray, batch: torch.Tensor) -> ImageArray:
    return images[batch.numpy()] if isinstance(images, np.ndarray) else images[batch.to(images.device)]


@torch.no_grad()
def _logits(linear: nn.Linear, features: torch.Tensor) -> torch.Tensor:
    return linear(features)


def fit_sgd_probe(
    val_features: torch.Tensor,
    val_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    train_epoch: Callable[[int, nn.Linear, torch.optim.Optimizer], float],
    *,
    schedule: ProbeSchedule,
    generator: torch.Generator,
    groups: Mapping[str, np.ndarray] | None = None,
) -> ProbeResult:
    """The classifier of the `sdclr_sgd` probe (data_and_eval.md §8), whatever feeds its training batches: a new
    Linear(d→C) (W ~ N(0, 0.01²), b = 0, drawn from `generator`) trained with SGD under `schedule`, one epoch per
    `train_epoch(epoch, linear, optimizer)` call (1-based epoch; returns its mean loss); the classifier of the
    first epoch with the best validation `schedule.select_by` accuracy is tested once."""
    linear = _linear(val_features.shape[1], num_classes, generator, "sdclr").to(val_features.device)
    optimizer = torch.optim.SGD(
        linear.parameters(), lr=schedule.lr, momentum=schedule.momentum, weight_decay=schedule.weight_decay
    )
    validate_at = set(schedule.validation_epochs())
    select_k = 1 if schedule.select_by == "top1" else 5
    best_accuracy, best_epoch, best_state = -1.0, 0, {}
    val_curve: list[tuple[int, float]] = []
    epoch_loss: list[float] = []
    for epoch in range(1, schedule.epochs + 1):
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr_at(epoch)
        epoch_loss.append(train_epoch(epoch, linear, optimizer))
        if epoch in validate_at:
            accuracy = topk_accuracy(_logits(linear, val_features), val_labels, select_k)
            val_curve.append((epoch, accuracy))
            if accuracy > best_accuracy:
                best_accuracy, best_epoch = accuracy, epoch
                best_state = {name: tensor.detach().clone() for name, tensor in linear.state_dict().items()}
    linear.load_state_dict(best_state)
    per_class, report = evaluate_logits(_logits(linear, test_features), test_labels, num_classes, groups)
    return ProbeResult(
        per_class_acc=per_class,
        report=report,
        best_epoch=best_epoch,
        val_curve=val_curve,
        epoch_loss=epoch_loss,
        classifier={name: tensor.cpu() for name, tensor in best_state.items()},
    )


def sdclr_sgd_probe(
    backbone: nn.Module,
    train_images: ImageArray,
    train_labels: np.ndarray | torch.Tensor,
    val_images: ImageArray,
    val_labels: np.ndarray | torch.Tensor,
    test_images: ImageArray,
    test_labels: np.ndarray | torch.Tensor,
    num_classes: int,
    *,
    schedule: ProbeSchedule,
    device: torch.device | str | None = None,
    seed: int,
    augment: bool = True,
    groups: Mapping[str, np.ndarray] | None = None,
    padding: int = 4,
    eval_batch_size: int = 512,
) -> ProbeResult:
    """The `sdclr_sgd` linear probe (data_and_eval.md §8) on CIFAR-size arrays (uint8 NHWC or float NCHW).

    A new Linear(d→C) (W ~ N(0, 0.01²), b = 0) is trained with SGD (momentum 0.9, lr 30, wd 0, cross-entropy) under
    `schedule`; the backbone stays frozen in eval mode. With `augment`, every training batch is augmented
    (RandomCrop(pad `padding`) + flip) and passed through the backbone; without it, training features are extracted
    once with the inference transform. Validation and test features are extracted once. The classifier of the
    first epoch with the best validation `schedule.select_by` accuracy is tested once.
    """
    target = torch.device(device) if device is not None else module_device(backbone)
    generator = torch.Generator().manual_seed(seed)
    train_y = _labels_tensor(train_labels, len(train_images), num_classes, "train_labels").to(target)
    val_y = _labels_tensor(val_labels, len(val_images), num_classes, "val_labels").to(target)
    test_y = _labels_tensor(test_labels, len(test_images), num_classes, "test_labels").to(target)
    with frozen_backbone(backbone):
        val_features = extract_features(backbone, val_images, eval_batch_size, target).to(target)
        test_features = extract_features(backbone, test_images, eval_batch_size, target).to(target)
        if augment:

            @torch.no_grad()
            def batch_features(batch: torch.Tensor) -> torch.Tensor:
                images = random_crop_flip(to_float_nchw(_take(train_images, batch), target), padding, generator)
                return backbone(images).float()

        else:
            train_features = extract_features(backbone, train_images, eval_batch_size, target).to(target)

            def batch_features(batch: torch.Tensor) -> torch.Tensor:
                return train_features[batch.to(target)]

        def train_epoch(epoch: int, linear: nn.Linear, optimizer: torch.optim.Optimizer) -> float:
            loss = _train_epoch(linear, optimizer, batch_features, train_y, schedule.batch_size, generator)
            _assert_frozen(backbone)
            return loss

        return fit_sgd_probe(val_features, val_y, test_features, test_y, num_classes, train_epoch,
                             schedule=schedule, generator=generator, groups=groups)


def _features_tensor(features: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    tensor = features if isinstance(features, torch.Tensor) else torch.from_numpy(np.asarray(features))
    if tensor.ndim != 2 or not tensor.is_floating_point():
        raise DataError(f"{name} must be a float [N, d] array, got shape {tuple(tensor.shape)} and dtype {tensor.dtype}")
    return tensor.detach().float()


def adam_probe(
    features_train: torch.Tensor | np.ndarray,
    labels_train: np.ndarray | torch.Tensor,
    features_test: torch.Tensor | np.ndarray,
    labels_test: np.ndarray | torch.Tensor,
    num_classes: int,
    *,
    preset: AdamPresetName,
    epochs: int | None = None,
    seed: int,
    groups: Mapping[str, np.ndarray] | None = None,
    device: torch.device | str | None = None,
) -> ProbeResult:
    """An Adam linear probe on precomputed features (data_and_eval.md §8 `bcl_adam`, `gh_adam`, `lotar_adam`).

    A new Linear(d→C) with PyTorch's default initialisation is trained with cross-entropy on minibatches of a fresh
    permutation every epoch (the last partial batch kept); the last epoch is tested. `epochs` overrides the preset's
    count (for small runs; the caller logs it), and the lr decay factor is recomputed for it as BCL does.
    """
    if preset not in ADAM_PRESETS:
        raise ConfigError(f"unknown Adam probe preset {preset!r}; expected one of {sorted(ADAM_PRESETS)}")
    settings = ADAM_PRESETS[preset]
    total_epochs = settings.epochs if epochs is None else epochs
    if total_epochs < 1:
        raise ConfigError(f"epochs must be positive, got {total_epochs}")
    train_x = _features_tensor(features_train, "features_train")
    test_x = _features_tensor(features_test, "features_test")
    if train_x.shape[1] != test_x.shape[1]:
        raise DataError(f"train and test features differ in width: {train_x.shape[1]} vs {test_x.shape[1]}")
    target = torch.device(device) if device is not None else train_x.device
    train_x, test_x = train_x.to(target), test_x.to(target)
    train_y = _labels_tensor(labels_train, train_x.shape[0], num_classes, "labels_train").to(target)
    test_y = _labels_tensor(labels_test, test_x.shape[0], num_classes, "labels_test").to(target)
    generator = torch.Generator().manual_seed(seed)
    linear = _linear(train_x.shape[1], num_classes, generator, "default").to(target)
    optimizer = torch.optim.Adam(linear.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    epoch_loss = []
    for epoch in range(1, total_epochs + 1):
        for group in optimizer.param_groups:
            group["lr"] = settings.lr_at(epoch, total_epochs)
        epoch_loss.append(
            _train_epoch(linear, optimizer, lambda batch: train_x[batch.to(target)], train_y, settings.batch_size, generator)
        )
    per_class, report = evaluate_logits(_logits(linear, test_x), test_y, num_classes, groups)
    return ProbeResult(
        per_class_acc=per_class,
        report=report,
        best_epoch=total_epochs,
        epoch_loss=epoch_loss,
        classifier={name: tensor.detach().cpu().clone() for name, tensor in linear.state_dict().items()},
    )


def kshot_probe(
    features_train: torch.Tensor | np.ndarray,
    labels_train: np.ndarray | torch.Tensor,
    features_test: torch.Tensor | np.ndarray,
    labels_test: np.ndarray | torch.Tensor,
    num_classes: int,
    *,
    k: int,
    draws: int,
    seed: int,
    preset: AdamPresetName = "bcl_adam",
    epochs: int | None = None,
    groups: Mapping[str, np.ndarray] | None = None,
    device: torch.device | str | None = None,
) -> KShotResult:
    """`adam_probe` trained on each of `draws` k-shot subsets of the probe train set (`kshot_indices(labels_train,
    k, draws, seed)`; draw j's probe is seeded with seed + j), tested on the full test set; the reports are averaged
    with `summarize_runs` (mean and population std over draws)."""
    train_x = _features_tensor(features_train, "features_train")
    train_y = _labels_tensor(labels_train, train_x.shape[0], num_classes, "labels_train")
    subsets = kshot_indices(train_y.numpy(), k, draws, seed)
    results = []
    for draw, subset in enumerate(subsets):
        rows = torch.from_numpy(subset)
        results.append(
            adam_probe(
                train_x[rows.to(train_x.device)],
                train_y[rows],
                features_test,
                labels_test,
                num_classes,
                preset=preset,
                epochs=epochs,
                seed=seed + draw,
                groups=groups,
                device=device,
            )
        )
    reports = [{"run": f"draw{draw}", **result.report} for draw, result in enumerate(results)]
    return KShotResult(subsets=subsets, results=results, summary=summarize_runs(reports))
