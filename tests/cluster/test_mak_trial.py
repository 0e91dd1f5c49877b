"""MAK as a sweep method (docs/math/mak.md §1): config validation, grid key dropping, the pool import race, and one
real sweep with `method.name: [mak]` on digits-lt (real Ray, sqlite MLflow store): the extractor, the selection,
the retraining on LT ∪ selection, the evaluation and the MLflow records; then a resume that redoes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ltray.cluster.grid import Trial, expand_trials, key_applies, load_sweep_spec
from ltray.cluster.train_worker import TrainSettings
from ltray.cluster.trial import MAK_FOLDER, TrialStages, mak_pool_folder
from ltray.config import load_config
from ltray.data.pool_store import is_pool_folder, read_pool_info
from ltray.data.selection import SELECTION_FORMAT
from ltray.errors import ConfigError
from ltray.methods.components.mak import MAK, extractor_config
from ltray.tracking.runs import TAG_FINAL_KEYS, TAG_ROLE, TAG_SWEEP
from ltray.tracking.store import sqlite_uri

ROOT = Path(__file__).resolve().parents[2]
POOL_SIZE = 300
BUDGET = 40


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ({"method.mak.budget": 0}, "method.mak.budget must be >= 1"),
        ({"method.mak.budget": 20000}, "exceeds method.mak.pool_size"),
        ({"method.mak.pool_size": 0}, "method.mak.pool_size must be >= 1"),
        ({"method.mak.passes": 1}, "method.mak.passes must be >= 2"),
        ({"method.mak.loss_weight": 1.5}, "method.mak.loss_weight must be in [0, 1]"),
        ({"method.mak.core_ratio": 0}, "method.mak.core_ratio must be > 0"),
        ({"method.mak.clusters": 0}, "method.mak.clusters must be >= 1"),
        ({"method.mak.extractor_epochs": -1}, "method.mak.extractor_epochs must be >= 0"),
        ({"method.mak.pool": " "}, "method.mak.pool must be"),
        ({"method.name": "mak", "data.dataset": "cifar10"}, "16x16 images"),
        ({"method.name": "mak+gh"}, "combines with no other part"),
    ],
)
def test_bad_mak_settings_are_one_line_config_errors(override: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]")) as info:
        load_config(None, override)
    assert "\n" not in str(info.value)


def test_mak_defaults_follow_the_spec_and_a_given_selection_skips_the_pool_check() -> None:
    mak = load_config(None, {"method.name": "mak"}).method.mak
    assert (mak.pool, mak.pool_size, mak.budget, mak.passes) == ("embedded", 10000, 10000, 10)
    assert (mak.loss_weight, mak.core_ratio, mak.clusters, mak.extractor_epochs) == (0.5, 1.5, 10, 0)
    load_config(None, {"method.name": "mak", "data.dataset": "cifar10", "data.extra_data": "selections/x"})


def test_extractor_is_the_trial_as_simclr_with_its_own_epochs() -> None:
    cfg = load_config(None, {"method.name": "mak", "optim.epochs": 7})
    assert extractor_config(cfg).method.name == "simclr"
    assert extractor_config(cfg).optim.epochs == 7
    longer = cfg.replace({"method.mak.extractor_epochs": 3})
    assert extractor_config(longer).optim.epochs == 3 and longer.optim.epochs == 7


def test_mak_keys_only_apply_to_mak_and_collapse_elsewhere(tmp_path: Path) -> None:
    assert key_applies("method.mak.budget", "mak")
    assert not key_applies("method.mak.budget", "simclr")
    assert not key_applies("method.colt.budget", "mak")
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "name: s\nbase: null\naxes:\n  method.name: [simclr, mak]\n  method.mak.budget: [10, 20]\n"
    )
    names = sorted(trial.name for trial in expand_trials(load_sweep_spec(path)))
    assert len(names) == 3 and sum(name.startswith("mak") for name in names) == 2


def test_the_embedded_pool_is_imported_once_and_a_finished_import_wins(tmp_path: Path) -> None:
    cfg = load_config(None, {"method.name": "mak", "method.mak.pool_size": 50, "method.mak.budget": 5})
    first = mak_pool_folder(cfg, tmp_path)
    assert first == tmp_path / "mak_pool_50" and is_pool_folder(first) and read_pool_info(first).size == 50
    stamp = (first / "pool.json").stat().st_mtime_ns
    assert mak_pool_folder(cfg, tmp_path) == first and (first / "pool.json").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mak_pool_50"]  # no staging folder left behind
    given = cfg.replace({"method.mak.pool": str(first)})
    assert mak_pool_folder(given, tmp_path / "elsewhere") == first


def test_a_complete_selection_is_reused_without_training(tmp_path: Path) -> None:
    cfg = load_config(None, {"method.name": "mak", "method.mak.pool_size": 20, "method.mak.budget": 3})
    sweep_dir = tmp_path / "sweep"
    pool = mak_pool_folder(cfg, sweep_dir)
    trial = Trial(name="mak_split1", overrides={}, config_key="mak", config=cfg.to_dict())
    out = sweep_dir / MAK_FOLDER / trial.name
    out.mkdir(parents=True)
    manifest = {"format": SELECTION_FORMAT, "pool": str(pool), "pool_sha256": read_pool_info(pool).content_sha256,
                "positions": [4, 0, 7]}
    (out / "selection.json").write_text(json.dumps(manifest))
    # workers 0 would train in this process if the selection were not reused; there is no extractor run folder
    settings = TrainSettings(storage_path=str(sweep_dir / "train_runs"), workers=0)
    assert MAK.prepare(cfg, TrialStages(trial, settings)).data.extra_data == str(out)
    assert not (sweep_dir / "train_runs").exists()


def _write_sweep(folder: Path, epochs: int) -> Path:
    path = folder / "sweep_mak.yaml"
    path.write_text(
        f"""name: mak_tiny
experiment: ltray-tests
base: {ROOT / 'ltray' / 'configs' / 'digits_tiny.yaml'}
overrides:
  optim.epochs: {epochs}
  optim.batch_size: 64
  optim.warmup_epochs: 1
  eval.probe_epochs_scale: 0.05
  eval.kshot: 2
  eval.kshot_draws: 1
  run.checkpoint_every: 1
  method.mak.pool_size: {POOL_SIZE}
  method.mak.budget: {BUDGET}
  method.mak.passes: 2
  method.mak.clusters: 3
  method.mak.extractor_epochs: 1
axes:
  method.name: [mak]
  data.split: [1]
resources:
  workers_per_trial: 0  # trained in the trial's process: the MAK steps are the same on Ray Train (tested elsewhere)
  cpus_per_worker: 1
max_failures: 0
"""
    )
    return path


@pytest.mark.slow
def test_a_mak_sweep_trial_runs_the_whole_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ltray.cluster.sweep import SweepOptions, run_sweep
    from ltray.data.loading import load_run_data

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LTRAY_CACHE", str(tmp_path / "cache"))
    spec = load_sweep_spec(_write_sweep(tmp_path, epochs=2))
    uri = sqlite_uri(tmp_path / "mlflow.db")
    options = SweepOptions(mlflow_uri=uri, storage=str(tmp_path / "storage"), max_concurrent=1)
    outcome = run_sweep(spec, options, echo=lambda line: None)
    assert outcome.exit_code == 0, outcome.errors

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("ltray-tests")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{TAG_SWEEP}` = 'mak_tiny'")
    children = [run for run in runs if run.data.tags.get(TAG_ROLE) == "child"]
    assert len(children) == 1
    child = children[0]
    trial = child.data.tags["ltray.trial"]
    assert child.info.status == "FINISHED" and json.loads(child.data.tags[TAG_FINAL_KEYS])
    assert child.data.tags["ltray.method"] == "mak"

    selection = outcome.sweep_dir.local_path / MAK_FOLDER / trial
    manifest = json.loads((selection / "selection.json").read_text())
    assert manifest["budget"] == BUDGET and len(manifest["positions"]) == BUDGET and manifest["R"] == 2
    assert Path(manifest["pool"]) == outcome.sweep_dir.local_path / f"mak_pool_{POOL_SIZE}"
    assert (outcome.sweep_dir.local_path / "train_runs" / f"{trial}_extractor").is_dir()

    cfg = spec.base.replace({"method.name": "mak", "data.split": 1})
    num_id = len(load_run_data(cfg).train.id_images)
    sizes = {metric.value for metric in client.get_metric_history(child.info.run_id, "train_size")}
    assert sizes == {float(num_id + BUDGET)}
    assert child.data.metrics["mak_selected"] == BUDGET
    assert child.data.tags["ltray.mak_selection"] == str(selection)
    logged = {Path(item.path).name for item in client.list_artifacts(child.info.run_id, MAK_FOLDER)}
    assert {"selection.json", "selection.tsv", "hist_ecle.png", "hist_distance.png", "hist_score.png"} <= logged
    # the extractor logs nothing to the trial's run: every epoch metric is the final training's, each epoch once
    assert [int(m.step) for m in client.get_metric_history(child.info.run_id, "loss")] == [1, 2]


def test_an_in_process_sweep_reuses_the_finished_identical_simclr_run_as_extractor(tmp_path: Path) -> None:
    from ltray.cluster.trial import finished_sibling_checkpoint

    spec = load_sweep_spec(_write_sweep(tmp_path, epochs=2), axes={"method.name": ["simclr", "mak"]})
    trials = {t.name: t.to_param() for t in expand_trials(spec)}
    mak = next(Trial.from_param(p) for p in trials.values() if p["config"]["method"]["name"] == "mak")
    simclr = next(name for name, p in trials.items() if p["config"]["method"]["name"] == "simclr")
    extractor = extractor_config(mak.build_config().replace({"method.mak.extractor_epochs": 0}))
    in_process = TrainSettings(storage_path=str(tmp_path / "runs"), workers=0)
    assert finished_sibling_checkpoint(extractor, trials, in_process) is None  # not trained yet
    final = tmp_path / "runs" / simclr / "checkpoints" / "epoch_0002.pt"
    final.parent.mkdir(parents=True)
    final.write_bytes(b"")
    assert finished_sibling_checkpoint(extractor, trials, in_process) == final
    assert finished_sibling_checkpoint(extractor, trials, TrainSettings(storage_path=in_process.storage_path)) is None
    shorter = extractor_config(mak.build_config())  # the sweep's extractor_epochs 1: not the 2-epoch SimCLR run
    assert finished_sibling_checkpoint(shorter, trials, in_process) is None
