"""The kNN monitor of a pre-training run (`eval.knn_every`): the weighted kNN accuracy of `ltray.eval.knn` on the
backbone's features, test set against the balanced `train_full` bank, reported with the epoch's metrics."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ltray.common import distributed as dist_utils
from ltray.eval.features import extract_features
from ltray.eval.knn import knn_accuracy

if TYPE_CHECKING:
    from ltray.data.loading import RunData


def knn_monitor(data: RunData, every: int, k: int, workers: int = 0) -> Callable[[Any, int], dict[str, float]]:
    """An epoch monitor: kNN accuracy of the backbone's features, test set against the balanced `train_full` bank,
    every `every` epochs on rank 0 (other ranks return nothing; rank 0's metrics are the ones reported).

    Image-list data sets read both sets through their lists with the inference transform (`workers` loader
    workers); without a `train_full` list the monitor warns once and reports nothing."""
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
