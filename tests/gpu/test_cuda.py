"""The GPU suite (`pytest -m gpu`, skipped without CUDA): runs on CUDA train, record their device and reproduce;
checkpointed and adjoint gradients on CUDA are direct backpropagation's."""

from __future__ import annotations

import copy

import pytest
import torch

from models import SimpleNet, SolverSpec
from models.ode_block import set_solver
from runner.experiment.device import cudnn_version
from runner.tracking.runstore import read_file_store
from tests.conftest import run_cli

pytestmark = pytest.mark.gpu

QUICK_CUDA = ["experiment=quickstart", "model.channels=8", "train.max_epochs=3", "train.device=cuda"]


def test_a_run_on_cuda_trains_records_its_device_and_reproduces(runs_dir):
    proc = run_cli(QUICK_CUDA, runs_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = read_file_store(runs_dir / "store")[0]
    info = run.info["device_info"]
    assert run.info["device"] == "cuda" and run.status == "COMPLETED"
    assert info["gpu"] == torch.cuda.get_device_name(0) and info["gpu_index"] == 0
    assert info["gpu_memory_mb"] == round(torch.cuda.get_device_properties(0).total_memory / 2**20)
    assert info["cudnn"] == cudnn_version() and info["torch_cuda"] == torch.version.cuda
    assert info["cuda_runtime"] is not None and info["driver"] is not None
    assert run.info["determinism"]["requested"] is True and run.info["determinism"]["cudnn_benchmark"] is False
    assert f"device: cuda:0 {info['gpu']}" in run_cli(["runs", "show", "1"], runs_dir).stdout
    again = run_cli(["reproduce", "1"], runs_dir)
    assert again.returncode == 0 and "\nMATCH: " in again.stdout, again.stdout[-3000:] + again.stderr[-2000:]


def gradient_errors(device: torch.device) -> dict[str, float]:
    """Relative difference to direct backpropagation of each other gradient method's parameter and input
    gradients, for a simple ODEnet in float64 at tight tolerances on `device`."""
    torch.manual_seed(0)
    spec = {"method": "dopri5", "rtol": 1e-6, "atol": 1e-6}
    direct = SimpleNet((1, 8, 8), 10, "ode", 1, 8, 2, norm="group", solver=SolverSpec(**spec)).double().to(device)
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64, device=device)
    grads = {}
    for name, gradient in (("direct", "direct"), ("checkpoint", "checkpoint"), ("adjoint", "adjoint")):
        model = copy.deepcopy(direct)
        set_solver(model, SolverSpec(**spec, gradient=gradient))
        z = x.clone().requires_grad_()
        model(z).square().sum().backward()
        grads[name] = torch.cat([z.grad.reshape(-1)] + [p.grad.reshape(-1) for p in model.parameters()])
    return {
        name: float((grads[name] - grads["direct"]).norm() / grads["direct"].norm())
        for name in ("checkpoint", "adjoint")
    }


def test_checkpointed_and_adjoint_gradients_on_cuda_are_direct_backpropagations():
    errors = gradient_errors(torch.device("cuda"))
    # the adjoint solves the continuous adjoint equation: on the CPU the same model gives 1.06e-2 (float64, rtol 1e-6)
    assert errors["checkpoint"] < 1e-9 and errors["adjoint"] < 0.02, errors
