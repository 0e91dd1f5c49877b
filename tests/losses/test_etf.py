"""GH target construction and checks (docs/math/gh.md §1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ltray.errors import ConfigError, DataError
from ltray.losses.etf import (
    approximate_targets,
    build_gh_target,
    check_etf,
    max_pairwise_cosine,
    polar_etf,
    simplex_etf,
)


def _assert_simplex_etf(w: torch.Tensor, k: int, d: int) -> None:
    assert w.dtype == torch.float32 and w.shape == (k, d)
    w64 = w.double().numpy()
    np.testing.assert_allclose(np.linalg.norm(w64, axis=1), np.ones(k), atol=1e-6)
    gram = w64 @ w64.T
    np.testing.assert_allclose(gram[~np.eye(k, dtype=bool)], -1.0 / (k - 1), atol=1e-6)
    np.testing.assert_allclose(w64.sum(axis=0), np.zeros(d), atol=1e-5)


@pytest.mark.parametrize(("k", "d"), [(2, 1), (3, 2), (5, 4), (10, 16), (100, 128), (129, 128)])
def test_simplex_etf_properties(k: int, d: int) -> None:
    w = simplex_etf(k, d, seed=1)
    _assert_simplex_etf(w, k, d)
    check_etf(w)


def test_simplex_etf_is_seeded() -> None:
    assert torch.equal(simplex_etf(5, 8, seed=3), simplex_etf(5, 8, seed=3))
    assert not torch.equal(simplex_etf(5, 8, seed=3), simplex_etf(5, 8, seed=4))


@pytest.mark.parametrize(("k", "d"), [(2, 2), (5, 8), (100, 128), (128, 128)])
def test_polar_etf_properties(k: int, d: int) -> None:
    w = polar_etf(k, d, seed=2)
    _assert_simplex_etf(w, k, d)
    check_etf(w)


@pytest.mark.parametrize(("k", "d"), [(5, 4), (129, 128)])
def test_polar_rejects_k_equal_d_plus_one(k: int, d: int) -> None:
    with pytest.raises(ConfigError, match="polar"):
        polar_etf(k, d)
    with pytest.raises(ConfigError, match="polar"):
        build_gh_target(k, d, construction="polar")
    assert build_gh_target(k, d, construction="qr").exact_etf


def test_k_above_d_plus_one_needs_approximate() -> None:
    with pytest.raises(ConfigError, match="approximate"):
        build_gh_target(6, 4)
    with pytest.raises(ConfigError):
        simplex_etf(6, 4)


def test_approximate_targets_spread_points() -> None:
    # six directions in the plane: the optimum is the regular hexagon, max cosine 1/2
    w, max_cosine = approximate_targets(6, 2, seed=0, steps=1000)
    assert w.dtype == torch.float32 and w.shape == (6, 2)
    np.testing.assert_allclose(torch.linalg.vector_norm(w.double(), dim=1).numpy(), np.ones(6), atol=1e-6)
    assert max_cosine == pytest.approx(0.5, abs=1e-3)
    assert max_cosine == pytest.approx(max_pairwise_cosine(w), abs=1e-12)
    # ten directions in R³ (Tammes optimum ≈ 0.4045); random starts are far worse
    _, ten = approximate_targets(10, 3, seed=0, steps=1000)
    start, _ = approximate_targets(10, 3, seed=0, steps=0)
    assert ten < 0.42 < max_pairwise_cosine(start)


def test_build_approximate_target() -> None:
    target = build_gh_target(6, 2, approximate=True, seed=0)
    assert target.source == "approximate" and not target.exact_etf and target.seed == 0
    assert target.max_cosine == pytest.approx(0.5, abs=1e-3)
    exact = build_gh_target(5, 4, approximate=True, seed=0)
    assert exact.source == "qr" and exact.exact_etf
    assert exact.max_cosine == pytest.approx(-0.25, abs=1e-6)


def test_check_etf_rejects_violations() -> None:
    w = simplex_etf(100, 128, seed=0)
    with pytest.raises(ConfigError, match="unit"):
        check_etf(w * 1.001)
    with pytest.raises(ConfigError, match="simplex ETF"):
        check_etf(torch.nn.functional.normalize(torch.randn(10, 16), dim=1))
    shifted = w.clone()
    shifted[:, 0] += 1e-6  # rows and Gram stay within 1e-5, the column sum moves by 1e-4
    with pytest.raises(ConfigError, match="sum"):
        check_etf(shifted)


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_load_supplied_file(tmp_path: Path, suffix: str) -> None:
    w = simplex_etf(10, 16, seed=5).double()
    path = tmp_path / f"target{suffix}"
    if suffix == ".npy":
        np.save(path, w.numpy())
    else:
        torch.save(w, path)
    target = build_gh_target(10, 16, path=path)
    assert target.source == "file" and target.exact_etf and target.weight.dtype == torch.float32
    torch.testing.assert_close(target.weight, w.float())
    with pytest.raises(ConfigError, match="shape"):
        build_gh_target(10, 8, path=path)


def test_supplied_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        build_gh_target(10, 16, path=tmp_path / "missing.npy")
    with pytest.raises(ConfigError, match=".npy or .pt"):
        build_gh_target(10, 16, path=tmp_path / "target.txt")
    corrupt = tmp_path / "corrupt.npy"
    corrupt.write_bytes(b"not an array")
    with pytest.raises(DataError):
        build_gh_target(10, 16, path=corrupt)
    holds_dict = tmp_path / "dict.pt"
    torch.save({"w": simplex_etf(10, 16)}, holds_dict)
    with pytest.raises(DataError):
        build_gh_target(10, 16, path=holds_dict)
    not_etf = tmp_path / "random.npy"
    np.save(not_etf, torch.nn.functional.normalize(torch.randn(10, 16), dim=1).numpy())
    with pytest.raises(ConfigError):
        build_gh_target(10, 16, path=not_etf)


def test_supplied_file_beyond_d_plus_one(tmp_path: Path) -> None:
    w, _ = approximate_targets(8, 3, seed=1, steps=200)
    path = tmp_path / "approx.pt"
    torch.save(w, path)
    target = build_gh_target(8, 3, path=path)
    assert target.source == "file" and not target.exact_etf
    torch.save(w * 2, path)
    with pytest.raises(ConfigError, match="unit"):
        build_gh_target(8, 3, path=path)


def test_invalid_sizes_and_construction() -> None:
    with pytest.raises(ConfigError):
        build_gh_target(1, 4)
    with pytest.raises(ConfigError):
        build_gh_target(4, 8, construction="svd")  # type: ignore[arg-type]
