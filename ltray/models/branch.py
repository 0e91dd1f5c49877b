"""Dense / pruned branch machinery for SDCLR (docs/math/sdclr.md §1–§3).

Both branches share every conv and linear weight. They differ in two places only:
- a `MaskedConv2d` multiplies its weight by a fixed boolean mask on the pruned branch;
- a `DualBatchNorm` keeps one BatchNorm per branch (index 0 dense, index 1 pruned), each with its own affine
  parameters and running statistics.
The active branch is a plain attribute on those modules, switched for a whole network by `set_branch`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn

DENSE = 0
PRUNED = 1


def _check_branch(branch: int) -> int:
    if branch not in (DENSE, PRUNED):
        raise ValueError(f"branch must be {DENSE} (dense) or {PRUNED} (pruned), got {branch!r}")
    return branch


class DualBatchNorm(nn.Module):
    """Two BatchNorms, `bn_list[0]` for the dense branch and `bn_list[1]` for the pruned one.

    The state-dict layout `<name>.bn_list.{0,1}.*` is the one of the SDCLR code base (data_and_eval.md §10).
    `nn.SyncBatchNorm.convert_sync_batchnorm` converts each copy into its own SyncBatchNorm (sdclr.md §4).
    """

    def __init__(self, num_features: int, *, dim: int = 2) -> None:
        super().__init__()
        norm = _batchnorm_class(dim)
        self.bn_list = nn.ModuleList([norm(num_features), norm(num_features)])
        self.branch = DENSE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn_list[self.branch](x)


def _batchnorm_class(dim: int) -> type[nn.modules.batchnorm._BatchNorm]:
    if dim == 1:
        return nn.BatchNorm1d
    if dim == 2:
        return nn.BatchNorm2d
    raise ValueError(f"BatchNorm dim must be 1 or 2, got {dim!r}")


def make_batchnorm(num_features: int, *, dim: int, dual: bool) -> nn.Module:
    """A `DualBatchNorm` when `dual`, otherwise one plain BatchNorm that serves both branches."""
    if dual:
        return DualBatchNorm(num_features, dim=dim)
    return _batchnorm_class(dim)(num_features)


class MaskedConv2d(nn.Conv2d):
    """Conv2d whose pruned branch uses `weight * prune_mask`, without rescaling (sdclr.md §2).

    `prune_mask` is a boolean buffer of the weight's shape (all ones until a mask is computed). It is saved in the
    state dict and never trained. Because the masked product is taken inside the forward, the pruned branch sends
    gradient only to surviving weights; the dense branch uses the full weight.
    """

    prune_mask: torch.Tensor

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("prune_mask", torch.ones_like(self.weight, dtype=torch.bool))
        self.branch = DENSE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight * self.prune_mask if self.branch == PRUNED else self.weight
        return self._conv_forward(x, weight, self.bias)


def _switchable(module: nn.Module) -> Iterator[DualBatchNorm | MaskedConv2d]:
    for m in module.modules():
        if isinstance(m, (DualBatchNorm, MaskedConv2d)):
            yield m


def set_branch(module: nn.Module, branch: int) -> None:
    """Make every DualBatchNorm and MaskedConv2d under `module` use `branch` (0 dense, 1 pruned)."""
    _check_branch(branch)
    for m in _switchable(module):
        m.branch = branch


@contextmanager
def branch(module: nn.Module, b: int) -> Iterator[nn.Module]:
    """Run a block with `module` on branch `b`; every switchable submodule gets its previous branch back after."""
    _check_branch(b)
    previous = [(m, m.branch) for m in _switchable(module)]
    try:
        for m, _ in previous:
            m.branch = b
        yield module
    finally:
        for m, old in previous:
            m.branch = old
