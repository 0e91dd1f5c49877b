from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from ltray.errors import ConfigError, DataError
from ltray.eval.features import evaluating, extract_features, to_float_nchw

ImageMaker = Callable[..., tuple[np.ndarray, np.ndarray]]


def test_to_tensor_layout_and_scale() -> None:
    images = np.arange(2 * 4 * 5 * 3).reshape(2, 4, 5, 3).astype(np.uint8)
    tensor = to_float_nchw(images)
    assert tensor.shape == (2, 3, 4, 5) and tensor.dtype == torch.float32
    for n, c, h, w in [(0, 0, 0, 0), (1, 2, 3, 4), (0, 1, 2, 3)]:
        assert tensor[n, c, h, w].item() == pytest.approx(images[n, h, w, c] / 255.0)
    assert to_float_nchw(np.full((1, 2, 2, 3), 255, dtype=np.uint8)).max().item() == 1.0
    floats = torch.rand(2, 3, 4, 4)
    assert torch.equal(to_float_nchw(floats), floats)


def test_to_tensor_rejects_bad_images() -> None:
    with pytest.raises(DataError):
        to_float_nchw(np.zeros((2, 4, 4), dtype=np.uint8))
    with pytest.raises(DataError):
        to_float_nchw(np.zeros((2, 3, 4, 4), dtype=np.uint8))
    with pytest.raises(DataError):
        to_float_nchw(torch.full((1, 3, 2, 2), 2.0))
    with pytest.raises(DataError):
        to_float_nchw(torch.zeros(1, 3, 2, 2, dtype=torch.int32))


def test_extract_features_eval_mode_no_grad_and_modes_restored(
    tiny_backbone: torch.nn.Module, make_images: ImageMaker
) -> None:
    images, _ = make_images(per_class=3, size=8)
    tiny_backbone.train()
    tiny_backbone.conv.eval()
    before = {name: tensor.clone() for name, tensor in tiny_backbone.state_dict().items()}
    features = extract_features(tiny_backbone, images, batch_size=4)
    assert features.shape == (9, 8) and not features.requires_grad
    assert tiny_backbone.training and tiny_backbone.bn.training and not tiny_backbone.conv.training
    for name, tensor in tiny_backbone.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    with evaluating(tiny_backbone), torch.no_grad():
        expected = tiny_backbone(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0)
    torch.testing.assert_close(features, expected)
    torch.testing.assert_close(extract_features(tiny_backbone, images, batch_size=9), features)
    batches = [to_float_nchw(images[:5]), to_float_nchw(images[5:])]
    torch.testing.assert_close(extract_features(tiny_backbone, batches), features)


def test_extract_features_rejects_bad_backbone_and_input(
    tiny_backbone: torch.nn.Module, make_images: ImageMaker
) -> None:
    images, _ = make_images(per_class=1, size=8)
    with pytest.raises(ConfigError):
        extract_features(torch.nn.Conv2d(3, 2, 1), images)
    with pytest.raises(ConfigError):
        extract_features(tiny_backbone, images, batch_size=0)
    with pytest.raises(DataError):
        extract_features(tiny_backbone, images[:0])
