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
    (["data=fashion_mnist", "data.download=false", "paths.datasets=/nonexistent/odeflow-data"],
     ["FashionMNIST", "train-images-idx3-ubyte", "/nonexistent/odeflow-data/FashionMNIST/raw", "data.root"]),
    (["+model.depth=3"], ["model", "depth", "channels"]),
]


@pytest.mark.parametrize("overrides,fragments", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_user_error_message(runs_dir: Path, overrides: list[str], fragments: list[str]):
    proc = run_cli(overrides, runs_dir, timeout=120)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    for fragment in fragments:
        assert fragment in output, f"{fragment!r} missing from:\n{output}"
    assert "Traceback" not in output
    assert "epoch" not in proc.stdout  # it ended before training
    store = runs_dir / "store"
    assert not store.exists() or not any(p.name.isdigit() for p in store.iterdir())  # no half-made run
