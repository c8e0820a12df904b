"""Running out of memory ends a run in one message that says where, at which batch size and peak, and what lowers
it; the run is FAILED with its finished epochs kept. The adjoint gradient check runs last, on a bounded sub-batch,
and reports running out of memory instead of failing the run.

A real torch.OutOfMemoryError is raised by a model hook at a chosen batch: the handling does not depend on the
device that ran out."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data.tensors import Split
from models import SimpleNet, SolverSpec
from odeflow.errors import UserError
from runner.experiment import pipeline
from runner.experiment.adjoint_check import adjoint_gradient_check
from runner.experiment.app import run_experiment
from runner.tracking.runstore import read_file_store
from tests.conftest import compose_config
from tests.test_tracking.conftest import TINY

EPOCHS = 4


def out_of_memory() -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def raising_model(monkeypatch, fails) -> None:
    """Models built by the run raise out of memory in the forward passes where `fails(module, calls, data)`,
    `calls` counting the forward passes made in the same mode (training or evaluation) so far."""
    build = pipeline.build

    def build_raising(recipe, data, device):
        model = build(recipe, data, device)
        calls = {True: 0, False: 0}

        def hook(module, _args):
            calls[module.training] += 1
            if fails(module, calls[module.training], data):
                raise out_of_memory()

        model.register_forward_pre_hook(hook)
        return model

    monkeypatch.setattr(pipeline, "build", build_raising)


def run(runs_dir: Path, tmp_path: Path, *overrides: str) -> dict:
    cfg = compose_config([*TINY, f"train.max_epochs={EPOCHS}", f"train.patience={EPOCHS}", *overrides], runs_dir)
    return run_experiment(cfg, tmp_path / "out", {"data": "spheres", "model": "odenet_simple"})


@pytest.mark.parametrize(
    "phase,fails",
    [
        (
            "training (epoch 3, batch 2)",
            lambda m, calls, data: m.training and calls == 2 * data.train.num_batches(data.batch_size) + 2,
        ),
        (
            "validation (epoch 3)",
            lambda m, calls, data: not m.training and calls == 2 * data.val.num_batches(data.batch_size) + 1,
        ),
    ],
    ids=["training", "validation"],
)
def test_out_of_memory_in_an_epoch_fails_the_run_in_one_message_and_keeps_the_finished_epochs(
    monkeypatch, runs_dir: Path, tmp_path: Path, phase, fails
):
    raising_model(monkeypatch, fails)
    with pytest.raises(UserError) as info:
        run(runs_dir, tmp_path, "data.batch_size=64")
    message = str(info.value)
    cause, fix = message.splitlines()
    assert cause.startswith(f"out of memory on cpu during {phase} at batch size 64 (peak ")
    assert cause.endswith("MB resident): run 1 FAILED after 2 finished epochs, which it keeps")
    for setting in ("data.batch_size (e.g. 32)", "solver.gradient=checkpoint", "adjoint", "train.precision=bf16"):
        assert setting in fix
    assert isinstance(info.value.__context__, torch.OutOfMemoryError)
    record = read_file_store(runs_dir / "store")[0]
    assert record.status == "FAILED"
    assert len(record.metrics["val.loss"]["values"]) == 2
    assert torch.load(tmp_path / "out" / "last_checkpoint.pt", weights_only=False)["epoch"] == 2


def test_the_adjoint_check_runs_after_the_outputs_and_an_out_of_memory_there_is_reported(
    monkeypatch, runs_dir: Path, tmp_path: Path, capsys
):
    outputs_when_checked = []

    def in_the_check(module, _calls, _data) -> bool:  # the one forward pass in evaluation mode with autograd on
        if module.training or not torch.is_grad_enabled():
            return False
        outputs_when_checked.append((tmp_path / "out" / "evaluation_report.json").exists())
        return True  # never fits

    raising_model(monkeypatch, in_the_check)
    summary = run(runs_dir, tmp_path, "solver.gradient=checkpoint")
    assert outputs_when_checked and all(outputs_when_checked)
    record = read_file_store(runs_dir / "store")[0]
    assert record.status == "COMPLETED" and summary["adjoint_grad_err"] is None
    check = record.info["adjoint_gradient_check"]
    assert check["gradient"] == "checkpoint" and "out of memory" in check["skipped"]
    assert "checkpoint gradient check skipped: out of memory" in capsys.readouterr().out
    assert (tmp_path / "out" / "best_checkpoint.pt").exists() and record.info["test"]["test.acc"] > 0


def test_the_adjoint_check_halves_its_samples_until_they_fit():
    torch.manual_seed(0)
    model = SimpleNet((1, 8, 8), 10, "ode", 1, 8, 2, solver=SolverSpec("rk4", step_size=0.25, gradient="checkpoint"))
    split = Split(torch.randn(200, 1, 8, 8), torch.randint(0, 10, (200,)))
    fitting = adjoint_gradient_check(model, split, 128, threshold=0.2)
    assert fitting["batch_size"] == 64  # bounded, whatever the training batch size

    def too_large(module, args):
        if torch.is_grad_enabled() and len(args[0]) > 20:
            raise out_of_memory()

    model.register_forward_pre_hook(too_large)
    check = adjoint_gradient_check(model, split, 128, threshold=0.2)
    assert check["batch_size"] == 16 and check["relative_error"] < 1e-5
    assert all(p.grad is None for p in model.parameters())
