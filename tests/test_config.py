"""The typed configuration: YAML + dotted overrides, coercion, validation (one-line ConfigError), round-trip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ltray.config import Config, config_from_dict, load_config, parse_override, set_dotted, validate
from ltray.data.splits import lt_profile
from ltray.errors import ConfigError


def _error(overrides: dict[str, Any] | list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    message = str(info.value)
    assert message and "\n" not in message, f"not a one-line message: {message!r}"
    return message


def test_defaults_are_valid_and_documented_values() -> None:
    cfg = load_config()
    assert cfg.method.name == "simclr" and cfg.method.temperature == 0.2
    assert cfg.optim.lr == 0.5 and cfg.optim.momentum == 0.9 and cfg.optim.weight_decay == 1e-4
    assert cfg.method.sdclr.prune_ratio == 0.9 and cfg.method.bcl.beta == 0.97 and cfg.method.gh.target_dim == 100
    assert cfg.data.split_protocol == "sdclr" and cfg.eval.protocol == "sdclr_sgd" and cfg.eval.grouping == "thirds"
    assert cfg.run_dir == Path("runs") / "run"


def test_yaml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "method:\n  name: sdclr+gh\n  temperature: 0.3\n  gh:\n    warmup: 20\n"
        "optim:\n  weight_decay: 5e-4\n  epochs: 40\nrun:\n  name: exp1\n"
    )
    cfg = load_config(path, ["method.temperature=0.5", "optim.lr=1", "model.sync_bn=false", "data.root=null"])
    assert cfg.method.name == "sdclr+gh" and cfg.method.gh.warmup == 20
    assert cfg.method.temperature == 0.5  # the override wins over the file
    assert cfg.optim.weight_decay == 5e-4 and isinstance(cfg.optim.weight_decay, float)  # YAML reads 5e-4 as text
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.model.sync_bn is False and cfg.data.root is None and cfg.run.name == "exp1"
    assert cfg.optim.epochs == 40 and isinstance(cfg.optim.epochs, int)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("optim.epochs", "12", 12),
        ("optim.epochs", 12.0, 12),
        ("optim.lr", "0.25", 0.25),
        ("optim.lr", 2, 2.0),
        ("model.sync_bn", "yes", True),
        ("model.sync_bn", "0", False),
        ("run.name", 123, "123"),
        ("data.splits_dir", None, None),
    ],
)
def test_type_coercion(key: str, value: Any, expected: Any) -> None:
    cfg = load_config(None, {key: value})
    section, name = key.split(".")
    got = getattr(getattr(cfg, section), name)
    assert got == expected and type(got) is type(expected)


def test_mapping_overrides_and_sections() -> None:
    cfg = load_config(None, {"method": {"name": "bcl", "bcl": {"rand_k": 2}}})
    assert cfg.method.name == "bcl" and cfg.method.bcl.rand_k == 2


def test_parse_override() -> None:
    assert parse_override("a.b=0.5") == ("a.b", 0.5)
    assert parse_override(" a.b =true") == ("a.b", True)
    assert parse_override("a=null") == ("a", None)
    assert parse_override("a=") == ("a", "")
    assert parse_override("a=x=y") == ("a", "x=y")
    assert parse_override("run.progress=off") == ("run.progress", "off")
    assert parse_override("model.sync_bn=off") == ("model.sync_bn", "off")  # YAML 1.2: only true/false are booleans
    assert parse_override("data.root=null") == ("data.root", None)
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("novalue")


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("run.progress=off", "progress", "off"),
        ("run.progress=on", "progress", "on"),
        ("run.progress=auto", "progress", "auto"),
        ("run.amp=off", "amp", "off"),
        ("run.name=yes", "name", "yes"),
        ("run.name=010", "name", "010"),
        ("run.name=1.50", "name", "1.50"),
        ("run.name=2024-01-02", "name", "2024-01-02"),
        ("run.name='on'", "name", "on"),
    ],
)
def test_text_fields_keep_the_text_of_a_set(override: str, key: str, expected: str) -> None:
    assert getattr(load_config(None, [override]).run, key) == expected


def test_on_off_words_in_config_files_and_mappings(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  sync_bn: off\n  channels_last: yes\nrun:\n  progress: off\n  amp: off\n  name: no\n")
    cfg = load_config(path)
    assert (cfg.run.progress, cfg.run.amp, cfg.run.name) == ("off", "off", "no")
    assert cfg.model.sync_bn is False and cfg.model.channels_last is True
    # a mapping read by a YAML 1.1 reader elsewhere (plain yaml.safe_load of a sweep file) holds booleans
    from_safe_load = load_config(None, {"run.progress": False, "run.amp": False, "model.sync_bn": "on"})
    assert (from_safe_load.run.progress, from_safe_load.run.amp, from_safe_load.model.sync_bn) == ("off", "off", True)
    assert load_config(None, ["model.sync_bn=off"]).model.sync_bn is False
    assert load_config(None, ["data.root=null"]).data.root is None
    assert "run.amp must be one of auto, off, bf16, fp16; got 'on'" in _error({"run.amp": True})
    assert "run.progress must be one of auto, on, off; got 'maybe'" in _error(["run.progress=maybe"])


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"method.name": "moco"}, "unknown method part 'moco'"),
        ({"method.name": "simclr+focal"}, "two loss bases"),
        ({"data.dataset": "mnist"}, "data.dataset"),
        ({"method.temperature": 0}, "method.temperature"),
        ({"method.temperature": -0.1}, "method.temperature"),
        ({"method.temperature": "nan"}, "method.temperature"),
        ({"optim.batch_size": 1}, "optim.batch_size"),
        ({"method.sdclr.prune_ratio": 1.5}, "prune_ratio"),
        ({"method.sdclr.prune_ratio": -0.1}, "prune_ratio"),
        ({"method.sdclr.random_prune_fraction": 0.95}, "random_prune_fraction"),
        ({"method.sdclr.head_layers": 4}, "head_layers"),
        ({"method.gh.target_dim": 130}, "approximate_target"),
        ({"method.gh.target_dim": 1}, "target_dim"),
        ({"method.gh.warmup": -1}, "method.gh.warmup"),
        ({"method.gh.ramp_epochs": 0}, "ramp_epochs"),
        ({"method.gh.beta": 1.0}, "method.gh.beta"),
        ({"method.gh.sinkhorn_iters": 0}, "sinkhorn_iters"),
        ({"method.gh.prior_refresh": "never"}, "prior_refresh"),
        ({"method.colt.warmup": -1}, "method.colt.warmup"),
        ({"method.colt.interval": 0}, "method.colt.interval"),
        ({"method.colt.budget": 0}, "method.colt.budget"),
        ({"method.colt.pool": "web"}, "method.colt.pool"),
        ({"method.bcl.beta": 1.0}, "method.bcl.beta"),
        ({"method.bcl.strength": 31}, "method.bcl.strength"),
        ({"method.bcl.rand_k": 0}, "rand_k"),
        ({"method.focal.gamma": -1}, "gamma"),
        ({"method.lotar.sign": 2}, "method.lotar.sign"),
        ({"method.lotar.distance": "manhattan"}, "distance"),
        ({"model.arch": "vit"}, "model.arch"),
        ({"model.width": 0}, "model.width"),
        ({"optim.optimizer": "adam"}, "optim.optimizer"),
        ({"optim.lr": 0}, "optim.lr"),
        ({"optim.min_lr": 1.0}, "min_lr"),
        ({"optim.epochs": 0}, "optim.epochs"),
        ({"optim.momentum": 1.0}, "momentum"),
        ({"optim.schedule": "step"}, "optim.schedule"),
        ({"eval.protocol": "knn"}, "eval.protocol"),
        ({"eval.grouping": "halves"}, "eval.grouping"),
        ({"eval.probe_epochs_scale": 0}, "probe_epochs_scale"),
        ({"eval.probe_augment": False, "eval.protocol": "gh_adam"}, "eval.probe_augment"),
        ({"data.split": 0}, "data.split"),
        ({"data.subset": "S_b"}, "data.subset"),
        ({"data.split_protocol": "lotar"}, "split_protocol"),
        ({"data.dataset": "imagenet100"}, "data.root is required"),
        ({"run.name": "a/b"}, "run.name"),
        ({"run.device": "tpu"}, "run.device"),
        ({"run.amp": "fp8"}, "run.amp"),
        ({"run.checkpoint_every": 0}, "checkpoint_every"),
    ],
)
def test_invalid_values_raise_one_line_config_errors(overrides: dict[str, Any], fragment: str) -> None:
    assert fragment in _error(overrides)


def test_gh_target_dim_above_129_is_allowed_with_the_approximate_target() -> None:
    assert load_config(None, {"method.gh.target_dim": 129}).method.gh.target_dim == 129
    cfg = load_config(None, {"method.gh.target_dim": 200, "method.gh.approximate_target": True})
    assert cfg.method.gh.target_dim == 200


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"optim.epochs": "many"}, "must be an integer"),
        ({"optim.epochs": 2.5}, "must be an integer"),
        ({"optim.epochs": True}, "must be an integer"),
        ({"optim.lr": "fast"}, "must be a number"),
        ({"optim.lr": False}, "must be a number"),
        ({"model.sync_bn": "maybe"}, "true or false"),
        ({"model.sync_bn": 1}, "true or false"),
        ({"optim.lr": None}, "may not be null"),
        ({"run.name": [1, 2]}, "single value"),
        ({"optim": 3}, "is a section"),
        ({"method.name.x": 1}, "is a value, not a section"),
    ],
)
def test_bad_types_raise_config_errors(overrides: dict[str, Any], fragment: str) -> None:
    assert fragment in _error(overrides)


def test_unknown_keys_name_the_known_ones() -> None:
    message = _error(["optim.learning_rate=0.1"])
    assert "unknown config key 'optim.learning_rate'" in message and "lr" in message
    assert "unknown config key" in _error({"nonsense": 1})


def test_imbalance_below_one_is_rejected_by_split_making() -> None:
    with pytest.raises(ConfigError, match="imbalance"):
        lt_profile(100, 10, 0.5)


def test_config_files_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(bad)
    assert "\n" not in str(info.value)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listed)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="is empty; leave out --config"):
        load_config(empty)


def test_round_trip_through_a_dict() -> None:
    cfg = load_config(None, {"method.name": "sdclr+bcl+gh", "method.gh.warmup": 3, "optim.weight_decay": 5e-4,
                             "data.root": "/data", "eval.probe_epochs_scale": 0.1, "run.name": "x"})
    again = config_from_dict(cfg.to_dict())
    assert again == cfg and again.to_dict() == cfg.to_dict()
    with pytest.raises(ConfigError, match="unknown config key"):
        config_from_dict({**cfg.to_dict(), "extra": 1})


def test_replace_validates_and_leaves_the_original() -> None:
    cfg = load_config()
    new = cfg.replace({"method.temperature": 0.5, "method.name": "focal"})
    assert new.method.temperature == 0.5 and cfg.method.temperature == 0.2
    with pytest.raises(ConfigError):
        cfg.replace({"method.temperature": -1})
    assert cfg.method.temperature == 0.2


def test_set_dotted_then_validate() -> None:
    cfg = Config()
    set_dotted(cfg, "method.colt.warmup", -5)
    with pytest.raises(ConfigError, match="method.colt.warmup must be >= 0"):
        validate(cfg)


def test_prune_ratio_one_is_accepted_as_sdclr_defines_it() -> None:
    cfg = load_config(None, {"method.name": "sdclr", "method.sdclr.prune_ratio": 1.0})
    assert cfg.method.sdclr.prune_ratio == 1.0
