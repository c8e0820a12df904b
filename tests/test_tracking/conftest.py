"""Real runs, and a real MongoDB-wire server (SecantusDB in its own process on a free port) for them."""

from __future__ import annotations

import uuid
from pathlib import Path

import pymongo
import pytest

from dashboard.server import DatabaseServer
from runner.experiment.app import run_experiment
from tests.conftest import compose_config

TINY = [
    "data=spheres",
    "data.n_train=300",
    "data.n_test=100",
    "model.channels=4",
    "solver=euler",
    "solver.step_size=0.5",
    "train.max_epochs=3",
    "train.lr=0.02",
]
MONGO = ["tracking=mongo", "tracking.timeout_ms=1000"]


def tiny_run(runs_dir: Path, out_dir: Path, *overrides: str) -> dict:
    """One real training run (about a second); returns its summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    choices = {"data": "spheres", "model": "odenet_simple"}
    choices.update(o.split("=", 1) for o in overrides if o.split("=", 1)[0] in ("data", "model"))
    return run_experiment(compose_config([*TINY, *overrides], runs_dir), out_dir, choices)


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory):
    """One server for the session, no authentication; each test uses a database of its own."""
    server = DatabaseServer(tmp_path_factory.mktemp("mongo") / "db").start()
    yield server
    server.stop()


@pytest.fixture
def mongo_db(mongo_server, monkeypatch) -> tuple[pymongo.MongoClient, str]:
    """(client, database name): a fresh database on the real server, which MONGO_URL now points at."""
    monkeypatch.setenv("MONGO_URL", mongo_server.url)
    client = pymongo.MongoClient(mongo_server.url, serverSelectionTimeoutMS=3000)
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield client, name
    client.drop_database(name)
    client.close()
