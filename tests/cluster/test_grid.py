"""Sweep specifications: axes, expansion into trials, naming, configuration keys, resources."""

from __future__ import annotations

from pathlib import Path

import pytest

from ltray.cluster.grid import (
    AshaSettings,
    SweepSpec,
    Trial,
    TrialResources,
    check_axis,
    config_key,
    expand_trials,
    key_applies,
    load_sweep_spec,
    max_concurrent_trials,
    parse_axis,
    parse_int_list,
    trial_name,
)
from ltray.config import Config
from ltray.errors import ConfigError, LtrayError

ROOT = Path(__file__).resolve().parents[2]


def _spec(axes: dict) -> SweepSpec:
    return SweepSpec(name="s", experiment="e", base=Config(), axes=axes)


def test_grid_is_the_product_of_the_axes_with_inapplicable_keys_collapsed():
    trials = expand_trials(_spec({
        "method.name": ["simclr", "colt"], "method.colt.budget": [250, 500], "data.split": [1, 2],
    }))
    # simclr ignores the COLT budget: 2 splits; colt: 2 budgets x 2 splits.
    assert [t.name for t in trials] == [
        "simclr_split=1", "simclr_split=2",
        "colt_colt.budget=250_split=1", "colt_colt.budget=250_split=2",
        "colt_colt.budget=500_split=1", "colt_colt.budget=500_split=2",
    ]
    assert [t.config_key for t in trials] == ["simclr"] * 2 + ["colt colt.budget:250"] * 2 + \
        ["colt colt.budget:500"] * 2
    assert trials[0].overrides == {"method.name": "simclr", "data.split": 1}
    assert trials[0].config["method"]["colt"]["budget"] == Config().method.colt.budget
    assert trials[5].config["method"]["colt"]["budget"] == 500 and trials[5].config["data"]["split"] == 2
    assert trials[5].config["run"]["name"] == trials[5].name


def test_component_keys_apply_only_to_methods_with_the_component():
    assert key_applies("method.sdclr.prune_ratio", "sdclr+gh")
    assert not key_applies("method.sdclr.prune_ratio", "simclr+gh")
    assert key_applies("method.gh.warmup", "sdclr+gh") and not key_applies("method.gh.warmup", "sdclr")
    assert key_applies("method.focal.gamma", "focal+lotar") and not key_applies("method.focal.gamma", "sdclr")
    assert key_applies("method.temperature", "simclr") and key_applies("optim.lr", "colt")


def test_seed_and_split_are_replicates_of_one_configuration():
    overrides = {"method.name": "gh", "method.gh.warmup": 5, "method.temperature": 0.3, "data.split": 2,
                 "run.seed": 11}
    assert config_key("gh", overrides) == "gh gh.warmup:5 temperature:0.3"
    assert trial_name("gh", overrides) == "gh_gh.warmup=5_temperature=0.3_split=2_seed=11"
    assert trial_name("sdclr+gh", {"model.channels_last": True}) == "sdclr+gh_channels_last=true"


def test_trial_round_trips_through_tune_parameters():
    trial = expand_trials(_spec({"method.name": ["sdclr"], "method.sdclr.prune_ratio": [0.3]}))[0]
    again = Trial.from_param(trial.to_param())
    assert again == trial
    assert again.build_config().method.sdclr.prune_ratio == 0.3


@pytest.mark.parametrize(
    ("key", "values", "message"),
    [
        ("method.nope", [1], "unknown config key 'method.nope'"),
        ("method", ["simclr"], "is a section"),
        ("method.temperature", [], "has no values"),
        ("method.temperature", 0.2, "must be a list"),
        ("method.temperature", [0.2, 0.2], "lists 0.2 twice"),
        ("run.name", ["x"], "set by the sweep"),
        ("method.temperature", [[0.1]], "must be a single value"),
    ],
)
def test_bad_axes_are_rejected(key, values, message):
    with pytest.raises(ConfigError, match=message):
        check_axis(key, values)


def test_an_invalid_value_names_the_trial():
    with pytest.raises(ConfigError, match=r"method.temperature=-1.*method.temperature must be > 0"):
        expand_trials(_spec({"method.temperature": [0.2, -1]}))
    with pytest.raises(ConfigError, match=r"axis method.name='dino'"):
        expand_trials(_spec({"method.name": ["dino"]}))


def test_axis_and_list_parsing():
    assert parse_axis("method.temperature=0.1,0.2") == ("method.temperature", [0.1, 0.2])
    assert parse_axis("method.name=simclr, sdclr+gh") == ("method.name", ["simclr", "sdclr+gh"])
    assert parse_axis("data.split=3") == ("data.split", [3])
    assert parse_int_list("1,2, 3", "--splits") == [1, 2, 3]
    with pytest.raises(ConfigError, match="--splits must be comma-separated integers"):
        parse_int_list("1,x", "--splits")
    with pytest.raises(ConfigError, match="twice"):
        parse_int_list("1,1", "--splits")
    with pytest.raises(ConfigError, match="empty value"):
        parse_axis("method.temperature=0.1,,0.2")
    with pytest.raises(ConfigError, match="key=value"):
        parse_axis("method.temperature")


@pytest.mark.parametrize(
    ("cluster", "resources", "trials", "expected"),
    [
        ({"CPU": 2.0}, TrialResources(), 6, 2),
        ({"CPU": 2.0}, TrialResources(workers=2, cpus_per_worker=0.5), 6, 2),
        ({"CPU": 2.0}, TrialResources(workers=2, cpus_per_worker=1.0), 6, 1),
        ({"CPU": 64.0, "GPU": 4.0}, TrialResources(cpus_per_worker=4, gpus_per_worker=1), 10, 4),
        ({"CPU": 64.0, "GPU": 4.0}, TrialResources(workers=2, cpus_per_worker=4, gpus_per_worker=1), 10, 2),
        ({"CPU": 64.0}, TrialResources(), 3, 3),
        ({"CPU": 3.0}, TrialResources(cpus_per_worker=0.1), 100, 30),
    ],
)
def test_concurrency_follows_the_cluster_resources(cluster, resources, trials, expected):
    assert max_concurrent_trials(cluster, resources, trials) == expected


def test_a_trial_larger_than_the_cluster_is_an_error():
    with pytest.raises(LtrayError, match="one trial needs 1 CPUs and 1 GPUs"):
        max_concurrent_trials({"CPU": 8.0}, TrialResources(gpus_per_worker=1), 4)
    with pytest.raises(ConfigError):
        TrialResources(workers=-1)


def test_sweep_yaml_with_relative_base_overrides_and_flags(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.yaml").write_text("data:\n  dataset: digits-lt\noptim:\n  epochs: 7\n")
    (tmp_path / "sweep.yaml").write_text(
        "name: demo\nexperiment: exp\nbase: run.yaml\noverrides:\n  method.temperature: 0.3\n"
        "axes:\n  method.name: [simclr, sdclr]\n  data.split: [1, 2]\n"
        "resources:\n  workers_per_trial: 2\n  cpus_per_worker: 0.5\nmax_failures: 3\n"
        "asha:\n  grace_period: 2\n"
    )
    spec = load_sweep_spec(tmp_path / "sweep.yaml", sets=["optim.epochs=9", "data.root=data"],
                           axes={"data.split": [4]})
    assert spec.name == "demo" and spec.experiment == "exp" and spec.max_failures == 3
    assert spec.base.data.dataset == "digits-lt" and spec.base.optim.epochs == 9
    assert spec.base.method.temperature == 0.3
    assert spec.base.data.root == str(tmp_path / "data")
    assert spec.axes == {"method.name": ["simclr", "sdclr"], "data.split": [4]}
    assert spec.resources == TrialResources(workers=2, cpus_per_worker=0.5)
    assert spec.asha == AshaSettings(grace_period=2)
    assert len(expand_trials(spec)) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("axes: [1, 2]\n", "'axes' must be a mapping"),
        ("colour: red\n", "unknown key 'colour'"),
        ("resources:\n  gpus: 1\n", "unknown key 'resources.gpus'"),
        ("asha:\n  metric: loss\n", "asha.metric must be one of"),
        ("axes: {method.name: [simclr]\n", "not valid YAML"),
        ("name: 'a b'\n", "sweep name 'a b'"),
        ("base: missing.yaml\n", "config file not found"),
    ],
)
def test_bad_sweep_yaml_is_one_config_error(tmp_path, text, message):
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_sweep_spec(path)


@pytest.mark.parametrize("name", ["sweep_colt", "sweep_sdclr", "sweep_gh", "sweep_colt_cifar100",
                                  "sweep_colt_cifar10"])
def test_shipped_sweep_configs_expand(name):
    spec = load_sweep_spec(ROOT / "ltray" / "configs" / f"{name}.yaml")
    trials = expand_trials(spec)
    assert len({t.name for t in trials}) == len(trials) >= 2
    assert {t.config["data"]["split"] for t in trials} >= {1, 2}


def test_extra_trials_run_on_every_split_and_form_their_own_configuration():
    spec = _spec({"method.name": ["simclr", "sdclr"], "data.split": [1, 2, 3]})
    spec.extra_trials = [{"data.subset": "D_b"}]
    trials = expand_trials(spec)
    extras = [t for t in trials if t.overrides.get("data.subset") == "D_b"]
    assert [t.name for t in extras] == [f"simclr_subset=D_b_split={k}" for k in (1, 2, 3)]
    assert len(trials) == 6 + 3
    assert {t.config_key for t in extras} == {"simclr subset:D_b"}
    assert all(t.build_config().data.subset == "D_b" for t in extras)
    assert [t.build_config().data.split for t in extras] == [1, 2, 3]


@pytest.mark.parametrize("extra, message", [
    ({}, "non-empty mapping"),
    ({"data.split": 2}, "set by the sweep's axes"),
    ({"data.subsett": "D_b"}, "unknown config key"),
    ({"method.temperature": [0.1, 0.2]}, "single value"),
])
def test_bad_extra_trials_are_rejected(extra, message):
    with pytest.raises(ConfigError, match=message):
        SweepSpec(name="s", experiment="e", base=Config(), axes={"data.split": [1]}, extra_trials=[extra])


def test_extra_trials_from_yaml(tmp_path):
    (tmp_path / "sweep.yaml").write_text(
        "name: s\naxes:\n  data.split: [1, 2]\nextra_trials:\n  - {data.subset: D_b, method.temperature: 0.5}\n"
    )
    spec = load_sweep_spec(tmp_path / "sweep.yaml")
    trials = expand_trials(spec)
    assert [t.name for t in trials][-2:] == ["simclr_subset=D_b_temperature=0.5_split=1",
                                             "simclr_subset=D_b_temperature=0.5_split=2"]
    (tmp_path / "bad.yaml").write_text("name: s\nextra_trials: {data.subset: D_b}\n")
    with pytest.raises(ConfigError, match="must be a list"):
        load_sweep_spec(tmp_path / "bad.yaml")


def test_in_process_trials_leave_cpus_for_their_ray_tasks():
    resources = TrialResources(workers=0, cpus_per_worker=0.5)
    assert max_concurrent_trials({"CPU": 2.0}, resources, 50) == 3
    assert max_concurrent_trials({"CPU": 1.0}, TrialResources(workers=0, cpus_per_worker=1.0), 5) == 1
    assert max_concurrent_trials({"CPU": 2.0}, TrialResources(workers=1, cpus_per_worker=0.5), 50) == 4
