"""Frozen-backbone feature extraction with the inference transform (data_and_eval.md §4 "Inference", §8).

For CIFAR-size arrays the inference transform is ToTensor: uint8 NHWC in [0, 255] becomes float NCHW in [0, 1].
Normalisation lives inside the backbone (§5), so nothing else is applied here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from ltray.errors import ConfigError, DataError

ImageArray = np.ndarray | torch.Tensor


def to_float_nchw(images: ImageArray, device: torch.device | str | None = None) -> torch.Tensor:
    """ToTensor on a batch: uint8 [N, H, W, 3] → float32 [N, 3, H, W] in [0, 1]; float [N, 3, H, W] passes through.

    The batch moves to `device` (default: where it is; CPU for NumPy input) before the conversion.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if device is not None:
        tensor = tensor.to(device, non_blocking=True)
    if tensor.ndim != 4:
        raise DataError(f"images must be 4-D, got shape {tuple(tensor.shape)}")
    if tensor.dtype == torch.uint8:
        if tensor.shape[-1] != 3:
            raise DataError(f"uint8 images must be NHWC with 3 channels, got shape {tuple(tensor.shape)}")
        return tensor.permute(0, 3, 1, 2).float().div_(255.0)
    if not tensor.is_floating_point():
        raise DataError(f"images must be uint8 NHWC or float NCHW, got dtype {tensor.dtype}")
    if tensor.shape[1] != 3:
        raise DataError(f"float images must be NCHW with 3 channels, got shape {tuple(tensor.shape)}")
    if tensor.numel() and (tensor.min() < 0.0 or tensor.max() > 1.0):
        raise DataError("float images must lie in [0, 1]")
    return tensor.float()


def module_device(module: nn.Module) -> torch.device:
    """The device of the module's first parameter or buffer (CPU for a module without any)."""
    for parameter in module.parameters():
        return parameter.device
    for buffer in module.buffers():
        return buffer.device
    return torch.device("cpu")


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode, then restore each one's own previous mode."""
    modes = [(submodule, submodule.training) for submodule in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for submodule, training in modes:
            submodule.training = training


def _check_features(features: torch.Tensor, batch: int) -> torch.Tensor:
    if features.ndim != 2 or features.shape[0] != batch:
        raise ConfigError(f"the backbone must map [B, 3, H, W] to [B, d]; got {tuple(features.shape)} for B = {batch}")
    return features.float()


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    images: ImageArray,
    batch_size: int = 512,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Features [N, d] (float32, on CPU) of `images` (uint8 NHWC or float NCHW), in eval mode and without grad.

    `device` defaults to the backbone's; the backbone's train/eval modes are restored afterwards, so the function
    can serve as an epoch monitor during training.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    target = torch.device(device) if device is not None else module_device(backbone)
    outputs = []
    with evaluating(backbone):
        for start in range(0, len(images), batch_size):
            batch = to_float_nchw(images[start : start + batch_size], target)
            outputs.append(_check_features(backbone(batch), batch.shape[0]).cpu())
    if not outputs:
        raise DataError("no images to extract features from")
    return torch.cat(outputs)


@torch.no_grad()
def extract_features_from_batches(
    backbone: nn.Module, batches: Iterable[torch.Tensor], device: torch.device | str | None = None
) -> torch.Tensor:
    """Features [N, d] (float32, on CPU) of already-transformed float NCHW batches (e.g. the ImageNet inference
    pipeline: Resize 256 → CenterCrop 224 → ToTensor), in eval mode and without grad."""
    target = torch.device(device) if device is not None else module_device(backbone)
    outputs = []
    with evaluating(backbone):
        for batch in batches:
            batch = to_float_nchw(batch, target)
            outputs.append(_check_features(backbone(batch), batch.shape[0]).cpu())
    if not outputs:
        raise DataError("no images to extract features from")
    return torch.cat(outputs)
