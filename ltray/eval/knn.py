"""Weighted kNN monitor on frozen features (the InstDisc / SimCLR-monitor rule, Wu et al. 2018, Eq. 9):
cosine similarity s to the k nearest training features, each neighbour voting for its class with weight
exp(s / T); the class with the largest total wins. Cheap enough for per-epoch and ASHA metrics."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from ltray.errors import ConfigError, DataError
from ltray.eval.metrics import per_class_accuracy
from ltray.train import distributed as dist_utils

if TYPE_CHECKING:
    from ltray.data.loading import RunData


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
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> KnnResult:
    """kNN accuracy of `test_features` against the labelled bank `train_features` (see `knn_predict`)."""
    _check(train_features, train_labels, "train", num_classes)
    _check(test_features, test_labels, "test", num_classes)
    predictions = knn_predict(
        train_features, train_labels, test_features,
        num_classes=num_classes, k=k, temperature=temperature, chunk_size=chunk_size,
    )
    targets = test_labels.to(predictions.device)
    per_class = per_class_accuracy(predictions, targets, num_classes)
    return KnnResult(
        per_class_acc=per_class,
        top1=float((predictions == targets).double().mean().item() * 100.0),
        balanced=float(np.nanmean(per_class)),
    )


def knn_monitor(data: RunData, every: int, k: int, workers: int = 0) -> Callable[[Any, int], dict[str, float]]:
    """An epoch monitor: kNN accuracy of the backbone's features, test set against the balanced `train_full` bank,
    every `every` epochs on rank 0 (other ranks return nothing; rank 0's metrics are the ones reported).

    Image-list data sets read both sets through their lists with the inference transform (`workers` loader
    workers); without a `train_full` list the monitor warns once and reports nothing."""
    from ltray.eval.features import extract_features

    if data.is_list:
        from ltray.data.list_data import source_features

        if "train_full" not in data.sources:
            warnings.warn(f"kNN monitor skipped: {data.dataset} has no train_full list (set data.full_list)",
                          stacklevel=2)
            return lambda model, epoch: {}
        bank_source, test_source = data.role_source("train_full"), data.role_source("test")

        def features(model: Any, role: str, device: torch.device) -> torch.Tensor:
            source = bank_source if role == "bank" else test_source
            return source_features(model.backbone, source, image_size=data.image_size, workers=workers,
                                   device=device)

        bank_labels, test_labels = bank_source.labels, test_source.labels
    else:
        bank_images, bank_labels = data.role_images("train_full")
        assert data.test is not None
        test_images, test_labels = data.test.images, data.test.labels

        def features(model: Any, role: str, device: torch.device) -> torch.Tensor:
            return extract_features(model.backbone, bank_images if role == "bank" else test_images, device=device)

    bank_y = torch.from_numpy(np.array(bank_labels, dtype=np.int64))
    test_y = torch.from_numpy(np.array(test_labels, dtype=np.int64))

    def monitor(model: Any, epoch: int) -> dict[str, float]:
        if dist_utils.rank() != 0 or epoch % every:
            return {}
        device = next(model.parameters()).device
        bank, test = features(model, "bank", device), features(model, "test", device)
        result = knn_accuracy(bank, bank_y, test, test_y, num_classes=data.num_classes, k=k)
        return {"knn_top1": result.top1, "knn_balanced": result.balanced}

    return monitor
