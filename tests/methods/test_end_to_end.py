"""End to end on the embedded `digits-lt` split: a short pre-training of every method (and the reference
combinations sdclr+gh, bcl+gh, focal+gh) through `pretrain`, then linear probes through `evaluate_backbone`.

The model is a width-0.125 CIFAR ResNet-18 on 16x16 images: 4 epochs of 13 steps (batch 32, lr 0.5) are enough
for the base contrastive loss to fall, and a few probe epochs give per-class and Many/Medium/Few figures.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ltray.config import Config, load_config
from ltray.data.loading import load_run_data
from ltray.evaluate import evaluate_backbone, format_report, model_from_checkpoint
from ltray.method_names import parse_method
from ltray.train.loop import pretrain

pytestmark = pytest.mark.slow

METHODS = ("simclr", "sdclr", "focal", "lotar", "bcl", "gh", "colt", "sdclr+gh", "bcl+gh", "focal+gh")
GROUPS = ("many", "medium", "few")


def _config(tmp_path: Path, method: str, protocol: str = "gh_adam") -> Config:
    return load_config(None, {
        "data.dataset": "digits-lt",
        "method.name": method,
        "model.width": 0.125,
        "optim.batch_size": 32,
        "optim.epochs": 4,
        "optim.warmup_epochs": 0,
        "optim.lr": 0.5,
        "method.sdclr.prune_ratio": 0.5,
        "method.gh.warmup": 1,
        "method.gh.ramp_epochs": 2,
        "method.colt.warmup": 1,
        "method.colt.interval": 2,
        "method.colt.budget": 64,
        "method.colt.pool_size": 300,
        "eval.protocol": protocol,
        "eval.probe_epochs_scale": 0.02,
        "eval.kshot": 5,
        "eval.kshot_draws": 1,
        "run.device": "cpu",
        "run.progress": "off",
        "run.checkpoint_every": 2,
        "run.output_dir": str(tmp_path / "runs"),
        "run.name": method.replace("+", "_"),
    })


def _check_figures(report: dict, prefixes: tuple[str, ...], num_classes: int) -> None:
    figures = report["figures"]
    for prefix in prefixes:
        for key in ("all", *GROUPS):
            value = figures[f"{prefix}_{key}"]
            assert 0.0 <= value <= 100.0, f"{prefix}_{key} = {value}"
        assert figures[f"{prefix}_group_std"] >= 0.0
        per_class = report["per_class"]["full" if prefix == "full" else prefix]
        assert len(per_class) == num_classes and all(0.0 <= a <= 100.0 for a in per_class)
    assert set(report["groups"]) == set(GROUPS)
    members = sorted(c for g in GROUPS for c in report["groups"][g])
    assert members == list(range(num_classes))


@pytest.mark.parametrize("method", METHODS)
def test_pretrain_then_probe(method: str, tmp_path: Path) -> None:
    cfg = _config(tmp_path, method)
    data = load_run_data(cfg)
    result = pretrain(cfg, data=data)
    history = result.history
    assert [h["epoch"] for h in history] == [1.0, 2.0, 3.0, 4.0]
    assert all(math.isfinite(h["loss"]) and math.isfinite(h["loss_base"]) for h in history)
    # the base contrastive loss falls (GH and SupCon terms join later and are excluded)
    assert history[-1]["loss_base"] < history[0]["loss_base"] - 0.1, [h["loss_base"] for h in history]
    assert history[-1]["lr"] < 0.5 * 0.2  # the cosine schedule has run down
    assert sorted(p.name for p in (cfg.run_dir / "checkpoints").iterdir()) == ["epoch_0002.pt", "epoch_0004.pt"]
    lines = (cfg.run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4

    spec = parse_method(method)
    if spec.has("gh"):
        assert [h["gh_weight"] for h in history] == [0.0, 0.5, 1.0, 1.0]
        assert history[0]["loss"] == history[0]["loss_base"] and history[-1]["loss"] > history[-1]["loss_base"]
    if spec.has("bcl"):
        assert [h["bcl_weight_version"] for h in history] == [1.0, 2.0, 3.0, 4.0]
        assert all(h["bcl_weight_mean"] == pytest.approx(0.5, abs=1e-4) for h in history)
    if spec.sdclr:
        assert all(0.45 < h["sdclr_mask_density"] < 0.55 for h in history)
    if spec.has("colt"):
        assert [h["train_size"] for h in history] == [403.0, 467.0, 467.0, 467.0]
        assert [h["colt_resamples"] for h in history] == [0.0, 1.0, 1.0, 2.0]
        assert "loss_colt_sup" in history[-1]
        assert (cfg.run_dir / "artifacts" / "colt_picks_epoch0002.json").is_file()
    if spec.has("lotar"):
        assert history[-1]["loss"] != history[-1]["loss_base"]

    model = model_from_checkpoint(cfg, result.checkpoint, torch.device("cpu"))
    report = evaluate_backbone(cfg, model.backbone, data, torch.device("cpu"))
    _check_figures(report, ("full", "shot5"), data.num_classes)
    assert report["pretrain_counts"] == data.pretrain_counts.tolist()


def test_sgd_probe_protocol_reports_full_and_few_shot(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "simclr", protocol="sdclr_sgd")
    data = load_run_data(cfg)
    cfg_short = cfg.replace({"optim.epochs": 1})
    result = pretrain(cfg_short, data=data)
    model = model_from_checkpoint(cfg_short, result.checkpoint, torch.device("cpu"))
    report = evaluate_backbone(cfg_short, model.backbone, data, torch.device("cpu"))
    _check_figures(report, ("full", "few", "shot5"), data.num_classes)
    counts = np.asarray(report["pretrain_counts"])
    many = report["groups"]["many"]
    few = report["groups"]["few"]
    assert counts[many].min() >= counts[few].max()
    text = format_report({**report, "method": "simclr", "dataset": "digits-lt", "split": 1})
    assert "many" in text and "per-class" in text
