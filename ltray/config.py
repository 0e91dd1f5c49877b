"""One typed configuration object, validated on the driver, that flows from the CLI to every worker.

A config is a tree of dataclasses. It is read from YAML (`load_config`) and overridden with dotted
`key=value` pairs (`method.temperature=0.3`). Every value is validated up front by `validate`, which raises
`ConfigError` with a one-line message.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from ltray.errors import ConfigError
from ltray.method_names import parse_method

ARRAY_DATASETS = ("scenes-lt", "digits-lt", "cifar10", "cifar100")
LIST_DATASETS = ("imagenet100", "imagenet-lt", "places-lt")
DATASETS = ARRAY_DATASETS + LIST_DATASETS
ARCHS = ("resnet18_cifar", "resnet50_cifar", "resnet50")
SPLIT_PROTOCOLS = ("sdclr", "cao", "custom")
EVAL_PROTOCOLS = ("sdclr_sgd", "bcl_adam", "gh_adam", "lotar_adam")
GROUPINGS = ("thirds", "thresholds", "lotar_343")
AUG_PRESETS = ("sdclr", "gh", "lotar")


@dataclass
class DataConfig:
    dataset: str = "scenes-lt"
    root: str | None = None
    splits_dir: str | None = None
    split: int = 1
    subset: str = "D_i"
    split_protocol: str = "sdclr"
    aug_preset: str = "sdclr"
    train_list: str | None = None
    val_list: str | None = None
    test_list: str | None = None
    fewshot_list: str | None = None
    full_list: str | None = None
    extra_data: str | None = None
    loader_workers: int = 0


@dataclass
class ModelConfig:
    arch: str = "resnet18_cifar"
    width: float = 1.0
    channels_last: bool = False
    sync_bn: bool = True


@dataclass
class SDCLRConfig:
    prune_ratio: float = 0.9
    random_prune_fraction: float = 0.0
    dual_bn: bool = True
    head_layers: int = 3
    mask_seed: int = 0

    def validate(self, cfg: Config) -> None:
        _check(0 <= self.prune_ratio <= 1, f"method.sdclr.prune_ratio must be in [0, 1], got {self.prune_ratio}")
        _check(0 <= self.random_prune_fraction <= self.prune_ratio,
               "method.sdclr.random_prune_fraction must be in [0, prune_ratio]")
        _one_of(self.head_layers, (2, 3), "method.sdclr.head_layers")


@dataclass
class FocalConfig:
    gamma: float = 2.0

    def validate(self, cfg: Config) -> None:
        _check(self.gamma >= 0, f"method.focal.gamma must be >= 0, got {self.gamma}")


@dataclass
class LoTaRConfig:
    distance: str = "euclid_raw"
    sign: int = 1
    detach_weight: bool = False

    def validate(self, cfg: Config) -> None:
        _one_of(self.distance, ("euclid_raw", "euclid_norm", "cosine"), "method.lotar.distance")
        _one_of(self.sign, (1, -1), "method.lotar.sign")


@dataclass
class BCLConfig:
    beta: float = 0.97
    rand_k: int = 1
    strength: int = 30

    def validate(self, cfg: Config) -> None:
        _check(0 <= self.beta < 1, "method.bcl.beta must be in [0, 1)")
        _check(self.rand_k >= 1, "method.bcl.rand_k must be >= 1")
        _check(0 < self.strength <= 30, "method.bcl.strength must be in (0, 30]")


@dataclass
class GHConfig:
    target_dim: int = 100
    warmup: int = 500
    ramp_epochs: int = 10
    beta: float = 0.999
    sinkhorn_iters: int = 300
    prior_refresh: str = "iteration"
    target_construction: str = "qr"
    approximate_target: bool = False
    target_seed: int = 0

    def validate(self, cfg: Config) -> None:
        epochs = cfg.optim.epochs
        _check(self.target_dim >= 2, "method.gh.target_dim must be >= 2")
        _check(self.warmup >= 0, f"method.gh.warmup must be >= 0, got {self.warmup}")
        _check(not parse_method(cfg.method.name).has("gh") or self.warmup < epochs,
               f"method.gh.warmup={self.warmup} leaves GH off for the whole run (its weight is 0 up to epoch "
               f"{self.warmup}, optim.epochs={epochs}): set method.gh.warmup below {epochs}")
        _check(self.ramp_epochs >= 1, "method.gh.ramp_epochs must be >= 1")
        _check(0 <= self.beta < 1, "method.gh.beta must be in [0, 1)")
        _check(self.sinkhorn_iters >= 1, "method.gh.sinkhorn_iters must be >= 1")
        _one_of(self.prior_refresh, ("iteration", "epoch_end"), "method.gh.prior_refresh")
        _one_of(self.target_construction, ("qr", "polar"), "method.gh.target_construction")
        if self.target_dim > 128 + 1 and not self.approximate_target:
            raise ConfigError(
                f"method.gh.target_dim={self.target_dim} exceeds d+1=129: no simplex ETF exists; "
                "set method.gh.approximate_target=true to use an approximate target"
            )


@dataclass
class COLTConfig:
    warmup: int = 100
    interval: int = 25
    budget: int = 10000
    topk: int = 10
    clusters: int = 10
    cluster_temperature: float = 1.0
    beta: float = 0.97
    sup_weight: float = 0.2
    lr_total: str = "reference"
    kmeans_seed: int = 0
    pool: str = "embedded"
    pool_path: str | None = None
    pool_size: int = 10000

    def validate(self, cfg: Config) -> None:
        epochs = cfg.optim.epochs
        _check(self.warmup >= 0, f"method.colt.warmup must be >= 0, got {self.warmup}")
        _check(self.interval >= 1, f"method.colt.interval must be >= 1, got {self.interval}")
        _check(not parse_method(cfg.method.name).has("colt") or self.warmup < epochs,
               f"method.colt.warmup={self.warmup} leaves COLT off for the whole run (its first resample starts "
               f"epoch {self.warmup + 1}, optim.epochs={epochs}): set method.colt.warmup below {epochs}")
        _check(self.budget >= 1, f"method.colt.budget must be >= 1, got {self.budget}")
        _check(self.topk >= 1, "method.colt.topk must be >= 1")
        _check(self.clusters >= 1, "method.colt.clusters must be >= 1")
        _check(self.cluster_temperature > 0, "method.colt.cluster_temperature must be > 0")
        _check(0 <= self.beta < 1, "method.colt.beta must be in [0, 1)")
        _check(self.sup_weight >= 0, "method.colt.sup_weight must be >= 0")
        _one_of(self.lr_total, ("reference", "exact"), "method.colt.lr_total")
        _one_of(self.pool, ("embedded", "random300k", "list", "parquet"), "method.colt.pool")
        _check(self.pool_size >= 1, "method.colt.pool_size must be >= 1")


@dataclass
class MakConfig:
    """MAK (docs/math/mak.md §1, §8): the candidate pool and budget of a sweep trial and every sampling parameter,
    read by `ltray.pools.mak_job.mak_sample`. `pool` is `embedded` (the embedded OOD pool, `pool_size` items) or a
    pool folder made by `ltray pool import`; `extractor_epochs` 0 trains the feature extractor for `optim.epochs`.
    A field with `flag` help is also an `ltray mak sample` flag."""

    pool: str = "embedded"
    pool_size: int = 10000
    budget: int = 10000
    passes: int = 10  # R
    loss_weight: float = field(default=0.5, metadata={"flag": "w, the weight of ECLE tailness against proximity"})
    core_ratio: float = field(default=1.5, metadata={"flag": "core set size as a multiple of the budget"})
    clusters: int = field(default=10, metadata={"flag": "K_p, k-means clusters of the ID features for proximity"})
    regroupings: int = field(default=10, metadata={"flag": "Q, ECLE regroupings per pass pair"})
    ecle_batch: int = 512  # B_E
    ecle_temperature: float = 0.2  # τ_E
    ecle_seed: int = field(default=0, metadata={"flag": "seed of the ECLE regroupings"})
    kmeans_seed: int = field(default=0, metadata={"flag": "seed of the proximity k-means"})
    scoring_batch: int = 256
    extractor_epochs: int = 0

    def validate(self, cfg: Config) -> None:
        _check(bool(self.pool.strip()), "method.mak.pool must be 'embedded' or a pool folder")
        _check(self.pool_size >= 1, f"method.mak.pool_size must be >= 1, got {self.pool_size}")
        _check(self.budget >= 1, f"method.mak.budget must be >= 1, got {self.budget}")
        _check(self.pool != "embedded" or self.budget <= self.pool_size,
               f"method.mak.budget={self.budget} exceeds method.mak.pool_size={self.pool_size}")
        _check(self.passes >= 2, f"method.mak.passes must be >= 2 (ECLE needs two augmented passes), got {self.passes}")
        _check(0 <= self.loss_weight <= 1,
               f"method.mak.loss_weight must be in [0, 1], got {self.loss_weight} (the loss weight w must lie in [0, 1])")
        _check(self.core_ratio > 0, f"method.mak.core_ratio must be > 0, got {self.core_ratio}")
        _check(self.clusters >= 1, f"method.mak.clusters must be >= 1, got {self.clusters}")
        _check(min(self.regroupings, self.ecle_batch, self.scoring_batch) >= 1,
               "mak clusters, regroupings, ECLE batch and scoring batch must be >= 1")
        _check(self.ecle_temperature > 0, f"the ECLE temperature must be > 0, got {self.ecle_temperature}")
        _check(self.extractor_epochs >= 0, f"method.mak.extractor_epochs must be >= 0, got {self.extractor_epochs}")
        d = cfg.data
        _check(not parse_method(cfg.method.name).has("mak") or self.pool != "embedded" or bool(d.extra_data)
               or d.dataset in ("scenes-lt", "digits-lt"),
               f"method.mak.pool=embedded has 16x16 images; {d.dataset} needs a pool folder of its image size "
               "(ltray pool import)")


# The option sections of method parts added as plugins (`ltray.methods.registry.register(name, config=...)`): each
# config gets one instance per section, read as `cfg.method.<name>` and set as `method.<name>.<key>`.
METHOD_SECTIONS: dict[str, type] = {}


def register_method_section(name: str, section: type) -> None:
    """Add the option section `method.<name>` (a dataclass with defaults; a `validate(cfg)` method, if it has one,
    raises ConfigError for bad values). Configs made afterwards have it."""
    if not dataclasses.is_dataclass(section):
        raise TypeError(f"the options of method part {name!r} must be a dataclass, got {section!r}")
    if name in METHOD_SECTIONS or name in {f.name for f in dataclasses.fields(MethodConfig)}:
        raise ValueError(f"method section {name!r} registered twice")
    METHOD_SECTIONS[name] = section


def _plugin_sections() -> dict[str, Any]:
    return {name: section() for name, section in METHOD_SECTIONS.items()}


@dataclass
class MethodConfig:
    name: str = "simclr"
    temperature: float = 0.2
    sdclr: SDCLRConfig = field(default_factory=SDCLRConfig)
    focal: FocalConfig = field(default_factory=FocalConfig)
    lotar: LoTaRConfig = field(default_factory=LoTaRConfig)
    bcl: BCLConfig = field(default_factory=BCLConfig)
    gh: GHConfig = field(default_factory=GHConfig)
    colt: COLTConfig = field(default_factory=COLTConfig)
    mak: MakConfig = field(default_factory=MakConfig)
    plugins: dict[str, Any] = field(default_factory=_plugin_sections)

    def __getattr__(self, name: str) -> Any:
        """A plugin part's section (`cfg.method.align`); called only where no field has the name."""
        plugins = self.__dict__.get("plugins")
        if plugins is not None and name in plugins:
            return plugins[name]
        raise AttributeError(f"method config has no section {name!r}")

    def sections(self) -> list[Any]:
        """Every part's option section: the shipped ones, then the plugins'."""
        values = [getattr(self, f.name) for f in dataclasses.fields(self)]
        return [value for value in values if dataclasses.is_dataclass(value)] + list(self.plugins.values())


@dataclass
class OptimConfig:
    optimizer: str = "sgd"
    lr: float = 0.5
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lars_eta: float = 1e-3
    epochs: int = 2000
    batch_size: int = 512
    warmup_epochs: int = 10
    min_lr: float = 1e-6
    schedule: str = "cosine"
    lr_step_after: bool = False
    gh_lr_min_stage1: float = 0.3
    gh_lr_max_stage2: float = 0.3


@dataclass
class EvalConfig:
    protocol: str = "sdclr_sgd"
    grouping: str = "thirds"
    full_shot: bool = True
    few_shot: bool = True
    kshot: int = 10
    kshot_draws: int = 3
    probe_epochs_scale: float = 1.0
    probe_augment: bool = True
    knn_every: int = 0
    knn_k: int = 50


@dataclass
class RunConfig:
    name: str = "run"
    output_dir: str = "runs"
    seed: int = 10
    device: str = "auto"
    amp: str = "auto"
    checkpoint_every: int = 10
    progress: str = "auto"


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain values; plugin sections sit beside the shipped ones (`method.<name>`)."""
        values = dataclasses.asdict(self)
        values["method"].update(values["method"].pop("plugins"))
        return values

    def replace(self, overrides: dict[str, Any]) -> Config:
        """A validated copy with dotted-key overrides applied (used by sweeps)."""
        new = copy.deepcopy(self)
        for key, value in overrides.items():
            set_dotted(new, key, value)
        validate(new)
        return new

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name


class ConfigYamlLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader with YAML 1.2 booleans: only true/false (any case) are booleans, so `on`, `off`, `yes`
    and `no` stay text, as `run.progress: off` means. Boolean fields still accept those words (`_coerce`)."""


ConfigYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ConfigYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_BOOL_WORDS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False, "1": True, "0": False}


def read_yaml(text: str) -> Any:
    """Parse config YAML with `ConfigYamlLoader`."""
    return yaml.load(text, Loader=ConfigYamlLoader)  # noqa: S506 - a SafeLoader subclass


def _field_types(obj: Any) -> dict[str, Any]:
    """The settable fields of a config section: its declared fields, and for `method` its plugin sections."""
    types = get_type_hints(type(obj))
    if isinstance(obj, MethodConfig):
        del types["plugins"]
        types.update({name: type(section) for name, section in obj.plugins.items()})
    return types


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    text = str(annotation)
    if dataclasses.is_dataclass(annotation):
        raise ConfigError(f"{key} is a section, not a value")
    if value is None:
        if "None" in text:
            return None
        raise ConfigError(f"{key} may not be null")
    if annotation is bool or text.startswith("bool"):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.lower()]
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if annotation is int or text.startswith("int"):
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            if isinstance(value, str):
                try:
                    return int(value)
                except ValueError:
                    pass
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return int(value)
    if annotation is float or text.startswith("float"):
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
    if isinstance(value, (dict, list)):
        raise ConfigError(f"{key} must be a single value, got {value!r}")
    if isinstance(value, bool):
        # a YAML 1.1 reader (plain yaml.safe_load, e.g. of a sweep file) turned on/off/yes/no into a boolean;
        # every on/off choice of this config is spelled "on"/"off", so that is the text it stood for
        return "on" if value else "off"
    return str(value)


def set_dotted(cfg: Config, key: str, value: Any) -> None:
    """Set `section.sub.key` on a config, coercing the value to the field's type."""
    parts = key.split(".")
    node: Any = cfg
    for i, part in enumerate(parts):
        types = _field_types(node)
        if part not in types:
            where = ".".join(parts[:i]) or "the config"
            known = ", ".join(sorted(types))
            raise ConfigError(f"unknown config key '{key}' ({where} has: {known})")
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(types[part]):
                if not isinstance(value, dict):
                    raise ConfigError(f"{key} is a section; give a mapping or set its keys")
                for sub, sub_value in value.items():
                    set_dotted(cfg, f"{key}.{sub}", sub_value)
            else:
                setattr(node, part, _coerce(value, types[part], key))
        else:
            node = getattr(node, part)
            if not dataclasses.is_dataclass(node):
                raise ConfigError(f"{'.'.join(parts[: i + 1])} is a value, not a section")


def _apply_mapping(cfg: Config, mapping: dict[str, Any], prefix: str = "") -> None:
    for key, value in mapping.items():
        set_dotted(cfg, f"{prefix}{key}", value)


def _annotation(key: str) -> Any:
    """The declared type of the config field `key` (dotted), or None when `key` names no value field."""
    node: Any = Config
    for part in key.split("."):
        types = get_type_hints(node) if dataclasses.is_dataclass(node) else {}
        if part not in types:
            return None
        node = types[part]
    return None if dataclasses.is_dataclass(node) else node


def _is_text_field(annotation: Any) -> bool:
    """`str` or `str | None`."""
    optional = get_origin(annotation) in (Union, UnionType) and set(get_args(annotation)) == {str, NoneType}
    return annotation is str or optional


def parse_override(text: str) -> tuple[str, Any]:
    """Parse `a.b=value`; the value is read as YAML (so `0.5`, `true`, `null` get their types), except that a text
    field keeps the raw text whenever YAML would read a number, boolean or date (`run.progress=off`,
    `run.name=010` stay "off" and "010"); `null` still clears an optional text field."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = read_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if _is_text_field(_annotation(key)) and not isinstance(value, (str, dict, list, type(None))):
        value = raw.strip()
    return key, value


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Read a YAML config (or start from defaults), apply overrides, validate."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            mapping = read_yaml(p.read_text())
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0] if str(exc) else "invalid YAML"
            raise ConfigError(f"config file {p} is not valid YAML: {first}") from None
        if mapping is None or mapping == {}:
            raise ConfigError(f"config file {p} is empty; leave out --config to train with the defaults")
        if not isinstance(mapping, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
        _apply_mapping(cfg, mapping)
    if isinstance(overrides, dict):
        _apply_mapping(cfg, overrides)
    else:
        for text in overrides or []:
            key, value = parse_override(text)
            set_dotted(cfg, key, value)
    validate(cfg)
    return cfg


def config_from_dict(mapping: dict[str, Any]) -> Config:
    """Rebuild a config from `Config.to_dict()` output (e.g. inside a Ray worker or from a checkpoint)."""
    cfg = Config()
    _apply_mapping(cfg, mapping)
    validate(cfg)
    return cfg


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _one_of(value: Any, allowed: tuple[Any, ...], key: str) -> None:
    _check(value in allowed, f"{key} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def validate(cfg: Config) -> None:
    """Check every value and every combination; raise ConfigError on the first problem."""
    d, m, mo, o, e, r = cfg.data, cfg.method, cfg.model, cfg.optim, cfg.eval, cfg.run
    _one_of(d.dataset, DATASETS, "data.dataset")
    _check(d.split >= 1, f"data.split must be >= 1, got {d.split}")
    _one_of(d.subset, ("D_i", "D_b"), "data.subset")
    _one_of(d.split_protocol, SPLIT_PROTOCOLS, "data.split_protocol")
    _one_of(d.aug_preset, AUG_PRESETS, "data.aug_preset")
    _check(d.loader_workers >= 0, "data.loader_workers must be >= 0")
    if d.dataset in LIST_DATASETS:
        _check(d.root is not None, f"data.root is required for {d.dataset} (the image root)")
        _check(d.train_list is not None, f"data.train_list is required for {d.dataset}")
    _one_of(mo.arch, ARCHS, "model.arch")
    _check(mo.width > 0, f"model.width must be > 0, got {mo.width}")
    _check(m.temperature > 0, f"method.temperature must be > 0, got {m.temperature}")
    parse_method(m.name)
    for section in m.sections():
        if hasattr(section, "validate"):
            section.validate(cfg)
    _one_of(o.optimizer, ("sgd", "lars"), "optim.optimizer")
    _check(o.lr > 0, f"optim.lr must be > 0, got {o.lr}")
    _check(0 <= o.momentum < 1, "optim.momentum must be in [0, 1)")
    _check(o.weight_decay >= 0, "optim.weight_decay must be >= 0")
    _check(o.epochs >= 1, f"optim.epochs must be >= 1, got {o.epochs}")
    _check(o.batch_size >= 2, f"optim.batch_size must be >= 2, got {o.batch_size}")
    _check(o.warmup_epochs >= 0, "optim.warmup_epochs must be >= 0")
    _check(0 < o.min_lr <= o.lr, "optim.min_lr must be in (0, optim.lr]")
    _one_of(o.schedule, ("cosine", "gh_two_stage"), "optim.schedule")
    _one_of(e.protocol, EVAL_PROTOCOLS, "eval.protocol")
    _one_of(e.grouping, GROUPINGS, "eval.grouping")
    _check(e.kshot >= 1, "eval.kshot must be >= 1")
    _check(e.kshot_draws >= 1, "eval.kshot_draws must be >= 1")
    _check(0 < e.probe_epochs_scale <= 1, "eval.probe_epochs_scale must be in (0, 1]")
    _check(e.probe_augment or (e.protocol == "sdclr_sgd" and d.dataset in ARRAY_DATASETS),
           "eval.probe_augment: false applies to the sdclr_sgd probe of array data sets only "
           f"(got protocol {e.protocol}, data set {d.dataset})")
    _check(e.knn_every >= 0, "eval.knn_every must be >= 0")
    _check(r.checkpoint_every >= 1, "run.checkpoint_every must be >= 1")
    _one_of(r.device, ("auto", "cpu", "cuda"), "run.device")
    _one_of(r.amp, ("auto", "off", "bf16", "fp16"), "run.amp")
    _one_of(r.progress, ("auto", "on", "off"), "run.progress")
    _check(bool(r.name) and "/" not in r.name, f"run.name must be a plain name, got {r.name!r}")
