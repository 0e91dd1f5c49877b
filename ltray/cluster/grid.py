"""Sweep specifications: a base run config plus grid axes over dotted config keys, expanded into validated trials.

A sweep YAML holds:

    name: colt_embedded              # sweep name: MLflow parent tag `ltray.sweep`, Ray Tune experiment folder
    experiment: ltray                # MLflow experiment
    base: embedded_simclr.yaml       # run config, relative to this file (or absolute)
    overrides: {method.colt.warmup: 10}
    axes:                            # grid: every combination is one trial
      method.name: [simclr, colt]
      method.colt.budget: [250, 500]
      data.split: [1, 2, 3]
    resources: {workers_per_trial: 1, cpus_per_worker: 1, gpus_per_worker: 0}
    max_failures: 1
    asha: {metric: knn_balanced, mode: max, grace_period: 5, reduction_factor: 2}   # optional
    extra_trials:                    # optional: configurations outside the grid, run on the same splits/seeds
      - {data.subset: D_b}           # e.g. the balanced-data SimCLR reference row

A key under `method.<component>.` (sdclr, focal, lotar, bcl, gh, colt, mak) only matters to methods that contain the
component, so such an axis is dropped from trials whose method lacks it and the duplicates collapse into one trial
(`simclr` is trained once, not once per COLT budget). The split and seed axes are replicates: the
`ltray.config_key` of a trial leaves them out, so summaries give mean ± std over splits (or seeds) per
configuration (docs/math/data_and_eval.md §9).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from ltray import method_names
from ltray.config import Config, config_from_dict, load_config, parse_override
from ltray.errors import ConfigError, LtrayError
from ltray.method_names import parse_method
from ltray.methods import components  # noqa: F401  (registers every method part and its config section)

SPLIT_KEY = "data.split"
SEED_KEY = "run.seed"
REPLICATE_KEYS = (SPLIT_KEY, SEED_KEY)
RESERVED_KEYS = ("run.name", "run.output_dir")
PATH_KEYS = (
    "data.root", "data.splits_dir", "data.train_list", "data.val_list", "data.test_list", "data.fewshot_list",
    "data.full_list", "data.extra_data", "method.colt.pool_path", "method.mak.pool",
)  # fmt: skip
MAK_POOL_KEY = "method.mak.pool"  # a pool folder, or `embedded`
SPEC_KEYS = ("name", "experiment", "base", "overrides", "axes", "resources", "max_failures", "asha", "extra_trials")
RESOURCE_KEYS = ("workers_per_trial", "cpus_per_worker", "gpus_per_worker")
ASHA_KEYS = ("metric", "mode", "grace_period", "reduction_factor")
KNN_METRICS = ("knn_balanced", "knn_top1")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def key_applies(key: str, method: str) -> bool:
    """Whether the dotted config key can change a run of `method`: a method part's section (`method.gh.*`) only
    matters to methods that contain the part."""
    parts = key.split(".")
    if len(parts) >= 3 and parts[0] == "method" and parts[1] in method_names.ORDER:
        return parse_method(method).has(parts[1])
    return True


@dataclass(frozen=True)
class TrialResources:
    """What one trial's Ray Train run asks for: `workers` processes, each with these CPUs and GPUs. `workers` 0
    trains in the Tune trial's own process (no Ray Train worker group), which then holds one worker's resources."""

    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ConfigError(f"workers per trial must be >= 0 (0: train in the trial's process), got {self.workers}")
        if self.cpus_per_worker <= 0:
            raise ConfigError(f"CPUs per worker must be > 0, got {self.cpus_per_worker}")
        if self.gpus_per_worker < 0:
            raise ConfigError(f"GPUs per worker must be >= 0, got {self.gpus_per_worker}")

    @property
    def in_process(self) -> bool:
        return self.workers == 0

    @property
    def cpus(self) -> float:
        return max(1, self.workers) * self.cpus_per_worker

    @property
    def gpus(self) -> float:
        return max(1, self.workers) * self.gpus_per_worker


@dataclass(frozen=True)
class AshaSettings:
    """ASHA early stopping on an epoch-indexed kNN metric reported by the training workers."""

    metric: str = "knn_balanced"
    mode: str = "max"
    grace_period: int = 5
    reduction_factor: int = 2

    def __post_init__(self) -> None:
        if self.metric not in KNN_METRICS:
            raise ConfigError(f"asha.metric must be one of {', '.join(KNN_METRICS)}, got {self.metric!r}")
        if self.mode not in ("max", "min"):
            raise ConfigError(f"asha.mode must be max or min, got {self.mode!r}")
        if self.grace_period < 1:
            raise ConfigError(f"asha.grace_period must be >= 1, got {self.grace_period}")
        if self.reduction_factor < 2:
            raise ConfigError(f"asha.reduction_factor must be >= 2, got {self.reduction_factor}")


@dataclass(frozen=True)
class Trial:
    """One point of the grid: a stable name, the axis values that apply to it, its configuration key (the axis
    values without split and seed) and the full validated config as a dict."""

    name: str
    overrides: dict[str, Any]
    config_key: str
    config: dict[str, Any]

    def to_param(self) -> dict[str, Any]:
        return {"name": self.name, "overrides": dict(self.overrides), "config_key": self.config_key,
                "config": self.config}

    @classmethod
    def from_param(cls, param: Mapping[str, Any]) -> Trial:
        return cls(name=param["name"], overrides=dict(param["overrides"]), config_key=param["config_key"],
                   config=dict(param["config"]))

    def build_config(self) -> Config:
        return config_from_dict(self.config)


@dataclass
class SweepSpec:
    """A sweep: base config, ordered axes, trial resources, failure budget and optional ASHA."""

    name: str
    experiment: str
    base: Config
    axes: dict[str, list[Any]] = field(default_factory=dict)
    resources: TrialResources = field(default_factory=TrialResources)
    max_failures: int = 1
    asha: AshaSettings | None = None
    extra_trials: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(f"sweep name {self.name!r} must be letters, digits, '.', '_' or '-'")
        if not self.experiment.strip() or "'" in self.experiment or '"' in self.experiment:
            raise ConfigError(f"MLflow experiment name {self.experiment!r} must be non-empty, without quotes")
        if self.max_failures < 0:
            raise ConfigError(f"max_failures must be >= 0, got {self.max_failures}")
        for key, values in self.axes.items():
            check_axis(key, values)
        for number, extra in enumerate(self.extra_trials):
            check_extra_trial(number, extra)

    def set_axis(self, key: str, values: Sequence[Any]) -> None:
        check_axis(key, values)
        self.axes[key] = list(values)

    def parameters(self) -> dict[str, Any]:
        """What the sweep's parent run records: the base config, the axes and the trial resources."""
        return {
            "base": self.base.to_dict(),
            "axes": {key: str(values) for key, values in self.axes.items()},
            "trial": {"workers": self.resources.workers, "cpus_per_worker": self.resources.cpus_per_worker,
                      "gpus_per_worker": self.resources.gpus_per_worker, "max_failures": self.max_failures},
            "asha": "off" if self.asha is None else f"{self.asha.metric} {self.asha.mode} "
                    f"grace {self.asha.grace_period} eta {self.asha.reduction_factor}",
            "extra_trials": str(self.extra_trials),
        }


def check_axis(key: str, values: Sequence[Any]) -> None:
    """An axis is a dotted config key (not a section, not run.name/run.output_dir) with distinct scalar values."""
    if key in RESERVED_KEYS:
        raise ConfigError(f"axis {key} is set by the sweep itself and cannot be swept")
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ConfigError(f"axis {key} must be a list of values, got {values!r}")
    if len(values) == 0:
        raise ConfigError(f"axis {key} has no values")
    seen: list[Any] = []
    for value in values:
        if isinstance(value, (dict, list, tuple)):
            raise ConfigError(f"axis {key} value {value!r} must be a single value")
        if value in seen:
            raise ConfigError(f"axis {key} lists {value!r} twice")
        seen.append(value)
    check_key(key)


def check_extra_trial(number: int, extra: Any) -> None:
    """An extra trial is a non-empty mapping of dotted config keys (not split or seed: those come from the axes)
    to single values."""
    if not isinstance(extra, Mapping) or not extra:
        raise ConfigError(f"extra_trials[{number}] must be a non-empty mapping of dotted keys, got {extra!r}")
    for key, value in extra.items():
        if key in RESERVED_KEYS or key in REPLICATE_KEYS:
            raise ConfigError(f"extra_trials[{number}]: {key} cannot be set here (it is set by the sweep's axes)")
        if isinstance(value, (dict, list, tuple)):
            raise ConfigError(f"extra_trials[{number}]: {key} must be a single value, got {value!r}")
        check_key(str(key))


def check_key(key: str) -> None:
    """ConfigError unless `key` names a value (not a section) of the config tree."""
    node: Any = Config
    parts = key.split(".")
    for position, part in enumerate(parts):
        types = get_type_hints(node) if dataclasses.is_dataclass(node) else {}
        if part not in types:
            where = ".".join(parts[:position]) or "the config"
            known = ", ".join(sorted(types)) if types else "no keys"
            raise ConfigError(f"unknown config key '{key}' ({where} has: {known})")
        node = types[part]
    if dataclasses.is_dataclass(node):
        raise ConfigError(f"config key '{key}' is a section, not a value")


def parse_axis(text: str) -> tuple[str, list[Any]]:
    """`key=v1,v2,...` (each value read as YAML, so numbers and booleans keep their types)."""
    key, raw = parse_override(text)
    if not isinstance(raw, str) and not isinstance(raw, (int, float, bool)):
        raise ConfigError(f"axis '{text}' must look like key=v1,v2,...")
    parts = [part.strip() for part in str(raw).split(",")] if isinstance(raw, str) else [str(raw)]
    if any(not part for part in parts):
        raise ConfigError(f"axis '{text}' has an empty value")
    values = [yaml.safe_load(part) for part in parts]
    check_axis(key, values)
    return key, values


def parse_int_list(text: str, what: str) -> list[int]:
    """`1,2,3` → [1, 2, 3]; anything else is a ConfigError naming `what`."""
    parts = [part.strip() for part in text.split(",")]
    try:
        values = [int(part) for part in parts]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated integers like 1,2,3; got {text!r}") from None
    if len(set(values)) != len(values):
        raise ConfigError(f"{what} lists a value twice: {text!r}")
    return values


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"sweep config not found: {path}")
    try:
        mapping = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        first = str(error).splitlines()[0] if str(error) else "invalid YAML"
        raise ConfigError(f"sweep config {path} is not valid YAML: {first}") from None
    if not isinstance(mapping, dict):
        raise ConfigError(f"sweep config {path} must hold a mapping at the top level")
    unknown = sorted(set(mapping) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"sweep config {path}: unknown key '{unknown[0]}' (known: {', '.join(SPEC_KEYS)})")
    return mapping


def _section(mapping: Mapping[str, Any], key: str, allowed: Sequence[str], path: Path) -> dict[str, Any]:
    value = mapping.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"sweep config {path}: '{key}' must be a mapping")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise ConfigError(f"sweep config {path}: unknown key '{key}.{unknown[0]}' (known: {', '.join(allowed)})")
    return value


def absolute_paths(cfg: Config, base_dir: Path) -> Config:
    """The config with every path value made absolute (relative to `base_dir`): Ray workers run elsewhere."""
    flat = cfg.to_dict()
    updates: dict[str, str] = {}
    for key in PATH_KEYS:
        section, *rest = key.split(".")
        value: Any = flat[section]
        for part in rest:
            value = value[part]
        if value and not (key == MAK_POOL_KEY and value == "embedded"):
            updates[key] = str((base_dir / Path(value).expanduser()).resolve())
    return cfg.replace(updates) if updates else cfg


def load_sweep_spec(
    path: str | Path,
    *,
    sets: Sequence[str] = (),
    axes: Mapping[str, Sequence[Any]] | None = None,
    name: str | None = None,
    experiment: str | None = None,
) -> SweepSpec:
    """Read a sweep YAML; `sets` are `key=value` overrides of the base config, `axes` add or replace axes."""
    path = Path(path).expanduser().resolve()
    mapping = _read_yaml(path)
    base_ref = mapping.get("base")
    base_path = None
    if base_ref is not None:
        if not isinstance(base_ref, str):
            raise ConfigError(f"sweep config {path}: 'base' must be a path to a run config")
        base_path = (path.parent / base_ref).resolve()
    overrides = mapping.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"sweep config {path}: 'overrides' must be a mapping of dotted keys")
    base = load_config(base_path, dict(overrides))
    if sets:
        base = base.replace(dict(parse_override(text) for text in sets))
    base = absolute_paths(base, Path.cwd())
    raw_axes = mapping.get("axes") or {}
    if not isinstance(raw_axes, dict):
        raise ConfigError(f"sweep config {path}: 'axes' must be a mapping from dotted keys to lists")
    resources = _section(mapping, "resources", RESOURCE_KEYS, path)
    asha = mapping.get("asha")
    if asha is not None:
        asha = AshaSettings(**_section(mapping, "asha", ASHA_KEYS, path))
    spec = SweepSpec(
        name=name or str(mapping.get("name") or path.stem),
        experiment=experiment or str(mapping.get("experiment") or "ltray"),
        base=base,
        axes={str(key): list(values) if isinstance(values, list) else values for key, values in raw_axes.items()},
        resources=TrialResources(
            workers=int(resources.get("workers_per_trial", 1)),
            cpus_per_worker=float(resources.get("cpus_per_worker", 1.0)),
            gpus_per_worker=float(resources.get("gpus_per_worker", 0.0)),
        ),
        max_failures=int(mapping.get("max_failures", 1)),
        asha=asha,
        extra_trials=_extra_trials(mapping.get("extra_trials"), path),
    )
    for key, values in (axes or {}).items():
        spec.set_axis(key, values)
    return spec


def _extra_trials(raw: Any, path: Path) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"sweep config {path}: 'extra_trials' must be a list of mappings")
    return [dict(item) if isinstance(item, Mapping) else item for item in raw]


def _value_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _short_key(key: str) -> str:
    for prefix in ("method.", "data.", "run.", "optim.", "model.", "eval."):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def trial_name(method: str, overrides: Mapping[str, Any]) -> str:
    """`<method>_<key>=<value>_...` over the trial's axis values (method.name first), filesystem and MLflow safe."""
    parts = [method] + [f"{_short_key(key)}={_value_text(value)}" for key, value in overrides.items()
                        if key != "method.name"]
    return re.sub(r"[^A-Za-z0-9_.=+\-]", "-", "_".join(parts))


def config_key(method: str, overrides: Mapping[str, Any]) -> str:
    """The configuration a trial belongs to: its method and axis values without the split and seed replicates."""
    parts = [method] + [f"{_short_key(key)}:{_value_text(value)}" for key, value in overrides.items()
                        if key != "method.name" and key not in REPLICATE_KEYS]
    return " ".join(parts)


def _assignments(spec: SweepSpec) -> list[dict[str, Any]]:
    """The grid's combinations, then each extra trial crossed with the replicate axes (split, seed)."""
    keys = list(spec.axes)
    grid = [dict(zip(keys, combination)) for combination in itertools.product(*(spec.axes[key] for key in keys))]
    replicate_keys = [key for key in keys if key in REPLICATE_KEYS]
    replicates = [dict(zip(replicate_keys, combination))
                  for combination in itertools.product(*(spec.axes[key] for key in replicate_keys))]
    extras = [{**extra, **replicate} for extra in spec.extra_trials for replicate in replicates]
    return grid + extras


def expand_trials(spec: SweepSpec) -> list[Trial]:
    """Every combination of the axes as a validated trial, then the extra trials on every split/seed of the axes;
    inapplicable component keys are dropped and the resulting duplicates collapse. Raises ConfigError naming the
    offending axis value."""
    trials: list[Trial] = []
    seen: set[tuple[tuple[str, str], ...]] = set()
    for assignment in _assignments(spec):
        method = str(assignment.get("method.name", spec.base.method.name))
        try:
            parse_method(method)
        except ConfigError as error:
            raise ConfigError(f"axis method.name={method!r}: {error}") from None
        applied = {key: value for key, value in assignment.items() if key_applies(key, method)}
        identity = tuple((key, repr(value)) for key, value in applied.items())
        if identity in seen:
            continue
        seen.add(identity)
        name = trial_name(method, applied)
        try:
            cfg = spec.base.replace({**applied, "run.name": name})
        except ConfigError as error:
            where = ", ".join(f"{key}={value!r}" for key, value in applied.items()) or "the base config"
            raise ConfigError(f"sweep trial with {where}: {error}") from None
        trials.append(Trial(name=name, overrides=applied, config_key=config_key(method, applied),
                            config=cfg.to_dict()))
    names = [trial.name for trial in trials]
    if len(set(names)) != len(names):
        duplicate = next(name for name in names if names.count(name) > 1)
        raise ConfigError(f"two trials would share the name {duplicate!r}; axis values must differ as text")
    return trials


IN_PROCESS_RESERVED_CPUS = 0.5


def max_concurrent_trials(cluster: Mapping[str, float], resources: TrialResources, num_trials: int) -> int:
    """How many trials fit side by side in the cluster's CPUs and GPUs (each trial holds its workers' resources;
    its Tune driver holds none). Several in-process trials leave `IN_PROCESS_RESERVED_CPUS` free for the sweep's
    driver, Ray's own processes and the MLflow logging, which the trials' CPUs otherwise crowd out on a small
    machine. ConfigError when not even one fits."""
    eps = 1e-9
    cpus, gpus = float(cluster.get("CPU", 0.0)), float(cluster.get("GPU", 0.0))
    fit = math.floor(cpus / resources.cpus + eps)  # resources.cpus > 0 (TrialResources)
    if resources.in_process and fit > 1:
        fit = max(1, math.floor((cpus - IN_PROCESS_RESERVED_CPUS) / resources.cpus + eps))
    if resources.gpus > 0:
        fit = min(fit, math.floor(gpus / resources.gpus + eps))
    if fit < 1:
        raise LtrayError(
            f"one trial needs {resources.cpus:g} CPUs and {resources.gpus:g} GPUs "
            f"({resources.workers} workers), but the Ray cluster has {cpus:g} CPUs and {gpus:g} GPUs; "
            "lower --workers-per-trial, --cpus-per-worker or --gpus-per-worker"
        )
    return max(1, min(fit, num_trials))
