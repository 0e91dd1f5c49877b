"""Embedding images for MAK's inference passes (docs/math/mak.md §1 step 2, §2) and COLT's pool scoring (colt.md §2):
a Ray Data batch-inference job over a pool (`score_pool`, `score_arrays`) and the same computation as a plain loop
(`embed_pool`) for use inside a training worker.

For every image the job returns, keyed by its index and in eval mode without gradient:
- `feature`: the backbone feature f under the inference transform (ToTensor), as is;
- `projection`: the head output under the inference transform, L2-normalised (ẑ);
- `aug_RRR` for each augmented pass r < R: ẑ of one random SimCLR training view, drawn with
  `SimCLRViews.single_view(images, index, epoch=r, seed, view=0)`, so the view depends only on (seed, r, index).

Results do not depend on how rows are batched or spread over actors. The model always runs on full batches of
`batch_size` rows aligned to the row position: rows at positions [gB, (g+1)B) form batch g, each at slot
position − gB, and missing rows are zero padding. Every row is computed independently of the others (eval-mode BN,
per-image augmentation), so a row's output is the same bits wherever Ray sends it, and equal to `embed_pool`'s.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, cast

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ltray.augment.batched import SimCLRViews
from ltray.data.pool_store import image_array, images_from_column, open_pool_dataset, read_pool_info
from ltray.errors import ConfigError, DataError
from ltray.eval.rows import FEATURE, INDEX, PROJECTION, ScoringSpec, aug_column, score_rows
from ltray.models.contrastive import ContrastiveModel, build_model
from ltray.select.mak import merge_passes

if TYPE_CHECKING:
    import ray.data
    from typing_extensions import Unpack

    from ltray.config import Config

SCORES_FORMAT = "ltray-scores-v1"
SCORES_MANIFEST = "scores.json"
ROWS_FOLDER = "rows"
@dataclass(frozen=True)
class ModelRecipe:
    """How to rebuild a ContrastiveModel: the backbone architecture and width, the head and dual BN, and the memory
    format of its weights (channels_last is also faster for CPU inference)."""

    arch: str
    width: float = 1.0
    head: str = "simclr"
    dual_bn: bool = False
    channels_last: bool = False

    def build(self) -> ContrastiveModel:
        model = build_model(self.arch, width=self.width, head=self.head, dual_bn=self.dual_bn)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    @classmethod
    def from_config(cls, cfg: Config) -> ModelRecipe:
        """The model a run with this config trains (`ltray.methods.method.model_shape`)."""
        from ltray.methods.method import model_shape

        return cls(cfg.model.arch, cfg.model.width, **model_shape(cfg), channels_last=cfg.model.channels_last)


@dataclass(frozen=True)
class CheckpointModel:
    """Each actor loads the model from an ltray checkpoint with `model_from_checkpoint` (config as a dict)."""

    path: str
    config: dict[str, Any]


@dataclass(frozen=True)
class StateDictModel:
    """Each actor builds `recipe` and loads `state`: a state dict, or a Ray ObjectRef to one (`ray.put`)."""

    recipe: ModelRecipe
    state: Any


ModelSource = CheckpointModel | StateDictModel


def state_dict_model(model: ContrastiveModel, recipe: ModelRecipe) -> StateDictModel:
    """Put a model's CPU state dict into the Ray object store once, for every actor to fetch."""
    import ray

    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    return StateDictModel(recipe, ray.put(state))


def load_scoring_model(source: ModelSource, device: torch.device) -> ContrastiveModel:
    """The model of a source on `device`, in eval mode."""
    if isinstance(source, CheckpointModel):
        from ltray.config import config_from_dict
        from ltray.evaluate import model_from_checkpoint

        model = model_from_checkpoint(config_from_dict(source.config), Path(source.path), device)
    else:
        state = source.state
        if not isinstance(state, Mapping):
            import ray

            state = ray.get(state)
        model = source.recipe.build()
        model.load_state_dict(state)
        model = model.to(device)
    return model.eval()


# ----- the computation ---------------------------------------------------------------------------------------------


@dataclass
class PoolScores:
    """Scoring results sorted by index: features f [M, d_f], normalised projections ẑ [M, 128] (inference pass),
    and the R augmented passes ẑ⁽ʳ⁾ [M, 128]."""

    index: np.ndarray
    features: np.ndarray | None = None
    projections: np.ndarray | None = None
    aug_projections: list[np.ndarray] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.index.shape[0])


def embed_pool(
    model: ContrastiveModel,
    images: np.ndarray,
    spec: ScoringSpec = ScoringSpec(),
    index: np.ndarray | None = None,
) -> PoolScores:
    """The scoring computation as a plain loop in this process, on the model's device (e.g. inside a training
    worker). `index` (default 0..n−1) keys the augmentation; rows are aligned by their position in `images`, so
    for a whole pool the result equals the Ray job's bit for bit."""
    count = int(images.shape[0])
    keys = np.arange(count, dtype=np.int64) if index is None else np.asarray(index, dtype=np.int64)
    if keys.shape != (count,):
        raise DataError(f"{count} images need {count} indices, got shape {keys.shape}")
    if count == 0:
        raise DataError("no images to embed")
    views = SimCLRViews(int(images.shape[1]), preset=spec.aug_preset) if spec.aug_passes else None
    columns: dict[str, list[np.ndarray]] = {}
    step = spec.batch_size
    for lo in range(0, count, step):
        rows = np.ascontiguousarray(images[lo : lo + step])
        position = np.arange(lo, lo + rows.shape[0], dtype=np.int64)
        for name, values in score_rows(model, rows, keys[lo : lo + step], position, spec, views).items():
            columns.setdefault(name, []).append(values)
    merged = {name: np.concatenate(parts) for name, parts in columns.items()}
    return _scores_from_columns(keys, merged, spec)


def _scores_from_columns(index: np.ndarray, columns: Mapping[str, np.ndarray], spec: ScoringSpec) -> PoolScores:
    return PoolScores(
        index=index,
        features=columns.get(FEATURE),
        projections=columns.get(PROJECTION),
        aug_projections=[columns[aug_column(r)] for r in range(spec.aug_passes)],
    )


# ----- the Ray Data job --------------------------------------------------------------------------------------------


def _vector_column(values: np.ndarray) -> pa.FixedSizeListArray:
    flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, int(values.shape[1]))


def _vector_values(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not pa.types.is_fixed_size_list(array.type):
        raise DataError(f"score column has type {array.type}, expected a fixed-size list of float32")
    return array.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(
        len(array), array.type.list_size
    )


class ScoringActor:
    """A Ray Data callable class: holds the model (loaded once per actor) and scores pyarrow batches of
    (`pool_index`, `image`) rows."""

    def __init__(
        self,
        source: ModelSource,
        spec: ScoringSpec,
        image_shape: tuple[int, int, int],
        use_gpu: bool = False,
        threads: int | None = None,
    ) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        device = torch.device("cuda") if use_gpu and torch.cuda.is_available() else torch.device("cpu")
        self.model = load_scoring_model(source, device)
        self.spec = spec
        self.image_shape = cast(tuple[int, int, int], tuple(image_shape))
        self.views = SimCLRViews(int(image_shape[0]), preset=spec.aug_preset) if spec.aug_passes else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        index = batch.column(INDEX).to_numpy().astype(np.int64, copy=False)
        images = images_from_column(batch.column("image"), self.image_shape)
        columns = score_rows(self.model, images, index, index, self.spec, self.views)
        return pa.table({INDEX: pa.array(index, pa.int64()), **{k: _vector_column(v) for k, v in columns.items()}})


def block_rows(size: int, batch_size: int, actors: int, blocks_per_actor: int = 4, max_batches: int = 16) -> int:
    """Rows per Ray Data block: a multiple of the batch size giving each actor about `blocks_per_actor` blocks,
    at most `max_batches` batches per block."""
    batches = -(-size // (batch_size * actors * blocks_per_actor))
    return batch_size * min(max(1, batches), max_batches)


WRITE_TASK_CPUS = 0.25  # fractional, like the pool's read tasks (ltray.data.pool_store.READ_TASK_CPUS)


class ScoringJob(TypedDict, total=False):
    """How a Ray Data scoring job runs: keyword arguments of `score_pool`, `score_arrays` (defaults: `run_scoring_job`)."""

    actors: int
    num_cpus: float
    num_gpus: float
    threads: int | None


def run_scoring_job(
    dataset: ray.data.Dataset,
    source: ModelSource,
    spec: ScoringSpec,
    image_shape: tuple[int, int, int],
    out: str | Path,
    *,
    actors: int = 1,
    num_cpus: float = 0.5,
    num_gpus: float = 0.0,
    threads: int | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Score every (`pool_index`, `image`) row of `dataset` with `map_batches` on a fixed pool of `actors`
    ScoringActors (`num_cpus`, `num_gpus` each) and write the rows as Parquet under `out/rows/`, with
    `out/scores.json` (the spec and `metadata`). `out` must not exist; it appears complete or not at all."""
    import ray.data

    target = Path(out)
    if target.exists():
        raise DataError(f"{target} already exists; scores are never overwritten")
    if actors < 1:
        raise ConfigError(f"the number of scoring actors must be >= 1, got {actors}")
    if num_cpus <= 0 or num_gpus < 0:
        raise ConfigError(f"scoring actors need num_cpus > 0 and num_gpus >= 0, got {num_cpus} and {num_gpus}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.scoring-"))
    try:
        scored = dataset.map_batches(
            ScoringActor,
            fn_constructor_kwargs={
                "source": source, "spec": spec, "image_shape": tuple(image_shape), "use_gpu": num_gpus > 0,
                "threads": threads,
            },
            batch_size=spec.batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=num_cpus,
            num_gpus=num_gpus if num_gpus > 0 else None,
            udf_modifying_row_count=False,
        )
        scored.write_parquet(str(staged / ROWS_FOLDER), ray_remote_args={"num_cpus": WRITE_TASK_CPUS})
        manifest = {"format": SCORES_FORMAT, "spec": asdict(spec), "columns": spec.columns, **(metadata or {})}
        (staged / SCORES_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        os.replace(staged, target)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)
    return target


def read_scores(
    folder: str | Path, expected_size: int | None = None, expected_passes: int | None = None
) -> tuple[PoolScores, dict[str, Any]]:
    """Read a scoring job's output: rows sorted by index, first occurrence kept, every column covering the same
    index set (exactly 0..expected_size − 1 when given) via `merge_passes` (docs/math/mak.md §2). The number of
    augmented passes comes from the stored metadata; a different `expected_passes` is an explicit error.
    Returns (scores, metadata)."""
    folder = Path(folder)
    manifest_path = folder / SCORES_MANIFEST
    if not manifest_path.is_file():
        raise DataError(f"{folder} holds no complete scores ({SCORES_MANIFEST} missing)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        spec = ScoringSpec(**manifest["spec"])
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"{manifest_path}: corrupt scores manifest ({error})") from error
    if manifest.get("format") != SCORES_FORMAT:
        raise DataError(f"{manifest_path}: not an ltray scores manifest")
    if expected_passes is not None and spec.aug_passes != expected_passes:
        raise DataError(
            f"{folder} holds {spec.aug_passes} augmented passes, sampling asks for R = {expected_passes}"
        )
    files = sorted((folder / ROWS_FOLDER).glob("*.parquet"))
    if not files:
        raise DataError(f"{folder} holds no score rows")
    try:
        table = pa.concat_tables([pq.read_table(file) for file in files])
    except (OSError, pa.ArrowException) as error:
        raise DataError(f"cannot read the score rows under {folder}: {error}") from error
    missing = [name for name in [INDEX, *spec.columns] if name not in table.column_names]
    if missing:
        raise DataError(f"{folder}: score rows lack the column(s) {', '.join(missing)}")
    raw_index = table.column(INDEX).to_numpy()
    passes = [(raw_index, _vector_values(table.column(name))) for name in spec.columns]
    index, values = merge_passes(passes, expected_size=expected_size)
    arrays = cast(list[np.ndarray], values)  # merged from numpy passes, so numpy
    return _scores_from_columns(index, dict(zip(spec.columns, arrays)), spec), manifest


def score_pool(
    pool: str | Path,
    source: ModelSource,
    spec: ScoringSpec,
    out: str | Path,
    **job: Unpack[ScoringJob],
) -> PoolScores:
    """Run the scoring job over a pool folder (shards verified first) into `out` and read the result back."""
    info = read_pool_info(pool)
    dataset = open_pool_dataset(pool, rows_per_block=block_rows(info.size, spec.batch_size, job.get("actors", 1)))
    metadata = {"pool": str(info.path.resolve()), "pool_sha256": info.content_sha256, "size": info.size}
    run_scoring_job(dataset, source, spec, info.image_shape, out, metadata=metadata, **job)
    return read_scores(out, expected_size=info.size, expected_passes=spec.aug_passes)[0]


def arrays_dataset(images: np.ndarray, rows_per_block: int = 2048) -> ray.data.Dataset:
    """In-memory uint8 images [n, H, W, 3] as a Ray Dataset of (`pool_index` = row, `image`) in blocks."""
    import ray.data

    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8 or images.shape[0] == 0:
        raise DataError(f"expected non-empty uint8 images [n, H, W, 3], got {images.dtype} {images.shape}")
    tables = [
        pa.table({INDEX: pa.array(np.arange(lo, min(lo + rows_per_block, len(images)), dtype=np.int64)),
                  "image": image_array(images[lo : lo + rows_per_block])})
        for lo in range(0, len(images), rows_per_block)
    ]
    return ray.data.from_arrow(tables)


def score_arrays(
    images: np.ndarray,
    source: ModelSource,
    spec: ScoringSpec,
    out: str | Path,
    *,
    metadata: Mapping[str, Any] | None = None,
    **job: Unpack[ScoringJob],
) -> PoolScores:
    """The scoring job over in-memory images (e.g. MAK's ID training set, pass (b)), keyed by row 0..n−1."""
    dataset = arrays_dataset(images, block_rows(int(images.shape[0]), spec.batch_size, job.get("actors", 1)))
    run_scoring_job(dataset, source, spec, tuple(images.shape[1:]), out,
                    metadata={"size": int(images.shape[0]), **(metadata or {})}, **job)
    return read_scores(out, expected_size=int(images.shape[0]), expected_passes=spec.aug_passes)[0]
