from __future__ import annotations

import json
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from ltray.errors import ConfigError, LtrayError
from ltray.tracking.runs import (
    SweepTracking,
    flatten_config,
    flatten_report,
    git_commit,
    standard_tags,
)
from ltray.tracking.server import MlflowServer


def test_flatten_config_dotted_keys_and_strings() -> None:
    cfg = {
        "method": "sdclr",
        "optim": {"lr": 0.5, "schedule": {"warmup": 10, "kind": "cosine"}},
        "milestones": [30, 60],
        "crop": (0.08, 1.0),
        "pool": None,
        "sync_bn": True,
    }
    assert flatten_config(cfg) == {
        "method": "sdclr",
        "optim.lr": "0.5",
        "optim.schedule.warmup": "10",
        "optim.schedule.kind": "cosine",
        "milestones": "[30, 60]",
        "crop": "[0.08, 1.0]",
        "pool": "None",
        "sync_bn": "True",
    }


def test_flatten_config_truncates_to_mlflow_limit() -> None:
    long_value = "x" * (MAX_PARAM_VAL_LENGTH + 50)
    flat = flatten_config({"a": {"b": long_value}, "short": "y" * MAX_PARAM_VAL_LENGTH})
    assert len(flat["a.b"]) == MAX_PARAM_VAL_LENGTH
    assert flat["a.b"].endswith("...[truncated]")
    assert flat["a.b"].startswith("x" * 100)
    assert flat["short"] == "y" * MAX_PARAM_VAL_LENGTH


def test_flatten_report_numbers_only() -> None:
    report = {"all": 71.25, "many": np.float64(80.0), "n": np.int64(3), "few_shot_1pct": {"all": 40, "few": None}}
    assert flatten_report(report) == {"all": 71.25, "many": 80.0, "n": 3.0, "few_shot_1pct.all": 40.0}
    with pytest.raises(ConfigError, match="'per_class' is list"):
        flatten_report({"per_class": [1.0, 2.0]})
    with pytest.raises(ConfigError, match="'ok' is bool"):
        flatten_report({"ok": True})


def test_git_commit_of_a_repository_and_of_a_plain_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LTRAY_GIT_COMMIT", raising=False)
    assert git_commit(tmp_path) == "unknown"
    repo = tmp_path / "repo"
    repo.mkdir()
    identity = ["-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", *identity, "commit", "-q", "--allow-empty", "-m", "x"], cwd=repo, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
    assert git_commit(repo) == head.stdout.strip()
    assert len(git_commit(repo)) == 40
    monkeypatch.setenv("LTRAY_GIT_COMMIT", "abc123")  # an installed copy without .git (the cluster image)
    assert git_commit(tmp_path) == git_commit(repo) == "abc123"


def test_standard_tags(tmp_path: Path) -> None:
    tags = standard_tags("gh", "split1", "cifar100", reference_backed=False, repo_dir=tmp_path)
    assert tags == {
        "ltray.method": "gh",
        "ltray.split": "split1",
        "ltray.dataset": "cifar100",
        "mlflow.source.git.commit": "unknown",
        "ltray.reference_backed": "false",
    }
    assert standard_tags("simclr", "s", "d", reference_backed=True, repo_dir=tmp_path)["ltray.reference_backed"] == "true"


def _runs_of(client: MlflowClient, experiment_id: str) -> list[str]:
    return sorted(run.info.run_id for run in client.search_runs([experiment_id]))


@pytest.mark.slow
def test_parent_children_params_metrics_and_resume(mlflow_server: MlflowServer, experiment_name: str) -> None:
    tracking = SweepTracking(mlflow_server.tracking_uri, experiment_name)
    client = MlflowClient(tracking_uri=mlflow_server.tracking_uri)
    tags = standard_tags("simclr", "split1", "cifar10", reference_backed=True)
    parent = tracking.start_parent("sweep-a", {"grid": {"lr": [0.5, 1.0]}, "epochs": 3}, tags)
    children = [
        tracking.start_child(parent, f"lr={lr}", {"optim": {"lr": lr}, "epochs": 3}, {"ltray.config_key": f"lr{lr}"})
        for lr in (0.5, 1.0)
    ]
    for position, child in enumerate(children):
        for epoch in range(3):
            tracking.log_epoch_metrics(child, {"loss": 5.0 - epoch - position, "lr": 0.1 * (epoch + 1)}, step=epoch)

    parent_run = client.get_run(parent)
    assert parent_run.data.params == {"grid.lr": "[0.5, 1.0]", "epochs": "3"}
    assert parent_run.data.tags["ltray.sweep"] == "sweep-a"
    assert parent_run.data.tags["ltray.role"] == "parent"
    assert parent_run.data.tags["ltray.method"] == "simclr"
    assert parent_run.data.tags["ltray.reference_backed"] == "true"
    assert parent_run.info.run_name == "sweep-a"
    for lr, child in zip((0.5, 1.0), children):
        run = client.get_run(child)
        assert run.data.tags["mlflow.parentRunId"] == parent
        assert run.data.tags["ltray.sweep"] == "sweep-a"
        assert run.data.tags["ltray.trial"] == f"lr={lr}"
        assert run.info.run_name == f"lr={lr}"
        assert run.data.params == {"optim.lr": str(lr), "epochs": "3"}
        assert run.info.status == "RUNNING"
    history = client.get_metric_history(children[1], "loss")
    assert sorted((m.step, m.value) for m in history) == [(0, 4.0), (1, 3.0), (2, 2.0)]
    lr_history = client.get_metric_history(children[0], "lr")
    assert [m.step for m in sorted(lr_history, key=lambda m: m.step)] == [0, 1, 2]
    assert [m.value for m in sorted(lr_history, key=lambda m: m.step)] == pytest.approx([0.1, 0.2, 0.3])

    final = tracking.log_final(children[0], {"all": 70.5, "many": 80.0, "group_std": 0.05, "few_shot": {"all": 33.0}})
    assert list(final) == ["all", "many", "group_std", "few_shot.all"]
    run = client.get_run(children[0])
    assert run.data.metrics["few_shot.all"] == 33.0
    assert json.loads(run.data.tags["ltray.final_keys"]) == ["all", "many", "group_std", "few_shot.all"]

    tracking.finish(children[0], "FAILED")
    before = _runs_of(client, tracking.experiment_id)
    assert tracking.resume_child(children[0]) == children[0]
    tracking.log_epoch_metrics(children[0], {"loss": 1.5}, step=3)
    assert _runs_of(client, tracking.experiment_id) == before
    assert client.get_run(children[0]).info.status == "RUNNING"
    assert max(m.step for m in client.get_metric_history(children[0], "loss")) == 3
    assert tracking.find_child(parent, "lr=1.0") == children[1]
    assert tracking.find_child(parent, "lr=2.0") is None

    tracking.finish(parent, "KILLED")
    resumed_parent = tracking.start_parent("sweep-a", {"grid": {"lr": [0.5, 1.0]}, "epochs": 3, "extra": 1}, tags)
    assert resumed_parent == parent
    assert _runs_of(client, tracking.experiment_id) == before
    assert client.get_run(parent).data.params["extra"] == "1"
    assert client.get_run(parent).info.status == "RUNNING"
    with pytest.raises(ConfigError, match="already has parameter epochs='3'"):
        tracking.start_parent("sweep-a", {"epochs": 4}, tags)

    for child in children:
        tracking.finish(child)
    tracking.finish(parent)
    assert client.get_run(parent).info.status == "FINISHED"
    with pytest.raises(ConfigError, match="run status must be one of"):
        tracking.finish(parent, "DONE")


@pytest.mark.slow
def test_tracking_pickles_to_workers_and_validates(mlflow_server: MlflowServer, experiment_name: str) -> None:
    tracking = SweepTracking(mlflow_server.tracking_uri, experiment_name)
    parent = tracking.start_parent("sweep-p", {}, {})
    copy = pickle.loads(pickle.dumps(tracking))
    assert "client" not in copy.__dict__
    assert copy.experiment_id == tracking.experiment_id
    child = copy.start_child(parent, "t0", {"seed": 1})
    assert tracking.client.get_run(child).data.tags["mlflow.parentRunId"] == parent
    assert SweepTracking(mlflow_server.tracking_uri, experiment_name).experiment_id == tracking.experiment_id

    other = SweepTracking(mlflow_server.tracking_uri, experiment_name + "-other")
    with pytest.raises(LtrayError, match=f"MLflow run {child} belongs to experiment"):
        other.resume_child(child)
    with pytest.raises(LtrayError, match="cannot be resumed"):
        tracking.resume_child("0" * 32)
    with pytest.raises(ConfigError, match="no quote characters"):
        tracking.start_parent("it's", {}, {})


@pytest.mark.slow
def test_sqlite_store_keeps_artifacts_next_to_database(
    mlflow_server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, experiment_name: str
) -> None:
    """Direct SQLite access (the embedded store of local runs), on the server's already migrated database."""
    monkeypatch.chdir(tmp_path)
    uri = mlflow_server.backend_store_uri
    tracking = SweepTracking(uri, experiment_name)
    parent = tracking.start_parent("local", {"a": 1}, {})
    tracking.client.log_text(parent, "hello", "note.txt")
    expected_root = mlflow_server.store_dir / "mlartifacts" / experiment_name
    assert tracking.client.get_experiment(tracking.experiment_id).artifact_location == expected_root.as_uri()
    assert (expected_root / parent / "artifacts" / "note.txt").read_text() == "hello"
    assert not (tmp_path / "mlruns").exists()
    assert MlflowClient(tracking_uri=mlflow_server.tracking_uri).get_run(parent).data.params == {"a": "1"}
