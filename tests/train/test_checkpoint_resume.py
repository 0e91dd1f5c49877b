"""Checkpoints and resume: a run interrupted after k epochs and resumed reproduces the uninterrupted run exactly
(losses of every epoch, final weights, per-index method state, SDCLR masks, BCL weight versions, COLT's pool);
and the failure modes (divergence, reused run folder, corrupt or foreign checkpoints, weights_only loading)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ltray.config import Config
from ltray.data.loading import RunData
from ltray.errors import CheckpointError, ConfigError, TrainingDiverged
from ltray.train.checkpoint import (
    FORMAT,
    checkpoint_name,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from ltray.train.loop import pretrain

TIMING = ("epoch_time_s", "images_per_s")


class Interrupted(Exception):
    """Raised by the reporter to stop a run right after an epoch's checkpoint, like a killed worker."""


def _stop_after(epoch: int) -> Callable[[int, dict[str, float], Path | None], None]:
    def reporter(done: int, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        if done == epoch:
            raise Interrupted

    return reporter


def _losses(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


def _flatten(state: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(state, dict):
        out: dict[str, Any] = {}
        for key, value in state.items():
            out.update(_flatten(value, f"{prefix}{key}/"))
        return out
    return {prefix: state}


def _assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    fa, fb = _flatten(a), _flatten(b)
    assert fa.keys() == fb.keys()
    for key in fa:
        if isinstance(fa[key], torch.Tensor):
            assert torch.equal(fa[key], fb[key]), key
        else:
            assert fa[key] == fb[key], key


RESUME_CASES: dict[str, dict[str, Any]] = {
    "simclr": {},
    "sdclr+gh": {"method__sdclr__prune_ratio": 0.5, "method__gh__warmup": 1, "method__gh__ramp_epochs": 2},
    "bcl": {},
    "colt": {"method__colt__warmup": 1, "method__colt__interval": 1, "method__colt__budget": 4,
             "method__colt__clusters": 2, "method__colt__topk": 3},
}


@pytest.mark.slow
@pytest.mark.parametrize("method", list(RESUME_CASES))
def test_resume_reproduces_the_uninterrupted_run(
    method: str, tmp_path: Path, config: Callable[..., Config], run_data: Callable[..., RunData]
) -> None:
    epochs, stop = 4, 2
    pool = 10 if method == "colt" else 0
    overrides = {"method__name": method, "optim__epochs": epochs, **RESUME_CASES[method]}
    full_cfg = config(run__name="full", **overrides)
    full = pretrain(full_cfg, data=run_data(n=20, pool=pool))

    cfg = config(run__name="interrupted", **overrides)
    with pytest.raises(Interrupted):
        pretrain(cfg, reporter=_stop_after(stop), data=run_data(n=20, pool=pool))
    assert latest_checkpoint(cfg.run_dir / "checkpoints").name == checkpoint_name(stop)
    resumed = pretrain(cfg, resume=True, data=run_data(n=20, pool=pool))

    assert len(full.history) == len(resumed.history) == epochs
    assert _losses(resumed.history) == _losses(full.history)
    a = load_checkpoint(full.checkpoint)
    b = load_checkpoint(resumed.checkpoint)
    assert a["epoch"] == b["epoch"] == epochs and a["iteration"] == b["iteration"]
    for part in ("model", "method", "active_pool", "optimizer"):
        _assert_same_state(a[part], b[part])
    if method == "sdclr+gh":
        masks = [v for k, v in a["model"].items() if k.endswith("prune_mask")]
        assert masks and 0.3 < sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks) < 0.7
        assert a["method"]["gh"]["prior"].sum().item() == pytest.approx(1.0)
        assert full.history[0]["gh_weight"] == 0.0 and full.history[-1]["gh_weight"] == 1.0
    if method == "bcl":
        assert a["method"]["bcl"]["version"] == epochs
        assert bool(a["method"]["bcl"]["momentum"]["visited"].all())
    if method == "colt":
        assert len(a["active_pool"]) == 4 and a["method"]["colt"]["resamples"] == epochs - 1


def test_diverging_loss_stops_the_run(config: Callable[..., Config], run_data: Callable[..., RunData]) -> None:
    cfg = config(optim__lr=1e30, optim__warmup_epochs=0, optim__epochs=3)
    with pytest.raises(TrainingDiverged, match="loss is nan|loss is inf"):
        pretrain(cfg, data=run_data(n=16))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_run_folder_with_checkpoints_needs_resume(
    config: Callable[..., Config], run_data: Callable[..., RunData]
) -> None:
    cfg = config(optim__epochs=1)
    pretrain(cfg, data=run_data(n=16))
    before = _snapshot(cfg.run_dir)
    assert any(name.startswith("checkpoints/") for name in before)
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        pretrain(cfg, data=run_data(n=16))
    assert _snapshot(cfg.run_dir) == before


def test_resume_without_checkpoint_is_an_error(config: Callable[..., Config], run_data: Callable[..., RunData]) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint"):
        pretrain(config(), resume=True, data=run_data(n=16))


def test_corrupt_checkpoint_is_refused(config: Callable[..., Config], run_data: Callable[..., RunData]) -> None:
    cfg = config(optim__epochs=2)
    with pytest.raises(Interrupted):
        pretrain(cfg, reporter=_stop_after(1), data=run_data(n=16))
    path = latest_checkpoint(cfg.run_dir / "checkpoints")
    assert path is not None
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        pretrain(cfg, resume=True, data=run_data(n=16))
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        pretrain(cfg, resume=True, data=run_data(n=16))


def test_checkpoint_of_another_method_is_refused(
    config: Callable[..., Config], run_data: Callable[..., RunData]
) -> None:
    pretrain(config(optim__epochs=1, method__name="simclr"), data=run_data(n=16))
    with pytest.raises(CheckpointError, match="made with method"):
        pretrain(config(optim__epochs=2, method__name="sdclr"), resume=True, data=run_data(n=16))
    with pytest.raises(CheckpointError, match="different model.width"):
        pretrain(config(optim__epochs=2, model__width=0.25), resume=True, data=run_data(n=16))


class _Payload:
    """Any pickled object that is not a tensor or a plain container."""

    def __init__(self) -> None:
        self.value = 1


def test_loading_is_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "payload": _Payload()}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(path)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(CheckpointError, match="not an ltray checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_every_torch_load_in_the_package_is_weights_only() -> None:
    package = Path(__file__).resolve().parents[2] / "ltray"
    calls = 0
    for source in package.rglob("*.py"):
        text = source.read_text()
        for match in re.finditer(r"torch\.load\(", text):
            depth, end = 0, match.end() - 1
            for end in range(match.end() - 1, len(text)):
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0:
                    break
            call = text[match.start() : end + 1]
            calls += 1
            assert "weights_only=True" in call, f"{source}: {call}"
    assert calls >= 1


def test_save_is_atomic_and_latest_picks_the_highest_epoch(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    for epoch in (2, 10, 9):
        save_checkpoint(folder / checkpoint_name(epoch), {"epoch": epoch})
    (folder / "epoch_99.pt").write_bytes(b"")  # not the naming pattern (4 digits)
    assert latest_checkpoint(folder) == folder / "epoch_0010.pt"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_0002.pt", "epoch_0009.pt", "epoch_0010.pt", "epoch_99.pt"]
    assert load_checkpoint(folder / "epoch_0009.pt")["epoch"] == 9
    assert latest_checkpoint(tmp_path / "absent") is None


def test_rng_state_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    import random

    import numpy as np

    save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_every_step_carries_index_views_and_label(config: Callable[..., Config], run_data: Callable[..., RunData]) -> None:
    """README convention 1: items travel as (index, views, label); pool items have label −1."""
    from ltray.train.loop import Pretrainer

    data = run_data(n=16, pool=6)
    data.train.set_active_pool(np.array([4, 1]))
    trainer = Pretrainer(config(), data=data)
    seen = []
    trainer.method.observe = lambda step, result: seen.append(step)  # type: ignore[method-assign]
    trainer.train_step(np.array([3, 16 + 4, 0, 16 + 1, 15]))
    (step,) = seen
    assert step.index.tolist() == [3, 20, 0, 17, 15]
    assert step.label.tolist() == [int(data.train.id_labels[3]), -1, int(data.train.id_labels[0]), -1,
                                   int(data.train.id_labels[15])]


def test_resumed_metrics_file_holds_every_epoch_once(
    config: Callable[..., Config], run_data: Callable[..., RunData]
) -> None:
    """Killed after epoch 3 with the last checkpoint at epoch 2: epoch 3 runs again, and `metrics.jsonl` keeps
    one line per epoch, those of the resumed run."""
    import json

    cfg = config(optim__epochs=4, run__checkpoint_every=2, run__name="killed")
    with pytest.raises(Interrupted):
        pretrain(cfg, reporter=_stop_after(3), data=run_data(n=16))
    lines = (cfg.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1.0, 2.0, 3.0]
    resumed = pretrain(cfg, resume=True, data=run_data(n=16))
    logged = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in logged] == [1.0, 2.0, 3.0, 4.0]
    assert logged == resumed.history
    assert not list(cfg.run_dir.glob(".*.tmp"))
