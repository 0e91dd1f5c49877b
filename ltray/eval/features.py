"""Model outputs of images under the inference transform, in eval mode (data_and_eval.md §4 "Inference", §8).

For CIFAR-size arrays the inference transform is ToTensor: uint8 NHWC in [0, 255] becomes float NCHW in [0, 1].
Normalisation lives inside the backbone (§5), so nothing else is applied here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
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
    model: nn.Module,
    images: ImageArray | Iterable[torch.Tensor],
    batch_size: int = 512,
    device: torch.device | str | None = None,
    *,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    normalize: bool = False,
) -> torch.Tensor:
    """Outputs [N, d] (float32, on CPU) of `forward` (default: `model`, e.g. a backbone) on `images`, without grad and
    with every submodule of `model` in eval mode, each one's mode restored afterwards (so it can serve as an epoch
    monitor during training); `normalize` L2-normalises each output row.

    `images` is an array (uint8 NHWC or float NCHW) cut into batches of `batch_size`, or an iterable of batches
    already transformed (e.g. a loader of the ImageNet inference pipeline: Resize 256 → CenterCrop 224 → ToTensor).
    Each batch goes through `to_float_nchw` on `device` (default: the model's).
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    target = torch.device(device) if device is not None else module_device(model)
    batches: Iterable[ImageArray] = images
    if isinstance(images, (np.ndarray, torch.Tensor)):
        batches = (images[start : start + batch_size] for start in range(0, len(images), batch_size))
    outputs = []
    with evaluating(model):
        for batch in batches:
            batch = to_float_nchw(batch, target)
            features = _check_features((forward or model)(batch), batch.shape[0])
            outputs.append((F.normalize(features, dim=1) if normalize else features).cpu())
    if not outputs:
        raise DataError("no images to extract features from")
    return torch.cat(outputs)
