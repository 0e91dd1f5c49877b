"""Model outputs for rows of uint8 images, in batches aligned to the row position: the computation shared by pool
scoring (`ltray.pools.scoring`, MAK's inference passes, docs/math/mak.md §2) and COLT's pool embedding during
training (`ltray.train.shard_embed`, colt.md §2).

For every image, keyed by its index and in eval mode without gradient:
- `feature`: the backbone feature f under the inference transform (ToTensor), as is;
- `projection`: the head output under the inference transform, L2-normalised (ẑ);
- `aug_RRR` for each augmented pass r < R: ẑ of one random SimCLR training view, drawn with
  `SimCLRViews.single_view(images, index, epoch=r, seed, view=0)`, so the view depends only on (seed, r, index).

The model always runs on full batches of `batch_size` rows aligned to the row position: rows at positions
[gB, (g+1)B) form batch g, each at slot position − gB, and missing rows are zero padding. Every row is computed
independently of the others (eval-mode BN, per-image augmentation), so a row's output is the same bits whichever
other rows share its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ltray.augment.batched import PRESETS, SimCLRViews
from ltray.errors import ConfigError, DataError
from ltray.eval.features import evaluating, module_device, to_float_nchw
from ltray.models.branch import DENSE, branch
from ltray.models.contrastive import ContrastiveModel

INDEX = "pool_index"
FEATURE = "feature"
PROJECTION = "projection"


def aug_column(pass_id: int) -> str:
    """The column of augmented pass `pass_id`."""
    return f"aug_{pass_id:03d}"


@dataclass(frozen=True)
class ScoringSpec:
    """What a scoring run computes: the inference pass (f and ẑ) and/or R augmented passes (ẑ of one training
    view each), with the augmentation seed and preset, on model batches of `batch_size` rows."""

    inference: bool = True
    aug_passes: int = 0
    seed: int = 0
    aug_preset: str = "sdclr"
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.aug_passes < 0:
            raise ConfigError(f"the number of augmented passes must be >= 0, got {self.aug_passes}")
        if not self.inference and self.aug_passes == 0:
            raise ConfigError("a scoring run needs the inference pass or at least one augmented pass")
        if self.aug_preset not in PRESETS:
            raise ConfigError(f"aug_preset must be one of {sorted(PRESETS)}, got {self.aug_preset!r}")
        if self.batch_size < 1:
            raise ConfigError(f"the scoring batch size must be >= 1, got {self.batch_size}")
        if self.seed < 0:
            raise ConfigError(f"the augmentation seed must be >= 0, got {self.seed}")

    @property
    def columns(self) -> list[str]:
        """The value columns, in output order."""
        plain = [FEATURE, PROJECTION] if self.inference else []
        return plain + [aug_column(r) for r in range(self.aug_passes)]


# ----- the computation ---------------------------------------------------------------------------------------------


def _forward(
    model: ContrastiveModel, images: torch.Tensor, index: torch.Tensor, spec: ScoringSpec, views: SimCLRViews | None
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad(), evaluating(model), branch(model, DENSE):
        if spec.inference:
            features = model.backbone(to_float_nchw(images))
            out[FEATURE] = features.float()
            out[PROJECTION] = F.normalize(model.head(features).float(), dim=1)
        for pass_id in range(spec.aug_passes):
            assert views is not None
            view = views.single_view(images, index, epoch=pass_id, seed=spec.seed, view=0)
            out[aug_column(pass_id)] = F.normalize(model.head(model.backbone(view)).float(), dim=1)
    return out


def score_rows(
    model: ContrastiveModel,
    images: np.ndarray,
    index: np.ndarray,
    position: np.ndarray,
    spec: ScoringSpec,
    views: SimCLRViews | None = None,
) -> dict[str, np.ndarray]:
    """The spec's columns for some rows: uint8 images [n, H, W, 3], their dataset `index` (the augmentation key)
    and `position` (the batch alignment key, see the module docstring). Returns float32 [n, d] per column, rows in
    input order. Runs on the model's device."""
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise DataError(f"scoring expects uint8 images [n, H, W, 3], got {images.dtype} {images.shape}")
    if index.shape != (images.shape[0],) or position.shape != (images.shape[0],):
        raise DataError(f"{images.shape[0]} images need as many indices and positions")
    if spec.aug_passes and views is None:
        views = SimCLRViews(int(images.shape[1]), preset=spec.aug_preset)
    device = module_device(model)
    size = spec.batch_size
    groups = position // size
    results: dict[str, np.ndarray] = {}
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        slots = position[members] - group * size
        padded = np.zeros((size, *images.shape[1:]), dtype=np.uint8)
        padded[slots] = images[members]
        padded_index = np.zeros(size, dtype=np.int64)
        padded_index[slots] = index[members]
        batch = torch.from_numpy(padded).to(device)
        keys = torch.from_numpy(padded_index).to(device)
        for name, values in _forward(model, batch, keys, spec, views).items():
            chosen = values[torch.from_numpy(slots).to(device)].cpu().numpy()
            if name not in results:
                results[name] = np.empty((images.shape[0], chosen.shape[1]), dtype=np.float32)
            results[name][members] = chosen
    return results
