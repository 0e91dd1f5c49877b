"""Projection heads (docs/math/data_and_eval.md §5, docs/math/sdclr.md §1, docs/math/focal_lotar.md §2.4).

- `simclr`: Linear(d→d, bias) → BN1d → ReLU → Linear(d→out, no bias) → BN1d.
- `sdclr3`: Linear(d→d, bias) → BN → ReLU → Linear(d→d, no bias) → BN → ReLU → Linear(d→out, no bias) → BN.
- `lotar`: the LoTaR preset's encoder fc Linear(d→encoder_dim) followed by its projector
  Linear(encoder_dim→out) → ReLU → Linear(out→out); every layer has a bias and there is no BN.
With `dual_bn`, every BN of the `simclr` and `sdclr3` heads is a `DualBatchNorm`.
"""

from __future__ import annotations

import torch.nn as nn

from ltray.errors import ConfigError
from ltray.models.branch import make_batchnorm

HEADS = ("simclr", "sdclr3", "lotar")


class ProjectionHead(nn.Sequential):
    """A head as a sequence of layers, with its `kind` and `out_dim`."""

    def __init__(self, kind: str, out_dim: int, *layers: nn.Module) -> None:
        super().__init__(*layers)
        self.kind = kind
        self.out_dim = out_dim


def build_head(
    kind: str, in_dim: int, *, out_dim: int = 128, dual_bn: bool = False, encoder_dim: int = 512
) -> ProjectionHead:
    """The projection head `kind` ∈ {simclr, sdclr3, lotar} on top of `in_dim` backbone features."""
    if in_dim < 1 or out_dim < 1 or encoder_dim < 1:
        raise ConfigError(
            f"head sizes must be ≥ 1, got in_dim={in_dim}, out_dim={out_dim}, encoder_dim={encoder_dim}"
        )
    d = in_dim
    if kind in ("simclr", "sdclr3"):
        layers = [nn.Linear(d, d), make_batchnorm(d, dim=1, dual=dual_bn), nn.ReLU(inplace=True)]
        if kind == "sdclr3":
            layers += [nn.Linear(d, d, bias=False), make_batchnorm(d, dim=1, dual=dual_bn), nn.ReLU(inplace=True)]
        return ProjectionHead(
            kind, out_dim, *layers, nn.Linear(d, out_dim, bias=False), make_batchnorm(out_dim, dim=1, dual=dual_bn)
        )
    if kind == "lotar":
        return ProjectionHead(
            kind,
            out_dim,
            nn.Linear(d, encoder_dim),
            nn.Linear(encoder_dim, out_dim),
            nn.ReLU(inplace=True),
            nn.Linear(out_dim, out_dim),
        )
    raise ConfigError(f"unknown projection head {kind!r}; expected one of {', '.join(HEADS)}")
