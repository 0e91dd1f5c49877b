from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from ltray.augment import randaugment as ra
from ltray.augment import rng
from ltray.augment.batched import SimCLRViews
from ltray.augment.randaugment import (
    OP_INDEX,
    OPS,
    BCLWeights,
    ItemRequest,
    RandAugmentProb,
    StaleWeightsError,
    WeightedRequestSampler,
    bcl_params,
    check_weights_version,
    rand_augment_prob,
)
from ltray.errors import ConfigError


def tiny_arrays(seed: int = 1) -> list[np.ndarray]:
    rs = np.random.RandomState(seed)
    arrays = [rs.randint(0, 256, (9, 11, 3)).astype(np.uint8) for _ in range(3)]
    arrays.append(np.clip(rs.normal(128, 20, (9, 11, 3)), 0, 255).astype(np.uint8))  # low contrast
    arrays.append(np.full((9, 11, 3), 77, dtype=np.uint8))  # constant
    return arrays


def to_tensor(arrays: list[np.ndarray]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a in arrays]).float() / 255


def to_levels(images: torch.Tensor) -> np.ndarray:
    return (images.permute(0, 2, 3, 1).double().numpy() * 255).round()


def pil_levels(images: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(im) for im in images]).astype(np.float64)


# ---------------------------------------------------------------- single ops against PIL


@pytest.mark.parametrize(
    ("name", "values"),
    [
        ("ShearX", [0.3, -0.45, 0.6, 0.1, -0.2]),
        ("ShearY", [0.3, -0.45, 0.6, 0.1, -0.2]),
        ("TranslateX", [0.3, -0.45, 0.66, 0.1, -0.2]),
        ("TranslateY", [0.3, -0.45, 0.66, 0.1, -0.2]),
        ("Rotate", [17.3, -42.0, 60.0, 30.0, -5.5]),
    ],
)
def test_affine_ops_equal_pil_nearest_with_black_fill(name: str, values: list[float]) -> None:
    arrays = tiny_arrays()
    coefficients = ra.affine_coefficients(name, torch.tensor(values, dtype=torch.float64), 9, 11)
    out = ra.affine_nearest(to_tensor(arrays), coefficients)
    expected = []
    for array, v in zip(arrays, values):
        image = Image.fromarray(array)
        width, height = image.size
        data = {
            "ShearX": (1, v, 0, 0, 1, 0),
            "ShearY": (1, 0, 0, v, 1, 0),
            "TranslateX": (1, 0, v * width, 0, 1, 0),
            "TranslateY": (1, 0, 0, 0, 1, v * height),
        }
        expected.append(image.rotate(v) if name == "Rotate" else image.transform(image.size, Image.AFFINE, data[name]))
    np.testing.assert_array_equal(to_levels(out), pil_levels(expected))


def test_pixel_ops_equal_pil() -> None:
    arrays = tiny_arrays()
    images = to_tensor(arrays)
    pil = [Image.fromarray(a) for a in arrays]
    np.testing.assert_array_equal(to_levels(ra.auto_contrast(images)), pil_levels([ImageOps.autocontrast(p) for p in pil]))
    np.testing.assert_array_equal(to_levels(ra.invert(images)), pil_levels([ImageOps.invert(p) for p in pil]))
    np.testing.assert_array_equal(to_levels(ra.equalize(images)), pil_levels([ImageOps.equalize(p) for p in pil]))
    thresholds = [0.0, 50.5, 110.0, 77.0, 200.0]
    np.testing.assert_array_equal(
        to_levels(ra.solarize(images, torch.tensor(thresholds))),
        pil_levels([ImageOps.solarize(p, t) for p, t in zip(pil, thresholds)]),
    )
    bits = [4, 5, 6, 7, 8]
    np.testing.assert_array_equal(
        to_levels(ra.posterize(images, torch.tensor(bits))),
        pil_levels([ImageOps.posterize(p, b) for p, b in zip(pil, bits)]),
    )


@pytest.mark.parametrize(
    ("name", "enhancer"),
    [("Contrast", ImageEnhance.Contrast), ("Color", ImageEnhance.Color), ("Brightness", ImageEnhance.Brightness),
     ("Sharpness", ImageEnhance.Sharpness)],
)
def test_enhance_ops_match_pil_up_to_its_8_bit_rounding(name: str, enhancer: type) -> None:
    arrays = tiny_arrays()
    factors = [0.1, 0.5, 1.0, 1.5, 1.9]
    op = {"Contrast": ra.contrast, "Color": ra.color, "Brightness": ra.brightness, "Sharpness": ra.sharpness}[name]
    out = op(to_tensor(arrays), torch.tensor(factors))
    expected = pil_levels([enhancer(Image.fromarray(a)).enhance(f) for a, f in zip(arrays, factors)])
    assert np.abs(out.permute(0, 2, 3, 1).double().numpy() * 255 - expected).max() <= 1.5


def test_hand_computed_levels() -> None:
    levels = torch.tensor([0.0, 49.0, 50.0, 51.0, 183.0, 255.0]).view(1, 1, 1, 6).expand(1, 3, 1, 6) / 255
    # Solarize 50: levels at or above 50 become 255 − level
    np.testing.assert_array_equal(to_levels(ra.solarize(levels, torch.tensor([50.0])))[0, 0, :, 0], [0, 49, 205, 204, 72, 0])
    # Posterize 4 bits keeps the top nibble: 183 = 0b10110111 → 0b10110000 = 176; 6 bits → 0b10110100 = 180
    np.testing.assert_array_equal(to_levels(ra.posterize(levels, torch.tensor([4])))[0, 0, :, 0], [0, 48, 48, 48, 176, 240])
    np.testing.assert_array_equal(to_levels(ra.posterize(levels, torch.tensor([6])))[0, 0, :, 0], [0, 48, 48, 48, 180, 252])
    # Invert and Brightness 0.5 (then clamped at 1.9)
    np.testing.assert_array_equal(to_levels(ra.invert(levels))[0, 0, :, 0], [255, 206, 205, 204, 72, 0])
    torch.testing.assert_close(ra.brightness(levels, torch.tensor([0.5])), levels * 0.5)
    torch.testing.assert_close(ra.brightness(levels, torch.tensor([1.9])), (levels * 1.9).clamp(max=1.0))


def test_cutout_square_size_position_and_fill() -> None:
    images = torch.zeros(5, 3, 10, 10)
    side = torch.tensor([0.4, 0.4, 0.0, 0.25, 0.03], dtype=torch.float64)
    centre_x = torch.tensor([0.5, 0.05, 0.5, 0.999, 0.31])
    centre_y = torch.tensor([0.5, 0.95, 0.5, 0.999, 0.62])
    out = ra.cutout(images, side, centre_x, centre_y)
    fill = torch.tensor([125.0, 123.0, 114.0]) / 255
    filled = (out != 0).any(dim=1)

    def box(rows: slice, cols: slice) -> torch.Tensor:
        mask = torch.zeros(10, 10, dtype=torch.bool)
        mask[rows, cols] = True
        return mask

    # s = 4 at (5, 5): x0 = ⌊5 − 2⌋ = 3, columns 3 … 3 + 4 (both corners included); rows alike
    assert torch.equal(filled[0], box(slice(3, 8), slice(3, 8)))
    torch.testing.assert_close(out[0, :, 4, 4], fill)
    # s = 4 at (0.5, 9.5): x0 = 0 → columns 0 … 4; y0 = ⌊7.5⌋ = 7 → rows 7 … 11, clipped to 9
    assert torch.equal(filled[1], box(slice(7, 10), slice(0, 5)))
    assert not bool(filled[2].any())  # s = 0: nothing
    # s = 2.5 at (9.99, 9.99): x0 = ⌊8.74⌋ = 8 → columns 8 … 10, clipped to 9
    assert torch.equal(filled[3], box(slice(8, 10), slice(8, 10)))
    # s = 0.3 at (3.1, 6.2): x0 = ⌊2.95⌋ = 2, y0 = ⌊6.05⌋ = 6: a single pixel
    assert torch.equal(filled[4], box(slice(6, 7), slice(2, 3)))


def test_cutout_equals_a_pil_rectangle() -> None:
    arrays = tiny_arrays()
    side = torch.tensor([0.4, 0.13, 0.27, 0.4, 0.05], dtype=torch.float64)
    centre_x = torch.tensor([0.2, 0.9, 0.5, 0.0, 0.77])
    centre_y = torch.tensor([0.8, 0.1, 0.5, 0.0, 0.33])
    out = ra.cutout(to_tensor(arrays), side, centre_x, centre_y)
    expected = []
    for array, s, cx, cy in zip(arrays, side.tolist(), centre_x.tolist(), centre_y.tolist()):
        image = Image.fromarray(array)
        width, height = image.size
        s *= width
        x0, y0 = int(max(0.0, cx * width - s / 2)), int(max(0.0, cy * height - s / 2))
        ImageDraw.Draw(image).rectangle((x0, y0, min(width, x0 + s), min(height, y0 + s)), fill=(125, 123, 114))
        expected.append(image)
    np.testing.assert_array_equal(to_levels(out), pil_levels(expected))


# ---------------------------------------------------------------- values and the op sequence


def test_op_values_map_magnitude_linearly_and_flip_signs_of_signed_ops() -> None:
    rotate, solarize, posterize = OP_INDEX["Rotate"], OP_INDEX["Solarize"], OP_INDEX["Posterize"]
    ids = torch.tensor([rotate, rotate, rotate, solarize, solarize, posterize, posterize])
    magnitude = torch.tensor([30.0, 0.0, 15.0, 30.0, 15.0, 0.0, 29.0])
    u_sign = torch.tensor([0.9, 0.9, 0.1, 0.1, 0.9, 0.1, 0.9])
    values = ra.op_values(ids, magnitude, u_sign)
    torch.testing.assert_close(values, torch.tensor([60.0, 0.0, -30.0, 110.0, 55.0, 4.0, 4 + 4 * 29 / 30], dtype=torch.float64))


def test_probability_zero_applies_nothing_and_one_applies_everything() -> None:
    images = to_tensor(tiny_arrays() * 4)
    batch = images.shape[0]
    draws = rng.uniform(0, 0, torch.arange(batch)[:, None, None], 0, torch.arange(10).view(1, 2, 5))
    out, _, applied = rand_augment_prob(images, 2, torch.full((batch,), 30.0), torch.zeros(batch), draws)
    assert torch.equal(out, images) and not bool(applied.any())
    _, _, applied = rand_augment_prob(images, 2, torch.full((batch,), 30.0), torch.ones(batch), draws)
    assert bool(applied.all())


def test_ops_are_drawn_uniformly_with_replacement() -> None:
    n = 15_000
    draws = rng.uniform(1, 0, torch.arange(n)[:, None, None], 0, torch.arange(10).view(1, 2, 5))
    ids = torch.floor(draws[:, :, 0] * 15).long()
    counts = torch.bincount(ids.flatten(), minlength=15).double()
    assert bool(((counts / (2 * n) - 1 / 15).abs() < 0.01).all())
    assert bool((ids[:, 0] == ids[:, 1]).any())  # the same op can be drawn twice


def test_drawn_ops_are_applied_in_sequence() -> None:
    images = to_tensor(tiny_arrays()[:2])
    invert, posterize, solarize = OP_INDEX["Invert"], OP_INDEX["Posterize"], OP_INDEX["Solarize"]

    def choose(op_id: int) -> float:
        return (op_id + 0.5) / len(OPS)

    # sample 0: Invert then Posterize (m = 0: 4 bits); sample 1: Solarize (m = 0: threshold 0) then nothing (u ≥ p)
    draws = torch.tensor(
        [[[choose(invert), 0.1, 0.9, 0.0, 0.0], [choose(posterize), 0.2, 0.9, 0.0, 0.0]],
         [[choose(solarize), 0.3, 0.9, 0.0, 0.0], [choose(invert), 0.99, 0.9, 0.0, 0.0]]]
    )
    out, op_ids, applied = rand_augment_prob(images, 2, torch.zeros(2), torch.full((2,), 0.5), draws)
    assert op_ids.tolist() == [[invert, posterize], [solarize, invert]]
    assert applied.tolist() == [[True, True], [True, False]]
    torch.testing.assert_close(out[0], ra.posterize(ra.invert(images[:1]), torch.tensor([4]))[0])
    torch.testing.assert_close(out[1], 1.0 - images[1])  # threshold 0 inverts every pixel


# ---------------------------------------------------------------- BCL mapping and weights


def test_bcl_i_mapping() -> None:
    n, m, p = bcl_params(torch.tensor([0.0, 1.0, 0.25]), rand_k=1)
    assert n == 1
    torch.testing.assert_close(m, torch.tensor([10.0, 30.0, 15.0]))
    torch.testing.assert_close(p, torch.tensor([0.0, 1.0, 0.25]))


def test_bcl_d_and_imagenet_mappings() -> None:
    w = torch.tensor([0.0, 1.0, 1.0, 0.4])
    u = torch.tensor([0.7, 0.5, 0.0, 0.5])
    n, m, p = bcl_params(w, rand_k=2, u=u)
    assert n == 2
    torch.testing.assert_close(m, torch.tensor([5.0, 17.5, 5.0, 10.0]))  # 5 + 25·w·u
    torch.testing.assert_close(p, w)
    n, m, p = bcl_params(w, rand_k=3, u=u)
    assert n == 3
    n, m, p = bcl_params(w, rand_k=1, u=u, variant="imagenet")
    assert n == 2
    torch.testing.assert_close(m, torch.tensor([0.0, 15.0, 0.0, 6.0]))  # 30·w·u
    torch.testing.assert_close(p, w)


def test_bcl_params_reject_bad_options() -> None:
    w = torch.zeros(2)
    with pytest.raises(ConfigError):
        bcl_params(w, rand_k=0)
    with pytest.raises(ConfigError):
        bcl_params(w, rand_k=1, strength=31)
    with pytest.raises(ConfigError):
        bcl_params(w, rand_k=2)  # u missing
    with pytest.raises(ConfigError):
        bcl_params(w, rand_k=1, variant="places")


def test_bcl_weights_are_versioned_validated_and_copied() -> None:
    initial = BCLWeights.initial(5)
    assert initial.version == 0 and torch.equal(initial.values, torch.zeros(5)) and len(initial) == 5
    source = torch.tensor([0.0, 0.5, 1.0, 0.25])
    weights = BCLWeights(source, 3)
    source[0] = 0.9
    weights.values[1] = 0.0
    torch.testing.assert_close(weights.lookup(torch.tensor([0, 1, 1, 3])), torch.tensor([0.0, 0.5, 0.5, 0.25]))
    assert weights.to("cpu").version == 3
    for bad_values, bad_version in [(torch.tensor([0.5, 1.5]), 1), (torch.tensor([float("nan")]), 1),
                                    (torch.zeros(2, 2), 1), (torch.zeros(2), -1)]:
        with pytest.raises(ConfigError):
            BCLWeights(bad_values, bad_version)
    with pytest.raises(ConfigError):
        weights.lookup(torch.tensor([4]))


# ---------------------------------------------------------------- the hook inside SimCLRViews


def test_epoch_one_weights_apply_no_op() -> None:
    images = torch.randint(0, 256, (8, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    index = torch.arange(8)
    hook = RandAugmentProb(BCLWeights.initial(8), rand_k=2)
    hooked = SimCLRViews(16, extra=hook)(images, index, epoch=1, seed=10)
    plain = SimCLRViews(16)(images, index, epoch=1, seed=10)
    assert torch.equal(hooked[0], plain[0]) and torch.equal(hooked[1], plain[1])
    assert hook.last_version == 0 and hook.last_ops is not None and not bool(hook.last_ops[1].any())


def test_full_weights_apply_every_drawn_op_and_record_the_version() -> None:
    images = torch.randint(0, 256, (8, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    index = torch.arange(8)
    hook = RandAugmentProb(BCLWeights(torch.ones(8), 4), rand_k=1)
    hooked = SimCLRViews(16, extra=hook)(images, index, epoch=5, seed=10)
    plain = SimCLRViews(16)(images, index, epoch=5, seed=10)
    assert hook.last_version == 4 and bool(hook.last_ops[1].all())
    changed = [not torch.equal(hooked[1][k], plain[1][k]) for k in range(8)]
    assert sum(changed) >= 6  # an op can leave an image unchanged (e.g. AutoContrast of a full-range image)
    check_weights_version(hook.last_version, 4)
    with pytest.raises(StaleWeightsError):
        check_weights_version(hook.last_version, 5)


def test_bcl_d_magnitude_is_shared_by_views_and_varies_across_items() -> None:
    w = torch.linspace(0.0, 1.0, 64)
    hook = RandAugmentProb(BCLWeights(w, 2), rand_k=2)
    index = torch.arange(64)
    n, m, p = hook.params(index, epoch=3, seed=0)
    assert n == 2 and torch.equal(p, w)
    assert bool((m >= 5.0).all() and (m <= 5.0 + 25.0 * w + 1e-5).all())
    u = rng.uniform(0, 3, index, rng.SHARED_VIEW, ra.SLOT_SHARED_U)
    torch.testing.assert_close(m, 5.0 + 25.0 * w * u)
    assert len(set(u.tolist())) == 64


def test_hook_is_independent_of_batch_composition() -> None:
    images = torch.rand(10, 3, 12, 12)
    index = torch.arange(10) * 7
    hook = RandAugmentProb(BCLWeights(torch.full((70,), 0.8), 1), rand_k=2)
    whole = hook(images, index, epoch=2, view=1, seed=3)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(hook(images[perm], index[perm], epoch=2, view=1, seed=3), whole[perm], atol=1e-6, rtol=0)
    other_view = hook(images, index, epoch=2, view=0, seed=3)
    assert not torch.equal(other_view, whole)


# ---------------------------------------------------------------- pushing weights to persistent workers


class RequestEcho(Dataset):
    """Stands in for a data set whose __getitem__ augments with the weight that arrives in the request."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, request: ItemRequest) -> tuple[int, float, int]:
        return request.index, request.weight, request.version


class HeldWeights(Dataset):
    """The naive design: the data set keeps the weights; a persistent worker keeps its own copy."""

    def __init__(self) -> None:
        self.weights = BCLWeights.initial(8)

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> tuple[int, float, int]:
        return index, float(self.weights.lookup(torch.tensor([index]))[0]), self.weights.version


def run_epoch(loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor, set[int]]:
    indices, weights, versions = [], [], set()
    for index, weight, version in loader:
        indices.append(index)
        weights.append(weight)
        versions.update(version.tolist())
    return torch.cat(indices), torch.cat(weights), versions


def test_requests_carry_fresh_weights_to_persistent_workers_and_a_skipped_push_is_caught() -> None:
    sampler = WeightedRequestSampler(SequentialSampler(range(8)), BCLWeights.initial(8))
    loader = DataLoader(RequestEcho(), batch_size=4, sampler=sampler, num_workers=1, persistent_workers=True)
    index, weight, versions = run_epoch(loader)  # epoch 1
    assert versions == {0} and torch.equal(weight, torch.zeros(8, dtype=torch.float64))
    check_weights_version(max(versions), 0)

    new = torch.linspace(0.0, 1.0, 8)
    sampler.publish(BCLWeights(new, 1))  # end of epoch 1
    index, weight, versions = run_epoch(loader)  # epoch 2, same worker process
    assert versions == {1}
    torch.testing.assert_close(weight.float(), new[index])
    check_weights_version(max(versions), 1)

    _, _, versions = run_epoch(loader)  # epoch 3 without the push at the end of epoch 2
    with pytest.raises(StaleWeightsError):
        check_weights_version(max(versions), 2)

    held = HeldWeights()
    naive = DataLoader(held, batch_size=4, num_workers=1, persistent_workers=True)
    run_epoch(naive)
    held.weights = BCLWeights(new, 1)  # swapped in the main process only
    _, _, versions = run_epoch(naive)
    assert versions == {0}  # the worker kept its stale copy
    with pytest.raises(StaleWeightsError):
        check_weights_version(max(versions), 1)
