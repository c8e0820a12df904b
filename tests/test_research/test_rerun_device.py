"""`reproduce` and `resume` take a `train.device=...` override, launch nothing on a device that is not there, and
a mismatch names what could make a rerun differ (operations without a deterministic kernel, another device)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from runner.research.rerun import device_override, nondeterminism_note
from runner.tracking.runstore import read_file_store
from tests.conftest import run_cli
from tests.test_tracking.conftest import tiny_run


@pytest.fixture
def crashed_run(tmp_path: Path, runs_dir: Path) -> Path:
    """A store with one tiny CPU run (id 1) marked FAILED, as if it had crashed after its last epoch."""
    tiny_run(runs_dir, tmp_path / "out")
    run_json = runs_dir / "store" / "1" / "run.json"
    run_json.write_text(json.dumps({**json.loads(run_json.read_text()), "status": "FAILED"}))
    return runs_dir


def test_a_device_that_is_not_there_launches_nothing(crashed_run: Path):
    for command in (["resume", "1", "train.device=cuda:3"], ["reproduce", "1", "train.device=cuda"]):
        proc = run_cli(command, crashed_run)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 2, proc.stderr[-2000:]
        assert lines[0].startswith("error: run 1 would train on train.device=cuda")
        assert f"fix: pick a device here: python -m runner {command[0]} 1 train.device=cpu" in lines[1]
        assert "resuming" not in proc.stdout
    assert [r.id for r in read_file_store(crashed_run / "store")] == [1]
    assert not (crashed_run / "reproduce").exists()


def test_resume_trains_on_the_device_given_on_the_command_line(crashed_run: Path):
    assert read_file_store(crashed_run / "store")[0].config["train"]["device"] == "cpu"
    proc = run_cli(["resume", "1", "train.device=auto"], crashed_run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    resumed = max(read_file_store(crashed_run / "store"), key=lambda r: r.id)
    assert resumed.meta["resumed_from"] == 1 and resumed.config["train"]["device"] == "auto"
    assert resumed.info["device"] == "cpu"  # the suite hides any GPU: auto is the CPU here


def test_device_override_is_the_last_train_device_among_the_overrides():
    assert device_override(["tracking=mongo", "paths.runs=/x"]) is None
    assert device_override(["train.device=cuda:3", "tracking=mongo", "+train.device=cpu"]) == "cpu"


def test_a_mismatch_names_the_operations_and_devices_that_can_make_it(crashed_run: Path):
    original = read_file_store(crashed_run / "store")[0]
    assert nondeterminism_note(original, original) is None  # deterministic kernels throughout, one device
    on_gpu = dataclasses.replace(
        original,
        info={
            **original.info,
            "device": "cuda:0",
            "determinism": {"requested": True, "nondeterministic_ops": ["adaptive_avg_pool2d_backward_cuda"]},
        },
    )
    note = nondeterminism_note(on_gpu, original)
    assert (
        "the original (on cuda:0) ran operations without a deterministic kernel: adaptive_avg_pool2d_backward_cuda"
        in note
    )
    assert "they ran on different devices: cpu and cuda:0" in note
    fast = dataclasses.replace(original, info={**original.info, "determinism": {"requested": False}})
    assert nondeterminism_note(original, fast) == "the reproduction (on cpu) ran with train.deterministic=false"
