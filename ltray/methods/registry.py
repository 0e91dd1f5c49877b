"""A small decorator registry of method components, composed by name: `sdclr+gh`, `bcl+gh`, `colt`.

A method is a base (the NT-Xent or Focal loss, on the dense model or the SDCLR dense/pruned pair) plus modifiers
(LoTaR weights, BCL augmentation, the GH term, COLT's OOD data and SupCon term), docs/math/README.md "Method
composition". Each part is a registered `Component` class; the names, their order and the combinations the
references run are the name grammar of `ltray.method_names` (`parse_method`), below the config that validates them.

`mak` (docs/math/mak.md) is a pipeline rather than a loss part: its pre-stages (`MAK.prepare`, run by a sweep trial)
train a SimCLR feature extractor and select extra data from a pool with MAK; the retraining on the enlarged set is
exactly SimCLR's, and it combines with no other part.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, TypeVar

from ltray import method_names
from ltray.config import register_method_section

if TYPE_CHECKING:
    from ltray.methods.base import Component

COMPONENTS: dict[str, type[Component]] = {}
T = TypeVar("T", bound=type)


def register(name: str, *, config: type | None = None) -> Callable[[T], T]:
    """Register a component class under `name` (timm-style). A name the grammar does not know yet becomes a
    modifier part (`method_names.add_modifier`); `config`, a dataclass of the part's options, becomes the config
    section `method.<name>` (`ltray.config.register_method_section`). So a new part is one module in
    `ltray/methods/components/`."""

    def wrap(cls: T) -> T:
        if name in COMPONENTS:
            raise ValueError(f"component {name!r} registered twice")
        if name not in method_names.ORDER:
            method_names.add_modifier(name)
        if config is not None:
            register_method_section(name, config)
        cls.name = name  # type: ignore[attr-defined]
        COMPONENTS[name] = cls
        return cls

    return wrap
