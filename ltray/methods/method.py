"""A composed method: the registered components of a method name, driven by the training loop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch

from ltray.losses.ntxent import ntxent_anchor_losses, per_image
from ltray.method_names import MethodSpec, parse_method
from ltray.methods import components  # noqa: F401  (registers the components)
from ltray.methods.base import Component, EpochContext, Step
from ltray.methods.registry import COMPONENTS

if TYPE_CHECKING:
    from ltray.config import Config


@dataclass
class StepLoss:
    """The loss of one step over the global batch: scalar, per-image values, the base per-image values."""

    loss: torch.Tensor
    per_sample: torch.Tensor
    base_per_sample: torch.Tensor
    terms: dict[str, float]


class Method:
    """Runs the hooks of its components in registry order around one training step."""

    def __init__(self, spec: MethodSpec, parts: list[Component], temperature: float) -> None:
        self.spec = spec
        self.parts = parts
        self.temperature = temperature

    @property
    def name(self) -> str:
        return self.spec.canonical

    def model_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"head": "simclr", "dual_bn": False, "pruned_second": False}
        for part in self.parts:
            options.update(part.model_options())
        return options

    def schedule_iterations(self, id_loader_len: int, local_batch: int, num_id: int, world_size: int) -> int | None:
        lengths = [p.schedule_iterations(id_loader_len, local_batch, num_id, world_size) for p in self.parts]
        return next((length for length in lengths if length is not None), None)

    def view_hook(self) -> Callable[..., torch.Tensor] | None:
        hooks = [h for h in (p.view_hook() for p in self.parts) if h is not None]
        return hooks[0] if hooks else None

    def on_epoch_start(self, ctx: EpochContext) -> None:
        for part in self.parts:
            part.on_epoch_start(ctx)

    def on_epoch_end(self, ctx: EpochContext) -> None:
        for part in self.parts:
            part.on_epoch_end(ctx)

    def compute_loss(self, step: Step) -> StepLoss:
        """Base per-anchor loss → per image, plus weighted extra terms, times per-sample weights (convention 2)."""
        anchors = None
        for part in self.parts:
            anchors = part.anchor_losses(step.z1, step.z2)
            if anchors is not None:
                break
        if anchors is None:
            anchors = ntxent_anchor_losses(step.z1, step.z2, self.temperature)
        base = per_image(anchors)
        total = base
        logged: dict[str, float] = {"loss_base": float(base.detach().mean())}
        for part in self.parts:
            for term in part.extra_terms(step):
                total = total + term.weight * term.per_sample
                logged[f"loss_{term.name}"] = float(term.per_sample.detach().mean())
                logged[f"weight_{term.name}"] = float(term.weight)
        for part in self.parts:
            weights = part.sample_weights(step)
            if weights is not None:
                total = total * weights
        return StepLoss(loss=total.mean(), per_sample=total, base_per_sample=base.detach(), terms=logged)

    def observe(self, step: Step, result: StepLoss) -> None:
        for part in self.parts:
            part.observe(step, result.base_per_sample)

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for part in self.parts:
            out.update(part.metrics())
        return out

    def state_dict(self) -> dict[str, Any]:
        return {part.name: part.state_dict() for part in self.parts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for part in self.parts:
            if part.name in state:
                part.load_state_dict(state[part.name])


def part_classes(cfg: Config) -> list[type[Component]]:
    """The registered classes of the method's parts, in the grammar's order (`simclr` has none: it adds no hooks)."""
    return [COMPONENTS[name] for name in parse_method(cfg.method.name).parts if name in COMPONENTS]


def model_shape(cfg: Config) -> dict[str, Any]:
    """The options beyond arch and width that fix the model a run with this config trains (head, dual BN): what
    evaluation and pool scoring rebuild from a checkpoint's config."""
    options: dict[str, Any] = {"head": "simclr", "dual_bn": False}
    for part in part_classes(cfg):
        options.update(part.model_shape(cfg))
    return options


def build_method(cfg: Config, dataset_size: int, device: torch.device) -> Method:
    parts = [part(cfg, dataset_size, device) for part in part_classes(cfg)]
    return Method(parse_method(cfg.method.name), parts, cfg.method.temperature)
