from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from ltray.errors import ConfigError
from ltray.models.branch import PRUNED, DualBatchNorm, set_branch
from ltray.models.heads import build_head


def _layer_kinds(head: nn.Module) -> list[str]:
    return [type(m).__name__ for m in head]


def test_simclr_head_layers_and_math() -> None:
    torch.manual_seed(0)
    head = build_head("simclr", 16).train()
    assert _layer_kinds(head) == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert head.out_dim == 128 and head.kind == "simclr"
    fc1, fc2 = head[0], head[3]
    assert fc1.weight.shape == (16, 16) and fc1.bias is not None
    assert fc2.weight.shape == (128, 16) and fc2.bias is None

    x = torch.randn(6, 16)

    def batchnorm(h: torch.Tensor) -> torch.Tensor:  # training mode: biased batch variance, eps 1e-5, γ=1, β=0
        return (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + 1e-5)

    expected = batchnorm(torch.relu(batchnorm(x @ fc1.weight.T + fc1.bias)) @ fc2.weight.T)
    assert torch.allclose(head(x), expected, atol=1e-5)


def test_sdclr3_head_has_three_layers_with_dual_bn() -> None:
    head = build_head("sdclr3", 32, dual_bn=True)
    assert _layer_kinds(head) == [
        "Linear", "DualBatchNorm", "ReLU", "Linear", "DualBatchNorm", "ReLU", "Linear", "DualBatchNorm",
    ]
    linears = [m for m in head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 32), (32, 32), (32, 128)]
    assert [m.bias is not None for m in linears] == [True, False, False]
    assert all(isinstance(b, nn.BatchNorm1d) for m in head if isinstance(m, DualBatchNorm) for b in m.bn_list)
    assert head(torch.randn(4, 32)).shape == (4, 128)


def test_dual_bn_head_branches_use_their_own_bn() -> None:
    torch.manual_seed(0)
    head = build_head("simclr", 8, out_dim=4, dual_bn=True).train()
    with torch.no_grad():
        head[4].bn_list[1].bias.fill_(3.0)
    x = torch.randn(5, 8)
    dense = head(x)
    set_branch(head, PRUNED)
    pruned = head(x)
    assert torch.allclose(pruned - dense, torch.full_like(dense, 3.0), atol=1e-5)


def test_lotar_head_is_encoder_fc_then_projector_without_bn() -> None:
    head = build_head("lotar", 512, encoder_dim=10, dual_bn=True)
    assert _layer_kinds(head) == ["Linear", "Linear", "ReLU", "Linear"]
    linears = [m for m in head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 10), (10, 128), (128, 128)]
    assert all(m.bias is not None for m in linears)
    x = torch.randn(3, 512)
    fc, p1, _, p2 = head
    assert torch.allclose(head(x), p2(torch.relu(p1(fc(x)))))


def test_bad_head_configs() -> None:
    with pytest.raises(ConfigError, match="unknown projection head"):
        build_head("mlp", 16)
    with pytest.raises(ConfigError):
        build_head("simclr", 16, out_dim=0)
