"""Long-tail metrics: per-class accuracy, Many/Medium/Few groups, Std, and the cross-run summary.

Specification: docs/math/data_and_eval.md §3 (groups and per-run metrics) and §9 (summary across splits).

Units, used everywhere in ltray:
- accuracies (`all`, `many`, `medium`, `few`, `top1`, `top5`, per-class) are percentages in [0, 100];
- `group_std` (the papers' "Std") and `class_std` are population standard deviations (ddof 0) of those
  percentages, so they are in points of %, as the papers print them (SDCLR's Std of 5.23 is `group_std` 5.23).
"""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, TypedDict, cast

import numpy as np
import torch

from ltray.errors import ConfigError, DataError
from ltray.storage import Storage

Grouping = Literal["thirds", "thresholds", "lotar_343"]
GROUP_NAMES: tuple[str, str, str] = ("many", "medium", "few")
METRIC_LABELS: dict[str, str] = {
    "all": "All (%)",
    "many": "Many (%)",
    "medium": "Medium (%)",
    "few": "Few (%)",
    "group_std": "Std (points)",
    "class_std": "class-std (points)",
    "top1": "top-1 (%)",
    "top5": "top-5 (%)",
}


class RunSummary(TypedDict):
    """The cross-run summary of `summarize_runs`."""

    n_runs: int
    runs: list[str]
    missing: list[str]
    mean: dict[str, float]
    std: dict[str, float]


SummaryRow = tuple[str, RunSummary]
"""(configuration name, its summary)."""


def _as_int_array(values: np.ndarray | torch.Tensor | Sequence[int], name: str) -> np.ndarray:
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if array.ndim != 1:
        raise DataError(f"{name} must be 1-D, got shape {tuple(array.shape)}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{name} must hold integers, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def per_class_accuracy(
    pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor, num_classes: int
) -> np.ndarray:
    """Per-class test accuracy a_c in % (data_and_eval.md §3). A class with no test example gets NaN."""
    pred_array = _as_int_array(pred, "pred")
    target_array = _as_int_array(target, "target")
    if pred_array.shape != target_array.shape:
        raise DataError(f"pred and target differ in length: {pred_array.size} vs {target_array.size}")
    if num_classes < 1:
        raise ConfigError(f"num_classes must be positive, got {num_classes}")
    for name, array in (("pred", pred_array), ("target", target_array)):
        if array.size and (array.min() < 0 or array.max() >= num_classes):
            raise DataError(f"{name} holds labels outside [0, {num_classes})")
    total = np.bincount(target_array, minlength=num_classes)
    correct = np.bincount(target_array[pred_array == target_array], minlength=num_classes)
    accuracy = np.full(num_classes, np.nan, dtype=np.float64)
    present = total > 0
    accuracy[present] = 100.0 * correct[present] / total[present]
    return accuracy


def _warn_on_straddling_ties(sorted_counts: np.ndarray, boundaries: Sequence[int], grouping: str) -> None:
    for boundary in boundaries:
        if 0 < boundary < sorted_counts.size and sorted_counts[boundary - 1] == sorted_counts[boundary]:
            warnings.warn(
                f"grouping {grouping!r}: classes with count {int(sorted_counts[boundary])} straddle a group boundary; "
                "ties are broken by class id",
                stacklevel=3,
            )


def group_classes(
    pretrain_counts: np.ndarray | Sequence[int],
    grouping: Grouping,
    thresholds: tuple[int, int] = (100, 20),
) -> dict[str, np.ndarray]:
    """Split the classes into Many / Medium / Few (data_and_eval.md §3).

    `pretrain_counts[c]` is the number of images of class c in the long-tailed pre-training set (`D_i` of the same
    split, also for models pre-trained on `D_b`). Returns ascending class ids per group, keyed "many", "medium", "few".
    - `thirds`: stable ascending sort (ties by class id), t = ⌊C/3⌋; Few = first t, Medium = next t, Many = rest.
    - `thresholds` = (many_above, few_below): Many > many_above, Few < few_below, Medium in between (inclusive).
    - `lotar_343`: stable descending sort; Many = first t, Few = last t, Medium = rest.
    """
    counts = _as_int_array(pretrain_counts, "pretrain_counts")
    if counts.size and counts.min() < 0:
        raise DataError("pretrain_counts must be non-negative")
    num_classes = counts.size
    if grouping == "thresholds":
        many_above, few_below = thresholds
        if few_below > many_above:
            raise ConfigError(f"thresholds must be (many_above, few_below) with few_below <= many_above, got {thresholds}")
        many = np.flatnonzero(counts > many_above)
        few = np.flatnonzero(counts < few_below)
        medium = np.flatnonzero((counts >= few_below) & (counts <= many_above))
        return {"many": many, "medium": medium, "few": few}
    if grouping not in ("thirds", "lotar_343"):
        raise ConfigError(f"unknown grouping {grouping!r}; expected 'thirds', 'thresholds' or 'lotar_343'")
    if num_classes < 3:
        raise ConfigError(f"grouping {grouping!r} needs at least 3 classes, got {num_classes}")
    third = num_classes // 3
    if grouping == "thirds":
        order = np.argsort(counts, kind="stable")
        _warn_on_straddling_ties(counts[order], (third, 2 * third), grouping)
        few, medium, many = order[:third], order[third : 2 * third], order[2 * third :]
    else:
        order = np.argsort(-counts, kind="stable")
        _warn_on_straddling_ties(counts[order], (third, num_classes - third), grouping)
        many, medium, few = order[:third], order[third : num_classes - third], order[num_classes - third :]
    return {"many": np.sort(many), "medium": np.sort(medium), "few": np.sort(few)}


def _validate_groups(groups: Mapping[str, np.ndarray], num_classes: int) -> dict[str, np.ndarray]:
    if set(groups) != set(GROUP_NAMES):
        raise ConfigError(f"groups must have exactly the keys {GROUP_NAMES}, got {sorted(groups)}")
    arrays = {name: _as_int_array(groups[name], f"groups[{name!r}]") for name in GROUP_NAMES}
    members = np.concatenate([arrays[name] for name in GROUP_NAMES])
    if members.size != num_classes or not np.array_equal(np.sort(members), np.arange(num_classes)):
        raise ConfigError(f"groups must partition the {num_classes} classes (each class in exactly one group)")
    return arrays


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, k: int) -> float:
    """Sample-level top-k accuracy in %; k is capped at the number of classes."""
    if logits.ndim != 2 or targets.ndim != 1 or logits.shape[0] != targets.shape[0]:
        raise DataError(f"logits [N, C] and targets [N] expected, got {tuple(logits.shape)} and {tuple(targets.shape)}")
    if targets.numel() == 0:
        raise DataError("top-k accuracy of an empty set is undefined")
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hits = (top == targets.to(top.device).unsqueeze(1)).any(dim=1)
    return float(hits.double().mean().item() * 100.0)


def long_tail_report(
    per_class_acc: np.ndarray,
    groups: Mapping[str, np.ndarray] | None = None,
    *,
    logits: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
) -> dict[str, float]:
    """Per-run metrics of data_and_eval.md §3. Keys: `all` (class-balanced mean of a_c, %), `class_std` (population
    std of the a_c, in points of %); with `groups`: `many`, `medium`, `few` (unweighted means over each group's
    classes, %) and `group_std` (population std of the three group accuracies, in points of % as the papers' Std);
    with `logits` and `targets`: `top1`, `top5` (sample-level, %). A group with no class gets NaN (with a warning),
    as does `group_std` then."""
    accuracy = np.asarray(per_class_acc, dtype=np.float64)
    if accuracy.ndim != 1 or accuracy.size == 0:
        raise DataError(f"per_class_acc must be a non-empty 1-D array, got shape {accuracy.shape}")
    absent = np.flatnonzero(np.isnan(accuracy))
    if absent.size:
        raise DataError(
            f"classes {absent.tolist()} have no test example, so All (the class-balanced mean) is undefined"
        )
    report: dict[str, float] = {
        "all": float(accuracy.mean()),
        "class_std": float(np.std(accuracy)),
    }
    if groups is not None:
        members = _validate_groups(groups, accuracy.size)
        group_accuracy = []
        for name in GROUP_NAMES:
            if members[name].size == 0:
                warnings.warn(f"group {name!r} has no class; its accuracy and group_std are NaN", stacklevel=2)
                value = math.nan
            else:
                value = float(accuracy[members[name]].mean())
            report[name] = value
            group_accuracy.append(value)
        report["group_std"] = float(np.std(np.asarray(group_accuracy)))
    if (logits is None) != (targets is None):
        raise ConfigError("pass both logits and targets, or neither")
    if logits is not None and targets is not None:
        report["top1"] = topk_accuracy(logits, targets, 1)
        report["top5"] = topk_accuracy(logits, targets, 5)
    return report


def evaluate_logits(
    logits: torch.Tensor,
    targets: torch.Tensor,
    num_classes: int,
    groups: Mapping[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, dict[str, float]]:
    """Per-class accuracy of the arg-max prediction and the long-tail report, top-1/top-5 included."""
    predictions = logits.argmax(dim=1)
    accuracy = per_class_accuracy(predictions, targets, num_classes)
    return accuracy, long_tail_report(accuracy, groups, logits=logits, targets=targets)


def _numeric_keys(report: Mapping[str, object]) -> list[str]:
    return [key for key, value in report.items() if key != "run"
            and isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))]


def summarize_runs(
    reports: Sequence[Mapping[str, object]], expected: Sequence[str] | None = None
) -> RunSummary:
    """Mean and population std (ddof 0) of every figure over runs (data_and_eval.md §9). Each report is a dict of
    numeric metrics; with `expected`, each must also carry its run name under "run". Expected runs without a report
    are listed under "missing" and excluded, never imputed."""
    names = [str(report["run"]) if "run" in report else f"run{position}" for position, report in enumerate(reports)]
    if expected is not None:
        if any("run" not in report for report in reports):
            raise ConfigError("with `expected`, every report needs a 'run' name")
        if len(set(expected)) != len(expected):
            raise ConfigError("expected run names must be unique")
        unknown = sorted(set(names) - set(expected))
        if unknown:
            raise ConfigError(f"reports for runs not in `expected`: {unknown}")
    if len(set(names)) != len(names):
        raise ConfigError(f"duplicate run names among the reports: {names}")
    missing = [name for name in expected if name not in names] if expected is not None else []
    if not reports:
        raise DataError(f"no runs to summarise (missing: {missing})")
    metrics = _numeric_keys(reports[0])
    for name, report in zip(names, reports):
        keys = _numeric_keys(report)
        if sorted(keys) != sorted(metrics):
            raise DataError(f"run {name!r} reports {sorted(keys)}, but run {names[0]!r} reports {sorted(metrics)}")
    values = {metric: np.array([float(cast(float, report[metric])) for report in reports]) for metric in metrics}
    return {
        "n_runs": len(reports),
        "runs": names,
        "missing": missing,
        "mean": {metric: float(values[metric].mean()) for metric in metrics},
        "std": {metric: float(values[metric].std()) for metric in metrics},
    }


def summary_metrics(summary: RunSummary) -> dict[str, float]:
    """Flatten a summary into the parent-run MLflow metrics `<metric>_mean`, `<metric>_std` and `n_runs`."""
    flat: dict[str, float] = {"n_runs": float(summary["n_runs"])}
    for metric, value in summary["mean"].items():
        flat[f"{metric}_mean"] = value
        flat[f"{metric}_std"] = summary["std"][metric]
    return flat


def _summary_columns(rows: Sequence[SummaryRow]) -> list[str]:
    present = {metric for _, summary in rows for metric in summary["mean"]}
    return [metric for metric in METRIC_LABELS if metric in present] + sorted(present - set(METRIC_LABELS))


def format_summary_table(rows: Sequence[SummaryRow]) -> str:
    """Markdown table of (configuration, summary) rows: mean ± std with 2 decimals, accuracies in %, Std and
    class-std in points of % (labelled in the header); missing runs listed in the last column."""
    if not rows:
        raise ConfigError("no rows to format")
    columns = _summary_columns(rows)
    header = ["configuration", "n"] + [METRIC_LABELS.get(metric, metric) for metric in columns] + ["missing"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, summary in rows:
        means, stds = summary["mean"], summary["std"]
        cells = [name, str(summary["n_runs"])]
        cells += [f"{means[metric]:.2f} ± {stds[metric]:.2f}" if metric in means else "–" for metric in columns]
        cells.append(", ".join(summary["missing"]) or "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_csv(rows: Sequence[SummaryRow]) -> str:
    """The summaries as CSV text (full precision; units as in this module's docstring)."""
    if not rows:
        raise ConfigError("no rows to write")
    columns = _summary_columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["configuration", "n_runs", "missing"] + [f"{metric}_{stat}" for metric in columns for stat in ("mean", "std")]
    )
    for name, summary in rows:
        means: Mapping[str, float] = summary["mean"]
        stds: Mapping[str, float] = summary["std"]
        values = []
        for metric in columns:
            values += [repr(means[metric]), repr(stds[metric])] if metric in means else ["", ""]
        writer.writerow([name, summary["n_runs"], ";".join(summary["missing"])] + values)
    return buffer.getvalue()


def write_summary_csv(rows: Sequence[SummaryRow], path: str | os.PathLike[str]) -> None:
    """Write `summary_csv(rows)` atomically (`Storage.write_text`), with CSV's CRLF line ends."""
    Storage(str(Path(path))).write_text(summary_csv(rows).replace("\n", "\r\n"))
