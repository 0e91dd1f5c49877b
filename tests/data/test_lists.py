"""Published split formats and importers (docs/math/data_and_eval.md §1-§2), checked against the published files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ltray.data.lists import (
    import_imagenet_lists,
    import_sdclr_cifar_split,
    import_sdclr_imagenet_split,
    read_index_list,
    read_label_array,
    read_text_list,
    sdclr_imagenet_files,
    write_text_list,
)
from ltray.data.splits import ItemList, read_split, write_split
from ltray.errors import DataError

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference_splits"
SDCLR = REFERENCE / "sdclr"
needs_reference = pytest.mark.skipif(not REFERENCE.is_dir(), reason="../shared/reference_splits is not present")

CIFAR = {
    # dataset: (labels file, number of classes, n_max, N_B, N_S, |D_i ∩ D_b|)
    "cifar10": ("cifar10_train_labels.npy", 10, 4500, 1116, 45, 5699),
    "cifar100": ("cifar100_train_fine_labels.npy", 100, 450, 97, 4, 5204),
}


def spec_profile(n_max: int, num_classes: int) -> list[int]:
    return [math.floor(n_max * 100.0 ** (-rank / (num_classes - 1))) for rank in range(num_classes)]


@pytest.fixture(scope="module")
def class_counts() -> dict:
    return json.loads((SDCLR / "class_counts.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def cifar_labels() -> dict[str, np.ndarray]:
    return {
        dataset: read_label_array(REFERENCE / "cifar_labels" / labels_file, num_classes, 50000)
        for dataset, (labels_file, num_classes, *_) in CIFAR.items()
    }


# --- index lists -----------------------------------------------------------------------------------------------------


def test_read_index_list(tmp_path: Path) -> None:
    path = tmp_path / "good.npy"
    np.save(path, np.array([5, 0, 3], dtype=np.int64))
    assert read_index_list(path).tolist() == [5, 0, 3]
    assert read_index_list(path).dtype == np.int64


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.array([1, 2], dtype=np.int32), "int64"),
        (np.array([1.0, 2.0]), "int64"),
        (np.zeros((2, 2), dtype=np.int64), "1-D"),
        (np.array([3, -1], dtype=np.int64), "negative"),
    ],
)
def test_read_index_list_rejects_wrong_arrays(tmp_path: Path, array: np.ndarray, message: str) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(DataError, match=message):
        read_index_list(path)


def test_read_index_list_rejects_corrupt_files(tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.npy"
    np.save(truncated, np.arange(100, dtype=np.int64))
    truncated.write_bytes(truncated.read_bytes()[:-40])
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"this is not an npy file at all")
    pickled = tmp_path / "pickled.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for path in (truncated, garbage, pickled):
        with pytest.raises(DataError, match=path.name):
            read_index_list(path)
    with pytest.raises(DataError, match="not found"):
        read_index_list(tmp_path / "missing.npy")


def test_read_label_array_checks_range_and_length(tmp_path: Path) -> None:
    path = tmp_path / "labels.npy"
    np.save(path, np.array([0, 9, 3], dtype=np.int64))
    assert read_label_array(path, 10, 3).tolist() == [0, 9, 3]
    with pytest.raises(DataError, match="outside"):
        read_label_array(path, 5)
    with pytest.raises(DataError, match="expected 4"):
        read_label_array(path, 10, 4)


# --- text lists ------------------------------------------------------------------------------------------------------


def test_read_text_list_with_blank_lines_and_sources(tmp_path: Path) -> None:
    path = tmp_path / "mix.txt"
    path.write_text(
        "train/n1/a.JPEG 0 imagenet\n\n  \ntrain/b.jpg 7 places\r\nval/n2/c.JPEG 3\n", encoding="utf-8"
    )
    items = read_text_list(path)
    assert items.paths == ("train/n1/a.JPEG", "train/b.jpg", "val/n2/c.JPEG")
    assert items.labels.tolist() == [0, 7, 3]
    assert items.sources == ("imagenet", "places", "")
    plain = tmp_path / "plain.txt"
    plain.write_text("a.JPEG 1\nb.JPEG 2", encoding="utf-8")
    assert read_text_list(plain).sources is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a.JPEG 0\nb.JPEG\n", r"bad\.txt:2: expected 'path label \[source\]'"),
        ("a.JPEG 0\n\nb.JPEG 1 imagenet extra\n", r"bad\.txt:3:"),
        ("a.JPEG zero\n", r"bad\.txt:1: label 'zero'"),
        ("a.JPEG -1\n", r"bad\.txt:1: label '-1'"),
        ("\n\n", "no entries"),
    ],
)
def test_read_text_list_rejects_malformed_lines(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_text_list(path)


def test_read_text_list_rejects_non_utf8_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "latin.txt"
    path.write_bytes("caf\u00e9.jpg 1\n".encode("latin-1"))
    with pytest.raises(DataError, match="UTF-8"):
        read_text_list(path)
    with pytest.raises(DataError, match="not found"):
        read_text_list(tmp_path / "missing.txt")


def test_write_text_list_round_trip(tmp_path: Path) -> None:
    items = ItemList(
        labels=np.array([2, 0], dtype=np.int64), paths=("x/a.JPEG", "y/b.jpg"), sources=("imagenet", "")
    )
    path = tmp_path / "out.txt"
    write_text_list(items, path)
    assert path.read_text(encoding="utf-8") == "x/a.JPEG 2 imagenet\ny/b.jpg 0\n"
    again = read_text_list(path)
    assert again.paths == items.paths and again.sources == items.sources
    assert again.labels.tolist() == [2, 0]
    with pytest.raises(DataError, match="whitespace"):
        write_text_list(ItemList(labels=np.array([0]), paths=("a b.jpg",)), tmp_path / "bad.txt")
    assert not (tmp_path / "bad.txt").exists()
    with pytest.raises(DataError, match="path lists"):
        write_text_list(ItemList(labels=np.array([0]), indices=np.array([4])), tmp_path / "bad.txt")


def test_path_list_split_round_trip(tmp_path: Path) -> None:
    lists = {
        "D_i": ItemList(np.array([0, 0, 0, 1]), paths=("a0", "a1", "a2", "b0")),
        "val": ItemList(np.array([0, 1]), paths=("v0", "v1")),
    }
    (tmp_path / "in").mkdir()
    files = {}
    for role, items in lists.items():
        files[role] = tmp_path / "in" / f"{role}.txt"
        write_text_list(items, files[role])
    split = import_imagenet_lists("toy-lt", 2, files)
    assert split.pretrain_counts().tolist() == [3, 1]
    write_split(split, tmp_path / "out")
    loaded = read_split(tmp_path / "out", "toy-lt", 1)
    assert loaded.lists["D_i"].paths == ("a0", "a1", "a2", "b0")
    assert (tmp_path / "out" / "toy-lt_split1_val.txt").is_file()
    leaking = tmp_path / "in" / "leak.txt"
    write_text_list(ItemList(np.array([1]), paths=("b0",)), leaking)
    with pytest.raises(DataError, match="val shares 1 items with D_i"):
        import_imagenet_lists("toy-lt", 2, {"D_i": files["D_i"], "val": leaking})
    with pytest.raises(DataError, match="outside 0..0"):
        import_imagenet_lists("toy-lt", 1, files)


# --- published files -------------------------------------------------------------------------------------------------


@needs_reference
@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_published_cifar_splits(dataset: str, class_counts: dict, cifar_labels: dict[str, np.ndarray]) -> None:
    _, num_classes, n_max, n_balanced, n_few, overlap = CIFAR[dataset]
    labels = cifar_labels[dataset]
    name = "split{k}_{role}.npy" if dataset == "cifar10" else "cifar100_split{k}_{role}.npy"
    expected = class_counts[dataset]
    for split_id in range(1, 6):
        split = import_sdclr_cifar_split(SDCLR, dataset, split_id, labels)
        counts = {role: split.lists[role].class_counts(num_classes) for role in ("D_i", "D_b", "S_b")}
        assert sorted(counts["D_i"].tolist(), reverse=True) == spec_profile(n_max, num_classes)
        assert counts["D_b"].tolist() == [n_balanced] * num_classes
        assert counts["S_b"].tolist() == [n_few] * num_classes
        for role, role_counts in counts.items():
            assert role_counts.tolist() == expected[name.format(k=split_id, role=role)]["counts_per_class"]
        d_i_entry = expected[name.format(k=split_id, role="D_i")]
        assert split.head_to_tail().tolist() == d_i_entry["class_ids_head_to_tail"]
        assert np.intersect1d(split.lists["D_i"].indices, split.lists["D_b"].indices).size == overlap
        assert split.manifest["n_balanced"] == n_balanced and split.manifest["n_few_shot"] == n_few
    train_name = "trainIdxList.npy" if dataset == "cifar10" else "cifar100_trainIdxList.npy"
    val_name = "valIdxList.npy" if dataset == "cifar10" else "cifar100_valIdxList.npy"
    assert split.lists["train_full"].class_counts(num_classes).tolist() == expected[train_name]["counts_per_class"]
    assert split.lists["val"].class_counts(num_classes).tolist() == expected[val_name]["counts_per_class"]


@needs_reference
def test_published_cifar10_split1_head_to_tail(cifar_labels: dict[str, np.ndarray]) -> None:
    split = import_sdclr_cifar_split(SDCLR, "cifar10", 1, cifar_labels["cifar10"])
    assert split.head_to_tail().tolist() == [6, 8, 4, 1, 7, 0, 3, 2, 5, 9]
    assert split.manifest["class_order_head_to_tail"] == [6, 8, 4, 1, 7, 0, 3, 2, 5, 9]
    assert split.manifest["source"]["files"]["D_i"] == "cifar10_imbSub_with_subsets/split1_D_i.npy"


@needs_reference
def test_published_cifar100_subsets_leave_train_index_list(cifar_labels: dict[str, np.ndarray]) -> None:
    split = import_sdclr_cifar_split(SDCLR, "cifar100", 1, cifar_labels["cifar100"])
    outside = np.setdiff1d(split.lists["D_i"].indices, split.lists["train_full"].indices)
    assert outside.size > 0
    assert np.intersect1d(split.lists["D_i"].indices, split.lists["val"].indices).size == 0


@needs_reference
def test_published_split_with_wrong_labels_is_rejected(cifar_labels: dict[str, np.ndarray]) -> None:
    wrong = cifar_labels["cifar10"][::-1].copy()
    with pytest.raises(DataError):
        import_sdclr_cifar_split(SDCLR, "cifar10", 1, wrong)
    with pytest.raises(DataError, match="not found"):
        import_sdclr_cifar_split(SDCLR, "cifar10", 6, cifar_labels["cifar10"])


@needs_reference
def test_published_imagenet100_lists(class_counts: dict) -> None:
    lt_path = SDCLR / "imagenet-100" / "imageNet_100_LT_train.txt"
    assert sum(1 for line in lt_path.read_text(encoding="utf-8").split("\n") if line.strip()) == 12205
    split = import_sdclr_imagenet_split(SDCLR, "imagenet100")
    assert sorted(split.lists) == ["D_b", "D_i", "S_b", "test", "val"]
    counts = split.pretrain_counts()
    assert len(split.lists["D_i"]) == 12205 and counts.max() == 1280 and counts.min() == 6
    expected = class_counts["imagenet100"]
    assert counts.tolist() == expected["imageNet_100_LT_train.txt"]["counts_per_class"]
    assert split.head_to_tail().tolist() == expected["imageNet_100_LT_train.txt"]["class_ids_head_to_tail"]
    for role, file in (
        ("D_b", "imageNet_100_BL_train.txt"),
        ("S_b", "imageNet_100_sub_balance_train_0.01.txt"),
        ("val", "ImageNet_100_val.txt"),
        ("test", "ImageNet_100_test.txt"),
    ):
        assert split.lists[role].class_counts(100).tolist() == expected[file]["counts_per_class"]
    assert split.lists["S_b"].class_counts(100).tolist() == [12] * 100
    shared = np.intersect1d(split.lists["D_i"].keys(), split.lists["D_b"].keys()).size
    assert shared == 1258
    assert not set(split.lists["S_b"].paths) <= set(split.lists["D_i"].paths)
    # label 0 is the list's own first wnid, not the smallest sorted wnid
    assert split.lists["D_i"].paths[0].startswith("train/n02869837/")
    assert split.manifest["nested"] is False


@needs_reference
def test_published_imagenet_lt_lists(class_counts: dict) -> None:
    files = sdclr_imagenet_files(SDCLR, "imagenet_lt")
    expected = class_counts["imagenet_lt"]
    for role, file, total in (
        ("val", "ImageNet_LT_val.txt", 20000),
        ("test", "ImageNet_LT_test.txt", 50000),
        ("S_b", "imageNet_sub_balance_train_0.01.txt", 12000),
    ):
        items = read_text_list(files[role])
        assert len(items) == total
        assert items.class_counts(1000).tolist() == expected[file]["counts_per_class"]
    with pytest.raises(DataError, match="ImageNet_LT_train.txt"):
        import_sdclr_imagenet_split(SDCLR, "imagenet_lt")


@needs_reference
def test_imagenet_list_sizes_are_checked(tmp_path: Path) -> None:
    files = sdclr_imagenet_files(SDCLR, "imagenet100")
    short = tmp_path / "ImageNet_100_test.txt"
    short.write_text("\n".join(files["test"].read_text(encoding="utf-8").split("\n")[:-3]), encoding="utf-8")
    with pytest.raises(DataError, match="entries, expected 5000"):
        import_imagenet_lists(
            "imagenet100", 100, {**files, "test": short}, expected_totals={"D_i": 12205, "test": 5000}
        )


@needs_reference
def test_published_layout_with_wrong_counts_is_rejected(tmp_path: Path, cifar_labels: dict[str, np.ndarray]) -> None:
    for relative in ("cifar10/trainIdxList.npy", "cifar10/valIdxList.npy") + tuple(
        f"cifar10_imbSub_with_subsets/split1_{role}.npy" for role in ("D_i", "D_b", "S_b")
    ):
        (tmp_path / relative).parent.mkdir(exist_ok=True)
        (tmp_path / relative).write_bytes((SDCLR / relative).read_bytes())
    d_i = tmp_path / "cifar10_imbSub_with_subsets/split1_D_i.npy"
    np.save(d_i, np.load(d_i)[:-1])
    with pytest.raises(DataError, match="profile"):
        import_sdclr_cifar_split(tmp_path, "cifar10", 1, cifar_labels["cifar10"])
