"""Method names: parsing, canonical names and the reference-backed flag (docs/math/README.md "Method composition")."""

from __future__ import annotations

import itertools

import pytest
import torch

from ltray.config import load_config
from ltray.errors import ConfigError
from ltray.method_names import MODIFIERS, ORDER, parse_method
from ltray.methods.base import Step
from ltray.methods.method import build_method
from ltray.methods.registry import COMPONENTS, register

# The combinations the references run (docs/math/README.md "Method composition"; bcl.md §7; sdclr.md §7).
REFERENCE_COMBINATIONS = {
    "simclr", "focal", "sdclr",
    # GH × {simclr, focal, sdclr} × {with or without BCL}; BCL alone on each base (BCL-I, the GH port, BCL-D)
    "simclr+gh", "focal+gh", "sdclr+gh",
    "simclr+bcl", "focal+bcl", "sdclr+bcl",
    "simclr+bcl+gh", "focal+bcl+gh", "sdclr+bcl+gh",
    # LoTaR × {simclr, sdclr, BCL}
    "simclr+lotar", "sdclr+lotar", "simclr+lotar+bcl",
    # COLT × simclr
    "simclr+colt",
}


def _all_names() -> list[str]:
    parts = ["simclr", "focal", "sdclr", *MODIFIERS]
    names = []
    for r in range(1, len(parts) + 1):
        for combo in itertools.combinations(parts, r):
            names.append("+".join(combo))
    return names


@pytest.mark.parametrize(
    ("name", "canonical", "base_loss", "sdclr", "modifiers"),
    [
        ("simclr", "simclr", "ntxent", False, set()),
        ("gh", "simclr+gh", "ntxent", False, {"gh"}),
        ("GH + SDCLR", "sdclr+gh", "ntxent", True, {"gh"}),
        ("bcl", "simclr+bcl", "ntxent", False, {"bcl"}),
        ("sdclr", "sdclr", "ntxent", True, set()),
        ("sdclr+focal", "focal+sdclr", "focal", True, set()),
        ("gh+bcl+focal", "focal+bcl+gh", "focal", False, {"bcl", "gh"}),
        ("lotar+bcl", "simclr+lotar+bcl", "ntxent", False, {"lotar", "bcl"}),
        ("colt", "simclr+colt", "ntxent", False, {"colt"}),
    ],
)
def test_parse_and_canonical_names(name: str, canonical: str, base_loss: str, sdclr: bool, modifiers: set[str]) -> None:
    spec = parse_method(name)
    assert spec.canonical == canonical
    assert spec.base_loss == base_loss and spec.sdclr is sdclr and spec.modifiers == frozenset(modifiers)
    assert parse_method(spec.canonical) == spec  # canonical names are fixed points
    assert spec.parts == tuple(p for p in ORDER if p in spec.parts)


def test_reference_backed_flags_match_the_spec_list() -> None:
    canonical_backed = {parse_method(n).canonical for n in REFERENCE_COMBINATIONS}
    seen_backed = set()
    for name in _all_names():
        try:
            spec = parse_method(name)
        except ConfigError:
            continue
        assert spec.reference_backed == (spec.canonical in canonical_backed), name
        if spec.reference_backed:
            seen_backed.add(spec.canonical)
    assert seen_backed == canonical_backed


@pytest.mark.parametrize("name", ["sdclr+colt", "focal+lotar", "sdclr+focal", "sdclr+lotar+bcl", "gh+lotar", "colt+gh"])
def test_other_valid_combinations_are_not_reference_backed(name: str) -> None:
    try:
        spec = parse_method(name)
    except ConfigError:
        assert name == "sdclr+colt"
        return
    assert not spec.reference_backed


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("moco", "unknown method part 'moco'"),
        ("mak+gh", "combines with no other part"),  # MAK is a pipeline around SimCLR, not a loss part
        ("simclr+mak", "combines with no other part"),
        ("", "empty"),
        ("simclr+", "empty"),
        ("gh++bcl", "empty"),
        ("gh+gh", "names a part twice"),
        ("GH+gh", "names a part twice"),
        ("simclr+focal", "two loss bases"),
        ("sdclr+colt", "dense model only"),
    ],
)
def test_bad_names(name: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as info:
        parse_method(name)
    assert "\n" not in str(info.value)


def test_every_part_but_the_default_base_is_a_registered_component() -> None:
    assert set(COMPONENTS) == {"focal", "sdclr", "lotar", "bcl", "gh", "colt", "mak"}
    assert all(COMPONENTS[name].name == name for name in COMPONENTS)


def test_registering_a_name_twice_fails() -> None:
    with pytest.raises(ValueError, match="registered twice"):

        @register("gh")
        class Again:  # noqa: D401
            pass

    assert COMPONENTS["gh"].__name__ == "GH"


def test_build_method_runs_parts_in_registry_order() -> None:
    cfg = load_config(None, {"method.name": "gh+lotar+sdclr+bcl"})
    method = build_method(cfg, 10, torch.device("cpu"))
    assert method.name == "sdclr+lotar+bcl+gh"
    assert [p.name for p in method.parts] == ["sdclr", "lotar", "bcl", "gh"]
    options = method.model_options()
    assert options == {"head": "sdclr3", "dual_bn": True, "pruned_second": True}
    assert build_method(load_config(), 10, torch.device("cpu")).model_options() == {
        "head": "simclr", "dual_bn": False, "pruned_second": False,
    }
    two_layer = load_config(None, {"method.name": "sdclr", "method.sdclr.head_layers": 2, "method.sdclr.dual_bn": False})
    assert build_method(two_layer, 10, torch.device("cpu")).model_options() == {
        "head": "simclr", "dual_bn": False, "pruned_second": True,
    }


def test_mak_is_a_standalone_method_that_trains_like_simclr() -> None:
    spec = parse_method("MAK")
    assert spec.canonical == "mak" and parse_method(spec.canonical) == spec
    assert spec.parts == ("mak",) and spec.has("mak") and spec.reference_backed
    assert spec.base_loss == "ntxent" and not spec.sdclr and spec.modifiers == frozenset()
    method = build_method(load_config(None, {"method.name": "mak"}), 10, torch.device("cpu"))
    assert method.name == "mak" and [p.name for p in method.parts] == ["mak"]
    assert method.model_options() == {"head": "simclr", "dual_bn": False, "pruned_second": False}
    z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
    step = Step(z1, z2, torch.arange(8), epoch=0, iteration=1)
    simclr = build_method(load_config(), 10, torch.device("cpu"))
    assert torch.equal(method.compute_loss(step).loss, simclr.compute_loss(step).loss)
