"""Run and sweep artifacts in MLflow: the per-class table and plot of a trial, the summary of a sweep
(data_and_eval.md §3 per-run metrics, §9 summary across splits)."""

from __future__ import annotations

import csv
import io
import json
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from ltray.errors import DataError, LtrayError
from ltray.eval.figures import new_figure, per_class_axes, save_png
from ltray.eval.metrics import GROUP_NAMES, RunSummary, SummaryRow, summarize_runs, summary_metrics
from ltray.eval.summary import sweep_markdown, sweep_title
from ltray.tracking.runs import (
    ROLE_PARENT,
    TAG_CONFIG_KEY,
    TAG_FINAL_KEYS,
    TAG_PARENT,
    TAG_ROLE,
    TAG_SWEEP,
    TAG_TRIAL,
    log_metrics,
)
from ltray.tracking.store import check_tracking_reachable, sqlite_path

PER_CLASS_CSV = "per_class.csv"
PER_CLASS_PNG = "per_class.png"
SUMMARY_MD = "summary.md"
SWEEP_GRID = "trials.json"
SUMMARY_CSV = "summary.csv"
DEFAULT_CONFIG_KEY = "default"
GROUP_COLOURS = {"many": "tab:blue", "medium": "tab:orange", "few": "tab:red"}


def _class_groups(groups: Mapping[str, Sequence[int]] | None, num_classes: int) -> list[str]:
    labels = [""] * num_classes
    for name, members in (groups or {}).items():
        for class_id in np.asarray(members, dtype=np.int64).tolist():
            if not 0 <= class_id < num_classes:
                raise DataError(f"group {name!r} names class {class_id}, outside [0, {num_classes})")
            labels[class_id] = name
    return labels


def _checked(per_class_acc: Sequence[float], train_counts: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    accuracy = np.asarray(per_class_acc, dtype=np.float64)
    counts = np.asarray(train_counts, dtype=np.int64)
    if accuracy.ndim != 1 or accuracy.shape != counts.shape:
        raise DataError(
            f"per-class accuracy and training counts must be 1-D of the same length, "
            f"got {accuracy.shape} and {counts.shape}"
        )
    return accuracy, counts


def per_class_table(
    per_class_acc: Sequence[float],
    train_counts: Sequence[int],
    class_names: Sequence[str] | None = None,
    groups: Mapping[str, Sequence[int]] | None = None,
) -> str:
    """CSV with one row per class: class_id, class_name, group, train_count, accuracy (%, full precision; "nan"
    for a class without test example). Name and group are empty when not given."""
    accuracy, counts = _checked(per_class_acc, train_counts)
    if class_names is not None and len(class_names) != accuracy.size:
        raise DataError(f"{len(class_names)} class names for {accuracy.size} classes")
    group_labels = _class_groups(groups, accuracy.size)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["class_id", "class_name", "group", "train_count", "accuracy"])
    for class_id in range(accuracy.size):
        name = class_names[class_id] if class_names is not None else ""
        writer.writerow([class_id, name, group_labels[class_id], int(counts[class_id]), repr(float(accuracy[class_id]))])
    return buffer.getvalue()


def plot_per_class(
    per_class_acc: Sequence[float],
    train_counts: Sequence[int],
    path: Path,
    groups: Mapping[str, Sequence[int]] | None = None,
    title: str | None = None,
) -> Path:
    """Scatter of per-class test accuracy (%) against the class's training count (log x axis), one point per class,
    coloured by Many/Medium/Few when `groups` is given, under `title` (the run and the probe). Laid out so that
    nothing is clipped; written as PNG via a temporary name, then moved."""
    accuracy, counts = _checked(per_class_acc, train_counts)
    if counts.size and counts.min() <= 0:
        raise DataError("training counts must be positive for a log axis")
    figure = new_figure(6.4, 4.4)
    axes = figure.add_subplot()
    labels = np.asarray(_class_groups(groups, accuracy.size), dtype=object)
    for name in (*GROUP_NAMES, ""):
        selected = labels == name
        if selected.any():
            axes.scatter(
                counts[selected], accuracy[selected], s=14,
                color=GROUP_COLOURS.get(name, "tab:gray"), label=name or None,
            )
    per_class_axes(axes, "training images of the class (log scale)")
    if groups:
        axes.legend(loc="lower right")
    if title:
        axes.set_title(title, fontsize="medium")
    return save_png(figure, Path(path))


def write_run_artifacts(
    folder: Path,
    per_class_acc: Sequence[float],
    train_counts: Sequence[int],
    groups: Mapping[str, Sequence[int]] | None,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> list[Path]:
    """Write a trial's `per_class.csv` and `per_class.png` (titled `title`) into `folder`; returns their paths."""
    table, plot = folder / PER_CLASS_CSV, folder / PER_CLASS_PNG
    table.write_text(per_class_table(per_class_acc, train_counts, class_names, groups))
    plot_per_class(per_class_acc, train_counts, plot, groups, title)
    return [table, plot]


def sweep_summary_metrics(summary_rows: Sequence[SummaryRow]) -> dict[str, float]:
    """Parent-run metrics `<metric>_mean`, `<metric>_std`, `n_runs` (data_and_eval.md §9); with several
    configurations in one sweep each key is prefixed by its configuration, e.g. `simclr/all_mean`."""
    metrics: dict[str, float] = {}
    for config_name, summary in summary_rows:
        prefix = re.sub(r"[^A-Za-z0-9_\-. :]", "_", config_name) + "/" if len(summary_rows) > 1 else ""
        metrics.update({f"{prefix}{key}": value for key, value in summary_metrics(summary).items()})
    return metrics


def log_sweep_summary(
    client: MlflowClient,
    parent_run_id: str,
    summary_rows: Sequence[SummaryRow],
    markdown: str,
    csv_text: str,
) -> dict[str, float]:
    """Attach `summary.md` and `summary.csv` to the sweep's parent run and log its summary metrics (configurations
    without any complete run, n_runs 0, only contribute `n_runs`); returns the logged metrics."""
    metrics = sweep_summary_metrics(summary_rows)
    log_metrics(client, parent_run_id, metrics)
    with tempfile.TemporaryDirectory(prefix="ltray-summary-") as folder:
        (Path(folder) / SUMMARY_MD).write_text(markdown)
        (Path(folder) / SUMMARY_CSV).write_text(csv_text)
        client.log_artifacts(parent_run_id, folder)
    return metrics


def _paged(search: Callable[..., Any], *args: Any, **kwargs: Any) -> Iterator[Any]:
    """Every result of an MLflow search, page after page."""
    token: str | None = None
    while True:
        page = search(*args, max_results=1000, page_token=token, **kwargs)
        yield from page
        token = page.token
        if not token:
            return


def _all_runs(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> Iterator[Run]:
    return _paged(client.search_runs, experiment_ids, filter_string=filter_string)


def _final_report(child: Run, trial: str) -> dict[str, object] | None:
    """The trial's final figures when it FINISHED and logged all of them (`ltray.final_keys`), else None."""
    final_keys = json.loads(child.data.tags.get(TAG_FINAL_KEYS, "[]"))
    if child.info.status != "FINISHED" or not final_keys:
        return None
    if any(key not in child.data.metrics for key in final_keys):
        return None
    return {"run": trial, **{key: child.data.metrics[key] for key in final_keys}}


def sweep_summary_rows(client: MlflowClient, parent: Run) -> list[SummaryRow]:
    """Summaries of a sweep's child runs, grouped by their `ltray.config_key` tag (sorted by key). A trial run again
    under the same name counts once, by its latest run. A trial counts when that run FINISHED with its final figures;
    every other trial (failed, killed, still running, no final report) is listed as missing and excluded, and so is
    every trial of the sweep's grid (`trials.json` on the parent run) that never created a run."""
    children = _all_runs(client, [parent.info.experiment_id], f"tags.`{TAG_PARENT}` = '{parent.info.run_id}'")
    latest: dict[str, dict[str, Run | None]] = {}
    for trial, config_key in sweep_grid(client, parent.info.run_id).items():
        latest.setdefault(config_key, {})[trial] = None
    for child in sorted(children, key=lambda run: (run.info.start_time or 0, run.info.run_id)):
        config_key = child.data.tags.get(TAG_CONFIG_KEY, DEFAULT_CONFIG_KEY)
        trial = child.data.tags.get(TAG_TRIAL, child.info.run_name or child.info.run_id)
        latest.setdefault(config_key, {})[trial] = child
    return summary_rows({config_key: {trial: None if child is None else _final_report(child, trial)
                                      for trial, child in trials.items()}
                         for config_key, trials in latest.items()})


def summary_rows(reports: Mapping[str, Mapping[str, Mapping[str, object] | None]]) -> list[SummaryRow]:
    """configuration key -> {trial -> its final report (`{"run": trial, figure: value, ...}`) or None when it has
    none} as summary rows sorted by key: mean ± std over the trials with a report, the others listed as missing."""
    rows: list[SummaryRow] = []
    for config_key in sorted(reports):
        trials = reports[config_key]
        finished = [dict(report) for report in trials.values() if report is not None]
        summary: RunSummary = (summarize_runs(finished, expected=list(trials)) if finished
                               else {"n_runs": 0, "runs": [], "missing": list(trials), "mean": {}, "std": {}})
        rows.append((config_key, summary))
    return rows


def log_sweep_grid(client: MlflowClient, parent_run_id: str, grid: Mapping[str, str]) -> None:
    """Record the sweep's trials (name -> configuration key) on its parent run as `trials.json`."""
    client.log_text(parent_run_id, json.dumps(dict(grid), indent=1, sort_keys=True), SWEEP_GRID)


def sweep_grid(client: MlflowClient, parent_run_id: str) -> dict[str, str]:
    """The trials a sweep was started with (`log_sweep_grid`); empty for a sweep that recorded none."""
    if not any(item.path == SWEEP_GRID for item in client.list_artifacts(parent_run_id)):
        return {}
    with tempfile.TemporaryDirectory(prefix="ltray-grid-") as folder:
        path = client.download_artifacts(parent_run_id, SWEEP_GRID, folder)
        return {str(trial): str(key) for trial, key in json.loads(Path(path).read_text()).items()}


def find_sweep_parent(client: MlflowClient, sweep_name: str) -> Run:
    """The latest parent run tagged `ltray.sweep = sweep_name` in any experiment; LtrayError listing the known
    sweeps otherwise."""
    if not sweep_name or "'" in sweep_name or '"' in sweep_name:
        raise LtrayError(f"invalid sweep name {sweep_name!r}")
    experiment_ids = [experiment.experiment_id for experiment in _paged(client.search_experiments)]
    parent_filter = f"tags.`{TAG_ROLE}` = '{ROLE_PARENT}'"
    parents = list(_all_runs(client, experiment_ids, f"tags.`{TAG_SWEEP}` = '{sweep_name}' and {parent_filter}"))
    if parents:
        return max(parents, key=lambda run: run.info.start_time or 0)
    known = sorted({run.data.tags.get(TAG_SWEEP, "") for run in _all_runs(client, experiment_ids, parent_filter)} - {""})
    listing = ", ".join(known) if known else "none"
    raise LtrayError(f"no sweep named {sweep_name!r} in the MLflow store; known sweeps: {listing}")


def fetch_sweep_summary(tracking_uri: str, sweep_name: str) -> str:
    """Rebuild a sweep's summary from its parent and child runs (`ltray report --sweep`): the very Markdown the
    sweep printed and attached (`ltray.eval.summary.sweep_markdown`), mean ± std over splits for every figure."""
    if tracking_uri.lower().startswith("sqlite:") and not sqlite_path(tracking_uri).is_file():
        raise LtrayError(f"no MLflow store at {sqlite_path(tracking_uri)}; pass the tracking URI the sweep used")
    check_tracking_reachable(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    parent = find_sweep_parent(client, sweep_name)
    rows = sweep_summary_rows(client, parent)
    if not rows:
        raise LtrayError(f"sweep {sweep_name!r} (run {parent.info.run_id}) has no trial runs yet")
    return sweep_markdown(rows, sweep_title(sweep_name))
