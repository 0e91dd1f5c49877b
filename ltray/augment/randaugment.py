"""BCL's weight-driven RandAugment_prob, batched (Zhou et al., "Contrastive Learning with Boosted Memorization",
ICML 2022; docs/math/bcl.md §4-§5).

Images are float [B, 3, H, W] in [0, 1]; each op acts on the samples that drew it, in one batched call. The ops
reproduce PIL's uint8 semantics, the reference's image type:
- the affine ops sample nearest-neighbour with PIL's conventions (pixel centres at +0.5; 16.16 fixed-point
  coordinates for shear and rotation, floating point for pure translations), filling uncovered pixels with black;
- AutoContrast, Equalize and Posterize work on the 8-bit levels round(255·x) and return levels / 255; Solarize
  compares the 8-bit level with its threshold and inverts the float value;
- Contrast, Color, Brightness and Sharpness blend with PIL's degenerate images (the mean grey level rounded to an
  8-bit level, the luma image, black, and the 3×3 SMOOTH filter with the one-pixel border kept) in float, without
  PIL's 8-bit rounding of intermediates;
- Cutout fills the columns x0 … x0 + ⌊s⌋, x0 = ⌊max(0, cx − s/2)⌋ (rows alike), s = v·W, clipped to the image,
  with (125, 123, 114)/255: the reference draws a PIL rectangle, which includes both corners, so a side of s
  covers ⌊s⌋ + 1 pixels. The centre (cx, cy) is uniform over the image, as docs/math/bcl.md §4 says (the reference's
  `np.random.uniform(w)` actually draws from (1, w]).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch.utils.data import Sampler

from ltray.augment import rng
from ltray.augment.batched import rgb_to_grayscale
from ltray.errors import ConfigError

MAX_MAGNITUDE = 30.0
CUTOUT_FILL = (125.0 / 255.0, 123.0 / 255.0, 114.0 / 255.0)

# Random slots of RandAugment draws (view-specific), per drawn op k: SLOT_BASE + OP_SLOTS·k + column.
SLOT_BASE = 64
OP_SLOTS = 8
DRAW_OP, DRAW_APPLY, DRAW_SIGN, DRAW_CENTRE_X, DRAW_CENTRE_Y = range(5)
DRAW_COLUMNS = 5
SLOT_SHARED_U = 0  # BCL-D's u, drawn with view id rng.SHARED_VIEW so both views share it


class OpSpec(NamedTuple):
    """One RandAugment op: name, value range [low, high] and whether its value's sign is flipped with prob ½."""

    name: str
    low: float
    high: float
    signed: bool


OPS: tuple[OpSpec, ...] = (
    OpSpec("ShearX", 0.0, 0.6, True),
    OpSpec("ShearY", 0.0, 0.6, True),
    OpSpec("TranslateX", 0.0, 0.66, True),
    OpSpec("TranslateY", 0.0, 0.66, True),
    OpSpec("Rotate", 0.0, 60.0, True),
    OpSpec("AutoContrast", 0.0, 1.0, False),
    OpSpec("Invert", 0.0, 1.0, False),
    OpSpec("Equalize", 0.0, 1.0, False),
    OpSpec("Solarize", 0.0, 110.0, False),
    OpSpec("Posterize", 4.0, 8.0, False),
    OpSpec("Contrast", 0.1, 1.9, False),
    OpSpec("Color", 0.1, 1.9, False),
    OpSpec("Brightness", 0.1, 1.9, False),
    OpSpec("Sharpness", 0.1, 1.9, False),
    OpSpec("Cutout", 0.0, 0.4, False),
)
OP_INDEX = {spec.name: i for i, spec in enumerate(OPS)}
AFFINE_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


def _levels(images: torch.Tensor) -> torch.Tensor:
    """The 8-bit levels round(255·x) as int32."""
    return torch.round(images * 255.0).to(torch.int32)


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(device=like.device, dtype=like.dtype).view(-1, 1, 1, 1)


def affine_coefficients(name: str, value: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """PIL AFFINE data (a, b, c, d, e, f), float64 [B, 6]: output pixel (x, y) samples input (ax+by+c, dx+ey+f).

    `value` is the signed op value: shear factor, translation as a fraction of the size, or degrees
    counter-clockwise about the image centre (PIL's Image.rotate).
    """
    v = value.to(torch.float64)
    one, zero = torch.ones_like(v), torch.zeros_like(v)
    if name == "ShearX":
        rows = (one, v, zero, zero, one, zero)
    elif name == "ShearY":
        rows = (one, zero, zero, v, one, zero)
    elif name == "TranslateX":
        rows = (one, zero, v * width, zero, one, zero)
    elif name == "TranslateY":
        rows = (one, zero, zero, zero, one, v * height)
    elif name == "Rotate":
        phi = -torch.deg2rad(v)
        a, b, d, e = torch.cos(phi), torch.sin(phi), -torch.sin(phi), torch.cos(phi)
        cx, cy = width / 2.0, height / 2.0
        rows = (a, b, cx - a * cx - b * cy, d, e, cy - d * cx - e * cy)
    else:
        raise ConfigError(f"not an affine RandAugment op: {name!r}")
    return torch.stack(rows, dim=1)


def affine_nearest(images: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """PIL's nearest-neighbour AFFINE transform of each image with its own coefficients [B, 6], black fill."""
    batch, channels, height, width = images.shape
    device = images.device
    coef = coefficients.to(device=device, dtype=torch.float64)
    a, b, c, d, e, f = coef.unbind(dim=1)
    xs = torch.arange(width, dtype=torch.float64, device=device).view(1, 1, width)
    ys = torch.arange(height, dtype=torch.float64, device=device).view(1, height, 1)

    def per(v: torch.Tensor) -> torch.Tensor:
        return v.view(-1, 1, 1)

    # Pure scale/translation: floating point from pixel centres.
    x_float = torch.floor(per(c + a * 0.5) + per(a) * xs).to(torch.int64).expand(batch, height, width)
    y_float = torch.floor(per(f + e * 0.5) + per(e) * ys).to(torch.int64).expand(batch, height, width)

    # General case: 16.16 fixed point, coefficients rounded to 1/65536, floor via arithmetic shift.
    def fix(v: torch.Tensor) -> torch.Tensor:
        return torch.floor(v * 65536.0 + 0.5).to(torch.int64)

    xs_i, ys_i = xs.to(torch.int64), ys.to(torch.int64)
    x_fixed = (per(fix(c + a * 0.5 + b * 0.5)) + per(fix(a)) * xs_i + per(fix(b)) * ys_i) >> 16
    y_fixed = (per(fix(f + d * 0.5 + e * 0.5)) + per(fix(d)) * xs_i + per(fix(e)) * ys_i) >> 16

    scale_only = per((b == 0) & (d == 0))
    x_in = torch.where(scale_only, x_float, x_fixed)
    y_in = torch.where(scale_only, y_float, y_fixed)
    valid = (x_in >= 0) & (x_in < width) & (y_in >= 0) & (y_in < height)
    flat = (y_in.clamp(0, height - 1) * width + x_in.clamp(0, width - 1)).view(batch, 1, height * width)
    gathered = images.reshape(batch, channels, height * width).gather(2, flat.expand(-1, channels, -1))
    return gathered.view(batch, channels, height, width) * valid[:, None].to(images.dtype)


def auto_contrast(images: torch.Tensor) -> torch.Tensor:
    """PIL ImageOps.autocontrast (cutoff 0): per channel, map [lo, hi] to [0, 255], ⌊level·s − lo·s⌋, s = 255/(hi−lo)."""
    levels = _levels(images).to(torch.float64)
    lo = levels.amin(dim=(2, 3), keepdim=True)
    hi = levels.amax(dim=(2, 3), keepdim=True)
    spread = hi > lo
    # tensor / tensor: `255.0 / t` would multiply by a rounded reciprocal and can land one level low
    scale = torch.full_like(hi, 255.0) / torch.where(spread, hi - lo, torch.ones_like(hi))
    mapped = torch.floor(levels * scale + (-lo * scale)).clamp(0.0, 255.0)
    return torch.where(spread, (mapped / 255.0).to(images.dtype), images)


def invert(images: torch.Tensor) -> torch.Tensor:
    """1 − x (PIL ImageOps.invert)."""
    return 1.0 - images


def equalize(images: torch.Tensor) -> torch.Tensor:
    """PIL ImageOps.equalize on the 8-bit levels, per channel."""
    levels = _levels(images).to(torch.uint8)
    return TF.equalize(levels).to(images.dtype) / 255.0


def solarize(images: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Invert the pixels whose 8-bit level is at or above `threshold` (per sample, 0–255 scale)."""
    above = _levels(images).to(images.dtype) >= _per_sample(threshold, images)
    return torch.where(above, 1.0 - images, images)


def posterize(images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the top `bits` (per sample, int in 1..8) bits of every 8-bit level."""
    keep = bits.to(device=images.device, dtype=torch.int32).clamp(1, 8)
    mask = (256 - torch.pow(2, 8 - keep)).view(-1, 1, 1, 1)
    return (_levels(images) & mask).to(images.dtype) / 255.0


def _blend(degenerate: torch.Tensor, images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL Image.blend(degenerate, image, factor), clamped to [0, 1]."""
    f = _per_sample(factor, images)
    return (degenerate + f * (images - degenerate)).clamp(0.0, 1.0)


def contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance.Contrast: blend with the mean luma, rounded to an 8-bit level."""
    mean = rgb_to_grayscale(images).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(torch.floor(mean * 255.0 + 0.5) / 255.0, images, factor)


def color(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance.Color: blend with the luma image."""
    return _blend(rgb_to_grayscale(images).expand_as(images), images, factor)


def brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance.Brightness: blend with black."""
    return _blend(torch.zeros_like(images), images, factor)


def sharpness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance.Sharpness: blend with the SMOOTH-filtered image (kernel [[1,1,1],[1,5,1],[1,1,1]]/13,
    border pixels unchanged)."""
    channels = images.shape[1]
    kernel = torch.ones(3, 3, dtype=images.dtype, device=images.device)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13.0).expand(channels, 1, 3, 3)
    smooth = images.clone()
    if images.shape[2] > 2 and images.shape[3] > 2:
        smooth[:, :, 1:-1, 1:-1] = F.conv2d(images, kernel, groups=channels)
    return _blend(smooth, images, factor)


def cutout(images: torch.Tensor, side: torch.Tensor, centre_x: torch.Tensor, centre_y: torch.Tensor) -> torch.Tensor:
    """Cutout with side s = `side`·W pixels around (centre_x·W, centre_y·H), centres given as U[0,1) draws.

    As the reference's PIL rectangle, whose corners are both included: x0 = ⌊max(0, cx − s/2)⌋ and the columns
    x0 … x0 + ⌊s⌋ (rows alike) are filled, clipped to the image; s = 0 fills nothing.
    """
    _, _, height, width = images.shape
    device = images.device
    s = side.to(device=device, dtype=torch.float64) * width
    x0 = torch.floor((centre_x.to(device=device, dtype=torch.float64) * width - s / 2.0).clamp_min(0.0))
    y0 = torch.floor((centre_y.to(device=device, dtype=torch.float64) * height - s / 2.0).clamp_min(0.0))
    extent = torch.where(s > 0, torch.floor(s), torch.full_like(s, -1.0)).view(-1, 1, 1)
    cols = torch.arange(width, dtype=torch.float64, device=device).view(1, 1, width) - x0.view(-1, 1, 1)
    rows = torch.arange(height, dtype=torch.float64, device=device).view(1, height, 1) - y0.view(-1, 1, 1)
    inside = (cols >= 0) & (cols <= extent) & (rows >= 0) & (rows <= extent)
    fill = torch.tensor(CUTOUT_FILL, dtype=images.dtype, device=device).view(1, 3, 1, 1)
    return torch.where(inside[:, None], fill, images)


def op_values(op_id: torch.Tensor, magnitude: torch.Tensor, u_sign: torch.Tensor) -> torch.Tensor:
    """v = (m/30)(max − min) + min for each sample's op, negated when the op is ± and u_sign < ½; float64 [B]."""
    low = torch.tensor([s.low for s in OPS], dtype=torch.float64, device=op_id.device)[op_id]
    high = torch.tensor([s.high for s in OPS], dtype=torch.float64, device=op_id.device)[op_id]
    signed = torch.tensor([s.signed for s in OPS], dtype=torch.bool, device=op_id.device)[op_id]
    v = magnitude.to(torch.float64) / MAX_MAGNITUDE * (high - low) + low
    return torch.where(signed & (u_sign < 0.5), -v, v)


_FIXED_OPS = {"AutoContrast": auto_contrast, "Invert": invert, "Equalize": equalize}
_VALUE_OPS = {"Solarize": solarize, "Contrast": contrast, "Color": color, "Brightness": brightness, "Sharpness": sharpness}


def apply_op(name: str, images: torch.Tensor, value: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """Apply the op `name` with per-sample signed values [B] (`draws` [B, 5] supplies Cutout's centre)."""
    if name in AFFINE_OPS:
        return affine_nearest(images, affine_coefficients(name, value, images.shape[2], images.shape[3]))
    if name in _FIXED_OPS:
        return _FIXED_OPS[name](images)
    if name in _VALUE_OPS:
        return _VALUE_OPS[name](images, value)
    if name == "Posterize":
        return posterize(images, torch.floor(value).to(torch.int32))
    if name == "Cutout":
        return cutout(images, value, draws[:, DRAW_CENTRE_X], draws[:, DRAW_CENTRE_Y])
    raise ConfigError(f"unknown RandAugment op {name!r}")


def rand_augment_prob(
    images: torch.Tensor, n_ops: int, magnitude: torch.Tensor, prob: torch.Tensor, draws: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RandAugment_prob(n, m, p) on float [B, 3, H, W] images (docs/math/bcl.md §4).

    draws: U[0,1) of shape [B, n_ops, 5] with columns (op choice, apply, sign, cutout centre x, centre y). The k-th
    op of a sample is OPS[⌊15·u⌋], chosen with replacement, and applied iff its apply draw < p. Returns the images,
    the op ids [B, n] and the applied flags [B, n].
    """
    device = images.device
    magnitude = magnitude.to(device=device, dtype=torch.float32)
    prob = prob.to(device=device, dtype=torch.float32)
    draws = draws.to(device)
    op_ids = torch.floor(draws[:, :, DRAW_OP] * len(OPS)).to(torch.int64).clamp(max=len(OPS) - 1)
    applied = draws[:, :, DRAW_APPLY] < prob[:, None]
    affine_ids = torch.tensor([OP_INDEX[n] for n in AFFINE_OPS], device=device)
    out = images
    for k in range(n_ops):
        values = op_values(op_ids[:, k], magnitude, draws[:, k, DRAW_SIGN])
        is_affine = torch.isin(op_ids[:, k], affine_ids)
        selected = torch.nonzero(applied[:, k] & is_affine).squeeze(1)
        if selected.numel() > 0:
            coefficients = torch.zeros(selected.numel(), 6, dtype=torch.float64, device=device)
            for name in AFFINE_OPS:
                mine = op_ids[selected, k] == OP_INDEX[name]
                if bool(mine.any()):
                    coefficients[mine] = affine_coefficients(
                        name, values[selected][mine], images.shape[2], images.shape[3]
                    )
            out = out.clone() if out is images else out
            out.index_copy_(0, selected, affine_nearest(out.index_select(0, selected), coefficients))
        for op_id, spec in enumerate(OPS):
            if spec.name in AFFINE_OPS:
                continue
            selected = torch.nonzero(applied[:, k] & (op_ids[:, k] == op_id)).squeeze(1)
            if selected.numel() > 0:
                out = out.clone() if out is images else out
                subset = out.index_select(0, selected)
                out.index_copy_(0, selected, apply_op(spec.name, subset, values[selected], draws[selected, k]))
    return out, op_ids, applied


def bcl_params(
    weights: torch.Tensor,
    rand_k: int,
    strength: float = MAX_MAGNITUDE,
    u: torch.Tensor | None = None,
    variant: str = "cifar",
) -> tuple[int, torch.Tensor, torch.Tensor]:
    """BCL's mapping from memorisation weight w to RandAugment_prob(n, m, p) (docs/math/bcl.md §4).

    - cifar, k = 1 (BCL-I): n = 1, m = 10 + (M − 10)·w, p = w.
    - cifar, k ≥ 2 (BCL-D): n = k, m = 5 + (M − 5)·w·u, p = w, with u ~ U[0,1) drawn once per item fetch.
    - imagenet (GH port): n = 2, m = M·w·u, p = w.
    M = `strength`. Returns (n, m [B], p [B]).
    """
    if isinstance(rand_k, bool) or not isinstance(rand_k, int) or rand_k < 1:
        raise ConfigError(f"bcl_rand_k must be an int >= 1, got {rand_k!r}")
    if not 0.0 <= strength <= MAX_MAGNITUDE:
        raise ConfigError(f"rand_strength must be in [0, 30], got {strength}")
    w = weights.to(torch.float32)
    if variant == "imagenet" or rand_k >= 2:
        if u is None:
            raise ConfigError("BCL with rand_k >= 2 or the imagenet variant needs the per-item draw u")
        u = u.to(device=w.device, dtype=torch.float32)
    if variant == "imagenet":
        return 2, strength * w * cast(torch.Tensor, u), w  # u is not None: checked above
    if variant != "cifar":
        raise ConfigError(f"BCL augmentation variant must be 'cifar' or 'imagenet', got {variant!r}")
    if rand_k == 1:
        return 1, 10.0 + (strength - 10.0) * w, w
    return rand_k, 5.0 + (strength - 5.0) * w * cast(torch.Tensor, u), w  # rand_k >= 2: u checked above


class StaleWeightsError(RuntimeError):
    """A batch was augmented with BCL weights of the wrong version (a persistent worker kept an old copy)."""


def check_weights_version(used: int, expected: int) -> None:
    """Raise StaleWeightsError unless the batch used weights version `expected` (= the previous epoch)."""
    if used != expected:
        raise StaleWeightsError(
            f"BCL weights version {used} used where version {expected} was expected: the new weights were not pushed"
        )


class BCLWeights:
    """An immutable, versioned BCL weight vector w ∈ [0, 1]^N keyed by dataset index (docs/math/bcl.md §5).

    `version` is the (1-based) epoch whose end produced it; version 0 is all zeros and drives epoch 1.
    """

    def __init__(self, values: torch.Tensor, version: int) -> None:
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise ConfigError(f"BCL weights version must be an int >= 0, got {version!r}")
        if values.dim() != 1:
            raise ConfigError(f"BCL weights must be a 1-d vector, got shape {tuple(values.shape)}")
        v = values.detach().to(torch.float32).clone()
        if not bool(torch.isfinite(v).all()) or bool(((v < 0) | (v > 1)).any()):
            raise ConfigError("BCL weights must be finite and in [0, 1]")
        self._values = v
        self._version = version

    @classmethod
    def initial(cls, size: int) -> BCLWeights:
        """Version 0: all zeros, so no RandAugment op is applied in epoch 1."""
        return cls(torch.zeros(size), 0)

    @property
    def version(self) -> int:
        return self._version

    @property
    def values(self) -> torch.Tensor:
        """A copy of the weight vector."""
        return self._values.clone()

    def __len__(self) -> int:
        return self._values.shape[0]

    def to(self, device: torch.device | str) -> BCLWeights:
        moved = BCLWeights.__new__(BCLWeights)
        moved._values = self._values.to(device)
        moved._version = self._version
        return moved

    def lookup(self, index: torch.Tensor) -> torch.Tensor:
        """w[index], on index's device."""
        if bool(((index < 0) | (index >= len(self))).any()):
            raise ConfigError(f"dataset index out of range for BCL weights of length {len(self)}")
        return self._values[index.to(self._values.device)].to(index.device)


class RandAugmentProb:
    """BCL's RandAugment_prob as a SimCLRViews `extra` hook: per item, (n, m, p) from its weight (`bcl_params`).

    Swap the weights with `set_weights` at the end of every epoch; `last_version` is the version used by the
    latest call, for `check_weights_version`. BCL-D's u is drawn from (seed, epoch, index) with the shared view
    id, so both views of an item use the same u.
    """

    def __init__(
        self, weights: BCLWeights, rand_k: int = 1, strength: float = MAX_MAGNITUDE, variant: str = "cifar"
    ) -> None:
        bcl_params(torch.zeros(1), rand_k, strength, torch.zeros(1), variant)  # validates the options
        self.weights = weights
        self.rand_k = rand_k
        self.strength = strength
        self.variant = variant
        self.last_version: int | None = None
        self.last_ops: tuple[torch.Tensor, torch.Tensor] | None = None

    def set_weights(self, weights: BCLWeights) -> None:
        self.weights = weights

    def params(
        self, index: torch.Tensor, epoch: int, seed: int, weights: BCLWeights | None = None
    ) -> tuple[int, torch.Tensor, torch.Tensor]:
        """(n, m [B], p [B]) of the items `index` in this epoch (with `weights`, default the current ones).

        They do not depend on the view, so both views of an item share them.
        """
        w = (self.weights if weights is None else weights).lookup(index)
        u = rng.uniform(seed, epoch, index, rng.SHARED_VIEW, SLOT_SHARED_U)
        return bcl_params(w, self.rand_k, self.strength, u, self.variant)

    def __call__(
        self, images: torch.Tensor, index: torch.Tensor, epoch: int, view: int, seed: int
    ) -> torch.Tensor:
        weights = self.weights
        index = index.to(device=images.device, dtype=torch.int64)
        n_ops, magnitude, prob = self.params(index, epoch, seed, weights)
        columns = torch.arange(DRAW_COLUMNS, device=index.device)
        slots = SLOT_BASE + OP_SLOTS * torch.arange(n_ops, device=index.device)[:, None] + columns  # [n, 5]
        draws = rng.uniform(seed, epoch, index[:, None, None], view, slots[None])  # [B, n, 5]
        out, op_ids, applied = rand_augment_prob(images, n_ops, magnitude, prob, draws)
        self.last_version = weights.version
        self.last_ops = (op_ids, applied)
        return out


class ItemRequest(NamedTuple):
    """What a loader worker needs to augment one item: its index, its BCL weight, and the weights' version."""

    index: int  # type: ignore[assignment]  # the field shadows tuple.index, which typeshed types as a method
    weight: float
    version: int


class WeightedRequestSampler(Sampler[ItemRequest]):
    """Wraps an index sampler so that every request carries the item's current BCL weight and version.

    The weights travel with the requests, from the main process, so persistent loader workers never hold a copy
    that could go stale. `publish` the weights of epoch e before creating the loader iterator of epoch e + 1
    (the iterator starts prefetching at once); each iteration reads the weights published at its start.
    """

    def __init__(self, sampler: Sampler[int], weights: BCLWeights) -> None:
        self.sampler = sampler
        self._weights = weights

    def publish(self, weights: BCLWeights) -> None:
        self._weights = weights

    @property
    def version(self) -> int:
        return self._weights.version

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[ItemRequest]:
        weights = self._weights
        values = weights.values.tolist()
        for index in self.sampler:
            yield ItemRequest(int(index), values[int(index)], weights.version)

