from __future__ import annotations

import math

import pytest
import torch

from ltray.errors import ConfigError, DataError
from ltray.eval.knn import knn_accuracy, knn_predict


def bank() -> tuple[torch.Tensor, torch.Tensor]:
    """Unit vectors with cosine similarity to the query (1, 0) of 0.9 (class 0), 0.5, 0.5 and −1 (class 1)."""
    features = torch.tensor(
        [[0.9, math.sqrt(0.19)], [0.5, math.sqrt(0.75)], [0.5, -math.sqrt(0.75)], [-1.0, 0.0]], dtype=torch.float32
    )
    return features * torch.tensor([[2.0], [3.0], [0.5], [1.0]]), torch.tensor([0, 1, 1, 1])


def test_weighted_vote_by_hand() -> None:
    features, labels = bank()
    query = torch.tensor([[4.0, 0.0]])
    # T = 0.1: class 0 gets e^9 ≈ 8103, class 1 gets 2·e^5 + e^−10 ≈ 297, so the single nearest neighbour wins.
    assert knn_predict(features, labels, query, num_classes=2, k=4, temperature=0.1).tolist() == [0]
    # T = 100: weights are all ≈ 1, so the majority of the k = 3 neighbours (class 1) wins.
    assert knn_predict(features, labels, query, num_classes=2, k=3, temperature=100.0).tolist() == [1]
    # k = 1: only the nearest neighbour votes.
    assert knn_predict(features, labels, query, num_classes=2, k=1, temperature=100.0).tolist() == [0]
    # k larger than the bank uses the whole bank.
    assert knn_predict(features, labels, query, num_classes=2, k=200, temperature=0.1).tolist() == [0]


def test_knn_accuracy_on_clusters_is_chunk_invariant() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = torch.eye(4) * 5
    train_labels = torch.arange(4).repeat_interleave(10)
    test_labels = torch.tensor([0] * 6 + [1] * 2 + [2] * 2 + [3] * 2)
    train = centres[train_labels] + torch.randn(40, 4, generator=generator) * 0.3
    test = centres[test_labels] + torch.randn(12, 4, generator=generator) * 0.3
    test_labels_wrong = test_labels.clone()
    test_labels_wrong[:3] = 3  # three class-0 points labelled 3: class 3 gets 2 of 5 right, class 0 3 of 3
    result = knn_accuracy(train, train_labels, test, test_labels_wrong, num_classes=4, k=5, chunk_size=5)
    assert result.per_class_acc.tolist() == pytest.approx([100.0, 100.0, 100.0, 40.0])
    assert result.top1 == pytest.approx(100.0 * 9 / 12)
    assert result.balanced == pytest.approx(85.0)
    whole = knn_accuracy(train, train_labels, test, test_labels_wrong, num_classes=4, k=5, chunk_size=1024)
    assert whole.per_class_acc.tolist() == result.per_class_acc.tolist()


def test_knn_rejects_bad_input() -> None:
    features, labels = bank()
    with pytest.raises(ConfigError):
        knn_accuracy(features, labels, features, labels, num_classes=2, temperature=0.0)
    with pytest.raises(DataError):
        knn_accuracy(features, labels, features, labels, num_classes=1)
    with pytest.raises(DataError):
        knn_accuracy(features, labels[:2], features, labels, num_classes=2)
