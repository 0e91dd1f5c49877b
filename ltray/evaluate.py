"""The evaluation protocol of a pre-trained backbone: full-shot, few-shot and k-shot linear probes, per-class
accuracy, Many / Medium / Few and their Std (docs/math/data_and_eval.md §3, §8)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn as nn

from ltray.config import Config, config_from_dict
from ltray.data.loading import RunData, load_run_data
from ltray.errors import CheckpointError, ConfigError, LtrayError
from ltray.eval.features import extract_features
from ltray.eval.metrics import Grouping, format_summary_table, group_classes, summarize_runs
from ltray.eval.probe import (
    ADAM_PRESETS,
    CIFAR_FEW,
    CIFAR_FULL,
    IN100_FEW,
    IN100_FULL,
    AdamPresetName,
    ProbeSchedule,
    adam_probe,
    kshot_probe,
    sdclr_sgd_probe,
)
from ltray.eval.shots import fixed_shot_subsets, kshot_indices
from ltray.methods.method import model_shape
from ltray.models.contrastive import ContrastiveModel, build_model
from ltray.train.checkpoint import load_checkpoint

HEADLINE = ("all", "many", "medium", "few", "group_std", "class_std")


def scaled_schedule(schedule: ProbeSchedule, factor: float) -> ProbeSchedule:
    """The same schedule with epochs, milestones and validation interval scaled by `factor` (small CPU runs)."""
    if factor == 1.0:
        return schedule
    epochs = max(1, round(schedule.epochs * factor))
    milestones = tuple(sorted({min(epochs, max(1, round(m * factor))) for m in schedule.milestones}))
    every = max(1, round(schedule.validate_every * factor))
    return dataclasses.replace(schedule, name=f"{schedule.name}_x{factor:g}", epochs=epochs, milestones=milestones,
                               validate_every=every)


def _flat(prefix: str, report: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{key}": float(value) for key, value in report.items() if isinstance(value, (int, float))}


def evaluate_backbone(cfg: Config, backbone: nn.Module, data: RunData, device: torch.device) -> dict[str, Any]:
    """Run the configured probes on a frozen backbone; returns flat figures plus per-class accuracies."""
    e = cfg.eval
    groups = group_classes(data.pretrain_counts, cast(Grouping, e.grouping))  # checked by `config.validate`
    probes = _list_probes if data.is_list else _array_probes
    figures, per_class = probes(cfg, backbone, data, device, groups)
    return {
        "figures": figures,
        "per_class": per_class,
        "pretrain_counts": data.pretrain_counts.tolist(),
        "groups": {name: members.tolist() for name, members in groups.items()},
        "class_names": list(data.class_names),
        "protocol": e.protocol,
        "grouping": e.grouping,
    }


def _array_probes(
    cfg: Config, backbone: nn.Module, data: RunData, device: torch.device, groups: dict[str, np.ndarray]
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """The probes on array data sets (CIFAR-size images, batched in memory)."""
    e = cfg.eval
    assert data.test is not None
    test_x, test_y = data.test.images, data.test.labels
    full_x, full_y = data.role_images("train_full")
    figures: dict[str, float] = {}
    per_class: dict[str, list[float]] = {}
    seed = cfg.run.seed
    shots = (("full", e.full_shot, CIFAR_FULL), ("few", e.few_shot, CIFAR_FEW))
    for shot, wanted, schedule in shots if e.protocol == "sdclr_sgd" else ():
        if not wanted:
            continue
        val_x, val_y = data.role_images("val")
        train_x, train_y = (full_x, full_y) if shot == "full" else data.role_images("S_b")
        result = sdclr_sgd_probe(
            backbone, train_x, train_y, val_x, val_y, test_x, test_y, data.num_classes,
            schedule=scaled_schedule(schedule, e.probe_epochs_scale), device=device, seed=seed, groups=groups,
            augment=e.probe_augment,
        )
        figures.update(_flat(shot, result.report))
        per_class[shot] = result.per_class_acc.tolist()
    if e.protocol == "sdclr_sgd":  # only the k-shot probe reads train features: extract its draws' rows alone
        train_features = rows_features(backbone, full_x, kshot_rows(full_y, e.kshot, e.kshot_draws, seed), device)
    else:
        train_features = extract_features(backbone, full_x, device=device)
    test_features = extract_features(backbone, test_x, device=device)
    _feature_probes(cfg, data.num_classes, (train_features, full_y), (test_features, test_y), groups, device,
                    figures, per_class)
    if e.protocol == "bcl_adam":
        figures.update(_fixed_shot_figures(data, train_features, full_y, test_features, test_y,
                                           _adam_epochs(cfg, "bcl_adam"), seed, groups, device))
    return figures, per_class


def kshot_rows(labels: np.ndarray, k: int, draws: int, seed: int) -> np.ndarray:
    """The sorted rows of `labels` that some draw of the k-shot probe (`kshot_indices`, same arguments) uses."""
    return np.unique(np.concatenate(kshot_indices(np.asarray(labels), k, draws, seed)))


def rows_features(backbone: nn.Module, images: Any, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """Features of `images[rows]` at those rows of an otherwise zero (len(images), d) tensor: a probe that reads only
    `rows` sees the same features as with `extract_features(backbone, images)`, at the cost of extracting `rows`."""
    features = extract_features(backbone, images[rows], device=device)
    out = features.new_zeros((len(images), *features.shape[1:]))
    out[torch.from_numpy(rows).to(out.device)] = features
    return out


def _adam_epochs(cfg: Config, preset: str) -> int | None:
    """The epoch count of Adam preset `preset` under `eval.probe_epochs_scale` (None: the preset's own)."""
    scale = cfg.eval.probe_epochs_scale
    return max(1, math.ceil(ADAM_PRESETS[preset].epochs * scale)) if scale < 1 else None


def _feature_probes(
    cfg: Config,
    num_classes: int,
    train: tuple[torch.Tensor, np.ndarray],
    test: tuple[torch.Tensor, np.ndarray],
    groups: dict[str, np.ndarray],
    device: torch.device,
    figures: dict[str, float],
    per_class: dict[str, list[float]],
) -> None:
    """The probes on extracted (features, labels): the full-shot Adam probe of the Adam protocols and the k-shot
    probe; their figures and per-class accuracies are added to `figures` and `per_class`."""
    e = cfg.eval
    preset = cast(AdamPresetName, "bcl_adam" if e.protocol == "sdclr_sgd" else e.protocol)  # `config.validate`
    if e.protocol != "sdclr_sgd" and e.full_shot:
        result = adam_probe(*train, *test, num_classes, preset=preset, epochs=_adam_epochs(cfg, preset),
                            seed=cfg.run.seed,
                            groups=groups, device=device)
        figures.update(_flat("full", result.report))
        per_class["full"] = result.per_class_acc.tolist()
    kshot = kshot_probe(
        *train, *test, num_classes, k=e.kshot, draws=e.kshot_draws, seed=cfg.run.seed, preset=preset,
        epochs=_adam_epochs(cfg, preset), groups=groups, device=device,
    )
    figures.update(_flat(f"shot{e.kshot}", kshot.mean_report))
    per_class[f"shot{e.kshot}"] = np.mean([r.per_class_acc for r in kshot.results], axis=0).tolist()


def _list_probes(
    cfg: Config, backbone: nn.Module, data: RunData, device: torch.device, groups: dict[str, np.ndarray]
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """The probes on image-list data sets: `sdclr_sgd` with the IN-100 schedules (full-shot on `data.full_list`,
    few-shot on `data.fewshot_list`, selected by val top-5) through loader workers; the Adam and k-shot probes on
    features extracted with the inference transform, from the full-shot list (k-shot is skipped without one)."""
    from ltray.data.list_data import sdclr_sgd_probe_list, source_features

    e = cfg.eval
    workers, size, seed = cfg.data.loader_workers, data.image_size, cfg.run.seed
    test = data.role_source("test")
    figures: dict[str, float] = {}
    per_class: dict[str, list[float]] = {}
    if e.protocol == "sdclr_sgd":
        runs = [("full", "train_full", IN100_FULL, e.full_shot), ("few", "S_b", IN100_FEW, e.few_shot)]
        for prefix, role, schedule, wanted in runs:
            if not wanted:
                continue
            result = sdclr_sgd_probe_list(
                backbone, data.role_source(role), data.role_source("val"), test, data.num_classes,
                schedule=scaled_schedule(schedule, e.probe_epochs_scale), seed=seed, image_size=size,
                workers=workers, device=device, groups=groups,
            )
            figures.update(_flat(prefix, result.report))
            per_class[prefix] = result.per_class_acc.tolist()
    if "train_full" not in data.sources and (e.protocol == "sdclr_sgd" or not e.full_shot):
        return figures, per_class  # the k-shot draws need the full-shot list
    full = data.role_source("train_full")
    train_features = source_features(backbone, full, image_size=size, workers=workers, device=device)
    test_features = source_features(backbone, test, image_size=size, workers=workers, device=device)
    full_y, test_y = np.array(full.labels), np.array(test.labels)  # writable copies of the lists' labels
    _feature_probes(cfg, data.num_classes, (train_features, full_y), (test_features, test_y), groups, device,
                    figures, per_class)
    return figures, per_class


def _fixed_shot_figures(
    data: RunData, train_features: torch.Tensor, full_y: np.ndarray, test_features: torch.Tensor, test_y: np.ndarray,
    epochs: int | None, seed: int, groups: dict[str, np.ndarray], device: torch.device,
) -> dict[str, float]:
    """BCL's 100-shot and 50-shot probes: five fixed subsets each of the full-shot set, mean over subsets."""
    pool = data.split.role("train_full").indices
    assert pool is not None
    assert data.base_train is not None
    row_of = np.full(int(pool.max()) + 1, -1, dtype=np.int64)
    row_of[pool] = np.arange(len(pool))
    figures: dict[str, float] = {}
    reports: dict[int, list[dict[str, float]]] = {100: [], 50: []}
    for subset in range(1, 6):
        for shot, indices in fixed_shot_subsets(pool, data.base_train.labels, (100, 50), subset).items():
            rows = torch.from_numpy(row_of[indices])
            result = adam_probe(train_features[rows], full_y[rows.numpy()], test_features, test_y, data.num_classes,
                                preset="bcl_adam", epochs=epochs, seed=seed + subset, groups=groups, device=device)
            reports[shot].append(result.report)
    for shot, shot_reports in reports.items():
        figures.update(_flat(f"shot{shot}", summarize_runs(shot_reports)["mean"]))
    return figures


def model_from_checkpoint(cfg: Config, path: Path, device: torch.device) -> ContrastiveModel:
    """Rebuild the model an ltray checkpoint was trained with and load its weights (in channels_last memory format
    when `cfg.model.channels_last`)."""
    state = load_checkpoint(path, map_location=device)
    saved = config_from_dict(state["config"])
    model = build_model(saved.model.arch, width=saved.model.width, **model_shape(saved)).to(device)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path} does not fit its own model: {str(exc).splitlines()[0]}") from None
    if saved.data.dataset != cfg.data.dataset:
        raise LtrayError(f"checkpoint {path} was trained on {saved.data.dataset}, the config evaluates {cfg.data.dataset}")
    return model.to(memory_format=torch.channels_last) if cfg.model.channels_last else model


def evaluate_checkpoint(cfg: Config, checkpoint: str, *, published: bool = False, out: str | None = None) -> dict[str, Any]:
    """`ltray eval`: load a checkpoint (ours, or a published SDCLR/COLT/MAK one), probe it, write the report JSON."""
    from ltray.train.loop import select_device

    device = select_device(cfg.run.device)
    path = Path(checkpoint)
    targets = report_targets(path, out, cfg.eval.protocol)
    if published:
        from ltray.models.published import load_published_backbone
        from ltray.models.resnet import build_backbone

        backbone = build_backbone(cfg.model.arch, width=cfg.model.width).to(device)
        load_published_backbone(path, backbone)
    else:
        backbone = model_from_checkpoint(cfg, path, device).backbone
    data = load_run_data(cfg)
    report = evaluate_backbone(cfg, backbone, data, device)
    report.update({"checkpoint": str(path), "dataset": cfg.data.dataset, "split": cfg.data.split,
                   "method": cfg.method.name})
    report["report_path"] = str(write_new_file(targets, json.dumps(report, indent=2)))
    return report


def report_targets(checkpoint: Path, out: str | None, protocol: str) -> Iterator[Path]:
    """Where `ltray eval` may write its report, in order of preference; never an existing file. `--out` names one
    path (refused at once when it exists); by default `<checkpoint>_eval.json`, then `..._eval_<protocol>.json`,
    then `..._eval_<protocol>_2.json`, `_3`, ..."""
    if out is not None:
        target = Path(out)
        if target.exists() or target.resolve() == checkpoint.resolve():
            raise ConfigError(f"--out {out} already exists; ltray eval never overwrites a file: give a new path")
        return iter([target])

    def defaults() -> Iterator[Path]:
        yield checkpoint.with_name(f"{checkpoint.stem}_eval.json")
        yield checkpoint.with_name(f"{checkpoint.stem}_eval_{protocol}.json")
        for counter in itertools.count(2):
            yield checkpoint.with_name(f"{checkpoint.stem}_eval_{protocol}_{counter}.json")

    return (target for target in defaults() if not target.exists())


def write_new_file(targets: Iterator[Path], text: str) -> Path:
    """Write `text` to the first of `targets` that does not exist; the file is created exclusively, so a file
    another process creates meanwhile is never replaced (the next target is taken)."""
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with target.open("x") as file:
                file.write(text)
        except FileExistsError:
            continue
        return target
    raise ConfigError("the report's file was created by another process meanwhile; nothing was overwritten")


def format_report(report: dict[str, Any]) -> str:
    """Human-readable figures of one evaluation."""
    figures = report["figures"]
    lines = [f"{report.get('method', '')} on {report.get('dataset', '')} split {report.get('split', '')}"]
    for prefix in sorted({k.split("_", 1)[0] for k in figures}):
        parts = []
        for key in HEADLINE:
            name = f"{prefix}_{key}"
            if name in figures:
                value = figures[name]
                parts.append(f"{key} {value:.2f}")
        lines.append(f"  {prefix:>7}: " + ", ".join(parts))
    names = report.get("class_names") or [str(i) for i in range(len(report["pretrain_counts"]))]
    first = next(iter(report["per_class"]))
    lines.append(f"  per-class ({first}), class: train count -> accuracy %")
    for name, count, acc in zip(names, report["pretrain_counts"], report["per_class"][first]):
        lines.append(f"    {name:>16}: {count:5d} -> {acc:6.2f}")
    if "report_path" in report:
        lines.append(f"  report: {report['report_path']}")
    return "\n".join(lines)


def summarize_report_files(paths: list[Path]) -> str:
    """`ltray report FILE...`: mean ± std over several eval reports (e.g. the 5 splits of one configuration)."""
    reports = []
    for path in paths:
        if not path.is_file():
            raise LtrayError(f"report not found: {path}")
        try:
            reports.append(json.loads(path.read_text())["figures"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise LtrayError(f"{path} is not an ltray eval report") from None
    summary = summarize_runs(reports)
    return format_summary_table([("runs", summary)])
