"""The kNN epoch monitor (`ltray.train.monitor.knn_monitor`), used by `ltray pretrain` and the Ray Train workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ltray.config import load_config
from ltray.data.loading import load_run_data
from ltray.models.contrastive import build_model
from ltray.train.monitor import knn_monitor

ROOT = Path(__file__).resolve().parents[2]


def test_knn_monitor_scores_test_against_the_balanced_bank_every_k_epochs():
    cfg = load_config(ROOT / "ltray" / "configs" / "digits_tiny.yaml")
    data = load_run_data(cfg)
    torch.manual_seed(0)
    model = build_model("resnet18_cifar", width=0.125)
    monitor = knn_monitor(data, every=2, k=5)
    assert monitor(model, 1) == {}
    figures = monitor(model, 2)
    assert set(figures) == {"knn_top1", "knn_balanced"}

    # Independent check: cosine 5-NN with exp(s / 0.1) votes, by plain NumPy.
    model.eval()
    with torch.no_grad():
        def feats(images: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
            out = model.backbone(x).numpy().astype(np.float64)
            return out / np.linalg.norm(out, axis=1, keepdims=True)

        bank_x, bank_y = data.role_images("train_full")
        bank, test = feats(bank_x), feats(data.test.images)
    similarity = test @ bank.T
    top = np.argsort(-similarity, axis=1, kind="stable")[:, :5]
    votes = np.zeros((len(test), data.num_classes))
    for row in range(len(test)):
        for column in top[row]:
            votes[row, bank_y[column]] += np.exp(similarity[row, column] / 0.1)
    predicted = votes.argmax(axis=1)
    labels = data.test.labels
    top1 = 100.0 * np.mean(predicted == labels)
    balanced = np.mean([100.0 * np.mean(predicted[labels == c] == c) for c in np.unique(labels)])
    assert abs(figures["knn_top1"] - top1) < 0.5
    assert abs(figures["knn_balanced"] - balanced) < 0.5


def test_pretrain_reports_the_knn_monitor_every_knn_every_epochs(tmp_path: Path) -> None:
    import json

    from ltray.train.loop import pretrain

    cfg = load_config(ROOT / "ltray" / "configs" / "digits_tiny.yaml", {
        "optim.epochs": 2, "optim.batch_size": 64, "eval.knn_every": 2, "run.checkpoint_every": 2,
        "run.output_dir": str(tmp_path / "runs"), "run.progress": "off"})
    result = pretrain(cfg)
    assert "knn_top1" not in result.history[0] and 0 <= result.history[1]["knn_balanced"] <= 100
    logged = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert logged[1]["knn_top1"] == result.history[1]["knn_top1"]
