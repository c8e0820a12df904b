"""runner/'s wings and the one-way arrows between them: research -> experiment -> tracking, sweeps -> both."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

RUNNER = ROOT / "runner"
WINGS = ("experiment", "tracking", "sweeps", "research")
# wing -> the wings its modules may import (besides itself and the leaf packages odeflow, models, data)
MAY_IMPORT = {
    "tracking": set(),
    "experiment": {"tracking"},
    "sweeps": {"experiment", "tracking"},
    "research": {"experiment", "tracking"},
}


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_runner_package_holds_only_the_command_line_and_its_wings():
    assert sorted(p.name for p in RUNNER.iterdir() if p.name != "__pycache__") == sorted(
        ["__init__.py", "__main__.py", "cli.py", "command_line.py", *WINGS]
    )
    for wing in WINGS:
        docstring = ast.get_docstring(ast.parse((RUNNER / wing / "__init__.py").read_text()))
        assert docstring and "\n" not in docstring, f"runner/{wing}/__init__.py says in one line what lives there"


@pytest.mark.parametrize("wing", WINGS)
def test_imports_point_one_way(wing: str):
    forbidden = {f"runner.{w}" for w in WINGS if w != wing and w not in MAY_IMPORT[wing]} | {
        "runner.cli",
        "runner.command_line",
    }
    wrong = sorted(
        f"{path.relative_to(ROOT)} imports {name}"
        for path in (RUNNER / wing).glob("*.py")
        for name in imported_modules(path)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    )
    assert wrong == []


def test_the_leaf_packages_import_nothing_of_the_runner():
    wrong = sorted(
        f"{path.relative_to(ROOT)} imports {name}"
        for package in ("odeflow", "models", "data")
        for path in (ROOT / package).glob("*.py")
        for name in imported_modules(path)
        if name.startswith("runner")
    )
    assert wrong == []
