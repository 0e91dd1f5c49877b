"""Batched tensor augmentation for in-memory data sets (docs/math/data_and_eval.md §4, §8; focal_lotar.md §2.4).

The SimCLR view pipeline runs on a whole uint8 batch at once, on the batch's device:
RandomResizedCrop → horizontal flip → ColorJitter with p 0.8 → grayscale with p 0.2 → optional extra hook (BCL's
RandAugment_prob) → optional CIFAR Normalize (preset `gh`). Every random parameter comes from
`ltray.augment.rng.uniform(seed, epoch, index, view, slot)`, so a view depends only on the image and those keys.

Semantics follow torchvision's transforms:
- RandomResizedCrop samples its box with torchvision's algorithm (ten area / log-ratio attempts, the first one that
  fits wins, else the central crop clamped to the ratio range), all attempts drawn at once.
- Crop + resize is one separable resampling per axis, written as two batched matrix products. The weights are those
  of PIL's resampling filter, which torch's `interpolate(..., antialias=True)` also uses: bicubic with a = −0.5
  (support 2) or the triangle filter (support 1), scaled by the down-sampling factor when shrinking (so
  down-sampling is antialiased), taps restricted to the crop (edge pixels carry the renormalised weight). The
  result equals torchvision's tensor `resized_crop(..., antialias=True)` up to float rounding, and PIL's uint8
  `resized_crop` up to PIL's 8-bit intermediate rounding. It is then clamped to [0, 1], as a uint8 image would be.
- ColorJitter(0.4, 0.4, 0.4, 0.1) draws brightness, contrast and saturation factors from U[0.6, 1.4] and the hue
  shift from U[−0.1, 0.1], and applies the four adjustments in a random order drawn per sample, as torchvision
  does per call. Each adjustment is torchvision's float-tensor one (blend and clamp; hue through HSV).
- Grayscale uses the luma weights (0.2989, 0.587, 0.114) and keeps three channels.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Protocol

import torch

from ltray.augment import rng
from ltray.errors import ConfigError, DataError

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
LUMA = (0.2989, 0.587, 0.114)

CROP_ATTEMPTS = 10
RATIO = (3.0 / 4.0, 4.0 / 3.0)
JITTER_PROB = 0.8
JITTER_STRENGTH = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
GRAYSCALE_PROB = 0.2
FLIP_PROB = 0.5

# Random slots of one view (rng.uniform's `slot` argument).
SLOT_AREA = 0  # 10 slots
SLOT_RATIO = SLOT_AREA + CROP_ATTEMPTS  # 10 slots
SLOT_TOP = SLOT_RATIO + CROP_ATTEMPTS
SLOT_LEFT = SLOT_TOP + 1
SLOT_FLIP = SLOT_LEFT + 1
SLOT_JITTER = SLOT_FLIP + 1
SLOT_FACTORS = SLOT_JITTER + 1  # 4 slots
SLOT_ORDER = SLOT_FACTORS + 4  # 4 slots
SLOT_GRAYSCALE = SLOT_ORDER + 4
VIEW_SLOTS = SLOT_GRAYSCALE + 1


@dataclass(frozen=True)
class AugPreset:
    """One `aug_preset`: RandomResizedCrop scale range, interpolation, and whether CIFAR Normalize ends the view."""

    scale: tuple[float, float]
    interpolation: str
    cifar_normalize: bool


PRESETS: dict[str, AugPreset] = {
    "sdclr": AugPreset(scale=(0.1, 1.0), interpolation="bicubic", cifar_normalize=False),
    "gh": AugPreset(scale=(0.1, 1.0), interpolation="bilinear", cifar_normalize=True),
    "lotar": AugPreset(scale=(0.08, 1.0), interpolation="bilinear", cifar_normalize=False),
}


class ViewHook(Protocol):
    """An extra per-view step on float [B, 3, H, W] images in [0, 1], applied after grayscale (BCL's RandAugment)."""

    def __call__(
        self, images: torch.Tensor, index: torch.Tensor, epoch: int, view: int, seed: int
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class ViewParams:
    """The random parameters of one view, one entry per sample."""

    top: torch.Tensor  # int64 [B], crop box in input pixels
    left: torch.Tensor  # int64 [B]
    height: torch.Tensor  # int64 [B]
    width: torch.Tensor  # int64 [B]
    flip: torch.Tensor  # bool [B]
    jitter: torch.Tensor  # bool [B], whether ColorJitter is applied
    factors: torch.Tensor  # float32 [B, 4]: brightness, contrast, saturation factors and hue shift
    order: torch.Tensor  # int64 [B, 4]: jitter adjustments (0..3 as in `factors`) in the order applied
    grayscale: torch.Tensor  # bool [B]


def to_float_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] or [B, 3, H, W] (channels-first wins if both fit) → float32 [B, 3, H, W] in [0, 1].

    Floating-point input is taken to be in [0, 1] already.
    """
    if images.dim() != 4:
        raise DataError(f"images must be a 4-d batch [B,H,W,3] or [B,3,H,W], got shape {tuple(images.shape)}")
    if images.shape[1] == 3:
        chw = images
    elif images.shape[-1] == 3:
        chw = images.permute(0, 3, 1, 2)
    else:
        raise DataError(f"images must have 3 channels first or last, got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return chw.contiguous().to(torch.float32).div_(255.0)
    if images.dtype.is_floating_point:
        return chw.to(torch.float32).contiguous()
    raise DataError(f"images must be uint8 or floating point, got {images.dtype}")


def _bicubic_filter(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = −0.5 (PIL's and torch's antialiased bicubic)."""
    a = -0.5
    x = x.abs()
    inner = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    outer = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return torch.where(x < 1.0, inner, torch.where(x < 2.0, outer, torch.zeros_like(x)))


def _triangle_filter(x: torch.Tensor) -> torch.Tensor:
    return (1.0 - x.abs()).clamp_min(0.0)


# The kernels vanish beyond their support (2 and 1 input pixels at scale 1), so no explicit tap window is needed.
_FILTERS = {"bicubic": _bicubic_filter, "bilinear": _triangle_filter}


@functools.lru_cache(maxsize=32)
def _resize_table(in_size: int, out_size: int, interpolation: str, device: str) -> torch.Tensor:
    """Resampling weights for every span length: [in_size + 1, out_size, in_size], entry [L, r, t] for t < L.

    Output pixel r of a span of L input pixels has its centre at c = (r + 0.5)·L/out_size (span coordinates); input
    pixel t gets kernel((t + 0.5 − c)/max(L/out_size, 1)), normalised over the span.
    """
    kernel = _FILTERS[interpolation]
    lengths = torch.arange(in_size + 1, dtype=torch.float64).clamp_min(1.0)
    scale = lengths / out_size
    filter_scale = scale.clamp_min(1.0)
    centre = (torch.arange(out_size, dtype=torch.float64) + 0.5)[None, :] * scale[:, None]  # [L, out]
    taps = torch.arange(in_size, dtype=torch.float64)
    distance = (taps[None, None, :] + 0.5 - centre[:, :, None]) / filter_scale[:, None, None]
    inside = taps[None, None, :] < lengths[:, None, None]
    weights = kernel(distance) * inside
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights.to(dtype=torch.float32, device=device)


def resize_weights(
    start: torch.Tensor,
    length: torch.Tensor,
    in_size: int,
    out_size: int,
    interpolation: str,
    reverse: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample resampling matrices [B, out_size, in_size] mapping the span [start, start+length) to out_size.

    Row r holds the normalised filter weights of output pixel r over the input pixels of the span (zero
    elsewhere); see the module docstring. Where `reverse` (bool [B]) is set the output order is mirrored.
    """
    if interpolation not in _FILTERS:
        raise ConfigError(f"interpolation must be one of {sorted(_FILTERS)}, got {interpolation!r}")
    table = _resize_table(in_size, out_size, interpolation, str(start.device))
    positions = torch.arange(out_size, device=start.device).expand(start.shape[0], out_size)
    if reverse is not None:
        positions = torch.where(reverse[:, None], out_size - 1 - positions, positions)
    rows = table[length[:, None], positions]  # [B, out, in], indexed by span position
    offset = torch.arange(in_size, device=start.device)[None, :] - start[:, None]  # [B, in]
    inside = (offset >= 0) & (offset < length[:, None])
    gathered = rows.gather(2, offset.clamp(0, in_size - 1)[:, None, :].expand(-1, out_size, -1))
    return gathered * inside[:, None, :]


def crop_resize(
    images: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    height: torch.Tensor,
    width: torch.Tensor,
    size: int,
    interpolation: str,
    flip: torch.Tensor | None = None,
) -> torch.Tensor:
    """Crop box (top, left, height, width) of every float image [B, C, H, W] and resize it to size × size.

    `flip` (bool [B]) mirrors the result horizontally at no extra cost. The output is not clamped.
    """
    batch, channels, in_h, in_w = images.shape
    rows = resize_weights(top, height, in_h, size, interpolation)  # [B, size, H]
    cols = resize_weights(left, width, in_w, size, interpolation, reverse=flip)  # [B, size, W]
    resized_cols = torch.bmm(images.reshape(batch, channels * in_h, in_w), cols.transpose(1, 2))  # [B, C·H, size]
    by_row = resized_cols.view(batch, channels, in_h, size).transpose(1, 2).reshape(batch, in_h, channels * size)
    out = torch.bmm(rows, by_row).view(batch, size, channels, size)
    return out.transpose(1, 2).contiguous()


def sample_resized_crop(
    u_area: torch.Tensor,
    u_ratio: torch.Tensor,
    u_top: torch.Tensor,
    u_left: torch.Tensor,
    in_h: int,
    in_w: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = RATIO,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """torchvision's RandomResizedCrop.get_params, vectorised over samples and its 10 attempts.

    u_area, u_ratio: U[0,1) of shape [B, attempts]; u_top, u_left: U[0,1) of shape [B]. Returns int64 (top, left,
    height, width). Arithmetic is float64 with round-half-to-even, like Python's `round`.
    """
    area = float(in_h * in_w)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u_area.to(torch.float64))
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u_ratio.to(torch.float64))
    w = torch.round(torch.sqrt(target_area * aspect)).to(torch.int64)
    h = torch.round(torch.sqrt(target_area / aspect)).to(torch.int64)
    valid = (w > 0) & (w <= in_w) & (h > 0) & (h <= in_h)
    first = valid.to(torch.uint8).argmax(dim=1, keepdim=True)
    found = valid.any(dim=1)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)

    in_ratio = in_w / in_h
    if in_ratio < min(ratio):
        fb_w, fb_h = in_w, int(round(in_w / min(ratio)))
    elif in_ratio > max(ratio):
        fb_w, fb_h = int(round(in_h * max(ratio))), in_h
    else:
        fb_w, fb_h = in_w, in_h
    w = torch.where(found, w, torch.full_like(w, fb_w))
    h = torch.where(found, h, torch.full_like(h, fb_h))
    top = torch.floor(u_top.to(torch.float64) * (in_h - h + 1)).to(torch.int64)
    left = torch.floor(u_left.to(torch.float64) * (in_w - w + 1)).to(torch.int64)
    top = torch.where(found, top, (in_h - h) // 2)
    left = torch.where(found, left, (in_w - w) // 2)
    return top, left, h, w


def rgb_to_grayscale(images: torch.Tensor) -> torch.Tensor:
    """Luma of float [B, 3, H, W] images, shape [B, 1, H, W]."""
    gray = images[:, 0:1] * LUMA[0]
    gray.add_(images[:, 1:2], alpha=LUMA[1])
    return gray.add_(images[:, 2:3], alpha=LUMA[2])


# HSV → RGB: channel c = V − C·clamp(min(k, 4 − k), 0, 1) with k = (6H + n_c) mod 6, n = (5, 3, 1) for (r, g, b).
_HUE_OFFSETS = (5.0, 3.0, 1.0)


def _is_max(channel: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """1.0 where `channel` equals the per-pixel maximum `value`, else 0.0 (arithmetic, no boolean tensors)."""
    return torch.sub(channel, value).sign_().add_(1.0)


def adjust_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of float RGB images by `shift` turns (per sample, in [−0.5, 0.5]) through HSV.

    A hue rotation keeps V = max and the chroma C = max − min, so only the hexcone hue 6H ∈ [0, 6) is recomputed
    (from the first channel holding the maximum: red, then green, then blue), shifted and mapped back.
    """
    r, g, b = images[:, 0:1], images[:, 1:2], images[:, 2:3]
    value = images.amax(dim=1, keepdim=True)
    chroma = value - images.amin(dim=1, keepdim=True)
    red = _is_max(r, value)
    green = _is_max(g, value).mul_(1.0 - red)
    blue = (1.0 - red).sub_(green)
    scaled = red.mul_(g - b)
    scaled.addcmul_(green, (b - r).add_(chroma, alpha=2.0))
    scaled.addcmul_(blue, (r - g).add_(chroma, alpha=4.0))
    hue6 = torch.nan_to_num_(scaled.div_(chroma), nan=0.0)  # grey pixels: 0/0 → hue 0
    hue6 += 6.0 * shift.to(images.dtype).view(-1, 1, 1, 1)
    k = hue6 + torch.tensor(_HUE_OFFSETS, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    k -= torch.floor(k / 6.0).mul_(6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return torch.addcmul(value, chroma, ramp, value=-1.0)


def color_jitter(
    images: torch.Tensor, factors: torch.Tensor, order: torch.Tensor, applied: torch.Tensor
) -> torch.Tensor:
    """Apply the four jitter adjustments in each sample's own order to the samples where `applied` is set.

    factors [B, 4] (brightness, contrast, saturation, hue shift), order [B, 4] (a permutation of 0..3 per sample),
    applied bool [B]. Brightness, contrast and saturation are torchvision's blends f·x + (1 − f)·D, clamped to
    [0, 1], with D = 0, the image's mean luma, or the per-pixel luma; one stage runs them together for the whole
    batch (f = 1 leaves a sample unchanged exactly). The hue stage runs on its own subset. Returns a new tensor.
    """
    stage_op = torch.where(applied[:, None], order, torch.full_like(order, -1))  # [B, stages]; −1: nothing
    stage_factor = factors.gather(1, order)
    blend = torch.where((stage_op >= 0) & (stage_op <= 2), stage_factor, torch.ones_like(stage_factor))
    mean_weight = (stage_op == 1) * (1.0 - blend)
    gray_weight = (stage_op == 2) * (1.0 - blend)
    needs_luma = ((stage_op == 1) | (stage_op == 2)).any(dim=0).tolist()
    out = images
    for stage in range(order.shape[1]):
        f = blend[:, stage].view(-1, 1, 1, 1)
        if needs_luma[stage]:
            gray = rgb_to_grayscale(out)
            degenerate = gray * gray_weight[:, stage].view(-1, 1, 1, 1)
            degenerate += gray.mean(dim=(1, 2, 3), keepdim=True) * mean_weight[:, stage].view(-1, 1, 1, 1)
            out = torch.addcmul(degenerate, out, f).clamp_(0.0, 1.0)
        else:
            out = (out * f).clamp_(0.0, 1.0)
        selected = torch.nonzero(stage_op[:, stage] == 3).squeeze(1)
        if selected.numel() > 0:
            shifted = adjust_hue(out.index_select(0, selected), stage_factor[selected, stage])
            out.index_copy_(0, selected, shifted)
    return out


def jitter_factors(u: torch.Tensor, strength: tuple[float, float, float, float] = JITTER_STRENGTH) -> torch.Tensor:
    """Map U[0,1) [B, 4] to (brightness, contrast, saturation) ~ U[max(0, 1−s), 1+s] and hue ~ U[−s, s]."""
    low = torch.tensor([max(0.0, 1.0 - s) for s in strength[:3]] + [-strength[3]], dtype=torch.float32, device=u.device)
    high = torch.tensor([1.0 + s for s in strength[:3]] + [strength[3]], dtype=torch.float32, device=u.device)
    return low + (high - low) * u


class SimCLRViews:
    """Two independent SimCLR views of a uint8 batch, computed batched on the batch's device.

    `preset` picks the crop scale and interpolation (`PRESETS`); `cifar_normalize` (default: the preset's, True
    only for `gh`) appends Normalize(CIFAR_MEAN, CIFAR_STD) so the output is no longer in [0, 1]: this mirrors the
    GH reference, where ltray's model normalises once more. `extra` runs on each view after grayscale and before
    the normalisation (BCL's RandAugment_prob, docs/math/bcl.md §4).
    """

    def __init__(
        self,
        size: int,
        preset: str = "sdclr",
        *,
        cifar_normalize: bool | None = None,
        extra: ViewHook | None = None,
    ) -> None:
        if preset not in PRESETS:
            raise ConfigError(f"aug_preset must be one of {sorted(PRESETS)}, got {preset!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"augmentation output size must be a positive int, got {size!r}")
        self.size = size
        self.preset = preset
        self.config = PRESETS[preset]
        self.cifar_normalize = self.config.cifar_normalize if cifar_normalize is None else cifar_normalize
        self.extra = extra

    def draw_params(
        self, index: torch.Tensor, epoch: int, seed: int, view: int, height: int, width: int
    ) -> ViewParams:
        """The random parameters of view `view` for the items `index` of an height × width batch."""
        slots = torch.arange(VIEW_SLOTS, device=index.device)
        u = rng.uniform(seed, epoch, index[:, None], view, slots)  # [B, VIEW_SLOTS]
        top, left, h, w = sample_resized_crop(
            u[:, SLOT_AREA : SLOT_AREA + CROP_ATTEMPTS],
            u[:, SLOT_RATIO : SLOT_RATIO + CROP_ATTEMPTS],
            u[:, SLOT_TOP],
            u[:, SLOT_LEFT],
            height,
            width,
            self.config.scale,
        )
        return ViewParams(
            top=top,
            left=left,
            height=h,
            width=w,
            flip=u[:, SLOT_FLIP] < FLIP_PROB,
            jitter=u[:, SLOT_JITTER] < JITTER_PROB,
            factors=jitter_factors(u[:, SLOT_FACTORS : SLOT_FACTORS + 4]),
            order=torch.argsort(u[:, SLOT_ORDER : SLOT_ORDER + 4], dim=1),
            grayscale=u[:, SLOT_GRAYSCALE] < GRAYSCALE_PROB,
        )

    def render(
        self, images: torch.Tensor, params: ViewParams, index: torch.Tensor, epoch: int, seed: int, view: int
    ) -> torch.Tensor:
        """Apply `params` (and the extra hook) to float [B, 3, H, W] images in [0, 1]."""
        out = crop_resize(
            images, params.top, params.left, params.height, params.width, self.size,
            self.config.interpolation, flip=params.flip,
        ).clamp_(0.0, 1.0)
        out = color_jitter(out, params.factors, params.order, params.jitter)
        gray = torch.nonzero(params.grayscale).squeeze(1)
        if gray.numel() > 0:
            out.index_copy_(0, gray, rgb_to_grayscale(out.index_select(0, gray)).expand(-1, 3, -1, -1))
        if self.extra is not None:
            out = self.extra(out, index, epoch, view, seed)
        if self.cifar_normalize:
            mean = torch.tensor(CIFAR_MEAN, dtype=out.dtype, device=out.device).view(1, 3, 1, 1)
            std = torch.tensor(CIFAR_STD, dtype=out.dtype, device=out.device).view(1, 3, 1, 1)
            out = (out - mean) / std
        return out.contiguous()

    def _prepare(self, images: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        floats = to_float_images(images)
        if index.dim() != 1 or index.shape[0] != floats.shape[0]:
            raise DataError(f"index must be 1-d with one entry per image ({floats.shape[0]}), got {tuple(index.shape)}")
        return floats, index.to(device=floats.device, dtype=torch.int64)

    def single_view(
        self, images: torch.Tensor, index: torch.Tensor, epoch: int, seed: int, view: int
    ) -> torch.Tensor:
        """One view (id `view`) of every image: float32 [B, 3, size, size]."""
        floats, index = self._prepare(images, index)
        params = self.draw_params(index, epoch, seed, view, floats.shape[2], floats.shape[3])
        return self.render(floats, params, index, epoch, seed, view)

    def __call__(
        self, images: torch.Tensor, index: torch.Tensor, epoch: int, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Views 0 and 1 of every image, each float32 [B, 3, size, size] on the images' device."""
        floats, index = self._prepare(images, index)
        return self.single_view(floats, index, epoch, seed, 0), self.single_view(floats, index, epoch, seed, 1)
