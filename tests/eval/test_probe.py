from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from ltray.errors import ConfigError, DataError, LtrayError
from ltray.eval.features import extract_features
from ltray.eval.metrics import per_class_accuracy
from ltray.eval.probe import (
    ADAM_PRESETS,
    CIFAR_FEW,
    CIFAR_FULL,
    IN100_FEW,
    IN100_FULL,
    ProbeSchedule,
    adam_probe,
    frozen_backbone,
    kshot_probe,
    sdclr_sgd_probe,
)

ImageMaker = Callable[..., tuple[np.ndarray, np.ndarray]]
TOY = ProbeSchedule("toy", epochs=4, batch_size=16, milestones=(2, 4), validate_every=1, select_by="top1")


def expected_lr(epoch: int, ranges: list[tuple[int, int, float]]) -> float:
    return next(lr for first, last, lr in ranges if first <= epoch <= last)


@pytest.mark.parametrize(
    ("schedule", "ranges", "validated", "select_by", "batch"),
    [
        (CIFAR_FULL, [(1, 9, 30.0), (10, 19, 3.0), (20, 30, 0.3)], list(range(1, 31)), "top1", 128),
        (CIFAR_FEW, [(1, 39, 30.0), (40, 59, 3.0), (60, 100, 0.3)], list(range(5, 101, 5)), "top1", 128),
        (IN100_FULL, [(1, 10, 30.0), (11, 20, 3.0), (21, 30, 0.3)], list(range(2, 31, 2)), "top5", 512),
        (IN100_FEW, [(1, 40, 30.0), (41, 60, 3.0), (61, 100, 0.3)], list(range(10, 101, 10)), "top5", 512),
    ],
)
def test_probe_schedules_match_the_table(
    schedule: ProbeSchedule, ranges: list[tuple[int, int, float]], validated: list[int], select_by: str, batch: int
) -> None:
    assert schedule.epochs == ranges[-1][1]
    for epoch in range(1, schedule.epochs + 1):
        assert schedule.lr_at(epoch) == pytest.approx(expected_lr(epoch, ranges), rel=1e-12), epoch
    assert list(schedule.validation_epochs()) == validated
    assert schedule.select_by == select_by and schedule.batch_size == batch
    assert (schedule.momentum, schedule.weight_decay) == (0.9, 0.0)
    with pytest.raises(ConfigError):
        schedule.lr_at(schedule.epochs + 1)
    with pytest.raises(ConfigError):
        schedule.lr_at(0)


def test_schedule_rejects_bad_values() -> None:
    with pytest.raises(ConfigError):
        ProbeSchedule("bad", epochs=3, batch_size=8, milestones=(), validate_every=4, select_by="top1")
    with pytest.raises(ConfigError):
        ProbeSchedule("bad", epochs=3, batch_size=8, milestones=(), validate_every=1, select_by="top3")  # type: ignore[arg-type]


def test_adam_lr_decay() -> None:
    bcl = ADAM_PRESETS["bcl_adam"]
    factor = 10.0 ** (-4.0 / 500)  # (1e-6 / 1e-2) ** (1 / 500)
    assert bcl.decay_factor() == pytest.approx(factor, rel=1e-12)
    assert factor == pytest.approx(0.981747, abs=1e-6)
    assert bcl.lr_at(1) == pytest.approx(1e-2)
    assert bcl.lr_at(2) == pytest.approx(1e-2 * factor)
    assert bcl.lr_at(500) * factor == pytest.approx(1e-6, rel=1e-9)
    assert (bcl.weight_decay, bcl.batch_size, bcl.epochs) == (5e-6, 1000, 500)
    assert bcl.lr_at(10, epochs=10) * bcl.decay_factor(10) == pytest.approx(1e-6, rel=1e-9)
    assert ADAM_PRESETS["gh_adam"].lr_at(37) == bcl.lr_at(37)
    lotar = ADAM_PRESETS["lotar_adam"]
    assert [lotar.lr_at(epoch) for epoch in (1, 45, 90)] == [3e-4, 3e-4, 3e-4]
    assert (lotar.weight_decay, lotar.batch_size, lotar.epochs) == (0.0, 512, 90)


def colour_splits(make_images: ImageMaker) -> tuple[np.ndarray, ...]:
    train_x, train_y = make_images(per_class=12, seed=1)
    val_x, val_y = make_images(per_class=6, seed=2)
    test_x, test_y = make_images(per_class=6, seed=3)
    return train_x, train_y, val_x, val_y, test_x, test_y


def test_sgd_probe_learns_and_leaves_backbone_bit_identical(tiny_backbone: nn.Module, make_images: ImageMaker) -> None:
    before = {name: tensor.clone() for name, tensor in tiny_backbone.state_dict().items()}
    tiny_backbone.train()
    result = sdclr_sgd_probe(tiny_backbone, *colour_splits(make_images), 3, schedule=TOY, device="cpu", seed=0)
    assert result.report["all"] >= 95.0
    assert result.per_class_acc.shape == (3,)
    assert [epoch for epoch, _ in result.val_curve] == [1, 2, 3, 4]
    assert len(result.epoch_loss) == 4
    for name, tensor in tiny_backbone.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert all(parameter.requires_grad for parameter in tiny_backbone.parameters())
    assert tiny_backbone.training and tiny_backbone.bn.training


def test_sgd_probe_tests_the_best_validation_epoch(tiny_backbone: nn.Module, make_images: ImageMaker) -> None:
    train_x, train_y, val_x, val_y, test_x, test_y = colour_splits(make_images)
    noisy_val_y = val_y.copy()
    noisy_val_y[::3] = (noisy_val_y[::3] + 1) % 3
    schedule = ProbeSchedule("toy2", epochs=4, batch_size=8, milestones=(3,), validate_every=2, select_by="top1")
    result = sdclr_sgd_probe(
        tiny_backbone, train_x, train_y, val_x, noisy_val_y, test_x, test_y, 3,
        schedule=schedule, device="cpu", seed=3, augment=False,
    )
    assert [epoch for epoch, _ in result.val_curve] == [2, 4]
    accuracies = [accuracy for _, accuracy in result.val_curve]
    assert result.best_epoch == result.val_curve[int(np.argmax(accuracies))][0]
    classifier = nn.Linear(8, 3)
    classifier.load_state_dict(result.classifier)
    with torch.no_grad():
        val_pred = classifier(extract_features(tiny_backbone, val_x)).argmax(1).numpy()
        test_pred = classifier(extract_features(tiny_backbone, test_x)).argmax(1).numpy()
    assert 100.0 * np.mean(val_pred == noisy_val_y) == pytest.approx(max(accuracies))
    np.testing.assert_allclose(result.per_class_acc, per_class_accuracy(test_pred, test_y, 3))


def test_sgd_probe_is_deterministic_given_the_seed(tiny_backbone: nn.Module, make_images: ImageMaker) -> None:
    splits = colour_splits(make_images)
    schedule = ProbeSchedule("toy3", epochs=2, batch_size=16, milestones=(), validate_every=1, select_by="top5")
    runs = [sdclr_sgd_probe(tiny_backbone, *splits, 3, schedule=schedule, seed=5) for _ in range(2)]
    for name, tensor in runs[0].classifier.items():
        assert torch.equal(tensor, runs[1].classifier[name])
    assert runs[0].epoch_loss == runs[1].epoch_loss


class RetrainingBackbone(nn.Module):
    """A backbone whose forward switches its BN back to train mode, as a buggy model might."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.inner.bn.train()
        return self.inner(images)


class CountingBackbone(nn.Module):
    """A backbone that counts its calls in a buffer, so it changes even in eval mode."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(images)


@pytest.mark.parametrize(("wrapper", "message"), [(RetrainingBackbone, "eval mode"), (CountingBackbone, "changed")])
def test_sgd_probe_refuses_a_backbone_that_does_not_stay_frozen(
    tiny_backbone: nn.Module, make_images: ImageMaker, wrapper: type[nn.Module], message: str
) -> None:
    backbone = wrapper(tiny_backbone)
    schedule = ProbeSchedule("toy4", epochs=1, batch_size=64, milestones=(), validate_every=1, select_by="top1")
    with pytest.raises(LtrayError, match=message):
        sdclr_sgd_probe(backbone, *colour_splits(make_images), 3, schedule=schedule, seed=0)
    assert all(parameter.requires_grad for parameter in backbone.parameters())


def test_frozen_backbone_context(tiny_backbone: nn.Module) -> None:
    tiny_backbone.train()
    with frozen_backbone(tiny_backbone):
        assert not tiny_backbone.training and not tiny_backbone.bn.training
        assert not any(parameter.requires_grad for parameter in tiny_backbone.parameters())
    assert tiny_backbone.training
    with pytest.raises(LtrayError, match="changed"), frozen_backbone(tiny_backbone):
        with torch.no_grad():
            tiny_backbone.bn.running_mean.add_(1.0)


def test_sgd_probe_rejects_mismatched_labels(tiny_backbone: nn.Module, make_images: ImageMaker) -> None:
    train_x, train_y, val_x, val_y, test_x, test_y = colour_splits(make_images)
    with pytest.raises(DataError):
        sdclr_sgd_probe(tiny_backbone, train_x, train_y[:-1], val_x, val_y, test_x, test_y, 3, schedule=TOY, seed=0)
    with pytest.raises(DataError):
        sdclr_sgd_probe(tiny_backbone, train_x, train_y, val_x, val_y, test_x, test_y, 2, schedule=TOY, seed=0)


def sign_features(per_class: int, seed: int, num_classes: int = 3, width: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means with random ±1 coordinates plus small noise: separable with a wide margin."""
    means = torch.randint(0, 2, (num_classes, width), generator=torch.Generator().manual_seed(99)).float() * 2 - 1
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    noise = torch.randn(labels.numel(), width, generator=torch.Generator().manual_seed(seed)) * 0.3
    return means[labels] + noise, labels


def test_adam_probe_learns_reports_last_epoch_and_is_seeded() -> None:
    train_x, train_y = sign_features(10, seed=1)
    test_x, test_y = sign_features(10, seed=2)
    groups = {"many": np.array([0]), "medium": np.array([1]), "few": np.array([2])}
    result = adam_probe(train_x, train_y, test_x, test_y, 3, preset="bcl_adam", epochs=15, seed=0, groups=groups)
    assert result.report["all"] == pytest.approx(100.0)
    assert result.report["group_std"] == pytest.approx(0.0)
    assert result.best_epoch == 15 and len(result.epoch_loss) == 15
    assert result.epoch_loss[-1] < result.epoch_loss[0]
    again = adam_probe(train_x, train_y, test_x, test_y, 3, preset="bcl_adam", epochs=15, seed=0, groups=groups)
    assert torch.equal(result.classifier["weight"], again.classifier["weight"])
    with pytest.raises(ConfigError):
        adam_probe(train_x, train_y, test_x, test_y, 3, preset="sgd", seed=0)  # type: ignore[arg-type]
    with pytest.raises(DataError):
        adam_probe(train_x, train_y, test_x[:, :5], test_y, 3, preset="bcl_adam", epochs=1, seed=0)


def test_kshot_probe_averages_draws() -> None:
    train_x, train_y = sign_features(12, seed=1)
    test_x, test_y = sign_features(5, seed=2)
    result = kshot_probe(train_x, train_y, test_x, test_y, 3, k=4, draws=3, seed=7, epochs=5)
    assert len(result.subsets) == 3 and len(result.results) == 3
    for subset in result.subsets:
        assert np.bincount(train_y.numpy()[subset], minlength=3).tolist() == [4, 4, 4]
    assert result.summary["n_runs"] == 3
    mean_all = np.mean([run.report["all"] for run in result.results])
    assert result.mean_report["all"] == pytest.approx(mean_all)
    assert result.summary["std"]["all"] == pytest.approx(np.std([run.report["all"] for run in result.results]))
    assert math.isfinite(result.mean_report["class_std"])


def test_scaled_adam_probes_scale_their_own_preset() -> None:
    """`eval.probe_epochs_scale` shortens each Adam preset from its own length: lotar_adam's 90, bcl_adam's 500."""
    from ltray.config import load_config
    from ltray.evaluate import _adam_epochs

    half = load_config(None, {"eval.probe_epochs_scale": 0.5})
    assert _adam_epochs(half, "lotar_adam") == 45 and _adam_epochs(half, "bcl_adam") == 250
    assert _adam_epochs(load_config(None, {}), "lotar_adam") is None  # unscaled: the preset's own
