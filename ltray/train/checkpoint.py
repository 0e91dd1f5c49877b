"""Checkpoints: everything needed to resume exactly, written atomically, read with weights_only=True."""

from __future__ import annotations

import os
import random
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from ltray.common import distributed as dist_utils
from ltray.errors import CheckpointError, torch_load_reason

FORMAT = "ltray-checkpoint-v1"
_EPOCH_FILE = re.compile(r"^epoch_(\d{4,})\.pt$")


CHECKPOINT_FOLDER = "checkpoints"  # of a run's folder


def checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}.pt"


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as plain tensors and tuples (loadable with weights_only=True)."""
    # the legacy tuple, get_state's default (numpy's stubs give the legacy=False dict to a call without arguments)
    kind, keys, pos, has_gauss, cached = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng_states() -> list[dict[str, Any]] | None:
    """Every rank's `rng_state()`, indexed by rank, on rank 0 (None on the other ranks); a collective call.

    A checkpoint holds all of them, so that a resumed distributed run gives each rank back its own stream
    (docs/math/README.md convention 6: seed + rank).
    """
    if not dist_utils.is_distributed():
        return [rng_state()]
    world = dist_utils.world_size()
    states: list[dict[str, Any]] | None = [{} for _ in range(world)] if dist_utils.rank() == 0 else None
    torch.distributed.gather_object(rng_state(), states, dst=0)
    return states


def reseed(seed: int, rank: int, epoch: int) -> None:
    """Seed Python, NumPy and torch from (seed + rank, epoch): distinct per rank, the same on every replay."""
    derived = int(np.random.SeedSequence([(seed + rank) % 2**64, epoch]).generate_state(1)[0])
    random.seed(derived)
    np.random.seed(derived)
    torch.manual_seed(derived)


def restore_rng_states(saved: list[dict[str, Any]] | dict[str, Any], *, seed: int, epoch: int) -> bool:
    """Give this rank its own saved RNG state; returns whether the streams continue exactly.

    `saved` is `gather_rng_states()` of the checkpointed run (a single dict in checkpoints written before every
    rank's state was kept: that run's rank 0). When the world size changed, the saved states do not map onto the
    ranks, so every rank is reseeded with `reseed(seed, rank, epoch)` and rank 0 says so on stderr.
    """
    states = [saved] if isinstance(saved, dict) else list(saved)
    rank, world = dist_utils.rank(), dist_utils.world_size()
    if len(states) == world:
        set_rng_state(states[rank])
        return True
    reseed(seed, rank, epoch)
    if rank == 0:
        print(
            f"ltray: the checkpoint holds the RNG states of {len(states)} rank(s) but {world} are running; "
            f"reseeded every rank from (seed + rank, epoch {epoch})",
            file=sys.stderr,
            flush=True,
        )
    return False


def _as_tuple(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuple(v) for v in value)
    return value


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """Write `state` to `path` atomically (temp file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, **state}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read an ltray checkpoint; anything missing, corrupt or foreign raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise CheckpointError(f"cannot read checkpoint {path}: {torch_load_reason(exc)}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an ltray checkpoint (no '{FORMAT}' format marker)")
    return state


def latest_checkpoint(directory: Path) -> Path | None:
    """The checkpoint with the highest epoch in `directory`, or None."""
    if not directory.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _EPOCH_FILE.match(p.name))]
    return max(found)[1] if found else None
