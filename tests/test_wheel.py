"""ltray as a user installs it: a wheel built from the repository, installed into a fresh virtual environment and
run from an empty folder finds its shipped splits and configs (package data) and runs `ltray pretrain` on
digits-lt and the main job's `--dry-run`. The fresh environment borrows the test environment's dependencies
(torch, Ray, MLflow: a path file) but not its editable ltray."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _run(argv: list[str], cwd: Path, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `bin/` folder of a fresh virtual environment with ltray installed from a freshly built wheel. The wheel is
    built from a copy of the package's sources: setuptools builds in the source tree's `build/`, whose leftovers
    (modules deleted since) would otherwise go into the wheel."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    shutil.copytree(ROOT / "ltray", source / "ltray", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                  str(base / "dist"), str(source)], base)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((base / "dist").glob("ltray-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "ltray/configs/sweep_colt.yaml" in names and "ltray/splits/digits-lt/digits-lt_split1.json" in names
    venv = base / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], base)
    assert made.returncode == 0, made.stderr
    fresh_site = Path(_run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                           base).stdout.strip())
    (fresh_site / "borrowed_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    added = _run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps", "-q",
                  str(wheel)], base)
    assert added.returncode == 0, added.stderr[-3000:]
    return venv / "bin"


def test_the_installed_package_is_the_wheel_not_the_checkout(installed, tmp_path):
    done = _run([str(installed / "python"), "-c", "import ltray; print(ltray.__file__)"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert str(installed.parent) in done.stdout and str(ROOT) not in done.stdout


def test_ltray_pretrain_on_digits_lt_from_an_empty_folder(installed, tmp_path):
    done = _run([str(installed / "ltray"), "pretrain", "--set", "data.dataset=digits-lt", "--set", "optim.epochs=1",
                 "--set", "model.width=0.125", "--set", "run.name=wheel", "--set", "eval.probe_epochs_scale=0.05",
                 "--set", f"run.output_dir={tmp_path / 'out'}"], tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert list((tmp_path / "out").rglob("epoch_0001.pt"))


def test_the_main_jobs_dry_run_from_an_empty_folder(installed, tmp_path):
    done = _run([str(installed / "python"), str(ROOT / "experiments" / "sweep_colt.py"), "--dry-run"], tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "simclr" in done.stdout and "colt" in done.stdout
