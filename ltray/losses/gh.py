"""Geometric Harmonization (Zhou et al., "Combating Representation Learning Disparity with Geometric
Harmonization", NeurIPS 2023): geometric logits, the population prior π, the GH loss, its weight ramp and the
two-stage learning-rate schedule. Spec: docs/math/gh.md §2 and §4–§7."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from ltray.common.state import IndexedEMA
from ltray.errors import CheckpointError, ConfigError
from ltray.losses.sinkhorn import sinkhorn_knopp

RefreshMode = Literal["iteration", "epoch_end"]
REFRESH_MODES: tuple[str, ...] = ("iteration", "epoch_end")
REFRESH_PERIOD = 20
WARMUP_BETA = 0.9
LR_WARMUP_EPOCHS = 10
LR_FINAL = 1e-6


def geometric_logits(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """t = rownorm(z Wᵀ) ∈ R^{B×K} on the raw projector output z (gh.md §2), float32.

    W is a fixed buffer (no gradient). t is a unit row, so every |t_k| ≤ 1; since the row normalisation removes
    any positive scale of z, normalising z beforehand would give the same t.
    """
    with torch.autocast(device_type=z.device.type, enabled=False):
        w = target.detach().to(device=z.device, dtype=torch.float32)
        return F.normalize(z.float() @ w.t(), dim=1)


class GHPrior:
    """GH's logit memory m ∈ R^{N×K} and population prior π (gh.md §4).

    m is zero-initialised and updated once per index per epoch from the detached view-1 logits t¹ (duplicates
    keep their first occurrence). With e the 0-based epoch: e = 0 gives m_n ← m_n + t¹_n = t¹_n; e ≥ 1 gives
    m_n ← β_e·m_n + (1 − β_e)·t¹_n with β_e = 0.9 while e < warm_up and `beta` afterwards (so `beta` from the start
    when warm_up = 0). As in every ltray per-index memory, an index first seen after epoch 0 takes t¹_n as is.
    π_k = #{n : argmax_k m_n = k}/N in float64, ties to the smallest k. It is refreshed in refresh epochs
    ((e+1) ≥ warm_up and ((e+1) mod 20 = 0 or e+1 = warm_up)): after every iteration (`refresh_mode="iteration"`,
    the reference) or only at the epoch's end (`"epoch_end"`). Before the first refresh `prior` is None and the
    caller uses the uniform prior.
    """

    def __init__(
        self,
        size: int,
        k: int,
        warm_up: int,
        beta: float = 0.999,
        refresh_mode: RefreshMode = "iteration",
        device: torch.device | str = "cpu",
    ) -> None:
        if size < 1 or k < 2:
            raise ConfigError(f"GH prior needs N >= 1 and K >= 2, got N={size}, K={k}")
        if warm_up < 0:
            raise ConfigError(f"gh warm_up must be >= 0, got {warm_up}")
        if not 0.0 <= beta < 1.0:
            raise ConfigError(f"gh_beta must be in [0, 1), got {beta}")
        if refresh_mode not in REFRESH_MODES:
            raise ConfigError(f"gh_prior_refresh must be one of {', '.join(REFRESH_MODES)}, got {refresh_mode!r}")
        self.k = k
        self.warm_up = warm_up
        self.beta = beta
        self.refresh_mode = refresh_mode
        self.memory = IndexedEMA(size, (k,), device)
        self._prior: torch.Tensor | None = None

    @property
    def logits(self) -> torch.Tensor:
        """The memory m, [N, K] float32."""
        return self.memory.values

    @property
    def prior(self) -> torch.Tensor | None:
        """π ([K] float64), or None before the first refresh (the caller then uses the uniform prior)."""
        return self._prior

    def beta_at(self, epoch: int) -> float:
        """β_e for the 0-based epoch e: 0.9 while e < warm_up, `beta` afterwards."""
        return WARMUP_BETA if epoch < self.warm_up else self.beta

    def update(self, index: torch.Tensor, t1: torch.Tensor, epoch: int) -> torch.Tensor:
        """Fold the gathered (index, t¹) pairs of one iteration into m. Returns the indices actually updated."""
        if t1.dim() != 2 or t1.shape[1] != self.k or t1.shape[0] != index.shape[0]:
            raise ValueError(f"t1 must be [{index.shape[0]}, {self.k}], got {tuple(t1.shape)}")
        return self.memory.update(index, t1.detach().float(), epoch, self.beta_at(epoch))

    @staticmethod
    def should_refresh(epoch: int, warm_up: int) -> bool:
        """Whether the 0-based epoch e is a refresh epoch: (e+1) ≥ warm_up and ((e+1) mod 20 = 0 or e+1 = warm_up)."""
        e1 = epoch + 1
        return e1 >= warm_up and (e1 % REFRESH_PERIOD == 0 or e1 == warm_up)

    def refresh(self) -> torch.Tensor:
        """Recompute π_k = #{n : argmax_k m_n = k}/N (float64, argmax ties to the smallest k) and return it."""
        winners = torch.argmax(self.memory.values, dim=1)
        counts = torch.bincount(winners, minlength=self.k).to(torch.float64)
        self._prior = counts / len(self.memory)
        return self._prior

    def after_iteration(self, epoch: int) -> bool:
        """Call after each iteration's `update`: refreshes π in `iteration` mode during refresh epochs."""
        return self.refresh_mode == "iteration" and self.end_epoch(epoch)

    def end_epoch(self, epoch: int) -> bool:
        """Call at the end of each epoch: refreshes π at the end of every refresh epoch (both modes)."""
        due = self.should_refresh(epoch, self.warm_up)
        if due:
            self.refresh()
        return due

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"memory_{key}": value for key, value in self.memory.state_dict().items()}
        if self._prior is not None:
            state["prior"] = self._prior.cpu()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        memory_state = {key[len("memory_"):]: value for key, value in state.items() if key.startswith("memory_")}
        expected = (len(self.memory), self.k)
        if "values" not in memory_state or tuple(memory_state["values"].shape) != expected:
            raise CheckpointError(f"GH logit memory in the checkpoint does not have shape {expected}")
        self.memory.load_state_dict(memory_state)
        prior = state.get("prior")
        if prior is not None and tuple(prior.shape) != (self.k,):
            raise CheckpointError(f"GH prior in the checkpoint does not have shape ({self.k},)")
        device = self.memory.values.device
        self._prior = None if prior is None else prior.to(device=device, dtype=torch.float64).clone()


def gh_loss(
    t1: torch.Tensor,
    t2: torch.Tensor,
    prior: torch.Tensor | None,
    gamma: float = 0.1,
    epsilon: float = 0.05,
    iterations: int = 300,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GH loss (gh.md §5): (L_GH, per-image GH_i of shape [B]), float32.

    q¹ = Sinkhorn(t¹, π) and q² = Sinkhorn(t², π) are constants; L_GH = −(1/B)Σ_i Σ_k q¹_ik log softmax(t²_i/γ)_k
    − (1/B)Σ_i Σ_k q²_ik log softmax(t¹_i/γ)_k, the sum of both swapped directions (no ½). GH_i is image i's two
    terms, so mean(GH_i) = L_GH. The gradient flows only through the softmax arguments.
    """
    if gamma <= 0:
        raise ConfigError(f"GH softmax temperature gamma must be > 0, got {gamma}")
    if t1.shape != t2.shape:
        raise ValueError(f"t1 {tuple(t1.shape)} and t2 {tuple(t2.shape)} differ")
    with torch.autocast(device_type=t1.device.type, enabled=False):
        t1, t2 = t1.float(), t2.float()
        q1 = sinkhorn_knopp(t1, prior, epsilon, iterations)
        q2 = sinkhorn_knopp(t2, prior, epsilon, iterations)
        per_sample = -(q1 * F.log_softmax(t2 / gamma, dim=1)).sum(dim=1) - (
            q2 * F.log_softmax(t1 / gamma, dim=1)
        ).sum(dim=1)
        return per_sample.mean(), per_sample


def gh_weight(epoch: int, warm_up: int, ramp_epochs: int) -> float:
    """λ_E for the 1-based epoch E (gh.md §6): 0 if E ≤ warm_up, else min(1, (E − warm_up)/ramp_epochs)."""
    if ramp_epochs < 1:
        raise ConfigError(f"gh_ramp_epochs must be >= 1, got {ramp_epochs}")
    if warm_up < 0:
        raise ConfigError(f"gh warm_up must be >= 0, got {warm_up}")
    if epoch <= warm_up:
        return 0.0
    return min(1.0, (epoch - warm_up) / ramp_epochs)


def _cosine(epoch: int, start: int, end: int, high: float, low: float) -> float:
    if end <= start:
        return low
    return low + (high - low) * 0.5 * (1.0 + math.cos(math.pi * (epoch - start) / (end - start)))


def gh_two_stage_lr(
    epoch: int,
    lr: float,
    warm_up: int,
    epochs: int,
    lr_min_stage1: float = 0.3,
    lr_max_stage2: float = 0.3,
) -> float:
    """GH's per-epoch learning rate for the 1-based epoch E (gh.md §7).

    E < 10: lr·E/10. warm_up > 0: 10 ≤ E < warm_up follows cosine(lr → lr_min_stage1) over [10, warm_up], and
    E ≥ warm_up follows cosine(lr_max_stage2 → 1e-6) over [warm_up, epochs]. warm_up = 0: E ≥ 10 follows
    cosine(lr → 1e-6) over [10, epochs]. A zero-length cosine span gives its final value.
    """
    if epochs < 1 or not 1 <= epoch <= epochs:
        raise ConfigError(f"epoch must be in [1, epochs] with epochs >= 1, got epoch={epoch}, epochs={epochs}")
    if warm_up < 0:
        raise ConfigError(f"gh warm_up must be >= 0, got {warm_up}")
    if epoch < LR_WARMUP_EPOCHS:
        return lr * epoch / LR_WARMUP_EPOCHS
    if warm_up == 0:
        return _cosine(epoch, LR_WARMUP_EPOCHS, epochs, lr, LR_FINAL)
    if epoch < warm_up:
        return _cosine(epoch, LR_WARMUP_EPOCHS, warm_up, lr, lr_min_stage1)
    return _cosine(epoch, warm_up, epochs, lr_max_stage2, LR_FINAL)
