"""The benchmark results page: paired differences by split, the t-test verdicts, the tables and the reading."""

from __future__ import annotations

import math

import pytest

from ltray.cluster.benchmark import (
    TrialResult,
    by_config,
    paired,
    results_markdown,
    table_figures,
)
from ltray.errors import LtrayError


def _trial(config: str, split: int, all_: float, std: float = 10.0, shot: float = 40.0) -> TrialResult:
    return TrialResult(config, split, {"full_all": all_, "full_many": all_ + 5, "full_medium": all_,
                                       "full_few": all_ - 5, "full_group_std": std, "shot10_all": shot},
                       per_class=[all_ + 1, all_ - 1], pretrain_counts=[500, 5], class_names=["a", "b"])


def _results() -> list[TrialResult]:
    # method "up" is 2 points ahead on every split (+ small jitter): significant; "noisy" alternates +-3
    base = [50.0, 55.0, 45.0, 52.0, 48.0]
    jitter = [0.1, -0.1, 0.2, 0.0, -0.2]
    rows = [_trial("simclr", k + 1, b) for k, b in enumerate(base)]
    rows += [_trial("up", k + 1, b + 2 + j) for k, (b, j) in enumerate(zip(base, jitter))]
    rows += [_trial("noisy", k + 1, b + (3 if k % 2 else -3)) for k, b in enumerate(base)]
    rows += [_trial("simclr subset:D_b", k + 1, b + 4, std=5.0) for k, b in enumerate(base)]
    return rows


def test_paired_differences_match_a_hand_computation():
    grouped = by_config(_results())
    up = paired(grouped["up"], grouped["simclr"], "full_all")
    diffs = [2.1, 1.9, 2.2, 2.0, 1.8]
    mean = sum(diffs) / 5
    std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 4)
    assert up.mean == pytest.approx(mean) and up.std == pytest.approx(std)
    assert (up.n, up.ahead) == (5, 5) and up.significant
    noisy = paired(grouped["noisy"], grouped["simclr"], "full_all")
    assert noisy.mean == pytest.approx(-0.6) and noisy.ahead == 2 and not noisy.significant
    # Std is recorded and shown in points of %
    ref = paired(grouped["simclr subset:D_b"], grouped["simclr"], "full_group_std")
    assert ref.mean == pytest.approx(-5.0) and ref.std == pytest.approx(0.0) and ref.significant


def test_only_common_splits_are_paired():
    rows = _results()[:5] + [_trial("late", 1, 60.0), _trial("late", 3, 40.0)]
    result = paired(by_config(rows)["late"], by_config(rows)["simclr"], "full_all")
    assert (result.n, result.mean) == (2, pytest.approx(((60 - 50) + (40 - 45)) / 2))


def test_results_page_holds_tables_reading_and_per_class():
    page = results_markdown(_results(), title="T", command="python x.py", commit="abc", wall_seconds=600,
                            machine="2 CPU cores", reference="simclr subset:D_b")
    assert "wall time: 10.0 min on 2 CPU cores" in page and "`abc`" in page
    lines = page.splitlines()
    simclr_row = next(line for line in lines if line.startswith("| simclr | 5 |"))
    assert "50.00 ± 3.41" in simclr_row  # mean and population std of the five splits
    up_row = next(line for line in lines if line.startswith("| up |") and "±" in line and "(5/5)" in line)
    assert "**+2.00 ± 0.16** (5/5)" in up_row
    assert any(line.startswith("- `up`: better than SimCLR on All +2.00") for line in lines)
    assert any(line.startswith("- `noisy`: ") and "within noise on All" in line for line in lines)
    assert any("(the balanced-data reference)" in line and "Std -5.00" in line for line in lines)
    assert lines.index(next(line for line in lines if line.startswith("| simclr subset:D_b | 5 |"))) > lines.index(
        simclr_row)
    per_class = next(line for line in lines if line.startswith("| 0 | a |"))
    assert "500" in per_class and "51.00 ± 3.41" in per_class
    assert [label for _, label in table_figures(_results())][-1] == "10-shot"


def test_a_benchmark_without_simclr_is_an_error():
    with pytest.raises(LtrayError, match="needs finished simclr"):
        results_markdown([_trial("up", 1, 50.0)], title="T", command="c", commit="x", wall_seconds=1, machine="m",
                         reference=None)
