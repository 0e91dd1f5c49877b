"""The worked example of docs/adding_a_method.md runs: its component is extracted from the page, registered under a
test name and trained for one step on a tiny model, so the page cannot fall behind the component interface."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ltray import method_names
from ltray.config import load_config
from ltray.methods import registry
from ltray.methods.base import Step
from ltray.methods.method import build_method
from ltray.models.contrastive import build_model

PAGE = Path(__file__).resolve().parents[2] / "docs" / "adding_a_method.md"
TEST_NAME = "docalign"


def example_source() -> str:
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 1, "the page holds exactly one python block: the example component"
    return blocks[0]


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[type]:
    source = example_source().replace('@register("align")', f'@register("{TEST_NAME}")')
    assert TEST_NAME in source
    monkeypatch.setattr(method_names, "MODIFIERS", (*method_names.MODIFIERS, TEST_NAME))
    monkeypatch.setattr(method_names, "ORDER", (*method_names.ORDER, TEST_NAME))
    namespace: dict[str, object] = {"__name__": "doc_example"}
    exec(compile(source, str(PAGE), "exec"), namespace)
    try:
        yield registry.COMPONENTS[TEST_NAME]
    finally:
        registry.COMPONENTS.pop(TEST_NAME, None)


def test_the_example_component_trains_one_step(registered: type) -> None:
    torch.manual_seed(0)
    cfg = load_config(None, {"method.name": f"simclr+{TEST_NAME}", "model.width": 0.125})
    assert method_names.parse_method(cfg.method.name).has(TEST_NAME)
    method = build_method(cfg, dataset_size=8, device=torch.device("cpu"))
    assert any(isinstance(part, registered) for part in method.parts)
    model = build_model(cfg.model.arch, width=cfg.model.width)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    views = torch.rand(2, 8, 3, 16, 16)
    z1, z2 = model(views[0], views[1])
    step = Step(z1=z1, z2=z2, index=torch.arange(8), epoch=0, iteration=1)
    result = method.compute_loss(step)
    result.loss.backward()
    optimizer.step()
    method.observe(step, result)
    assert torch.isfinite(result.loss)
    assert result.terms["weight_align"] == pytest.approx(0.1) and result.terms["loss_align"] > 0
    assert method.metrics()["align_steps"] == 1.0
    assert method.state_dict()[TEST_NAME] == {"steps": 1}
