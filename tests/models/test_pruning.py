from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from ltray.errors import ConfigError
from ltray.models.contrastive import build_model
from ltray.models.pruning import (
    compute_masks,
    magnitude_threshold,
    mask_checksum,
    mask_density,
    prunable_convs,
    refresh_masks,
)
from ltray.models.resnet import build_backbone

# |w| over both tensors, sorted (0-based): 0.05 0.1 0.1 0.2 0.3 0.3 0.3 0.5 0.7 0.9 (n = 10)
W_A = torch.tensor([0.5, -0.1, 0.3, -0.3])
W_B = torch.tensor([[0.2, 0.3, -0.05], [0.9, 0.1, -0.7]])


def _masks(ratio: float) -> list[list[bool]]:
    return [m.reshape(-1).tolist() for m in compute_masks([W_A, W_B], ratio)]


def test_threshold_is_the_global_order_statistic_and_ties_are_kept() -> None:
    # p = 0.5: k = 5, t = a(5) = 0.3; all three 0.3 entries survive, so 6 > n − k = 5 weights are kept
    assert _masks(0.5) == [[True, False, True, True], [False, True, False, True, False, True]]
    assert magnitude_threshold(torch.cat([W_A, W_B.reshape(-1)]).abs(), 0.5) == pytest.approx(0.3)


def test_fraction_is_read_as_a_decimal() -> None:
    # p = 0.3: k = ⌈0.3·10⌉ = 3 (a binary-float product would give 4), t = a(3) = 0.2
    assert _masks(0.3) == [[True, False, True, True], [True, True, False, True, False, True]]


def test_p_zero_keeps_everything_and_large_p_keeps_the_largest() -> None:
    assert all(all(m) for m in _masks(0.0))
    # p = 0.95: k = 10 → index min(10, 9) = 9 → t = 0.9: only the largest weight survives
    assert _masks(0.95) == [[False] * 4, [False, False, False, True, False, False]]
    assert magnitude_threshold(torch.tensor([0.4, 0.1, 0.9, 0.9]), 1.0) == pytest.approx(0.9)


def test_threshold_matches_a_full_sort() -> None:
    a = torch.randn(1001, generator=torch.Generator().manual_seed(3)).abs()
    for p in (0.0, 0.1, 0.37, 0.9, 0.999):
        k = math.ceil(round(p * 1001, 9))
        assert magnitude_threshold(a, p) == float(np.sort(a.numpy())[min(k, 1000)])


def test_one_global_threshold_not_one_per_layer() -> None:
    big = torch.tensor([1.0, -2.0, 3.0, 4.0])
    small = torch.tensor([0.1, 0.2, -0.3, 0.4])
    # n = 8, k = 4, t = a(4) = 1.0: the small tensor loses everything, the big one nothing
    big_mask, small_mask = compute_masks([big, small], 0.5)
    assert big_mask.all() and not small_mask.any()


def test_prunable_convs_are_the_20_backbone_convs_never_the_head() -> None:
    model = build_model("resnet18_cifar", width=0.125, head="sdclr3", dual_bn=True)
    convs = prunable_convs(model)
    assert len(convs) == 20
    assert all(name.startswith("backbone.") for name, _ in convs)
    assert [n for n, _ in prunable_convs(model.backbone)][:3] == ["conv1", "layer1.0.conv1", "layer1.0.conv2"]
    assert "layer2.0.downsample.conv" in dict(prunable_convs(model.backbone))
    assert len(prunable_convs(build_backbone("resnet50_cifar", width=0.125))) == 53


def test_refresh_rebuilds_from_dense_weights_and_never_compounds() -> None:
    torch.manual_seed(0)
    backbone = build_backbone("resnet18_cifar", width=0.125)
    refresh_masks(backbone, 0.5)
    total = sum(c.weight.numel() for _, c in prunable_convs(backbone))
    kept = sum(int(c.prune_mask.sum()) for _, c in prunable_convs(backbone))
    assert kept == total - math.ceil(0.5 * total)  # continuous weights: no ties

    refresh_masks(backbone, 0.2)
    expected = compute_masks([c.weight for _, c in prunable_convs(backbone)], 0.2)
    for (_, conv), mask in zip(prunable_convs(backbone), expected):
        assert torch.equal(conv.prune_mask, mask)
    kept = sum(int(c.prune_mask.sum()) for _, c in prunable_convs(backbone))
    assert kept == total - math.ceil(0.2 * total)

    refresh_masks(backbone, 0.0)
    assert all(bool(c.prune_mask.all()) for _, c in prunable_convs(backbone))


def test_global_threshold_prunes_the_last_stage_hardest() -> None:
    torch.manual_seed(0)
    backbone = build_backbone("resnet18_cifar", width=0.25)
    refresh_masks(backbone, 0.9)
    density = mask_density(backbone)
    assert len(density) == 20
    assert density["layer4.1.conv2"] < density["layer2.1.conv2"] < density["conv1"]
    total = sum(c.weight.numel() for _, c in prunable_convs(backbone))
    overall = sum(density[n] * c.weight.numel() for n, c in prunable_convs(backbone)) / total
    assert overall == pytest.approx(0.1, abs=1e-4)


def test_random_component_count_and_reproducibility() -> None:
    n = 100_000
    weights = [torch.randn(60_000, generator=torch.Generator().manual_seed(0)),
               torch.randn(40_000, generator=torch.Generator().manual_seed(1))]
    p, r = 0.5, 0.2
    masks = compute_masks(weights, p, r, torch.Generator().manual_seed(7))
    again = compute_masks(weights, p, r, torch.Generator().manual_seed(7))
    other = compute_masks(weights, p, r, torch.Generator().manual_seed(8))
    assert all(torch.equal(a, b) for a, b in zip(masks, again))
    assert not all(torch.equal(a, b) for a, b in zip(masks, other))

    # magnitude part at p − r: k_mag = 30 000, 70 000 survivors, each dropped with prob 20 000 / 70 000
    magnitude = compute_masks(weights, p - r)
    assert sum(int(m.sum()) for m in magnitude) == 70_000
    assert all(bool((m <= mm).all()) for m, mm in zip(masks, magnitude))  # only survivors are dropped
    kept = sum(int(m.sum()) for m in masks)
    q = 20_000 / 70_000
    expected, sd = 70_000 * (1 - q), math.sqrt(70_000 * q * (1 - q))
    assert expected == pytest.approx(n * (1 - p))
    assert abs(kept - expected) < 5 * sd


def test_refresh_with_random_component_needs_a_seed_and_is_seeded() -> None:
    torch.manual_seed(0)
    a = build_backbone("resnet18_cifar", width=0.125)
    b = copy.deepcopy(a)
    with pytest.raises(ConfigError, match="seed"):
        refresh_masks(a, 0.5, 0.1)
    refresh_masks(a, 0.5, 0.1, seed=3)
    refresh_masks(b, 0.5, 0.1, seed=3)
    assert mask_checksum(a) == mask_checksum(b)
    refresh_masks(b, 0.5, 0.1, seed=4)
    assert mask_checksum(a) != mask_checksum(b)


@pytest.mark.parametrize(("ratio", "random_fraction"), [(1.1, 0.0), (-0.1, 0.0), (0.5, 0.6), (0.5, -0.1)])
def test_invalid_fractions_are_config_errors(ratio: float, random_fraction: float) -> None:
    with pytest.raises(ConfigError):
        compute_masks([W_A], ratio, random_fraction, torch.Generator().manual_seed(0))


def test_ratio_one_keeps_only_the_largest_weights() -> None:
    # p = 1: k = n, the threshold is a_(n-1), the largest |w| (0.9 of W_B), and ties at it survive
    masks = compute_masks([W_A, W_B], 1.0)
    assert [mask.tolist() for mask in masks] == [[False] * 4, [[False] * 3, [True, False, False]]]
    tied = compute_masks([torch.tensor([0.9, -0.9, 0.1])], 1.0)
    assert tied[0].tolist() == [True, True, False]


def test_threshold_function_accepts_p_one_but_not_beyond() -> None:
    with pytest.raises(ConfigError):
        magnitude_threshold(W_A.abs(), 1.5)


def test_checksum_is_deterministic_wrapper_independent_and_bit_sensitive() -> None:
    torch.manual_seed(0)
    backbone = build_backbone("resnet18_cifar", width=0.125)
    refresh_masks(backbone, 0.7)
    checksum = mask_checksum(backbone)
    assert isinstance(checksum, int) and 0 <= checksum < 2**63
    assert mask_checksum(copy.deepcopy(backbone)) == checksum
    assert mask_checksum(nn.Sequential(backbone)) == checksum  # names differ, masks do not
    cl = copy.deepcopy(backbone).to(memory_format=torch.channels_last)
    assert mask_checksum(cl) == checksum
    backbone.layer3[0].conv1.prune_mask.view(-1)[5] ^= True
    assert mask_checksum(backbone) != checksum


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_masks_on_cuda_equal_masks_on_cpu() -> None:
    torch.manual_seed(0)
    cpu = build_backbone("resnet18_cifar", width=0.25)
    gpu = copy.deepcopy(cpu).cuda()
    for model in (cpu, gpu):
        refresh_masks(model, 0.9, 0.1, seed=5)
    assert mask_checksum(gpu) == mask_checksum(cpu)
    assert all(c.prune_mask.is_cuda for _, c in prunable_convs(gpu))
