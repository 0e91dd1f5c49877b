from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ltray.errors import ConfigError, DataError
from ltray.eval.metrics import (
    evaluate_logits,
    format_summary_table,
    group_classes,
    long_tail_report,
    per_class_accuracy,
    summarize_runs,
    summary_metrics,
    write_summary_csv,
)

SPLITS = Path(__file__).resolve().parents[3] / "shared" / "reference_splits"
CIFAR10_PROFILE = [4500, 2697, 1617, 969, 581, 348, 208, 125, 75, 45]
CIFAR10_SPLIT1_HEAD_TO_TAIL = [6, 8, 4, 1, 7, 0, 3, 2, 5, 9]


def cifar10_split1_counts() -> np.ndarray:
    counts = np.zeros(10, dtype=np.int64)
    for rank, class_id in enumerate(CIFAR10_SPLIT1_HEAD_TO_TAIL):
        counts[class_id] = CIFAR10_PROFILE[rank]
    return counts


def cifar100_profile() -> np.ndarray:
    ranks = np.arange(100, dtype=np.float64)
    return np.floor(450 * 100.0 ** (-ranks / 99)).astype(np.int64)


def test_per_class_accuracy_counts_each_class_separately() -> None:
    target = np.array([0, 0, 0, 0, 1, 1, 3])
    pred = np.array([0, 0, 1, 0, 1, 0, 3])
    accuracy = per_class_accuracy(pred, target, 4)
    assert accuracy[0] == pytest.approx(75.0)
    assert accuracy[1] == pytest.approx(50.0)
    assert math.isnan(accuracy[2])
    assert accuracy[3] == pytest.approx(100.0)


def test_per_class_accuracy_rejects_bad_labels() -> None:
    with pytest.raises(DataError):
        per_class_accuracy(np.array([0, 5]), np.array([0, 1]), 3)
    with pytest.raises(DataError):
        per_class_accuracy(np.array([0]), np.array([0, 1]), 3)


def test_thirds_on_cifar10_split1() -> None:
    counts = cifar10_split1_counts()
    assert counts.tolist() == [348, 969, 125, 208, 1617, 75, 4500, 581, 2697, 45]
    groups = group_classes(counts, "thirds")
    assert groups["few"].tolist() == [2, 5, 9]
    assert sorted(counts[groups["few"]].tolist()) == [45, 75, 125]
    assert groups["medium"].tolist() == [0, 3, 7]
    assert sorted(counts[groups["medium"]].tolist()) == [208, 348, 581]
    assert groups["many"].tolist() == [1, 4, 6, 8]


def test_thirds_on_cifar100_profile() -> None:
    counts = cifar100_profile()
    assert counts[:5].tolist() == [450, 429, 410, 391, 373] and counts[-5:].tolist() == [5, 5, 4, 4, 4]
    assert counts.sum() == 9754
    permutation = np.random.default_rng(3).permutation(100)
    shuffled = np.empty(100, dtype=np.int64)
    shuffled[permutation] = counts
    groups = group_classes(shuffled, "thirds")
    assert [groups[name].size for name in ("many", "medium", "few")] == [34, 33, 33]
    assert (shuffled[groups["few"]].min(), shuffled[groups["few"]].max()) == (4, 19)
    assert (shuffled[groups["medium"]].min(), shuffled[groups["medium"]].max()) == (20, 92)
    assert (shuffled[groups["many"]].min(), shuffled[groups["many"]].max()) == (96, 450)


def test_thirds_matches_published_analysis_groups() -> None:
    counts_file = SPLITS / "sdclr" / "class_counts.json"
    if not counts_file.exists():
        pytest.skip("published split data not available")
    published = json.loads(counts_file.read_text())["cifar10"]
    for split in range(1, 6):
        entry = published[f"split{split}_D_i.npy"]
        groups = group_classes(np.array(entry["counts_per_class"]), "thirds")
        expected = entry["groups_exp_analyse"]
        assert groups["few"].tolist() == expected["minor"]
        assert groups["medium"].tolist() == expected["moderate"]
        assert groups["many"].tolist() == expected["major"]


def test_thresholds_on_toy_counts() -> None:
    counts = np.array([150, 101, 100, 20, 19, 0, 55])
    groups = group_classes(counts, "thresholds")
    assert groups["many"].tolist() == [0, 1]
    assert groups["medium"].tolist() == [2, 3, 6]
    assert groups["few"].tolist() == [4, 5]
    custom = group_classes(counts, "thresholds", thresholds=(50, 10))
    assert custom["many"].tolist() == [0, 1, 2, 6]
    assert custom["medium"].tolist() == [3, 4]
    assert custom["few"].tolist() == [5]


def test_lotar_343_sizes() -> None:
    groups = group_classes(cifar10_split1_counts(), "lotar_343")
    assert groups["many"].tolist() == [4, 6, 8]
    assert groups["medium"].tolist() == [0, 1, 3, 7]
    assert groups["few"].tolist() == [2, 5, 9]
    groups100 = group_classes(cifar100_profile(), "lotar_343")
    assert [groups100[name].size for name in ("many", "medium", "few")] == [33, 34, 33]
    assert groups100["many"].tolist() == list(range(33))
    assert groups100["few"].tolist() == list(range(67, 100))


def test_no_warning_without_straddling_tie() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        group_classes(cifar10_split1_counts(), "thirds")
        group_classes(cifar100_profile(), "thirds")


def test_tie_straddling_a_boundary_warns_and_breaks_by_class_id() -> None:
    counts = np.array([7, 5, 5, 5, 9, 1])
    with pytest.warns(UserWarning, match="straddle"):
        groups = group_classes(counts, "thirds")
    assert groups["few"].tolist() == [1, 5]
    assert groups["medium"].tolist() == [2, 3]
    assert groups["many"].tolist() == [0, 4]
    with pytest.warns(UserWarning, match="straddle"):
        lotar = group_classes(np.array([3, 8, 8, 1, 2, 8]), "lotar_343")
    assert lotar["many"].tolist() == [1, 2]
    assert lotar["medium"].tolist() == [0, 5]
    assert lotar["few"].tolist() == [3, 4]


def test_grouping_rejects_bad_input() -> None:
    with pytest.raises(ConfigError):
        group_classes(np.array([5, 4, 3]), "quartiles")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        group_classes(np.array([5, 4]), "thirds")
    with pytest.raises(DataError):
        group_classes(np.array([5, -1, 3]), "thirds")
    with pytest.raises(ConfigError):
        group_classes(np.array([5, 4, 3]), "thresholds", thresholds=(10, 20))


def test_all_is_class_balanced_not_top1() -> None:
    # class 0: 8 test images, all right; class 1: 1 image, wrong; class 2: 1 image, right.
    target = torch.tensor([0] * 8 + [1, 2])
    logits = torch.zeros(10, 3)
    logits[torch.arange(8), 0] = 1.0
    logits[8, 2] = 1.0
    logits[9, 2] = 1.0
    groups = {"many": np.array([0]), "medium": np.array([2]), "few": np.array([1])}
    accuracy, report = evaluate_logits(logits, target, 3, groups)
    assert accuracy.tolist() == [100.0, 0.0, 100.0]
    assert report["top1"] == pytest.approx(90.0)
    assert report["all"] == pytest.approx(200.0 / 3)
    assert report["top5"] == pytest.approx(100.0)
    assert (report["many"], report["medium"], report["few"]) == (100.0, 100.0, 0.0)


def test_group_std_and_class_std_by_hand() -> None:
    accuracy = np.array([90.0, 80.0, 70.0, 60.0, 50.0, 40.0])
    groups = {"many": np.array([0, 1]), "medium": np.array([2, 3]), "few": np.array([4, 5])}
    report = long_tail_report(accuracy, groups)
    assert report["many"] == pytest.approx(85.0)
    assert report["medium"] == pytest.approx(65.0)
    assert report["few"] == pytest.approx(45.0)
    assert report["all"] == pytest.approx(65.0)
    # in points: 85, 65, 45: deviations ±20 and 0, population variance 800 / 3
    assert report["group_std"] == pytest.approx(math.sqrt(800 / 3))
    assert report["group_std"] == pytest.approx(16.3299, abs=1e-4)
    # six equally spaced accuracies 10 points apart: variance 100 · (6² − 1) / 12
    assert report["class_std"] == pytest.approx(math.sqrt(100 * 35 / 12))
    assert "top1" not in report


def test_report_rejects_absent_class_and_bad_groups() -> None:
    with pytest.raises(DataError, match="undefined"):
        long_tail_report(np.array([50.0, np.nan, 20.0]))
    with pytest.raises(ConfigError):
        long_tail_report(np.array([1.0, 2.0, 3.0]), {"many": np.array([0]), "medium": np.array([0]), "few": np.array([2])})
    with pytest.raises(ConfigError):
        long_tail_report(np.array([1.0, 2.0, 3.0]), {"head": np.array([0, 1, 2])})


def test_empty_group_gives_nan_with_warning() -> None:
    groups = group_classes(np.array([500, 300, 200]), "thresholds")
    with pytest.warns(UserWarning, match="no class"):
        report = long_tail_report(np.array([80.0, 70.0, 60.0]), groups)
    assert report["many"] == pytest.approx(70.0)
    assert math.isnan(report["medium"]) and math.isnan(report["few"]) and math.isnan(report["group_std"])


def reports_for(values: dict[str, float]) -> list[dict[str, object]]:
    return [
        {
            "run": run, "all": value, "many": value + 5, "medium": value, "few": value - 5,
            "group_std": 10.0, "class_std": value / 10,
        }
        for run, value in values.items()
    ]


def test_summary_is_population_std_and_excludes_missing_runs() -> None:
    reports = reports_for({"split1": 50.0, "split3": 60.0, "split4": 70.0})
    summary = summarize_runs(reports, expected=[f"split{s}" for s in range(1, 6)])
    assert summary["n_runs"] == 3
    assert summary["runs"] == ["split1", "split3", "split4"]
    assert summary["missing"] == ["split2", "split5"]
    assert summary["mean"]["all"] == pytest.approx(60.0)
    assert summary["std"]["all"] == pytest.approx(math.sqrt(200.0 / 3))  # ddof 0, not 10 (ddof 1)
    assert summary["std"]["group_std"] == pytest.approx(0.0)
    assert summary["mean"]["class_std"] == pytest.approx(6.0)
    flat = summary_metrics(summary)
    assert flat["n_runs"] == 3.0
    assert flat["all_mean"] == pytest.approx(60.0) and flat["few_std"] == pytest.approx(math.sqrt(200.0 / 3))


def test_summary_rejects_inconsistent_input() -> None:
    reports = reports_for({"a": 1.0, "b": 2.0})
    with pytest.raises(ConfigError):
        summarize_runs(reports, expected=["a"])
    with pytest.raises(ConfigError):
        summarize_runs(reports + reports_for({"a": 3.0}))
    with pytest.raises(DataError):
        summarize_runs([], expected=["a"])
    with pytest.raises(DataError):
        summarize_runs([{"all": 1.0}, {"all": 2.0, "top1": 3.0}])


def test_summary_table_and_csv(tmp_path: Path) -> None:
    reports = reports_for({"split1": 50.0, "split3": 60.0, "split4": 70.0})
    summary = summarize_runs(reports, expected=["split1", "split2", "split3", "split4"])
    table = format_summary_table([("simclr D_i full-shot", summary)])
    lines = table.strip().splitlines()
    assert lines[0] == (
        "| configuration | n | All (%) | Many (%) | Medium (%) | Few (%) | Std (points) | class-std (points) | missing |"
    )
    assert lines[2] == (
        "| simclr D_i full-shot | 3 | 60.00 ± 8.16 | 65.00 ± 8.16 | 60.00 ± 8.16 | 55.00 ± 8.16 | 10.00 ± 0.00 "
        "| 6.00 ± 0.82 | split2 |"
    )
    path = tmp_path / "out" / "summary.csv"
    write_summary_csv([("simclr D_i full-shot", summary)], path)
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["configuration"] == "simclr D_i full-shot"
    assert rows[0]["missing"] == "split2"
    assert float(rows[0]["all_mean"]) == pytest.approx(60.0)
    assert float(rows[0]["all_std"]) == pytest.approx(math.sqrt(200.0 / 3))
    with pytest.raises(ConfigError):
        write_summary_csv([], path)
    assert path.read_text().startswith("configuration,")
    assert sorted(p.name for p in path.parent.iterdir()) == ["summary.csv"]
