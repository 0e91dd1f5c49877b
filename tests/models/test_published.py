from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import torch

from ltray.errors import CheckpointError
from ltray.models.branch import PRUNED, set_branch
from ltray.models.published import load_published_backbone
from ltray.models.resnet import Backbone, build_backbone

WIDTH = 0.125
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])


def _randomised(dual_bn: bool, seed: int = 0, width: float = WIDTH) -> Backbone:
    """A backbone whose BN affine parameters and running statistics are all distinct, non-default values."""
    torch.manual_seed(seed)
    backbone = build_backbone("resnet18_cifar", width=width, dual_bn=dual_bn)
    with torch.no_grad():
        for name, tensor in backbone.state_dict().items():
            if name.endswith(("bn_list.0.weight", "bn_list.1.weight", ".bias", "running_mean")) or (
                not dual_bn and name.endswith("weight") and tensor.dim() == 1
            ):
                tensor.copy_(torch.randn_like(tensor))
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand_like(tensor) + 0.5)
            elif name.endswith("num_batches_tracked"):
                tensor.fill_(123)
    return backbone


def _sdclr_layout(backbone: Backbone) -> dict[str, torch.Tensor]:
    """The SDCLR code base's dual-BN checkpoint: DDP prefix, normalize buffers, dual-BN head under fc."""
    state = {f"module.{k}": v.clone() for k, v in backbone.state_dict().items() if not k.endswith("prune_mask")}
    state["module.normalize.mean"] = IMAGENET_MEAN.clone()
    state["module.normalize.std"] = IMAGENET_STD.clone()
    d = backbone.out_dim
    state["module.fc.fc1.weight"] = torch.randn(d, d)
    state["module.fc.fc1.bias"] = torch.randn(d)
    for i in (0, 1):
        state[f"module.fc.bn1.bn_list.{i}.weight"] = torch.randn(d)
        state[f"module.fc.bn1.bn_list.{i}.running_mean"] = torch.randn(d)
    state["module.fc.fc3.weight"] = torch.randn(128, d)
    state["module.fc1_prune.weight"] = torch.randn(d, d)
    return state


def _save(path: Path, state: dict[str, torch.Tensor], epoch: int = 2000) -> Path:
    optim = {"state": {}, "param_groups": [{"lr": 0.5, "momentum": 0.9, "params": [0, 1]}]}
    torch.save({"epoch": epoch, "state_dict": state, "optim": optim}, path)
    return path


def _no_masks(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.endswith("prune_mask")}


def test_sdclr_dual_bn_checkpoint_round_trips_into_a_dual_bn_backbone(tmp_path: Path) -> None:
    source = _randomised(dual_bn=True)
    path = _save(tmp_path / "model.pt", _sdclr_layout(source))
    target = build_backbone("resnet18_cifar", width=WIDTH, dual_bn=True)
    set_branch(target, PRUNED)
    info = load_published_backbone(path, target)
    expected = _no_masks(source.state_dict())
    loaded = _no_masks(target.state_dict())
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert info["epoch"] == 2000
    assert info["bn_copied_to_pruned"] is False
    assert "module.fc.fc1.weight" in info["dropped_keys"] and "module.fc1_prune.weight" in info["dropped_keys"]
    assert "module.normalize.mean" in info["dropped_keys"]
    assert {m.branch for m in target.modules() if hasattr(m, "branch")} == {0}


def test_dense_bn_of_a_dual_checkpoint_goes_into_a_plain_backbone(tmp_path: Path) -> None:
    source = _randomised(dual_bn=True)
    path = _save(tmp_path / "model_1000.pt", _sdclr_layout(source))
    target = build_backbone("resnet18_cifar", width=WIDTH, dual_bn=False)
    for name, module in target.named_modules():
        if hasattr(module, "prune_mask"):
            module.prune_mask.zero_()
    info = load_published_backbone(path, target)

    src = source.state_dict()
    for key, value in target.state_dict().items():
        if key.endswith("prune_mask"):
            assert bool(value.all()), key  # masks reset to all ones: the dense network is evaluated
            continue
        module, _, leaf = key.rpartition(".")
        src_key = f"{module}.bn_list.0.{leaf}" if f"{module}.bn_list.0.{leaf}" in src else key
        assert torch.equal(value, src[src_key]), key
    assert "module.bn1.bn_list.1.weight" in info["dropped_keys"]
    assert "module.layer4.1.bn2.bn_list.1.running_var" in info["dropped_keys"]

    source.eval()
    target.eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(target(x), source(x), atol=1e-5)


def test_torchvision_style_names_load_into_plain_and_dual_backbones(tmp_path: Path) -> None:
    source = _randomised(dual_bn=False, seed=1)
    state = {
        k.replace("downsample.conv.", "downsample.0.").replace("downsample.bn.", "downsample.1."): v
        for k, v in source.state_dict().items()
        if not k.endswith("prune_mask")
    }
    state["fc.weight"] = torch.randn(10, source.out_dim)
    assert "layer2.0.downsample.0.weight" in state and "layer2.0.downsample.1.running_mean" in state
    path = _save(tmp_path / "tv.pt", state, epoch=5)

    plain = build_backbone("resnet18_cifar", width=WIDTH)
    info = load_published_backbone(path, plain)
    assert info["dropped_keys"] == ["fc.weight"] and info["epoch"] == 5
    expected = _no_masks(source.state_dict())
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in expected.items())

    dual = build_backbone("resnet18_cifar", width=WIDTH, dual_bn=True)
    info = load_published_backbone(path, dual)
    assert info["bn_copied_to_pruned"] is True
    loaded = dual.state_dict()
    for i in (0, 1):
        assert torch.equal(loaded[f"layer2.0.downsample.bn.bn_list.{i}.running_mean"],
                           expected["layer2.0.downsample.bn.running_mean"])
        assert torch.equal(loaded[f"bn1.bn_list.{i}.weight"], expected["bn1.weight"])


def test_single_bn_list_layout_of_the_reference(tmp_path: Path) -> None:
    """batch_norm_multiple without bn_names stores one BN directly as `<name>.bn_list.*`."""
    source = _randomised(dual_bn=False, seed=2)
    state = {}
    for k, v in source.state_dict().items():
        if k.endswith("prune_mask"):
            continue
        module, _, leaf = k.rpartition(".")
        is_bn = v.dim() == 1 or leaf == "num_batches_tracked"
        state[f"module.{module}.bn_list.{leaf}" if is_bn else f"module.{k}"] = v
    path = _save(tmp_path / "single.pt", state)
    target = build_backbone("resnet18_cifar", width=WIDTH)
    load_published_backbone(path, target)
    assert all(torch.equal(target.state_dict()[k], v) for k, v in _no_masks(source.state_dict()).items())


def test_missing_corrupt_and_foreign_files(tmp_path: Path) -> None:
    target = build_backbone("resnet18_cifar", width=WIDTH)
    with pytest.raises(CheckpointError, match="not found"):
        load_published_backbone(tmp_path / "absent.pt", target)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"this is not a torch checkpoint")
    with pytest.raises(CheckpointError, match="cannot read") as err:
        load_published_backbone(corrupt, target)
    assert "\n" not in str(err.value)
    bare = tmp_path / "bare.pt"
    torch.save(torch.zeros(3), bare)
    with pytest.raises(CheckpointError, match="state_dict"):
        load_published_backbone(bare, target)
    no_state = tmp_path / "no_state.pt"
    torch.save({"epoch": 3, "model": {}}, no_state)
    with pytest.raises(CheckpointError, match="state_dict"):
        load_published_backbone(no_state, target)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=0.5)}, unsafe)
    with pytest.raises(CheckpointError, match="cannot read") as err:
        load_published_backbone(unsafe, target)
    assert "argparse.Namespace" in str(err.value) and "\n" not in str(err.value)


def test_mismatched_keys_and_shapes_are_listed(tmp_path: Path) -> None:
    target = build_backbone("resnet18_cifar", width=WIDTH)
    state = _sdclr_layout(_randomised(dual_bn=True))
    del state["module.layer4.1.conv2.weight"]
    state["module.layer5.0.conv1.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        load_published_backbone(_save(tmp_path / "keys.pt", state), target)
    message = str(err.value)
    assert "\n" not in message
    assert re.search(r"missing \[layer4\.1\.conv2\.weight\]", message)
    assert re.search(r"unexpected \[layer5\.0\.conv1\.weight\]", message)

    wide = _sdclr_layout(_randomised(dual_bn=True, width=0.25))
    with pytest.raises(CheckpointError, match=r"shape \[.*conv1\.weight \(16, 3, 3, 3\)≠\(8, 3, 3, 3\)"):
        load_published_backbone(_save(tmp_path / "wide.pt", wide), target)
    assert bool(target.bn1.running_var.eq(1).all())  # nothing was written on failure


def test_other_input_normalisation_is_refused(tmp_path: Path) -> None:
    state = _sdclr_layout(_randomised(dual_bn=True))
    state["module.normalize.mean"] = torch.tensor([0.4914, 0.4822, 0.4465])
    with pytest.raises(CheckpointError, match="normalisation"):
        load_published_backbone(_save(tmp_path / "cifar_norm.pt", state), build_backbone("resnet18_cifar", width=WIDTH))
