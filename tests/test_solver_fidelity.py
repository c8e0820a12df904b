"""The fused path means what torchdiffeq means: the same steps, NFE, BNFE and adjoint gradients.

Problems: the ODE block of a simple ODEnet after three SGD steps (in float64, so that rtol 1e-6 is far
from the state's resolution), and the spiral dy/dt = y^3 A of torchdiffeq's demo with a learnable A.
Each is solved by the fused path and by torchdiffeq with the same settings, for dopri5 and bosh3 at
rtol = atol = 1e-3 and 1e-6. The effects these tests guard against are a step of difference or more
(a changed initial step rule or error norm moves every later step) and gradient differences of a per
cent (the adjoint's flat RMS norm against torchdiffeq's mixed norm); their bounds are far tighter.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchdiffeq import odeint

from models import SimpleNet, SolverSpec
from models.fused_rk import ADAPTIVE_TABLEAUS, solve_adaptive
from models.ode_block import ODEBlock, ode_blocks

SETTINGS = [(method, tol) for method in ("dopri5", "bosh3") for tol in (1e-3, 1e-6)]


class Spiral(nn.Module):
    """dy/dt = y^3 A (torchdiffeq's ode_demo), A learnable."""

    def __init__(self) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=torch.float64))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return (y**3) @ self.A


class Recorder(nn.Module):
    """f(t, y) = net(y), recording torchdiffeq's step callbacks and counting evaluations."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.nfe, self.steps = net, 0, []

    def forward(self, t, y):
        self.nfe += 1
        return self.net(y)

    def callback_accept_step(self, t0, y0, dt):
        self.steps.append(("accept", float(t0), float(dt)))

    def callback_reject_step(self, t0, y0, dt):
        self.steps.append(("reject", float(t0), float(dt)))


def trained_block() -> tuple[nn.Module, torch.Tensor]:
    """(f of the ODE block, the block's input for two images) of an 8+2-channel simple ODEnet after three SGD
    steps, in float64 (small, because the mixed norm's backward solve at 1e-6 takes thousands of steps)."""
    torch.manual_seed(0)
    model = SimpleNet((1, 8, 8), 10, "ode", 1, 8, 2, solver=SolverSpec("dopri5"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    model = model.double()
    with torch.no_grad():
        z0 = model.stem(x[:2].double())
    return ode_blocks(model)[0].func.net, z0


SPIRAL_Y0 = torch.tensor([[2.0, 0.0], [1.0, 1.0], [-0.5, 1.5]], dtype=torch.float64)
PROBLEMS = {"ode block": (trained_block, 1.0), "spiral": (lambda: (Spiral(), SPIRAL_Y0), 2.0)}


def stages_per_step(method: str) -> int:
    return len(ADAPTIVE_TABLEAUS[method].beta)


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("method,tol", SETTINGS)
def test_forward_steps_and_fnfe_are_torchdiffeqs(problem, method, tol):
    make, t_final = PROBLEMS[problem]
    net, z0 = make()
    fused, reference = Recorder(net), Recorder(net)
    with torch.no_grad():
        y_fused = solve_adaptive(fused, z0, 0.0, t_final, method, tol, tol, 100_000)
        y_reference = odeint(
            reference, z0, torch.tensor([0.0, t_final], dtype=z0.dtype), method=method, rtol=tol, atol=tol
        )[-1]
    accepted = [[s for s in r.steps if s[0] == "accept"] for r in (fused, reference)]
    assert abs(len(accepted[0]) - len(accepted[1])) <= 1
    for (_, t_a, dt_a), (_, t_b, dt_b) in zip(
        accepted[0][:-1], accepted[1][:-1], strict=False
    ):  # the counts may differ by one
        assert t_a == pytest.approx(t_b, rel=1e-6, abs=1e-12) and dt_a == pytest.approx(
            dt_b, rel=1e-6
        )  # summation order only
    assert abs(fused.nfe - reference.nfe) <= stages_per_step(method)
    assert len(fused.steps) > 2 and torch.allclose(y_fused, y_reference, rtol=1e-7, atol=1e-10)


def gradients(net: nn.Module, z0: torch.Tensor, t_final: float, spec: SolverSpec) -> tuple[torch.Tensor, int, int]:
    """(parameter gradients of a fixed linear read-out of z(T), FNFE, BNFE)."""
    net = copy.deepcopy(net)
    block = ODEBlock(net, spec, t_final)
    out = block(z0)
    weights = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * weights).sum().backward()
    return torch.cat([p.grad.reshape(-1) for p in net.parameters()]), block.forward_nfe, block.backward_nfe


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("method,tol", SETTINGS)
def test_adjoint_bnfe_and_gradients_are_torchdiffeqs(problem, method, tol):
    make, t_final = PROBLEMS[problem]
    net, z0 = make()
    runs = {
        backend: gradients(
            net, z0, t_final, SolverSpec(method, rtol=tol, atol=tol, adjoint=True, backend=backend, max_steps=100_000)
        )
        for backend in ("fused", "torchdiffeq")
    }
    (g_fused, f_fused, b_fused), (g_reference, f_reference, b_reference) = runs["fused"], runs["torchdiffeq"]
    assert f_fused == f_reference
    assert (
        abs(b_fused - b_reference) <= stages_per_step(method) and b_fused > f_fused
    )  # the mixed norm's long backward solve
    assert float((g_fused - g_reference).norm() / g_reference.norm()) < 1e-6


@pytest.mark.parametrize("norm", ["mixed", "seminorm"])
@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_adjoint_gradients_converge_to_an_accurate_direct_reference(method, norm):
    """Against direct backpropagation through a 1e-11 solve, the adjoint's gradient error is of the size of
    the forward solve's own error at that tolerance (direct backpropagation's), and shrinks with it."""
    reference, _, _ = gradients(
        Spiral(), SPIRAL_Y0, 2.0, SolverSpec("dopri5", rtol=1e-11, atol=1e-11, max_steps=10**6, backend="torchdiffeq")
    )
    errors = {}
    for tol in (1e-3, 1e-6):
        spec = SolverSpec(method, rtol=tol, atol=tol, max_steps=10**6)
        adjoint, _, _ = gradients(
            Spiral(),
            SPIRAL_Y0,
            2.0,
            SolverSpec(method, rtol=tol, atol=tol, max_steps=10**6, adjoint=True, adjoint_norm=norm),
        )
        direct, _, _ = gradients(Spiral(), SPIRAL_Y0, 2.0, spec)
        errors[tol] = float((adjoint - reference).norm() / reference.norm())
        assert errors[tol] <= 10 * float((direct - reference).norm() / reference.norm())
    assert errors[1e-6] <= 0.02 * errors[1e-3]


def test_the_seminorm_leaves_the_parameters_out_of_the_backward_error():
    net, z0 = trained_block()
    _, _, mixed = gradients(net, z0, 1.0, SolverSpec("dopri5", adjoint=True))
    _, _, seminorm = gradients(net, z0, 1.0, SolverSpec("dopri5", adjoint=True, adjoint_norm="seminorm"))
    _, _, reference = gradients(
        net, z0, 1.0, SolverSpec("dopri5", adjoint=True, adjoint_norm="seminorm", backend="torchdiffeq")
    )
    assert seminorm < mixed and abs(seminorm - reference) <= stages_per_step("dopri5")


def test_extra_options_reach_the_fused_solve_or_are_refused():
    net, z0 = trained_block()
    capped = Recorder(net)
    with torch.no_grad():
        solve_adaptive(capped, z0, 0.0, 1.0, "dopri5", 1e-3, 1e-3, 1000, max_step=0.05)
    assert all(dt <= 0.05 for _, _, dt in capped.steps) and len(capped.steps) >= 20
    block = ODEBlock(net, SolverSpec("dopri5", extra_options={"max_step": 0.05, "safety": 0.5}))
    block(z0)
    assert block.forward_nfe >= 2 + 6 * 20
    with pytest.raises(ValueError, match="jump_t"):
        SolverSpec("dopri5", extra_options={"jump_t": [0.5]})
    assert SolverSpec("dopri5", backend="torchdiffeq", extra_options={"jump_t": [0.5]}).extra_options == {
        "jump_t": [0.5]
    }


@pytest.mark.parametrize(
    "spec",
    [
        SolverSpec("dopri5", adjoint=True, extra_options={"max_step": 0.2}),
        SolverSpec("rk4", step_size=0.25, adjoint=True),
    ],
    ids=["dopri5", "rk4"],
)
def test_evaluating_an_adjoint_block_solves_directly_with_the_adjoints_own_forward_result(spec, monkeypatch):
    net, z0 = trained_block()
    block = ODEBlock(net, spec)
    trained_way = block(z0).detach()  # with autograd: torchdiffeq's odeint_adjoint, whose forward is fused
    trained_nfe = block.forward_nfe

    def no_adjoint(*args, **kwargs):
        raise AssertionError("evaluation went through odeint_adjoint")

    monkeypatch.setattr("models.ode_block.odeint_adjoint", no_adjoint)
    with torch.no_grad():
        evaluated = block(z0)
    assert torch.equal(evaluated, trained_way) and block.forward_nfe == trained_nfe


class CountAbs(torch.overrides.TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += func in (torch.abs, torch.Tensor.abs)
        return func(*args, **(kwargs or {}))


def test_through_torchdiffeq_the_fused_solve_keeps_the_callbacks_and_skips_the_wrappers_per_call_pass():
    net, z0 = trained_block()
    direct, adapted = Recorder(net), Recorder(net)
    t = torch.tensor([0.0, 1.0], dtype=z0.dtype)
    with torch.no_grad():
        expected = solve_adaptive(direct, z0, 0.0, 1.0, "dopri5", 1e-3, 1e-3, 1000)
        got = odeint(adapted, z0, t, method="fused_dopri5", rtol=1e-3, atol=1e-3)[-1]
        counter = CountAbs()
        with counter:  # torchdiffeq's perturb wrapper takes y.abs() on every call only to read a dtype
            odeint(Recorder(net), z0, t, method="fused_rk4", options={"step_size": 0.25})
    assert torch.equal(got, expected) and adapted.steps == direct.steps and adapted.nfe == direct.nfe
    assert counter.calls == 0  # 16 evaluations, and a fixed-step solve takes no absolute values of its own
