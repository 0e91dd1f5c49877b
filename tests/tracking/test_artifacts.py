from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from mlflow.tracking import MlflowClient

from ltray.cli import main
from ltray.errors import DataError, LtrayError
from ltray.eval.metrics import format_summary_table, summarize_runs, summary_csv
from ltray.eval.summary import sweep_markdown, sweep_title
from ltray.tracking.artifacts import (
    fetch_sweep_summary,
    log_sweep_summary,
    per_class_table,
    plot_per_class,
    sweep_summary_metrics,
    write_run_artifacts,
)
from ltray.tracking.runs import SweepTracking
from ltray.tracking.server import MlflowServer, free_port

ACCURACY = [92.5, 61.0, 20.25, float("nan")]
COUNTS = [500, 120, 30, 5]
GROUPS = {"many": [0], "medium": [1, 2], "few": [3]}


def test_per_class_table_rows() -> None:
    text = per_class_table(ACCURACY, COUNTS, class_names=["cat", "dog", "ship", "frog"], groups=GROUPS)
    assert text == (
        "class_id,class_name,group,train_count,accuracy\n"
        "0,cat,many,500,92.5\n"
        "1,dog,medium,120,61.0\n"
        "2,ship,medium,30,20.25\n"
        "3,frog,few,5,nan\n"
    )
    plain = list(csv.DictReader(io.StringIO(per_class_table([50.0, 25.0], [10, 3]))))
    assert plain == [
        {"class_id": "0", "class_name": "", "group": "", "train_count": "10", "accuracy": "50.0"},
        {"class_id": "1", "class_name": "", "group": "", "train_count": "3", "accuracy": "25.0"},
    ]


def test_per_class_table_rejects_inconsistent_inputs() -> None:
    with pytest.raises(DataError, match="same length"):
        per_class_table([1.0, 2.0], [3])
    with pytest.raises(DataError, match="1 class names for 2 classes"):
        per_class_table([1.0, 2.0], [3, 4], class_names=["a"])
    with pytest.raises(DataError, match="group 'few' names class 7"):
        per_class_table([1.0, 2.0], [3, 4], groups={"few": [7]})


def test_plot_per_class_writes_png(tmp_path: Path) -> None:
    path = plot_per_class(ACCURACY, COUNTS, tmp_path / "plots" / "per_class.png", groups=GROUPS)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    assert image.shape[:2] == (440, 640)  # 6.4 x 4.4 inches at 100 dpi, room for a two-line title
    assert float(np.asarray(image)[..., :3].std()) > 0.0
    assert sorted(p.name for p in path.parent.iterdir()) == ["per_class.png"]


def test_plot_per_class_rejects_zero_counts_and_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "per_class.png"
    path.write_bytes(b"old")
    with pytest.raises(DataError, match="positive for a log axis"):
        plot_per_class([10.0, 20.0], [0, 4], path)
    assert path.read_bytes() == b"old"


def _summary(n_runs: int, missing: list[str], mean: dict[str, float], std: dict[str, float]) -> dict[str, object]:
    return {"n_runs": n_runs, "runs": [], "missing": missing, "mean": mean, "std": std}


def test_sweep_summary_metrics_single_and_several_configurations() -> None:
    one = _summary(5, [], {"all": 70.0, "group_std": 0.05}, {"all": 1.5, "group_std": 0.01})
    assert sweep_summary_metrics([("simclr", one)]) == {
        "n_runs": 5.0, "all_mean": 70.0, "all_std": 1.5, "group_std_mean": 0.05, "group_std_std": 0.01,
    }
    empty = _summary(0, ["s1"], {}, {})
    several = sweep_summary_metrics([("simclr", one), ("gh=0.1,bcl", empty)])
    assert several == {
        "simclr/n_runs": 5.0, "simclr/all_mean": 70.0, "simclr/all_std": 1.5,
        "simclr/group_std_mean": 0.05, "simclr/group_std_std": 0.01,
        "gh_0.1_bcl/n_runs": 0.0,
    }


def _download_text(client: MlflowClient, run_id: str, name: str, folder: Path) -> str:
    return Path(client.download_artifacts(run_id, name, str(folder))).read_text()


def test_run_artifacts_are_the_per_class_table_and_plot(tmp_path: Path) -> None:
    paths = write_run_artifacts(tmp_path, ACCURACY, COUNTS, GROUPS, class_names=["cat", "dog", "ship", "frog"])
    assert paths == [tmp_path / "per_class.csv", tmp_path / "per_class.png"]
    rows = list(csv.DictReader(io.StringIO(paths[0].read_text())))
    assert [row["class_name"] for row in rows] == ["cat", "dog", "ship", "frog"]
    assert [row["group"] for row in rows] == ["many", "medium", "medium", "few"]
    assert [int(row["train_count"]) for row in rows] == COUNTS
    assert [float(row["accuracy"]) for row in rows[:3]] == ACCURACY[:3]
    assert rows[3]["accuracy"] == "nan"
    assert paths[1].read_bytes()[:4] == b"\x89PNG"


def _finished_child(tracking: SweepTracking, parent: str, trial: str, config: str, report: dict[str, float]) -> str:
    child = tracking.start_child(parent, trial, {"config": config}, {"ltray.config_key": config})
    tracking.log_final(child, report)
    tracking.finish(child)
    return child


SIMCLR_S1 = {"full_all": 70.0, "full_few": 50.0, "full_group_std": 10.0, "few_all": 30.0}
SIMCLR_S2 = {"full_all": 74.0, "full_few": 56.0, "full_group_std": 14.0, "few_all": 34.0}
SDCLR_S1 = {"full_all": 60.0, "full_few": 40.0, "full_group_std": 20.0, "few_all": 20.0}


def _summary_rows() -> list[tuple[str, dict[str, object]]]:
    """What the sweep of `_record_sweep` must summarise to: simclr-s3 failed, so it is missing."""
    return [
        ("sdclr", summarize_runs([{"run": "sdclr-s1", **SDCLR_S1}])),
        (
            "simclr",
            summarize_runs(
                [{"run": "simclr-s1", **SIMCLR_S1}, {"run": "simclr-s2", **SIMCLR_S2}],
                expected=["simclr-s1", "simclr-s2", "simclr-s3"],
            ),
        ),
    ]


def _record_sweep(tracking: SweepTracking, sweep: str) -> str:
    parent = tracking.start_parent(sweep, {}, {})
    _finished_child(tracking, parent, "simclr-s1", "simclr", SIMCLR_S1)
    _finished_child(tracking, parent, "simclr-s2", "simclr", SIMCLR_S2)
    failed = tracking.start_child(parent, "simclr-s3", {"config": "simclr"}, {"ltray.config_key": "simclr"})
    tracking.log_epoch_metrics(failed, {"loss": 3.0}, step=0)
    tracking.finish(failed, "FAILED")
    crashed = tracking.start_child(parent, "sdclr-s1", {"config": "sdclr"}, {"ltray.config_key": "sdclr"})
    tracking.finish(crashed, "FAILED")
    _finished_child(tracking, parent, "sdclr-s1", "sdclr", SDCLR_S1)
    return parent


def test_report_prints_the_sweeps_own_summary_from_a_sqlite_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    _record_sweep(SweepTracking(uri, "report-test"), "demo")

    assert main(["report", "--sweep", "demo", "--mlflow-uri", uri]) == 0
    printed = capsys.readouterr().out
    assert printed == sweep_markdown(_summary_rows(), sweep_title("demo")) + "\n"
    assert printed.startswith("# sweep demo\n")
    simclr_lines = [line for line in printed.splitlines() if line.startswith("| simclr |")]
    assert len(simclr_lines) == 3  # comparison, full-shot and few-shot tables
    comparison, full, few = simclr_lines
    assert comparison == "| simclr | 2 | 72.00 ± 2.00 | 53.00 ± 3.00 | 12.00 ± 2.00 | 32.00 ± 2.00 | simclr-s3 |"
    assert full == "| simclr | 2 | 72.00 ± 2.00 | 53.00 ± 3.00 | 12.00 ± 2.00 | simclr-s3 |"
    assert few == "| simclr | 2 | 32.00 ± 2.00 | simclr-s3 |"


def test_std_type_figures_are_points_with_two_decimals_under_any_name() -> None:
    summary = summarize_runs([{"run": "a", **SIMCLR_S1}, {"run": "b", **SIMCLR_S2}])
    table = format_summary_table([("simclr", summary)])
    assert "| 12.00 ± 2.00 |" in table


@pytest.mark.slow
def test_sweep_summary_round_trip(mlflow_server: MlflowServer, experiment_name: str, tmp_path: Path) -> None:
    uri = mlflow_server.tracking_uri
    sweep = f"{experiment_name}-sweep"
    tracking = SweepTracking(uri, experiment_name)
    parent = _record_sweep(tracking, sweep)
    rows = _summary_rows()
    markdown = sweep_markdown(rows, sweep_title(sweep))
    table = fetch_sweep_summary(uri, sweep)
    assert table == markdown
    simclr_line = next(line for line in table.splitlines() if line.startswith("| simclr |"))
    assert "72.00 ± 2.00" in simclr_line
    assert "53.00 ± 3.00" in simclr_line
    assert "12.00 ± 2.00" in simclr_line
    assert simclr_line.rstrip(" |").endswith("simclr-s3")

    logged = log_sweep_summary(tracking.client, parent, rows, markdown, summary_csv(rows))
    metrics = tracking.client.get_run(parent).data.metrics
    assert metrics == logged
    assert metrics["simclr/full_all_mean"] == pytest.approx(72.0)
    assert metrics["simclr/full_all_std"] == pytest.approx(2.0)
    assert metrics["simclr/n_runs"] == 2.0
    assert metrics["sdclr/full_few_std"] == 0.0
    assert _download_text(tracking.client, parent, "summary.md", tmp_path) == markdown
    csv_rows = list(csv.DictReader(io.StringIO(_download_text(tracking.client, parent, "summary.csv", tmp_path))))
    assert [(row["configuration"], row["n_runs"], row["missing"]) for row in csv_rows] == [
        ("sdclr", "1", ""), ("simclr", "2", "simclr-s3"),
    ]
    assert float(csv_rows[1]["full_all_mean"]) == pytest.approx(72.0)

    with pytest.raises(LtrayError, match=f"no sweep named 'nope' in the MLflow store; known sweeps: .*{sweep}"):
        fetch_sweep_summary(uri, "nope")


@pytest.mark.slow
def test_summary_of_sweep_without_finished_trials(mlflow_server: MlflowServer, experiment_name: str) -> None:
    tracking = SweepTracking(mlflow_server.tracking_uri, experiment_name)
    sweep = f"{experiment_name}-running"
    parent = tracking.start_parent(sweep, {}, {})
    with pytest.raises(LtrayError, match="has no trial runs yet"):
        fetch_sweep_summary(mlflow_server.tracking_uri, sweep)
    tracking.start_child(parent, "only", {})
    table = fetch_sweep_summary(mlflow_server.tracking_uri, sweep)
    assert table.splitlines()[-1] == "| default | 0 | only |"


def test_fetch_from_missing_sqlite_store_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(LtrayError, match="no MLflow store at"):
        fetch_sweep_summary(f"sqlite:///{tmp_path}/mlflow.db", "any")
    assert list(tmp_path.iterdir()) == []


def test_fetch_from_unreachable_server_fails_fast(tmp_path: Path) -> None:
    with pytest.raises(LtrayError, match="is not reachable"):
        fetch_sweep_summary(f"http://127.0.0.1:{free_port()}", "any")
