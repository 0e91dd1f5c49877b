"""The worked example of docs/adding_a_method.md runs: its module is extracted from the page and run under a test
name, as a new file in ltray/methods/components/ would be. Nothing else is edited: the part joins the method-name
grammar, its options become the config section `method.<name>` (YAML, --set, validation, sweep axes), and it trains
one step on a tiny model and a short pre-training, so the page cannot fall behind the plugin interface."""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ltray import config as config_module
from ltray import method_names
from ltray.config import config_from_dict, load_config
from ltray.errors import ConfigError
from ltray.methods import registry
from ltray.methods.base import Step
from ltray.methods.method import build_method
from ltray.models.contrastive import build_model
from ltray.shipped import shipped_config_dir

PAGE = Path(__file__).resolve().parents[2] / "docs" / "adding_a_method.md"
TEST_NAME = "docalign"


def example_source() -> str:
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 1, "the page holds exactly one python block: the example component"
    return blocks[0]


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[type]:
    source = (example_source().replace('@register("align"', f'@register("{TEST_NAME}"')
              .replace("method.align.", f"method.{TEST_NAME}."))
    assert TEST_NAME in source
    # what registering changes, restored afterwards (the grammar's tuples; the plugin section below)
    monkeypatch.setattr(method_names, "MODIFIERS", method_names.MODIFIERS)
    monkeypatch.setattr(method_names, "ORDER", method_names.ORDER)
    module = types.ModuleType("doc_example")  # the new module, as if imported from ltray/methods/components/
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(source, str(PAGE), "exec"), module.__dict__)
    try:
        yield registry.COMPONENTS[TEST_NAME]
    finally:
        registry.COMPONENTS.pop(TEST_NAME, None)
        config_module.METHOD_SECTIONS.pop(TEST_NAME, None)


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


def test_the_example_options_are_a_config_section(registered: type) -> None:
    cfg = load_config(None, {"method.name": f"sdclr+{TEST_NAME}", f"method.{TEST_NAME}.weight": "0.3"})
    assert method_names.parse_method(cfg.method.name).canonical == f"sdclr+{TEST_NAME}"
    assert getattr(cfg.method, TEST_NAME).weight == 0.3
    assert cfg.to_dict()["method"][TEST_NAME] == {"weight": 0.3}
    assert getattr(config_from_dict(cfg.to_dict()).method, TEST_NAME).weight == 0.3
    with pytest.raises(ConfigError, match=f"method.{TEST_NAME}.weight must be >= 0"):
        load_config(None, {f"method.{TEST_NAME}.weight": -1})
    with pytest.raises(ConfigError, match=f"method.{TEST_NAME}.weight must be a number"):
        load_config(None, {f"method.{TEST_NAME}.weight": "heavy"})


def test_a_sweep_axis_over_the_example_options_applies_to_its_methods_only(registered: type) -> None:
    from ltray.cluster.dryrun import describe
    from ltray.cluster.grid import expand_trials, key_applies, load_sweep_spec

    assert key_applies(f"method.{TEST_NAME}.weight", f"simclr+{TEST_NAME}")
    assert not key_applies(f"method.{TEST_NAME}.weight", "simclr")
    folder = shipped_config_dir()
    spec = load_sweep_spec(folder / "sweep_sdclr.yaml")
    spec.axes = {"method.name": ["simclr", TEST_NAME], f"method.{TEST_NAME}.weight": [0.1, 0.2], "data.split": [1]}
    names = sorted(trial.name for trial in expand_trials(spec))
    assert names == sorted(["simclr_split=1", f"{TEST_NAME}_{TEST_NAME}.weight=0.1_split=1",
                            f"{TEST_NAME}_{TEST_NAME}.weight=0.2_split=1"]), names
    assert f"{TEST_NAME}_{TEST_NAME}.weight=0.2_split=1" in describe(spec, config_path=folder / "sweep_sdclr.yaml",
                                                                       table=[])


def test_the_example_pretrains_and_evaluates(registered: type, tmp_path: Path) -> None:
    from ltray.evaluate import model_from_checkpoint
    from ltray.train.loop import pretrain

    cfg = load_config(None, {"data.dataset": "digits-lt", "method.name": TEST_NAME, "model.width": 0.125,
                             "optim.epochs": 1, "optim.batch_size": 64, "run.output_dir": str(tmp_path)})
    result = pretrain(cfg)
    assert result.history[0]["weight_align"] == pytest.approx(0.1) and result.history[0]["align_steps"] > 0
    model_from_checkpoint(cfg, result.checkpoint, torch.device("cpu"))
