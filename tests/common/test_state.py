"""Per-index state (docs/math/README.md convention 3): `IndexedEMA` and `first_occurrence`."""

from __future__ import annotations

import pytest
import torch

from ltray.common.state import IndexedEMA, first_occurrence


def test_first_occurrence_keeps_the_first_of_every_value() -> None:
    index = torch.tensor([4, 2, 4, 7, 2, 2, 9])
    assert first_occurrence(index).tolist() == [True, True, False, True, False, False, True]
    assert first_occurrence(torch.zeros(0, dtype=torch.int64)).tolist() == []


def test_first_visit_takes_the_raw_value_then_the_ema() -> None:
    ema = IndexedEMA(5)
    assert ema.values.tolist() == [0.0] * 5 and not bool(ema.visited.any())
    ema.update(torch.tensor([1, 3]), torch.tensor([2.0, -4.0]), epoch=0, beta=0.9)
    assert ema.values.tolist() == [0.0, 2.0, 0.0, -4.0, 0.0]
    # epoch 1: index 1 is revisited (EMA), index 0 is new (raw value even though it is not epoch 0)
    ema.update(torch.tensor([1, 0]), torch.tensor([12.0, 5.0]), epoch=1, beta=0.9)
    assert ema.values[1].item() == pytest.approx(0.1 * 12.0 + 0.9 * 2.0)
    assert ema.values[0].item() == 5.0
    assert ema.values[3].item() == -4.0  # untouched
    assert ema.visited.tolist() == [True, True, False, True, False]
    assert ema.last_epoch.tolist() == [1, 1, -1, 0, -1]


def test_hand_sequence_over_three_epochs() -> None:
    ema = IndexedEMA(1)
    beta = 0.97
    expected = None
    for epoch, value in enumerate([1.0, 3.0, -2.0]):
        ema.update(torch.tensor([0]), torch.tensor([value]), epoch, beta)
        expected = value if expected is None else (1 - beta) * value + beta * expected
        assert ema.values[0].item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.97 * (0.03 * 3.0 + 0.97 * 1.0) + 0.03 * -2.0)


def test_one_update_per_index_per_epoch() -> None:
    ema = IndexedEMA(3)
    ema.update(torch.tensor([0, 1]), torch.tensor([1.0, 1.0]), epoch=0, beta=0.5)
    updated = ema.update(torch.tensor([0, 2]), torch.tensor([100.0, 7.0]), epoch=0, beta=0.5)
    assert updated.tolist() == [2]
    assert ema.values.tolist() == [1.0, 1.0, 7.0]
    ema.update(torch.tensor([0]), torch.tensor([3.0]), epoch=1, beta=0.5)
    assert ema.values[0].item() == 2.0


def test_duplicates_in_one_update_keep_the_first_occurrence() -> None:
    ema = IndexedEMA(4)
    updated = ema.update(torch.tensor([2, 1, 2, 2]), torch.tensor([5.0, 6.0, 50.0, 500.0]), epoch=0, beta=0.9)
    assert sorted(updated.tolist()) == [1, 2]
    assert ema.values.tolist() == [0.0, 6.0, 5.0, 0.0]
    ema.update(torch.tensor([2, 2]), torch.tensor([15.0, -1e6]), epoch=1, beta=0.9)
    assert ema.values[2].item() == pytest.approx(0.1 * 15.0 + 0.9 * 5.0)


def test_vector_values() -> None:
    ema = IndexedEMA(3, shape=(2,))
    ema.update(torch.tensor([0, 2]), torch.tensor([[1.0, 2.0], [3.0, 4.0]]), epoch=0, beta=0.5)
    ema.update(torch.tensor([2, 1]), torch.tensor([[5.0, 0.0], [9.0, 9.0]]), epoch=1, beta=0.5)
    assert ema.values.tolist() == [[1.0, 2.0], [9.0, 9.0], [4.0, 2.0]]


def test_out_of_range_index_raises() -> None:
    ema = IndexedEMA(3)
    with pytest.raises(IndexError):
        ema.update(torch.tensor([3]), torch.tensor([1.0]), epoch=0, beta=0.5)
    with pytest.raises(IndexError):
        ema.update(torch.tensor([-1]), torch.tensor([1.0]), epoch=0, beta=0.5)


def test_resize_grows_unvisited_and_shrinks_keeping_entries() -> None:
    ema = IndexedEMA(2, shape=(3,))
    ema.update(torch.tensor([1]), torch.ones(1, 3), epoch=4, beta=0.5)
    ema.resize(4)
    assert len(ema) == 4 and ema.values.shape == (4, 3)
    assert ema.values[1].tolist() == [1.0, 1.0, 1.0] and ema.values[2:].abs().sum().item() == 0
    assert ema.visited.tolist() == [False, True, False, False]
    assert ema.last_epoch.tolist() == [-1, 4, -1, -1]
    ema.update(torch.tensor([3]), torch.full((1, 3), 2.0), epoch=4, beta=0.5)
    assert ema.values[3].tolist() == [2.0, 2.0, 2.0]
    ema.resize(2)
    assert len(ema) == 2 and ema.visited.tolist() == [False, True]
    ema.resize(2)
    assert len(ema) == 2


def test_state_round_trip_continues_identically() -> None:
    a = IndexedEMA(4)
    a.update(torch.tensor([0, 1, 2]), torch.tensor([1.0, 2.0, 3.0]), epoch=0, beta=0.8)
    a.update(torch.tensor([1]), torch.tensor([4.0]), epoch=1, beta=0.8)
    state = a.state_dict()
    assert all(v.device.type == "cpu" for v in state.values())
    b = IndexedEMA(4)
    saved = {key: value.clone() for key, value in state.items()}
    b.load_state_dict(saved)
    saved["values"][0] = 123.0  # loading copies the tensors
    for ema in (a, b):
        ema.update(torch.tensor([1, 3, 0]), torch.tensor([10.0, 5.0, 7.0]), epoch=1, beta=0.8)
    assert torch.equal(a.values, b.values) and torch.equal(a.visited, b.visited)
    assert torch.equal(a.last_epoch, b.last_epoch)
    # index 1 was already updated in epoch 1 (dropped); 0 gets its EMA step; 3 its first value
    assert b.values.tolist() == pytest.approx([0.2 * 7.0 + 0.8 * 1.0, 0.2 * 4.0 + 0.8 * 2.0, 3.0, 5.0])
