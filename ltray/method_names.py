"""The method-name grammar: `sdclr+gh`, `bcl+gh`, `colt` parsed into a `MethodSpec` (docs/math/README.md "Method
composition").

A method is a base (the NT-Xent or Focal loss, on the dense model or the SDCLR dense/pruned pair) plus modifiers
(LoTaR weights, BCL augmentation, the GH term, COLT's OOD data and SupCon term); `parse_method` checks a name and
says whether the combination exists in the references. The parts themselves are the `Component` classes registered
by name in `ltray.methods.registry`. The grammar lives here, below `ltray.config`, because validating a config
checks its method name.

`mak` (docs/math/mak.md) is a pipeline rather than a loss part: a sweep trial of method `mak` trains a SimCLR feature
extractor, selects extra data from a pool with MAK and retrains SimCLR on the enlarged set
(`ltray.cluster.trial`). Its training is exactly SimCLR's, and it combines with no other part.
"""

from __future__ import annotations

from dataclasses import dataclass

from ltray.errors import ConfigError

BASES = ("simclr", "focal")
MODEL_VARIANTS = ("sdclr",)
MODIFIERS: tuple[str, ...] = ("lotar", "bcl", "gh", "colt")
PIPELINES = ("mak",)
ORDER: tuple[str, ...] = ("simclr", "focal", "sdclr", "lotar", "bcl", "gh", "colt", "mak")

REFERENCE_BACKED = {
    frozenset(s)
    for s in (
        {"simclr"}, {"focal"}, {"sdclr"},
        {"simclr", "gh"}, {"focal", "gh"}, {"sdclr", "gh"},
        {"simclr", "bcl"}, {"focal", "bcl"}, {"sdclr", "bcl"},
        {"simclr", "bcl", "gh"}, {"focal", "bcl", "gh"}, {"sdclr", "bcl", "gh"},
        {"simclr", "lotar"}, {"sdclr", "lotar"}, {"simclr", "bcl", "lotar"},
        {"simclr", "colt"},
        {"mak"},
    )
}



@dataclass(frozen=True)
class MethodSpec:
    """A parsed method name."""

    parts: tuple[str, ...]
    base_loss: str
    sdclr: bool
    modifiers: frozenset[str]
    reference_backed: bool

    @property
    def canonical(self) -> str:
        return "+".join(self.parts)

    def has(self, part: str) -> bool:
        return part in self.parts


def add_modifier(name: str) -> None:
    """Make `name` a modifier part of the grammar, applied after the shipped ones (a method part added as a plugin,
    `ltray.methods.registry.register`)."""
    global MODIFIERS, ORDER
    if name in ORDER or not name or "+" in name:
        raise ValueError(f"method part name {name!r} is taken or not a name")
    MODIFIERS = (*MODIFIERS, name)
    ORDER = (*ORDER, name)


def parse_method(name: str) -> MethodSpec:
    """Parse `a+b+c` into a MethodSpec; unknown or conflicting parts raise ConfigError.

    `simclr` is implied when neither a loss base nor `sdclr` is named (`gh` = `simclr+gh`); `sdclr` alone uses
    NT-Xent on the dense/pruned pair, `sdclr+focal` the focal loss. `mak` stands alone (canonical `mak`).
    """
    raw = [p.strip().lower() for p in name.split("+")]
    known = set(BASES) | set(MODEL_VARIANTS) | set(MODIFIERS) | set(PIPELINES)
    if not name.strip() or any(not p for p in raw):
        raise ConfigError(f"method name {name!r} is empty or has an empty part")
    unknown = [p for p in raw if p not in known]
    if unknown:
        raise ConfigError(f"unknown method part {unknown[0]!r} in {name!r}; known: {', '.join(ORDER)}")
    if len(set(raw)) != len(raw):
        raise ConfigError(f"method {name!r} names a part twice")
    if "mak" in raw and len(raw) > 1:
        raise ConfigError(
            f"method {name!r}: mak is a pipeline (SimCLR extractor, MAK sampling, SimCLR retraining) and combines "
            "with no other part; use method mak"
        )
    bases = [p for p in raw if p in BASES]
    if len(bases) > 1:
        raise ConfigError(f"method {name!r} names two loss bases ({' and '.join(bases)}); pick one")
    parts = set(raw)
    if not bases and "sdclr" not in parts and "mak" not in parts:
        parts.add("simclr")
    if "colt" in parts and "sdclr" in parts:
        raise ConfigError("method colt runs on the dense model only; sdclr+colt is not supported")
    ordered = tuple(p for p in ORDER if p in parts)
    return MethodSpec(
        parts=ordered,
        base_loss="focal" if "focal" in parts else "ntxent",
        sdclr="sdclr" in parts,
        modifiers=frozenset(p for p in parts if p in MODIFIERS),
        reference_backed=frozenset(parts) in REFERENCE_BACKED,
    )
