"""Reproducible installs: `make test` and `make dashboard` install with constraints.txt, which pins every
dependency pyproject.toml names at the version the suite passed with."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONSTRAINTS = REPO / "constraints.txt"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version and ";" not in line, f"constraints.txt: {line!r} is not an exact pin"
        pins[_canonical(name)] = version
    return pins


def _declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = [*project["dependencies"], *(s for extra in project["optional-dependencies"].values() for s in extra)]
    return {_canonical(re.split(r"[\s\[<>=!~;]", spec, maxsplit=1)[0]) for spec in specs}


def test_constraints_pin_every_declared_dependency_but_not_qlab() -> None:
    pins = _pins()
    assert "qlab" not in pins  # pip cannot constrain the project it installs
    assert sorted(_declared() - pins.keys()) == [], "run `make lock` after adding a dependency"


def test_constraints_are_what_this_environment_runs() -> None:
    """The suite runs with the pinned versions (a dependency of a dependency included)."""
    pins = _pins()
    installed = {_canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}
    differ = {n: (v, installed.get(n)) for n, v in pins.items() if n in installed and installed[n] != v}
    assert differ == {}, "constraints.txt and this environment disagree: run `make lock` (then `make test`)"
    assert pins["duckdb"] == installed["duckdb"]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_reinstalls_with_the_constraints_when_they_change() -> None:
    """A changed constraints.txt makes `make test`/`make dashboard` reinstall, constrained (dry run)."""
    for target in ("test", "dashboard"):
        out = subprocess.run(["make", "-n", "-W", "constraints.txt", target], cwd=REPO, capture_output=True,
                             text=True, timeout=60, check=True).stdout
        assert "pip install --quiet -c constraints.txt -e '.[test]'" in out, out
