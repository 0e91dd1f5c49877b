"""Figures of a sweep, for its parent run: the comparison of its configurations and their per-class accuracy.

- `comparison.png`: per configuration, All / Many / Medium / Few of the main probe as mean ± std over its runs
  (splits, seeds); beside it, where the sweep has a baseline configuration, each other configuration's paired
  difference to it (runs matched by split and seed), mean ± std of the differences.
- `per_class_all.png`: per-class test accuracy against the class's pre-training count (log axis) for every
  configuration on one plot: each run's classes as faint points, the configuration's mean per count bin as a line.

Accuracies and differences are in % (points).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ltray.storage import atomic_file

COMPARISON_PNG, PER_CLASS_ALL_PNG = "comparison.png", "per_class_all.png"
SWEEP_FIGURES = (COMPARISON_PNG, PER_CLASS_ALL_PNG)  # attached to the parent run by `ltray.tracking.sync`
HEADLINE = (("all", "All"), ("many", "Many"), ("medium", "Medium"), ("few", "Few"))
PAIRED = (("all", "All"), ("few", "Few"))
COUNT_BINS = 8


def save_png(figure: Figure, path: Path) -> Path:
    """Write the figure as PNG via a temporary name in the same folder, then move it into place (an existing file
    is replaced only by a complete one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "wb") as stream:
        figure.savefig(stream, format="png")
    return path


@dataclass
class RunFigures:
    """One finished run of a configuration: its pairing key (split, seed), its main probe's figures and, when
    known, its per-class accuracy (%) and pre-training counts."""

    pair: tuple[int | None, int | None]
    figures: Mapping[str, float]
    per_class: Sequence[float] = field(default_factory=list)
    counts: Sequence[int] = field(default_factory=list)


def new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def per_class_axes(axes: Any, xlabel: str) -> None:
    """Log x axis of class counts, y axis of test accuracy (%) from -2 to 102, grid."""
    axes.set_xscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel("test accuracy (%)")
    axes.set_ylim(-2.0, 102.0)
    axes.grid(True, which="both", alpha=0.3)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std())


def plot_comparison(runs: Mapping[str, Sequence[RunFigures]], path: Path, *, title: str, probe: str,
                    baseline: str | None) -> Path:
    """`comparison.png` (see the module docstring); `runs` maps configuration -> its finished runs."""
    configs = [config for config, found in runs.items() if found]
    base_runs = runs.get(baseline, []) if baseline is not None else []
    others = [config for config in configs if base_runs and config != baseline]
    panels = 2 if others else 1
    figure = new_figure(max(6.0, 1.3 * len(configs) + 3.0) + (4.0 if others else 0.0), 4.5)
    axes = figure.subplots(1, panels, squeeze=False, width_ratios=[2, 1] if others else [1])[0]
    width = 0.8 / len(HEADLINE)
    positions = np.arange(len(configs))
    for index, (key, label) in enumerate(HEADLINE):
        stats = [_mean_std([run.figures[key] for run in runs[c] if key in run.figures] or [np.nan]) for c in configs]
        axes[0].bar(positions + (index - 1.5) * width, [m for m, _ in stats], width, yerr=[s for _, s in stats],
                    capsize=3, label=label)
    axes[0].set_xticks(positions, [f"{c}\n(n={len(runs[c])})" for c in configs])
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].set_title(f"{probe}: mean ± std over runs")
    axes[0].set_ylim(0.0, 118.0)  # room for the legend above 100 %
    axes[0].legend(loc="upper center", ncols=len(HEADLINE), fontsize="small")
    axes[0].grid(True, axis="y", alpha=0.3)
    if others:
        base = {run.pair: run.figures for run in base_runs}
        width = 0.8 / len(PAIRED)
        for index, (key, label) in enumerate(PAIRED):
            stats = []
            for config in others:
                diffs = [run.figures[key] - base[run.pair][key] for run in runs[config]
                         if run.pair in base and key in run.figures and key in base[run.pair]]
                stats.append(_mean_std(diffs) if diffs else (np.nan, 0.0))
            axes[1].bar(np.arange(len(others)) + (index - 0.5) * width, [m for m, _ in stats], width,
                        yerr=[s for _, s in stats], capsize=3, label=label)
        axes[1].axhline(0.0, color="black", linewidth=0.8)
        axes[1].set_xticks(np.arange(len(others)), others)
        axes[1].set_ylabel(f"difference to {baseline} (points)")
        axes[1].set_title("paired by split and seed")
        axes[1].legend(loc="best", fontsize="small")
        axes[1].grid(True, axis="y", alpha=0.3)
    figure.suptitle(title)
    return save_png(figure, path)


def plot_per_class_all(runs: Mapping[str, Sequence[RunFigures]], path: Path, *, title: str) -> Path:
    """`per_class_all.png` (see the module docstring)."""
    figure = new_figure(7.5, 4.8)
    axes = figure.add_subplot()
    colours = [f"C{index}" for index in range(10)]
    every_count = [c for found in runs.values() for run in found for c in run.counts]
    edges = np.geomspace(max(min(every_count), 1), max(every_count) + 1, COUNT_BINS + 1) if every_count else None
    for index, (config, found) in enumerate(item for item in runs.items() if any(r.per_class for r in item[1])):
        colour = colours[index % len(colours)]
        counts = np.concatenate([np.asarray(run.counts, dtype=np.float64) for run in found if run.per_class])
        accuracy = np.concatenate([np.asarray(run.per_class, dtype=np.float64) for run in found if run.per_class])
        axes.scatter(counts, accuracy, s=8, alpha=0.25, color=colour)
        assert edges is not None
        which = np.clip(np.digitize(counts, edges) - 1, 0, COUNT_BINS - 1)
        centres = [float(np.exp(np.log(counts[which == b]).mean())) for b in range(COUNT_BINS) if (which == b).any()]
        means = [float(accuracy[which == b].mean()) for b in range(COUNT_BINS) if (which == b).any()]
        axes.plot(centres, means, marker="o", color=colour, label=f"{config} (n={len(found)})")
    per_class_axes(axes, "pre-training images of the class (log scale)")
    if axes.get_legend_handles_labels()[0]:  # no run with per-class accuracy: an empty plot, no legend
        axes.legend(loc="best", fontsize="small")
    axes.set_title(title)
    return save_png(figure, path)
