"""Sweep and trial runs in MLflow: one parent run per sweep, one nested child run per trial.

Every call goes through `MlflowClient` with an explicit run id, so it is safe from Ray worker processes and never
touches MLflow's global active-run state. A `SweepTracking` object pickles as its URI and experiment only.
"""

from __future__ import annotations

import json
import numbers
import os
import subprocess
import time
from collections.abc import Iterable, Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
)

from ltray.errors import ConfigError, LtrayError
from ltray.tracking.store import sqlite_path

TAG_SWEEP = "ltray.sweep"
TAG_ROLE = "ltray.role"
TAG_TRIAL = "ltray.trial"
TAG_CONFIG_KEY = "ltray.config_key"
TAG_FINAL_KEYS = "ltray.final_keys"
TAG_METHOD = "ltray.method"
TAG_SPLIT = "ltray.split"
TAG_DATASET = "ltray.dataset"
TAG_REFERENCE_BACKED = "ltray.reference_backed"
TAG_GIT_COMMIT = "mlflow.source.git.commit"
GIT_COMMIT_ENV = "LTRAY_GIT_COMMIT"
TAG_PARENT = "mlflow.parentRunId"
ROLE_PARENT = "parent"
ROLE_CHILD = "child"
TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")
TRUNCATION_MARK = "...[truncated]"


def flatten_config(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings become dotted keys; values become strings (lists/tuples via `str`, None as "None"), cut to
    MLflow's parameter limit when longer, ending in "...[truncated]"."""
    flat: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, prefix=f"{name}."))
            continue
        text = str(list(value)) if isinstance(value, tuple) else str(value)
        if len(text) > MAX_PARAM_VAL_LENGTH:
            text = text[: MAX_PARAM_VAL_LENGTH - len(TRUNCATION_MARK)] + TRUNCATION_MARK
        flat[name] = text
    return flat


def git_commit(repo_dir: Path | None = None) -> str:
    """`$LTRAY_GIT_COMMIT` when set (an installed copy without `.git`, e.g. the cluster image built with
    `--build-arg LTRAY_GIT_COMMIT=$(git rev-parse HEAD)`), else `git rev-parse HEAD` of `repo_dir` (default: the
    ltray checkout this package runs from; an installed wheel has none), or "unknown"."""
    if os.environ.get(GIT_COMMIT_ENV):
        return os.environ[GIT_COMMIT_ENV]
    directory = Path(repo_dir) if repo_dir is not None else Path(__file__).resolve().parents[2]
    if repo_dir is None and not (directory / ".git").exists():
        return "unknown"  # not a checkout: a git repository around site-packages is not ltray's
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else "unknown"


def standard_tags(
    method: str, split: str, dataset: str, reference_backed: bool, repo_dir: Path | None = None,
    commit: str | None = None,
) -> dict[str, str]:
    """The tags every ltray run carries: method, split, dataset, git commit (`commit`, else `git_commit(repo_dir)`)
    and whether a reference backs the mix."""
    return {
        TAG_METHOD: method,
        TAG_SPLIT: split,
        TAG_DATASET: dataset,
        TAG_GIT_COMMIT: commit or git_commit(repo_dir),
        TAG_REFERENCE_BACKED: "true" if reference_backed else "false",
    }


def _quoted(value: str, what: str) -> str:
    if not value or "'" in value or '"' in value:
        raise ConfigError(f"{what} {value!r} must be non-empty and contain no quote characters")
    return f"'{value}'"


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def log_metrics(client: MlflowClient, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    """Log `metrics` at `step`, one timestamp for all, in batches of MLflow's size limit."""
    timestamp = int(time.time() * 1000)
    entries = [Metric(key, float(value), timestamp, int(step)) for key, value in metrics.items()]
    for chunk in _chunks(entries, MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=chunk)


def flatten_report(report: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a (nested) final report as dotted metric keys; None marks a figure not computed and is
    skipped. Any other value is an error: per-class vectors go to artifacts, not metrics."""
    flat: dict[str, float] = {}
    for key, value in report.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_report(value, prefix=f"{name}."))
        elif value is None:
            continue
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            flat[name] = float(value)
        else:
            raise ConfigError(f"final report entry {name!r} is {type(value).__name__}, not a number")
    return flat


class SweepTracking:
    """Parent and child runs of sweeps in one MLflow experiment (created on first use)."""

    def __init__(self, tracking_uri: str, experiment_name: str, artifact_location: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.artifact_location = artifact_location or self._default_artifact_location()
        self.experiment_id = self._experiment_id()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("client", None)
        return state

    @cached_property
    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri)

    def _default_artifact_location(self) -> str | None:
        """A SQLite store keeps artifacts next to the database (MLflow would use ./mlruns of the current directory);
        a server decides for itself."""
        if not self.tracking_uri.lower().startswith("sqlite:"):
            return None
        folder = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in self.experiment_name)
        return (sqlite_path(self.tracking_uri).parent / "mlartifacts" / folder).as_uri()

    def _experiment_id(self) -> str:
        existing = self.client.get_experiment_by_name(self.experiment_name)
        if existing is not None:
            if existing.lifecycle_stage != "active":
                raise ConfigError(
                    f"MLflow experiment {self.experiment_name!r} is deleted; restore it or choose another name"
                )
            self.artifact_location = existing.artifact_location
            return str(existing.experiment_id)
        try:
            return str(self.client.create_experiment(self.experiment_name, artifact_location=self.artifact_location))
        except MlflowException:
            raced = self.client.get_experiment_by_name(self.experiment_name)
            if raced is None:
                raise
            return str(raced.experiment_id)

    def find_parent(self, sweep_name: str) -> str | None:
        """The run id of the sweep's parent run in this experiment (the latest one if several), or None."""
        return self._latest(f"tags.`{TAG_SWEEP}` = {_quoted(sweep_name, 'sweep name')} "
                            f"and tags.`{TAG_ROLE}` = '{ROLE_PARENT}'")

    def _latest(self, filter_string: str) -> str | None:
        runs = self.client.search_runs([self.experiment_id], filter_string=filter_string,
                                       order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0].info.run_id if runs else None

    def start_parent(
        self, sweep_name: str, params: Mapping[str, Any], tags: Mapping[str, str] | None = None
    ) -> str:
        """Create the sweep's parent run, or reuse the existing one when resuming (same `ltray.sweep` tag). A resumed
        sweep must have the same parameters: a changed value raises ConfigError, new ones are added."""
        run_id = self.find_parent(sweep_name)
        all_tags = {**(tags or {}), TAG_SWEEP: sweep_name, TAG_ROLE: ROLE_PARENT}
        if run_id is None:
            run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=sweep_name)
            run_id = run.info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
        self._log_params_and_tags(run_id, params, all_tags)
        return run_id

    def start_child(
        self,
        parent_run_id: str,
        trial_name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Create a trial's run nested under `parent_run_id` (tag `mlflow.parentRunId`)."""
        parent = self.client.get_run(parent_run_id)
        all_tags = {
            **(tags or {}),
            TAG_PARENT: parent_run_id,
            TAG_ROLE: ROLE_CHILD,
            TAG_TRIAL: trial_name,
            TAG_SWEEP: parent.data.tags.get(TAG_SWEEP, ""),
        }
        run = self.client.create_run(parent.info.experiment_id, tags=all_tags, run_name=trial_name)
        self._log_params_and_tags(run.info.run_id, params, {})
        return run.info.run_id

    def find_child(self, parent_run_id: str, trial_name: str) -> str | None:
        """The run id of the trial's child run under `parent_run_id` (the latest one if several), or None."""
        return self._latest(f"tags.`{TAG_PARENT}` = {_quoted(parent_run_id, 'run id')} "
                            f"and tags.`{TAG_TRIAL}` = {_quoted(trial_name, 'trial name')}")

    def resume_child(self, run_id: str) -> str:
        """Continue an existing trial run (same run id, marked RUNNING again); no new run is created."""
        try:
            run = self.client.get_run(run_id)
        except MlflowException as error:
            raise LtrayError(f"MLflow run {run_id} cannot be resumed: {error.message}") from None
        if run.info.experiment_id != self.experiment_id:
            raise LtrayError(
                f"MLflow run {run_id} belongs to experiment {run.info.experiment_id}, "
                f"not {self.experiment_name!r} ({self.experiment_id})"
            )
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def log_epoch_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        """Log one epoch's metrics (training loss, learning rate, kNN accuracy, ...) at `step` in one batch."""
        log_metrics(self.client, run_id, metrics, step)

    def log_final(self, run_id: str, report: Mapping[str, Any]) -> dict[str, float]:
        """Log the final evaluation figures (All, Many/Medium/Few, Std, class-std, few-shot, ...) as metrics, nested
        sections as dotted keys ("few_shot_1pct.all"); the keys are also recorded, in order, in the tag
        `ltray.final_keys`, which the sweep summary reads back. Returns the flattened metrics."""
        flat = flatten_report(report)
        log_metrics(self.client, run_id, flat)
        self.client.set_tag(run_id, TAG_FINAL_KEYS, json.dumps(list(flat)))
        return flat

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        """End a run with FINISHED, FAILED or KILLED."""
        if status not in TERMINAL_STATUSES:
            raise ConfigError(f"run status must be one of {', '.join(TERMINAL_STATUSES)}, got {status!r}")
        self.client.set_terminated(run_id, status=status)

    def _log_params_and_tags(self, run_id: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> None:
        logged = self.client.get_run(run_id).data.params
        flat = flatten_config(params)
        changed = [key for key, value in flat.items() if key in logged and logged[key] != value]
        if changed:
            key = changed[0]
            raise ConfigError(
                f"MLflow run {run_id} already has parameter {key}={logged[key]!r}, the resumed sweep has "
                f"{flat[key]!r} ({len(changed)} parameter(s) differ); start a new sweep name instead"
            )
        new_params = [Param(key, value) for key, value in flat.items() if key not in logged]
        run_tags = [RunTag(key, str(value)) for key, value in tags.items()]
        for chunk in _chunks(new_params, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(run_id, params=chunk)
        for chunk in _chunks(run_tags, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(run_id, tags=chunk)
