"""Where a sweep keeps its results: a folder every node mounts at the same path, or a filesystem URI.

`--storage` (else `$LTRAY_STORAGE`, else ./ray_results) takes what Ray Train and Tune take as shared storage: a
path, or a URI that `pyarrow.fs.FileSystem.from_uri` opens (`s3://bucket/prefix`, `gs://bucket/prefix`,
`hdfs://...`; options as a query string, e.g. `s3://bucket/prefix?endpoint_override=host:9000&scheme=http`).
Credentials come from each node's environment, as for Ray (for S3: `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, and `AWS_ENDPOINT_URL` for an S3-compatible server).

`Storage` is one location in it: ltray reads and writes sweep files (summaries, preflight markers, checkpoints of
in-process trials) through its pyarrow filesystem, so the same code serves a local folder and an object store.
"""

from __future__ import annotations

import os
import tempfile
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import IO, Any

from ltray.errors import ConfigError

STORAGE_ENV = "LTRAY_STORAGE"
DEFAULT_STORAGE = "ray_results"


@contextmanager
def atomic_file(path: Path, mode: str = "w", **options: Any) -> Iterator[IO[Any]]:
    """A stream (`open` mode and options) on a temporary file beside `path`, renamed onto `path` when the block
    ends without error and removed otherwise."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, mode, **options) as stream:
            yield stream
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


@dataclass(frozen=True)
class Storage:
    """A location on the sweep storage: an absolute local path, or a URI (its query string kept)."""

    uri: str

    def __str__(self) -> str:
        return self.uri

    def __getstate__(self) -> dict[str, str]:  # the filesystem is opened again where it is used (its credentials)
        return {"uri": self.uri}

    @property
    def is_local(self) -> bool:
        return "://" not in self.uri

    @property
    def local_path(self) -> Path:
        if not self.is_local:
            raise ValueError(f"{self.uri} is not a local path")
        return Path(self.uri)

    @property
    def name(self) -> str:
        return self.fs_path.rstrip("/").rsplit("/", 1)[-1]

    @cached_property
    def _resolved(self) -> tuple[Any, str]:
        import pyarrow.fs

        if self.is_local:
            return pyarrow.fs.LocalFileSystem(), self.uri
        return pyarrow.fs.FileSystem.from_uri(self.uri)

    @property
    def filesystem(self) -> Any:
        """The `pyarrow.fs.FileSystem` holding this location."""
        return self._resolved[0]

    @property
    def fs_path(self) -> str:
        """The location's path on `filesystem` (for S3: `bucket/prefix`)."""
        return self._resolved[1]

    @property
    def parent(self) -> Storage:
        if self.is_local:
            return Storage(str(self.local_path.parent))
        split = urllib.parse.urlsplit(self.uri)
        return Storage(urllib.parse.urlunsplit(split._replace(path=split.path.rstrip("/").rsplit("/", 1)[0])))

    def child(self, *parts: str) -> Storage:
        if self.is_local:
            return Storage(str(Path(self.uri, *parts)))
        split = urllib.parse.urlsplit(self.uri)
        path = "/".join([split.path.rstrip("/"), *parts])
        return Storage(urllib.parse.urlunsplit(split._replace(path=path)))

    def _kind(self) -> str:
        """The name of its `pyarrow.fs.FileType`: "NotFound", "File", "Directory" or "Unknown"."""
        return str(self.filesystem.get_file_info(self.fs_path).type.name)

    def exists(self) -> bool:
        return self._kind() != "NotFound"

    def is_file(self) -> bool:
        return self._kind() == "File"

    def is_dir(self) -> bool:
        """A folder; on an object store, a prefix holding at least one object."""
        return self._kind() == "Directory"

    def children(self) -> list[str]:
        """The names directly inside this folder (empty when it does not exist)."""
        import pyarrow.fs

        if not self.is_dir():
            return []
        listing = self.filesystem.get_file_info(pyarrow.fs.FileSelector(self.fs_path, allow_not_found=True))
        return sorted(info.base_name for info in listing)

    def make_dirs(self) -> None:
        self.filesystem.create_dir(self.fs_path, recursive=True)

    def read_text(self) -> str:
        with self.filesystem.open_input_stream(self.fs_path) as stream:
            return stream.read().decode()

    def write_text(self, text: str) -> None:
        """Write the whole file at once: on a local disk through a temporary file and a rename (a reader sees the
        old or the new text), on an object store as one upload (atomic there)."""
        if self.is_local:
            path = self.local_path
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(path) as out:
                out.write(text)
            return
        with self.filesystem.open_output_stream(self.fs_path) as out:
            out.write(text.encode())

    def upload(self, source: Path) -> None:
        """Copy the local file `source` to this location."""
        import pyarrow.fs

        self.filesystem.create_dir(self.fs_path.rsplit("/", 1)[0], recursive=True)
        pyarrow.fs.copy_files(str(source), self.fs_path, source_filesystem=pyarrow.fs.LocalFileSystem(),
                              destination_filesystem=self.filesystem)

    def download(self, target: Path) -> None:
        """Copy this file to the local path `target`."""
        import pyarrow.fs

        target.parent.mkdir(parents=True, exist_ok=True)
        pyarrow.fs.copy_files(self.fs_path, str(target), source_filesystem=self.filesystem,
                              destination_filesystem=pyarrow.fs.LocalFileSystem())

    def delete(self) -> None:
        self.filesystem.delete_file(self.fs_path)


def resolve_storage(value: str | None) -> Storage:
    """The storage root: `value`, else `$LTRAY_STORAGE`, else ./ray_results. A path is made absolute (`file://`
    URIs are paths); a URI must name a filesystem pyarrow knows. Raises ConfigError in one line otherwise."""
    chosen = value or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE
    if "://" not in chosen:
        return Storage(str(Path(chosen).expanduser().resolve()))
    split = urllib.parse.urlsplit(chosen)
    if split.scheme.lower() == "file":
        return Storage(str(Path(urllib.parse.unquote(split.path)).resolve()))
    if not (split.netloc + split.path).strip("/"):
        raise ConfigError(f"--storage {chosen}: name a bucket (and optionally a prefix), e.g. s3://BUCKET/sweeps")
    storage = Storage(chosen.rstrip("/"))
    try:
        _ = storage.filesystem  # opening it is the check
    except Exception as error:  # pyarrow raises ArrowInvalid, ValueError or OSError by filesystem kind
        raise ConfigError(f"--storage {chosen}: not a storage ltray can open ({' '.join(str(error).split())[:300]}); "
                          "use a shared path or an s3:// / gs:// URI") from None
    return storage


def storage_error(storage: Storage, error: BaseException) -> str:
    """One line for a failed operation on `storage` (pyarrow's messages are long and multi-line)."""
    text = " ".join(str(error).split())
    return f"{storage}: {text[:300] or type(error).__name__}"
