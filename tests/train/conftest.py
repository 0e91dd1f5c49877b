"""A tiny synthetic `RunData` (random uint8 images) and a small-config helper for training-loop tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ltray.config import Config, load_config
from ltray.data.loading import RunData
from ltray.data.sources import ArraySource
from ltray.data.splits import ItemList, Split
from ltray.data.train_data import TrainData


def synthetic_run_data(n: int = 24, size: int = 8, num_classes: int = 3, pool: int = 0, seed: int = 0) -> RunData:
    """n labelled ID images (every class present, grouped by class) plus an optional unlabelled pool of `pool`."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    labels = np.sort(np.concatenate([np.arange(num_classes), rng.integers(0, num_classes, size=n - num_classes)]))
    split = Split("synthetic", 1, num_classes, {"D_i": ItemList(labels, indices=np.arange(n))})
    source = ArraySource(images, labels.astype(np.int64), "synthetic")
    pool_images = rng.integers(0, 256, size=(pool, size, size, 3), dtype=np.uint8) if pool else None
    train = TrainData(id_images=images, id_labels=labels.astype(np.int64), pool_images=pool_images)
    names = tuple(f"class{c}" for c in range(num_classes))
    return RunData("synthetic", split, source, source, train, num_classes, size, names)


def tiny_config(output_dir: Path, **overrides: Any) -> Config:
    """A validated config for a width-0.125 CIFAR ResNet-18 on CPU, writing under `output_dir`."""
    base: dict[str, Any] = {
        "model.width": 0.125,
        "optim.batch_size": 8,
        "optim.epochs": 3,
        "optim.warmup_epochs": 1,
        "optim.lr": 0.1,
        "run.device": "cpu",
        "run.progress": "off",
        "run.checkpoint_every": 1,
        "run.output_dir": str(output_dir),
        "run.name": "tiny",
    }
    base.update({key.replace("__", "."): value for key, value in overrides.items()})
    return load_config(None, base)


@pytest.fixture
def run_data() -> Callable[..., RunData]:
    return synthetic_run_data


@pytest.fixture
def config(tmp_path: Path) -> Callable[..., Config]:
    def make(**overrides: Any) -> Config:
        return tiny_config(tmp_path / "runs", **overrides)

    return make
