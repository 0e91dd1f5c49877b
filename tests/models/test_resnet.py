from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torchvision

from ltray.errors import ConfigError
from ltray.models.branch import DualBatchNorm, MaskedConv2d
from ltray.models.resnet import build_backbone


def _cifar_resnet18_param_count() -> int:
    """Conv weights + BN (weight, bias) of data_and_eval.md §5's CIFAR ResNet-18, counted by hand."""
    convs = [(3, 64, 3)]
    bns = [64]
    in_ch = 64
    for out_ch, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            s = stride if block == 0 else 1
            convs += [(in_ch, out_ch, 3), (out_ch, out_ch, 3)]
            bns += [out_ch, out_ch]
            if s != 1 or in_ch != out_ch:
                convs.append((in_ch, out_ch, 1))
                bns.append(out_ch)
            in_ch = out_ch
    return sum(i * o * k * k for i, o, k in convs) + sum(2 * c for c in bns)


def test_cifar_resnet18_parameter_count_and_output_dim() -> None:
    backbone = build_backbone("resnet18_cifar")
    n_params = sum(p.numel() for p in backbone.parameters())
    assert n_params == _cifar_resnet18_param_count() == 11_168_832
    assert backbone.out_dim == 512
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 20
    assert all(isinstance(m, MaskedConv2d) for m in convs)
    assert backbone.conv1.kernel_size == (3, 3) and backbone.conv1.stride == (1, 1)
    assert isinstance(backbone.maxpool, nn.Identity)


def test_shapes_match_torchvision_resnets_under_the_published_key_layout() -> None:
    """Our names = torchvision's with downsample.0/1 → downsample.conv/bn; same shapes (ImageNet stem)."""
    ours = build_backbone("resnet50").state_dict()
    ref = torchvision.models.resnet50(weights=None).state_dict()
    renamed = {
        k.replace("downsample.0.", "downsample.conv.").replace("downsample.1.", "downsample.bn."): v.shape
        for k, v in ref.items()
        if not k.startswith("fc.")
    }
    ours_shapes = {k: v.shape for k, v in ours.items() if not k.endswith("prune_mask")}
    assert ours_shapes == renamed

    ours18 = build_backbone("resnet18_cifar").state_dict()
    ref18 = torchvision.models.resnet18(weights=None).state_dict()
    for k, v in ref18.items():
        if k.startswith("fc.") or k == "conv1.weight":
            continue
        k = k.replace("downsample.0.", "downsample.conv.").replace("downsample.1.", "downsample.bn.")
        assert ours18[k].shape == v.shape
    assert ours18["conv1.weight"].shape == (64, 3, 3, 3)


def test_width_multiplier_and_small_forwards() -> None:
    backbone = build_backbone("resnet18_cifar", width=0.25)
    assert backbone.out_dim == 128
    assert backbone(torch.rand(2, 3, 16, 16)).shape == (2, 128)
    r50c = build_backbone("resnet50_cifar", width=0.125)
    assert r50c.out_dim == 256
    assert isinstance(r50c.maxpool, nn.Identity)
    assert r50c(torch.rand(2, 3, 16, 16)).shape == (2, 256)
    assert build_backbone("resnet18_cifar", width=0.001).out_dim == 1


def test_imagenet_resnet50_outputs_2048_on_a_tiny_input() -> None:
    backbone = build_backbone("resnet50")
    assert backbone.out_dim == 2048
    assert backbone.conv1.kernel_size == (7, 7) and backbone.conv1.stride == (2, 2)
    assert isinstance(backbone.maxpool, nn.MaxPool2d)
    backbone.eval()
    with torch.no_grad():
        assert backbone(torch.rand(2, 3, 32, 32)).shape == (2, 2048)


def test_initialisation_is_kaiming_fan_out_with_unit_bn() -> None:
    torch.manual_seed(0)
    backbone = build_backbone("resnet18_cifar")
    w = backbone.layer4[1].conv2.weight  # fan_out = 512·3·3
    assert abs(w.std().item() - (2.0 / (512 * 9)) ** 0.5) < 0.01 * (2.0 / (512 * 9)) ** 0.5
    stem = backbone.conv1.weight  # fan_out = 64·3·3; 1728 samples
    assert abs(stem.std().item() - (2.0 / (64 * 9)) ** 0.5) < 0.06 * (2.0 / (64 * 9)) ** 0.5
    for m in backbone.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    assert backbone.layer1[0].bn2.weight.sum() == 64  # no zero-init residual


def test_dual_bn_flag_and_shortcut_key_names() -> None:
    plain = build_backbone("resnet18_cifar", width=0.125).state_dict()
    assert "layer2.0.downsample.conv.weight" in plain
    assert "layer2.0.downsample.bn.running_var" in plain
    assert "layer1.0.bn1.weight" in plain
    assert not any(k.startswith("layer1.0.downsample") for k in plain)

    dual_model = build_backbone("resnet18_cifar", width=0.125, dual_bn=True)
    dual = dual_model.state_dict()
    assert "bn1.bn_list.0.weight" in dual and "bn1.bn_list.1.weight" in dual
    assert "layer3.0.downsample.bn.bn_list.1.running_mean" in dual
    assert sum(isinstance(m, DualBatchNorm) for m in dual_model.modules()) == 20
    assert not any(type(m) is nn.BatchNorm2d and not n.count("bn_list") for n, m in dual_model.named_modules())
    assert "layer1.0.downsample.conv.weight" in build_backbone("resnet50_cifar", width=0.125).state_dict()


def test_unknown_arch_and_bad_width_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown backbone"):
        build_backbone("resnet34")
    with pytest.raises(ConfigError, match="width"):
        build_backbone("resnet18_cifar", width=0.0)


def test_normalisation_happens_inside_the_model() -> None:
    torch.manual_seed(0)
    backbone = build_backbone("resnet18_cifar", width=0.125).eval()
    bare = copy.deepcopy(backbone)
    bare.normalize = nn.Identity()
    x = torch.rand(3, 3, 16, 16)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(backbone(x), bare((x - mean) / std), atol=1e-6)
        assert not torch.allclose(backbone(x), bare(x), atol=1e-3)
    assert not any(k.startswith("normalize") for k in backbone.state_dict())


@pytest.mark.parametrize("train", [False, True])
def test_channels_last_matches_contiguous(train: bool) -> None:
    torch.manual_seed(0)
    backbone = build_backbone("resnet18_cifar", width=0.125, dual_bn=True).train(train)
    x = torch.rand(4, 3, 16, 16)
    reference = copy.deepcopy(backbone)
    cl = backbone.to(memory_format=torch.channels_last)
    assert cl.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out_cl = cl(x.contiguous(memory_format=torch.channels_last))
        out = reference(x)
    assert torch.allclose(out_cl, out, atol=1e-5, rtol=1e-4)
