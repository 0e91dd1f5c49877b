"""Batched SGD-probe training augmentation for CIFAR-size images (data_and_eval.md §4):
RandomCrop(size, padding 4, zero fill) followed by a horizontal flip with p 0.5, drawn independently per image."""

from __future__ import annotations

import torch

from ltray.errors import DataError


def random_crop_flip(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Crop each image of float [B, C, H, W] at a uniform offset of its zero-padded copy, then flip with p 0.5.

    Random draws come from `generator` (a CPU generator), so the result is reproducible on any device.
    """
    if images.ndim != 4:
        raise DataError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
    batch, channels, height, width = images.shape
    device = images.device
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (batch,), generator=generator).to(device)
    left = torch.randint(0, 2 * padding + 1, (batch,), generator=generator).to(device)
    flip = (torch.rand(batch, generator=generator) < 0.5).to(device)
    rows = top[:, None] + torch.arange(height, device=device)
    columns = left[:, None] + torch.arange(width, device=device)
    columns = torch.where(flip[:, None], columns.flip(1), columns)
    batch_index = torch.arange(batch, device=device)[:, None, None, None]
    channel_index = torch.arange(channels, device=device)[None, :, None, None]
    return padded[batch_index, channel_index, rows[:, None, :, None], columns[:, None, None, :]]
