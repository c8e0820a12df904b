"""runner/'s wings and the one-way arrows between them: research -> experiment -> tracking, sweeps -> both."""

from __future__ import annotations

import ast
import subprocess
import sys
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


def test_the_runner_package_holds_only_the_command_line_the_notebook_api_and_its_wings():
    assert sorted(p.name for p in RUNNER.iterdir() if p.name != "__pycache__") == sorted(
        ["__init__.py", "__main__.py", "cli.py", "command_line.py", "api.py", *WINGS]
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


START_UP = """
import sys
import torch
from runner.experiment.app import run_experiment
from runner.experiment.settings import seed_everything
from data import load_digits, load_spheres
seed_everything(0, True)
load_digits(subset=50)
load_spheres(n_train=20, n_test=10)
print(torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
print(*sorted(m for m in ("torchvision", "torch._inductor.config", "torch._dynamo") if m in sys.modules))
"""


def test_a_run_on_an_offline_dataset_starts_without_the_imports_it_does_not_use():
    # torchvision (image datasets only) and torch._inductor's config (pulled in by
    # torch.use_deterministic_algorithms) would add some 3 s to the start of every run and trial.
    done = subprocess.run([sys.executable, "-c", START_UP], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    deterministic, loaded = (done.stdout.splitlines() + [""])[:2]
    assert deterministic == "True True"  # deterministic kernels, warning only, as before
    assert loaded == ""
