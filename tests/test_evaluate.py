"""ltray/evaluate.py: the probes' wiring on array data: k-shot features extracted for the drawn rows only, and
`eval.probe_augment` reaching the sdclr_sgd probe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ltray.config import load_config
from ltray.data.loading import load_run_data
from ltray.eval.features import extract_features
from ltray.eval.probe import CIFAR_FULL, kshot_probe, sdclr_sgd_probe
from ltray.eval.shots import kshot_indices
from ltray.evaluate import evaluate_backbone, kshot_rows, rows_features, scaled_schedule
from ltray.models.contrastive import build_model

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup():
    cfg = load_config(ROOT / "ltray" / "configs" / "digits_tiny.yaml", {"eval.few_shot": False})
    torch.manual_seed(0)
    backbone = build_model(cfg.model.arch, width=cfg.model.width).backbone.eval()
    return cfg, backbone, load_run_data(cfg)


def test_kshot_rows_are_the_union_of_the_draws() -> None:
    labels = np.repeat(np.arange(4), 9)
    rows = kshot_rows(labels, 3, 2, seed=5)
    draws = kshot_indices(labels, 3, 2, seed=5)
    assert rows.tolist() == sorted(set(np.concatenate(draws).tolist()))
    assert 12 <= len(rows) <= 24


def test_kshot_probe_on_drawn_rows_matches_the_probe_on_all_features(setup) -> None:
    cfg, backbone, data = setup
    images, labels = data.role_images("train_full")
    test_x, test_y = data.test.images, data.test.labels
    rows = kshot_rows(labels, cfg.eval.kshot, cfg.eval.kshot_draws, cfg.run.seed)
    assert len(rows) < len(labels)
    full = extract_features(backbone, images, device=CPU)
    partial = rows_features(backbone, images, rows, CPU)
    assert partial.shape == full.shape
    torch.testing.assert_close(partial[rows], full[rows], rtol=1e-4, atol=1e-5)
    others = np.setdiff1d(np.arange(len(labels)), rows)
    assert torch.count_nonzero(partial[others]) == 0
    test_features = extract_features(backbone, test_x, device=CPU)
    reports = [
        kshot_probe(features, labels, test_features, test_y, data.num_classes, k=cfg.eval.kshot,
                    draws=cfg.eval.kshot_draws, seed=cfg.run.seed, epochs=20).mean_report
        for features in (full, partial)
    ]
    assert reports[0].keys() == reports[1].keys()
    for key in reports[0]:
        assert reports[1][key] == pytest.approx(reports[0][key], abs=1e-6), key


def test_probe_augment_false_trains_the_sgd_probe_on_fixed_features(setup) -> None:
    cfg, backbone, data = setup
    cfg = cfg.replace({"eval.probe_augment": False})
    report = evaluate_backbone(cfg, backbone, data, CPU)
    full_x, full_y = data.role_images("train_full")
    val_x, val_y = data.role_images("val")
    direct = sdclr_sgd_probe(
        backbone, full_x, full_y, val_x, val_y, data.test.images, data.test.labels, data.num_classes,
        schedule=scaled_schedule(CIFAR_FULL, cfg.eval.probe_epochs_scale), device=CPU, seed=cfg.run.seed,
        augment=False,
    )
    assert report["figures"]["full_all"] == pytest.approx(direct.report["all"])
    assert report["per_class"]["full"] == pytest.approx(direct.per_class_acc.tolist())
