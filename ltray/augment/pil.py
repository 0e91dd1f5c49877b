"""Per-item PIL pipelines for image-root data sets, run in loader workers (docs/math/data_and_eval.md §4, bcl.md §4).

Each factory returns a torchvision composition with the reference's exact transforms. They draw their randomness
from torch's global CPU generator; `TwoViews` can seed it per (seed, epoch, index, view) for the duration of one
view, so views do not depend on the worker count and the caller's generator is left untouched.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from ltray.augment import rng
from ltray.augment.batched import CIFAR_MEAN, CIFAR_STD, PRESETS
from ltray.augment.randaugment import CUTOUT_FILL, MAX_MAGNITUDE, OPS, SLOT_SHARED_U, bcl_params
from ltray.errors import ConfigError

BLUR_RADIUS = (0.1, 2.0)
BLUR_PROB = 0.5
_INTERPOLATION = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}


class GaussianBlurPIL:
    """PIL ImageFilter.GaussianBlur with a radius drawn uniformly from `radius` (SimCLR's ImageNet blur)."""

    def __init__(self, radius: tuple[float, float] = BLUR_RADIUS) -> None:
        self.radius = radius

    def __call__(self, image: Image.Image) -> Image.Image:
        low, high = self.radius
        r = low + (high - low) * float(torch.rand(()))
        return image.filter(ImageFilter.GaussianBlur(radius=r))


def _simclr_base(size: int, scale: tuple[float, float], interpolation: str) -> list[Callable]:
    return [
        T.RandomResizedCrop(size, scale=scale, interpolation=_INTERPOLATION[interpolation]),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
    ]


def _imagenet_base(size: int) -> list[Callable]:
    return _simclr_base(size, (0.08, 1.0), "bicubic") + [T.RandomApply([GaussianBlurPIL()], p=BLUR_PROB)]


def imagenet_train_views(size: int = 224) -> T.Compose:
    """One ImageNet pre-training view: RRC(size, (0.08, 1), bicubic) → flip → jitter p 0.8 → grayscale p 0.2 →
    Gaussian blur p 0.5, radius ~ U(0.1, 2) → ToTensor."""
    return T.Compose(_imagenet_base(size) + [T.ToTensor()])


def imagenet_inference(resize: int = 256, crop: int = 224) -> T.Compose:
    """Resize 256 (bilinear) → CenterCrop 224 → ToTensor."""
    return T.Compose([T.Resize(resize), T.CenterCrop(crop), T.ToTensor()])


def imagenet_probe_train(size: int = 224) -> T.Compose:
    """SGD-probe training on ImageNet: RandomResizedCrop(size) (bilinear, scale (0.08, 1)) → flip → ToTensor."""
    return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor()])


def cifar_train_views_pil(size: int = 32, preset: str = "sdclr", cifar_normalize: bool | None = None) -> T.Compose:
    """The CIFAR pre-training view of `preset` as a PIL pipeline (the reference's form, for parity checks)."""
    if preset not in PRESETS:
        raise ConfigError(f"aug_preset must be one of {sorted(PRESETS)}, got {preset!r}")
    config = PRESETS[preset]
    steps = _simclr_base(size, config.scale, config.interpolation) + [T.ToTensor()]
    if config.cifar_normalize if cifar_normalize is None else cifar_normalize:
        steps.append(T.Normalize(CIFAR_MEAN, CIFAR_STD))
    return T.Compose(steps)


class TwoViews:
    """Two independent draws of `transform`. With (seed, epoch, index) given, view v runs under torch's CPU
    generator seeded from (seed, epoch, index, v), restored afterwards."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(
        self, image: Image.Image, *, seed: int | None = None, epoch: int | None = None, index: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys = (seed, epoch, index)
        if all(k is None for k in keys):
            return self.transform(image), self.transform(image)
        if any(k is None for k in keys):
            raise ConfigError("seeded views need all of seed, epoch and index")
        views = []
        for view in (0, 1):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(rng.seed_for(seed, epoch, index, view))  # type: ignore[arg-type]
                views.append(self.transform(image))
        return views[0], views[1]


def _affine(image: Image.Image, data: tuple[float, ...]) -> Image.Image:
    return image.transform(image.size, Image.Transform.AFFINE, data, resample=Image.Resampling.NEAREST)


def _cutout(image: Image.Image, side_fraction: float, centre_x: float, centre_y: float) -> Image.Image:
    width, height = image.size
    side = side_fraction * width
    if side <= 0:
        return image
    x0 = int(np.floor(max(0.0, centre_x * width - side / 2.0)))
    y0 = int(np.floor(max(0.0, centre_y * height - side / 2.0)))
    out = image.copy()
    fill = tuple(round(c * 255.0) for c in CUTOUT_FILL)
    ImageDraw.Draw(out).rectangle((x0, y0, x0 + side, y0 + side), fill=fill)
    return out


def apply_op_pil(name: str, image: Image.Image, value: float, centre: tuple[float, float]) -> Image.Image:
    """One RandAugment op on an RGB PIL image, with the semantics of `ltray.augment.randaugment`."""
    width, height = image.size
    ops: dict[str, Callable[[], Image.Image]] = {
        "ShearX": lambda: _affine(image, (1, value, 0, 0, 1, 0)),
        "ShearY": lambda: _affine(image, (1, 0, 0, value, 1, 0)),
        "TranslateX": lambda: _affine(image, (1, 0, value * width, 0, 1, 0)),
        "TranslateY": lambda: _affine(image, (1, 0, 0, 0, 1, value * height)),
        "Rotate": lambda: image.rotate(value),
        "AutoContrast": lambda: ImageOps.autocontrast(image),
        "Invert": lambda: ImageOps.invert(image),
        "Equalize": lambda: ImageOps.equalize(image),
        # Pillow's annotation types the threshold int; it compares pixel values with it, so a float works
        "Solarize": lambda: ImageOps.solarize(image, value),  # type: ignore[arg-type]
        "Posterize": lambda: ImageOps.posterize(image, max(1, int(value))),
        "Contrast": lambda: ImageEnhance.Contrast(image).enhance(value),
        "Color": lambda: ImageEnhance.Color(image).enhance(value),
        "Brightness": lambda: ImageEnhance.Brightness(image).enhance(value),
        "Sharpness": lambda: ImageEnhance.Sharpness(image).enhance(value),
        "Cutout": lambda: _cutout(image, value, *centre),
    }
    if name not in ops:
        raise ConfigError(f"unknown RandAugment op {name!r}")
    return ops[name]()


class RandAugmentProbPIL:
    """RandAugment_prob(n, m, p) on one PIL image (docs/math/bcl.md §4), drawing from torch's CPU generator."""

    def __init__(self, n_ops: int, magnitude: float, prob: float) -> None:
        if not 0.0 <= magnitude <= MAX_MAGNITUDE:
            raise ConfigError(f"RandAugment magnitude must be in [0, 30], got {magnitude}")
        self.n_ops = n_ops
        self.magnitude = magnitude
        self.prob = prob

    def __call__(self, image: Image.Image) -> Image.Image:
        for _ in range(self.n_ops):
            draws = torch.rand(5).tolist()  # op, apply, sign, cutout centre x, centre y
            spec = OPS[min(int(draws[0] * len(OPS)), len(OPS) - 1)]
            if draws[1] < self.prob:
                value = self.magnitude / MAX_MAGNITUDE * (spec.high - spec.low) + spec.low
                if spec.signed and draws[2] < 0.5:
                    value = -value
                image = apply_op_pil(spec.name, image, value, (draws[3], draws[4]))
        return image


class BCLImageNetTwoViews:
    """BCL's ImageNet views (GH port): the ImageNet pipeline with blur, then RandAugment_prob(2, M·w·u, w), then
    ToTensor. u is drawn once per item fetch from (seed, epoch, index) and shared by both views."""

    def __init__(self, size: int = 224, strength: float = MAX_MAGNITUDE) -> None:
        bcl_params(torch.zeros(1), 2, strength, torch.zeros(1), "imagenet")  # validates strength
        self.base = _imagenet_base(size)
        self.strength = strength

    def __call__(
        self, image: Image.Image, weight: float, *, seed: int, epoch: int, index: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        u = rng.uniform(seed, epoch, torch.tensor([index]), rng.SHARED_VIEW, SLOT_SHARED_U)
        n_ops, magnitude, prob = bcl_params(torch.tensor([weight]), 2, self.strength, u, "imagenet")
        augment = RandAugmentProbPIL(n_ops, float(magnitude[0]), float(prob[0]))
        transform = T.Compose(self.base + [augment, T.ToTensor()])
        return TwoViews(transform)(image, seed=seed, epoch=epoch, index=index)
