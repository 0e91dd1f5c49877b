"""A tiny real sweep through `--address auto` against a Ray head and an `mlflow server` (both real processes): two
trials (two splits) run one at a time; Ctrl-C reaches the driver while the second trial trains; `--resume` finishes
it without running the first trial again. Then the MLflow records are checked through the client: parent and
child runs, nesting, tags, parameters, per-epoch metrics (each epoch once), final figures, artifacts, the parent
summary, and `ltray report --sweep`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from ray.tune import ExperimentAnalysis, ResultGrid

from ltray.cli import main as ltray_main
from ltray.tracking.runs import TAG_CONFIG_KEY, TAG_FINAL_KEYS, TAG_PARENT, TAG_REFERENCE_BACKED, TAG_ROLE, TAG_SWEEP

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 3
EXPERIMENT = "ltray-tests"


def _runs(client: MlflowClient, sweep: str, role: str) -> list:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{TAG_SWEEP}` = '{sweep}'")
    return [run for run in runs if run.data.tags.get(TAG_ROLE) == role]


def _interrupt_during_second_trial(driver: subprocess.Popen[str], client: MlflowClient, sweep: str) -> bool:
    deadline = time.monotonic() + 300
    while driver.poll() is None and time.monotonic() < deadline:
        children = _runs(client, sweep, "child")
        finished = [run for run in children if run.info.status == "FINISHED"]
        running = [run for run in children if run.info.status == "RUNNING"]
        if finished and running and client.get_metric_history(running[0].info.run_id, "loss"):
            driver.send_signal(signal.SIGINT)
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_sweep_interrupted_resumed_and_recorded(ray_head, mlflow_server, tmp_path, sweep_name, tiny_sweep,
                                                sweep_script, capsys):
    config = tiny_sweep(tmp_path, splits=(1, 2), epochs=EPOCHS)
    uri = mlflow_server.tracking_uri
    storage = tmp_path / "storage"
    args = ["--config", str(config), "--address", "auto", "--mlflow-uri", uri, "--name", sweep_name,
            "--storage", str(storage), "--max-concurrent", "1"]
    driver = subprocess.Popen([sys.executable, str(ROOT / "experiments" / "sweep_sdclr.py"), *args],
                              env=ray_head.env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    client = MlflowClient(uri)
    interrupted = _interrupt_during_second_trial(driver, client, sweep_name)
    output, _ = driver.communicate(timeout=180)
    assert interrupted, "the sweep was never between its two trials:\n" + output[-3000:]
    assert driver.returncode == 130, output[-3000:]
    assert f"Ray dashboard: {ray_head.dashboard_url}" in output
    assert f"MLflow experiment: {uri}/#/experiments/" in output
    assert f"--resume --name {sweep_name}" in output
    assert "Trial status:" not in output

    before = {run.data.tags["ltray.trial"]: run for run in _runs(client, sweep_name, "child")}
    assert sorted(run.info.status for run in before.values()) == ["FINISHED", "KILLED"]
    done_name = next(name for name, run in before.items() if run.info.status == "FINISHED")
    done_history = client.get_metric_history(before[done_name].info.run_id, "loss")

    resumed = sweep_script("sweep_sdclr.py", args + ["--resume"], ray_head.env(), tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "| simclr | 2 |" in resumed.stdout
    assert "Trial status:" not in resumed.stdout and "Trial status:" in (storage / sweep_name / "console.log").read_text()
    # Tune's own records carry each trial's axis values, before and after the resume
    for split in (1, 2):
        params = json.loads((storage / sweep_name / f"simclr_split={split}" / "params.json").read_text())
        assert params["trial"] == f"simclr_split={split}"
        assert (params["method.name"], params["data.split"]) == ("simclr", split) and "run.seed" in params
    frame = ResultGrid(ExperimentAnalysis(str(storage / sweep_name))).get_dataframe()
    assert sorted(frame["config/data.split"]) == [1, 2] and set(frame["config/method.name"]) == {"simclr"}

    parents = _runs(client, sweep_name, "parent")
    children = _runs(client, sweep_name, "child")
    assert len(parents) == 1 and len(children) == 2
    after = {run.data.tags["ltray.trial"]: run for run in children}
    assert {name: run.info.run_id for name, run in after.items()} == \
        {name: run.info.run_id for name, run in before.items()}, "a trial got a second MLflow run"
    assert after[done_name].info.end_time == before[done_name].info.end_time, "the finished trial ran again"
    assert len(client.get_metric_history(after[done_name].info.run_id, "loss")) == len(done_history)

    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {child.data.tags[TAG_PARENT] for child in children} == {parent.info.run_id}
    assert sorted(child.data.tags["ltray.split"] for child in children) == ["1", "2"]
    for child in children:
        tags, metrics = child.data.tags, child.data.metrics
        assert child.info.status == "FINISHED"
        assert tags["ltray.method"] == "simclr" and tags["ltray.dataset"] == "digits-lt"
        assert tags[TAG_REFERENCE_BACKED] == "true" and tags[TAG_CONFIG_KEY] == "simclr"
        assert tags["mlflow.source.git.commit"]
        assert child.data.params["optim.epochs"] == str(EPOCHS) and child.data.params["model.width"] == "0.125"
        steps = sorted(metric.step for metric in client.get_metric_history(child.info.run_id, "loss"))
        assert steps == list(range(1, EPOCHS + 1))
        final_keys = json.loads(tags[TAG_FINAL_KEYS])
        for key in ("full_all", "full_many", "full_medium", "full_few", "full_group_std", "few_all", "shot2_all"):
            assert key in final_keys and key in metrics
        artifacts = {item.path for item in client.list_artifacts(child.info.run_id)}
        assert {"per_class.csv", "per_class.png", "eval_report.json"} <= artifacts

    figures = [child.data.metrics["full_all"] for child in children]
    parent_metrics = client.get_run(parent.info.run_id).data.metrics
    assert parent_metrics["n_runs"] == 2
    assert parent_metrics["full_all_mean"] == pytest.approx(sum(figures) / 2)
    assert parent_metrics["full_all_std"] == pytest.approx(abs(figures[0] - figures[1]) / 2)
    assert {"summary.md", "summary.csv"} <= {item.path for item in client.list_artifacts(parent.info.run_id)}
    assert (storage / sweep_name / "summary.md").is_file()

    capsys.readouterr()
    assert ltray_main(["report", "--sweep", sweep_name, "--mlflow-uri", uri]) == 0
    table = capsys.readouterr().out
    assert "| simclr | 2 |" in table and "## full-shot linear probe" in table
    assert table.strip() == (storage / sweep_name / "summary.md").read_text().strip()  # what the sweep printed
