"""The results page of a benchmark sweep: per-method figures, differences to SimCLR paired by split, the
balanced-data reference, the SimCLR per-class accuracies, and a reading of what is beyond noise.

Everything here is read back from the sweep's MLflow child runs (final figures, and `eval_report.json` for the
per-class accuracies), so the page is a function of the tracked results; no number is typed by hand.

Paired differences: for a method m and a figure f, d_k = f(m, split k) − f(SimCLR, split k) over the splits both
finished. The page gives mean ± sample std of d_k, the number of splits where m is ahead, and a two-sided paired
t-test at the 5% level (t = mean / (std / √n), n − 1 degrees of freedom): "within noise" when it is not significant.
With 5 splits that needs a mean difference of about 1.24 times the std of the differences.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ltray.errors import LtrayError

BASELINE = "simclr"
FIGURES: tuple[tuple[str, str], ...] = (
    ("full_all", "All"),
    ("full_many", "Many"),
    ("full_medium", "Medium"),
    ("full_few", "Few"),
    ("full_group_std", "Std"),
    ("few_all", "Few-shot (S_b)"),
)
STD_FIGURES = ("full_group_std",)
EVAL_REPORT = "eval_report.json"


@dataclass
class TrialResult:
    """One finished trial: its configuration, split, final figures and per-class accuracies of the main probe."""

    config_key: str
    split: int
    figures: dict[str, float]
    per_class: list[float] = field(default_factory=list)
    pretrain_counts: list[int] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)


def table_figures(results: Sequence[TrialResult]) -> list[tuple[str, str]]:
    """The figures of `FIGURES` the trials report, then the k-shot probe's overall one (`shot<k>_all`) if any."""
    shots = next((key for r in results for key in r.figures if key.startswith("shot") and key.endswith("_all")), None)
    figures = [(key, label) for key, label in FIGURES if any(key in r.figures for r in results)]
    if shots:
        figures.append((shots, f"{shots[4:-4]}-shot"))
    return figures


def collect_results(tracking_uri: str, parent_run_id: str, per_class_of: Sequence[str] = ()) -> list[TrialResult]:
    """The FINISHED child runs of a sweep; `eval_report.json` is read for the configurations in `per_class_of`."""
    from mlflow.tracking import MlflowClient

    from ltray.tracking.runs import TAG_CONFIG_KEY, TAG_FINAL_KEYS, TAG_PARENT, TAG_SPLIT

    client = MlflowClient(tracking_uri)
    parent = client.get_run(parent_run_id)
    children = client.search_runs([parent.info.experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}'",
                                  max_results=5000)
    results = []
    for child in children:
        keys = json.loads(child.data.tags.get(TAG_FINAL_KEYS, "[]"))
        if child.info.status != "FINISHED" or not keys:
            continue
        result = TrialResult(
            config_key=child.data.tags.get(TAG_CONFIG_KEY, "?"), split=int(child.data.tags.get(TAG_SPLIT, "0")),
            figures={key: child.data.metrics[key] for key in keys if key in child.data.metrics},
        )
        if result.config_key in per_class_of:
            with tempfile.TemporaryDirectory(prefix="ltray-results-") as folder:
                report = json.loads(Path(client.download_artifacts(child.info.run_id, EVAL_REPORT, folder)).read_text())
            result.per_class = list(report["per_class"].get("full", []))
            result.pretrain_counts = list(report["pretrain_counts"])
            result.class_names = list(report["class_names"])
        results.append(result)
    if not results:
        raise LtrayError(f"sweep parent run {parent_run_id} has no finished trial")
    return results


def by_config(results: Sequence[TrialResult]) -> dict[str, dict[int, TrialResult]]:
    grouped: dict[str, dict[int, TrialResult]] = {}
    for result in results:
        grouped.setdefault(result.config_key, {})[result.split] = result
    return grouped


@dataclass(frozen=True)
class Paired:
    """Paired differences of one figure between a method and the baseline over their common splits."""

    mean: float
    std: float
    n: int
    ahead: int
    p_value: float

    @property
    def significant(self) -> bool:
        return self.n >= 2 and self.p_value < 0.05


def paired(method: Mapping[int, TrialResult], baseline: Mapping[int, TrialResult], key: str) -> Paired | None:
    from scipy import stats

    splits = sorted(k for k in method if k in baseline and key in method[k].figures and key in baseline[k].figures)
    if not splits:
        return None
    ours = [method[k].figures[key] for k in splits]
    theirs = [baseline[k].figures[key] for k in splits]
    diffs = [a - b for a, b in zip(ours, theirs)]
    mean = statistics.fmean(diffs)
    std = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    if len(diffs) < 2:
        p_value = 1.0
    elif std == 0.0:  # the t statistic is undefined; a constant non-zero difference is as certain as it gets
        p_value = 0.0 if mean != 0.0 else 1.0
    else:
        p_value = float(stats.ttest_rel(ours, theirs).pvalue)
    return Paired(mean, std, len(diffs), sum(d > 0 for d in diffs), p_value)


def _cell(values: Sequence[float]) -> str:
    """Mean ± population std (ddof 0) over splits, as the summaries of docs/math/data_and_eval.md §9."""
    std = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {std:.2f}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def figures_table(grouped: Mapping[str, Mapping[int, TrialResult]], order: Sequence[str],
                  figures: Sequence[tuple[str, str]]) -> list[str]:
    lines = [_row(["configuration", "splits", *(label for _, label in figures)]),
             _row(["---"] * (len(figures) + 2))]
    for config in order:
        runs = grouped[config]
        cells = []
        for key, _ in figures:
            values = [r.figures[key] for r in runs.values() if key in r.figures]
            cells.append(_cell(values) if values else "-")
        lines.append(_row([config, str(len(runs)), *cells]))
    return lines


def paired_table(grouped: Mapping[str, Mapping[int, TrialResult]], order: Sequence[str],
                 figures: Sequence[tuple[str, str]]) -> list[str]:
    lines = [_row(["configuration − SimCLR", *(label for _, label in figures)]), _row(["---"] * (len(figures) + 1))]
    for config in order:
        if config == BASELINE:
            continue
        cells = []
        for key, _ in figures:
            result = paired(grouped[config], grouped[BASELINE], key)
            if result is None:
                cells.append("-")
                continue
            mark = "**" if result.significant else ""
            cells.append(f"{mark}{result.mean:+.2f} ± {result.std:.2f}{mark} ({result.ahead}/{result.n})")
        lines.append(_row([config, *cells]))
    return lines


def per_class_table(grouped: Mapping[str, Mapping[int, TrialResult]], configs: Sequence[str]) -> list[str]:
    """Per-class accuracy of the main probe, mean ± std over splits, with the mean pre-training count per class."""
    present = [c for c in configs if c in grouped and any(r.per_class for r in grouped[c].values())]
    if not present:
        return []
    first = next(r for r in grouped[present[0]].values() if r.per_class)
    lines = [_row(["class", "name", f"pre-training images ({present[0]}, mean over splits)", *present]),
             _row(["---"] * (len(present) + 3))]
    for c, name in enumerate(first.class_names):
        counts = [r.pretrain_counts[c] for r in grouped[present[0]].values() if r.pretrain_counts]
        cells = []
        for config in present:
            values = [r.per_class[c] for r in grouped[config].values() if r.per_class]
            cells.append(_cell(values))
        lines.append(_row([str(c), name, f"{statistics.fmean(counts):.0f}", *cells]))
    return lines


def reading(grouped: Mapping[str, Mapping[int, TrialResult]], order: Sequence[str],
            figures: Sequence[tuple[str, str]], reference: str | None) -> list[str]:
    """Plain sentences derived from the paired tests: what differs from SimCLR beyond noise, and what does not."""
    lines = []
    for config in order:
        if config == BASELINE:
            continue
        better, worse, noise = [], [], []
        for key, label in figures:
            result = paired(grouped[config], grouped[BASELINE], key)
            if result is None:
                continue
            gain = -result.mean if key in STD_FIGURES else result.mean  # a lower Std is more balanced
            text = f"{label} {result.mean:+.2f} (p = {result.p_value:.2f})"
            if not result.significant:
                noise.append(label)
            elif gain > 0:
                better.append(text)
            else:
                worse.append(text)
        parts = [prefix + ", ".join(items) for prefix, items in
                 (("better than SimCLR on ", better), ("worse on ", worse), ("within noise on ", noise)) if items]
        role = " (the balanced-data reference)" if config == reference else ""
        lines.append(f"- `{config}`{role}: " + "; ".join(parts) + ".")
    return lines


def results_markdown(results: Sequence[TrialResult], *, title: str, command: str, commit: str, wall_seconds: float,
                     machine: str, reference: str | None, notes: Sequence[str] = ()) -> str:
    """The whole results page."""
    grouped = by_config(results)
    if BASELINE not in grouped:
        raise LtrayError(f"the benchmark needs finished {BASELINE} trials to pair against")
    order = [BASELINE] + sorted(c for c in grouped if c not in (BASELINE, reference))
    if reference in grouped:
        order.append(reference)
    figures = table_figures(results)
    splits = sorted({r.split for r in results})
    lines = [
        f"# {title}", "",
        "This page is written by `experiments/benchmark_embedded.py`; rerun the command to regenerate it.", "",
        f"- command: `{command}`",
        f"- commit: `{commit}`",
        f"- wall time: {wall_seconds / 60:.1f} min on {machine}",
        f"- splits: {', '.join(map(str, splits))}; {len(results)} finished trials", "",
        "## Figures (mean ± std over splits)", "",
        "All / Many / Medium / Few: the balanced-set (`train_full`) linear probe's class-balanced test accuracy (%) "
        "over all classes and the head / middle / tail thirds of the pre-training class counts; Std: the std of the "
        "three group accuracies (points of %, lower is more balanced); Few-shot: the linear probe on the few-shot set "
        "S_b; k-shot: the k-shot probe (mean over draws).", "",
        *figures_table(grouped, order, figures), "",
        "## Differences to SimCLR, paired by split", "",
        "Each cell: mean ± std of (method − SimCLR) over the splits, then (splits where the method is ahead / "
        "splits). **Bold**: a two-sided paired t-test over the splits rejects 'no difference' at the 5% level.", "",
        *paired_table(grouped, order, figures), "",
        "## Reading", "",
        *reading(grouped, order, figures, reference), "",
        *notes,
    ]
    per_class = per_class_table(grouped, [c for c in (BASELINE, reference) if c])
    if per_class:
        lines += ["", "## Per-class accuracy of SimCLR features (balanced-set linear probe, %)", "",
                  "One row per class (its photograph); the pre-training count is the class's mean number of images "
                  "in the pre-training set over the splits.", "", *per_class]
    return "\n".join(lines).rstrip() + "\n"
