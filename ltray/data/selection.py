"""MAK selections on disk (docs/math/mak.md §7): the folder `ltray mak sample` writes and `data.extra_data` reads.

A selection folder holds
- `selection.json`: the manifest: format marker, the reference-style run name, the pool folder and its content
  sha256, the checkpoint and its sha256, every parameter and seed, and `positions`, the selected pool positions in
  output order;
- `selection.tsv`: one line per selected item in output order: rank, pool index, source path, label, score;
- `selected_list.txt` (pools imported from a list only): the selected candidate lines in the input list format
  (`path label [source]`);
- `scores.npz` and histogram PNGs (diagnostics).

For retraining, pool position j becomes dataset index N_id + j with label −1 (docs/math/README.md convention 1).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ltray.data.pool_store import read_pool_arrays, read_pool_info
from ltray.data.sources import ArraySource
from ltray.errors import DataError

SELECTION_FORMAT = "ltray-mak-selection-v1"
MANIFEST_NAME = "selection.json"
TABLE_NAME = "selection.tsv"
LIST_NAME = "selected_list.txt"


def manifest_path(path: str | Path) -> Path:
    given = Path(path)
    return given / MANIFEST_NAME if given.is_dir() else given


def read_selection_manifest(path: str | Path) -> dict[str, Any]:
    """The parsed and checked `selection.json` of a selection folder (or manifest file)."""
    file = manifest_path(path)
    if not file.is_file():
        raise DataError(f"MAK selection not found: {file}")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(f"{file}: corrupt selection manifest ({error})") from error
    if not isinstance(manifest, dict) or manifest.get("format") != SELECTION_FORMAT:
        raise DataError(f"{file}: not an ltray MAK selection manifest")
    for key in ("pool", "pool_sha256", "positions"):
        if key not in manifest:
            raise DataError(f"{file}: the selection manifest has no {key!r}")
    return manifest


def _positions(manifest: Mapping[str, Any], size: int, file: Path) -> np.ndarray:
    raw = manifest["positions"]
    if not isinstance(raw, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in raw):
        raise DataError(f"{file}: positions must be a list of integers")
    positions = np.asarray(raw, dtype=np.int64)
    if positions.size == 0:
        raise DataError(f"{file}: the selection is empty")
    if positions.min() < 0 or positions.max() >= size:
        raise DataError(f"{file}: a selected position lies outside the pool of {size} items")
    if np.unique(positions).size != positions.size:
        raise DataError(f"{file}: the selection repeats a pool position")
    return positions


def read_selection(path: str | Path) -> tuple[ArraySource, np.ndarray]:
    """(the pool as an ArraySource, the selected positions int64 in output order) of a MAK selection.

    The pool folder named in the manifest is read with its shard hashes verified and must still have the content
    sha256 recorded at selection time.
    """
    file = manifest_path(path)
    manifest = read_selection_manifest(file)
    info = read_pool_info(manifest["pool"])
    if info.content_sha256 != manifest["pool_sha256"]:
        raise DataError(f"{file}: the pool {info.path} has changed since the selection was made (content sha256)")
    positions = _positions(manifest, info.size, file)
    return read_pool_arrays(info.path), positions


def selection_table(
    positions: np.ndarray, scores: np.ndarray, labels: np.ndarray, paths: Sequence[str]
) -> str:
    """The text of `selection.tsv` (header, then one line per pick in output order)."""
    lines = ["rank\tpool_index\tsource_path\tlabel\tscore"]
    for rank, position in enumerate(positions.tolist()):
        lines.append(f"{rank}\t{position}\t{paths[position]}\t{int(labels[position])}\t{float(scores[position])!r}")
    return "\n".join(lines) + "\n"


def selected_list(positions: np.ndarray, labels: np.ndarray, paths: Sequence[str], sources: Sequence[str]) -> str:
    """The selected candidate lines in the input list format `path label [source]` (docs/math/mak.md §7)."""
    lines = []
    for position in positions.tolist():
        label = int(labels[position])
        if not paths[position] or label < 0:
            raise DataError(f"pool item {position} has no list path or label to write")
        source = sources[position]
        lines.append(f"{paths[position]} {label} {source}" if source else f"{paths[position]} {label}")
    return "\n".join(lines) + "\n"


def write_selection_folder(out: str | Path, files: Mapping[str, str | bytes | Callable[[Path], None]]) -> Path:
    """Create the folder `out` with `files` (name → text, bytes, or a writer called with the file path), the
    manifest `selection.json` last, via a temporary folder renamed into place. An existing `out` is refused,
    except an empty folder, which is replaced."""
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise DataError(f"{target} already exists; a MAK selection is never overwritten")
    if MANIFEST_NAME not in files:
        raise DataError("a selection needs its manifest")
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.writing-"))
    try:
        for name in sorted(files, key=lambda n: n == MANIFEST_NAME):
            content = files[name]
            if isinstance(content, str):
                (staged / name).write_text(content, encoding="utf-8")
            elif isinstance(content, bytes):
                (staged / name).write_bytes(content)
            else:
                content(staged / name)
        os.replace(staged, target)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)
    return target
