"""Every config in ltray/configs/ (paper/ included) loads and validates: run configs with `load_config`,
sweep configs with `load_sweep_spec` and every expanded trial's config (`expand_trials` validates each)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ltray.cluster.grid import SPEC_KEYS, expand_trials, load_sweep_spec
from ltray.config import config_from_dict, load_config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "ltray" / "configs"
CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))


def is_sweep(path: Path) -> bool:
    keys = set(yaml.safe_load(path.read_text()) or {})
    return bool(keys) and keys <= set(SPEC_KEYS)


def test_the_paper_configs_exist() -> None:
    names = {path.stem for path in (CONFIG_DIR / "paper").glob("*.yaml")}
    for dataset in ("cifar10", "cifar100"):
        assert {f"{dataset}_{recipe}" for recipe in ("sdclr", "colt", "bcl_i", "bcl_d", "gh")} <= names
    assert {"imagenet100_simclr_colt", "imagenet100_sdclr", "imagenet100_mak", "imagenetlt_gh", "placeslt_gh",
            "placeslt_colt"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_config_validates(path: Path) -> None:
    if not is_sweep(path):
        load_config(path)
        return
    spec = load_sweep_spec(path)
    trials = expand_trials(spec)
    assert trials
    for trial in trials:
        config_from_dict(trial.config)
