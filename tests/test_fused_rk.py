"""The fused Runge-Kutta path agrees with torchdiffeq (the reference) and with exact solutions."""

from __future__ import annotations

import pytest
import torch
from torchdiffeq import odeint

from models import SimpleNet, SolverSpec, backward_nfe, forward_nfe
from models.fused_rk import ADAPTIVE_TABLEAUS, FIXED_TABLEAUS, solve_adaptive, solve_fixed

torch.manual_seed(0)
A = torch.randn(4, 4, dtype=torch.float64) * 0.5
Y0 = torch.randn(3, 4, dtype=torch.float64)
EXACT = Y0 @ torch.linalg.matrix_exp(A).T  # dy/dt = A y over [0, 1]
T = torch.tensor([0.0, 1.0], dtype=torch.float64)


class Linear(torch.nn.Module):
    """dy/dt = A y (or tanh(A y) with `tanh`), counting its calls; every call returns new storage."""

    def __init__(self, tanh: bool = False) -> None:
        super().__init__()
        self.nfe, self.tanh = 0, tanh

    def forward(self, t, y):
        self.nfe += 1
        return torch.tanh(y @ A.T) if self.tanh else y @ A.T


@pytest.mark.parametrize("method", sorted(ADAPTIVE_TABLEAUS))
def test_adaptive_methods_match_the_exact_solution_as_well_as_torchdiffeq(method):
    fused_f, ref_f = Linear(), Linear()
    fused = solve_adaptive(fused_f, Y0, 0.0, 1.0, method, 1e-6, 1e-6, 10_000)
    reference = odeint(ref_f, Y0, T, method=method, rtol=1e-6, atol=1e-6)[-1]
    fused_error = (fused - EXACT).abs().max().item()
    reference_error = (reference - EXACT).abs().max().item()
    assert fused_error <= 1.01 * reference_error + 1e-12
    assert fused_f.nfe == ref_f.nfe  # the same steps, the last one read from the same dense output


def test_dopri5_takes_exactly_torchdiffeqs_steps():
    fused_f, ref_f = Linear(), Linear()
    solve_adaptive(fused_f, Y0, 0.0, 1.0, "dopri5", 1e-6, 1e-6, 10_000)
    odeint(ref_f, Y0, T, method="dopri5", rtol=1e-6, atol=1e-6)
    assert fused_f.nfe == ref_f.nfe


@pytest.mark.parametrize("method", sorted(FIXED_TABLEAUS))
@pytest.mark.parametrize("step", [0.25, 0.3])
def test_fixed_step_methods_equal_torchdiffeq(method, step):
    fused_f, ref_f = Linear(), Linear()
    fused = solve_fixed(fused_f, Y0, 0.0, 1.0, step, method)
    reference = odeint(ref_f, Y0, T, method=method, options={"step_size": step})[-1]
    assert torch.allclose(fused, reference, atol=1e-12, rtol=0)
    assert fused_f.nfe == ref_f.nfe


def gradients(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| over all parameters at once (per-parameter ratios are noise where a gradient is ~0,
    e.g. a conv bias that GroupNorm cancels)."""
    return ((a - b).norm() / b.norm()).item()


def block_pair(method: str, **kwargs):
    torch.manual_seed(1)
    fused = SimpleNet((1, 8, 8), 10, "ode", 1, 16, 2, solver=SolverSpec(method, backend="fused", **kwargs))
    reference = SimpleNet((1, 8, 8), 10, "ode", 1, 16, 2, solver=SolverSpec(method, backend="torchdiffeq", **kwargs))
    reference.load_state_dict(fused.state_dict())
    return fused, reference


@pytest.mark.parametrize(
    "method,kwargs,out_tol,grad_tol",
    [
        ("dopri5", {}, 2e-2, 5e-2),  # default training tolerance 1e-3
        ("dopri5", {"rtol": 1e-6, "atol": 1e-6}, 5e-4, 5e-3),  # float32 state: 1e-6 is near its resolution
        ("bosh3", {"rtol": 1e-5, "atol": 1e-5}, 1e-3, 2e-2),
        ("rk4", {"step_size": 0.25}, 1e-5, 1e-4),  # same arithmetic: equal up to float32 rounding
    ],
)
def test_ode_block_outputs_gradients_and_nfe_agree(method, kwargs, out_tol, grad_tol):
    fused, reference = block_pair(method, **kwargs)
    x = torch.randn(16, 1, 8, 8)
    out_f, out_r = fused(x), reference(x)
    assert forward_nfe(fused) == forward_nfe(reference)
    assert (out_f - out_r).abs().max().item() <= out_tol
    out_f.square().sum().backward()
    out_r.square().sum().backward()
    assert relative_difference(gradients(fused), gradients(reference)) <= grad_tol


def test_fused_adjoint_is_as_accurate_as_torchdiffeqs_adjoint():
    torch.manual_seed(2)
    models = {
        name: SimpleNet((1, 8, 8), 10, "ode", 1, 16, 2, solver=SolverSpec("dopri5", rtol=1e-6, atol=1e-6, **kw))
        for name, kw in {
            "direct": {},
            "fused_adjoint": {"adjoint": True},
            "torchdiffeq_adjoint": {"adjoint": True, "backend": "torchdiffeq"},
        }.items()
    }
    for model in models.values():
        model.load_state_dict(models["direct"].state_dict())
    x = torch.randn(8, 1, 8, 8)
    for model in models.values():
        model(x).square().sum().backward()
    assert backward_nfe(models["fused_adjoint"]) > 0 and backward_nfe(models["direct"]) == 0
    direct = gradients(models["direct"])
    fused_error = relative_difference(gradients(models["fused_adjoint"]), direct)
    reference_error = relative_difference(gradients(models["torchdiffeq_adjoint"]), direct)
    assert fused_error <= 2 * reference_error + 1e-3 and fused_error < 0.02


def test_evaluation_without_gradients_reuses_buffers_and_gives_the_same_result(monkeypatch):
    y0 = Y0.clone()
    with_grad = solve_adaptive(Linear(tanh=True), y0, 0.0, 1.0, "dopri5", 1e-8, 1e-8, 10_000)
    allocations = []
    real_empty_like = torch.empty_like
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: allocations.append(1) or real_empty_like(*a, **k))
    f = Linear(tanh=True)  # nonlinear: many steps
    with torch.no_grad():
        without = solve_adaptive(f, y0, 0.0, 1.0, "dopri5", 1e-8, 1e-8, 10_000)
    assert torch.equal(with_grad, without)
    assert torch.equal(y0, Y0)  # the initial state was not used as a work buffer
    # About 6 state-sized tensors per step are needed; reused, a handful are allocated for the whole solve.
    assert f.nfe >= 50 and len(allocations) <= 8, (f.nfe, len(allocations))
