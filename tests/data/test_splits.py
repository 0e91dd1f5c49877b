"""Long-tailed profile, split generation, validation and ltray's split files (docs/math/data_and_eval.md §1-§2)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ltray.data.splits import (
    ItemList,
    Split,
    add_shot_sets,
    generate_split,
    head_to_tail_order,
    lt_profile,
    read_split,
    validate_split,
    write_split,
)
from ltray.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "ltray" / "splits"
REFERENCE = REPO.parent / "shared" / "reference_splits"


def profile_by_loop(n_max: int, num_classes: int, rho: float) -> list[int]:
    return [math.floor(n_max * rho ** (-rank / (num_classes - 1))) for rank in range(num_classes)]


def synthetic_labels(num_classes: int, per_class: int, seed: int = 123) -> np.ndarray:
    """A balanced label vector in a scrambled order, like a real train set."""
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
    return np.random.default_rng(seed).permutation(labels)


def per_class(items: ItemList, label: int) -> list[int]:
    return [int(index) for index, item_label in zip(items.indices, items.labels) if item_label == label]


@pytest.fixture(scope="module")
def cifar10_like() -> tuple[np.ndarray, Split]:
    labels = synthetic_labels(10, 5000)
    split = generate_split(
        labels, 10, n_max=4500, imbalance=100, seed=7, val_per_class=500, holdout_seed=0, dataset="c10", split_id=1
    )
    return labels, split


@pytest.fixture(scope="module")
def cifar100_like() -> tuple[np.ndarray, Split]:
    labels = synthetic_labels(100, 500)
    split = generate_split(
        labels,
        100,
        n_max=450,
        imbalance=100,
        seed=3,
        val_per_class=50,
        holdout_seed=0,
        train_full_per_class=400,
        dataset="c100",
        split_id=2,
    )
    return labels, split


# --- profile ---------------------------------------------------------------------------------------------------------


def test_profile_cifar10_tables() -> None:
    assert lt_profile(4500, 10, 100).tolist() == [4500, 2697, 1617, 969, 581, 348, 208, 125, 75, 45]
    assert lt_profile(5000, 10, 100).tolist() == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert int(lt_profile(4500, 10, 100).sum()) == 11165
    assert int(lt_profile(5000, 10, 100).sum()) == 12406


def test_profile_cifar100_tables() -> None:
    sdclr = lt_profile(450, 100, 100)
    cao = lt_profile(500, 100, 100)
    assert sdclr[:5].tolist() == [450, 429, 410, 391, 373]
    assert sdclr[-5:].tolist() == [5, 5, 4, 4, 4]
    assert cao[:3].tolist() == [500, 477, 455]
    assert cao[-5:].tolist() == [6, 5, 5, 5, 5]
    assert int(sdclr.sum()) == 9754 and int(cao.sum()) == 10847
    assert sdclr.max() / sdclr.min() == 112.5
    assert sdclr.tolist() == profile_by_loop(450, 100, 100.0)
    assert cao.tolist() == profile_by_loop(500, 100, 100.0)
    assert lt_profile(4500, 10, 100).dtype == np.int64


@pytest.mark.parametrize(
    ("n_max", "num_classes", "imbalance"), [(0, 10, 100), (100, 1, 100), (100, 10, 0.5), (100, 10, float("nan"))]
)
def test_profile_rejects_bad_parameters(n_max: int, num_classes: int, imbalance: float) -> None:
    with pytest.raises(ConfigError):
        lt_profile(n_max, num_classes, imbalance)


def test_head_to_tail_breaks_ties_by_class_id() -> None:
    assert head_to_tail_order([5, 7, 5, 9, 7]).tolist() == [3, 1, 4, 0, 2]


# --- generation ------------------------------------------------------------------------------------------------------


def check_structure(labels: np.ndarray, split: Split, n_max: int, n_balanced: int, n_few: int, overlap: int) -> None:
    num_classes = split.num_classes
    d_i, d_b, s_b, val = (split.lists[role] for role in ("D_i", "D_b", "S_b", "val"))
    profile = profile_by_loop(n_max, num_classes, 100.0)
    assert sorted(np.bincount(labels[d_i.indices], minlength=num_classes).tolist(), reverse=True) == profile
    assert np.bincount(labels[d_b.indices], minlength=num_classes).tolist() == [n_balanced] * num_classes
    assert np.bincount(labels[s_b.indices], minlength=num_classes).tolist() == [n_few] * num_classes
    assert n_balanced == sum(profile) // num_classes
    for label in range(num_classes):
        sequences = [per_class(items, label) for items in (s_b, d_b, d_i)]
        longest = max(sequences, key=len)
        for sequence in sequences:
            assert longest[: len(sequence)] == sequence
    assert set(s_b.indices) <= set(d_i.indices) & set(d_b.indices)
    assert len(set(d_i.indices) & set(d_b.indices)) == overlap
    assert overlap == sum(min(count, n_balanced) for count in profile)
    for role in ("D_i", "D_b", "S_b", "train_full"):
        assert not set(split.lists[role].indices) & set(val.indices)
        assert np.all(np.diff(split.lists[role].labels) >= 0)
        assert np.array_equal(labels[split.lists[role].indices], split.lists[role].labels)


def test_generated_cifar10_structure(cifar10_like: tuple[np.ndarray, Split]) -> None:
    labels, split = cifar10_like
    check_structure(labels, split, n_max=4500, n_balanced=1116, n_few=45, overlap=5699)
    assert len(split.lists["train_full"]) == 45000 and len(split.lists["val"]) == 5000
    assert np.bincount(labels[split.lists["val"].indices]).tolist() == [500] * 10
    assert split.manifest["n_balanced"] == 1116 and split.manifest["n_few_shot"] == 45
    # the class at rank r holds n(r) images
    rank = np.asarray(split.manifest["class_rank"])
    assert split.pretrain_counts().tolist() == lt_profile(4500, 10, 100)[rank].tolist()
    assert split.head_to_tail().tolist() == split.manifest["class_order_head_to_tail"]


def test_generated_cifar100_structure(cifar100_like: tuple[np.ndarray, Split]) -> None:
    labels, split = cifar100_like
    check_structure(labels, split, n_max=450, n_balanced=97, n_few=4, overlap=5204)
    train_full = split.lists["train_full"]
    assert np.bincount(labels[train_full.indices]).tolist() == [400] * 100
    assert np.bincount(labels[split.lists["val"].indices]).tolist() == [50] * 100
    pool = set(range(labels.size)) - set(split.lists["val"].indices)
    assert set(train_full.indices) <= pool and set(split.lists["D_i"].indices) <= pool
    assert split.manifest["pool"]["counts"] == [450] * 100


def test_generation_follows_the_recipe_step_by_step() -> None:
    """Ranks, sorted-then-permuted pools and prefixes, with the documented generators."""
    labels = np.array([1, 0, 2, 1, 0, 2] * 100, dtype=np.int64)  # 200 per class
    seed = 11
    split = generate_split(
        labels, 3, n_max=120, imbalance=4.0, seed=seed, val_per_class=None, dataset="tiny", split_id=0
    )
    rank_permutation = np.random.default_rng((seed, 0)).permutation(3)
    profile = [120, 60, 30]  # 120·4^(−r/2)
    n_balanced = sum(profile) // 3
    expected_d_i, expected_d_b, expected_s_b = [], [], []
    for label in range(3):
        pool = sorted(index for index in range(labels.size) if labels[index] == label)
        order = np.random.default_rng((seed, 1, label)).permutation(np.asarray(pool)).tolist()
        count = profile[list(rank_permutation).index(label)]
        expected_d_i += order[:count]
        expected_d_b += order[:n_balanced]
        expected_s_b += order[:1]
    assert split.lists["D_i"].indices.tolist() == expected_d_i
    assert split.lists["D_b"].indices.tolist() == expected_d_b
    assert split.lists["S_b"].indices.tolist() == expected_s_b
    assert split.lists["train_full"].indices.tolist() == sorted(range(labels.size), key=lambda i: (labels[i], i))
    assert "val" not in split.lists
    assert split.manifest["rank_permutation"] == rank_permutation.tolist()


def test_generation_is_deterministic_and_seed_dependent() -> None:
    labels = synthetic_labels(10, 600)
    arguments = dict(n_max=500, imbalance=100, val_per_class=50, dataset="digits-lt", split_id=1)
    first = generate_split(labels, 10, seed=5, **arguments)
    again = generate_split(labels, 10, seed=5, **arguments)
    other = generate_split(labels, 10, seed=6, **arguments)
    for role in first.lists:
        assert np.array_equal(first.lists[role].indices, again.lists[role].indices)
    assert first.manifest == again.manifest
    assert not np.array_equal(first.lists["D_i"].indices, other.lists["D_i"].indices)
    # val uses the hold-out seed (default: the split seed)
    assert not np.array_equal(first.lists["val"].indices, other.lists["val"].indices)
    shared = generate_split(labels, 10, seed=6, holdout_seed=5, **arguments)
    assert np.array_equal(first.lists["val"].indices, shared.lists["val"].indices)


def test_small_ten_class_set_from_a_plain_list() -> None:
    labels = synthetic_labels(10, 700).tolist()
    split = generate_split(
        labels, 10, n_max=500, imbalance=100, seed=1, val_per_class=100, dataset="scenes-lt", split_id=3
    )
    assert split.pretrain_counts().tolist() == lt_profile(500, 10, 100)[split.manifest["class_rank"]].tolist()
    assert split.lists["S_b"].class_counts(10).tolist() == [5] * 10
    assert split.lists["D_b"].class_counts(10).tolist() == [sum(profile_by_loop(500, 10, 100.0)) // 10] * 10
    assert split.lists["train_full"].class_counts(10).tolist() == [600] * 10


def test_given_pool_and_validation_indices() -> None:
    labels = synthetic_labels(4, 300)
    val = np.concatenate([np.flatnonzero(labels == label)[:20] for label in range(4)])
    split = generate_split(
        labels, 4, n_max=200, imbalance=10, seed=2, val_per_class=None, val_indices=val, dataset="x", split_id=1
    )
    assert sorted(split.lists["val"].indices.tolist()) == sorted(val.tolist())
    assert split.lists["train_full"].class_counts(4).tolist() == [280] * 4
    with pytest.raises(DataError, match="share"):
        generate_split(
            labels, 4, n_max=200, imbalance=10, seed=2, val_per_class=None, val_indices=val,
            pool=np.arange(labels.size), dataset="x", split_id=1,
        )


def test_cao_protocol_uses_the_whole_train_set() -> None:
    labels = synthetic_labels(10, 5000)
    split = generate_split(
        labels, 10, n_max=5000, imbalance=100, seed=0, val_per_class=None, shuffle_classes=False,
        dataset="cifar10", split_id=1, protocol="cao",
    )
    assert split.pretrain_counts().tolist() == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert len(split.lists["D_i"]) == 12406
    assert len(split.lists["train_full"]) == 50000 and "val" not in split.lists
    assert split.manifest["protocol"] == "cao"
    with pytest.raises(ConfigError, match="cao"):
        generate_split(
            labels, 10, n_max=4500, imbalance=100, seed=0, val_per_class=500, dataset="c", split_id=1, protocol="cao"
        )


def test_generation_rejects_bad_inputs() -> None:
    labels = synthetic_labels(10, 600)
    base = dict(imbalance=100, seed=0, dataset="d", split_id=1)
    with pytest.raises(DataError, match="smallest class pool"):
        generate_split(labels, 10, n_max=600, val_per_class=50, **base)
    with pytest.raises(ConfigError, match="either"):
        generate_split(labels, 10, n_max=500, val_per_class=50, val_indices=np.arange(10), **base)
    with pytest.raises(ConfigError, match="S_b"):
        generate_split(labels, 10, n_max=99, val_per_class=None, **{**base, "imbalance": 10})
    with pytest.raises(ConfigError, match="tail class"):
        generate_split(labels, 10, n_max=100, val_per_class=None, **{**base, "imbalance": 200})
    with pytest.raises(DataError, match="outside"):
        generate_split(np.append(labels, 10), 10, n_max=500, val_per_class=None, **base)
    with pytest.raises(DataError, match="duplicate"):
        generate_split(labels, 10, n_max=500, val_per_class=None, pool=[1, 1, 2], **base)
    with pytest.raises(ConfigError, match="protocol"):
        generate_split(labels, 10, n_max=500, val_per_class=None, protocol="bcl", **base)
    with pytest.raises(DataError, match="data set name"):
        generate_split(labels, 10, n_max=500, val_per_class=None, imbalance=100, seed=0, dataset="../x", split_id=1)


# --- validation ------------------------------------------------------------------------------------------------------


def test_validation_detects_broken_structure(cifar10_like: tuple[np.ndarray, Split]) -> None:
    labels, split = cifar10_like
    validate_split(split, labels)
    d_b = split.lists["D_b"]
    swapped = d_b.indices.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    broken_lists = {**split.lists, "D_b": ItemList(d_b.labels, indices=swapped)}
    broken = Split(split.dataset, 1, 10, broken_lists, {"nested": True})
    with pytest.raises(DataError, match="prefixes"):
        validate_split(broken)
    leaking = Split(split.dataset, 1, 10, {**split.lists, "val": split.lists["S_b"]}, {})
    with pytest.raises(DataError, match="val shares 450 items with"):
        validate_split(leaking)
    duplicated = np.concatenate([split.lists["S_b"].indices[:1], split.lists["S_b"].indices])
    doubled = Split("d", 1, 10, {"D_i": ItemList(labels[duplicated], indices=duplicated)}, {})
    with pytest.raises(DataError, match="duplicate"):
        validate_split(doubled)
    with pytest.raises(DataError, match="labels differ"):
        validate_split(split, np.roll(labels, 1))
    wrong_counts = Split(split.dataset, 1, 10, dict(split.lists), json.loads(json.dumps(split.manifest)))
    wrong_counts.manifest["roles"]["D_i"]["counts"][0] += 1
    with pytest.raises(DataError, match="counts of D_i"):
        validate_split(wrong_counts)


def test_split_requires_d_i_and_known_roles() -> None:
    items = ItemList(np.array([0, 1]), indices=np.array([3, 4]))
    with pytest.raises(DataError, match="D_i"):
        Split("d", 1, 2, {"D_b": items})
    with pytest.raises(DataError, match="unknown role"):
        Split("d", 1, 2, {"D_i": items, "extra": items})
    with pytest.raises(DataError, match="has no val"):
        Split("d", 1, 2, {"D_i": items}).role("val")
    with pytest.raises(DataError):
        ItemList(np.array([0, 1]), indices=np.array([3]))
    with pytest.raises(DataError):
        ItemList(np.array([0, 1]))


# --- files -----------------------------------------------------------------------------------------------------------


def test_write_read_round_trip(tmp_path: Path, cifar100_like: tuple[np.ndarray, Split]) -> None:
    labels, split = cifar100_like
    manifest = write_split(split, tmp_path)
    assert manifest == tmp_path / "c100_split2.json"
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        ["c100_split2.json"] + [f"c100_split2_{role}.npy" for role in split.lists]
    )
    for with_labels in (None, labels):
        loaded = read_split(tmp_path, "c100", 2, labels=with_labels)
        for role, items in split.lists.items():
            assert np.array_equal(loaded.lists[role].indices, items.indices)
            assert np.array_equal(loaded.lists[role].labels, items.labels)
        assert loaded.head_to_tail().tolist() == split.head_to_tail().tolist()
    stored = np.load(tmp_path / "c100_split2_D_i.npy")
    assert stored.dtype == np.int64 and stored.ndim == 1


def test_write_refuses_to_overwrite(tmp_path: Path, cifar10_like: tuple[np.ndarray, Split]) -> None:
    _, split = cifar10_like
    write_split(split, tmp_path)
    before = (tmp_path / "c10_split1_D_i.npy").read_bytes()
    with pytest.raises(DataError, match="refusing to overwrite"):
        write_split(split, tmp_path)
    assert (tmp_path / "c10_split1_D_i.npy").read_bytes() == before
    assert not [path for path in tmp_path.iterdir() if path.name.endswith(".tmp")]
    write_split(split, tmp_path, overwrite=True)
    read_split(tmp_path, "c10", 1)


def test_shared_roles(tmp_path: Path) -> None:
    labels = synthetic_labels(10, 600)
    arguments = dict(n_max=500, imbalance=100, val_per_class=50, holdout_seed=0, dataset="s")
    for split_id in (1, 2):
        split = generate_split(labels, 10, seed=split_id, split_id=split_id, **arguments)
        write_split(split, tmp_path, shared_roles=("val", "train_full"))
    assert (tmp_path / "s_val.npy").is_file() and not (tmp_path / "s_split2_val.npy").exists()
    first, second = read_split(tmp_path, "s", 1), read_split(tmp_path, "s", 2)
    assert np.array_equal(first.lists["val"].indices, second.lists["val"].indices)
    assert first.manifest["roles"]["val"]["file"] == "s_val.npy"
    other = generate_split(labels, 10, seed=3, split_id=3, **{**arguments, "holdout_seed": 9})
    with pytest.raises(DataError, match="shared split file"):
        write_split(other, tmp_path, shared_roles=("val",))
    assert not (tmp_path / "s_split3.json").exists()


def test_corrupt_or_truncated_file_is_detected(tmp_path: Path, cifar10_like: tuple[np.ndarray, Split]) -> None:
    _, split = cifar10_like
    write_split(split, tmp_path)
    target = tmp_path / "c10_split1_S_b.npy"
    data = bytearray(target.read_bytes())
    data[-3] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(DataError, match="c10_split1_S_b.npy"):
        read_split(tmp_path, "c10", 1)
    write_split(split, tmp_path, overwrite=True)
    target.write_bytes(target.read_bytes()[:-16])
    with pytest.raises(DataError, match="c10_split1_S_b.npy"):
        read_split(tmp_path, "c10", 1)
    with pytest.raises(DataError, match="not found"):
        read_split(tmp_path, "c10", 4)
    (tmp_path / "c10_split1.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="JSON"):
        read_split(tmp_path, "c10", 1)


def test_read_checks_counts_against_labels(tmp_path: Path, cifar10_like: tuple[np.ndarray, Split]) -> None:
    labels, split = cifar10_like
    write_split(split, tmp_path)
    relabelled = labels.copy()
    relabelled[split.lists["S_b"].indices[0]] = (relabelled[split.lists["S_b"].indices[0]] + 1) % 10
    with pytest.raises(DataError, match="counts from the labels"):
        read_split(tmp_path, "c10", 1, labels=relabelled)


# --- fixed-shot sets -------------------------------------------------------------------------------------------------


def test_shot_sets_follow_bcl_recipe(cifar100_like: tuple[np.ndarray, Split]) -> None:
    labels, split = cifar100_like
    with_shots = add_shot_sets(split)
    pool = np.sort(split.lists["train_full"].indices)
    for subset in range(1, 6):
        permuted = pool[np.random.default_rng(subset).permutation(pool.size)]
        hundred, fifty = with_shots.lists[f"shot100_{subset}"], with_shots.lists[f"shot50_{subset}"]
        for label in (0, 57, 99):
            in_order = [int(index) for index in permuted if labels[index] == label]
            assert per_class(hundred, label) == in_order[:100]
            assert per_class(fifty, label) == in_order[:50]
        assert np.bincount(labels[hundred.indices]).tolist() == [100] * 100
        assert set(fifty.indices) <= set(hundred.indices)
    assert not np.array_equal(with_shots.lists["shot100_1"].indices, with_shots.lists["shot100_2"].indices)
    with pytest.raises(DataError, match="fewer than 500"):
        add_shot_sets(split, shots=(500,))


# --- shipped splits --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dataset", "n_max", "n_balanced", "n_few", "overlap", "val", "train_full"),
    [("cifar10", 4500, 1116, 45, 5699, 500, 4500), ("cifar100", 450, 97, 4, 5204, 50, 400)],
)
def test_shipped_splits(
    dataset: str, n_max: int, n_balanced: int, n_few: int, overlap: int, val: int, train_full: int
) -> None:
    num_classes = 10 if dataset == "cifar10" else 100
    profile = profile_by_loop(n_max, num_classes, 100.0)
    orders = set()
    for split_id in range(1, 6):
        split = read_split(SHIPPED / dataset, dataset, split_id)
        assert sorted(split.pretrain_counts().tolist(), reverse=True) == profile
        assert split.lists["D_b"].class_counts(num_classes).tolist() == [n_balanced] * num_classes
        assert split.lists["S_b"].class_counts(num_classes).tolist() == [n_few] * num_classes
        assert split.lists["val"].class_counts(num_classes).tolist() == [val] * num_classes
        assert split.lists["train_full"].class_counts(num_classes).tolist() == [train_full] * num_classes
        assert np.intersect1d(split.lists["D_i"].indices, split.lists["D_b"].indices).size == overlap
        assert split.manifest["seed"] == split_id and split.manifest["origin"] == "generated"
        orders.add(tuple(split.head_to_tail().tolist()))
    assert len(orders) == 5


def test_shipped_splits_are_small() -> None:
    total = sum(path.stat().st_size for path in SHIPPED.rglob("*") if path.is_file())
    assert total < 4 * 1024 * 1024


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="../shared/reference_splits is not present")
def test_shipped_splits_match_labels_and_are_not_the_published_files() -> None:
    for dataset, labels_file, prefix, val_file in (
        ("cifar10", "cifar10_train_labels.npy", "cifar10_imbSub_with_subsets/split", "cifar10/valIdxList.npy"),
        ("cifar100", "cifar100_train_fine_labels.npy", "cifar100_imbSub_with_subsets/cifar100_split",
         "cifar100/cifar100_valIdxList.npy"),
    ):
        labels = np.load(REFERENCE / "cifar_labels" / labels_file)
        published_val = np.load(REFERENCE / "sdclr" / val_file)
        for split_id in range(1, 6):
            ours = read_split(SHIPPED / dataset, dataset, split_id, labels=labels)
            assert not np.array_equal(np.sort(ours.lists["val"].indices), np.sort(published_val))
            for role in ("D_i", "D_b", "S_b"):
                published = np.load(REFERENCE / "sdclr" / f"{prefix}{split_id}_{role}.npy")
                assert not np.array_equal(ours.lists[role].indices, published)


def test_shipped_copy_with_a_flipped_byte_is_rejected(tmp_path: Path) -> None:
    for path in (SHIPPED / "cifar10").iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    target = tmp_path / "cifar10_split2_D_i.npy"
    data = bytearray(target.read_bytes())
    data[200] ^= 0x01
    target.write_bytes(bytes(data))
    read_split(tmp_path, "cifar10", 1)
    with pytest.raises(DataError, match="cifar10_split2_D_i.npy: sha256"):
        read_split(tmp_path, "cifar10", 2)
    shared = tmp_path / "cifar10_val.npy"
    shared.write_bytes(shared.read_bytes()[:-8])
    with pytest.raises(DataError, match="cifar10_val.npy"):
        read_split(tmp_path, "cifar10", 1)
