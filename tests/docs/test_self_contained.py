"""The repository carries its own math: nothing outside it is cited, and every `docs/math/<page>.md §N` citation in
code, configs and docs names a page and a section that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MATH = ROOT / "docs" / "math"
SOURCES = [*ROOT.glob("ltray/**/*.py"), *ROOT.glob("experiments/**/*.py"), *ROOT.glob("experiments/**/*.yaml"),
           *ROOT.glob("bench/*.py"), *ROOT.glob("docs/**/*.md"), ROOT / "README.md", *ROOT.glob("ltray/splits/*.md")]
OUTSIDE = re.compile(r"specs/|\.\./shared|/work/shared|reference_splits")
CITATION = re.compile(r"(?:docs/)?math/([a-z_]+)\.md\)?\]?(?:\([^)]*\))? (§[\d.]+)")


def _sections(page: Path) -> set[str]:
    return set(re.findall(r"^#+ (§[\d.]+) ", page.read_text(), flags=re.MULTILINE))


def test_nothing_points_outside_the_repository():
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
             for path in SOURCES for number, line in enumerate(path.read_text().splitlines(), 1)
             if OUTSIDE.search(line)]
    assert not found, "\n".join(found)


def test_every_math_citation_names_an_existing_section():
    pages = {page.stem: _sections(page) for page in MATH.glob("*.md")}
    assert {"sdclr", "focal_lotar", "bcl", "gh", "colt", "mak", "data_and_eval"} <= set(pages)
    cited = 0
    broken = []
    for path in SOURCES:
        for page, section in CITATION.findall(path.read_text()):
            cited += 1
            if section.rstrip(".") not in pages.get(page, set()):
                broken.append(f"{path.relative_to(ROOT)}: math/{page}.md {section}")
    assert cited > 50 and not broken, "\n".join(broken)
