"""MAK selections on disk (ltray/data/selection.py): reading, validation, the files' formats, and the pre-training
loader's `data.extra_data` (docs/math/mak.md §7)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ltray.config import load_config
from ltray.data.lists import read_text_list
from ltray.data.loading import load_run_data
from ltray.data.pool_store import import_pool, read_pool_info
from ltray.data.selection import (
    MANIFEST_NAME,
    SELECTION_FORMAT,
    read_selection,
    selected_list,
    selection_table,
    write_selection_folder,
)
from ltray.errors import DataError


def _pool(tmp_path: Path, count: int = 12, seed: int = 0, name: str = "pool") -> Path:
    images = np.random.default_rng(seed).integers(0, 256, size=(count, 16, 16, 3), dtype=np.uint8)
    np.save(tmp_path / f"{name}.npy", images)
    return import_pool(tmp_path / f"{name}.npy", tmp_path / name, shard_rows=5)


def _selection(tmp_path: Path, pool: Path, positions: list[int], name: str = "sel") -> Path:
    manifest = {"format": SELECTION_FORMAT, "pool": str(pool), "pool_sha256": read_pool_info(pool).content_sha256,
                "positions": positions}
    return write_selection_folder(tmp_path / name, {MANIFEST_NAME: json.dumps(manifest), "note.txt": "x"})


def test_read_selection_returns_the_pool_and_positions_in_output_order(tmp_path: Path) -> None:
    pool = _pool(tmp_path)
    folder = _selection(tmp_path, pool, [7, 2, 11])
    source, positions = read_selection(folder)
    np.testing.assert_array_equal(positions, [7, 2, 11])
    assert positions.dtype == np.int64
    np.testing.assert_array_equal(source.images, np.load(tmp_path / "pool.npy"))
    _, again = read_selection(folder / MANIFEST_NAME)  # the manifest file itself works too
    np.testing.assert_array_equal(again, positions)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("positions", [[], [3, 3], [12], [-1], [1.5], "0,1"])
def test_bad_positions_are_rejected(tmp_path: Path, positions: object) -> None:
    pool = _pool(tmp_path)
    manifest = {"format": SELECTION_FORMAT, "pool": str(pool), "pool_sha256": read_pool_info(pool).content_sha256,
                "positions": positions}
    (tmp_path / "sel").mkdir()
    (tmp_path / "sel" / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(DataError):
        read_selection(tmp_path / "sel")


def test_missing_corrupt_or_stale_selection_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_selection(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / MANIFEST_NAME).write_text("{")
    with pytest.raises(DataError, match="corrupt"):
        read_selection(tmp_path / "bad")
    (tmp_path / "bad" / MANIFEST_NAME).write_text(json.dumps({"format": "other"}))
    with pytest.raises(DataError, match="not an ltray"):
        read_selection(tmp_path / "bad")
    pool = _pool(tmp_path)
    folder = _selection(tmp_path, pool, [1, 2])
    np.save(tmp_path / "other.npy", np.zeros((12, 16, 16, 3), dtype=np.uint8))
    import_pool(tmp_path / "other.npy", pool, overwrite=True)  # the pool's content changes
    with pytest.raises(DataError, match="changed"):
        read_selection(folder)


def test_a_selection_is_never_overwritten(tmp_path: Path) -> None:
    pool = _pool(tmp_path)
    folder = _selection(tmp_path, pool, [1])
    before = (folder / MANIFEST_NAME).read_bytes()
    with pytest.raises(DataError, match="never overwritten"):
        _selection(tmp_path, pool, [2])
    assert (folder / MANIFEST_NAME).read_bytes() == before
    (tmp_path / "empty").mkdir()
    _selection(tmp_path, pool, [2], name="empty")  # an empty folder may receive a selection
    np.testing.assert_array_equal(read_selection(tmp_path / "empty")[1], [2])


def test_selection_table_and_list_formats(tmp_path: Path) -> None:
    positions = np.array([2, 0])
    labels = np.array([4, 1, 3])
    paths = ["a/x.png", "b/y.png", "c/z.png"]
    table = selection_table(positions, np.array([0.5, -1.0, 2.25]), labels, paths)
    assert table == "rank\tpool_index\tsource_path\tlabel\tscore\n0\t2\tc/z.png\t3\t2.25\n1\t0\ta/x.png\t4\t0.5\n"
    text = selected_list(positions, labels, paths, ["", "", "places"])
    assert text == "c/z.png 3 places\na/x.png 4\n"
    (tmp_path / "list.txt").write_text(text)
    items = read_text_list(tmp_path / "list.txt")  # the input list format reads back
    assert items.paths == ("c/z.png", "a/x.png") and items.sources == ("places", "")
    with pytest.raises(DataError):
        selected_list(np.array([0]), np.array([-1]), ["a.png"], [""])


def test_pretraining_loader_appends_the_selection(tmp_path: Path) -> None:
    pool = _pool(tmp_path, count=20)
    folder = _selection(tmp_path, pool, [19, 4, 8])
    plain = load_run_data(load_config(None, {"data.dataset": "digits-lt"})).train
    data = load_run_data(load_config(None, {"data.dataset": "digits-lt", "data.extra_data": str(folder)})).train
    n_id = plain.num_id
    assert data.num_id == n_id and len(data) == n_id + 3
    np.testing.assert_array_equal(data.members()[n_id:], [n_id + 19, n_id + 4, n_id + 8])
    images = np.load(tmp_path / "pool.npy")
    np.testing.assert_array_equal(data.images(np.array([n_id + 4, 0])), np.stack([images[4], plain.id_images[0]]))
    np.testing.assert_array_equal(data.labels(np.array([n_id + 19])), [-1])
    assert bool(data.is_ood(torch.tensor([n_id + 8]))[0])


def test_the_lr_schedule_spans_the_selection_too(tmp_path: Path) -> None:
    """data_and_eval.md §7: W = 10·I and T = E·I with I = ⌈N/B⌉ over the whole pre-training set, so a MAK run on
    D_i plus its selection reaches the final lr on its last update, not before."""
    from ltray.train.loop import Pretrainer

    pool = _pool(tmp_path, count=150)
    folder = _selection(tmp_path, pool, list(range(150)))
    overrides = {"data.dataset": "digits-lt", "data.extra_data": str(folder), "optim.batch_size": 64,
                 "optim.epochs": 3, "optim.warmup_epochs": 1, "run.device": "cpu",
                 "run.output_dir": str(tmp_path / "runs")}
    trainer = Pretrainer(load_config(None, overrides))
    n = len(trainer.train_data)
    assert n == trainer.train_data.num_id + 150
    per_epoch = -(-n // 64)
    assert per_epoch > -(-trainer.train_data.num_id // 64)  # the selection adds iterations
    assert (trainer.warmup_iters, trainer.total_iters) == (per_epoch, 3 * per_epoch)
