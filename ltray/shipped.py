"""The files ltray ships inside the package, found through `importlib.resources` so that an installed wheel finds
them from any folder: the split files (`ltray/splits/<data set>/`) and the configs (`ltray/configs/`)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from ltray.errors import LtrayError


def shipped_path(*parts: str) -> Path:
    """The path of a shipped file or folder, e.g. `shipped_path("configs", "sweep_colt.yaml")`."""
    resource = files("ltray")
    for part in parts:
        resource = resource.joinpath(part)
    if not isinstance(resource, Path):
        raise LtrayError(f"ltray's shipped files must be installed as files on disk, not in an archive ({resource})")
    return resource


def shipped_splits_dir() -> Path:
    """The folder of the shipped split files, one sub-folder per data set."""
    return shipped_path("splits")


def shipped_config_dir() -> Path:
    """The folder of the shipped configs (`paper/` holds the published recipes)."""
    return shipped_path("configs")
