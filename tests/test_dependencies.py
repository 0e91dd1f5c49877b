"""The environment the tests run in holds the versions pyproject.toml declares (Ray's range is narrow: ltray uses
Train V2 and Tune's public APIs of that release line), so a passing suite vouches for the declared range."""

from __future__ import annotations

from importlib.metadata import requires, version

import pytest
from packaging.requirements import Requirement

# the installed ltray's declared dependencies (pyproject.toml's, without the extras)
REQUIREMENTS = [req for req in (Requirement(text) for text in requires("ltray") or []) if req.marker is None]


@pytest.mark.parametrize("requirement", REQUIREMENTS, ids=lambda requirement: requirement.name)
def test_installed_version_is_in_the_declared_range(requirement: Requirement) -> None:
    installed = version(requirement.name)
    assert requirement.specifier.contains(installed, prereleases=True), f"{requirement.name} {installed}"


def test_ray_is_pinned_to_the_installed_release_line() -> None:
    ray = next(requirement for requirement in REQUIREMENTS if requirement.name == "ray")
    major, minor = (int(part) for part in version("ray").split(".")[:2])
    assert not ray.specifier.contains(f"{major}.{minor + 1}.0") and not ray.specifier.contains(f"{major}.{minor - 1}.0")
