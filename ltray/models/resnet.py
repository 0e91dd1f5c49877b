"""ResNet backbones with maskable convs and optional dual BN (docs/math/data_and_eval.md §5, docs/math/sdclr.md §1).

Module names follow torchvision (`conv1`, `bn1`, `layer1.0.conv2`, ...) except the shortcut, which is
`downsample.conv` / `downsample.bn` as in the SDCLR code base, so published checkpoints map by name
(data_and_eval.md §10). Inputs arrive in [0, 1]; the ImageNet normalisation happens inside the model.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ltray.errors import ConfigError
from ltray.models.branch import MaskedConv2d, make_batchnorm

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ARCHS = ("resnet18_cifar", "resnet50_cifar", "resnet50")


class InputNormalization(nn.Module):
    """(x − μ)/σ per channel. The statistics are non-persistent buffers: fixed, and not part of the state dict."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> MaskedConv2d:
    return MaskedConv2d(in_ch, out_ch, kernel_size=kernel, stride=stride, padding=kernel // 2, bias=False)


class Downsample(nn.Module):
    """The 1×1 conv + BN shortcut, used wherever the stride or the width changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, dual_bn: bool) -> None:
        super().__init__()
        self.conv = _conv(in_ch, out_ch, 1, stride)
        self.bn = make_batchnorm(out_ch, dim=2, dual=dual_bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int, dual_bn: bool) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = _conv(in_ch, planes, 3, stride)
        self.bn1 = make_batchnorm(planes, dim=2, dual=dual_bn)
        self.conv2 = _conv(planes, out_ch, 3)
        self.bn2 = make_batchnorm(out_ch, dim=2, dual=dual_bn)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = Downsample(in_ch, out_ch, stride, dual_bn) if stride != 1 or in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: the stride sits on the 3×3 conv."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int, dual_bn: bool) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = _conv(in_ch, planes, 1)
        self.bn1 = make_batchnorm(planes, dim=2, dual=dual_bn)
        self.conv2 = _conv(planes, planes, 3, stride)
        self.bn2 = make_batchnorm(planes, dim=2, dual=dual_bn)
        self.conv3 = _conv(planes, out_ch, 1)
        self.bn3 = make_batchnorm(out_ch, dim=2, dual=dual_bn)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = Downsample(in_ch, out_ch, stride, dual_bn) if stride != 1 or in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class Backbone(nn.Module):
    """A ResNet feature extractor: [B, 3, H, W] in [0, 1] → [B, out_dim] after global average pooling."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        *,
        imagenet_stem: bool,
        width: float,
        dual_bn: bool,
    ) -> None:
        super().__init__()
        widths = [max(1, int(round(c * width))) for c in (64, 128, 256, 512)]
        self.normalize = InputNormalization()
        if imagenet_stem:
            self.conv1 = MaskedConv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = _conv(3, widths[0], 3)
            self.maxpool = nn.Identity()
        self.bn1 = make_batchnorm(widths[0], dim=2, dual=dual_bn)
        self.relu = nn.ReLU(inplace=True)
        in_ch = widths[0]
        stages = []
        for planes, blocks, stride in zip(widths, layers, (1, 2, 2, 2)):
            stage = []
            for i in range(blocks):
                stage.append(block(in_ch, planes, stride if i == 0 else 1, dual_bn))
                in_ch = planes * block.expansion
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = in_ch
        self._init_weights()

    def _init_weights(self) -> None:
        """Kaiming-normal (fan_out, ReLU) convs; BN weight 1, bias 0; no zero-init of residual branches (§5)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.normalize(x)))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def build_backbone(arch: str, *, width: float = 1.0, dual_bn: bool = False) -> Backbone:
    """`resnet18_cifar` (512-d at width 1), `resnet50_cifar` or `resnet50` (ImageNet stem; both 2048-d).

    `width` multiplies every stage width (rounded, at least 1 channel).
    """
    if not width > 0:
        raise ConfigError(f"backbone width must be > 0, got {width!r}")
    if arch == "resnet18_cifar":
        return Backbone(BasicBlock, (2, 2, 2, 2), imagenet_stem=False, width=width, dual_bn=dual_bn)
    if arch == "resnet50_cifar":
        return Backbone(Bottleneck, (3, 4, 6, 3), imagenet_stem=False, width=width, dual_bn=dual_bn)
    if arch == "resnet50":
        return Backbone(Bottleneck, (3, 4, 6, 3), imagenet_stem=True, width=width, dual_bn=dual_bn)
    raise ConfigError(f"unknown backbone arch {arch!r}; expected one of {', '.join(ARCHS)}")
