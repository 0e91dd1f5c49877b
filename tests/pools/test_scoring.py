"""Pool scoring (ltray/pools/scoring.py): the computation against a plain PyTorch loop, independence from batching,
reading results back (docs/math/mak.md §2), and the Ray Data job with 1 and 2 actors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from ltray.augment.batched import SimCLRViews
from ltray.config import load_config
from ltray.data.pool_store import import_pool, read_pool_arrays
from ltray.errors import ConfigError, DataError
from ltray.eval.rows import ScoringSpec, aug_column, score_rows
from ltray.models.contrastive import ContrastiveModel
from ltray.pools.scoring import (
    CheckpointModel,
    ModelRecipe,
    StateDictModel,
    block_rows,
    embed_pool,
    load_scoring_model,
    read_scores,
    score_pool,
    state_dict_model,
)
from ltray.train.checkpoint import save_checkpoint

RECIPE = ModelRecipe("resnet18_cifar", width=0.125)


def _model(seed: int = 0) -> ContrastiveModel:
    """A small model whose BN running statistics are not the identity, so eval-mode BN matters."""
    torch.manual_seed(seed)
    model = RECIPE.build()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, 16, 16, 3), dtype=np.uint8)


def _plain_loop(model: ContrastiveModel, images: np.ndarray, passes: int, seed: int) -> dict[str, np.ndarray]:
    """The spec's passes written directly: one batch, ToTensor for inference, one training view per pass."""
    tensor = torch.from_numpy(images)
    out: dict[str, np.ndarray] = {}
    with torch.no_grad():
        features = model.backbone(tensor.permute(0, 3, 1, 2).float() / 255.0)
        out["feature"] = features.numpy()
        out["projection"] = F.normalize(model.head(features), dim=1).numpy()
        views = SimCLRViews(16, preset="sdclr")
        for r in range(passes):
            view = views.single_view(tensor, torch.arange(len(images)), epoch=r, seed=seed, view=0)
            out[aug_column(r)] = F.normalize(model.head(model.backbone(view)), dim=1).numpy()
    return out


def test_embed_pool_matches_a_plain_pytorch_loop() -> None:
    model, images = _model(), _images(10)
    model.train()
    scores = embed_pool(model, images, ScoringSpec(inference=True, aug_passes=2, seed=7, batch_size=4))
    assert model.training  # the caller's mode is restored
    expected = _plain_loop(model.eval(), images, passes=2, seed=7)
    np.testing.assert_array_equal(scores.index, np.arange(10))
    assert scores.features is not None and scores.features.shape == (10, 64)
    np.testing.assert_allclose(scores.features, expected["feature"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores.projections, expected["projection"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(scores.projections, axis=1), 1.0, rtol=1e-6)
    assert len(scores.aug_projections) == 2
    for r in range(2):
        np.testing.assert_allclose(scores.aug_projections[r], expected[aug_column(r)], rtol=1e-5, atol=1e-5)
    assert not np.allclose(scores.aug_projections[0], scores.aug_projections[1])


def test_rows_give_the_same_bits_however_they_are_batched() -> None:
    model, images = _model(1), _images(11, seed=1)
    spec = ScoringSpec(inference=True, aug_passes=1, seed=3, batch_size=4)
    whole = embed_pool(model, images, spec)
    order = np.random.default_rng(0).permutation(11)
    for part in np.array_split(order, 3):  # arbitrary rows, shuffled, groups split across calls
        rows = score_rows(model, images[part], part, part, spec)
        np.testing.assert_array_equal(rows["feature"], whole.features[part])
        np.testing.assert_array_equal(rows["projection"], whole.projections[part])
        np.testing.assert_array_equal(rows[aug_column(0)], whole.aug_projections[0][part])


def test_augmented_view_is_keyed_by_seed_pass_and_index() -> None:
    model, images = _model(2), _images(6, seed=2)
    spec = ScoringSpec(inference=False, aug_passes=1, seed=5, batch_size=8)
    base = embed_pool(model, images, spec).aug_projections[0]
    reversed_rows = embed_pool(model, images[::-1], spec, index=np.arange(6)[::-1]).aug_projections[0]
    np.testing.assert_allclose(reversed_rows[::-1], base, rtol=1e-5, atol=1e-6)
    other_seed = embed_pool(model, images, ScoringSpec(False, 1, seed=6, batch_size=8)).aug_projections[0]
    assert not np.allclose(other_seed, base)


def test_state_dict_source_rebuilds_the_same_model() -> None:
    model = _model(3)
    copy = load_scoring_model(StateDictModel(RECIPE, model.state_dict()), torch.device("cpu"))
    images = _images(5, seed=3)
    spec = ScoringSpec(batch_size=8)
    np.testing.assert_array_equal(embed_pool(copy, images, spec).features, embed_pool(model, images, spec).features)


def test_channels_last_sources_give_the_same_scores(tmp_path: Path) -> None:
    """`model.channels_last` (the embedded configs' CPU speed-up) changes the weights' memory format, not the scores,
    for both ways a scoring actor gets its model."""
    model = _model(4)
    cfg = load_config(None, {"data.dataset": "digits-lt", "model.width": 0.125, "model.channels_last": True})
    recipe = ModelRecipe.from_config(cfg)
    checkpoint = save_checkpoint(tmp_path / "model.pt", {"config": cfg.to_dict(), "model": model.state_dict()})
    images = _images(6, seed=4)
    spec = ScoringSpec(aug_passes=1, batch_size=4)
    expected = embed_pool(model, images, spec)
    for source in (StateDictModel(recipe, model.state_dict()), CheckpointModel(str(checkpoint), cfg.to_dict())):
        loaded = load_scoring_model(source, torch.device("cpu"))
        assert loaded.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        scores = embed_pool(loaded, images, spec)
        np.testing.assert_allclose(scores.features, expected.features, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(scores.aug_projections[0], expected.aug_projections[0], rtol=1e-4, atol=1e-5)


def test_scoring_spec_validation() -> None:
    assert ScoringSpec(aug_passes=2).columns == ["feature", "projection", "aug_000", "aug_001"]
    assert ScoringSpec(inference=False, aug_passes=1).columns == ["aug_000"]
    with pytest.raises(ConfigError):
        ScoringSpec(inference=False, aug_passes=0)
    with pytest.raises(ConfigError):
        ScoringSpec(aug_passes=-1)
    with pytest.raises(ConfigError):
        ScoringSpec(aug_preset="nope")
    with pytest.raises(ConfigError):
        ScoringSpec(batch_size=0)
    with pytest.raises(DataError):
        embed_pool(_model(), _images(0))


def test_block_rows() -> None:
    assert block_rows(300, 32, 2) == 64  # ceil(300 / (32·2·4)) = 2 batches per block
    assert block_rows(10, 32, 1) == 32
    assert block_rows(10**6, 256, 1) == 16 * 256


def _write_scores(folder: Path, index: list[int], columns: dict[str, np.ndarray], spec: ScoringSpec) -> None:
    (folder / "rows").mkdir(parents=True)
    table = {"pool_index": pa.array(index, pa.int64())}
    for name, values in columns.items():
        table[name] = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
    pq.write_table(pa.table(table), folder / "rows" / "part-0.parquet")
    manifest = {"format": "ltray-scores-v1", "spec": {"inference": spec.inference, "aug_passes": spec.aug_passes,
                "seed": spec.seed, "aug_preset": spec.aug_preset, "batch_size": spec.batch_size},
                "columns": spec.columns}
    (folder / "scores.json").write_text(json.dumps(manifest))


def test_read_scores_sorts_keeps_first_occurrence_and_checks_passes(tmp_path: Path) -> None:
    spec = ScoringSpec(inference=False, aug_passes=2)
    first = np.array([[2.0], [0.0], [1.0], [9.0]], dtype=np.float32)  # index 2 repeats as padding
    second = np.array([[20.0], [0.5], [10.0], [99.0]], dtype=np.float32)
    _write_scores(tmp_path / "s", [2, 0, 1, 2], {"aug_000": first, "aug_001": second}, spec)
    scores, manifest = read_scores(tmp_path / "s", expected_size=3, expected_passes=2)
    np.testing.assert_array_equal(scores.index, [0, 1, 2])
    np.testing.assert_array_equal(scores.aug_projections[0][:, 0], [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(scores.aug_projections[1][:, 0], [0.5, 10.0, 20.0])
    assert manifest["columns"] == ["aug_000", "aug_001"]
    with pytest.raises(DataError, match="R = 3"):
        read_scores(tmp_path / "s", expected_passes=3)
    with pytest.raises(DataError):
        read_scores(tmp_path / "s", expected_size=4)
    with pytest.raises(DataError, match="no complete scores"):
        read_scores(tmp_path / "missing")


# ----- the Ray Data job --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ray_job_is_identical_for_one_and_two_actors(tmp_path: Path, ray_local: None) -> None:
    pool = import_pool("embedded:160", tmp_path / "pool", shard_rows=32)
    images = read_pool_arrays(pool).images
    model = _model(4)
    spec = ScoringSpec(inference=True, aug_passes=2, seed=11, batch_size=16)
    cfg = load_config(None, {"data.dataset": "digits-lt", "model.width": 0.125})
    checkpoint = save_checkpoint(tmp_path / "model.pt", {"config": cfg.to_dict(), "model": model.state_dict()})

    one = score_pool(pool, state_dict_model(model, RECIPE), spec, tmp_path / "one", actors=1)
    two = score_pool(pool, CheckpointModel(str(checkpoint), cfg.to_dict()), spec, tmp_path / "two", actors=2)
    bare = embed_pool(model, images, spec)
    for scores in (one, two):
        np.testing.assert_array_equal(scores.index, np.arange(160))
        np.testing.assert_array_equal(scores.features, bare.features)
        np.testing.assert_array_equal(scores.projections, bare.projections)
        for r in range(2):
            np.testing.assert_array_equal(scores.aug_projections[r], bare.aug_projections[r])
    expected = _plain_loop(model, images, passes=2, seed=11)
    np.testing.assert_allclose(one.features, expected["feature"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(one.aug_projections[1], expected[aug_column(1)], rtol=1e-5, atol=1e-5)
    with pytest.raises(DataError, match="never overwritten"):
        score_pool(pool, state_dict_model(model, RECIPE), spec, tmp_path / "one")
