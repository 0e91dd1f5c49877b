"""Sinkhorn-Knopp surrogate labels of Geometric Harmonization (Zhou et al., "Combating Representation Learning
Disparity with Geometric Harmonization", NeurIPS 2023; Cuturi, NeurIPS 2013). Spec: docs/math/gh.md §3."""

from __future__ import annotations

from typing import Any

import torch

from ltray.errors import ConfigError


@torch.no_grad()
def sinkhorn_knopp(
    t: torch.Tensor, prior: torch.Tensor | None = None, epsilon: float = 0.05, iterations: int = 300
) -> torch.Tensor:
    """Entropic OT assignment of B images to K directions, shape [B, K], float32, no gradient (gh.md §3).

    Q = exp(t/ε)ᵀ ∈ R^{K×B} (no max-subtraction: GH logits satisfy |t| ≤ 1, so Q ≤ e^{1/ε}); row target
    a = π/Σπ (uniform 1/K without a prior), column target b = 1/B; c starts at 𝟙/B and each of exactly
    `iterations` steps does r ← a ⊘ (Qc), then c ← b ⊘ (Qᵀr). Output q = B·(diag(r) Q diag(c))ᵀ: every row sums to 1,
    column k sums to ≈ B·a_k, and a zero prior entry gives an all-zero column.
    """
    if t.dim() != 2:
        raise ValueError(f"t must be [B, K], got shape {tuple(t.shape)}")
    if epsilon <= 0:
        raise ConfigError(f"Sinkhorn epsilon must be > 0, got {epsilon}")
    if iterations < 1:
        raise ConfigError(f"Sinkhorn iterations must be >= 1, got {iterations}")
    batch, k = t.shape
    device = t.device
    with torch.autocast(device_type=device.type, enabled=False):
        q = torch.exp(t.detach().float() / epsilon).t()
        if prior is None:
            a = torch.full((k,), 1.0 / k, dtype=torch.float32, device=device)
        else:
            if prior.shape != (k,):
                raise ValueError(f"prior must have shape ({k},), got {tuple(prior.shape)}")
            prior64 = prior.detach().to(device=device, dtype=torch.float64)
            if bool((prior64 < 0).any()) or not bool(prior64.sum() > 0):
                raise ValueError("prior must be non-negative with a positive sum")
            a = (prior64 / prior64.sum()).float()
        b = torch.full((batch,), 1.0 / batch, dtype=torch.float32, device=device)
        iterate = _iterate_cuda_graph if device.type == "cuda" else _iterate
        r, c = iterate(q, a, b, iterations)
        return batch * (r[:, None] * q * c[None, :]).t()


def _iterate(q: torch.Tensor, a: torch.Tensor, b: torch.Tensor, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The Sinkhorn scaling vectors (r, c) after `iterations` steps."""
    has_mass = a > 0
    zeros = torch.zeros_like(a)
    c = b.clone()
    r = zeros
    for _ in range(iterations):
        r = torch.where(has_mass, a / (q @ c), zeros)
        c = b / (q.t() @ r)
    return r, c


_GRAPHS: dict[tuple[Any, ...], tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor]]] = {}


def _iterate_cuda_graph(q: torch.Tensor, a: torch.Tensor, b: torch.Tensor, iterations: int
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """`_iterate` replayed from a CUDA graph captured once per (shape, device, iterations): the ~6 small kernels of
    each of the 300 steps launch as one graph instead of ~1 800 launches (bench/bench_gpu.py: GH's step time)."""
    key = (tuple(q.shape), q.device, iterations)
    if key not in _GRAPHS:
        static = {"q": q.clone(), "a": a.clone(), "b": b.clone()}
        side = torch.cuda.Stream(q.device)
        side.wait_stream(torch.cuda.current_stream(q.device))
        with torch.cuda.stream(side):  # warm-up outside the capture, as CUDA graphs require
            _iterate(static["q"], static["a"], static["b"], iterations)
        torch.cuda.current_stream(q.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static["r"], static["c"] = _iterate(static["q"], static["a"], static["b"], iterations)
        _GRAPHS[key] = (graph, static)
    graph, static = _GRAPHS[key]
    static["q"].copy_(q)
    static["a"].copy_(a)
    static["b"].copy_(b)
    graph.replay()
    return static["r"].clone(), static["c"].clone()
