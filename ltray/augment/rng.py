"""Counter-based augmentation randomness (docs/math/bcl.md §5).

Every random number used by an augmentation is a pure function of (seed, epoch, index, view, slot): a chain of
splitmix64 finalisers (Steele, Lea & Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014) over
the five keys. The result therefore does not depend on how many loader workers there are, on how a batch is split,
or on the order of the items inside it.

The scalar keys (seed, epoch, view) are mixed exactly with Python integers; the tensor keys (index, slot) are
mixed with int64 torch ops on the index's device. int64 multiplication and addition wrap modulo 2⁶⁴, so they give
the same low 64 bits as uint64 arithmetic; right shifts are made logical by masking off the sign extension.
"""

from __future__ import annotations

import torch

from ltray.errors import ConfigError

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MUL1 = 0xBF58476D1CE4E5B9
_MUL2 = 0x94D049BB133111EB
_ROOT = 0x6C7472617961756D  # arbitrary fixed start value of the chain

# Item-level draws shared by both views of one fetch (BCL-D's u) use this view id.
SHARED_VIEW = 1 << 20

_UNIFORM_BITS = 24  # float32 has a 24-bit significand: k/2^24 is exact and strictly below 1


def _signed(value: int) -> int:
    """The int64 two's-complement reading of a 64-bit unsigned value."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


def mix64(value: int) -> int:
    """splitmix64 step on a Python integer: add the golden gamma, then the finaliser; exact, in [0, 2⁶⁴)."""
    z = (value + _GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * _MUL1) & _MASK64
    z = ((z ^ (z >> 27)) * _MUL2) & _MASK64
    return z ^ (z >> 31)


def _logical_shift_right(z: torch.Tensor, bits: int) -> torch.Tensor:
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def _mix64_tensor(z: torch.Tensor) -> torch.Tensor:
    """The same splitmix64 step as `mix64`, on int64 tensors holding 64-bit patterns."""
    z = z + _signed(_GOLDEN)
    z = (z ^ _logical_shift_right(z, 30)) * _signed(_MUL1)
    z = (z ^ _logical_shift_right(z, 27)) * _signed(_MUL2)
    return z ^ _logical_shift_right(z, 31)


def _check_key(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"augmentation random key {name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ConfigError(f"augmentation random key {name} must be >= 0, got {value}")
    return value


def scalar_key(seed: int, epoch: int, view: int) -> int:
    """The 64-bit chain state after mixing (seed, epoch, view)."""
    h = _ROOT
    for name, value in (("seed", seed), ("epoch", epoch), ("view", view)):
        h = mix64(h ^ _check_key(name, value))
    return h


def seed_for(seed: int, epoch: int, index: int, view: int) -> int:
    """A 63-bit seed for a per-item generator (the PIL path), derived from the same chain as `uniform`."""
    return mix64(scalar_key(seed, epoch, view) ^ _check_key("index", index)) >> 1


def random_bits(seed: int, epoch: int, index: torch.Tensor, view: int, slot: int | torch.Tensor) -> torch.Tensor:
    """64 hashed bits (as int64) per element of broadcast(index, slot)."""
    if index.dtype.is_floating_point or index.dtype == torch.bool:
        raise ConfigError(f"index must be an integer tensor, got {index.dtype}")
    h = torch.full((), _signed(scalar_key(seed, epoch, view)), dtype=torch.int64, device=index.device)
    h = _mix64_tensor(h ^ index.to(torch.int64))
    if isinstance(slot, torch.Tensor):
        slot_t = slot.to(device=index.device, dtype=torch.int64)
    else:
        slot_t = torch.tensor(_check_key("slot", slot), dtype=torch.int64, device=index.device)
    return _mix64_tensor(h ^ slot_t)


def uniform(seed: int, epoch: int, index: torch.Tensor, view: int, slot: int | torch.Tensor) -> torch.Tensor:
    """U[0, 1) float32 numbers, one per element of broadcast(index, slot), on index's device.

    The same (seed, epoch, index, view, slot) always gives the same number. An int `slot` gives index's shape;
    for S slots per item pass index[:, None] and a slot tensor of shape [S] to get [B, S]. Values are multiples of
    2⁻²⁴ (the top 24 hashed bits), so they are exact in float32 and never reach 1.
    """
    bits = _logical_shift_right(random_bits(seed, epoch, index, view, slot), 64 - _UNIFORM_BITS)
    return bits.to(torch.float32) * (1.0 / (1 << _UNIFORM_BITS))
