"""The kNN epoch monitor on an image-list data set: features come through the lists' inference
pipeline; without a `train_full` list the monitor warns and reports nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ltray.data.list_data import source_features
from ltray.data.loading import load_run_data
from ltray.eval.knn import knn_accuracy
from ltray.models.contrastive import build_model
from ltray.train.monitor import knn_monitor
from tests.data.test_list_data import image_folder, list_config  # noqa: F401  (image_folder is a fixture)


def test_knn_monitor_reads_list_data_through_the_lists(tmp_path: Path, image_folder: dict[str, str]) -> None:
    data = load_run_data(list_config(tmp_path, image_folder))
    torch.manual_seed(0)
    model = build_model("resnet18_cifar", width=0.125)
    monitor = knn_monitor(data, every=2, k=3)
    assert monitor(model, 1) == {}
    figures = monitor(model, 2)

    full, test = data.role_source("train_full"), data.role_source("test")
    bank = source_features(model.backbone, full, image_size=data.image_size, workers=0)
    queries = source_features(model.backbone, test, image_size=data.image_size, workers=0)
    expected = knn_accuracy(bank, torch.from_numpy(np.array(full.labels)), queries,
                            torch.from_numpy(np.array(test.labels)), num_classes=data.num_classes, k=3)
    assert figures == {"knn_top1": expected.top1, "knn_balanced": expected.balanced}


def test_knn_monitor_without_a_full_list_warns_and_reports_nothing(
    tmp_path: Path, image_folder: dict[str, str]
) -> None:
    data = load_run_data(list_config(tmp_path, image_folder))
    del data.sources["train_full"]
    with pytest.warns(UserWarning, match="kNN monitor skipped: imagenet100 has no train_full list"):
        monitor = knn_monitor(data, every=1, k=3)
    assert monitor(build_model("resnet18_cifar", width=0.125), 1) == {}
