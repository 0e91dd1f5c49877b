from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image, ImageFilter

from ltray.augment import pil
from ltray.augment import randaugment as ra
from ltray.augment.batched import CIFAR_MEAN, CIFAR_STD
from ltray.errors import ConfigError


def photo(width: int = 300, height: int = 250, seed: int = 0) -> Image.Image:
    rs = np.random.RandomState(seed)
    y, x = np.mgrid[0:height, 0:width]
    planes = [127 + 90 * np.sin(x / (17.0 + 5 * c)) * np.cos(y / (23.0 - 3 * c)) for c in range(3)]
    noise = rs.normal(0, 8, (height, width, 3))
    return Image.fromarray(np.clip(np.stack(planes, -1) + noise, 0, 255).astype(np.uint8))


def test_imagenet_train_view_composition() -> None:
    steps = pil.imagenet_train_views().transforms
    crop, flip, jitter, gray, blur, to_tensor = steps
    assert isinstance(crop, T.RandomResizedCrop) and crop.size == (224, 224)
    assert crop.scale == (0.08, 1.0) and crop.interpolation == T.InterpolationMode.BICUBIC
    assert isinstance(flip, T.RandomHorizontalFlip) and flip.p == 0.5
    assert isinstance(jitter, T.RandomApply) and jitter.p == 0.8
    color = jitter.transforms[0]
    assert isinstance(color, T.ColorJitter)
    assert (color.brightness, color.contrast, color.saturation, color.hue) == ((0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.1, 0.1))
    assert isinstance(gray, T.RandomGrayscale) and gray.p == 0.2
    assert isinstance(blur, T.RandomApply) and blur.p == 0.5 and isinstance(blur.transforms[0], pil.GaussianBlurPIL)
    assert blur.transforms[0].radius == (0.1, 2.0)
    assert isinstance(to_tensor, T.ToTensor)
    out = pil.imagenet_train_views()(photo())
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_imagenet_inference_is_resize_then_centre_crop() -> None:
    image = photo(320, 256)
    out = pil.imagenet_inference()(image)
    assert out.shape == (3, 224, 224)
    resized = image.resize((320, 256))  # the short side is already 256
    expected = T.ToTensor()(resized.crop((48, 16, 272, 240)))
    torch.testing.assert_close(out, expected)


def test_imagenet_probe_and_cifar_pipelines() -> None:
    crop, flip, _ = pil.imagenet_probe_train().transforms
    assert crop.interpolation == T.InterpolationMode.BILINEAR and crop.scale == (0.08, 1.0) and crop.size == (224, 224)
    assert isinstance(flip, T.RandomHorizontalFlip)

    sdclr = pil.cifar_train_views_pil(32).transforms
    assert sdclr[0].scale == (0.1, 1.0) and sdclr[0].interpolation == T.InterpolationMode.BICUBIC
    assert isinstance(sdclr[-1], T.ToTensor) and len(sdclr) == 5
    lotar = pil.cifar_train_views_pil(32, "lotar").transforms
    assert lotar[0].scale == (0.08, 1.0) and lotar[0].interpolation == T.InterpolationMode.BILINEAR
    gh = pil.cifar_train_views_pil(32, "gh").transforms
    assert isinstance(gh[-1], T.Normalize) and tuple(gh[-1].mean) == CIFAR_MEAN and tuple(gh[-1].std) == CIFAR_STD
    assert isinstance(pil.cifar_train_views_pil(32, "gh", cifar_normalize=False).transforms[-1], T.ToTensor)
    with pytest.raises(ConfigError):
        pil.cifar_train_views_pil(32, "moco")


def test_seeded_two_views_are_reproducible_distinct_and_leave_the_global_generator_alone() -> None:
    views = pil.TwoViews(pil.cifar_train_views_pil(32))
    image = photo(32, 32, seed=3)
    torch.manual_seed(123)
    a0, a1 = views(image, seed=10, epoch=4, index=17)
    after = torch.rand(3)
    torch.manual_seed(123)
    expected_after = torch.rand(3)
    assert torch.equal(after, expected_after)
    torch.manual_seed(999)  # a different worker state gives the same views
    b0, b1 = views(image, seed=10, epoch=4, index=17)
    assert torch.equal(a0, b0) and torch.equal(a1, b1)
    assert not torch.equal(a0, a1)
    c0, _ = views(image, seed=10, epoch=5, index=17)
    assert not torch.equal(a0, c0)
    u0, u1 = views(image)  # unseeded: plain draws
    assert u0.shape == u1.shape == (3, 32, 32)
    with pytest.raises(ConfigError):
        views(image, seed=1, epoch=2)


def test_gaussian_blur_draws_its_radius_from_torch() -> None:
    image = photo(40, 30)
    torch.manual_seed(5)
    out = pil.GaussianBlurPIL()(image)
    torch.manual_seed(5)
    radius = 0.1 + 1.9 * float(torch.rand(()))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(image.filter(ImageFilter.GaussianBlur(radius=radius))))


@pytest.mark.parametrize("name", [spec.name for spec in ra.OPS])
def test_pil_ops_agree_with_the_batched_ops(name: str) -> None:
    image = photo(11, 9, seed=2)
    batch = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255
    spec = ra.OPS[ra.OP_INDEX[name]]
    value = 0.7 * (spec.high - spec.low) + spec.low
    if spec.signed:
        value = -value
    centre = (0.35, 0.6)
    out_pil = np.asarray(pil.apply_op_pil(name, image, value, centre)).astype(np.float64)
    v = torch.tensor([value], dtype=torch.float64)
    draws = torch.tensor([[0.0, 0.0, 0.0, centre[0], centre[1]]])
    out = ra.apply_op(name, batch, v, draws)
    out_batched = out[0].permute(1, 2, 0).double().numpy() * 255
    tolerance = 1.5 if name in ("Contrast", "Color", "Brightness", "Sharpness") else 1e-3
    assert np.abs(out_batched - out_pil).max() <= tolerance


def test_rand_augment_prob_pil() -> None:
    image = photo(16, 16, seed=4)
    torch.manual_seed(0)
    assert np.array_equal(np.asarray(pil.RandAugmentProbPIL(2, 30.0, 0.0)(image)), np.asarray(image))
    changed = 0
    for seed in range(10):
        torch.manual_seed(seed)
        changed += not np.array_equal(np.asarray(pil.RandAugmentProbPIL(2, 30.0, 1.0)(image)), np.asarray(image))
    assert changed >= 8
    with pytest.raises(ConfigError):
        pil.RandAugmentProbPIL(1, 31.0, 0.5)


def test_bcl_imagenet_views() -> None:
    image = photo(64, 48, seed=6)
    bcl = pil.BCLImageNetTwoViews(size=32)
    plain = pil.TwoViews(pil.imagenet_train_views(32))
    # weight 0: p = 0, so the views are the plain ImageNet views under the same seeds
    zero = bcl(image, 0.0, seed=1, epoch=2, index=9)
    expected = plain(image, seed=1, epoch=2, index=9)
    assert torch.equal(zero[0], expected[0]) and torch.equal(zero[1], expected[1])
    full = bcl(image, 1.0, seed=1, epoch=2, index=9)
    assert full[0].shape == (3, 32, 32)
    assert not (torch.equal(full[0], expected[0]) and torch.equal(full[1], expected[1]))
    again = bcl(image, 1.0, seed=1, epoch=2, index=9)
    assert torch.equal(full[0], again[0]) and torch.equal(full[1], again[1])
