"""Image-list data sets (ImageNet-100-LT, ImageNet-LT, Places-LT): an image root plus `path label [source]` lists.

Specification: docs/math/data_and_eval.md §2 (list format), §4 (ImageNet pre-training, inference and SGD-probe
pipelines), §8 (the `sdclr_sgd` probe with the IN-100 schedules); docs/math/bcl.md §4-§5 (BCL's ImageNet views and
versioned weights); docs/math/README.md conventions 1 and 6.

Unlike array data sets, items are decoded and augmented one by one in `torch.utils.data.DataLoader` workers. Every
random draw of an item's view is seeded from (seed, epoch, index, view) (`ltray.augment.rng.seed_for`), so a batch
does not depend on the number of workers. The main process plans each epoch's batches (the distributed sampler
stays in the training loop); every request a worker receives carries its epoch and, for BCL, the item's weight and
the weights' version, so persistent workers hold no state that could go stale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from ltray.augment import rng
from ltray.augment.pil import (
    BCLImageNetTwoViews,
    TwoViews,
    imagenet_inference,
    imagenet_probe_train,
    imagenet_train_views,
)
from ltray.augment.randaugment import (
    BCLWeights,
    ItemRequest,
    RandAugmentProb,
    StaleWeightsError,
    WeightedRequestSampler,
)
from ltray.config import Config
from ltray.data.lists import import_imagenet_lists, read_text_list
from ltray.data.sources import ImageListSource
from ltray.data.splits import ItemList, Split
from ltray.data.train_data import IndexSpace
from ltray.errors import ConfigError, DataError, TrainingDiverged
from ltray.eval.features import extract_features, module_device
from ltray.eval.probe import ProbeResult, ProbeSchedule, fit_sgd_probe, frozen_backbone
from ltray.models.contrastive import ContrastiveModel

if TYPE_CHECKING:
    from ltray.data.loading import RunData

LIST_IMAGE_SIZE = 224
INFERENCE_RESIZE = 256  # Resize 256 → CenterCrop 224 (§4); smaller sizes keep the ratio
ROLE_KEYS: dict[str, str] = {
    "D_i": "train_list",
    "S_b": "fewshot_list",
    "val": "val_list",
    "test": "test_list",
    "train_full": "full_list",
}
EXISTENCE_SAMPLE = 8  # files checked per list before anything is read


# ----- the training set -------------------------------------------------------------------------------------


@dataclass
class ListTrainData(IndexSpace):
    """The run's training set read from image lists: ID items 0..N_id−1 in list order, pool item j at N_id + j.

    The public surface is that of the array-backed `TrainData`; `active_pool` holds the pool positions currently in
    the training set (COLT's selection or MAK's extra data). `id_images` and `pool_images` are the lazily read
    sources, which the training loop's embed function accepts in place of arrays.
    """

    id_source: ImageListSource
    pool_source: ImageListSource | None = None
    active_pool: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        self.set_active_pool(self.active_pool)

    @property
    def num_id(self) -> int:
        return len(self.id_source)

    @property
    def pool_size(self) -> int:
        return 0 if self.pool_source is None else len(self.pool_source)

    @property
    def id_images(self) -> ImageListSource:
        return self.id_source

    @property
    def pool_images(self) -> ImageListSource | None:
        return self.pool_source

    def load(self, index: int) -> Image.Image:
        """The RGB image of dataset index `index` (ID or pool, whatever is active)."""
        if 0 <= index < self.num_id:
            return self.id_source.load(index)
        if self.pool_source is not None and self.num_id <= index < self.index_space:
            return self.pool_source.load(index - self.num_id)
        raise DataError(f"dataset index {index} is out of range for {self.index_space} items")

    def labels(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64)
        out = np.full(len(index), -1, dtype=np.int64)
        is_id = index < self.num_id
        out[is_id] = self.id_source.labels[index[is_id]]
        if self.pool_source is not None and (~is_id).any():
            out[~is_id] = self.pool_source.labels[index[~is_id] - self.num_id]
        return out


# ----- per-item pipelines -----------------------------------------------------------------------------------


def inference_transform(image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """Resize 256 → CenterCrop 224 → ToTensor at 224; a smaller `image_size` keeps the 256/224 ratio."""
    return imagenet_inference(round(image_size * INFERENCE_RESIZE / LIST_IMAGE_SIZE), image_size)


def seeded_view(
    transform: Callable[[Image.Image], torch.Tensor], image: Image.Image, seed: int, epoch: int, index: int, view: int
) -> torch.Tensor:
    """`transform(image)` under torch's CPU generator seeded from (seed, epoch, index, view), restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(rng.seed_for(seed, epoch, index, view))
        return transform(image)


class TwoViewItems(Dataset):
    """Item requests (epoch, ItemRequest) → (index, v¹, v², weights version): the ImageNet pre-training views, or
    BCL's ImageNet views (RandAugment_prob(2, M·w·u, w)) when `bcl_strength` is given."""

    def __init__(self, data: ListTrainData, image_size: int, seed: int, bcl_strength: float | None = None) -> None:
        self.data = data
        self.seed = seed
        self.views = TwoViews(imagenet_train_views(image_size))
        self.bcl = None if bcl_strength is None else BCLImageNetTwoViews(image_size, bcl_strength)

    def __getitem__(self, key: tuple[int, ItemRequest]) -> tuple[int, torch.Tensor, torch.Tensor, int]:
        epoch, request = key
        image = self.data.load(request.index)
        if self.bcl is None:
            v1, v2 = self.views(image, seed=self.seed, epoch=epoch, index=request.index)
        else:
            v1, v2 = self.bcl(image, request.weight, seed=self.seed, epoch=epoch, index=request.index)
        return request.index, v1, v2, request.version


class ProbeItems(Dataset):
    """Requests (epoch, row) → (one seeded draw of `transform` on item `row` of `source`, its label)."""

    def __init__(self, source: ImageListSource, transform: Callable[[Image.Image], torch.Tensor], seed: int) -> None:
        self.source = source
        self.transform = transform
        self.seed = seed
        self.labels = source.labels

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, row = key
        return seeded_view(self.transform, self.source.load(row), self.seed, epoch, row, 0), int(self.labels[row])


class InferenceItems(Dataset):
    """Row → the deterministic inference view of item `row` of `source`."""

    def __init__(self, source: ImageListSource, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.source = source
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, row: int) -> torch.Tensor:
        return self.transform(self.source.load(row))


# ----- planned batches for persistent workers ---------------------------------------------------------------


class PlannedOrder(Sampler[int]):
    """The items of the current epoch in order, as planned by the main process (set `order` before iterating)."""

    def __init__(self) -> None:
        self.order = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order.tolist())


class EpochBatchSampler(Sampler[list[tuple[int, Any]]]):
    """A DataLoader batch sampler: cuts the requests of `requests` (a sampler over `order`, by default `order`
    itself) into the planned batches and tags every request with its epoch."""

    def __init__(self, order: PlannedOrder, requests: Sampler[Any] | None = None) -> None:
        self.order = order
        self.requests: Sampler[Any] = order if requests is None else requests
        self.epoch = 0
        self.sizes: list[int] = []

    def plan(self, epoch: int, batches: Sequence[np.ndarray]) -> None:
        """The batches of `epoch`; call before creating the loader iterator of that epoch."""
        self.order.order = np.concatenate(batches).astype(np.int64) if batches else np.zeros(0, dtype=np.int64)
        self.sizes = [len(batch) for batch in batches]
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.sizes)

    def __iter__(self) -> Iterator[list[tuple[int, Any]]]:
        epoch, sizes = self.epoch, list(self.sizes)
        stream = iter(self.requests)
        for size in sizes:
            yield [(epoch, next(stream)) for _ in range(size)]


def _one_line_errors(batches: Iterable[Any]) -> Iterator[Any]:
    """Iterate a DataLoader; a DataError raised in a worker comes back as its original one-line message."""
    try:
        yield from batches
    except DataError as error:
        lines = [line for line in str(error).splitlines() if line.strip()]
        if len(lines) <= 1:
            raise
        last = lines[-1]
        prefix = f"{DataError.__module__}.{DataError.__qualname__}: "
        raise DataError(last[len(prefix) :] if last.startswith(prefix) else last) from None


def _loader(dataset: Dataset, batch_sampler: Sampler[Any], workers: int, pin_memory: bool) -> DataLoader:
    return DataLoader(
        dataset, batch_sampler=batch_sampler, num_workers=workers, persistent_workers=workers > 0,
        pin_memory=pin_memory,
    )


class ListViewLoader:
    """Two-view batches of a `ListTrainData` from `workers` DataLoader workers (0: in the calling process).

    With `bcl` (BCL's view hook), every epoch's requests carry the weights the hook holds when the epoch starts,
    and the version each batch was augmented with is recorded on the hook (`last_version`), where BCL checks it.
    """

    def __init__(
        self,
        data: ListTrainData,
        *,
        image_size: int,
        seed: int,
        workers: int,
        bcl: RandAugmentProb | None = None,
        pin_memory: bool = False,
    ) -> None:
        self.data = data
        self.image_size = image_size
        self.workers = workers
        self.pin_memory = pin_memory
        self.bcl = bcl
        self.items = TwoViewItems(data, image_size, seed, None if bcl is None else bcl.strength)
        self.order = PlannedOrder()
        self.plain_weights = BCLWeights.initial(data.index_space)
        self.requests = WeightedRequestSampler(self.order, self.current_weights())
        self.batches = EpochBatchSampler(self.order, self.requests)
        self.loader = _loader(self.items, self.batches, workers, pin_memory)

    @classmethod
    def for_run(
        cls, cfg: Config, data: RunData, hook: Callable[..., torch.Tensor] | None, device: torch.device
    ) -> ListViewLoader:
        """The loader of a pre-training run; `hook` is the method's view hook (BCL's, or None)."""
        if hook is not None and not isinstance(hook, RandAugmentProb):
            raise ConfigError(f"{cfg.data.dataset} supports BCL's augmentation hook only, got {type(hook).__name__}")
        if not isinstance(data.train, ListTrainData):
            raise ConfigError(f"{data.dataset} is not read from image lists")
        return cls(
            data.train, image_size=data.image_size, seed=cfg.run.seed, workers=cfg.data.loader_workers, bcl=hook,
            pin_memory=device.type == "cuda",
        )

    def epoch(
        self, batches: Sequence[np.ndarray], epoch: int
    ) -> Iterator[tuple[np.ndarray, tuple[torch.Tensor, torch.Tensor]]]:
        """(dataset indices, (v¹, v²)) for each planned batch of 0-based `epoch`, in order."""
        self.requests.publish(self.current_weights())
        self.batches.plan(epoch, batches)
        for index, v1, v2, versions in _one_line_errors(self.loader):
            self._record(versions)
            yield index.numpy(), (v1, v2)

    def views_of(self, index: np.ndarray, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The views of one batch, made in the calling process (the same tensors the workers would make)."""
        weights = self.current_weights()
        values = weights.values.cpu()
        items = [
            self.items[(epoch, ItemRequest(int(i), float(values[int(i)]), weights.version))] for i in index.tolist()
        ]
        self._record(torch.tensor([item[3] for item in items]))
        return torch.stack([item[1] for item in items]), torch.stack([item[2] for item in items])

    def current_weights(self) -> BCLWeights:
        """The weights the next epoch's requests carry: BCL's current ones, or zeros (unused) without BCL."""
        return self.bcl.weights if self.bcl is not None else self.plain_weights

    def _record(self, versions: torch.Tensor) -> None:
        if self.bcl is None:
            return
        used = torch.unique(versions)
        if used.numel() != 1:
            raise StaleWeightsError(f"one batch mixes BCL weights versions {used.tolist()}")
        self.bcl.last_version = int(used[0])

    def embed(
        self, model: ContrastiveModel, source: ImageListSource, device: torch.device, batch_size: int = 256
    ) -> np.ndarray:
        """L2-normalised head outputs of every item of `source` (inference transform, eval mode): the list
        counterpart of the loop's `embed_images`."""
        batches = inference_batches(source, self.image_size, self.workers, batch_size, self.pin_memory)
        return extract_features(model, batches, forward=model.embed, normalize=True, device=device).numpy()


def inference_batches(
    source: ImageListSource, image_size: int, workers: int, batch_size: int = 256, pin_memory: bool = False
) -> Iterator[torch.Tensor]:
    """The inference views of `source` in list order, in batches of `batch_size`."""
    loader = DataLoader(
        InferenceItems(source, inference_transform(image_size)), batch_size=batch_size, shuffle=False,
        num_workers=workers, pin_memory=pin_memory,
    )
    yield from _one_line_errors(loader)


def source_features(
    backbone: nn.Module,
    source: ImageListSource,
    *,
    image_size: int,
    workers: int,
    device: torch.device | str | None = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """Backbone features [N, d] (float32, CPU) of `source` with the inference transform, in eval mode."""
    target = torch.device(device) if device is not None else module_device(backbone)
    batches = inference_batches(source, image_size, workers, batch_size, target.type == "cuda")
    return extract_features(backbone, batches, device=target)


# ----- the sdclr_sgd probe through the frozen backbone ------------------------------------------------------


def sdclr_sgd_probe_list(
    backbone: nn.Module,
    train: ImageListSource,
    val: ImageListSource,
    test: ImageListSource,
    num_classes: int,
    *,
    schedule: ProbeSchedule,
    seed: int,
    image_size: int = LIST_IMAGE_SIZE,
    workers: int = 0,
    device: torch.device | str | None = None,
    groups: Mapping[str, np.ndarray] | None = None,
    eval_batch_size: int = 256,
) -> ProbeResult:
    """The `sdclr_sgd` linear probe (data_and_eval.md §8) on image lists, e.g. with `IN100_FULL` / `IN100_FEW`.

    A new Linear(d→C) (W ~ N(0, 0.01²), b = 0) is trained with SGD (momentum 0.9, wd 0, cross-entropy, lr
    `schedule.lr_at(epoch)`) on batches of a fresh permutation per epoch, the last partial batch kept. Every
    training image is one draw of RandomResizedCrop(size) + flip (`imagenet_probe_train`), seeded from (seed,
    epoch, row), passed through the backbone frozen in eval mode. Validation and test features are extracted once
    with the inference transform; the classifier of the first epoch with the best validation `select_by` accuracy
    is tested once.
    """
    target = torch.device(device) if device is not None else module_device(backbone)
    generator = torch.Generator().manual_seed(seed)
    for name, source in (("train", train), ("val", val), ("test", test)):
        if len(source) == 0 or source.labels.min() < 0 or source.labels.max() >= num_classes:
            raise DataError(f"the {name} list of the probe is empty or holds labels outside [0, {num_classes})")
    val_y = torch.tensor(val.labels, device=target)
    test_y = torch.tensor(test.labels, device=target)
    pin = target.type == "cuda"
    with frozen_backbone(backbone):
        val_features = source_features(backbone, val, image_size=image_size, workers=workers, device=target,
                                       batch_size=eval_batch_size).to(target)
        test_features = source_features(backbone, test, image_size=image_size, workers=workers, device=target,
                                        batch_size=eval_batch_size).to(target)
        batch_sampler = EpochBatchSampler(PlannedOrder())
        loader = _loader(ProbeItems(train, imagenet_probe_train(image_size), seed), batch_sampler, workers, pin)

        def train_epoch(epoch: int, linear: nn.Linear, optimizer: torch.optim.Optimizer) -> float:
            order = torch.randperm(len(train), generator=generator).numpy()
            size = schedule.batch_size
            batch_sampler.plan(epoch, [order[start : start + size] for start in range(0, len(order), size)])
            total = torch.zeros((), device=target)
            for images, labels in _one_line_errors(loader):
                with torch.no_grad():
                    features = backbone(images.to(target, non_blocking=True)).float()
                labels = labels.to(target)
                loss = F.cross_entropy(linear(features), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.detach() * labels.numel()
            mean_loss = float(total / len(train))
            if not np.isfinite(mean_loss):
                raise TrainingDiverged(f"the linear probe's loss became {mean_loss}")
            return mean_loss

        return fit_sgd_probe(val_features, val_y, test_features, test_y, num_classes, train_epoch,
                             schedule=schedule, generator=generator, groups=groups)


# ----- reading a run's lists --------------------------------------------------------------------------------


def list_split(cfg: Config) -> Split:
    """The configured lists as a checked `Split`: `data.train_list` is `D_i`, `fewshot_list` `S_b`, `full_list`
    `train_full`, plus `val_list` and `test_list`. The class count is 1 + the largest label of any list."""
    d = cfg.data
    if d.subset != "D_i":
        raise ConfigError(f"data.subset={d.subset} is not available for {d.dataset}: it pre-trains on data.train_list")
    files = {role: getattr(d, key) for role, key in ROLE_KEYS.items() if getattr(d, key)}
    if "D_i" not in files:
        raise ConfigError(f"data.train_list is required for {d.dataset}")
    largest = max(int(read_text_list(path).labels.max()) for path in files.values())
    return import_imagenet_lists(d.dataset, max(largest + 1, 2), files, split_id=d.split, protocol=d.split_protocol)


def _checked_source(items: ItemList, root: Path, name: str) -> ImageListSource:
    source = ImageListSource(items, root, name=name)
    source.check_exists(EXISTENCE_SAMPLE)
    return source


def _pool_source(cfg: Config, root: Path) -> tuple[ImageListSource | None, np.ndarray]:
    """COLT's pool (`method.colt.pool=list`, all positions selectable) or MAK's extra data (a text list, or a
    selection folder holding its `selected_list.txt`; all of it active)."""
    from ltray.data.selection import LIST_NAME
    from ltray.method_names import parse_method

    c = cfg.method.colt
    if parse_method(cfg.method.name).has("colt"):
        if c.pool != "list" or not c.pool_path:
            raise ConfigError(f"{cfg.data.dataset} is a list data set: COLT needs method.colt.pool=list with pool_path")
        pool = _checked_source(read_text_list(c.pool_path), root, "COLT pool list")
        if c.budget > len(pool):
            raise ConfigError(f"method.colt.budget={c.budget} exceeds the pool size {len(pool)}")
        return pool, np.zeros(0, dtype=np.int64)
    if cfg.data.extra_data:
        path = Path(cfg.data.extra_data)
        if path.is_dir():
            if not (path / LIST_NAME).is_file():
                raise DataError(f"{path} holds no {LIST_NAME}: list data sets take extra data chosen from a list pool")
            path = path / LIST_NAME
        pool = _checked_source(read_text_list(path), root, "extra data list")
        return pool, np.arange(len(pool), dtype=np.int64)
    return None, np.zeros(0, dtype=np.int64)


def load_list_run_data(cfg: Config, image_size: int = LIST_IMAGE_SIZE) -> RunData:
    """The `RunData` of a list data set: the split, one source per role and the training set.

    The image root, every list and a sample of each list's files are checked up front. `image_size` is 224 for
    every protocol; smaller sizes serve small test runs.
    """
    from ltray.data.loading import RunData

    d = cfg.data
    if d.aug_preset != "sdclr":
        raise ConfigError(
            f"data.aug_preset={d.aug_preset} applies to array data sets; {d.dataset} uses the ImageNet pipeline"
        )
    if d.root is None:
        raise ConfigError(f"data.root is required for {d.dataset} (the image root)")
    root = Path(d.root)
    if not root.is_dir():
        raise DataError(f"image root not found: {root}")
    split = list_split(cfg)
    sources = {
        role: _checked_source(items, root, f"{d.dataset} {role} list ({getattr(d, ROLE_KEYS[role])})")
        for role, items in split.lists.items()
    }
    pool, active = _pool_source(cfg, root)
    return RunData(
        dataset=d.dataset,
        split=split,
        base_train=None,
        test=None,
        train=ListTrainData(sources["D_i"], pool, active),
        num_classes=split.num_classes,
        image_size=image_size,
        class_names=tuple(str(c) for c in range(split.num_classes)),
        sources=sources,
    )
