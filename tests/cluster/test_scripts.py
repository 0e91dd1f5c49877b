"""The sweep scripts' bad inputs: one line on stderr and exit code 2, before Ray starts or anything is written;
an MLflow server that is down stops the sweep before any training."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from ltray.tracking.server import free_port

ROOT = Path(__file__).resolve().parents[2]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"ltray_script_{name}", ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(capsys, name: str, argv: list[str]) -> tuple[int, str, str]:
    code = _script(name).main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("script", "argv", "message"),
    [
        ("sweep_colt", ["--axis", "method.colt.nope=1,2"], "unknown config key 'method.colt.nope'"),
        ("sweep_colt", ["--axis", "method.temperature="], "axis 'method.temperature=' has an empty value"),
        ("sweep_colt", ["--axis", "method.temperature=0.2,-0.5"], "method.temperature must be > 0"),
        ("sweep_sdclr", ["--axis", "method.sdclr.prune_ratio=0.5,1.5"], "prune_ratio must be in [0, 1]"),
        ("sweep_gh", ["--axis", "method.name=simclr,dino"], "unknown method part 'dino'"),
        ("sweep_colt", ["--splits", "1,two"], "--splits must be comma-separated integers"),
        ("sweep_colt", ["--set", "optim.epochs=0"], "optim.epochs must be >= 1"),
        ("sweep_colt", ["--config", "missing.yaml"], "sweep config not found"),
        ("sweep_colt", ["--pool", "random300k"], "method.colt.pool_path is required"),
        ("sweep_colt", ["--data", "cifar100"], "data.root is required for cifar100"),
        ("sweep_colt", ["--max-concurrent", "0"], "--max-concurrent must be >= 1"),
        ("sweep_colt", ["--mlflow-uri", "./mlruns"], "refuses directory file stores"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, monkeypatch, script, argv, message):
    monkeypatch.chdir(tmp_path)
    storage = tmp_path / "storage"
    code, out, err = _run(capsys, script, argv + ["--storage", str(storage)])
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"{script}.py: error: ")
    assert message in err
    assert not storage.exists()


def test_tracking_server_down_fails_before_any_training(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    port = free_port()
    storage = tmp_path / "storage"
    code, out, err = _run(capsys, "sweep_colt", ["--mlflow-uri", f"http://127.0.0.1:{port}",
                                                 "--storage", str(storage)])
    assert code == 2
    assert f"MLflow tracking server at http://127.0.0.1:{port} is not reachable" in err
    assert err.count("\n") == 1
    assert not storage.exists()
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_help_names_the_flags_and_the_default_job(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _script("sweep_colt").main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--address", "--mlflow-uri", "--data", "--data-root", "--storage", "--resume", "--splits",
                 "--config", "--set", "--name", "--workers-per-trial", "--gpus-per-worker", "--max-failures",
                 "--pool", "--pool-path"):
        assert flag in text
    assert "under 10 minutes on 2 CPU cores" in text and "random300k" in text


@pytest.mark.slow
def test_real_script_process_exits_2_on_an_unknown_axis(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "sweep_gh.py"), "--axis", "method.gh.nope=1"],
                          capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "unknown config key 'method.gh.nope'" in done.stderr
