"""MAK end to end (ltray/pools/mak_job.py, docs/math/mak.md §1–§9): a tiny pool and a tiny checkpoint through the Ray
Data passes, ECLE, proximity and K-center, checked against the same pipeline written as plain calls."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ltray.cli import main as cli_main
from ltray.config import Config, load_config
from ltray.data.loading import load_run_data
from ltray.data.pool_store import import_pool, read_pool_arrays
from ltray.data.selection import read_selection
from ltray.errors import ConfigError, DataError, LtrayError
from ltray.eval.rows import ScoringSpec
from ltray.evaluate import model_from_checkpoint
from ltray.pools.mak_job import mak_sample
from ltray.pools.scoring import embed_pool
from ltray.select.mak import ecle, mak_run_name, mak_select, proximity
from ltray.train.loop import Pretrainer

POOL_SIZE = 160
BUDGET = 20
PASSES = 3
SCORING_BATCH = 32


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("mak")
    cfg = load_config(None, {
        "data.dataset": "digits-lt", "model.width": 0.125, "run.output_dir": str(root), "run.name": "extractor",
        "run.device": "cpu", "run.progress": "off", "run.seed": 10,
        "method.mak.scoring_batch": SCORING_BATCH, "method.mak.regroupings": 4,
    })
    checkpoint = Pretrainer(cfg).save()  # an untrained SimCLR extractor is enough to exercise the pipeline
    pool = import_pool(f"embedded:{POOL_SIZE}", root / "pool", shard_rows=48)
    return {"root": root, "cfg": cfg, "checkpoint": checkpoint, "pool": pool}


def _expected_positions(cfg: Config, checkpoint: Path, pool: Path) -> np.ndarray:
    """The pipeline as plain calls: bare-loop embeddings of pool and ID set, then the selection math."""
    model = model_from_checkpoint(cfg, checkpoint, torch.device("cpu"))
    spec = ScoringSpec(True, PASSES, cfg.run.seed, cfg.data.aug_preset, SCORING_BATCH)
    candidates = embed_pool(model, read_pool_arrays(pool).images, spec)
    id_features = embed_pool(model, load_run_data(cfg).train.id_images, ScoringSpec(batch_size=32)).features
    tailness = ecle(candidates.aug_projections, batch_size=512, temperature=0.2, regroupings=4, seed=0)
    distance = proximity(id_features, candidates.features, n_clusters=10, random_state=0)
    return mak_select(tailness, distance, candidates.features, id_features, BUDGET, 0.5, 1.5)


@pytest.mark.slow
def test_mak_sample_end_to_end(workspace: dict[str, object], ray_local: None) -> None:
    from mlflow.tracking import MlflowClient

    root, cfg, checkpoint, pool = (workspace[k] for k in ("root", "cfg", "checkpoint", "pool"))
    assert isinstance(root, Path) and isinstance(cfg, Config) and isinstance(checkpoint, Path) and isinstance(pool, Path)
    cache = root / "cache"
    uri = f"sqlite:///{root / 'mlflow.db'}"
    out = mak_sample(cfg, checkpoint, pool, root / "selection", BUDGET, passes=PASSES, actors=1, mlflow_uri=uri,
                     cache_dir=cache)

    manifest = json.loads((out / "selection.json").read_text())
    expected = _expected_positions(cfg, checkpoint, pool)
    assert manifest["positions"] == expected.tolist()
    assert len(set(manifest["positions"])) == BUDGET
    assert manifest["name"] == mak_run_name(0.5, PASSES, 10, 1.5, BUDGET, 10) == "optimize_0.5lossR3_nearK10_coreR1.5_num20_s10"
    for key, value in {"R": PASSES, "Q": 4, "K_p": 10, "w": 0.5, "core_ratio": 1.5, "budget": BUDGET, "B_E": 512,
                       "B_E_used": POOL_SIZE, "tau_E": 0.2, "pool_size": POOL_SIZE}.items():
        assert manifest[key] == value, key
    assert manifest["seeds"] == {"run": 10, "augmentation": 10, "ecle": 0, "kmeans": 0}
    assert manifest["pool"] == str(pool.resolve()) and len(manifest["checkpoint_sha256"]) == 64
    lines = (out / "selection.tsv").read_text().splitlines()
    assert len(lines) == BUDGET + 1 and lines[1].split("\t")[:2] == ["0", str(expected[0])]
    assert not (out / "selected_list.txt").exists()  # an array pool has no list lines
    with np.load(out / "scores.npz") as stored:
        assert stored["ecle"].shape == (POOL_SIZE,) and stored["score"].shape == (POOL_SIZE,)
    assert all((out / name).stat().st_size > 0 for name in ("hist_ecle.png", "hist_distance.png", "hist_score.png"))
    assert len(list((cache / "ecle").glob("*.npy"))) == 1 and len(list((cache / "distance").glob("*.npy"))) == 1

    # the selection feeds pre-training's extra data
    source, positions = read_selection(out)
    np.testing.assert_array_equal(positions, expected)
    assert len(source) == POOL_SIZE
    extra = cfg.replace({"data.extra_data": str(out)})
    data = load_run_data(extra).train
    n_id = data.num_id
    np.testing.assert_array_equal(data.members()[n_id:], n_id + expected)
    trainer = Pretrainer(extra.replace({"run.name": "retrain"}))
    step = trainer.train_step(np.concatenate([np.arange(4), n_id + expected[:4]]))
    assert np.isfinite(step["loss"])

    # never overwritten; a second run reuses the cached passes, ECLE and distances
    before = (out / "selection.json").read_bytes()
    with pytest.raises(DataError, match="never overwritten"):
        mak_sample(cfg, checkpoint, pool, out, BUDGET, passes=PASSES, cache_dir=cache)
    assert (out / "selection.json").read_bytes() == before
    again = mak_sample(cfg, checkpoint, pool, root / "again", BUDGET, passes=PASSES, cache_dir=cache)
    assert json.loads((again / "selection.json").read_text())["positions"] == expected.tolist()
    # the inference passes as a plain loop in this process (a sweep trial that trains in-process): same picks
    local = mak_sample(cfg, checkpoint, pool, root / "local", BUDGET, passes=PASSES,
                       cache_dir=root / "local-cache", in_process=True)
    assert json.loads((local / "selection.json").read_text())["positions"] == expected.tolist()

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("ltray-mak").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["R"] == str(PASSES) and runs[0].data.params["seeds.ecle"] == "0"
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"hist_ecle.png", "hist_distance.png", "hist_score.png", "selection.json"} <= artifacts


def test_mak_sample_rejects_bad_requests_before_any_work(
    workspace: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, checkpoint, pool = workspace["cfg"], workspace["checkpoint"], workspace["pool"]
    assert isinstance(cfg, Config)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("mine")
    with pytest.raises(DataError, match="never overwritten"):
        mak_sample(cfg, checkpoint, pool, tmp_path / "taken", BUDGET)
    with pytest.raises(ConfigError, match="R = 2"):
        mak_sample(cfg, checkpoint, pool, tmp_path / "out", BUDGET, passes=1)
    with pytest.raises(ConfigError, match="exceeds the pool size"):
        mak_sample(cfg, checkpoint, pool, tmp_path / "out", POOL_SIZE + 1)
    scenes = cfg.replace({"data.dataset": "scenes-lt"})
    with pytest.raises(LtrayError, match="trained on digits-lt"):
        mak_sample(scenes, checkpoint, pool, tmp_path / "out", BUDGET)
    assert not (tmp_path / "out").exists()
    code = cli_main(["mak", "sample", "--set", "data.dataset=digits-lt", "--checkpoint", str(checkpoint),
                     "--pool", str(pool), "--out", str(tmp_path / "taken"), "--budget", "5"])
    assert code == 2 and "never overwritten" in capsys.readouterr().err
    assert (tmp_path / "taken" / "x").read_text() == "mine"


def test_mak_sample_flags_are_checked_before_any_work(
    workspace: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint, pool = workspace["checkpoint"], workspace["pool"]
    base = ["mak", "sample", "--set", "data.dataset=digits-lt", "--checkpoint", str(checkpoint), "--pool", str(pool),
            "--out", str(tmp_path / "out"), "--budget", "5"]
    for extra, message in ((["--loss-weight", "2"], "w must lie in [0, 1]"),
                           (["--clusters", "0"], "must be >= 1"),
                           (["--no-mlflow", "--mlflow-uri", "sqlite:///x.db"], "exclude each other"),
                           (["--mlflow-uri", str(tmp_path / "mlruns")], "file store")):
        assert cli_main([*base, *extra]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (extra, lines)
    assert not (tmp_path / "out").exists()
