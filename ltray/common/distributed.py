"""Distributed helpers (docs/math/README.md, convention 4). All are no-ops in a single process."""

from __future__ import annotations

from typing import cast

import torch
import torch.distributed as dist
import torch.nn as nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward keeps only the gradient of this rank's own slice. Every rank computes the same
    global loss, so the caller scales the loss by the world size and DDP's gradient averaging turns that into the
    single-process gradient of the global batch (convention 4)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        local = grad.shape[0] // dist.get_world_size()
        start = dist.get_rank() * local
        return grad[start : start + local]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` over ranks (equal sizes per rank); the local slice keeps its gradient."""
    if not is_distributed():
        return tensor
    return _GatherWithGrad.apply(tensor)


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` over ranks without gradient; ranks may hold different lengths along dim 0."""
    if not is_distributed():
        return tensor
    n = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)], dim=0)


def local_slice(global_tensor: torch.Tensor, local_size: int) -> torch.Tensor:
    """Rows of a gathered tensor (equal sizes per rank) that belong to this rank."""
    start = rank() * local_size
    return global_tensor[start : start + local_size]


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward sums the incoming gradients over ranks too (every rank's output is the sum)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        total = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, group=ctx.group)
        return total, None


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Synchronised BatchNorm for CPU workers (gloo), which torch's SyncBatchNorm and DDP reject. In training with a
    process group, the global mean and biased variance come from two differentiable all-reduces (Σx with the count,
    then Σ(x − mean)²), so every rank's input gets the gradient of one process on the global batch; the running
    statistics take the unbiased global variance, as BatchNorm does. Otherwise it is BatchNorm."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or not (dist.is_available() and dist.is_initialized()):
            return super().forward(input)
        self._check_input_dim(input)
        x = input
        group = dist.group.WORLD
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        local_count = torch.full((1,), float(x.numel() // x.shape[1]), dtype=x.dtype, device=x.device)
        sums = _AllReduceSum.apply(torch.cat([x.sum(dims), local_count]), group)
        count = int(sums[-1].item())
        if count <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got {count} over all ranks")
        mean = sums[:-1] / count
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply(centred.pow(2).sum(dims), group) / count
        if self.track_running_stats:  # then the three buffers exist
            num_batches_tracked = cast(torch.Tensor, self.num_batches_tracked)
            running_mean = cast(torch.Tensor, self.running_mean)
            running_var = cast(torch.Tensor, self.running_var)
            num_batches_tracked.add_(1)
            factor = self.momentum if self.momentum is not None else 1.0 / float(num_batches_tracked)
            with torch.no_grad():
                running_mean.mul_(1.0 - factor).add_(mean.detach(), alpha=factor)
                running_var.mul_(1.0 - factor).add_(var.detach() * (count / (count - 1)), alpha=factor)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Make every BatchNorm under `module` synchronise over ranks: torch's SyncBatchNorm on accelerators,
    `CPUSyncBatchNorm` (sharing the parameters and buffers) on CPU. Each copy of a dual BN becomes its own
    synchronised BN, so each SDCLR branch synchronises its own statistics (sdclr.md §4)."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    converted = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        converted = CPUSyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            converted.weight = module.weight
            converted.bias = module.bias
        converted.running_mean = module.running_mean
        converted.running_var = module.running_var
        converted.num_batches_tracked = module.num_batches_tracked
        converted.training = module.training
    for name, child in module.named_children():
        converted.add_module(name, convert_sync_batchnorm(child, device))
    return converted
