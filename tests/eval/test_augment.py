from __future__ import annotations

import torch

from ltray.eval.augment import random_crop_flip


def matching_crops(image: torch.Tensor, output: torch.Tensor, padding: int) -> list[tuple[int, int, bool]]:
    padded = torch.nn.functional.pad(image, (padding,) * 4)
    height, width = image.shape[1:]
    found = []
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            crop = padded[:, top : top + height, left : left + width]
            for flipped in (False, True):
                if torch.equal(crop.flip(-1) if flipped else crop, output):
                    found.append((top, left, flipped))
    return found


def test_each_output_is_a_zero_padded_crop_possibly_flipped() -> None:
    images = torch.rand(24, 3, 6, 6)
    output = random_crop_flip(images, 4, torch.Generator().manual_seed(0))
    assert output.shape == images.shape
    flips = set()
    for image, result in zip(images, output):
        found = matching_crops(image, result, 4)
        assert found, "output is not a crop of the padded image"
        flips.add(found[0][2])
    assert flips == {False, True}


def test_same_seed_same_augmentation() -> None:
    images = torch.rand(5, 3, 8, 8)
    first = random_crop_flip(images, 4, torch.Generator().manual_seed(7))
    second = random_crop_flip(images, 4, torch.Generator().manual_seed(7))
    assert torch.equal(first, second)
    assert not torch.equal(first, random_crop_flip(images, 4, torch.Generator().manual_seed(8)))
