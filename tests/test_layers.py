"""The package's layers only point down (docs/architecture.md): every import of `ltray.X...` in `ltray/`, at module
level, inside a function or under TYPE_CHECKING, goes to the importing module's own layer or to a lower one of
`LAYERS`, so no two layers import each other."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ltray"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

# Bottom to top: a layer may import itself and the layers listed before it, never one listed after it. A layer is a
# subpackage (`data`) or a top-level module (`config`) of ltray. The same list, top to bottom, is in
# docs/architecture.md.
LAYERS = (
    "errors",
    "ray_runtime",
    "shipped",
    "storage",
    "guard",
    "common",
    "method_names",
    "config",
    "augment",
    "models",
    "eval",
    "data",
    "losses",
    "select",
    "methods",
    "train",
    "evaluate",
    "tracking",
    "pools",
    "cluster",
    "splits_cli",
    "cli",
)


def layer_of_file(path: Path) -> str | None:
    """The layer a module of ltray/ belongs to; None for the package's own `__init__.py` (its version only)."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return None if parts == ("__init__",) else parts[0]


def imported_layers(tree: ast.AST) -> list[tuple[str, int]]:
    """(layer, line) of every import of `ltray.X...` (or `from ltray import X`) anywhere in a module."""
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "ltray":
                names = [f"ltray.{alias.name}" for alias in node.names]
            else:
                names = [node.module]
        else:
            continue
        found += [(name.split(".")[1], node.lineno) for name in names if name.startswith("ltray.")]
    return found


def import_edges() -> dict[tuple[str, str], list[str]]:
    """(importing layer, imported layer) -> the `file:line` places, for imports between different layers."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        source = layer_of_file(path)
        if source is None:
            continue
        for target, line in imported_layers(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if target != source:
                edges[(source, target)].append(f"{path.relative_to(ROOT)}:{line}")
    return edges


def test_every_module_belongs_to_a_listed_layer() -> None:
    layers = {layer_of_file(path) for path in PACKAGE.rglob("*.py")} - {None}
    assert sorted(layers - set(LAYERS)) == [], "add the new subpackage or module to LAYERS and docs/architecture.md"
    assert sorted(set(LAYERS) - layers) == [], "LAYERS names a layer that no longer exists"
    assert len(set(LAYERS)) == len(LAYERS)


def test_no_two_layers_import_each_other() -> None:
    edges = import_edges()
    both_ways = [
        f"{a} <-> {b}: {edges[(a, b)]} | {edges[(b, a)]}" for a, b in sorted(edges) if a < b and (b, a) in edges
    ]
    assert both_ways == []


def test_every_import_points_to_the_same_or_a_lower_layer() -> None:
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    upward = [
        f"{source} -> {target} (a higher layer): {', '.join(places)}"
        for (source, target), places in sorted(import_edges().items())
        if source in rank and target in rank and rank[target] > rank[source]
    ]
    assert upward == []


def test_the_architecture_page_lists_the_same_layers_top_to_bottom() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\d+\. `([a-z_]+)`", section, flags=re.M)
    assert documented == list(reversed(LAYERS))
    assert "tests/test_layers.py" in text
