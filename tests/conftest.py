"""Shared fixtures: Hydra compose on the real config tree, CPU-only, runs written under tmp_path.

The CPU suite pins the CPU for itself and every process it starts (CUDA_VISIBLE_DEVICES=''), so on a GPU
machine its command-line runs still test what they say; the `gpu` tests (tests/gpu) run as a suite of their
own, `pytest -m gpu`, and are skipped where torch has no usable CUDA.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# One torch thread for the suite and every process it starts (read when torch loads, so set before any test
# imports it). The suite's models are tiny: torch's default of a thread per core has two workers (and the runs
# they start) contend for the same cores, their OpenMP threads spinning while they wait, which on this 2-core
# machine took 10-30 times the CPU of one thread for the same adjoint solve. A run's own `train.num_threads`
# still sets its count (the Slurm tests check that).
os.environ.setdefault("OMP_NUM_THREADS", "1")


def compose_config(overrides: list[str], runs_dir: Path) -> DictConfig:
    """The config `python -m runner <overrides>` would get, with CPU, no progress output and runs in tmp."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "config", overrides=[f"paths.runs={runs_dir}", "train.device=cpu", "train.progress=false", *overrides]
        )


def run_cli(
    args: list[str], runs_dir: Path, timeout: float = 600, env: dict[str, str | None] | None = None
) -> subprocess.CompletedProcess:
    """`python -m runner <args>` in a subprocess, the way a user runs it (`env` adds to the environment; a None
    value removes that variable)."""
    env = {k: v for k, v in {**os.environ, "ODEFLOW_RUNS": str(runs_dir), **(env or {})}.items() if v is not None}
    return subprocess.run(
        [sys.executable, "-m", "runner", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path


# The files that take minutes each, handed to the xdist workers first (`make test` runs --dist loadfile with
# --no-loadscope-reorder, so files go out in this order): the short files then fill the time around them,
# where xdist's default order (most tests first) left these few-test, long files for the end, one worker
# running them while the other had finished.
LONG_FILES_FIRST = [
    "tests/test_sweeps/test_sweeper_runs.py",
    "tests/test_research/test_commands.py",
    "tests/test_sweeps/test_slurm.py",
    "tests/test_dashboard.py",
    "tests/test_experiment/test_full_disk.py",
    "tests/test_tracking/test_mongo.py",
    "tests/test_experiment/test_end_to_end.py",
    "tests/test_sweeps/test_devices.py",
    "tests/test_experiment/test_adaptation.py",
    "tests/test_research/test_deep_limit.py",
    "tests/test_research/test_raa_studies.py",
    "tests/test_research/test_param_efficiency.py",
    "tests/test_tracking/test_query_index.py",
]


@pytest.hookimpl(trylast=True)  # after `-m` has deselected: only the tests that will run are seen
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {path: i for i, path in enumerate(LONG_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: the rest as collected
    gpu_tests = [item for item in items if item.get_closest_marker("gpu") is not None]
    if len(gpu_tests) < len(items):
        # CPU tests will run: hide the GPUs before anything initialises CUDA, in this process and those it starts
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        reason = "the CPU suite hides the GPUs (CUDA_VISIBLE_DEVICES=''): run the GPU suite on its own, pytest -m gpu"
    else:
        import torch

        reason = None if torch.cuda.is_available() else "needs CUDA: torch sees no usable GPU here"
    for item in gpu_tests if reason else []:
        item.add_marker(pytest.mark.skip(reason=reason))
