"""The image-list data path (docs/math/data_and_eval.md §2, §4, §8; bcl.md §4-§5): per-item views in loader workers,
seeded by item so that nothing depends on the worker count, the versioned BCL weights travelling with every
request, pre-training and evaluation end to end on a tiny ImageNet-style folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ltray.augment.pil import BCLImageNetTwoViews, TwoViews, imagenet_probe_train, imagenet_train_views
from ltray.augment.randaugment import BCLWeights, RandAugmentProb, StaleWeightsError, check_weights_version
from ltray.config import Config, load_config
from ltray.data.list_data import (
    EpochBatchSampler,
    ListTrainData,
    ListViewLoader,
    PlannedOrder,
    ProbeItems,
    inference_transform,
    list_split,
    load_list_run_data,
    sdclr_sgd_probe_list,
    seeded_view,
    source_features,
)
from ltray.data.loading import load_run_data
from ltray.data.sources import ImageListSource
from ltray.errors import ConfigError, DataError
from ltray.eval.probe import IN100_FEW, ProbeSchedule
from ltray.evaluate import evaluate_backbone
from ltray.models.resnet import build_backbone
from ltray.train.loop import Pretrainer, pretrain

SIZE = 32  # small views keep the CPU runs fast; runs use 224
CLASSES = 3
LT_COUNTS = (6, 3, 2)  # D_i per class, head to tail
TRAIN_PER_CLASS, VAL_PER_CLASS, TEST_PER_CLASS = 6, 2, 2


def _write_image(path: Path, label: int, number: int) -> None:
    """A 48 × 40 image: a class-coloured background with a number-dependent bright square, saved as its suffix."""
    rng = np.random.default_rng(100 * label + number)
    pixels = rng.integers(0, 60, size=(40, 48, 3), dtype=np.uint8)
    pixels[..., label] += 150
    top, left = number % 20, (3 * number) % 28
    pixels[top : top + 12, left : left + 12] = 240
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG" if path.suffix == ".jpg" else "PNG")


def _write_list(path: Path, entries: list[tuple[str, int]]) -> str:
    path.write_text("".join(f"{name} {label}\n" for name, label in entries), encoding="utf-8")
    return str(path)


@pytest.fixture
def image_folder(tmp_path: Path) -> dict[str, str]:
    """root/{train,val,test}/n0000000c/*.{jpg,png} and the list files of the five roles."""
    root = tmp_path / "images"
    entries: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
    for folder, per_class in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS), ("test", TEST_PER_CLASS)):
        for label in range(CLASSES):
            for number in range(per_class):
                ext = "jpg" if number % 2 else "png"
                name = f"{folder}/n{label:08d}/img{number}.{ext}"
                _write_image(root / name, label, number + (0 if folder == "train" else 10 * len(folder)))
                entries[folder].append((name, label))
    lt = [entry for entry in entries["train"] if int(entry[0].split("img")[1][0]) < LT_COUNTS[entry[1]]]
    few = [entry for entry in entries["train"] if int(entry[0].split("img")[1][0]) >= TRAIN_PER_CLASS - 2]
    lists = tmp_path / "lists"
    lists.mkdir()
    return {
        "data.root": str(root),
        "data.train_list": _write_list(lists / "lt_train.txt", lt),
        "data.fewshot_list": _write_list(lists / "few_train.txt", few),
        "data.full_list": _write_list(lists / "full_train.txt", entries["train"]),
        "data.val_list": _write_list(lists / "val.txt", entries["val"]),
        "data.test_list": _write_list(lists / "test.txt", entries["test"]),
    }


def list_config(tmp_path: Path, folder: dict[str, str], **overrides: Any) -> Config:
    values: dict[str, Any] = {
        "data.dataset": "imagenet100",
        **folder,
        "model.arch": "resnet18_cifar",
        "model.width": 0.125,
        "optim.batch_size": 4,
        "optim.epochs": 2,
        "optim.warmup_epochs": 1,
        "optim.lr": 0.1,
        "eval.grouping": "thresholds",
        "eval.probe_epochs_scale": 0.02,
        "eval.kshot": 2,
        "eval.kshot_draws": 1,
        "run.device": "cpu",
        "run.progress": "off",
        "run.output_dir": str(tmp_path / "runs"),
    }
    values.update({key.replace("__", "."): value for key, value in overrides.items()})
    return load_config(None, values)


def _lt_source(folder: dict[str, str]) -> ImageListSource:
    from ltray.data.lists import read_text_list

    return ImageListSource(read_text_list(folder["data.train_list"]), Path(folder["data.root"]))


# ----- loading --------------------------------------------------------------------------------------------


def test_run_data_from_lists(tmp_path: Path, image_folder: dict[str, str]) -> None:
    cfg = list_config(tmp_path, image_folder)
    data = load_run_data(cfg)
    assert data.is_list and data.image_size == 224 and data.base_train is None
    assert data.num_classes == CLASSES
    assert data.pretrain_counts.tolist() == list(LT_COUNTS)
    assert {role: len(source) for role, source in data.sources.items()} == {
        "D_i": sum(LT_COUNTS), "S_b": 2 * CLASSES, "train_full": TRAIN_PER_CLASS * CLASSES,
        "val": VAL_PER_CLASS * CLASSES, "test": TEST_PER_CLASS * CLASSES,
    }
    train = data.train
    assert isinstance(train, ListTrainData)
    assert len(train) == train.num_id == train.index_space == sum(LT_COUNTS) and train.pool_size == 0
    assert train.labels(np.array([0, 5, 6, 10])).tolist() == [0, 0, 1, 2]
    assert train.load(6).size == (48, 40)
    assert data.role_source("val").path(0) == Path(image_folder["data.root"]) / "val/n00000000/img0.png"


def test_list_split_counts_classes_from_labels_and_refuses_other_subsets(
    tmp_path: Path, image_folder: dict[str, str]
) -> None:
    split = list_split(list_config(tmp_path, image_folder))
    assert split.num_classes == CLASSES and set(split.lists) == {"D_i", "S_b", "train_full", "val", "test"}
    with pytest.raises(ConfigError, match="data.subset=D_b"):
        load_run_data(list_config(tmp_path, image_folder, data__subset="D_b"))
    with pytest.raises(ConfigError, match="aug_preset=gh"):
        load_run_data(list_config(tmp_path, image_folder, data__aug_preset="gh"))


def test_missing_root_file_and_malformed_line_are_one_line_data_errors(
    tmp_path: Path, image_folder: dict[str, str]
) -> None:
    with pytest.raises(DataError, match="image root not found") as missing_root:
        load_run_data(list_config(tmp_path, {**image_folder, "data.root": str(tmp_path / "nowhere")}))
    first = Path(image_folder["data.root"]) / "train/n00000000/img0.png"
    first.unlink()
    with pytest.raises(DataError, match="image not found: .*img0.png") as missing_file:
        load_run_data(list_config(tmp_path, image_folder))
    bad_list = tmp_path / "bad.txt"
    bad_list.write_text("train/n00000000/img1.jpg 0\ntrain/n00000000/img2.png zero\n")
    with pytest.raises(DataError, match=r"bad.txt:2: label 'zero'") as malformed:
        load_run_data(list_config(tmp_path, {**image_folder, "data.val_list": str(bad_list)}))
    for error in (missing_root, missing_file, malformed):
        assert "\n" not in str(error.value)


def test_unreadable_image_in_a_worker_is_a_one_line_data_error(tmp_path: Path, image_folder: dict[str, str]) -> None:
    data = ListTrainData(_lt_source(image_folder))
    data.id_source.path(1).write_bytes(b"not an image")
    loader = ListViewLoader(data, image_size=SIZE, seed=0, workers=1)
    with pytest.raises(DataError, match="cannot read image .*img1.jpg") as error:
        list(loader.epoch([np.array([0, 1])], 0))
    assert "\n" not in str(error.value)


def test_pool_indices_follow_the_id_items(tmp_path: Path, image_folder: dict[str, str]) -> None:
    from ltray.data.lists import read_text_list

    root = Path(image_folder["data.root"])
    pool = ImageListSource(read_text_list(image_folder["data.val_list"]), root)
    data = ListTrainData(_lt_source(image_folder), pool)
    n_id = sum(LT_COUNTS)
    assert data.index_space == n_id + 6 and len(data) == n_id
    data.set_active_pool(np.array([4, 1]))
    assert data.members().tolist() == list(range(n_id)) + [n_id + 4, n_id + 1]
    assert data.labels(np.array([0, n_id + 4])).tolist() == [0, 2]
    assert data.is_ood(torch.tensor([n_id - 1, n_id])).tolist() == [False, True]
    assert np.array_equal(np.asarray(data.load(n_id + 4)), np.asarray(pool.load(4)))
    with pytest.raises(DataError, match="out of range"):
        data.set_active_pool(np.array([6]))


# ----- views ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_views_are_the_per_item_seeded_pipeline_whatever_the_worker_count(
    tmp_path: Path, image_folder: dict[str, str], workers: int
) -> None:
    data = ListTrainData(_lt_source(image_folder))
    loader = ListViewLoader(data, image_size=SIZE, seed=7, workers=workers)
    batches = [np.array([3, 0, 9]), np.array([10, 4]), np.array([1])]
    out = list(loader.epoch(batches, 5))
    reference = TwoViews(imagenet_train_views(SIZE))
    assert [index.tolist() for index, _ in out] == [batch.tolist() for batch in batches]
    for index, (v1, v2) in out:
        assert v1.shape == (len(index), 3, SIZE, SIZE) and v1.dtype == torch.float32
        assert float(v1.min()) >= 0.0 and float(v1.max()) <= 1.0
        for row, item in enumerate(index.tolist()):
            e1, e2 = reference(data.load(item), seed=7, epoch=5, index=item)
            assert torch.equal(v1[row], e1) and torch.equal(v2[row], e2)
        assert not torch.equal(v1, v2)
    again = dict((int(i[0]), v) for i, v in loader.epoch([np.array([3]), np.array([10])], 6))
    assert not torch.equal(again[3][0], out[0][1][0][0])  # a new epoch draws new views
    in_process = loader.views_of(np.array([10, 4]), 5)
    assert torch.equal(in_process[0], out[1][1][0]) and torch.equal(in_process[1], out[1][1][1])


def test_planned_batches_keep_sizes_and_tag_the_epoch() -> None:
    sampler = EpochBatchSampler(PlannedOrder())
    sampler.plan(3, [np.array([5, 2, 7]), np.array([1])])
    assert list(sampler) == [[(3, 5), (3, 2), (3, 7)], [(3, 1)]] and len(sampler) == 2


def test_bcl_weights_reach_persistent_workers_with_their_version(tmp_path: Path, image_folder: dict[str, str]) -> None:
    data = ListTrainData(_lt_source(image_folder))
    hook = RandAugmentProb(BCLWeights.initial(data.index_space), strength=30)
    loader = ListViewLoader(data, image_size=SIZE, seed=3, workers=1, bcl=hook)
    batches = [np.array([0, 6, 9]), np.array([2, 10])]
    for _ in loader.epoch(batches, 0):
        check_weights_version(hook.last_version, 0)
    # epoch 1 keeps the version-0 weights: BCL's check in the training step refuses the batch
    for _ in loader.epoch(batches[:1], 1):
        with pytest.raises(StaleWeightsError):
            check_weights_version(hook.last_version, 1)
    weights = torch.linspace(0.2, 1.0, data.index_space)
    hook.set_weights(BCLWeights(weights, version=1))
    reference = BCLImageNetTwoViews(SIZE, 30)
    changed = 0
    for index, (v1, v2) in loader.epoch(batches, 1):
        check_weights_version(hook.last_version, 1)
        for row, item in enumerate(index.tolist()):
            image = data.load(item)
            e1, e2 = reference(image, float(weights[item]), seed=3, epoch=1, index=item)
            assert torch.equal(v1[row], e1) and torch.equal(v2[row], e2)
            z1, _ = reference(image, 0.0, seed=3, epoch=1, index=item)
            changed += int(not torch.equal(z1, e1))
    assert changed > 0  # the non-zero weights, not a stale zero copy, drove the workers' RandAugment


# ----- features and the SGD probe -------------------------------------------------------------------------


def _tiny_backbone() -> nn.Module:
    torch.manual_seed(0)
    return build_backbone("resnet18_cifar", width=0.125).eval()


def test_source_features_are_the_backbone_on_the_inference_view(tmp_path: Path, image_folder: dict[str, str]) -> None:
    source = _lt_source(image_folder)
    backbone = _tiny_backbone()
    features = source_features(backbone, source, image_size=SIZE, workers=1, batch_size=4)
    transform = inference_transform(SIZE)
    assert transform.transforms[0].size == 37 and transform.transforms[1].size == (SIZE, SIZE)  # 32·256/224 → 37
    with torch.no_grad():
        expected = backbone(torch.stack([transform(source.load(i)) for i in range(len(source))]))
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_sgd_probe_on_lists_is_worker_independent_and_selects_by_top5(
    tmp_path: Path, image_folder: dict[str, str]
) -> None:
    data = load_list_run_data(list_config(tmp_path, image_folder), image_size=SIZE)
    schedule = ProbeSchedule("tiny", epochs=2, batch_size=4, milestones=(2,), validate_every=1, select_by="top5")
    backbone = _tiny_backbone()
    before = {name: tensor.clone() for name, tensor in backbone.state_dict().items()}
    results = [
        sdclr_sgd_probe_list(
            backbone, data.role_source("S_b"), data.role_source("val"), data.role_source("test"), CLASSES,
            schedule=schedule, seed=1, image_size=SIZE, workers=workers, eval_batch_size=8,
        )
        for workers in (0, 1)
    ]
    assert results[0].epoch_loss == results[1].epoch_loss and len(results[0].epoch_loss) == 2
    assert torch.equal(results[0].classifier["weight"], results[1].classifier["weight"])
    # with 3 classes every top-5 prediction is right: validation ties at 100 % and the first validated epoch wins
    assert results[0].val_curve == [(1, 100.0), (2, 100.0)] and results[0].best_epoch == 1
    assert all(torch.equal(before[name], tensor) for name, tensor in backbone.state_dict().items())
    assert IN100_FEW.select_by == "top5"


def test_probe_items_are_seeded_by_epoch_and_row(tmp_path: Path, image_folder: dict[str, str]) -> None:
    source = _lt_source(image_folder)
    items = ProbeItems(source, imagenet_probe_train(SIZE), seed=4)
    image, label = items[(2, 7)]
    assert label == 1 and image.shape == (3, SIZE, SIZE)
    assert torch.equal(image, seeded_view(imagenet_probe_train(SIZE), source.load(7), 4, 2, 7, 0))
    assert not torch.equal(image, items[(3, 7)][0])


# ----- pre-training and evaluation ------------------------------------------------------------------------


def _losses(cfg: Config, image_size: int = SIZE) -> list[float]:
    result = pretrain(cfg, data=load_list_run_data(cfg, image_size=image_size))
    return [metrics["loss"] for metrics in result.history]


@pytest.mark.slow
def test_pretraining_is_the_same_for_any_worker_count(tmp_path: Path, image_folder: dict[str, str]) -> None:
    inline = _losses(list_config(tmp_path, image_folder, data__loader_workers=0, run__name="w0"))
    workers = _losses(list_config(tmp_path, image_folder, data__loader_workers=1, run__name="w1"))
    assert len(inline) == 2 and all(np.isfinite(inline))
    assert inline == workers


@pytest.mark.slow
def test_bcl_pretraining_on_lists_uses_each_epochs_weights(tmp_path: Path, image_folder: dict[str, str]) -> None:
    cfg = list_config(tmp_path, image_folder, method__name="simclr+bcl", data__loader_workers=1, optim__epochs=3)
    trainer = Pretrainer(cfg, data=load_list_run_data(cfg, image_size=SIZE))
    result = trainer.run()
    # BCL's training-step check passed in every epoch, so epoch e's batches used version e
    assert [m["bcl_weight_version"] for m in result.history] == [1.0, 2.0, 3.0]
    assert trainer.list_views is not None and trainer.list_views.bcl is not None
    assert trainer.list_views.bcl.last_version == 2


@pytest.mark.slow
def test_evaluate_backbone_on_lists(tmp_path: Path, image_folder: dict[str, str]) -> None:
    cfg = list_config(tmp_path, image_folder, eval__grouping="thirds")
    data = load_list_run_data(cfg, image_size=SIZE)
    report = evaluate_backbone(cfg, _tiny_backbone(), data, torch.device("cpu"))
    figures = report["figures"]
    for prefix in ("full", "few", "shot2"):
        assert 0.0 <= figures[f"{prefix}_all"] <= 100.0
        assert len(report["per_class"][prefix]) == CLASSES
    assert report["pretrain_counts"] == list(LT_COUNTS)
    assert report["groups"] == {"many": [0], "medium": [1], "few": [2]}  # D_i counts 6, 3, 2
    adam_cfg = list_config(tmp_path, image_folder, eval__protocol="bcl_adam", eval__grouping="thirds")
    adam = evaluate_backbone(adam_cfg, _tiny_backbone(), data, torch.device("cpu"))
    assert {"full_all", "shot2_all"} <= set(adam["figures"])


def test_evaluation_needs_the_lists_it_probes(tmp_path: Path, image_folder: dict[str, str]) -> None:
    folder = {key: value for key, value in image_folder.items() if key != "data.full_list"}
    cfg = list_config(tmp_path, folder, eval__few_shot=False)
    with pytest.raises(DataError, match=r"no train_full list \(set data.full_list\)"):
        evaluate_backbone(cfg, _tiny_backbone(), load_list_run_data(cfg, image_size=SIZE), torch.device("cpu"))


def test_colt_on_lists_needs_a_list_pool(tmp_path: Path, image_folder: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="method.colt.pool=list"):
        load_run_data(list_config(tmp_path, image_folder, method__name="simclr+colt", method__colt__warmup=1))


@pytest.mark.slow
def test_colt_on_lists_embeds_the_list_sources_and_resamples(tmp_path: Path, image_folder: dict[str, str]) -> None:
    cfg = list_config(
        tmp_path, image_folder, method__name="simclr+colt", method__colt__pool="list",
        method__colt__pool_path=image_folder["data.val_list"], method__colt__budget=2, method__colt__warmup=1,
        method__colt__interval=1, method__colt__clusters=2, data__loader_workers=1,
    )
    trainer = Pretrainer(cfg, data=load_list_run_data(cfg, image_size=SIZE))
    assert trainer.train_data.pool_size == 6
    result = trainer.run()
    n_id = sum(LT_COUNTS)
    assert [m["train_size"] for m in result.history] == [n_id, n_id + 2]
    active = trainer.train_data.active_pool
    assert len(active) == 2 and set(active.tolist()) <= set(range(6))
    embedded = trainer.list_views.embed(trainer.model, trainer.train_data.pool_images, torch.device("cpu"))
    assert embedded.shape == (6, 128)
    np.testing.assert_allclose(np.linalg.norm(embedded, axis=1), 1.0, rtol=1e-5)


def test_mak_extra_data_on_lists_is_a_list_all_active(tmp_path: Path, image_folder: dict[str, str]) -> None:
    data = load_run_data(list_config(tmp_path, image_folder, data__extra_data=image_folder["data.test_list"]))
    n_id = sum(LT_COUNTS)
    assert data.train.pool_size == 6 and len(data.train) == n_id + 6
    assert data.train.members().tolist() == list(range(n_id + 6))
    selection = tmp_path / "selection"
    selection.mkdir()
    with pytest.raises(DataError, match="holds no selected_list.txt"):
        load_run_data(list_config(tmp_path, image_folder, data__extra_data=str(selection)))


@pytest.mark.slow
def test_mak_sample_on_an_image_list_selects_from_a_list_pool(tmp_path: Path, image_folder: dict[str, str]) -> None:
    """MAK's paper setting (ImageNet-100-LT with an ImageNet-900 style list pool), in miniature: pass (b) embeds
    the ID list with the inference transform, the pool is a list imported at the ID image size, and the selection
    (with its list file) feeds a retraining run through `data.extra_data`."""
    from ltray.data.list_data import LIST_IMAGE_SIZE
    from ltray.data.pool_store import import_pool
    from ltray.data.selection import MANIFEST_NAME
    from ltray.pools.mak_job import mak_sample

    cfg = list_config(tmp_path, image_folder, optim__epochs=1)
    checkpoint = pretrain(cfg).checkpoint
    pool = import_pool(image_folder["data.test_list"], tmp_path / "pool", root=image_folder["data.root"],
                       size=LIST_IMAGE_SIZE)
    out = mak_sample(cfg.replace({"method.mak.clusters": 2}), checkpoint, pool, tmp_path / "selection", budget=3,
                     passes=2, in_process=True, cache_dir=tmp_path / "cache")
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["num_id"] == sum(LT_COUNTS) and len(manifest["positions"]) == 3
    assert len(set(manifest["positions"])) == 3 and all(0 <= p < 6 for p in manifest["positions"])
    retrain = load_run_data(list_config(tmp_path, image_folder, data__extra_data=str(out)))
    assert len(retrain.train) == sum(LT_COUNTS) + 3
    small = import_pool(image_folder["data.test_list"], tmp_path / "small", root=image_folder["data.root"], size=32)
    with pytest.raises(DataError, match="matching --size"):
        mak_sample(cfg, checkpoint, small, tmp_path / "other", budget=3, passes=2, in_process=True)
    assert not (tmp_path / "other").exists()
