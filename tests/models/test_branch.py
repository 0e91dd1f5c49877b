from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ltray.models.branch import DENSE, PRUNED, DualBatchNorm, MaskedConv2d, branch, make_batchnorm, set_branch
from ltray.models.contrastive import build_model


def _conv_with_mask() -> MaskedConv2d:
    torch.manual_seed(0)
    conv = MaskedConv2d(2, 3, kernel_size=3, padding=1, bias=False)
    mask = torch.rand(conv.weight.shape) > 0.5
    conv.prune_mask.copy_(mask)
    return conv


def test_mask_is_an_all_ones_bool_buffer_in_the_state_dict() -> None:
    conv = MaskedConv2d(3, 4, kernel_size=3, padding=1, bias=False)
    assert conv.prune_mask.dtype == torch.bool
    assert conv.prune_mask.shape == conv.weight.shape
    assert bool(conv.prune_mask.all())
    assert "prune_mask" in conv.state_dict()
    assert all(p is not conv.prune_mask for p in conv.parameters())
    assert [n for n, _ in conv.named_parameters()] == ["weight"]


def test_forward_uses_full_weight_on_dense_and_masked_weight_on_pruned_branch() -> None:
    conv = _conv_with_mask()
    x = torch.randn(2, 2, 5, 5)
    dense = F.conv2d(x, conv.weight, padding=1)
    pruned = F.conv2d(x, conv.weight * conv.prune_mask.float(), padding=1)
    assert torch.allclose(conv(x), dense)
    set_branch(conv, PRUNED)
    assert torch.allclose(conv(x), pruned)
    assert not torch.allclose(dense, pruned)


def test_pruned_gradient_is_zero_exactly_on_pruned_weights() -> None:
    conv = _conv_with_mask()
    x = torch.randn(4, 2, 5, 5)
    set_branch(conv, PRUNED)
    (conv(x) ** 2).sum().backward()
    grad = conv.weight.grad
    assert grad is not None
    assert torch.all(grad[~conv.prune_mask] == 0)
    assert torch.all(grad[conv.prune_mask] != 0)

    conv.weight.grad = None
    set_branch(conv, DENSE)
    (conv(x) ** 2).sum().backward()
    assert torch.all(conv.weight.grad != 0)


def test_dual_bn_keeps_separate_running_statistics_per_branch() -> None:
    bn = DualBatchNorm(3, dim=2)
    bn.train()
    x0 = torch.randn(8, 3, 4, 4) + 5.0
    x1 = torch.randn(8, 3, 4, 4) - 3.0
    bn(x0)
    set_branch(bn, PRUNED)
    bn(x1)
    momentum = 0.1  # running ← (1 − m)·running + m·batch, from running_mean = 0
    assert torch.allclose(bn.bn_list[0].running_mean, momentum * x0.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn.bn_list[1].running_mean, momentum * x1.mean(dim=(0, 2, 3)), atol=1e-5)
    assert int(bn.bn_list[0].num_batches_tracked) == 1
    assert int(bn.bn_list[1].num_batches_tracked) == 1
    assert bn.bn_list[0].weight is not bn.bn_list[1].weight


def test_dual_bn_state_dict_layout_matches_published_checkpoints() -> None:
    keys = set(DualBatchNorm(4, dim=1).state_dict())
    for i in (0, 1):
        assert {f"bn_list.{i}.weight", f"bn_list.{i}.bias", f"bn_list.{i}.running_mean"} <= keys


def test_plain_bn_when_dual_bn_is_off() -> None:
    assert type(make_batchnorm(5, dim=2, dual=False)) is nn.BatchNorm2d
    assert type(make_batchnorm(5, dim=1, dual=False)) is nn.BatchNorm1d
    dual = make_batchnorm(5, dim=1, dual=True)
    assert isinstance(dual, DualBatchNorm)
    assert all(type(b) is nn.BatchNorm1d for b in dual.bn_list)
    with pytest.raises(ValueError):
        make_batchnorm(5, dim=3, dual=True)


def test_set_branch_and_context_manager_restore_previous_branch() -> None:
    model = build_model("resnet18_cifar", width=0.125, head="sdclr3", dual_bn=True)
    switchable = [m for m in model.modules() if isinstance(m, (DualBatchNorm, MaskedConv2d))]
    assert len(switchable) > 40
    set_branch(model, PRUNED)
    assert all(m.branch == PRUNED for m in switchable)
    with branch(model, DENSE):
        assert all(m.branch == DENSE for m in switchable)
    assert all(m.branch == PRUNED for m in switchable)
    with pytest.raises(ValueError):
        set_branch(model, 2)


def test_sync_batchnorm_conversion_converts_both_copies() -> None:
    model = build_model("resnet18_cifar", width=0.125, head="sdclr3", dual_bn=True)
    keys_before = list(model.state_dict())
    n_dual = sum(isinstance(m, DualBatchNorm) for m in model.modules())
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    duals = [m for m in converted.modules() if isinstance(m, DualBatchNorm)]
    assert len(duals) == n_dual == 20 + 3  # 20 backbone BNs (one per conv) + 3 head BNs
    assert all(type(b) is nn.SyncBatchNorm for d in duals for b in d.bn_list)
    plain = [m for m in converted.modules() if type(m) in (nn.BatchNorm1d, nn.BatchNorm2d)]
    assert plain == []
    assert list(converted.state_dict()) == keys_before
