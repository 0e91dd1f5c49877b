"""Weighted kNN monitor on frozen features (the InstDisc / SimCLR-monitor rule, Wu et al. 2018, Eq. 9):
cosine similarity s to the k nearest training features, each neighbour voting for its class with weight
exp(s / T); the class with the largest total wins. Cheap enough for per-epoch and ASHA metrics (the training-time
monitor is `ltray.train.monitor.knn_monitor`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ltray.errors import ConfigError, DataError
from ltray.eval.metrics import per_class_accuracy


@dataclass
class KnnResult:
    """Accuracies in %. `balanced` is the mean of `per_class_acc` over the classes present in the test set."""

    per_class_acc: np.ndarray
    top1: float
    balanced: float


def _check(features: torch.Tensor, labels: torch.Tensor, name: str, num_classes: int) -> None:
    if features.ndim != 2 or labels.ndim != 1 or features.shape[0] != labels.shape[0]:
        raise DataError(
            f"{name}: features [N, d] and labels [N] expected, got {tuple(features.shape)} and {tuple(labels.shape)}"
        )
    if labels.numel() == 0:
        raise DataError(f"{name}: no samples")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"{name}: labels outside [0, {num_classes})")


@torch.no_grad()
def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    *,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Predicted class [N_test] by the weighted vote over the min(k, N_train) most cosine-similar training rows,
    computed in chunks of `chunk_size` test rows on the features' device."""
    if k < 1 or temperature <= 0 or chunk_size < 1:
        raise ConfigError(f"need k >= 1, temperature > 0, chunk_size >= 1; got {k}, {temperature}, {chunk_size}")
    if train_features.shape[1] != test_features.shape[1]:
        raise DataError(f"train and test features differ in width: {train_features.shape[1]} vs {test_features.shape[1]}")
    bank = F.normalize(train_features.float(), dim=1)
    bank_labels = train_labels.to(bank.device, torch.int64)
    neighbours = min(k, bank.shape[0])
    predictions = []
    for start in range(0, test_features.shape[0], chunk_size):
        queries = F.normalize(test_features[start : start + chunk_size].to(bank.device).float(), dim=1)
        similarity, index = (queries @ bank.T).topk(neighbours, dim=1)
        votes = torch.zeros(queries.shape[0], num_classes, device=bank.device)
        votes.scatter_add_(1, bank_labels[index], torch.exp(similarity / temperature))
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    num_classes: int,
    **options: Any,
) -> KnnResult:
    """kNN accuracy of `test_features` against the labelled bank `train_features`; `options` (`k`, `temperature`,
    `chunk_size`) as for `knn_predict`."""
    _check(train_features, train_labels, "train", num_classes)
    _check(test_features, test_labels, "test", num_classes)
    predictions = knn_predict(train_features, train_labels, test_features, num_classes=num_classes, **options)
    targets = test_labels.to(predictions.device)
    per_class = per_class_accuracy(predictions, targets, num_classes)
    return KnnResult(
        per_class_acc=per_class,
        top1=float((predictions == targets).double().mean().item() * 100.0),
        balanced=float(np.nanmean(per_class)),
    )
