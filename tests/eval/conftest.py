from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from torch import nn


class TinyBackbone(nn.Module):
    """A stand-in backbone: fixed random 1×1 conv → BatchNorm (non-trivial running statistics) → global average
    pooling, mapping [B, 3, H, W] in [0, 1] to [B, 8]."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, kernel_size=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(8, 3, 1, 1, generator=generator))
            self.conv.bias.copy_(torch.randn(8, generator=generator) * 0.1)
            self.bn.running_mean.copy_(torch.randn(8, generator=generator) * 0.1)
            self.bn.running_var.copy_(torch.rand(8, generator=generator) + 0.5)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.bn(self.conv(images))).flatten(1)


def colour_images(per_class: int, num_classes: int = 3, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC images whose class c has a bright channel c over uniform noise: linearly separable by colour."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), per_class)
    images = rng.integers(0, 60, size=(labels.size, size, size, 3))
    images[np.arange(labels.size), :, :, labels % 3] += 150
    return images.astype(np.uint8), labels.astype(np.int64)


@pytest.fixture
def tiny_backbone() -> TinyBackbone:
    return TinyBackbone()


@pytest.fixture
def make_images() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    return colour_images


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine the thread pool costs seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
