"""In-process runs against the file store and against MongoDB faked by mongomock (as Sacred's tests do)."""
from __future__ import annotations

from pathlib import Path

import mongomock
import mongomock.gridfs
import pytest

from runner.app import run_experiment
from tests.conftest import compose_config

TINY = ["data=spheres", "data.n_train=300", "data.n_test=100", "model.channels=4", "solver=euler",
        "solver.step_size=0.5", "train.max_epochs=3", "train.lr=0.02"]


def tiny_run(runs_dir: Path, out_dir: Path, *overrides: str) -> dict:
    """One real training run (about a second); returns its summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    choices = {"data": "spheres", "model": "odenet_simple"}
    choices.update(o.split("=", 1) for o in overrides if o.split("=", 1)[0] in ("data", "model"))
    return run_experiment(compose_config([*TINY, *overrides], runs_dir), out_dir, choices)


@pytest.fixture
def mongo_client(monkeypatch):
    """A mongomock client that every MongoStore in this test talks to."""
    mongomock.gridfs.enable_gridfs_integration()
    client = mongomock.MongoClient()
    monkeypatch.setattr("runner.tracking.MongoStore.client", lambda self: client)
    return client
