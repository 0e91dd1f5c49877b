"""Base collections: ArraySource, the CIFAR reader on real-format pickles, memory-mapped pools, image lists."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ltray.data.sources import ArraySource, ImageListSource, labels_for, load_array_pool, load_cifar
from ltray.data.splits import ItemList
from ltray.errors import DataError


def _images(count: int, offset: int) -> np.ndarray:
    """Distinct HWC uint8 images whose pixel values encode (image, row, column, channel)."""
    index = np.arange(count * 32 * 32 * 3).reshape(count, 32, 32, 3)
    return ((index * 7 + offset) % 251).astype(np.uint8)


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """The CIFAR row layout, written independently of the reader: 1024 red, 1024 green, 1024 blue values."""
    rows = np.empty((len(images), 3072), dtype=np.uint8)
    for i, image in enumerate(images):
        for channel in range(3):
            for y in range(32):
                for x in range(32):
                    rows[i, channel * 1024 + y * 32 + x] = image[y, x, channel]
    return rows


def _dump(path: Path, payload: object) -> None:
    with open(path, "wb") as stream:
        pickle.dump(payload, stream, protocol=2)


def _write_cifar10(root: Path, per_batch: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_images, train_labels = [], []
    for batch in range(1, 6):
        images = _images(per_batch, offset=batch)
        labels = [(batch * 3 + i) % 10 for i in range(per_batch)]
        # keys as bytes, as the Python 2 pickles of the official archive decode with encoding="bytes"
        _dump(folder / f"data_batch_{batch}", {b"batch_label": b"x", b"data": _cifar_rows(images), b"labels": labels})
        train_images.append(images)
        train_labels += labels
    test_images = _images(3, offset=99)
    _dump(folder / "test_batch", {"data": _cifar_rows(test_images), "labels": [9, 0, 4]})
    return np.concatenate(train_images), np.asarray(train_labels), test_images, np.asarray([9, 0, 4])


def test_cifar10_reader_keeps_batch_order_and_hwc_layout(tmp_path: Path) -> None:
    train_images, train_labels, test_images, test_labels = _write_cifar10(tmp_path)
    train, test = load_cifar(tmp_path, "cifar10")
    assert train.images.shape == (10, 32, 32, 3) and train.images.dtype == np.uint8
    assert np.array_equal(train.images, train_images)
    assert train.labels.dtype == np.int64 and train.labels.tolist() == train_labels.tolist()
    assert np.array_equal(test.images, test_images) and test.labels.tolist() == test_labels.tolist()
    assert train.name == "cifar10-train" and len(test) == 3 and train.image_size == (32, 32)
    # pixel (image 3, row 5, column 7, green) sits at row 3, position 1024 + 5·32 + 7 of batch 2's data
    assert train.images[3, 5, 7, 1] == _cifar_rows(train_images[2:4])[1, 1024 + 5 * 32 + 7]


def test_cifar100_reader_uses_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    images = _images(4, offset=3)
    _dump(folder / "train", {b"data": _cifar_rows(images), b"fine_labels": [99, 0, 57, 3], b"coarse_labels": [1] * 4})
    legacy = pickle.dumps({"data": _cifar_rows(images[:1]), "fine_labels": [42], "coarse_labels": [2]}, protocol=2)
    # the official archive was pickled by NumPy 1.x, which names its array constructor numpy.core.multiarray
    (folder / "test").write_bytes(legacy.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))
    train, test = load_cifar(tmp_path, "cifar100")
    assert train.labels.tolist() == [99, 0, 57, 3] and test.labels.tolist() == [42]
    assert np.array_equal(train.images, images) and train.num_classes == 100


def test_cifar_missing_folder_and_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_cifar(tmp_path, "cifar10")
    _write_cifar10(tmp_path)
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_4")
    with pytest.raises(DataError, match="data_batch_4"):
        load_cifar(tmp_path, "cifar10")
    with pytest.raises(DataError, match="unknown CIFAR"):
        load_cifar(tmp_path, "cifar1000")  # type: ignore[arg-type]


def test_cifar_corrupt_and_malformed_files(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(b"\x80\x02not a pickle at all")
    with pytest.raises(DataError, match="corrupt CIFAR file .*data_batch_2"):
        load_cifar(tmp_path, "cifar10")
    _dump(batch, {b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [0, 1]})
    with pytest.raises(DataError, match=r"uint8 \[N, 3072\]"):
        load_cifar(tmp_path, "cifar10")
    _dump(batch, {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 1, 2]})
    with pytest.raises(DataError, match="3 labels|labels for 2 images"):
        load_cifar(tmp_path, "cifar10")
    _dump(batch, {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 10]})
    with pytest.raises(DataError, match="outside 0..9"):
        load_cifar(tmp_path, "cifar10")
    _dump(batch, {b"data": np.zeros((2, 3072), dtype=np.uint8)})
    with pytest.raises(DataError, match="missing key"):
        load_cifar(tmp_path, "cifar10")


def test_cifar_reader_refuses_arbitrary_objects(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    _dump(tmp_path / "cifar-10-batches-py" / "data_batch_1", {b"data": os.getcwd, b"labels": []})
    with pytest.raises(DataError, match="unexpected object"):
        load_cifar(tmp_path, "cifar10")


def test_array_source_validation() -> None:
    images = np.zeros((3, 4, 5, 3), dtype=np.uint8)
    source = ArraySource(images, np.asarray([0, 2, -1], dtype=np.int32), "toy")
    assert source.labels.dtype == np.int64 and len(source) == 3
    assert source.image_size == (4, 5) and source.num_classes == 3
    assert labels_for(source).tolist() == [0, 2, -1]
    with pytest.raises(DataError, match="uint8"):
        ArraySource(images.astype(np.float32), np.zeros(3, dtype=np.int64), "toy")
    with pytest.raises(DataError, match=r"\[N, H, W, 3\]"):
        ArraySource(np.zeros((3, 4, 5), dtype=np.uint8), np.zeros(3, dtype=np.int64), "toy")
    with pytest.raises(DataError, match="2 labels for 3 images"):
        ArraySource(images, np.zeros(2, dtype=np.int64), "toy")
    with pytest.raises(DataError, match="integer"):
        ArraySource(images, np.zeros(3, dtype=np.float64), "toy")
    with pytest.raises(DataError, match="−1"):
        ArraySource(images, np.asarray([0, -2, 1]), "toy")
    assert ArraySource(images, np.full(3, -1), "unlabelled").num_classes == 0


def test_take_reads_rows_of_a_memory_map(tmp_path: Path) -> None:
    images = _images(6, offset=1)
    np.save(tmp_path / "pool.npy", images)
    pool = load_array_pool(tmp_path / "pool.npy")
    assert isinstance(pool.images, np.memmap)
    assert pool.name == "pool" and pool.labels.tolist() == [-1] * 6
    taken = pool.take([4, 0, 4])
    assert type(taken) is np.ndarray and np.array_equal(taken, images[[4, 0, 4]])
    with pytest.raises(DataError, match="index 6 is out of range"):
        pool.take([1, 6])
    with pytest.raises(DataError, match="1-D"):
        pool.take([[1]])


def test_array_pool_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_array_pool(tmp_path / "missing.npy")
    (tmp_path / "broken.npy").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read"):
        load_array_pool(tmp_path / "broken.npy")
    np.save(tmp_path / "float.npy", np.zeros((2, 4, 4, 3), dtype=np.float32))
    with pytest.raises(DataError, match="uint8"):
        load_array_pool(tmp_path / "float.npy")


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_list_source_reads_rgb_from_several_roots(tmp_path: Path) -> None:
    colour = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    grey = np.asarray([[0, 128], [255, 7]], dtype=np.uint8)
    _png(tmp_path / "imagenet" / "train" / "a.png", colour)
    _png(tmp_path / "places" / "b.png", grey)
    items = ItemList(labels=np.asarray([3, 1]), paths=("train/a.png", "b.png"), sources=("", "places"))
    source = ImageListSource(items, tmp_path / "imagenet", {"places": tmp_path / "places"}, name="mix")
    source.check_exists()
    assert len(source) == 2 and source.num_classes == 4 and labels_for(source).tolist() == [3, 1]
    first, second = source.load(0), source.load(1)
    assert first.mode == "RGB" and np.array_equal(np.asarray(first), colour)
    assert second.mode == "RGB" and np.array_equal(np.asarray(second), np.repeat(grey[..., None], 3, axis=2))
    assert source.roots() == sorted([tmp_path / "imagenet", tmp_path / "places"])


def test_image_list_source_errors(tmp_path: Path) -> None:
    _png(tmp_path / "root" / "a.png", np.zeros((2, 2, 3), dtype=np.uint8))
    (tmp_path / "root" / "bad.png").write_bytes(b"not an image")
    items = ItemList(labels=np.asarray([0, 1, 0]), paths=("a.png", "missing.png", "bad.png"))
    source = ImageListSource(items, tmp_path / "root")
    with pytest.raises(DataError, match="missing.png"):
        source.load(1)
    with pytest.raises(DataError, match="cannot read image .*bad.png"):
        source.load(2)
    with pytest.raises(DataError, match="missing.png"):
        source.check_exists(sample=3)
    source.check_exists(sample=1)  # only the first item
    with pytest.raises(DataError, match="out of range"):
        source.load(3)
    with pytest.raises(DataError, match="image root not found"):
        ImageListSource(items, tmp_path / "nowhere").check_exists(sample=0)
    mixed = ItemList(labels=np.asarray([0]), paths=("a.png",), sources=("places",))
    with pytest.raises(DataError, match="no image root given for source.* places"):
        ImageListSource(mixed, tmp_path / "root")
    with pytest.raises(DataError, match="path list"):
        ImageListSource(ItemList(labels=np.asarray([0]), indices=np.asarray([5])), tmp_path / "root")
