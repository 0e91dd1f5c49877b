"""Unlabeled image pools stored as Parquet shards (COLT's OOD pool, docs/math/colt.md §2; MAK's candidates, mak.md §1).

A pool is a folder holding `shard-NNNNN.parquet` files and `pool.json`, written last:

- rows: `pool_index` (int64, 0..N−1 in shard order), `image` (fixed-size binary: the raw uint8 H×W×3 pixels, HWC,
  RGB), `source_path` (string, the list path of the item, "" for arrays), `source` (string, the list's third token
  naming an image root, "" otherwise), `label` (int64, −1 unless the source knows it);
- `pool.json`: the format marker, size, image shape, dtype, a description of the source, and every shard's file
  name, first index, row count and sha256, plus `content_sha256`, a hash over all of that which identifies the
  pool's content.

Imports write into a hidden temporary folder beside the target and rename it into place, so a pool folder either is
complete or does not exist; an existing folder is replaced only with `overwrite` and only when it is a pool itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from ltray.data.sources import ArraySource
from ltray.data.splits import file_sha256
from ltray.errors import ConfigError, DataError
from ltray.storage import atomic_file

if TYPE_CHECKING:
    import ray.data

POOL_FORMAT = "ltray-pool-v1"
MANIFEST = "pool.json"
SHARD_PATTERN = "shard-{:05d}.parquet"
ROW_GROUP_ROWS = 512
DEFAULT_EMBEDDED_SIZE = 10_000
KINDS = ("npy", "list", "embedded")


@dataclass(frozen=True)
class Chunk:
    """Consecutive pool rows on their way into one shard."""

    images: np.ndarray  # uint8 [n, H, W, 3]
    labels: np.ndarray  # int64 [n]
    paths: list[str]
    sources: list[str]


@dataclass(frozen=True)
class ShardInfo:
    file: str
    first_index: int
    rows: int
    sha256: str


@dataclass(frozen=True)
class PoolInfo:
    """The parsed `pool.json` of a pool folder."""

    path: Path
    size: int
    image_shape: tuple[int, int, int]
    source: dict[str, Any]
    shards: tuple[ShardInfo, ...]
    content_sha256: str

    @property
    def shard_paths(self) -> list[Path]:
        return [self.path / shard.file for shard in self.shards]


def content_sha256(size: int, image_shape: tuple[int, int, int], shards: list[ShardInfo]) -> str:
    """The identity of a pool's content: a hash over its size, image shape and every shard's rows and sha256."""
    record = {
        "size": size,
        "image_shape": list(image_shape),
        "shards": [[shard.first_index, shard.rows, shard.sha256] for shard in shards],
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


# ----- sources ---------------------------------------------------------------------------------------------------


def _infer_kind(source: str) -> str:
    if source == "embedded" or source.startswith("embedded:"):
        return "embedded"
    if source.lower().endswith(".npy"):
        return "npy"
    return "list"


def _open_npy(path: Path) -> np.ndarray:
    """Memory-map a uint8 [N, H, W, 3] `.npy`, checking its header against the file size first."""
    if not path.is_file():
        raise DataError(f"pool array not found: {path}")
    try:
        with open(path, "rb") as stream:
            version = np.lib.format.read_magic(stream)
            readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in readers:
                raise DataError(f"{path}: unsupported .npy format version {version[0]}.{version[1]}")
            shape, fortran_order, dtype = readers[version](stream)
            offset = stream.tell()
    except DataError:
        raise
    except (ValueError, OSError, EOFError) as error:
        raise DataError(f"{path}: not a readable .npy array ({str(error).splitlines()[0]})") from error
    if dtype != np.uint8:
        raise DataError(f"{path}: pool images must be uint8, found {dtype}")
    if len(shape) != 4 or shape[3] != 3:
        raise DataError(f"{path}: pool images must have shape [N, H, W, 3], found {tuple(shape)}")
    if shape[0] == 0:
        raise DataError(f"{path}: the pool is empty")
    if shape[1] < 1 or shape[2] < 1:
        raise DataError(f"{path}: pool images have an empty side, shape {tuple(shape)}")
    expected = offset + int(np.prod(shape))
    actual = path.stat().st_size
    if actual < expected:
        raise DataError(f"{path}: truncated .npy: its header promises {expected} bytes, the file has {actual}")
    return np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=tuple(shape),
                     order="F" if fortran_order else "C")


def _array_chunks(images: np.ndarray, labels: np.ndarray, shard_rows: int) -> Iterator[Chunk]:
    for lo in range(0, images.shape[0], shard_rows):
        block = np.ascontiguousarray(images[lo : lo + shard_rows])
        rows = block.shape[0]
        yield Chunk(block, np.asarray(labels[lo : lo + rows], dtype=np.int64), [""] * rows, [""] * rows)


def resize_centre_crop(image: Image.Image, size: int) -> np.ndarray:
    """Resize so the shorter side is `size` (bicubic), then centre-crop size × size; uint8 [size, size, 3]."""
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    resized = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _list_chunks(
    list_file: Path, root: str | Path | None, size: int | None, source_roots: Mapping[str, str | Path], shard_rows: int
) -> tuple[Iterator[Chunk], int, tuple[int, int, int], dict[str, Any]]:
    from ltray.data.lists import read_text_list
    from ltray.data.sources import ImageListSource

    if root is None:
        raise ConfigError(f"a list pool source ({list_file}) needs the image root (--root)")
    if size is None or size < 1:
        raise ConfigError(f"a list pool source ({list_file}) needs a positive image size (--size)")
    items = read_text_list(list_file)
    source = ImageListSource(items, Path(root), {k: Path(v) for k, v in source_roots.items()}, name=list_file.name)
    source.check_exists(sample=0)
    paths = list(items.paths or ())
    sources = list(items.sources) if items.sources is not None else [""] * len(paths)

    def chunks() -> Iterator[Chunk]:
        for lo in range(0, len(source), shard_rows):
            hi = min(len(source), lo + shard_rows)
            images = np.stack([resize_centre_crop(source.load(i), size) for i in range(lo, hi)])
            yield Chunk(images, np.asarray(items.labels[lo:hi], dtype=np.int64), paths[lo:hi], sources[lo:hi])

    description = {
        "kind": "list",
        "list": str(list_file.resolve()),
        "root": str(Path(root).resolve()),
        "source_roots": {k: str(Path(v).resolve()) for k, v in source_roots.items()},
        "resize": f"shorter side to {size} (bicubic), centre crop {size}x{size}",
    }
    return chunks(), len(source), (size, size, 3), description


def _source_chunks(
    source: str, kind: str, root: str | Path | None, size: int | None, source_roots: Mapping[str, str | Path],
    shard_rows: int,
) -> tuple[Iterator[Chunk], int, tuple[int, int, int], dict[str, Any]]:
    """(chunk iterator, pool size, image shape, source description) of one pool source of a kind in KINDS."""
    if kind == "list":
        return _list_chunks(Path(source), root, size, source_roots, shard_rows)
    if kind == "npy":
        path = Path(source)
        images = _open_npy(path)
        if size is not None:
            raise ConfigError("--size applies to list sources only; a .npy pool keeps its image size")
        labels = np.full(images.shape[0], -1, dtype=np.int64)
        description: dict[str, Any] = {"kind": "npy", "path": str(path.resolve()), "bytes": path.stat().st_size}
    else:
        from ltray.data.embedded import embedded_pool

        count_text = source.partition(":")[2] if source.startswith("embedded:") else ""
        try:
            count = int(count_text) if count_text else DEFAULT_EMBEDDED_SIZE
        except ValueError:
            raise ConfigError(f"embedded pool source must be 'embedded' or 'embedded:N', got {source!r}") from None
        if count < 1:
            raise DataError(f"the embedded pool is empty (N = {count})")
        if size is not None:
            raise ConfigError("--size applies to list sources only; the embedded pool has 16x16 images")
        pool = embedded_pool(n=count, seed=0)
        images, labels = pool.images, pool.labels
        description = {"kind": "embedded", "n": count, "seed": 0}
    shape = (int(images.shape[1]), int(images.shape[2]), 3)
    return _array_chunks(images, labels, shard_rows), int(images.shape[0]), shape, description


# ----- writing ---------------------------------------------------------------------------------------------------


def image_array(images: np.ndarray) -> pa.FixedSizeBinaryArray:
    """uint8 [n, H, W, 3] images as one fixed-size binary value per image (zero-copy over the contiguous bytes)."""
    contiguous = np.ascontiguousarray(images, dtype=np.uint8)
    width = int(np.prod(contiguous.shape[1:]))
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(width), contiguous.shape[0], [None, pa.py_buffer(contiguous)]
    )


def images_from_column(column: pa.Array | pa.ChunkedArray, shape: tuple[int, int, int]) -> np.ndarray:
    """The inverse of `image_array`: a fixed-size binary column as a read-only uint8 [n, H, W, 3] view."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    width = int(np.prod(shape))
    if not pa.types.is_fixed_size_binary(array.type) or array.type.byte_width != width:
        raise DataError(f"pool image column has type {array.type}, expected fixed_size_binary[{width}]")
    if array.null_count:
        raise DataError("pool image column holds null values")
    data = np.frombuffer(array.buffers()[1], dtype=np.uint8)
    start = array.offset * width
    return data[start : start + len(array) * width].reshape(len(array), *shape)


def _chunk_table(chunk: Chunk, first_index: int) -> pa.Table:
    rows = chunk.images.shape[0]
    return pa.table(
        {
            "pool_index": pa.array(np.arange(first_index, first_index + rows, dtype=np.int64)),
            "image": image_array(chunk.images),
            "source_path": pa.array(chunk.paths, pa.string()),
            "source": pa.array(chunk.sources, pa.string()),
            "label": pa.array(chunk.labels, pa.int64()),
        }
    )


def is_pool_folder(path: Path) -> bool:
    try:
        return json.loads((path / MANIFEST).read_text(encoding="utf-8")).get("format") == POOL_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def replace_folder(staged: Path, target: Path) -> None:
    """Move the finished folder `staged` to `target`, replacing an existing `target` (moved aside first and
    restored if the final rename fails)."""
    if not target.exists():
        os.replace(staged, target)
        return
    aside = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
    aside.rmdir()
    os.replace(target, aside)
    try:
        os.replace(staged, target)
    except OSError:
        os.replace(aside, target)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def import_pool(
    source: str | Path,
    out: str | Path,
    kind: str | None = None,
    root: str | Path | None = None,
    size: int | None = None,
    shard_rows: int = 4096,
    overwrite: bool = False,
    source_roots: Mapping[str, str | Path] | None = None,
) -> Path:
    """Convert a pool source into a pool folder at `out` and return it (`ltray pool import`).

    Sources: a uint8 [N, H, W, 3] `.npy` (memory-mapped, copied `shard_rows` rows at a time), a `path label
    [source]` list with its image `root` (and `source_roots` for named sources), every image resized to
    `size` × `size` (`resize_centre_crop`), or `embedded` / `embedded:N` (the embedded OOD pool, 10 000 items by
    default). `kind` defaults to `embedded` for those names, `npy` for a `.npy` file, else `list`.
    """
    text = str(source)
    kind = kind or _infer_kind(text)
    if kind not in KINDS:
        raise ConfigError(f"pool source kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if isinstance(shard_rows, bool) or not isinstance(shard_rows, int) or shard_rows < 1:
        raise ConfigError(f"shard_rows must be a positive integer, got {shard_rows!r}")
    target = Path(out)
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise DataError(f"{target} already exists; pass --overwrite to replace it")
        if not target.is_dir() or not (is_pool_folder(target) or not any(target.iterdir())):
            raise DataError(f"refusing to replace {target}: it is not an ltray pool folder")
    chunks, total, shape, description = _source_chunks(text, kind, root, size, source_roots or {}, shard_rows)
    if total == 0:
        raise DataError(f"the pool source {text} is empty")
    new_folders = [folder for folder in (target.parent, *target.parent.parents) if not folder.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.importing-"))
    imported = False
    try:
        shards: list[ShardInfo] = []
        written = 0
        for number, chunk in enumerate(chunks):
            if chunk.images.shape[1:] != shape:
                raise DataError(f"pool item {written} has shape {chunk.images.shape[1:]}, the pool's is {shape}")
            name = SHARD_PATTERN.format(number)
            pq.write_table(_chunk_table(chunk, written), staged / name, row_group_size=ROW_GROUP_ROWS)
            shards.append(ShardInfo(name, written, int(chunk.images.shape[0]), file_sha256(staged / name)))
            written += int(chunk.images.shape[0])
        if written != total:
            raise DataError(f"the pool source {text} yielded {written} items, expected {total}")
        manifest = {
            "format": POOL_FORMAT,
            "size": written,
            "image_shape": list(shape),
            "dtype": "uint8",
            "layout": "HWC RGB",
            "source": description,
            "shards": [asdict(shard) for shard in shards],
            "content_sha256": content_sha256(written, shape, shards),
        }
        with atomic_file(staged / MANIFEST, encoding="utf-8") as stream:
            json.dump(manifest, stream, indent=2)
            stream.write("\n")
        replace_folder(staged, target)
        imported = True
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)
        if not imported:  # a failed import leaves no folder behind that it created
            for folder in new_folders:
                try:
                    folder.rmdir()
                except OSError:
                    break
    return target


# ----- reading ---------------------------------------------------------------------------------------------------


def read_pool_info(path: str | Path, verify: bool = False) -> PoolInfo:
    """Parse and check a pool folder's `pool.json` (shard files must exist; with `verify`, their hashes too)."""
    folder = Path(path)
    manifest_path = folder / MANIFEST
    if not folder.is_dir():
        raise DataError(f"pool folder not found: {folder}")
    if not manifest_path.is_file():
        raise DataError(f"{folder} is not a complete ltray pool (no {MANIFEST})")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("format") != POOL_FORMAT:
            raise DataError(f"{manifest_path}: not an ltray pool manifest (format {manifest.get('format')!r})")
        shape = tuple(int(v) for v in manifest["image_shape"])
        shards = tuple(
            ShardInfo(str(s["file"]), int(s["first_index"]), int(s["rows"]), str(s["sha256"])) for s in manifest["shards"]
        )
        info = PoolInfo(folder, int(manifest["size"]), cast(tuple[int, int, int], shape),  # length checked below
                        dict(manifest["source"]), shards, str(manifest["content_sha256"]))
    except DataError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise DataError(f"{manifest_path}: corrupt pool manifest ({type(error).__name__}: {error})") from error
    if len(shape) != 3 or shape[2] != 3 or min(shape) < 1 or manifest.get("dtype") != "uint8":
        raise DataError(f"{manifest_path}: unsupported image shape {shape} / dtype {manifest.get('dtype')}")
    expected_first = 0
    for shard in shards:
        if shard.first_index != expected_first or shard.rows < 1 or "/" in shard.file or shard.file.startswith("."):
            raise DataError(f"{manifest_path}: shard {shard.file} does not continue the pool index at {expected_first}")
        if not (folder / shard.file).is_file():
            raise DataError(f"{folder}: shard {shard.file} is missing")
        expected_first += shard.rows
    if expected_first != info.size or info.size < 1:
        raise DataError(f"{manifest_path}: the shards hold {expected_first} rows, the manifest says {info.size}")
    if content_sha256(info.size, shape, list(shards)) != info.content_sha256:
        raise DataError(f"{manifest_path}: content_sha256 does not match the shard list")
    if verify:
        verify_pool(info)
    return info


def verify_pool(info: PoolInfo) -> None:
    """Check every shard's sha256 against the manifest; DataError naming the first corrupt shard."""
    for shard, path in zip(info.shards, info.shard_paths):
        if file_sha256(path) != shard.sha256:
            raise DataError(f"{info.path}: shard {shard.file} is corrupt (sha256 mismatch)")


def _read_shard(info: PoolInfo, shard: ShardInfo, columns: list[str]) -> pa.Table:
    try:
        table = pq.read_table(info.path / shard.file, columns=columns)
    except (OSError, pa.ArrowException) as error:
        raise DataError(f"{info.path}: cannot read shard {shard.file}: {error}") from error
    if table.num_rows != shard.rows:
        raise DataError(f"{info.path}: shard {shard.file} has {table.num_rows} rows, the manifest says {shard.rows}")
    if "pool_index" in columns:
        index = table.column("pool_index").to_numpy()
        if not np.array_equal(index, np.arange(shard.first_index, shard.first_index + shard.rows)):
            raise DataError(f"{info.path}: shard {shard.file} holds out-of-order pool indices")
    return table


def read_pool_arrays(path: str | Path, verify: bool = True) -> ArraySource:
    """The pool as an in-memory ArraySource (uint8 [N, H, W, 3] images, int64 labels, −1 = unknown).

    With `verify` every shard's sha256 is checked first; a corrupt or missing shard raises DataError.
    """
    info = read_pool_info(path, verify)
    images = np.empty((info.size, *info.image_shape), dtype=np.uint8)
    labels = np.empty(info.size, dtype=np.int64)
    for shard in info.shards:
        table = _read_shard(info, shard, ["pool_index", "image", "label"])
        rows = slice(shard.first_index, shard.first_index + shard.rows)
        images[rows] = images_from_column(table.column("image"), info.image_shape)
        labels[rows] = table.column("label").to_numpy()
    return ArraySource(images=images, labels=labels, name=info.path.name)


def read_pool_items(path: str | Path) -> tuple[np.ndarray, list[str], list[str]]:
    """(labels int64 [N], source paths, sources) of every pool item, without the images."""
    info = read_pool_info(path)
    labels, paths, sources = [], [], []
    for shard in info.shards:
        table = _read_shard(info, shard, ["pool_index", "source_path", "source", "label"])
        labels.append(table.column("label").to_numpy())
        paths += table.column("source_path").to_pylist()
        sources += table.column("source").to_pylist()
    return np.concatenate(labels).astype(np.int64), paths, sources


READ_TASK_CPUS = 0.25


def open_pool_dataset(
    path: str | Path, columns: list[str] | None = None, verify: bool = True, rows_per_block: int | None = None
) -> ray.data.Dataset:
    """The pool as a Ray Dataset: `ray.data.read_parquet` over its shards, keeping `columns` (default
    `pool_index` and `image`). With `verify` the shard hashes are checked first.

    Ray Data's Parquet reader packs small shards into large blocks (up to `DataContext.target_max_block_size`),
    and one block reaches one actor; `rows_per_block` splits them again as they stream (`repartition` with
    `target_num_rows_per_block`) so that several actors get work.
    """
    import ray.data

    info = read_pool_info(path, verify)
    # fractional read tasks: on a small machine whose CPUs the training processes hold, whole-CPU readers would
    # wait for them (a silent stall)
    dataset = ray.data.read_parquet([str(p) for p in info.shard_paths], override_num_blocks=len(info.shards),
                                    num_cpus=READ_TASK_CPUS)
    dataset = dataset.select_columns(columns or ["pool_index", "image"])
    if rows_per_block is not None:
        if rows_per_block < 1:
            raise ConfigError(f"rows_per_block must be >= 1, got {rows_per_block}")
        dataset = dataset.repartition(target_num_rows_per_block=rows_per_block)
    return dataset


def _grid_image(images: np.ndarray, columns: int = 8, gap: int = 2, tile: int = 64) -> Image.Image:
    height, width = images.shape[1:3]
    scale = max(1, tile // max(height, width))
    cell_h, cell_w = height * scale + gap, width * scale + gap
    rows = -(-images.shape[0] // columns)
    canvas = Image.new("RGB", (columns * cell_w + gap, rows * cell_h + gap), (255, 255, 255))
    for position, image in enumerate(images):
        picture = Image.fromarray(image).resize((width * scale, height * scale), Image.Resampling.NEAREST)
        canvas.paste(picture, (gap + (position % columns) * cell_w, gap + (position // columns) * cell_h))
    return canvas


def _sample_images(info: PoolInfo, positions: np.ndarray) -> np.ndarray:
    """The images at sorted `positions`, read row group by row group."""
    out = np.empty((positions.shape[0], *info.image_shape), dtype=np.uint8)
    for shard in info.shards:
        inside = np.flatnonzero((positions >= shard.first_index) & (positions < shard.first_index + shard.rows))
        if inside.size == 0:
            continue
        parquet = pq.ParquetFile(info.path / shard.file)
        starts = np.cumsum([0] + [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)])
        local = positions[inside] - shard.first_index
        for group in np.unique(np.searchsorted(starts, local, side="right") - 1):
            members = inside[(local >= starts[group]) & (local < starts[group + 1])]
            table = parquet.read_row_group(int(group), columns=["image"])
            block = images_from_column(table.column("image"), info.image_shape)
            out[members] = block[positions[members] - shard.first_index - starts[group]]
    return out


def show_pool(path: str | Path, grid: str | Path | None = None, seed: int = 0) -> str:
    """A summary of a pool (size, image shape, dtype, source, shards); with `grid`, also write a PNG grid of 64
    random items (seeded) there. Shard hashes are verified."""
    info = read_pool_info(path, verify=True)
    labels, _, _ = read_pool_items(path)
    height, width, _ = info.image_shape
    source = ", ".join(f"{key}={value}" for key, value in info.source.items())
    known = int((labels >= 0).sum())
    lines = [
        f"pool: {info.path}",
        f"size: {info.size}",
        f"images: {height}x{width}x3 uint8 (HWC, RGB)",
        f"labels: {known} known, {info.size - known} unknown (-1)",
        f"source: {source}",
        f"shards: {len(info.shards)} (sha256 verified)",
        f"content sha256: {info.content_sha256}",
    ]
    if grid is not None:
        count = min(64, info.size)
        positions = np.sort(np.random.default_rng(seed).choice(info.size, size=count, replace=False))
        target = Path(grid)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(target, "wb") as stream:
            _grid_image(_sample_images(info, positions)).save(stream, format="PNG")
        lines.append(f"grid: {target} ({count} random items, seed {seed})")
    return "\n".join(lines)
