"""The wiring of every method component, against values computed by hand with NumPy loops.

Each test builds a composed `Method` from a config and checks what `compute_loss`, `observe` and the epoch hooks do
to a fixed batch: Focal replaces the base (focal_lotar.md §1), LoTaR multiplies (§2), GH adds λ_E·GH_i after the
warm-up and keeps its memory (gh.md §4–§6), BCL tracks the base loss and publishes versioned weights (bcl.md §2–§5),
SDCLR refreshes its mask (sdclr.md §2–§3) and COLT adds SupCon only with OOD items, tracks ID tailness and
resamples its pool (colt.md §1–§6).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import torch

from ltray.augment.randaugment import BCLWeights, StaleWeightsError
from ltray.config import Config, load_config
from ltray.data.train_data import TrainData
from ltray.errors import TrainingDiverged
from ltray.methods.base import EpochContext, Step
from ltray.methods.components.bcl import memorisation_weights
from ltray.methods.method import Method, build_method
from ltray.models.contrastive import build_model
from ltray.models.pruning import compute_masks, prunable_convs, refresh_masks
from ltray.select.colt import colt_select

CPU = torch.device("cpu")
TAU = 0.2


def _cfg(name: str, **overrides: Any) -> Config:
    return load_config(None, {"method.name": name, **{k.replace("__", "."): v for k, v in overrides.items()}})


def _method(name: str, size: int = 10, **overrides: Any) -> Method:
    return build_method(_cfg(name, **overrides), size, CPU)


def _part(method: Method, name: str) -> Any:
    return next(p for p in method.parts if p.name == name)


def _z(b: int = 4, d: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(b, d, generator=g)
    z2 = z1 + 0.8 * torch.randn(b, d, generator=g)
    return z1, z2


def _step(z1: torch.Tensor, z2: torch.Tensor, index: list[int] | None = None, epoch: int = 0) -> Step:
    idx = torch.tensor(index if index is not None else list(range(z1.shape[0])), dtype=torch.int64)
    return Step(z1=z1, z2=z2, index=idx, epoch=epoch, iteration=1)


# ---- hand references (NumPy, loops)


def _similarities(z1: torch.Tensor, z2: torch.Tensor) -> np.ndarray:
    z = np.concatenate([z1.detach().double().numpy(), z2.detach().double().numpy()])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    return z @ z.T


def np_ntxent_anchors(z1: torch.Tensor, z2: torch.Tensor, tau: float = TAU) -> np.ndarray:
    s = _similarities(z1, z2)
    n, b = s.shape[0], s.shape[0] // 2
    out = np.zeros(n)
    for a in range(n):
        denominator = sum(math.exp(s[a, k] / tau) for k in range(n) if k != a)
        out[a] = -math.log(math.exp(s[a, (a + b) % n] / tau) / denominator)
    return out


def np_per_image(anchors: np.ndarray) -> np.ndarray:
    b = len(anchors) // 2
    return 0.5 * (anchors[:b] + anchors[b:])


def np_focal_anchors(z1: torch.Tensor, z2: torch.Tensor, gamma: float, tau: float = TAU) -> np.ndarray:
    loss = np_ntxent_anchors(z1, z2, tau)
    return np.array([(1 - math.exp(-l)) ** gamma * l for l in loss])


def np_lotar_weights(z1: torch.Tensor, z2: torch.Tensor) -> np.ndarray:
    d = np.array([np.linalg.norm(a - b) for a, b in zip(z1.double().numpy(), z2.double().numpy())])
    return 1 + (d - d.mean()) / (d.max() - d.min())


def np_sinkhorn(t: np.ndarray, prior: np.ndarray | None, iterations: int, eps: float = 0.05) -> np.ndarray:
    b, k = t.shape
    q = np.exp(t / eps).T
    a = np.full(k, 1.0 / k) if prior is None else prior / prior.sum()
    col = np.full(b, 1.0 / b)
    c = col.copy()
    for _ in range(iterations):
        r = np.array([a[i] / (q[i] @ c) if a[i] > 0 else 0.0 for i in range(k)])
        c = col / (q.T @ r)
    return b * (r[:, None] * q * c[None, :]).T


def np_gh_per_sample(z1: torch.Tensor, z2: torch.Tensor, target: torch.Tensor, prior: np.ndarray | None,
                     iterations: int, gamma: float = 0.1) -> np.ndarray:
    w = target.double().numpy()

    def logits(z: torch.Tensor) -> np.ndarray:
        raw = z.detach().double().numpy() @ w.T
        return raw / np.linalg.norm(raw, axis=1, keepdims=True)

    def log_softmax(x: np.ndarray) -> np.ndarray:
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    t1, t2 = logits(z1), logits(z2)
    q1, q2 = np_sinkhorn(t1, prior, iterations), np_sinkhorn(t2, prior, iterations)
    return -(q1 * log_softmax(t2 / gamma)).sum(axis=1) - (q2 * log_softmax(t1 / gamma)).sum(axis=1)


def np_domain_supcon(z1: torch.Tensor, z2: torch.Tensor, is_ood: list[bool], tau: float = TAU) -> np.ndarray:
    s = _similarities(z1, z2)
    n, b = s.shape[0], s.shape[0] // 2
    domain = is_ood + is_ood
    anchor = np.zeros(n)
    for a in range(n):
        denominator = sum(math.exp(s[a, k] / tau) for k in range(n) if k != a)
        positives = [j for j in range(n) if j != a and domain[j] == domain[a]]
        anchor[a] = np.mean([-math.log(math.exp(s[a, j] / tau) / denominator) for j in positives])
    return 0.5 * (anchor[:b] + anchor[b:])


def np_tailness(z1: torch.Tensor, z2: torch.Tensor, topk: int, tau: float = TAU) -> np.ndarray:
    s = _similarities(z1, z2)
    n, b = s.shape[0], s.shape[0] // 2
    p = np.zeros((n, n))
    for a in range(n):
        denominator = sum(math.exp(s[a, k] / tau) for k in range(n) if k != a)
        for j in range(n):
            p[a, j] = math.exp(s[a, j] / tau) / denominator
    h = np.zeros(b)
    for i in range(b):
        entries = [0.5 * (p[i, j] + p[i + b, j]) for j in range(n) if j not in (i, i + b)]
        h[i] = sum(sorted(entries, reverse=True)[:topk])
    return h


def _close(actual: torch.Tensor, expected: np.ndarray, rtol: float = 1e-5) -> None:
    np.testing.assert_allclose(actual.detach().double().numpy(), expected, rtol=rtol, atol=1e-6)


# ---- the plain base and the loss contract


def test_simclr_is_ntxent_and_the_scalar_is_the_per_sample_mean() -> None:
    z1, z2 = _z()
    result = _method("simclr").compute_loss(_step(z1, z2))
    expected = np_per_image(np_ntxent_anchors(z1, z2))
    _close(result.per_sample, expected)
    _close(result.base_per_sample, expected)
    assert result.loss.item() == pytest.approx(result.per_sample.mean().item(), rel=1e-7)
    assert result.loss.item() == pytest.approx(expected.mean(), rel=1e-5)
    assert not result.base_per_sample.requires_grad
    assert result.terms == {"loss_base": pytest.approx(expected.mean(), rel=1e-5)}


# ---- Focal


def test_focal_replaces_the_base() -> None:
    z1, z2 = _z(seed=1)
    result = _method("focal", method__focal__gamma=2.0).compute_loss(_step(z1, z2))
    expected = np_per_image(np_focal_anchors(z1, z2, 2.0))
    _close(result.per_sample, expected)
    _close(result.base_per_sample, expected)
    assert not np.allclose(expected, np_per_image(np_ntxent_anchors(z1, z2)), rtol=1e-3)
    gamma0 = _method("focal", method__focal__gamma=0.0).compute_loss(_step(z1, z2))
    _close(gamma0.per_sample, np_per_image(np_ntxent_anchors(z1, z2)))


# ---- LoTaR


def test_lotar_weights_multiply_the_per_sample_loss_with_batch_mean_one() -> None:
    z1, z2 = _z(b=5, seed=2)
    result = _method("lotar").compute_loss(_step(z1, z2))
    w = np_lotar_weights(z1, z2)
    assert w.mean() == pytest.approx(1.0) and w.max() - w.min() == pytest.approx(1.0)
    base = np_per_image(np_ntxent_anchors(z1, z2))
    _close(result.per_sample, base * w)
    _close(result.base_per_sample, base)  # BCL would track the unweighted loss
    assert result.loss.item() == pytest.approx((base * w).mean(), rel=1e-5)


def test_lotar_multiplies_the_total_including_extra_terms() -> None:
    z1, z2 = _z(b=4, seed=3)
    method = _method("lotar+gh", method__gh__warmup=0, method__gh__ramp_epochs=1, method__gh__sinkhorn_iters=3)
    result = method.compute_loss(_step(z1, z2))
    gh = np_gh_per_sample(z1, z2, _part(method, "gh").target, None, 3)
    base = np_per_image(np_ntxent_anchors(z1, z2))
    _close(result.per_sample, (base + gh) * np_lotar_weights(z1, z2), rtol=1e-4)


# ---- GH


def test_gh_adds_nothing_during_warmup_then_ramps() -> None:
    z1, z2 = _z(b=4, seed=4)
    method = _method("gh", method__gh__warmup=2, method__gh__ramp_epochs=10, method__gh__sinkhorn_iters=3)
    gh = _part(method, "gh")
    base = np_per_image(np_ntxent_anchors(z1, z2))
    gh_terms = np_gh_per_sample(z1, z2, gh.target, None, 3)
    weights = []
    for epoch in range(14):
        result = method.compute_loss(_step(z1, z2, epoch=epoch))
        big_e = epoch + 1
        expected_weight = 0.0 if big_e <= 2 else min(1.0, (big_e - 2) / 10)
        weights.append(gh.last_weight)
        assert gh.last_weight == pytest.approx(expected_weight)
        if expected_weight == 0.0:
            assert "loss_gh" not in result.terms
            assert torch.equal(result.per_sample, result.base_per_sample)
        else:
            assert result.terms["weight_gh"] == pytest.approx(expected_weight)
            _close(result.per_sample, base + expected_weight * gh_terms, rtol=1e-4)
            assert result.terms["loss_gh"] == pytest.approx(gh_terms.mean(), rel=1e-4)
    assert weights[2:12] == pytest.approx([0.1 * k for k in range(1, 11)])
    assert weights[12:] == [1.0, 1.0]


def test_gh_memory_updates_every_step_and_prior_refreshes() -> None:
    n = 6
    method = _method("gh", size=n, method__gh__warmup=2, method__gh__sinkhorn_iters=3)
    gh = _part(method, "gh")
    w = gh.target.double().numpy()

    def t_of(z: torch.Tensor) -> np.ndarray:
        raw = z.double().numpy() @ w.T
        return raw / np.linalg.norm(raw, axis=1, keepdims=True)

    z1, z2 = _z(b=4, seed=5)
    step = _step(z1, z2, [0, 1, 2, 3], epoch=0)
    method.observe(step, method.compute_loss(step))  # warm-up epoch: no GH term, but the memory updates
    np.testing.assert_allclose(gh.prior.logits[:4].double().numpy(), t_of(z1), rtol=1e-5, atol=1e-6)
    assert gh.prior.logits[4:].abs().sum().item() == 0.0 and gh.prior.prior is None
    method.on_epoch_end(_ctx(0))
    assert gh.prior.prior is None  # E = 1 < warm_up: not a refresh epoch

    y1, y2 = _z(b=4, seed=6)
    step = _step(y1, y2, [2, 3, 4, 5], epoch=1)  # E = 2 = warm_up: refreshed after every iteration
    method.observe(step, method.compute_loss(step))
    memory = np.zeros((n, w.shape[0]))
    memory[:4] = t_of(z1)
    memory[2:4] = 0.9 * memory[2:4] + 0.1 * t_of(y1)[:2]  # β_e = 0.9 while e < warm_up
    memory[4:] = t_of(y1)[2:]  # first visit: raw
    np.testing.assert_allclose(gh.prior.logits.double().numpy(), memory, rtol=1e-5, atol=1e-6)
    expected_prior = np.bincount(memory.argmax(axis=1), minlength=w.shape[0]) / n
    np.testing.assert_allclose(gh.prior.prior.numpy(), expected_prior)

    x1, x2 = _z(b=4, seed=7)  # E = 3: the first GH epoch uses the refreshed prior
    result = method.compute_loss(_step(x1, x2, [0, 1, 2, 3], epoch=2))
    expected = np_per_image(np_ntxent_anchors(x1, x2)) + 0.1 * np_gh_per_sample(x1, x2, gh.target, expected_prior, 3)
    _close(result.per_sample, expected, rtol=1e-4)


def test_gh_with_zero_warmup_uses_the_uniform_prior_until_the_first_refresh() -> None:
    method = _method("gh", size=4, method__gh__warmup=0, method__gh__ramp_epochs=10, method__gh__sinkhorn_iters=3)
    gh = _part(method, "gh")
    assert gh.prior.beta_at(0) == 0.999
    z1, z2 = _z(b=4, seed=8)
    result = method.compute_loss(_step(z1, z2, epoch=0))
    expected = np_per_image(np_ntxent_anchors(z1, z2)) + 0.1 * np_gh_per_sample(z1, z2, gh.target, None, 3)
    _close(result.per_sample, expected, rtol=1e-4)
    for epoch in range(19):
        method.observe(_step(z1, z2, epoch=epoch), result)
        method.on_epoch_end(_ctx(epoch))
        assert gh.prior.prior is None
    method.observe(_step(z1, z2, epoch=19), result)  # E = 20: the first refresh
    assert gh.prior.prior is not None and gh.prior.prior.sum().item() == pytest.approx(1.0)


# ---- BCL


def test_memorisation_weights_by_hand() -> None:
    # m = [1, 2, 3, 6]: mean 3, u ∝ [−2, −1, 0, 3], max|u| ∝ 3 → w = ½·u/3 + ½ = [1/6, 1/3, 1/2, 1]
    w = memorisation_weights(torch.tensor([1.0, 2.0, 3.0, 6.0]))
    np.testing.assert_allclose(w.numpy(), [1 / 6, 1 / 3, 1 / 2, 1.0], rtol=1e-6)
    assert w.mean().item() == pytest.approx(0.5, abs=1e-7)
    # the largest |u| negative gets 0
    w = memorisation_weights(torch.tensor([-5.0, 1.0, 2.0, 2.0]))
    assert w.min().item() == pytest.approx(0.0, abs=1e-7) and w.argmin().item() == 0
    assert w.mean().item() == pytest.approx(0.5, abs=1e-7)
    random = memorisation_weights(torch.rand(100, generator=torch.Generator().manual_seed(0)) * 7)
    assert 0.0 <= random.min().item() and random.max().item() <= 1.0
    assert random.mean().item() == pytest.approx(0.5, abs=1e-6)


def test_memorisation_weight_guards() -> None:
    assert memorisation_weights(torch.full((5,), 2.5)).tolist() == [0.5] * 5  # std 0
    assert memorisation_weights(torch.tensor([3.0])).tolist() == [0.5]
    with pytest.raises(TrainingDiverged, match="non-finite"):
        memorisation_weights(torch.tensor([1.0, float("nan")]))
    with pytest.raises(TrainingDiverged):
        memorisation_weights(torch.tensor([1.0, float("inf")]))


def _ctx(epoch: int, model: torch.nn.Module | None = None, data: TrainData | None = None,
         artifacts: dict[str, str] | None = None) -> EpochContext:
    projection = np.random.default_rng(0).normal(size=(8 * 8 * 3, 8))

    def embed(images: np.ndarray) -> np.ndarray:
        e = images.reshape(len(images), -1).astype(np.float64) @ projection
        return (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)

    def log(name: str, text: str) -> None:
        if artifacts is not None:
            artifacts[name] = text

    return EpochContext(epoch=epoch, model=model if model is not None else torch.nn.Identity(),
                        data=data if data is not None else _train_data(4, 0), device=CPU, embed=embed,
                        log_artifact=log)


def _train_data(n_id: int, pool: int, seed: int = 0) -> TrainData:
    rng = np.random.default_rng(seed)
    return TrainData(
        id_images=rng.integers(0, 256, (n_id, 8, 8, 3), dtype=np.uint8),
        id_labels=np.arange(n_id) % 2,
        pool_images=rng.integers(0, 256, (pool, 8, 8, 3), dtype=np.uint8) if pool else None,
    )


def test_bcl_momentum_tracks_the_base_loss_with_beta_097() -> None:
    method = _method("focal+bcl+gh", size=4, method__gh__warmup=0, method__gh__ramp_epochs=1,
                     method__gh__sinkhorn_iters=3)
    bcl = _part(method, "bcl")
    losses = []
    for epoch, seed in enumerate((10, 11)):
        z1, z2 = _z(b=4, seed=seed)
        step = _step(z1, z2, [3, 1, 0, 2], epoch=epoch)
        result = method.compute_loss(step)
        assert result.terms["weight_gh"] == 1.0  # the total includes GH, the tracked value does not
        focal = np_per_image(np_focal_anchors(z1, z2, 2.0))
        losses.append(focal)
        method.observe(step, result)
    order = [3, 1, 0, 2]
    expected = np.zeros(4)
    expected[order] = 0.03 * losses[1] + 0.97 * losses[0]
    np.testing.assert_allclose(bcl.momentum.values.numpy(), expected, rtol=1e-5)
    # m = [1, 2, 3, 6] by hand → the weights of version 1 are [1/6, 1/3, 1/2, 1]
    bcl.momentum.values = torch.tensor([1.0, 2.0, 3.0, 6.0])
    method.on_epoch_end(_ctx(1))
    assert bcl.augment.weights.version == 2
    np.testing.assert_allclose(bcl.augment.weights.values.numpy(), [1 / 6, 1 / 3, 1 / 2, 1.0], rtol=1e-6)
    assert bcl.metrics()["bcl_weight_mean"] == pytest.approx(0.5)


def test_bcl_epoch_one_is_version_zero_and_a_no_op_and_stale_weights_are_caught() -> None:
    method = _method("bcl", size=6)
    bcl = _part(method, "bcl")
    hook = method.view_hook()
    assert hook is bcl.augment
    assert bcl.augment.weights.version == 0 and bcl.augment.weights.values.abs().sum().item() == 0
    images = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    index = torch.arange(6)
    out = hook(images.clone(), index, 0, 0, 10)
    assert torch.equal(out, images)  # w = 0: no op is applied in epoch 1
    assert not bool(bcl.augment.last_ops[1].any())
    z1, z2 = _z(b=6, seed=12)
    step0 = _step(z1, z2, list(range(6)), epoch=0)
    method.observe(step0, method.compute_loss(step0))
    # epoch 2 (0-based 1) without the end-of-epoch push: the batch used version 0, so observe refuses it
    hook(images.clone(), index, 1, 0, 10)
    step1 = _step(z1, z2, list(range(6)), epoch=1)
    with pytest.raises(StaleWeightsError, match="version 0 used where version 1"):
        method.observe(step1, method.compute_loss(step1))
    method.on_epoch_end(_ctx(0))
    assert bcl.augment.weights.version == 1
    hook(images.clone(), index, 1, 0, 10)
    method.observe(step1, method.compute_loss(step1))
    assert bcl.momentum.last_epoch.tolist() == [1] * 6


def test_bcl_state_round_trip() -> None:
    a = _part(_method("bcl", size=3), "bcl")
    a.momentum.update(torch.tensor([0, 2]), torch.tensor([1.0, 3.0]), 0, 0.97)
    a.augment.set_weights(BCLWeights(torch.tensor([0.1, 0.5, 0.9]), version=4))
    b = _part(_method("bcl", size=3), "bcl")
    b.load_state_dict(a.state_dict())
    assert b.augment.weights.version == 4 and b.augment.weights.values.tolist() == pytest.approx([0.1, 0.5, 0.9])
    assert torch.equal(b.momentum.values, a.momentum.values) and torch.equal(b.momentum.visited, a.momentum.visited)


# ---- SDCLR


def test_sdclr_mask_is_rebuilt_from_the_dense_weights_at_every_epoch_start() -> None:
    method = _method("sdclr", method__sdclr__prune_ratio=0.6)
    options = method.model_options()
    torch.manual_seed(0)
    model = build_model("resnet18_cifar", width=0.125, head=options["head"], dual_bn=options["dual_bn"])
    convs = prunable_convs(model.backbone)
    assert len(convs) == 20 and all(bool(c.prune_mask.all()) for _, c in convs)
    method.on_epoch_start(_ctx(0, model=model))
    expected = compute_masks([c.weight for _, c in convs], 0.6)
    assert all(torch.equal(c.prune_mask, m) for (_, c), m in zip(convs, expected))
    density = sum(int(m.sum()) for m in expected) / sum(m.numel() for m in expected)
    assert method.metrics()["sdclr_mask_density"] == pytest.approx(density) and 0.39 < density < 0.41
    before = convs[-1][1].prune_mask.float().mean().item()
    with torch.no_grad():  # weights move: the next mask is recomputed from scratch, not compounded
        convs[-1][1].weight.mul_(100.0)
    method.on_epoch_start(_ctx(1, model=model))
    fresh = compute_masks([c.weight for _, c in convs], 0.6)
    assert all(torch.equal(c.prune_mask, m) for (_, c), m in zip(convs, fresh))
    # the scaled tensor now dominates the global threshold: pruned entries came back
    assert before < 0.5 and convs[-1][1].prune_mask.float().mean().item() > 0.95


def test_sdclr_random_component_is_seeded_per_epoch() -> None:
    method = _method("sdclr", method__sdclr__prune_ratio=0.5, method__sdclr__random_prune_fraction=0.1,
                     method__sdclr__mask_seed=3)
    torch.manual_seed(0)
    model = build_model("resnet18_cifar", width=0.125, head="sdclr3", dual_bn=True)
    masks = []
    for epoch in (0, 1, 0):
        method.on_epoch_start(_ctx(epoch, model=model))
        masks.append([c.prune_mask.clone() for _, c in prunable_convs(model.backbone)])
    assert all(torch.equal(a, b) for a, b in zip(masks[0], masks[2]))
    assert not all(torch.equal(a, b) for a, b in zip(masks[0], masks[1]))


def _sdclr_grads(method: Method, model: torch.nn.Module, v1: torch.Tensor, v2: torch.Tensor,
                 detach: str | None) -> dict[str, torch.Tensor]:
    z1, z2 = model(v1, v2, pruned_second=True)
    if detach == "z2":
        z2 = z2.detach()
    elif detach == "z1":
        z1 = z1.detach()
    method.compute_loss(_step(z1, z2, list(range(v1.shape[0])))).loss.backward()
    return {name: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for name, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["sdclr", "sdclr+gh"])
def test_sdclr_single_backward_equals_the_reference_half_steps(name: str) -> None:
    method = _method(name, size=6, method__sdclr__prune_ratio=0.5, method__gh__warmup=0,
                     method__gh__ramp_epochs=1, method__gh__sinkhorn_iters=20)
    torch.manual_seed(0)
    model = build_model("resnet18_cifar", width=0.125, head="sdclr3", dual_bn=True)
    refresh_masks(model.backbone, 0.5)
    g = torch.Generator().manual_seed(1)
    v1, v2 = torch.rand(6, 3, 8, 8, generator=g), torch.rand(6, 3, 8, 8, generator=g)
    model.train()
    once = _sdclr_grads(method, model, v1, v2, None)
    model.zero_grad(set_to_none=True)
    dense_half = _sdclr_grads(method, model, v1, v2, "z2")
    model.zero_grad(set_to_none=True)
    pruned_half = _sdclr_grads(method, model, v1, v2, "z1")
    largest = max(float(t.abs().max()) for t in once.values())
    for key, grad in once.items():
        torch.testing.assert_close(grad, dense_half[key] + pruned_half[key], rtol=1e-4, atol=1e-6 * largest)
    # the pruned branch reaches only surviving weights and only BN 1; the dense branch only BN 0
    for conv_name, conv in prunable_convs(model.backbone):
        assert pruned_half[f"backbone.{conv_name}.weight"][~conv.prune_mask].abs().max().item() == 0.0
    for key in once:
        if ".bn_list.1." in key:
            assert dense_half[key].abs().max().item() == 0.0
        if ".bn_list.0." in key:
            assert pruned_half[key].abs().max().item() == 0.0
    if name == "sdclr+gh":
        assert _part(method, "gh").last_weight == 1.0


# ---- COLT


def test_colt_supcon_only_with_ood_items_in_the_batch() -> None:
    method = _method("colt", size=10, method__colt__budget=2)
    colt = _part(method, "colt")
    method.on_epoch_start(_ctx(0, data=_train_data(6, 4)))  # not a resample epoch; learns N_id = 6
    assert colt.num_id == 6
    z1, z2 = _z(b=4, seed=20)
    id_only = method.compute_loss(_step(z1, z2, [0, 1, 2, 5]))
    assert "loss_colt_sup" not in id_only.terms
    assert torch.equal(id_only.per_sample, id_only.base_per_sample)
    mixed = method.compute_loss(_step(z1, z2, [0, 7, 2, 9]))
    sup = np_domain_supcon(z1, z2, [False, True, False, True])
    _close(mixed.per_sample, np_per_image(np_ntxent_anchors(z1, z2)) + 0.2 * sup)
    assert mixed.terms["weight_colt_sup"] == pytest.approx(0.2)
    assert colt.metrics()["colt_ood_fraction_last_batch"] == 0.5
    off = _method("colt", size=10, method__colt__budget=2, method__colt__sup_weight=0.0)
    off.on_epoch_start(_ctx(0, data=_train_data(6, 4)))
    assert torch.equal(off.compute_loss(_step(z1, z2, [0, 7, 2, 9])).per_sample, id_only.per_sample)


def test_colt_tailness_ema_only_for_id_indices() -> None:
    method = _method("colt", size=10, method__colt__budget=2, method__colt__topk=3, method__colt__beta=0.97)
    colt = _part(method, "colt")
    method.on_epoch_start(_ctx(0, data=_train_data(6, 4)))
    z1, z2 = _z(b=4, seed=21)
    step = _step(z1, z2, [4, 8, 1, 6])
    method.observe(step, method.compute_loss(step))
    h = np_tailness(z1, z2, 3)
    assert colt.tailness.visited.tolist() == [i in (4, 1) for i in range(10)]
    np.testing.assert_allclose(colt.tailness.values[[4, 1]].numpy(), h[[0, 2]], rtol=1e-5)
    y1, y2 = _z(b=4, seed=22)
    step = _step(y1, y2, [1, 4, 9, 0], epoch=1)
    method.observe(step, method.compute_loss(step))
    h2 = np_tailness(y1, y2, 3)
    np.testing.assert_allclose(colt.tailness.values[1].item(), 0.03 * h2[0] + 0.97 * h[2], rtol=1e-5)
    np.testing.assert_allclose(colt.tailness.values[4].item(), 0.03 * h2[1] + 0.97 * h[0], rtol=1e-5)
    assert colt.tailness.values[0].item() == pytest.approx(h2[3], rel=1e-5)
    assert not bool(colt.tailness.visited[6:].any())


def test_colt_resample_epochs_rebuild_the_active_pool() -> None:
    data = _train_data(12, 20)
    method = _method("colt", size=data.index_space, method__colt__warmup=1, method__colt__interval=2,
                     method__colt__budget=5, method__colt__clusters=2)
    colt = _part(method, "colt")
    colt.tailness.update(torch.arange(12), torch.linspace(0.1, 1.2, 12), 0, 0.97)
    artifacts: dict[str, str] = {}
    method.on_epoch_start(_ctx(0, data=data, artifacts=artifacts))  # E = 1 ≤ warm-up
    assert len(data) == 12 and len(data.active_pool) == 0 and not artifacts
    ctx = _ctx(1, data=data, artifacts=artifacts)  # E = 2: the first resample
    method.on_epoch_start(ctx)
    expected = colt_select(ctx.embed(data.id_images), colt.tailness.values[:12].numpy(), ctx.embed(data.pool_images),
                           5, n_clusters=2, random_state=0)
    assert data.active_pool.tolist() == list(expected.picks)
    assert len(data) == 17 and data.members().tolist() == list(range(12)) + [12 + p for p in expected.picks]
    assert "colt_picks_epoch0002.json" in artifacts and colt.metrics()["colt_resamples"] == 1.0
    logged = json.loads(artifacts["colt_picks_epoch0002.json"])  # the selection's seed and backend are recorded
    assert logged["picks"] == list(expected.picks) and logged["kmeans_backend"] == expected.backend
    assert logged["kmeans_seed"] == 0 and logged["clusters"] == 2
    assert logged["cluster_scores"] == np.asarray(expected.cluster_scores).tolist()
    method.on_epoch_start(_ctx(2, data=data))  # E = 3: not a resample epoch
    assert data.active_pool.tolist() == list(expected.picks)
    colt.tailness.update(torch.arange(12), torch.linspace(1.2, 0.1, 12), 3, 0.0)  # reversed scores
    method.on_epoch_start(_ctx(3, data=data, artifacts=artifacts))  # E = 4: resample, replacing (not adding)
    assert len(data.active_pool) == 5 and len(data) == 17 and colt.resamples == 2
    assert "colt_picks_epoch0004.json" in artifacts


def test_model_shape_is_the_model_a_run_trains_without_training_only_options() -> None:
    from ltray.methods.method import build_method, model_shape

    cfg = Config()
    assert model_shape(cfg) == {"head": "simclr", "dual_bn": False}
    cfg.method.name = "sdclr+gh"
    assert model_shape(cfg) == {"head": "sdclr3", "dual_bn": True}
    cfg.method.sdclr.head_layers, cfg.method.sdclr.dual_bn = 2, False
    assert model_shape(cfg) == {"head": "simclr", "dual_bn": False}
    trained = build_method(cfg, 100, torch.device("cpu")).model_options()
    assert trained == {**model_shape(cfg), "pruned_second": True}
