"""Every user error ends before training in one message naming the key, the value and the fix; no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli

CASES = [
    # (overrides, fragments the message must contain)
    (["model=odenet_big"], ["model/odenet_big", "odenet_simple", "resnet_complex"]),
    (["solver.method=rk5"], ["solver.method", "'rk5'", "dopri5", "euler"]),
    (["solver.rtol=-0.001"], ["solver.rtol", "-0.001", "> 0"]),
    (["train.patience=0"], ["train.patience", "0", ">= 1"]),
    (["data.val_fraction=1.5"], ["data.val_fraction", "1.5", "between 0 and 1"]),
    (["train.optimizer=lbfgs"], ["train.optimizer", "adam", "sgd"]),
    (["model=odenet_complex", "data=spheres"], ["model", "image", "odenet_simple"]),
    (["model=raa_odenet", "data=digits"], ["model", "vector dataset", "(1, 8, 8)", "data=raa_spheres"]),
    (
        ["data=fashion_mnist", "data.download=false", "paths.datasets=/nonexistent/odeflow-data"],
        ["FashionMNIST", "train-images-idx3-ubyte", "/nonexistent/odeflow-data/FashionMNIST/raw", "data.root"],
    ),
    (["+model.depth=3"], ["model", "depth", "channels"]),
    # wrong types: the key, the value and the type it takes
    (["train.lr=abc"], ["train.lr='abc' is invalid: expected a number"]),
    (["train.max_epochs=1.5"], ["train.max_epochs=1.5 is invalid: expected an integer"]),
    (["solver.adjoint=maybe"], ["solver.adjoint='maybe' is invalid: expected true or false"]),
    (["train.deterministic=maybe"], ["train.deterministic='maybe' is invalid: expected true or false"]),
    (["seed=-1"], ["seed=-1 is invalid", "0 to 4294967295"]),
    (["seed=abc"], ["seed='abc' is invalid", "0 to 4294967295"]),
    # values that would run something else than what they say
    (
        ["solver=euler", "solver.step_size=5"],
        ["solver.step_size=5 is longer than the integration interval [0, 1]", "at most 1"],
    ),
    (["data.subset=2"], ["data.subset=2 is invalid: expected at least 3"]),
    # the solver fails in the model's first forward pass: a solver message, not a shape one
    (
        ["solver.max_steps=2", "solver.rtol=1e-9", "solver.atol=1e-9"],
        ["more steps than solver.max_steps allows", "raise solver.max_steps"],
    ),
    # Hydra-level mistakes
    (["train.lrr=1"], ["train.lrr is not a config key", "did you mean train.lr?"]),
    (["paths.runs=/proc/nope"], ["paths.runs=/proc/nope cannot be used", "ODEFLOW_RUNS"]),
    (["runz", "list"], ["'runz' is not a command", "did you mean 'runs'?"]),
]


@pytest.mark.parametrize("overrides,fragments", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_user_error_message(runs_dir: Path, overrides: list[str], fragments: list[str]):
    proc = run_cli(overrides, runs_dir, timeout=120)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    for fragment in fragments:
        assert fragment in output, f"{fragment!r} missing from:\n{output}"
    assert "Traceback" not in output and "a model that fits inputs" not in output
    assert "epoch" not in proc.stdout  # it ended before training
    store = runs_dir / "store"
    assert not store.exists() or not any(p.name.isdigit() for p in store.iterdir())  # no half-made run


def test_help_lists_the_subcommands(runs_dir: Path):
    proc = run_cli(["--help"], runs_dir, timeout=120)
    assert proc.returncode == 0
    for command in ("sync", "runs", "reproduce", "resume", "reevaluate", "report", "study"):
        assert f"python -m runner {command}" in proc.stdout, proc.stdout
    assert "model: odenet_complex, odenet_simple" in proc.stdout  # Hydra's list of options is still there


@pytest.mark.parametrize(
    "group,text,where,problem",
    [
        (
            "experiment",
            "# @package _global_\ntrain:\n  lr: [0.1\n  max_epochs: 2\n",
            "line 4, column 13",
            "expected ','",
        ),
        (
            "search",
            "params:\n  train.lr: loguniform(1e-4, 1e-2)\n   model.channels: choice(4, 8)\n",
            "line 3",
            "mapping",
        ),
    ],
)
def test_a_yaml_syntax_error_in_a_users_config_file_is_one_message(runs_dir, tmp_path, group, text, where, problem):
    (tmp_path / "conf" / group).mkdir(parents=True)
    (tmp_path / "conf" / group / "mine.yaml").write_text(text)
    multirun = ["-m"] if group == "search" else []
    proc = run_cli([*multirun, f"hydra.searchpath=[file://{tmp_path / 'conf'}]", f"{group}=mine"], runs_dir)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    cause, fix = proc.stderr.strip().splitlines()
    assert cause.startswith(f"error: {tmp_path / 'conf' / group / 'mine.yaml'}, {where}")
    assert "is not valid YAML" in cause and problem in cause and fix.startswith("  fix: correct the file there")
    assert not (runs_dir / "store").exists()
