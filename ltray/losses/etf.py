"""The fixed GH target W ∈ R^{K×d}: a simplex equiangular tight frame (Zhou et al., "Combating Representation
Learning Disparity with Geometric Harmonization", NeurIPS 2023; the simplex ETF of Papyan et al., PNAS 2020).
Spec: docs/math/gh.md §1."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ltray.errors import ConfigError, DataError, torch_load_reason

EtfConstruction = Literal["qr", "polar"]
ETF_TOLERANCE = 1e-5


@dataclass(frozen=True)
class GHTarget:
    """A built or loaded GH target.

    weight: [K, d] float32, unit rows. source: "qr", "polar", "approximate" or "file". seed: the construction seed
    (None for a file). max_cosine: the largest pairwise cosine. exact_etf: True when W is a simplex ETF
    (K ≤ d+1); an approximate target (K > d+1) is not reference-backed.
    """

    weight: torch.Tensor
    source: str
    seed: int | None
    max_cosine: float
    exact_etf: bool


def _check_sizes(k: int, d: int) -> None:
    if k < 2:
        raise ConfigError(f"gh_target_dim must be >= 2, got {k}")
    if d < 1:
        raise ConfigError(f"the projector output dimension must be >= 1, got {d}")


def simplex_etf(k: int, d: int, seed: int = 0) -> torch.Tensor:
    """ltray's simplex ETF construction, exact for every K ≤ d+1 (gh.md §1). Returns [K, d] float32.

    V = orthonormal basis (QR) of the column space of a column-centred seeded Gaussian K×(K−1) matrix, so
    Vᵀ𝟙 = 0; M₀ = √(K/(K−1))·V has Gram (K/(K−1))(I − 𝟙𝟙ᵀ/K); W = M₀Rᵀ with R ∈ R^{d×(K−1)} orthonormal columns.
    """
    _check_sizes(k, d)
    if k > d + 1:
        raise ConfigError(f"a simplex ETF of K={k} directions needs d >= K-1, got d={d}")
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(k, k - 1, generator=generator, dtype=torch.float64)
    basis, _ = torch.linalg.qr(gaussian - gaussian.mean(dim=0, keepdim=True))
    m0 = math.sqrt(k / (k - 1)) * basis
    rotation, _ = torch.linalg.qr(torch.randn(d, k - 1, generator=generator, dtype=torch.float64))
    return (m0 @ rotation.t()).float()


def polar_etf(k: int, d: int, seed: int = 0) -> torch.Tensor:
    """The reference generator W = √(K/(K−1))(I − 𝟙𝟙ᵀ/K)U, U the polar factor of a seeded Gaussian K×d matrix
    (gh.md §1, `gh_target_construction=polar`). Exact only for K ≤ d; K > d is a ConfigError. Returns float32."""
    _check_sizes(k, d)
    if k > d:
        raise ConfigError(
            f"the polar ETF construction needs K <= d (K={k}, d={d}); use gh_target_construction=qr for K = d+1"
        )
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(k, d, generator=generator, dtype=torch.float64)
    u, _, vh = torch.linalg.svd(gaussian, full_matrices=False)
    centring = torch.eye(k, dtype=torch.float64) - torch.full((k, k), 1.0 / k, dtype=torch.float64)
    return (math.sqrt(k / (k - 1)) * centring @ (u @ vh)).float()


def max_pairwise_cosine(weight: torch.Tensor) -> float:
    """The largest w_j·w_k/(‖w_j‖‖w_k‖) over j ≠ k, computed in float64."""
    w = F.normalize(weight.detach().double(), dim=1)
    gram = w @ w.t()
    gram.fill_diagonal_(float("-inf"))
    return float(gram.max())


def approximate_targets(
    k: int, d: int, seed: int = 0, steps: int = 1000, temperature: float = 0.01, step_size: float = 1.0
) -> tuple[torch.Tensor, float]:
    """Approximately equiangular unit directions for K > d+1, where no simplex ETF exists (gh.md §1,
    `gh_target=approximate`). Returns (W [K, d] float32, its achieved maximum pairwise cosine).

    Starts from seeded Gaussian unit vectors and minimises the smooth maximum log Σ_{j<k} exp(w_j·w_k/T_s) by
    projected gradient on the sphere: the gradient, scaled by T_s, is projected on each row's tangent space and the
    rows are renormalised after each step; the step size decays from `step_size` to 0 on a cosine schedule.
    """
    _check_sizes(k, d)
    if steps < 0:
        raise ConfigError(f"approximate target steps must be >= 0, got {steps}")
    if temperature <= 0 or step_size <= 0:
        raise ConfigError("approximate target temperature and step size must be > 0")
    generator = torch.Generator().manual_seed(seed)
    w = F.normalize(torch.randn(k, d, generator=generator, dtype=torch.float64), dim=1)
    off_diagonal = ~torch.eye(k, dtype=torch.bool)
    for step in range(steps):
        scaled = (w @ w.t() / temperature).masked_fill(~off_diagonal, float("-inf"))
        # softmax over all ordered pairs; each unordered pair {j, k} appears twice, hence the factor 2
        pair_weight = torch.softmax(scaled.flatten(), dim=0).view(k, k)
        grad = 2.0 * pair_weight @ w
        tangent = grad - (grad * w).sum(dim=1, keepdim=True) * w
        eta = step_size * 0.5 * (1.0 + math.cos(math.pi * step / steps))
        w = F.normalize(w - eta * tangent, dim=1)
    weight = w.float()
    return weight, max_pairwise_cosine(weight)


def check_unit_rows(weight: torch.Tensor, tol: float = ETF_TOLERANCE) -> None:
    """Raise ConfigError unless `weight` is a finite [K, d] matrix with unit rows (tolerance `tol`)."""
    if weight.dim() != 2:
        raise ConfigError(f"a GH target must be a K×d matrix, got shape {tuple(weight.shape)}")
    w = weight.detach().double()
    if not bool(torch.isfinite(w).all()):
        raise ConfigError("the GH target contains non-finite values")
    norm_error = float((torch.linalg.vector_norm(w, dim=1) - 1.0).abs().max())
    if norm_error > tol:
        raise ConfigError(f"GH target rows are not unit vectors (max |‖w_k‖ − 1| = {norm_error:.3g} > {tol:g})")


def check_etf(weight: torch.Tensor, tol: float = ETF_TOLERANCE) -> None:
    """Raise ConfigError unless `weight` is a simplex ETF: ‖w_k‖ = 1, w_j·w_k = −1/(K−1) for j ≠ k and
    Σ_k w_k = 0, each within `tol` (gh.md §1, Checks)."""
    check_unit_rows(weight, tol)
    w = weight.detach().double()
    k = w.shape[0]
    if k < 2:
        raise ConfigError(f"a simplex ETF needs K >= 2 rows, got {k}")
    gram = w @ w.t()
    off_diagonal = ~torch.eye(k, dtype=torch.bool)
    gram_error = float((gram[off_diagonal] + 1.0 / (k - 1)).abs().max())
    if gram_error > tol:
        raise ConfigError(
            f"GH target is not a simplex ETF (max |w_j·w_k + 1/(K−1)| = {gram_error:.3g} > {tol:g})"
        )
    sum_error = float(w.sum(dim=0).abs().max())
    if sum_error > tol:
        raise ConfigError(f"GH target columns do not sum to 0 (max |Σ_k w_k| = {sum_error:.3g} > {tol:g})")


def load_target_file(path: str | Path, k: int, d: int) -> torch.Tensor:
    """Load a K×d target from a .npy or .pt file (tensor or array) as float32; checks existence and shape."""
    path = Path(path)
    if path.suffix not in (".npy", ".pt", ".pth"):
        raise ConfigError(f"GH target file must be .npy or .pt: {path}")
    if not path.is_file():
        raise DataError(f"GH target file not found: {path}")
    try:
        if path.suffix == ".npy":
            loaded = np.load(path, allow_pickle=False)
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"cannot read GH target file {path}: {torch_load_reason(exc)}") from None
    if isinstance(loaded, np.ndarray):
        if not np.issubdtype(loaded.dtype, np.number):
            raise DataError(f"GH target file {path} does not hold a numeric array")
        loaded = torch.from_numpy(loaded)
    if not isinstance(loaded, torch.Tensor):
        raise DataError(f"GH target file {path} does not hold a single tensor or array")
    if tuple(loaded.shape) != (k, d):
        raise ConfigError(f"GH target file {path} has shape {tuple(loaded.shape)}, expected ({k}, {d})")
    return loaded.float().contiguous()


def build_gh_target(
    k: int,
    d: int,
    construction: EtfConstruction = "qr",
    approximate: bool = False,
    seed: int = 0,
    path: str | Path | None = None,
    approximate_steps: int = 1000,
    approximate_temperature: float = 0.01,
) -> GHTarget:
    """Build (or load from `path`) and check the GH target (gh.md §1).

    - A supplied file is loaded and must be K×d; for K ≤ d+1 it must be a simplex ETF, for K > d+1 it must have
      unit rows.
    - Otherwise K ≤ d+1 uses `construction` ("qr", exact for K ≤ d+1; "polar", the reference method, K ≤ d).
    - K > d+1 has no simplex ETF: a ConfigError unless `approximate`, which runs `approximate_targets`.
    """
    _check_sizes(k, d)
    exact = k <= d + 1
    if path is not None:
        weight = load_target_file(path, k, d)
        (check_etf if exact else check_unit_rows)(weight)
        return GHTarget(weight, "file", None, max_pairwise_cosine(weight), exact)
    if not exact:
        if not approximate:
            raise ConfigError(
                f"no simplex ETF of K={k} directions exists in d={d} (needs K <= d+1): lower gh_target_dim, "
                "set gh_target=approximate or supply a K×d target file"
            )
        weight, max_cosine = approximate_targets(k, d, seed, approximate_steps, approximate_temperature)
        return GHTarget(weight, "approximate", seed, max_cosine, False)
    constructions = {"qr": simplex_etf, "polar": polar_etf}
    if construction not in constructions:
        raise ConfigError(f"gh_target_construction must be 'qr' or 'polar', got {construction!r}")
    weight = constructions[construction](k, d, seed)
    check_etf(weight)
    return GHTarget(weight, construction, seed, max_pairwise_cosine(weight), True)
