"""Pool import, storage and reading (ltray/data/pool_store.py): every source kind, exact round trips, rejected inputs,
atomic and non-destructive writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ltray.cli import main as cli_main
from ltray.data.embedded import embedded_pool
from ltray.data.pool_store import (
    MANIFEST,
    import_pool,
    read_pool_arrays,
    read_pool_info,
    read_pool_items,
    resize_centre_crop,
    show_pool,
)
from ltray.errors import ConfigError, DataError


def _random_images(count: int, height: int = 4, width: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, height, width, 3), dtype=np.uint8)


def _tree_state(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# ----- the .npy source ---------------------------------------------------------------------------------------------


def test_npy_round_trip_is_exact(tmp_path: Path) -> None:
    images = _random_images(10)
    np.save(tmp_path / "pool.npy", images)
    out = import_pool(tmp_path / "pool.npy", tmp_path / "pool", shard_rows=3)
    info = read_pool_info(out)
    assert info.size == 10 and info.image_shape == (4, 5, 3)
    assert [s.rows for s in info.shards] == [3, 3, 3, 1] and [s.first_index for s in info.shards] == [0, 3, 6, 9]
    pool = read_pool_arrays(out)
    np.testing.assert_array_equal(pool.images, images)
    np.testing.assert_array_equal(pool.labels, np.full(10, -1))
    table = pq.read_table(out / info.shards[1].file)
    assert table.column_names == ["pool_index", "image", "source_path", "source", "label"]
    assert table.column("pool_index").to_pylist() == [3, 4, 5]
    assert table.column("image")[0].as_py() == images[3].tobytes()  # raw HWC bytes
    assert table.column("source_path").to_pylist() == ["", "", ""]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["format"] == "ltray-pool-v1" and manifest["dtype"] == "uint8" and manifest["source"]["kind"] == "npy"
    assert _leftovers(tmp_path) == []


def test_fortran_order_npy_is_read_in_image_order(tmp_path: Path) -> None:
    images = _random_images(6, seed=1)
    np.save(tmp_path / "f.npy", np.asfortranarray(images))
    np.testing.assert_array_equal(read_pool_arrays(import_pool(tmp_path / "f.npy", tmp_path / "p", shard_rows=4)).images, images)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((3, 4, 4, 3), dtype=np.float32),  # wrong dtype
        np.zeros((3, 4, 4), dtype=np.uint8),  # no channel axis
        np.zeros((3, 4, 4, 4), dtype=np.uint8),  # four channels
        np.zeros((0, 4, 4, 3), dtype=np.uint8),  # empty pool
    ],
)
def test_npy_with_wrong_shape_dtype_or_no_items_is_rejected(tmp_path: Path, array: np.ndarray) -> None:
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(DataError):
        import_pool(tmp_path / "bad.npy", tmp_path / "pool")
    assert not (tmp_path / "pool").exists() and _leftovers(tmp_path) == []


def test_truncated_npy_is_rejected(tmp_path: Path) -> None:
    np.save(tmp_path / "full.npy", _random_images(8))
    data = (tmp_path / "full.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[:-7])
    with pytest.raises(DataError, match="truncated"):
        import_pool(tmp_path / "cut.npy", tmp_path / "pool")
    (tmp_path / "junk.npy").write_bytes(b"not an array at all")
    with pytest.raises(DataError):
        import_pool(tmp_path / "junk.npy", tmp_path / "pool")
    with pytest.raises(DataError, match="not found"):
        import_pool(tmp_path / "missing.npy", tmp_path / "pool")
    assert not (tmp_path / "pool").exists()


# ----- the list source ---------------------------------------------------------------------------------------------


def _write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _two_colour(width: int, height: int) -> np.ndarray:
    """Left half red, right half blue."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2 :] = (0, 0, 255)
    return pixels


def test_list_source_resizes_centre_crops_and_keeps_labels(tmp_path: Path) -> None:
    root = tmp_path / "images"
    _write_png(root / "a" / "wide.png", _two_colour(8, 4))  # shorter side already 4: only the centre crop
    _write_png(root / "b" / "flat.png", np.full((12, 9, 3), (10, 200, 30), dtype=np.uint8))  # constant colour
    _write_png(root / "b" / "grey.png", np.full((6, 6), 77, dtype=np.uint8))  # greyscale becomes RGB
    (tmp_path / "list.txt").write_text("a/wide.png 3\nb/flat.png 0\n\nb/grey.png 5\n")
    out = import_pool(tmp_path / "list.txt", tmp_path / "pool", root=root, size=4, shard_rows=2)
    pool = read_pool_arrays(out)
    assert pool.images.shape == (3, 4, 4, 3)
    expected_wide = np.zeros((4, 4, 3), dtype=np.uint8)
    expected_wide[:, :2] = (255, 0, 0)  # columns 2..5 of the 8-wide image: two red, two blue
    expected_wide[:, 2:] = (0, 0, 255)
    np.testing.assert_array_equal(pool.images[0], expected_wide)
    np.testing.assert_array_equal(pool.images[1], np.broadcast_to([10, 200, 30], (4, 4, 3)))
    np.testing.assert_array_equal(pool.images[2], np.full((4, 4, 3), 77))
    np.testing.assert_array_equal(pool.labels, [3, 0, 5])
    labels, paths, sources = read_pool_items(out)
    assert paths == ["a/wide.png", "b/flat.png", "b/grey.png"] and sources == ["", "", ""]
    np.testing.assert_array_equal(labels, [3, 0, 5])
    assert read_pool_info(out).source["kind"] == "list"


def test_resize_centre_crop_of_a_tall_image() -> None:
    pixels = np.zeros((10, 5, 3), dtype=np.uint8)
    pixels[:4] = 255  # top 4 rows white; the centre 5x5 crop covers rows 2..6
    crop = resize_centre_crop(Image.fromarray(pixels), 5)
    np.testing.assert_array_equal(crop[:, :, 0], np.repeat([[255], [255], [0], [0], [0]], 5, axis=1))


def test_list_source_needs_root_and_size(tmp_path: Path) -> None:
    (tmp_path / "list.txt").write_text("x.png 0\n")
    with pytest.raises(ConfigError, match="root"):
        import_pool(tmp_path / "list.txt", tmp_path / "pool", size=4)
    with pytest.raises(ConfigError, match="size"):
        import_pool(tmp_path / "list.txt", tmp_path / "pool", root=tmp_path)


def test_unreadable_or_missing_image_is_rejected(tmp_path: Path) -> None:
    root = tmp_path / "images"
    _write_png(root / "ok.png", _two_colour(4, 4))
    (root / "broken.png").write_bytes(b"\x89PNG but not really")
    (tmp_path / "broken.txt").write_text("ok.png 0\nbroken.png 1\n")
    with pytest.raises(DataError, match="broken.png"):
        import_pool(tmp_path / "broken.txt", tmp_path / "pool", root=root, size=4)
    (tmp_path / "missing.txt").write_text("ok.png 0\nnope.png 1\n")
    with pytest.raises(DataError, match="nope.png"):
        import_pool(tmp_path / "missing.txt", tmp_path / "pool", root=root, size=4)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(DataError):
        import_pool(tmp_path / "empty.txt", tmp_path / "pool", root=root, size=4)
    assert not (tmp_path / "pool").exists() and _leftovers(tmp_path) == []


def test_failure_on_a_later_row_leaves_no_pool(tmp_path: Path) -> None:
    """Shards 0..2 are written before item 3 fails: nothing may look like a pool afterwards."""
    root = tmp_path / "images"
    for i in range(3):
        _write_png(root / f"{i}.png", _two_colour(4, 4))
    (root / "3.png").write_bytes(b"garbage")
    (tmp_path / "list.txt").write_text("".join(f"{i}.png {i}\n" for i in range(4)))
    with pytest.raises(DataError, match="3.png"):
        import_pool(tmp_path / "list.txt", tmp_path / "pool", root=root, size=4, shard_rows=1)
    assert not (tmp_path / "pool").exists()
    assert _leftovers(tmp_path) == []
    with pytest.raises(DataError, match="not found"):
        read_pool_arrays(tmp_path / "pool")


# ----- the embedded source -----------------------------------------------------------------------------------------


def test_embedded_source(tmp_path: Path) -> None:
    out = import_pool("embedded:40", tmp_path / "pool", shard_rows=16)
    pool = read_pool_arrays(out)
    reference = embedded_pool(n=40)
    np.testing.assert_array_equal(pool.images, reference.images)
    np.testing.assert_array_equal(pool.labels, reference.labels)
    assert read_pool_info(out).source == {"kind": "embedded", "n": 40, "seed": 0}
    with pytest.raises(DataError):
        import_pool("embedded:0", tmp_path / "empty")
    with pytest.raises(ConfigError):
        import_pool("embedded:many", tmp_path / "bad")


# ----- existing outputs, corruption ----------------------------------------------------------------------------------


def test_existing_output_is_never_touched_without_overwrite(tmp_path: Path) -> None:
    np.save(tmp_path / "pool.npy", _random_images(5))
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = _tree_state(out)
    with pytest.raises(DataError, match="already exists"):
        import_pool(tmp_path / "pool.npy", out)
    with pytest.raises(DataError, match="not an ltray pool"):
        import_pool(tmp_path / "pool.npy", out, overwrite=True)
    assert _tree_state(out) == before


def test_overwrite_replaces_a_pool_and_a_failed_overwrite_keeps_the_old_one(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", _random_images(5, seed=1))
    np.save(tmp_path / "b.npy", _random_images(7, seed=2))
    out = import_pool(tmp_path / "a.npy", tmp_path / "pool")
    before = _tree_state(out)
    np.save(tmp_path / "bad.npy", np.zeros((2, 4, 5), dtype=np.uint8))
    with pytest.raises(DataError):
        import_pool(tmp_path / "bad.npy", out, overwrite=True)
    assert _tree_state(out) == before
    with pytest.raises(DataError, match="already exists"):
        import_pool(tmp_path / "b.npy", out)
    import_pool(tmp_path / "b.npy", out, overwrite=True)
    np.testing.assert_array_equal(read_pool_arrays(out).images, _random_images(7, seed=2))
    assert _leftovers(tmp_path) == []


def test_corrupt_or_incomplete_pool_is_rejected(tmp_path: Path) -> None:
    np.save(tmp_path / "pool.npy", _random_images(6))
    out = import_pool(tmp_path / "pool.npy", tmp_path / "pool", shard_rows=4)
    shard = out / read_pool_info(out).shards[1].file
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="corrupt"):
        read_pool_arrays(out)
    shard.unlink()
    with pytest.raises(DataError, match="missing"):
        read_pool_arrays(out)
    (out / MANIFEST).write_text("{not json")
    with pytest.raises(DataError, match="corrupt"):
        read_pool_info(out)
    (out / MANIFEST).unlink()
    with pytest.raises(DataError, match="not a complete"):
        read_pool_arrays(out)


def test_manifest_tampering_is_detected(tmp_path: Path) -> None:
    np.save(tmp_path / "pool.npy", _random_images(6))
    out = import_pool(tmp_path / "pool.npy", tmp_path / "pool", shard_rows=4)
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["shards"][0]["rows"] = 3
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError):
        read_pool_info(out)


# ----- show and the command line -----------------------------------------------------------------------------------


def test_show_pool_summary_and_grid(tmp_path: Path) -> None:
    out = import_pool("embedded:100", tmp_path / "pool", shard_rows=30)
    text = show_pool(out, grid=tmp_path / "grid.png")
    assert "size: 100" in text and "16x16x3 uint8" in text and "kind=embedded" in text and "100 unknown" in text
    with Image.open(tmp_path / "grid.png") as grid:
        # 8 x 8 tiles of 16 px scaled by 4 (64 px) with 2 px gaps: 8·66 + 2 = 530
        assert grid.size == (530, 530)
        tile = np.asarray(grid)[2:66, 2:66]
    pool = read_pool_arrays(out)
    first = np.sort(np.random.default_rng(0).choice(100, size=64, replace=False))[0]
    np.testing.assert_array_equal(tile[::4, ::4], pool.images[first])


def test_cli_pool_import_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "pool.npy", _random_images(9))
    assert cli_main(["pool", "import", str(tmp_path / "pool.npy"), "--out", str(tmp_path / "pool")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "pool")
    assert cli_main(["pool", "show", str(tmp_path / "pool")]) == 0
    assert "size: 9" in capsys.readouterr().out
    assert cli_main(["pool", "import", str(tmp_path / "pool.npy"), "--out", str(tmp_path / "pool")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_pool_import_command_takes_named_source_roots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """MAK's ImageNet+Places mix: list lines with a third field read their image under that source's root."""
    from ltray.cli import EXIT_USER_ERROR, main

    _write_png(tmp_path / "imagenet" / "n1" / "a.png", np.full((4, 4, 3), 10, dtype=np.uint8))
    _write_png(tmp_path / "places" / "p1" / "b.png", np.full((4, 4, 3), 200, dtype=np.uint8))
    (tmp_path / "mix.txt").write_text("n1/a.png 0\np1/b.png 1 places\n")
    base = ["pool", "import", str(tmp_path / "mix.txt"), "--root", str(tmp_path / "imagenet"), "--size", "4"]
    assert main([*base, "--out", str(tmp_path / "bad"), "--source-root", "places"]) == EXIT_USER_ERROR
    assert "--source-root expects NAME=PATH" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert main([*base, "--out", str(tmp_path / "pool"), "--source-root", f"places={tmp_path / 'places'}"]) == 0
    pool = read_pool_arrays(tmp_path / "pool")
    np.testing.assert_array_equal(pool.images[:, 0, 0, 0], [10, 200])
    assert read_pool_items(tmp_path / "pool")[2] == ["", "places"]
