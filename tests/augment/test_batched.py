from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as F1
import torchvision.transforms.v2.functional as F2
from PIL import Image
from torchvision.transforms import InterpolationMode, RandomResizedCrop

from ltray.augment import batched
from ltray.augment.batched import (
    CIFAR_MEAN,
    CIFAR_STD,
    SimCLRViews,
    color_jitter,
    crop_resize,
    resize_weights,
    sample_resized_crop,
)
from ltray.errors import ConfigError, DataError

MODES = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}


def random_images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def smooth_images(batch: int, size: int) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    planes = []
    for k in range(batch):
        channels = [
            127 + 100 * torch.sin((x + 2 * k) / 4.0 + c) * torch.cos((y - c) / 5.0) for c in range(3)
        ]
        planes.append(torch.stack(channels, dim=-1))
    return torch.stack(planes).round().clamp(0, 255).to(torch.uint8)


# ---------------------------------------------------------------- RandomResizedCrop sampling


def test_crop_attempts_pick_the_first_box_that_fits() -> None:
    # 32x32 image, scale (0.1, 1). Attempts 0-2 ask for the whole area at ratio 4/3 (w = round(sqrt(1024·4/3)) = 37,
    # too wide); attempt 3 asks for 25% of the area at ratio 1 (w = h = 16); the rest would fit too.
    u_area = torch.full((1, 10), 0.5)
    u_ratio = torch.full((1, 10), 0.5)
    u_area[0, :3] = 1.0 - 2**-24
    u_ratio[0, :3] = 1.0 - 2**-24
    u_area[0, 3] = (0.25 - 0.1) / 0.9
    top, left, h, w = sample_resized_crop(u_area, u_ratio, torch.tensor([0.5]), torch.tensor([0.99]), 32, 32, (0.1, 1.0))
    assert (h.item(), w.item()) == (16, 16)
    assert top.item() == math.floor(0.5 * 17)
    assert left.item() == math.floor(0.99 * 17)


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        (32, 32, (0, 0, 32, 32)),  # ratio 1 is within (3/4, 4/3): the whole image
        (10, 40, (0, 13, 10, 13)),  # too wide: h = 10, w = round(10·4/3) = 13, centred: left = (40−13)//2
        (40, 10, (13, 0, 13, 10)),  # too tall: w = 10, h = round(10/(3/4)) = 13, top = (40−13)//2
    ],
)
def test_crop_falls_back_to_the_central_crop(height: int, width: int, expected: tuple[int, int, int, int]) -> None:
    never_fits = torch.full((1, 10), 1.0 - 2**-24)  # the whole area at ratio 4/3 or more: never fits here
    u_ratio = never_fits if height <= width else torch.zeros(1, 10)
    top, left, h, w = sample_resized_crop(never_fits, u_ratio, torch.rand(1), torch.rand(1), height, width, (1.0, 1.0))
    assert (top.item(), left.item(), h.item(), w.item()) == expected


@pytest.mark.parametrize("preset", ["sdclr", "lotar"])
def test_crop_boxes_stay_in_range_and_match_torchvision_statistics(preset: str) -> None:
    n = 20_000
    views = SimCLRViews(32, preset)
    scale = views.config.scale
    p = views.draw_params(torch.arange(n), epoch=1, seed=3, view=0, height=32, width=32)
    h, w, top, left = p.height.double(), p.width.double(), p.top, p.left
    assert bool((top >= 0).all() and (left >= 0).all())
    assert bool((top + p.height <= 32).all() and (left + p.width <= 32).all())
    # some real box within ±0.5 px of the integer one has its area and ratio inside the configured ranges
    assert bool(((w + 0.5) * (h + 0.5) >= scale[0] * 1024 - 1e-9).all())
    assert bool(((w - 0.5) * (h - 0.5) <= 1024 + 1e-9).all())
    assert bool(((w + 0.5) / (h - 0.5) >= 0.75).all() and ((w - 0.5) / (h + 0.5) <= 4 / 3).all())

    torch.manual_seed(0)
    reference = torch.tensor(
        [RandomResizedCrop.get_params(torch.empty(3, 32, 32), list(scale), [3 / 4, 4 / 3]) for _ in range(n // 3)],
        dtype=torch.float64,
    )  # rows (top, left, h, w)
    ref_area = reference[:, 2] * reference[:, 3] / 1024
    ours_area = h * w / 1024
    assert abs(ours_area.mean() - ref_area.mean()) < 0.015  # standard error of the difference ≈ 0.0035
    assert abs(torch.log(w / h).mean() - torch.log(reference[:, 3] / reference[:, 2]).mean()) < 0.01
    assert abs(top.double().mean() - reference[:, 0].mean()) < 0.4


def test_random_rates_factor_ranges_and_orders() -> None:
    n = 20_000
    p = SimCLRViews(32).draw_params(torch.arange(n), epoch=0, seed=0, view=1, height=32, width=32)
    assert abs(p.flip.double().mean().item() - 0.5) < 0.015
    assert abs(p.jitter.double().mean().item() - 0.8) < 0.015
    assert abs(p.grayscale.double().mean().item() - 0.2) < 0.015
    bcs, hue = p.factors[:, :3], p.factors[:, 3]
    assert bool((bcs >= 0.6).all() and (bcs < 1.4).all() and (hue >= -0.1).all() and (hue < 0.1).all())
    assert torch.allclose(bcs.mean(0), torch.ones(3), atol=0.01) and abs(hue.mean().item()) < 0.003
    assert torch.equal(p.order.sort(dim=1).values, torch.arange(4).expand(n, 4))
    counts = {perm: 0 for perm in itertools.permutations(range(4))}
    for row in p.order.tolist():
        counts[tuple(row)] += 1
    assert all(abs(c / n - 1 / 24) < 0.012 for c in counts.values())


# ---------------------------------------------------------------- crop + resize


BOXES = [(0, 0, 32, 32), (3, 5, 10, 14), (10, 2, 20, 7), (0, 0, 5, 5), (7, 9, 25, 23), (1, 1, 31, 30)]


def box_tensors() -> tuple[torch.Tensor, ...]:
    return tuple(torch.tensor(column) for column in zip(*BOXES))


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("size", [32, 16, 40])
def test_crop_resize_equals_torchvision_antialiased_resized_crop(interpolation: str, size: int) -> None:
    images = random_images(len(BOXES), 32).permute(0, 3, 1, 2).float() / 255
    out = crop_resize(images, *box_tensors(), size, interpolation)
    for k, (top, left, h, w) in enumerate(BOXES):
        expected = F2.resized_crop(images[k], top, left, h, w, [size, size], interpolation=MODES[interpolation], antialias=True)
        torch.testing.assert_close(out[k], expected, atol=2e-6, rtol=0)


@pytest.mark.parametrize(("interpolation", "tolerance"), [("bicubic", 2), ("bilinear", 1)])
def test_crop_resize_matches_pil_on_smooth_images(interpolation: str, tolerance: int) -> None:
    # PIL rounds to uint8 between its horizontal and vertical passes (and clips bicubic overshoot there), so on
    # noise it can differ by many levels; on smooth images only the rounding remains.
    images = smooth_images(len(BOXES), 32)
    floats = images.permute(0, 3, 1, 2).float() / 255
    for size in (32, 16):
        out = crop_resize(floats, *box_tensors(), size, interpolation).clamp(0, 1) * 255
        for k, (top, left, h, w) in enumerate(BOXES):
            pil = F1.resized_crop(Image.fromarray(images[k].numpy()), top, left, h, w, [size, size], interpolation=MODES[interpolation])
            expected = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float()
            assert (out[k] - expected).abs().max().item() <= tolerance


def test_resize_weights_rows_sum_to_one_and_stay_in_the_crop() -> None:
    top, left, h, w = box_tensors()
    weights = resize_weights(top, h, 32, 16, "bicubic")
    torch.testing.assert_close(weights.sum(-1), torch.ones(len(BOXES), 16))
    for k, (t, _, hk, _) in enumerate(BOXES):
        outside = torch.ones(32, dtype=torch.bool)
        outside[t : t + hk] = False
        assert bool((weights[k][:, outside] == 0).all())


def test_flip_mirrors_the_resized_crop() -> None:
    images = random_images(len(BOXES), 32).permute(0, 3, 1, 2).float() / 255
    plain = crop_resize(images, *box_tensors(), 24, "bicubic")
    flip = torch.tensor([True, False, True, False, True, True])
    flipped = crop_resize(images, *box_tensors(), 24, "bicubic", flip=flip)
    for k in range(len(BOXES)):
        expected = plain[k].flip(-1) if flip[k] else plain[k]
        torch.testing.assert_close(flipped[k], expected, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- colour


def test_color_jitter_follows_each_samples_order_like_torchvision() -> None:
    images = random_images(6, 12, seed=2).permute(0, 3, 1, 2).float() / 255
    factors = torch.tensor(
        [[1.4, 0.6, 1.3, 0.1], [0.6, 1.4, 0.7, -0.1], [1.2, 1.1, 0.6, 0.05], [0.9, 0.8, 1.4, -0.07],
         [1.0, 1.0, 1.0, 0.0], [0.7, 1.3, 1.2, 0.09]]
    )
    order = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1], [0, 1, 2, 3], [3, 0, 2, 1]])
    applied = torch.tensor([True, True, True, True, True, False])
    out = color_jitter(images, factors, order, applied)
    reference_ops = [F1.adjust_brightness, F1.adjust_contrast, F1.adjust_saturation, F1.adjust_hue]
    for k in range(6):
        expected = images[k]
        if applied[k]:
            for op in order[k].tolist():
                expected = reference_ops[op](expected, factors[k, op].item())
        torch.testing.assert_close(out[k], expected, atol=3e-6, rtol=0)


def test_hue_of_grey_and_primary_pixels() -> None:
    pixels = torch.tensor([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.2, 0.2, 0.8]]).T.reshape(1, 3, 1, 4)
    third = batched.adjust_hue(pixels, torch.tensor([1 / 3]))
    # grey is unchanged; a third of a turn maps red → green, green → blue, blue-ish → red-ish
    expected = torch.tensor([[0.5, 0.5, 0.5], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.8, 0.2, 0.2]]).T.reshape(1, 3, 1, 4)
    torch.testing.assert_close(third, expected, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- SimCLRViews


@pytest.mark.parametrize("preset", ["sdclr", "gh", "lotar"])
@pytest.mark.parametrize("size", [16, 32])
def test_views_render_the_drawn_parameters_with_torchvision_semantics(preset: str, size: int) -> None:
    images = smooth_images(16, 32)
    index = torch.arange(100, 116)
    views = SimCLRViews(size, preset, cifar_normalize=False)
    floats = images.permute(0, 3, 1, 2).float() / 255
    p = views.draw_params(index, epoch=2, seed=5, view=1, height=32, width=32)
    out = views.render(floats, p, index, 2, 5, 1)
    mode = MODES[views.config.interpolation]
    reference_ops = [F1.adjust_brightness, F1.adjust_contrast, F1.adjust_saturation, F1.adjust_hue]
    for k in range(16):
        expected = F2.resized_crop(
            floats[k], p.top[k].item(), p.left[k].item(), p.height[k].item(), p.width[k].item(), [size, size],
            interpolation=mode, antialias=True,
        )
        if p.flip[k]:
            expected = F2.horizontal_flip(expected)
        expected = expected.clamp(0, 1)
        if p.jitter[k]:
            for op in p.order[k].tolist():
                expected = reference_ops[op](expected, p.factors[k, op].item())
        if p.grayscale[k]:
            expected = F1.rgb_to_grayscale(expected, num_output_channels=3)
        torch.testing.assert_close(out[k], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("preset", ["sdclr", "gh", "lotar"])
def test_views_shape_dtype_range_and_layouts(preset: str) -> None:
    images = random_images(8, 32)
    index = torch.arange(8)
    views = SimCLRViews(16, preset)
    v0, v1 = views(images, index, epoch=1, seed=0)
    assert v0.shape == v1.shape == (8, 3, 16, 16)
    assert v0.dtype == torch.float32
    chw0, _ = views(images.permute(0, 3, 1, 2), index, epoch=1, seed=0)
    assert torch.equal(v0, chw0)
    if preset == "gh":
        raw = SimCLRViews(16, preset, cifar_normalize=False).single_view(images, index, 1, 0, 0)
        mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
        torch.testing.assert_close(v0, (raw - mean) / std)
        assert bool((raw >= 0).all() and (raw <= 1).all())
    else:
        assert bool((v0 >= 0).all() and (v0 <= 1).all() and (v1 >= 0).all() and (v1 <= 1).all())


def test_views_are_deterministic_and_independent_of_batch_composition() -> None:
    images = random_images(12, 16, seed=1)
    index = torch.arange(40, 52)
    views = SimCLRViews(16)
    v0, v1 = views(images, index, epoch=3, seed=7)
    again0, again1 = views(images, index, epoch=3, seed=7)
    assert torch.equal(v0, again0) and torch.equal(v1, again1)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    p0, p1 = views(images[perm], index[perm], epoch=3, seed=7)
    torch.testing.assert_close(p0, v0[perm], atol=1e-6, rtol=0)
    torch.testing.assert_close(p1, v1[perm], atol=1e-6, rtol=0)
    half0, _ = views(images[:5], index[:5], epoch=3, seed=7)
    torch.testing.assert_close(half0, v0[:5], atol=1e-6, rtol=0)


def test_two_views_differ_and_depend_on_epoch_and_seed() -> None:
    images = random_images(8, 16, seed=3)
    index = torch.arange(8)
    views = SimCLRViews(16)
    v0, v1 = views(images, index, epoch=0, seed=0)
    assert all(not torch.equal(v0[k], v1[k]) for k in range(8))
    next_epoch, _ = views(images, index, epoch=1, seed=0)
    other_seed, _ = views(images, index, epoch=0, seed=1)
    assert all(not torch.equal(v0[k], next_epoch[k]) and not torch.equal(v0[k], other_seed[k]) for k in range(8))


class RecordingHook:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int, torch.Tensor, float, float]] = []

    def __call__(self, images: torch.Tensor, index: torch.Tensor, epoch: int, view: int, seed: int) -> torch.Tensor:
        self.calls.append((view, epoch, seed, index.clone(), images.min().item(), images.max().item()))
        return images * 0.5


@pytest.mark.parametrize("preset", ["sdclr", "gh"])
def test_extra_hook_runs_per_view_on_unit_range_images_before_normalisation(preset: str) -> None:
    images = random_images(6, 32, seed=4)
    index = torch.arange(6) * 3
    hook = RecordingHook()
    hooked = SimCLRViews(32, preset, extra=hook)(images, index, epoch=5, seed=9)
    plain = SimCLRViews(32, preset, cifar_normalize=False)(images, index, epoch=5, seed=9)
    assert [c[:3] for c in hook.calls] == [(0, 5, 9), (1, 5, 9)]
    assert all(torch.equal(c[3], index) and c[4] >= 0.0 and c[5] <= 1.0 for c in hook.calls)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    for out, raw in zip(hooked, plain):
        expected = (0.5 * raw - mean) / std if preset == "gh" else 0.5 * raw
        torch.testing.assert_close(out, expected)


def test_bad_configuration_and_inputs_are_rejected() -> None:
    with pytest.raises(ConfigError):
        SimCLRViews(32, "simclr")
    with pytest.raises(ConfigError):
        SimCLRViews(0)
    views = SimCLRViews(16)
    with pytest.raises(DataError):
        views(torch.zeros(4, 32, 32, dtype=torch.uint8), torch.arange(4), 0, 0)
    with pytest.raises(DataError):
        views(torch.zeros(4, 32, 32, 4, dtype=torch.uint8), torch.arange(4), 0, 0)
    with pytest.raises(DataError):
        views(torch.zeros(4, 32, 32, 3, dtype=torch.int32), torch.arange(4), 0, 0)
    with pytest.raises(DataError):
        views(torch.zeros(4, 32, 32, 3, dtype=torch.uint8), torch.arange(3), 0, 0)
    with pytest.raises(ConfigError):
        resize_weights(torch.zeros(1, dtype=torch.int64), torch.ones(1, dtype=torch.int64), 4, 4, "nearest")


# ---------------------------------------------------------------- probe crop + flip
