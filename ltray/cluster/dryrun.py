"""`--dry-run` of a sweep script: the trials, their resources and the expected cost, with nothing started.

A dry run expands the sweep's grid exactly as the sweep would (`ltray.cluster.grid.expand_trials`), then estimates
what each trial costs without starting Ray or MLflow and without reading image data:

- **Training-set size** N of a trial: the `D_i`/`D_b` total in the split manifest (`ltray/splits/<data set>/*.json`, or
  `data.splits_dir`); without a manifest, the counts of docs/math/data_and_eval.md §1-§2; for image-list data sets the
  line count of `data.train_list` when that file exists, else the size the published list is known to have
  (ImageNet-100-LT, ImageNet-LT); otherwise unknown, and said so.
- **Images processed** (each image gives two augmented views): epochs × N, N counting a MAK selection
  (`data.extra_data`), plus what each method part adds (`Component.cost`: COLT's pool items and pool embeddings,
  MAK's extractor, inference passes and retraining on the selection).
- **Time**: images / the measured images per second of the trial's (device, arch, image size, width) in
  `throughput.json`, times the number of workers (linear DDP scaling, an optimistic assumption); an inference image
  costs `INFERENCE_COST` of a training image (one view forward against two views forward and backward, backward ≈
  two forwards). The linear probes afterwards are not included. A missing measurement is reported, never guessed.
- **Wall time** of the sweep: the trials in grid order on `concurrent` slots, each trial taking the first free slot
  (ASHA, when on, can only shorten it).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltray.cluster.grid import SPLIT_KEY, SweepSpec, Trial, expand_trials, max_concurrent_trials
from ltray.config import LIST_DATASETS, Config
from ltray.errors import ConfigError, LtrayError
from ltray.shipped import shipped_splits_dir

THROUGHPUT_FILE = Path(__file__).with_name("throughput.json")
INFERENCE_COST = 1.0 / 6.0
CPU_DEVICE = "cpu"
DEFAULT_GPU_KIND = "nvidia-h100"
LIST_IMAGE_SIZE = 224  # ltray.data.list_data.LIST_IMAGE_SIZE (not imported: that module pulls in the loaders)
ARRAY_IMAGE_SIZE = {"scenes-lt": 16, "digits-lt": 16, "cifar10": 32, "cifar100": 32}
# Training-set sizes when no manifest or list file is at hand: (data set, protocol, subset) → (images, source).
SPEC_TRAIN_SIZES: dict[tuple[str, str, str], tuple[int, str]] = {
    ("cifar10", "sdclr", "D_i"): (11_165, "docs/math/data_and_eval.md §1"),
    ("cifar100", "sdclr", "D_i"): (9_754, "docs/math/data_and_eval.md §1"),
    ("cifar10", "sdclr", "D_b"): (11_160, "docs/math/data_and_eval.md §1 (N_B = 1 116 per class)"),
    ("cifar100", "sdclr", "D_b"): (9_700, "docs/math/data_and_eval.md §1 (N_B = 97 per class)"),
    ("cifar10", "cao", "D_i"): (12_406, "docs/math/data_and_eval.md §1"),
    ("cifar100", "cao", "D_i"): (10_847, "docs/math/data_and_eval.md §1"),
    ("imagenet100", "sdclr", "D_i"): (12_205, "docs/math/data_and_eval.md §2 (imageNet_100_LT_train)"),
    ("imagenet-lt", "sdclr", "D_i"): (115_846, "ImageNet_LT_train.txt of Liu et al. 2019 (not in the specs)"),
}


@dataclass(frozen=True)
class Throughput:
    """One measurement: pre-training images per second (two views each, forward + backward + step) of one worker
    on one device kind, for one backbone at one image size and width; `images_per_s` None is a placeholder."""

    device: str
    arch: str
    image_size: int
    width: float
    images_per_s: float | None
    source: str
    threads: int | None = None
    method: str | None = None

    def matches(self, device: str, arch: str, image_size: int, width: float) -> bool:
        return (self.device, self.arch, self.image_size) == (device, arch, image_size) and math.isclose(
            self.width, width)


def load_throughput(path: Path = THROUGHPUT_FILE) -> list[Throughput]:
    """The entries of the throughput table; ConfigError on a malformed file."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"throughput table not found: {path}") from None
    except ValueError as error:
        raise ConfigError(f"throughput table {path} is not valid JSON: {error}") from None
    entries = raw.get("entries") if isinstance(raw, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(f"throughput table {path} must hold an 'entries' list")
    table = []
    for number, entry in enumerate(entries):
        try:
            speed = entry["images_per_s"]
            table.append(Throughput(
                device=str(entry["device"]), arch=str(entry["arch"]), image_size=int(entry["image_size"]),
                width=float(entry["width"]), images_per_s=None if speed is None else float(speed),
                source=str(entry["source"]), threads=entry.get("threads"), method=entry.get("method"),
            ))
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigError(f"throughput table {path}: entry {number} is malformed ({error!r})") from None
    return table


@dataclass(frozen=True)
class TrialCost:
    """The estimated cost of one trial."""

    trial: Trial
    train_size: int | None
    size_source: str
    train_images: int | None
    inference_images: int
    images_per_s: float | None
    speed_note: str

    @property
    def hours(self) -> float | None:
        if self.train_images is None or self.images_per_s is None:
            return None
        equivalent = self.train_images + INFERENCE_COST * self.inference_images
        return equivalent / self.images_per_s / 3600.0


def image_size(cfg: Config) -> int:
    return LIST_IMAGE_SIZE if cfg.data.dataset in LIST_DATASETS else ARRAY_IMAGE_SIZE[cfg.data.dataset]


def _count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


def _json_count(path: Path, count: Callable[[Any], int]) -> int | None:
    """`count` of the JSON file at `path`; None when the file is missing, malformed or lacks what `count` reads."""
    if not path.is_file():
        return None
    try:
        return count(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError):
        return None


def train_set_size(cfg: Config) -> tuple[int | None, str]:
    """(N, where N comes from) for the trial's pre-training set, read from manifests or list files only."""
    d = cfg.data
    if d.dataset in LIST_DATASETS:
        if d.train_list and Path(d.train_list).is_file():
            return _count_lines(Path(d.train_list)), f"lines of {d.train_list}"
    else:
        from ltray.data.splits import manifest_path

        directory = Path(d.splits_dir) if d.splits_dir else shipped_splits_dir() / d.dataset
        total = _json_count(manifest_path(directory, d.dataset, d.split), lambda m: int(m["roles"][d.subset]["total"]))
        if total is not None:
            return total, f"split manifests in {directory}"
    known = SPEC_TRAIN_SIZES.get((d.dataset, d.split_protocol, d.subset))
    if known is not None:
        return known
    return None, f"unknown (no split manifest or list file for {d.dataset} {d.subset})"


def pool_size(path: Path) -> int | None:
    """A pool's size read without opening it: the lines of a list file, else the `size` in a pool folder's
    `pool.json` (`ltray pool import`); None when neither is readable."""
    if path.is_file():
        return _count_lines(path)
    return _json_count(path / "pool.json", lambda m: int(m["size"]))


def extra_data_size(cfg: Config) -> int | None:
    """Items of a MAK selection added to the training set (0 without one; None when it cannot be read)."""
    if not cfg.data.extra_data:
        return 0
    path = Path(cfg.data.extra_data)
    manifest = path / "selection.json" if path.is_dir() else path
    if manifest.suffix == ".json" and manifest.is_file():
        return _json_count(manifest, lambda m: len(m["positions"]))
    if path.is_dir() and (path / "selected_list.txt").is_file():
        return _count_lines(path / "selected_list.txt")
    if path.is_file():
        return _count_lines(path)
    return None


def lookup_speed(table: Sequence[Throughput], cfg: Config, device: str, workers: int,
                 cpus_per_worker: float) -> tuple[float | None, str]:
    """(images per second of the whole trial, a note); None with a 'no measured throughput for ...' note."""
    arch, size, width = cfg.model.arch, image_size(cfg), cfg.model.width
    what = f"{arch} width {width:g} at {size}x{size} on {device}"
    found = [entry for entry in table if entry.matches(device, arch, size, width) and entry.images_per_s]
    if not found:
        return None, f"no measured throughput for {what}"
    if device == CPU_DEVICE:
        threads = max(1, round(cpus_per_worker))
        entry = min(found, key=lambda e: abs((e.threads or 1) - threads))
        speed = float(entry.images_per_s or 0.0) * threads / (entry.threads or 1)
        note = f"{entry.images_per_s:g} img/s on {entry.threads or 1} thread(s)" + (
            f", scaled to {threads}" if threads != (entry.threads or 1) else "")
    else:
        from ltray.method_names import parse_method

        wanted = set(parse_method(cfg.method.name).parts)

        def closeness(entry: Throughput) -> tuple[int, int]:
            # the same method first, then the entry sharing most parts (sdclr+lotar → sdclr), then fewest others
            parts = set(parse_method(entry.method or "simclr").parts)
            return (parts == wanted, len(parts & wanted) - len(parts - wanted))

        entry = max(found, key=closeness)
        speed = float(entry.images_per_s or 0.0)
        note = f"{entry.images_per_s:g} img/s per worker ({entry.method or 'simclr'})"
    return speed * workers, f"{what}: {note} ({entry.source})"


def trial_cost(trial: Trial, table: Sequence[Throughput], device: str, workers: int,
               cpus_per_worker: float) -> TrialCost:
    from ltray.methods.method import part_classes

    cfg = trial.build_config()
    size, source = train_set_size(cfg)
    extra = extra_data_size(cfg)
    epochs = cfg.optim.epochs
    inference = 0
    train_images: int | None = None
    if size is not None and extra is not None:
        n = size + extra
        train_images = epochs * n
        for part in part_classes(cfg):  # what each part adds (COLT's pool, MAK's stages)
            added = part.cost(cfg, n, pool_size)
            train_images += added.train_images
            inference += added.inference_images
            source += added.note
    elif extra is None:
        source += f"; MAK selection {cfg.data.extra_data} unreadable"
    speed, note = lookup_speed(table, cfg, device, workers, cpus_per_worker)
    return TrialCost(trial, size, source, train_images, inference, speed, note)


def _hours_text(hours: float | None) -> str:
    if hours is None:
        return "unmeasured"
    if hours < 1:
        return f"{hours * 60:.1f} min"
    return f"{hours:.1f} h"


def _count_text(count: int | None) -> str:
    if count is None:
        return "?"
    if count >= 1_000_000:
        return f"{count / 1e6:.1f}M"
    if count >= 10_000:
        return f"{count / 1e3:.0f}k"
    return str(count)


def schedule_hours(hours: Sequence[float], slots: int) -> float:
    """Makespan of trials taken in order by the first free of `slots` slots."""
    free = [0.0] * max(1, slots)
    for length in hours:
        index = min(range(len(free)), key=free.__getitem__)
        free[index] += length
    return max(free)


def local_resources() -> dict[str, float]:
    """CPUs and GPUs of this machine (what a local Ray would offer), read without starting anything."""
    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:  # a broken CUDA install only means no GPU for the estimate
        gpus = 0
    return {"CPU": float(os.cpu_count() or 1), "GPU": float(gpus)}


def describe(
    spec: SweepSpec,
    *,
    config_path: Path,
    max_concurrent: int | None = None,
    cluster: dict[str, float] | None = None,
    gpu_kind: str = DEFAULT_GPU_KIND,
    table: Sequence[Throughput] | None = None,
) -> str:
    """The dry-run report of a sweep (trials, resources, concurrency, cost) as text."""
    trials = expand_trials(spec)
    table = load_throughput() if table is None else table
    r = spec.resources
    device = CPU_DEVICE if r.gpus_per_worker == 0 else gpu_kind
    costs = [trial_cost(trial, table, device, max(1, r.workers), r.cpus_per_worker) for trial in trials]
    lines = [
        f"dry run of sweep {spec.name} (MLflow experiment {spec.experiment}); nothing was started",
        f"config: {config_path}",
        f"resources per trial: {r.workers} worker(s) x ({r.cpus_per_worker:g} CPU + {r.gpus_per_worker:g} GPU) = "
        f"{r.cpus:g} CPU, {r.gpus:g} GPU; device {device}; max failures {spec.max_failures}"
        + ("" if spec.asha is None else f"; ASHA on {spec.asha.metric}"),
    ]
    cluster_text = "this machine" if cluster is None else "the given cluster"
    resources = local_resources() if cluster is None else cluster
    concurrent: int | None = max_concurrent
    if concurrent is not None:
        lines.append(f"max concurrent trials: {concurrent} (--max-concurrent)")
    else:
        try:
            concurrent = max_concurrent_trials(resources, r, len(trials))
            lines.append(f"max concurrent trials: {concurrent} ({cluster_text}: {resources.get('CPU', 0):g} CPUs, "
                         f"{resources.get('GPU', 0):g} GPUs)")
        except LtrayError:
            lines.append(f"max concurrent trials: none fit {cluster_text} ({resources.get('CPU', 0):g} CPUs, "
                         f"{resources.get('GPU', 0):g} GPUs); give --cluster-cpus/--cluster-gpus or --max-concurrent")
    lines.append("")
    header = ("trial", "method", "split", "axes", "N", "epochs", "images", "est. time")
    rows = []
    for cost in costs:
        cfg = cost.trial.config
        axes = " ".join(f"{key.split('.')[-1]}={value}" for key, value in cost.trial.overrides.items()
                        if key not in ("method.name", SPLIT_KEY)) or "-"
        rows.append((cost.trial.name, cfg["method"]["name"], str(cfg["data"]["split"]), axes,
                     _count_text(cost.train_size), str(cfg["optim"]["epochs"]), _count_text(cost.train_images),
                     _hours_text(cost.hours)))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    lines.append("")
    known = [cost for cost in costs if cost.hours is not None]
    images = sum(cost.train_images or 0 for cost in costs)
    inference = sum(cost.inference_images for cost in costs)
    lines.append(f"images processed: {_count_text(images)} pre-training images ({_count_text(2 * images)} views)"
                 + (f" + {_count_text(inference)} COLT scoring images" if inference else "")
                 + ("" if all(cost.train_images is not None for cost in costs) else " (some trials unknown)"))
    if known:
        trial_hours = sum(cost.hours or 0.0 for cost in known)
        gpu_hours = trial_hours * r.gpus
        slots = concurrent or 1
        if device == CPU_DEVICE:  # a trial computes on whole cores: fractional-CPU trials share them
            threads = max(1, round(r.cpus_per_worker)) * max(1, r.workers)
            slots = max(1, min(slots, int(float(resources.get("CPU", slots)) // threads)))
        makespan = schedule_hours([cost.hours or 0.0 for cost in known], slots)
        partial = "" if len(known) == len(costs) else f" (for the {len(known)} of {len(costs)} trials with a measurement)"
        lines.append(f"estimated pre-training time: {_hours_text(trial_hours)} in total over trials"
                     + (f", {gpu_hours:.1f} GPU-hours" if r.gpus else f", {trial_hours * r.cpus:.1f} CPU-hours")
                     + f"; wall about {_hours_text(makespan)} with {slots} trial(s) computing at once{partial}")
    for speed_note in sorted({cost.speed_note for cost in costs}):
        lines.append(f"throughput: {speed_note}")
    for size_note in sorted({cost.size_source for cost in costs}):
        lines.append(f"training-set size: {size_note}")
    lines.append("estimates cover pre-training only (not the linear probes); DDP scaling over workers is assumed "
                 "linear; measurements: ltray/cluster/throughput.json")
    return "\n".join(lines)
