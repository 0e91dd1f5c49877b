"""Embedded data sets: deterministic builds from bundled images, disjoint train/test areas, the OOD pool, the cache,
and the shipped splits that index into the builds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ltray.data import embedded
from ltray.data.embedded import (
    EMBEDDED_DATASETS,
    NEAR_DUPLICATES,
    REFERENCE_SHA256,
    SCENES_CLASSES,
    EmbeddedData,
    arrays_sha256,
    cache_path,
    check_split_base,
    embedded_pool,
    load_embedded,
    load_embedded_split,
    load_pool,
)
from ltray.data.make_embedded_splits import make_embedded_splits
from ltray.data.splits import file_sha256, lt_profile
from ltray.errors import DataError

SHIPPED = Path(__file__).resolve().parents[2] / "ltray" / "splits"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as patch:
        directory = tmp_path_factory.mktemp("ltray-cache")
        patch.setenv("LTRAY_CACHE", str(directory))
        yield directory


@pytest.fixture(scope="module")
def scenes(cache: Path) -> EmbeddedData:
    return load_embedded("scenes-lt")


@pytest.fixture(scope="module")
def digits(cache: Path) -> EmbeddedData:
    return load_embedded("digits-lt")


def _photo(name: str) -> np.ndarray:
    """The bundled photograph read independently of the builder, as float RGB."""
    with Image.open(embedded.photo_path(name)) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.float64)
    return array


def test_scenes_build_is_deterministic_and_matches_the_reference(scenes: EmbeddedData, cache: Path) -> None:
    assert scenes.sha256 == REFERENCE_SHA256["scenes-lt"]
    rebuilt = embedded.SCENES_RECIPE.build()  # fresh, bypassing the cache
    assert arrays_sha256(rebuilt) == scenes.sha256
    assert cache_path(embedded.SCENES_RECIPE).is_file()
    assert cache_path(embedded.SCENES_RECIPE).parent.parent == cache


def test_scenes_class_counts_and_layout(scenes: EmbeddedData) -> None:
    assert scenes.class_names == SCENES_CLASSES and len(SCENES_CLASSES) == 10
    assert scenes.train.images.shape == (6000, 16, 16, 3) and scenes.test.images.shape == (1000, 16, 16, 3)
    assert scenes.train.labels.tolist() == np.repeat(np.arange(10), 600).tolist()
    assert scenes.test.labels.tolist() == np.repeat(np.arange(10), 100).tolist()
    assert (scenes.n_max, scenes.imbalance, scenes.val_per_class) == (500, 100.0, 50)
    # the pool leaves n_max after the validation hold-out
    assert 600 - scenes.val_per_class >= scenes.n_max


def _overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise overlap of square boxes (top, left, side): [len(a), len(b)] booleans."""
    top_a, left_a, side_a = (a[:, None, k] for k in range(3))
    top_b, left_b, side_b = (b[None, :, k] for k in range(3))
    rows = (top_a < top_b + side_b) & (top_b < top_a + side_a)
    cols = (left_a < left_b + side_b) & (left_b < left_a + side_a)
    return rows & cols


def test_train_and_test_patches_come_from_disjoint_areas(scenes: EmbeddedData) -> None:
    train, test = scenes.train_provenance, scenes.test_provenance
    assert train is not None and test is not None
    margin = 2 * embedded.BLOCK_MARGIN  # gap between a train and a test area
    for label, name in enumerate(SCENES_CLASSES):
        train_boxes = train.boxes[train.photo_index == label]
        test_boxes = test.boxes[test.photo_index == label]
        assert len(train_boxes) == 600 and len(test_boxes) == 100
        assert set(train.photo_names()[train.photo_index == label]) == {name}
        grown = test_boxes - np.asarray([margin, margin, -2 * margin])  # each test box grown by the gap
        assert not _overlap(train_boxes, grown).any(), name
        height, width = _photo(name).shape[:2]
        for boxes in (train_boxes, test_boxes):
            assert boxes[:, 0].min() >= 0 and boxes[:, 1].min() >= 0
            assert (boxes[:, 0] + boxes[:, 2]).max() <= height and (boxes[:, 1] + boxes[:, 2]).max() <= width
            assert set(boxes[:, 2].tolist()) <= set(embedded.CLASS_PATCH_SIDES)
            assert len({tuple(box) for box in boxes.tolist()}) == len(boxes)  # no repeated patch


def test_patches_are_box_averages_of_their_recorded_boxes(scenes: EmbeddedData) -> None:
    provenance = scenes.train_provenance
    assert provenance is not None
    for position in (0, 777, 2345, 5999):
        name = SCENES_CLASSES[provenance.photo_index[position]]
        top, left, side = provenance.boxes[position].tolist()
        crop = _photo(name)[top : top + side, left : left + side]
        factor = side // 16
        expected = np.floor(crop.reshape(16, factor, 16, factor, 3).mean(axis=(1, 3)) + 0.5)
        assert np.array_equal(scenes.train.images[position], expected.astype(np.uint8))


def test_no_near_constant_patches(scenes: EmbeddedData) -> None:
    for images in (scenes.train.images, scenes.test.images):
        grey = images.astype(np.float64).mean(axis=3).reshape(len(images), -1)
        assert grey.std(axis=1).min() >= embedded.MIN_PATCH_STD


def test_is_textured_threshold_by_hand() -> None:
    flat = np.full((16, 16, 3), 100, dtype=np.uint8)
    assert not embedded.is_textured(flat)
    halves = flat.copy()
    halves[:, 8:] = 100 + 16  # grey values 100 and 116 in equal halves: std exactly 8
    assert embedded.is_textured(halves)
    halves[:, 8:] = 100 + 15  # std 7.5
    assert not embedded.is_textured(halves)


def test_a_different_build_is_refused(cache: Path, scenes: EmbeddedData) -> None:
    path = cache_path(embedded.SCENES_RECIPE)
    original = path.read_bytes()
    try:
        arrays = embedded.SCENES_RECIPE.build()
        arrays["train_images"][0, 0, 0, 0] ^= 1  # what another scikit-image release might produce
        np.savez(path, sha256=np.asarray(arrays_sha256(arrays)), **arrays)
        with pytest.raises(DataError, match="not the reference"):
            load_embedded("scenes-lt")
        path.write_bytes(b"damaged cache file")  # an unreadable cache file is rebuilt
        assert load_embedded("scenes-lt").sha256 == REFERENCE_SHA256["scenes-lt"]
    finally:
        path.write_bytes(original)


def test_unknown_names() -> None:
    with pytest.raises(DataError, match="unknown embedded data set"):
        load_embedded("cifar10")
    with pytest.raises(DataError, match="unknown embedded photograph"):
        embedded.photo_path("lena")


def test_unreadable_photograph(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(embedded.PHOTOS, "absent", ("skimage", "data/absent.png"))
    with pytest.raises(DataError, match="absent.png"):
        embedded.read_photo("absent")
    monkeypatch.setitem(embedded.PHOTOS, "elsewhere", ("no_such_package_ltray", "a.png"))
    with pytest.raises(DataError, match="not installed"):
        embedded.read_photo("elsewhere")


def test_digits(digits: EmbeddedData) -> None:
    from sklearn.datasets import load_digits

    source = load_digits()
    assert digits.sha256 == REFERENCE_SHA256["digits-lt"]
    assert len(digits.train) + len(digits.test) == 1797
    assert digits.train.image_size == (16, 16) and digits.class_names == tuple("0123456789")
    totals = np.bincount(source.target, minlength=10)
    test_counts = np.bincount(digits.test.labels, minlength=10)
    assert test_counts.tolist() == [int(round(0.25 * total)) for total in totals]
    arrays = embedded.cached_arrays(embedded.DIGITS_RECIPE)
    train_index, test_index = arrays["train_source_index"], arrays["test_source_index"]
    assert np.intersect1d(train_index, test_index).size == 0
    assert np.array_equal(digits.train.labels, source.target[train_index])
    image = digits.train.images[5]
    levels = source.images[train_index[5]]
    assert np.array_equal(image[..., 0], image[..., 2])
    assert np.array_equal(image[::2, ::2, 0], np.floor(levels * 255 / 16 + 0.5).astype(np.uint8))
    assert np.array_equal(image[1::2, 1::2, 1], image[::2, ::2, 1])
    # the profile fits the smallest class pool after the validation hold-out
    pools = np.bincount(digits.train.labels) - digits.val_per_class
    assert pools.min() >= digits.n_max


def test_ood_pool_excludes_class_photographs(cache: Path) -> None:
    pool, provenance = load_pool(n=503, seed=3)
    assert pool.images.shape == (503, 16, 16, 3) and pool.labels.tolist() == [-1] * 503
    names = set(provenance.photo_names())
    excluded = set(SCENES_CLASSES) | {twin for name in SCENES_CLASSES for twin in NEAR_DUPLICATES.get(name, ())}
    assert names and not names & excluded
    assert {"china", "flower"} <= names
    counts = np.bincount(provenance.photo_index)
    assert counts.max() - counts.min() <= 1  # spread evenly
    assert np.array_equal(embedded_pool(n=503, seed=3).images, pool.images)  # cached, identical
    rebuilt = embedded.PoolRecipe(503, 3).build()
    assert np.array_equal(rebuilt["images"], pool.images) and np.array_equal(rebuilt["boxes"], provenance.boxes)
    grey = pool.images.astype(np.float64).mean(axis=3).reshape(len(pool), -1)
    assert grey.std(axis=1).min() >= embedded.MIN_PATCH_STD
    assert not np.array_equal(load_pool(n=503, seed=4)[0].images, pool.images)
    with pytest.raises(DataError, match="positive integer"):
        embedded_pool(n=0)


@pytest.mark.parametrize("name", EMBEDDED_DATASETS)
def test_shipped_splits_follow_the_profile(name: str, cache: Path) -> None:
    for split_id in range(1, 6):
        data, split = load_embedded_split(name, split_id, SHIPPED / name)
        num_classes = len(data.class_names)
        profile = lt_profile(data.n_max, num_classes, data.imbalance)
        counts = split.pretrain_counts()
        assert sorted(counts.tolist(), reverse=True) == profile.tolist()
        assert split.role("val").class_counts(num_classes).tolist() == [data.val_per_class] * num_classes
        assert split.role("S_b").class_counts(num_classes).tolist() == [data.n_max // 100] * num_classes
        assert split.role("D_b").class_counts(num_classes).tolist() == [int(profile.sum()) // num_classes] * num_classes
        indices = split.role("D_i").indices
        assert indices is not None and np.array_equal(data.train.labels[indices], split.role("D_i").labels)
        assert np.intersect1d(indices, split.role("val").indices).size == 0
        assert split.manifest["base_set"]["sha256"] == data.sha256


def test_split_base_mismatch_is_refused(scenes: EmbeddedData) -> None:
    with pytest.raises(DataError, match="records no base_set"):
        check_split_base({}, scenes)
    with pytest.raises(DataError, match="generated on arrays with sha256 0000"):
        check_split_base({"base_set": {"sha256": "0" * 64}}, scenes)


def test_regenerated_splits_are_byte_identical(tmp_path: Path, cache: Path) -> None:
    make_embedded_splits(tmp_path)
    for name in EMBEDDED_DATASETS:
        shipped = sorted(path.name for path in (SHIPPED / name).iterdir())
        assert sorted(path.name for path in (tmp_path / name).iterdir()) == shipped
        for file_name in shipped:
            assert file_sha256(tmp_path / name / file_name) == file_sha256(SHIPPED / name / file_name), file_name
    with pytest.raises(DataError, match="refusing to overwrite"):
        make_embedded_splits(tmp_path)


def test_baseline_features_by_hand() -> None:
    images = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    images[0] = (10, 200, 70)
    images[1, :8] = (255, 0, 0)
    mean = embedded.baseline_features(images, "mean colour")
    assert np.allclose(mean, [[10, 200, 70], [127.5, 0, 0]])
    histogram = embedded.baseline_features(images, "colour histogram")
    assert histogram.shape == (2, 64) and np.allclose(histogram.sum(axis=1), 1)
    assert histogram[0, 0 * 16 + 3 * 4 + 1] == 1.0  # bins (10, 200, 70) // 64 = (0, 3, 1)
    assert histogram[1, 3 * 16] == 0.5 and histogram[1, 0] == 0.5
    assert embedded.baseline_features(images, "raw pixels").shape == (2, 768)


def test_report_keeps_text_after_the_marker(tmp_path: Path) -> None:
    path = tmp_path / "report.md"
    path.write_text("old generated text\n" + embedded.REPORT_MARKER + "\n## SimCLR results\nkept\n")
    embedded.write_report_text(path, "# new\n")
    text = path.read_text()
    assert text.startswith("# new\n") and "old generated" not in text and text.endswith("## SimCLR results\nkept\n")
