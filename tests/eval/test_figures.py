"""The sweep's figures: drawn from runs built by hand, checked as PNG files (and by eye, see the docs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.image import imread

from ltray.eval.figures import RunFigures, plot_comparison, plot_per_class_all


def _runs() -> dict[str, list[RunFigures]]:
    counts = [500, 200, 80, 30, 12, 5]
    runs: dict[str, list[RunFigures]] = {"simclr": [], "colt": [], "sdclr": []}
    for split, shift in ((1, 0.0), (2, 2.0)):
        for config, gain in (("simclr", 0.0), ("colt", 3.0), ("sdclr", -1.0)):
            per_class = [90.0 - 12 * k + gain + shift for k in range(6)]
            figures = {"all": float(np.mean(per_class)), "many": per_class[0], "medium": per_class[2],
                       "few": per_class[5], "group_std": 10.0}
            runs[config].append(RunFigures((split, 10), figures, per_class, counts))
    return runs


def test_comparison_figure_has_bars_and_paired_differences(tmp_path: Path):
    path = plot_comparison(_runs(), tmp_path / "comparison.png", title="sweep demo", probe="full-shot linear probe",
                           baseline="simclr")
    image = imread(path)
    assert image.ndim == 3 and image.shape[1] > image.shape[0] > 300  # two panels side by side
    alone = plot_comparison({"colt": _runs()["colt"]}, tmp_path / "alone.png", title="t", probe="p", baseline=None)
    assert imread(alone).shape[1] < image.shape[1]  # no baseline: one panel
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alone.png", "comparison.png"]


def test_per_class_figure_has_every_configuration(tmp_path: Path):
    path = plot_per_class_all(_runs(), tmp_path / "per_class_all.png", title="sweep demo: per-class accuracy")
    image = imread(path)
    assert image.shape[:2] == (480, 750)
