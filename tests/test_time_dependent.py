"""Time-dependent f (models.time_dependent): its layers, its parameter counts, and every route that solves it.

Each route (fused and torchdiffeq backends; direct, adjoint and checkpointed gradients; fixed and adaptive
steps; step adaptation's first step; re-evaluation; trajectories) is checked on a problem where a wrong or
ignored t changes the answer: dz/dt = a(t) z with a(t) from a Fourier Galerkin layer has the closed form
z(T) = z(0) exp(integral_0^T a), and a piecewise-constant basis whose pieces differ makes f at t = 0 and at
t = 0.9 two different functions.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from torch import nn

from models import ComplexNet, SimpleNet, SolverSpec
from models.fused_rk import ADAPTIVE_TABLEAUS
from models.ode_block import ODEBlock, ode_blocks
from models.state import StateODENet
from models.time_dependent import (
    ConcatLayer,
    FourierBasis,
    GalerkinLayer,
    PiecewiseConstantBasis,
    TimeDependence,
    TimeDependent,
    TimeSequential,
)
from odeflow.errors import ConfigError

# The Fourier basis runs over [0, 4] and the block over [0, 1], so the sine and cosine terms do not integrate
# to zero: integral_0^1 of sin(pi t / 2) and of cos(pi t / 2) are both 2 / pi.
BASIS_PERIOD = 4.0
A = (0.3, -0.8, 1.1)  # a(t) = A0 + A1 sin(pi t / 2) + A2 cos(pi t / 2)


def linear_field() -> GalerkinLayer:
    """f(t, z) = a(t) z: a 1 -> 1 Fourier Galerkin linear layer with no bias, in float64."""
    layer = TimeDependence("basis", "fourier", 3, BASIS_PERIOD).layer(lambda n: nn.Linear(n, 1), 1).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(A, dtype=torch.float64).reshape(3, 1, 1))
        layer.bias.zero_()
    return layer


def exact(z0: torch.Tensor) -> torch.Tensor:
    return z0 * math.exp(A[0] + (2 / math.pi) * (A[1] + A[2]))


Z0 = torch.tensor([[1.0], [-0.5], [2.0]], dtype=torch.float64)
ROUTES = {
    "fused dopri5": SolverSpec("dopri5", rtol=1e-9, atol=1e-9),
    "torchdiffeq dopri5": SolverSpec("dopri5", rtol=1e-9, atol=1e-9, backend="torchdiffeq"),
    "fused bosh3 adjoint": SolverSpec("bosh3", rtol=1e-9, atol=1e-9, adjoint=True, max_steps=10**5),
    "torchdiffeq dopri5 adjoint": SolverSpec("dopri5", rtol=1e-9, atol=1e-9, adjoint=True, backend="torchdiffeq"),
    "fused dopri5 checkpoint": SolverSpec("dopri5", rtol=1e-9, atol=1e-9, gradient="checkpoint", checkpoints=3),
    "fused rk4": SolverSpec("rk4", step_size=0.01),
    "torchdiffeq rk4": SolverSpec("rk4", step_size=0.01, backend="torchdiffeq"),
    "fused rk4 checkpoint": SolverSpec("rk4", step_size=0.01, gradient="checkpoint"),
    "fused rk4 adjoint": SolverSpec("rk4", step_size=0.01, adjoint=True),
}


@pytest.mark.parametrize("route", ROUTES)
def test_a_linear_time_dependent_ode_is_solved_to_tolerance_with_exact_gradients(route):
    block = ODEBlock(linear_field(), ROUTES[route], t_final=1.0)
    z = block(Z0)
    assert torch.allclose(z, exact(Z0), rtol=1e-7, atol=0)
    z.sum().backward()
    # dz(1)/dA0 = z(1), dz(1)/dA1 = dz(1)/dA2 = z(1) * 2 / pi, summed over the batch
    total = float(exact(Z0).sum())
    expected = torch.tensor([total, total * 2 / math.pi, total * 2 / math.pi], dtype=torch.float64)
    assert torch.allclose(block.func.net.weight.grad.reshape(3), expected, rtol=1e-6)


def test_the_linear_problem_tells_a_right_t_from_a_wrong_one():
    """The closed form is far from what an f frozen at t = 0 (a = A0 + A2) gives: the tests above can fail."""
    frozen = Z0 * math.exp(A[0] + A[2])
    assert not torch.allclose(frozen, exact(Z0), rtol=1e-2)


def test_piecewise_and_fourier_bases_take_their_values():
    piecewise = PiecewiseConstantBasis(4, 2.0)
    for t, part in ((0.0, 0), (0.49, 0), (0.5, 1), (1.99, 3), (2.0, 3), (2.3, 3), (-0.1, 0)):
        assert piecewise(torch.tensor(t)).tolist() == [float(k == part) for k in range(4)]
    fourier = FourierBasis(5, 2.0)
    t = torch.tensor(0.3, dtype=torch.float64)
    w = 2 * math.pi * 0.3 / 2.0
    expected = [1.0, math.sin(w), math.cos(w), math.sin(2 * w), math.cos(2 * w)]
    assert fourier(t).tolist() == pytest.approx(expected, abs=1e-12)
    assert FourierBasis(1, 1.0)(torch.tensor(0.7)).tolist() == [1.0]


def test_concat_feeds_t_as_an_extra_first_channel():
    layer = TimeDependence("concat").layer(lambda c: nn.Conv2d(c, 2, 1), 3)
    assert isinstance(layer, ConcatLayer) and layer.layer.in_channels == 4
    x = torch.randn(2, 3, 4, 4)
    t = torch.tensor(0.25)
    manual = layer.layer(torch.cat([torch.full((2, 1, 4, 4), 0.25), x], dim=1))
    assert torch.allclose(layer(t, x), manual) and not torch.allclose(layer(torch.tensor(0.75), x), manual)


MODELS = {
    "simple image": lambda **kw: SimpleNet((1, 8, 8), 10, channels=6, augment_dims=2, **kw),
    "simple vector": lambda **kw: SimpleNet((3,), 2, channels=6, augment_dims=2, **kw),
    "state": lambda **kw: StateODENet((2,), 2, hidden=8, augment_dims=1, **kw),
    "complex": lambda **kw: ComplexNet((1, 8, 8), 10, stage_channels=[4, 6, 8], **kw),
}
INPUTS = {"simple image": (4, 1, 8, 8), "simple vector": (4, 3), "state": (4, 2), "complex": (4, 1, 8, 8)}


def weights_of_f(model: nn.Module) -> tuple[int, int]:
    """(weights and biases of f's convolution and linear layers, everything else in f)."""
    f = ode_blocks(model)[0].func.net
    layered = sum(
        p.numel()
        for m in f.modules()
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, GalerkinLayer))
        for p in m.parameters(recurse=False)
    )
    return layered, sum(p.numel() for p in f.parameters()) - layered


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("basis", ["piecewise", "fourier"])
def test_basis_with_one_function_is_the_autonomous_model_and_k_functions_have_k_times_its_weights(model, basis):
    spec = SolverSpec("rk4", step_size=0.25)
    torch.manual_seed(0)
    autonomous = MODELS[model](solver=spec)
    torch.manual_seed(0)
    one = MODELS[model](solver=spec, time_dependence="basis", basis=basis, basis_size=1)
    assert isinstance(ode_blocks(one)[0].func.net, TimeDependent)
    x = torch.randn(INPUTS[model])
    assert torch.equal(one(x), autonomous(x))  # the same random draws give the same weights
    assert ode_blocks(one)[0].forward_nfe == ode_blocks(autonomous)[0].forward_nfe == 16
    layered, rest = weights_of_f(autonomous)
    for k in (2, 3):
        assert weights_of_f(MODELS[model](solver=spec, time_dependence="basis", basis=basis, basis_size=k)) == (
            k * layered,
            rest,  # norms stay autonomous
        )


@pytest.mark.parametrize("model", MODELS)
def test_concat_adds_one_input_channel_to_each_layer_of_f(model):
    spec = SolverSpec("rk4", step_size=0.25)
    autonomous, concat = MODELS[model](solver=spec), MODELS[model](solver=spec, time_dependence="concat")
    layers = [m.layer for m in ode_blocks(concat)[0].func.net.modules() if isinstance(m, ConcatLayer)]
    assert layers
    extra = sum(layer.weight[:, :1].numel() for layer in layers)  # one input channel's weights per layer
    assert weights_of_f(concat)[0] == weights_of_f(autonomous)[0] + extra
    assert concat(torch.randn(INPUTS[model])).shape == autonomous(torch.randn(INPUTS[model])).shape


def test_an_autonomous_f_is_called_without_t_and_a_time_dependent_one_with_each_stages_time():
    seen = {}

    class Probe(TimeDependent):
        def __init__(self, backend: str) -> None:
            super().__init__()
            self.times = seen.setdefault(backend, [])

        def forward(self, t, z):
            self.times.append(float(t))
            return z

    for backend in ("fused", "torchdiffeq"):
        ODEBlock(Probe(backend), SolverSpec("rk4", step_size=0.5, backend=backend))(torch.ones(1, 1))
    # torchdiffeq's rk4 is the 3/8 rule: stages at 0, 1/3, 2/3 and 1 of each step
    assert seen["fused"] == pytest.approx([0.0, 1 / 6, 1 / 3, 0.5, 0.5, 2 / 3, 5 / 6, 1.0]) == seen["torchdiffeq"]
    assert isinstance(ode_blocks(MODELS["state"](solver=SolverSpec()))[0].func.net, nn.Sequential)
    assert not isinstance(ode_blocks(MODELS["state"](solver=SolverSpec()))[0].func.net, TimeSequential)


@pytest.mark.parametrize("model", ["resnet_simple_small", "resnet_complex"])
def test_a_resnet_refuses_time_dependence(model):
    make = (
        (lambda: SimpleNet((1, 8, 8), 10, block="residual", time_dependence="concat"))
        if model == "resnet_simple_small"
        else (lambda: ComplexNet((1, 8, 8), 10, block="residual", stage_channels=[4, 6, 8], time_dependence="basis"))
    )
    with pytest.raises(ConfigError, match="none for a ResNet"):
        make()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"time_dependence": "sometimes"}, "concat"),
        ({"time_dependence": "basis", "basis": "legendre"}, "fourier"),
        ({"time_dependence": "basis", "basis_size": 0}, "basis_size"),
    ],
)
def test_unknown_choices_are_one_clear_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MODELS["state"](solver=SolverSpec(), **kwargs)


# --- fused against torchdiffeq on a time-dependent block --------------------------------------------------


def trained_time_dependent_block(kind: str, basis: str = "piecewise") -> tuple[nn.Module, torch.Tensor]:
    """(f, the block's input) of a small time-dependent simple ODEnet after three SGD steps, in float64."""
    torch.manual_seed(0)
    model = SimpleNet(
        (1, 8, 8), 10, "ode", 1, 6, 2, solver=SolverSpec("dopri5"), time_dependence=kind, basis=basis, basis_size=3
    )
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


def solve(net: nn.Module, z0: torch.Tensor, spec: SolverSpec) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(z(T), parameter gradients of a fixed linear read-out of z(T), FNFE, BNFE)."""
    net = copy.deepcopy(net)
    block = ODEBlock(net, spec, 1.0)
    out = block(z0)
    weights = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * weights).sum().backward()
    grads = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
    return out.detach(), grads, block.forward_nfe, block.backward_nfe


TIME_DEPENDENT_F = [("concat", "piecewise"), ("basis", "piecewise"), ("basis", "fourier")]


FIDELITY_SOLVERS = {
    "dopri5 1e-3": SolverSpec("dopri5", rtol=1e-3, atol=1e-3),
    "bosh3 1e-3 adjoint": SolverSpec("bosh3", rtol=1e-3, atol=1e-3, adjoint=True),
    "rk4 h=0.25": SolverSpec("rk4", step_size=0.25),
    "rk4 h=0.25 adjoint": SolverSpec("rk4", step_size=0.25, adjoint=True),
}


@pytest.mark.parametrize("kind,basis", TIME_DEPENDENT_F)
@pytest.mark.parametrize("solver", FIDELITY_SOLVERS)
def test_fused_and_torchdiffeq_agree_on_a_time_dependent_block(kind, basis, solver):
    """Outputs, FNFE and BNFE always; gradients where both backends compute the same thing. Direct gradients
    of an adaptive solve differ by design (torchdiffeq's also flow through its step-size control, the fused
    path's do not; about 1% here, for an autonomous f as well): the checkpoint test below covers those."""
    net, z0 = trained_time_dependent_block(kind, basis)
    spec = FIDELITY_SOLVERS[solver]
    runs = {backend: solve(net, z0, dataclasses.replace(spec, backend=backend)) for backend in ("fused", "torchdiffeq")}
    (z_f, g_f, fnfe_f, bnfe_f), (z_t, g_t, fnfe_t, bnfe_t) = runs["fused"], runs["torchdiffeq"]
    stages = 4 if spec.is_fixed_step else len(ADAPTIVE_TABLEAUS[spec.method].beta) + 1
    assert fnfe_f == fnfe_t > 2 * stages
    assert abs(bnfe_f - bnfe_t) <= stages and (bnfe_f > 0) == spec.adjoint
    assert torch.allclose(z_f, z_t, rtol=1e-9, atol=1e-12)
    if spec.adjoint or spec.is_fixed_step:
        assert float((g_f - g_t).norm() / g_t.norm()) < 1e-6


@pytest.mark.parametrize("kind,basis", TIME_DEPENDENT_F)
def test_checkpointed_gradients_of_a_time_dependent_block_are_the_direct_ones(kind, basis):
    net, z0 = trained_time_dependent_block(kind, basis)
    z_d, g_d, fnfe_d, _ = solve(net, z0, SolverSpec("dopri5", rtol=1e-5, atol=1e-5))
    z_c, g_c, fnfe_c, bnfe_c = solve(net, z0, SolverSpec("dopri5", rtol=1e-5, atol=1e-5, gradient="checkpoint"))
    assert torch.equal(z_d, z_c) and fnfe_d == fnfe_c and bnfe_c > 0
    assert float((g_d - g_c).norm() / g_d.norm()) < 1e-10


# --- the runner's routes: step adaptation, re-evaluation, trajectories -----------------------------------


def distinct_pieces_model(spec: SolverSpec) -> StateODENet:
    """A 2-D state ODEnet whose f has 4 pieces in time that differ (each drawn on its own)."""
    torch.manual_seed(1)
    return StateODENet((2,), 2, hidden=8, solver=spec, time_dependence="basis", basis="piecewise", basis_size=4)


def test_the_first_adapted_step_is_hairers_rule_for_f_at_t_zero():
    from runner.experiment.adaptation import AdaptationSettings, SolverAdapter, hairer_initial_step

    model = distinct_pieces_model(SolverSpec("euler", step_size=0.1))
    x = torch.randn(16, 2)
    net = ode_blocks(model)[0].func.net
    adapter = SolverAdapter(AdaptationSettings(kind="step_size", initial="hairer"), t_final=1.0)
    adapter.start(model, x, model.body.solver)
    at = {t: hairer_initial_step(lambda z, t=t: net(torch.tensor(t), z), x, 1, 1e-3, 1e-3) for t in (0.0, 0.9)}
    assert adapter.value == pytest.approx(adapter._clamp_step(at[0.0]))
    assert at[0.0] != pytest.approx(at[0.9], rel=1e-3)  # t = 0 is not an arbitrary choice here


class AtTimeZero(TimeDependent):
    """f evaluated at t = 0 whatever the solver asks: what ignoring t would compute."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, t, z):
        return self.net(torch.zeros_like(t), z)


@pytest.mark.parametrize("backend", ["fused", "torchdiffeq"])
def test_reevaluation_integrates_the_time_dependent_f(backend):
    from data import load_spheres
    from runner.research.reevaluate import reevaluate

    data = load_spheres(n_train=20, n_test=40, batch_size=20)
    training = SolverSpec("euler", step_size=0.25, backend=backend)
    rows = reevaluate(distinct_pieces_model(training), data, training, [("rk4", 0.05)])
    rk4, reference = rows[1], rows[2]
    assert reference.reference and rk4.loss == pytest.approx(reference.loss, rel=1e-4)
    frozen = distinct_pieces_model(training)
    frozen.body.func.net = AtTimeZero(frozen.body.func.net)
    wrong = reevaluate(frozen, data, training, [("rk4", 0.05)])[2]
    # the pieces differ enough to tell: f frozen at t = 0 lands far outside the solvers' own disagreement
    assert abs(wrong.loss - reference.loss) > max(1e-3, 10 * abs(rk4.loss - reference.loss))


def test_trajectories_follow_the_time_dependent_solution():
    from runner.experiment.trajectories import REFERENCE_TIMES, solve_path

    block = ODEBlock(linear_field(), SolverSpec("dopri5", rtol=1e-9, atol=1e-9), 1.0)
    path = solve_path(block, Z0, block.solver)  # points x times x 1
    times = torch.linspace(0.0, 1.0, REFERENCE_TIMES, dtype=torch.float64)
    integral = A[0] * times + (2 / math.pi) * (
        A[1] * (1 - torch.cos(math.pi * times / 2)) + A[2] * torch.sin(math.pi * times / 2)
    )
    expected = Z0 * torch.exp(integral)[None, :]
    assert torch.allclose(torch.from_numpy(path[:, :, 0]), expected, rtol=1e-7)


@pytest.mark.parametrize("kind", ["concat", "basis"])
def test_a_checkpoint_rebuilds_the_time_dependent_model(kind, tmp_path):
    from runner.experiment.checkpoint import build_model, load_checkpoint, model_recipe, save_checkpoint

    model_cfg = {
        "_target_": "models.state.StateODENet",
        "hidden": 8,
        "time_dependence": kind,
        "basis": "fourier",
        "basis_size": 3,
    }
    recipe = model_recipe(model_cfg, {"_target_": "models.SolverSpec", "method": "rk4", "step_size": 0.25}, (2,), 2)
    model = build_model(recipe)
    with torch.no_grad():  # coefficients away from their zero start, so a lost one would show
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    rebuilt, _ = load_checkpoint(save_checkpoint(tmp_path / "model.pt", model, recipe, {}))
    x = torch.randn(5, 2)
    assert torch.equal(rebuilt(x), model(x))
