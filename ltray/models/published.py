"""Load pre-training checkpoints released with the SDCLR, COLT and MAK code bases (docs/math/data_and_eval.md §10).

A checkpoint is a dict with `state_dict` (and usually `epoch`, `optim`). Its keys are mapped onto ltray's backbone:
- a leading `module.` (DDP) is stripped;
- the projection head (`fc.*`) and the pruned head (any key with `_prune`) are dropped;
- `normalize.mean` / `normalize.std` are checked against ltray's built-in ImageNet statistics and dropped;
- torchvision shortcut names `downsample.0` / `downsample.1` become `downsample.conv` / `downsample.bn`;
- BatchNorm entries `<name>.bn_list.{i}.*` (dual BN), `<name>.bn_list.*` (the code base's single BN) and plain
  `<name>.*` are mapped onto whichever BN layout the target backbone has. A plain-BN target takes BN 0 (the dense
  branch) and drops BN 1; a dual-BN target loaded from a single-BN checkpoint gets that BN in both copies.
Every remaining backbone tensor must then match by name and shape. Pruning masks are not part of these
checkpoints: every `prune_mask` is reset to all ones.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from ltray.errors import CheckpointError, torch_load_reason
from ltray.models.branch import DENSE, PRUNED, DualBatchNorm, MaskedConv2d, set_branch
from ltray.models.resnet import IMAGENET_MEAN, IMAGENET_STD

_BN_INDEXED = re.compile(r"^(?P<module>.+)\.bn_list\.(?P<index>\d+)\.(?P<leaf>[^.]+)$")
_BN_SINGLE = re.compile(r"^(?P<module>.+)\.bn_list\.(?P<leaf>[^.]+)$")
_OPTIONAL_LEAVES = ("num_batches_tracked", "prune_mask")
_SHOWN_KEYS = 8


def _read(path: str | os.PathLike[str]) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {os.fspath(path)}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated, foreign or unsafe pickles
        raise CheckpointError(f"cannot read checkpoint {os.fspath(path)} (weights only): {torch_load_reason(exc)}") from exc
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise CheckpointError(f"{os.fspath(path)} is not a pre-training checkpoint (a dict with 'state_dict')")
    state = checkpoint["state_dict"]
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{os.fspath(path)}: 'state_dict' must map names to tensors")
    return dict(checkpoint)


def _check_normalization(name: str, value: torch.Tensor) -> None:
    expected = torch.tensor(IMAGENET_MEAN if name.endswith("mean") else IMAGENET_STD)
    if value.numel() != expected.numel() or not torch.allclose(value.reshape(-1).float(), expected, atol=1e-6):
        raise CheckpointError(
            f"checkpoint input normalisation {name}={value.reshape(-1).tolist()} differs from ltray's ImageNet "
            f"statistics {expected.tolist()}"
        )


def _rename_shortcut(key: str) -> str:
    return key.replace(".downsample.0.", ".downsample.conv.").replace(".downsample.1.", ".downsample.bn.")


def _bn_targets(key: str, dual_modules: set[str], plain_bn_modules: set[str]) -> list[str]:
    """Target keys for one checkpoint key; none when it is a pruned-branch BN entry and the target has plain BN."""
    indexed = _BN_INDEXED.match(key)
    single = None if indexed else _BN_SINGLE.match(key)
    if indexed:
        module, index, leaf = indexed["module"], int(indexed["index"]), indexed["leaf"]
    elif single:
        module, index, leaf = single["module"], None, single["leaf"]
    else:
        module, _, leaf = key.rpartition(".")
        index = None
        if module not in dual_modules:
            return [key]
    if module in dual_modules:
        if index is None:
            return [f"{module}.bn_list.{DENSE}.{leaf}", f"{module}.bn_list.{PRUNED}.{leaf}"]
        return [f"{module}.bn_list.{index}.{leaf}"]
    if module in plain_bn_modules:
        return [f"{module}.{leaf}"] if index in (None, DENSE) else []
    return [key]


def _summary(label: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    more = f" (+{len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else ""
    return f"{label} [{shown}{more}]"


def load_published_backbone(path: str | os.PathLike[str], backbone: nn.Module) -> dict[str, Any]:
    """Load a published pre-training checkpoint into `backbone` (dense branch); raise CheckpointError on mismatch.

    Returns `{"epoch": int | None, "dropped_keys": [...], "loaded_keys": int, "bn_copied_to_pruned": bool}`.
    """
    checkpoint = _read(path)
    dual_modules = {n for n, m in backbone.named_modules() if isinstance(m, DualBatchNorm)}
    plain_bn_modules = {
        n
        for n, m in backbone.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and ".bn_list." not in f".{n}."
    }
    ours = backbone.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    copied_to_pruned = False
    for raw_key, value in checkpoint["state_dict"].items():
        key = raw_key[len("module.") :] if raw_key.startswith("module.") else raw_key
        if key.startswith("fc.") or "_prune" in key:
            dropped.append(raw_key)
            continue
        if key in ("normalize.mean", "normalize.std"):
            _check_normalization(key, value)
            dropped.append(raw_key)
            continue
        targets = _bn_targets(_rename_shortcut(key), dual_modules, plain_bn_modules)
        if not targets:
            dropped.append(raw_key)
        copied_to_pruned |= len(targets) > 1
        for target in targets:
            mapped[target] = value

    required = {k for k in ours if k.rsplit(".", 1)[-1] not in _OPTIONAL_LEAVES}
    missing = sorted(required - mapped.keys())
    unexpected = sorted(mapped.keys() - ours.keys())
    wrong_shape = sorted(
        f"{k} {tuple(v.shape)}≠{tuple(ours[k].shape)}"
        for k, v in mapped.items()
        if k in ours and v.shape != ours[k].shape
    )
    problems = [
        _summary(label, keys)
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", wrong_shape))
        if keys
    ]
    if problems:
        raise CheckpointError(f"{os.fspath(path)} does not match the backbone: " + "; ".join(problems))

    state = dict(ours)
    for key, value in mapped.items():
        state[key] = value.to(dtype=ours[key].dtype)
    for name, module in backbone.named_modules():
        if isinstance(module, MaskedConv2d):
            state[f"{name}.prune_mask"] = torch.ones_like(module.prune_mask)
    backbone.load_state_dict(state, strict=True)
    set_branch(backbone, DENSE)
    epoch = checkpoint.get("epoch")
    return {
        "epoch": int(epoch) if isinstance(epoch, (int, float, torch.Tensor)) else None,
        "dropped_keys": sorted(dropped),
        "loaded_keys": len(mapped),
        "bn_copied_to_pruned": copied_to_pruned,
    }
