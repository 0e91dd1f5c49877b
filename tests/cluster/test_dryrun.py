"""`--dry-run` of the sweep scripts (ltray.cluster.dryrun): trials, resources and cost, with nothing started."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ltray.cluster.cli import CONFIG_DIR
from ltray.cluster.dryrun import (
    Throughput,
    describe,
    load_throughput,
    schedule_hours,
    train_set_size,
)
from ltray.cluster.grid import load_sweep_spec
from ltray.config import load_config
from ltray.errors import ConfigError
from ltray.methods.components.colt import colt_resamples

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ("sweep_colt.py", "sweep_sdclr.py", "sweep_gh.py")


def run_script(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "experiments" / script), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def test_colt_resamples_follow_the_schedule() -> None:
    # docs/math/colt.md §1: with warm-up 100 and interval 25 over 2000 epochs, epochs 101, 126, ..., 1976
    assert colt_resamples(2000, 100, 25) == len(range(101, 1977, 25)) == 76
    assert colt_resamples(100, 100, 25) == 0
    assert colt_resamples(101, 100, 25) == 1


def test_schedule_takes_the_first_free_slot() -> None:
    assert schedule_hours([1.0, 1.0, 1.0], 2) == 2.0
    assert schedule_hours([3.0, 1.0, 1.0, 1.0], 2) == 3.0
    assert schedule_hours([1.0, 2.0], 1) == 3.0


def test_train_set_size_from_manifest_and_from_the_spec(tmp_path: Path) -> None:
    shipped = load_config(None, {"data.dataset": "cifar100", "data.split": 2})
    assert train_set_size(shipped)[0] == 9754
    balanced = load_config(None, {"data.dataset": "cifar10", "data.subset": "D_b", "data.splits_dir": str(tmp_path)})
    size, source = train_set_size(balanced)
    assert size == 11160 and "docs/math/data_and_eval.md" in source
    listed = tmp_path / "train.txt"
    listed.write_text("a.jpg 0\nb.jpg 1\n\n")
    lists = load_config(None, {"data.dataset": "places-lt", "data.root": str(tmp_path),
                               "data.train_list": str(listed)})
    assert train_set_size(lists)[0] == 2
    missing = load_config(None, {"data.dataset": "places-lt", "data.root": "/nonexistent",
                                 "data.train_list": "/nonexistent/list.txt"})
    assert train_set_size(missing)[0] is None


def test_malformed_throughput_table_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "throughput.json"
    bad.write_text(json.dumps({"entries": [{"device": "cpu"}]}))
    with pytest.raises(ConfigError, match="entry 0"):
        load_throughput(bad)
    bad.write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_throughput(bad)


def test_shipped_table_entries_are_well_formed() -> None:
    table = load_throughput()
    assert table and all(entry.source for entry in table)
    assert any(entry.device == "cpu" and entry.images_per_s for entry in table)


def test_describe_prices_trials_and_names_missing_measurements() -> None:
    spec = load_sweep_spec(CONFIG_DIR / "sweep_sdclr.yaml")
    cpu = Throughput("cpu", "resnet18_cifar", 16, 0.25, 1000.0, "test", threads=1)
    text = describe(spec, config_path=CONFIG_DIR / "sweep_sdclr.yaml", max_concurrent=2, table=[cpu])
    assert "max concurrent trials: 2 (--max-concurrent)" in text
    assert "sdclr_sdclr.prune_ratio=0.9_split=3" in text
    assert "no measured throughput" not in text and "CPU-hours" in text
    gpu = load_sweep_spec(CONFIG_DIR / "paper" / "cifar100_sdclr.yaml")
    text = describe(gpu, config_path=Path("x.yaml"), cluster={"CPU": 16, "GPU": 2}, table=[cpu])
    assert "no measured throughput for resnet18_cifar width 1 at 32x32 on nvidia-h100" in text
    assert "max concurrent trials: 2 (the given cluster: 16 CPUs, 2 GPUs)" in text
    assert text.count("unmeasured") == 20


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_sweep_script_dry_runs_its_default(script: str) -> None:
    result = run_script(script, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "nothing was started" in result.stdout and "images processed" in result.stdout


def test_paper_dry_run_without_data_starts_neither_ray_nor_mlflow() -> None:
    code = (
        "import runpy, sys\n"
        "sys.argv = ['sweep_colt.py', '--config', 'ltray/configs/paper/cifar100_colt.yaml', '--data-root',"
        " '/nonexistent/cifar', '--pool-path', '/nonexistent/300K.npy', '--dry-run', '--cluster-gpus', '8']\n"
        "try:\n"
        "    runpy.run_path('experiments/sweep_colt.py', run_name='__main__')\n"
        "except SystemExit as stop:\n"
        "    assert stop.code == 0, stop.code\n"
        "assert 'ray' not in sys.modules and 'mlflow' not in sys.modules, 'a dry run imported ray or mlflow'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "colt_split=5" in result.stdout and "COLT scoring images" in result.stdout


def test_bad_dry_run_flags_fail_with_one_line() -> None:
    result = run_script("sweep_gh.py", "--dry-run", "--cluster-gpus", "-1")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--cluster-gpus" in result.stderr


def test_a_mak_trial_is_priced_with_its_extractor_scoring_and_retraining() -> None:
    from ltray.cluster.dryrun import trial_cost
    from ltray.cluster.grid import Trial

    cfg = load_config(CONFIG_DIR / "embedded_simclr.yaml",
                      {"method.name": "mak", "optim.epochs": 10, "method.mak.extractor_epochs": 4,
                       "method.mak.pool_size": 2000, "method.mak.budget": 300, "method.mak.passes": 5})
    trial = Trial(name="mak", overrides={}, config_key="mak", config=cfg.to_dict())
    cpu = Throughput("cpu", "resnet18_cifar", 16, cfg.model.width, 1000.0, "test", threads=1)
    cost = trial_cost(trial, [cpu], "cpu", workers=1, cpus_per_worker=1)
    n = cost.train_size
    assert n is not None and n > 0
    assert cost.train_images == 4 * n + 10 * (n + 300)  # extractor on LT, retraining on LT ∪ 300 picks
    assert cost.inference_images == 6 * 2000 + n  # the pool once plain and 5 times augmented, the ID set once
