"""MAK selection math against hand-derived cases and plain-loop versions of the spec (docs/math/mak.md §2–§7)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ltray.errors import ConfigError, DataError
from ltray.select.mak import (
    core_set,
    ecle,
    mak_run_name,
    mak_scores,
    mak_select,
    merge_passes,
    proximity,
    regrouping_batches,
)

# --- §2 merging passes -------------------------------------------------------------------------------------------


def test_merge_passes_drops_padding_and_sorts() -> None:
    first = (np.array([2, 0, 1, 2]), np.array([[20.0], [0.0], [10.0], [99.0]]))  # index 2 repeated as padding
    second = (torch.tensor([1, 2, 0, 0]), torch.tensor([[11.0], [21.0], [1.0], [98.0]]))
    index, values = merge_passes([first, second], expected_size=3)
    np.testing.assert_array_equal(index, [0, 1, 2])
    np.testing.assert_array_equal(values[0], [[0.0], [10.0], [20.0]])  # the first occurrence of 2 is kept
    assert isinstance(values[1], torch.Tensor)
    np.testing.assert_array_equal(values[1].numpy(), [[1.0], [11.0], [21.0]])


def test_merge_passes_rejects_mismatched_sets() -> None:
    good = (np.array([0, 1, 2]), np.zeros((3, 2)))
    with pytest.raises(DataError):
        merge_passes([good, (np.array([0, 1, 3]), np.zeros((3, 2)))])
    with pytest.raises(DataError):
        merge_passes([good, (np.array([0, 1]), np.zeros((2, 2)))])
    with pytest.raises(DataError):
        merge_passes([good], expected_size=4)
    with pytest.raises(DataError):
        merge_passes([(np.array([0, 1, 2]), np.zeros((2, 2)))])
    with pytest.raises(DataError):
        merge_passes([])


# --- §3 ECLE -----------------------------------------------------------------------------------------------------


def test_regrouping_batches_by_hand() -> None:
    # M = 10, B = 4: n_b = 3; batches π[0:4], π[4:8] and the last π[6:10], keeping positions ≥ 8 only.
    batches, keep = regrouping_batches(torch.arange(10), 4)
    np.testing.assert_array_equal(batches.numpy(), [[0, 1, 2, 3], [4, 5, 6, 7], [6, 7, 8, 9]])
    np.testing.assert_array_equal(keep.numpy()[2], [False, False, True, True])
    assert keep[:2].all()
    batches, keep = regrouping_batches(torch.tensor([3, 1, 0, 2, 5, 4, 7, 6]), 4)  # M a multiple of B
    np.testing.assert_array_equal(batches.numpy(), [[3, 1, 0, 2], [5, 4, 7, 6]])
    assert keep.all()
    batches, keep = regrouping_batches(torch.tensor([2, 0, 1]), 512)  # M < B: one batch of all M
    np.testing.assert_array_equal(batches.numpy(), [[2, 0, 1]])
    assert keep.all()


def test_every_candidate_gets_exactly_q_p_values_for_m_700() -> None:
    size, width, passes, regroupings = 700, 512, 3, 4
    generator = torch.Generator().manual_seed(0)
    counts = np.zeros(size, dtype=np.int64)
    n_pairs = passes * (passes - 1) // 2
    for _ in range(n_pairs * regroupings):
        batches, keep = regrouping_batches(torch.randperm(size, generator=generator), width)
        assert batches.shape == (2, 512)
        assert int(keep[1].sum()) == 700 - 512  # the last batch π[188:700] keeps positions 512..699
        counts += np.bincount(batches[keep].numpy(), minlength=size)
    np.testing.assert_array_equal(counts, np.full(size, n_pairs * regroupings))


def loop_ntxent_per_sample(u: np.ndarray, v: np.ndarray, tau: float) -> np.ndarray:
    """L_n = ½(ℓ_n + ℓ_{n+B}), ℓ_i = −s_{i,i⁺}/τ + log Σ_{k≠i} exp(s_ik/τ), one anchor at a time (float64)."""
    z = np.concatenate([u, v]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = u.shape[0]
    anchor = np.zeros(2 * n)
    for i in range(2 * n):
        similarities = z @ z[i]
        others = np.delete(similarities, i)
        anchor[i] = -similarities[(i + n) % (2 * n)] / tau + math.log(np.exp(others / tau).sum())
    return 0.5 * (anchor[:n] + anchor[n:])


def loop_ecle(views: list[np.ndarray], width: int, tau: float, regroupings: int, seed: int) -> np.ndarray:
    """docs/math/mak.md §3 step by step, with the same generator construction as `ecle`."""
    size = views[0].shape[0]
    generator = torch.Generator().manual_seed(seed)
    sums = np.zeros(size)
    counts = np.zeros(size, dtype=np.int64)
    for a in range(len(views)):
        for b in range(a + 1, len(views)):
            for _ in range(regroupings):
                perm = torch.randperm(size, generator=generator).numpy()
                if size < width:
                    batches = [(perm, 0)]
                else:
                    n_b = math.ceil(size / width)
                    batches = [(perm[k * width : (k + 1) * width], 0) for k in range(n_b - 1)]
                    batches.append((perm[size - width :], (n_b - 1) * width - (size - width)))
                for members, keep_from in batches:
                    losses = loop_ntxent_per_sample(views[a][members], views[b][members], tau)
                    for position in range(keep_from, len(members)):
                        sums[members[position]] += losses[position]
                        counts[members[position]] += 1
    n_pairs = len(views) * (len(views) - 1) // 2
    assert np.all(counts == regroupings * n_pairs)
    return sums / counts


def test_ecle_tiny_case_matches_loop() -> None:
    rng = np.random.default_rng(0)
    views = [rng.normal(size=(10, 5)).astype(np.float32) for _ in range(3)]
    expected = loop_ecle(views, width=4, tau=0.2, regroupings=2, seed=7)
    got = ecle(views, batch_size=4, temperature=0.2, regroupings=2, seed=7)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    one_batch_per_chunk = ecle(views, batch_size=4, regroupings=2, seed=7, max_logits_per_chunk=1)
    np.testing.assert_allclose(one_batch_per_chunk, got, rtol=1e-6, atol=1e-6)
    torch_views = ecle([torch.from_numpy(v) for v in views], batch_size=4, regroupings=2, seed=7)
    np.testing.assert_allclose(torch_views, got, rtol=1e-6, atol=1e-6)


def test_ecle_overlapping_last_batch_m_700() -> None:
    rng = np.random.default_rng(1)
    views = [rng.normal(size=(700, 8)).astype(np.float32) for _ in range(2)]
    expected = loop_ecle(views, width=512, tau=0.2, regroupings=2, seed=3)
    got = ecle(views, batch_size=512, regroupings=2, seed=3)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_ecle_single_batch_when_m_below_batch_size() -> None:
    # All M candidates share one batch, so every regrouping gives the same per-sample NT-Xent.
    rng = np.random.default_rng(2)
    views = [rng.normal(size=(6, 4)).astype(np.float32) for _ in range(2)]
    expected = loop_ntxent_per_sample(views[0], views[1], 0.2)
    np.testing.assert_allclose(ecle(views, regroupings=3), expected, rtol=1e-5, atol=1e-5)


def test_ecle_seed_controls_the_permutations() -> None:
    rng = np.random.default_rng(3)
    views = [rng.normal(size=(9, 4)).astype(np.float32) for _ in range(2)]
    first = ecle(views, batch_size=4, regroupings=1, seed=0)
    np.testing.assert_array_equal(first, ecle(views, batch_size=4, regroupings=1, seed=0))
    assert not np.allclose(first, ecle(views, batch_size=4, regroupings=1, seed=1))


def test_ecle_rejects_bad_input() -> None:
    view = np.zeros((4, 3), dtype=np.float32)
    with pytest.raises(DataError):
        ecle([view])
    with pytest.raises(DataError):
        ecle([view, np.zeros((5, 3), dtype=np.float32)])
    with pytest.raises(ConfigError):
        ecle([view, view], temperature=0.0)
    with pytest.raises(ConfigError):
        ecle([view, view], regroupings=0)


# --- §4 proximity ------------------------------------------------------------------------------------------------


def test_proximity_on_toy_clusters() -> None:
    # Two symmetric ID clusters with (unnormalised) members around e1 and e2: after normalisation their centres
    # renormalise exactly to e1 and e2.
    id_features = np.array(
        [[5.0, 0.5, 0.0], [5.0, -0.5, 0.0], [2.0, 0.2, 0.0], [2.0, -0.2, 0.0], [0.0, 3.0, 0.3], [0.0, 3.0, -0.3]]
    )
    candidates = np.array([[3.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 2.0], [-1.0, 0.0, 0.0], [1.0, 2.0, 0.0]])
    # d = 1 − max(cos to e1, cos to e2): 0; 1 − 1/√2; 1 − 0; 1 − max(−1, 0); 1 − 2/√5.
    expected = [0.0, 1 - 1 / math.sqrt(2), 1.0, 1.0, 1 - 2 / math.sqrt(5)]
    got = proximity(id_features, candidates, n_clusters=2)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(proximity(torch.from_numpy(id_features), torch.from_numpy(candidates), 2), got)


def test_proximity_rejects_dimension_mismatch() -> None:
    with pytest.raises(DataError):
        proximity(np.eye(3), np.ones((2, 4)), n_clusters=2)


# --- §5 score and core set ---------------------------------------------------------------------------------------


def test_scores_use_population_std() -> None:
    # ECLE [0, 1, 2]: mean 1, population std √(2/3) = 0.8165 → L̂ = [−1.2247, 0, 1.2247] (ddof 1 would give ±1).
    # distance [2, 0, 1]: mean 1, std 0.8165 → D̂ = [1.2247, −1.2247, 0].
    # w = 0.5: 0.5·L̂ − 0.5·D̂ = [−1.2247, 0.6124, 0.6124].
    r = math.sqrt(1.5)
    scores = mak_scores(np.array([0.0, 1.0, 2.0]), np.array([2.0, 0.0, 1.0]))
    np.testing.assert_allclose(scores, [-r, r / 2, r / 2])
    np.testing.assert_allclose(mak_scores(np.array([0.0, 1.0, 2.0]), np.array([2.0, 0.0, 1.0]), 0.0), [-r, r, 0.0])


def test_scores_with_zero_std() -> None:
    # distance constant → D̂ ≡ 0; ECLE [1, 2, 3, 4]: std √1.25 → L̂ = [−1.3416, −0.4472, 0.4472, 1.3416].
    scores = mak_scores(np.array([1.0, 2.0, 3.0, 4.0]), np.full(4, 0.3), loss_weight=0.5)
    s = math.sqrt(1.25)
    np.testing.assert_allclose(scores, 0.5 * np.array([-1.5, -0.5, 0.5, 1.5]) / s)
    np.testing.assert_array_equal(mak_scores(np.ones(3), np.ones(3)), np.zeros(3))


def test_scores_reject_bad_input() -> None:
    with pytest.raises(DataError):
        mak_scores(np.ones(3), np.ones(4))
    with pytest.raises(ConfigError):
        mak_scores(np.ones(3), np.ones(3), loss_weight=1.5)


def test_core_set_order_and_ties() -> None:
    scores = np.array([0.5, 0.1, 0.5, 0.9, 0.1, 0.3])
    # Stable ascending: 1, 4 (0.1), 5 (0.3), 0, 2 (0.5), 3 (0.9).
    np.testing.assert_array_equal(core_set(scores, budget=2, core_ratio=1.5), [0, 2, 3])  # M_core = 3
    np.testing.assert_array_equal(core_set(scores, budget=2, core_ratio=2.0), [5, 0, 2, 3])
    np.testing.assert_array_equal(core_set(scores, budget=1, core_ratio=1.5), [3])  # int(1.5) = 1
    np.testing.assert_array_equal(core_set(scores, budget=10), [1, 4, 5, 0, 2, 3])  # capped at M
    np.testing.assert_array_equal(core_set(np.ones(3), budget=2, core_ratio=1.0), [1, 2])  # tie cut by index
    with pytest.raises(ConfigError):
        core_set(scores, budget=0)


# --- §5–§6 end to end --------------------------------------------------------------------------------------------


def reference_select(
    losses: np.ndarray,
    distance: np.ndarray,
    cand: np.ndarray,
    id_feats: np.ndarray,
    budget: int,
    w: float,
    ratio: float,
) -> list[int]:
    def standardise(x: np.ndarray) -> np.ndarray:
        return (x - x.mean()) / x.std()

    score = w * standardise(losses) - (1 - w) * standardise(distance)
    core = np.argsort(score, kind="stable")[-int(ratio * budget) :]
    if len(core) <= budget:
        return core.tolist()
    pool = cand[core] / np.linalg.norm(cand[core], axis=1, keepdims=True)
    start = id_feats / np.linalg.norm(id_feats, axis=1, keepdims=True)
    selected: list[int] = []
    for _ in range(budget):
        mu = []
        for j in range(len(pool)):
            if j in selected:
                mu.append(math.inf)
                continue
            mu.append(max([float(pool[j] @ s) for s in start] + [float(pool[j] @ pool[k]) for k in selected]))
        selected.append(int(np.argmin(mu)))
    return core[selected].tolist()


def test_mak_select_end_to_end() -> None:
    rng = np.random.default_rng(4)
    losses, distance = rng.random(60), rng.random(60)
    cand = rng.normal(size=(60, 8))
    id_feats = rng.normal(size=(20, 8))
    picks = mak_select(losses, distance, cand.astype(np.float32), id_feats.astype(np.float32), budget=10)
    assert picks.tolist() == reference_select(losses, distance, cand, id_feats, 10, 0.5, 1.5)
    assert len(set(picks.tolist())) == 10
    assert set(picks.tolist()) <= set(core_set(mak_scores(losses, distance), 10).tolist())
    on_tensors = mak_select(losses, distance, torch.from_numpy(cand), torch.from_numpy(id_feats), budget=10)
    np.testing.assert_array_equal(on_tensors, picks)


def test_mak_select_without_kcenter_returns_core_set() -> None:
    rng = np.random.default_rng(5)
    losses, distance = rng.random(30), rng.random(30)
    cand, id_feats = rng.normal(size=(30, 4)), rng.normal(size=(5, 4))
    picks = mak_select(losses, distance, cand, id_feats, budget=10, loss_weight=0.0, core_ratio=1.0)
    assert picks.tolist() == reference_select(losses, distance, cand, id_feats, 10, 0.0, 1.0)
    np.testing.assert_array_equal(picks, np.argsort(-distance, kind="stable")[-10:])
    with pytest.raises(DataError):
        mak_select(losses, distance, cand[:29], id_feats, budget=10)


# --- §7 name -----------------------------------------------------------------------------------------------------


def test_run_name_template() -> None:
    assert mak_run_name(0.5, 10, 10, 1.5, 10000, 10) == "optimize_0.5lossR10_nearK10_coreR1.5_num10000_s10"
    assert mak_run_name(0, 5, 10, 1, 20000, 30) == "optimize_0.0lossR5_nearK10_coreR1.0_num20000_s30"
