"""Parameter budgets of thesis table 7.4 / 7.5, NFE counting and solver failure messages."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models import ComplexNet, ODEBlock, SimpleNet, SolverSpec, backward_nfe, count_parameters, forward_nfe, set_solver
from models.layers import group_count
from odeflow.errors import SOLVER_FAILURE_FIX, ConfigError, ModelDataMismatch, SolverError

FMNIST, CIFAR = (1, 28, 28), (3, 32, 32)
DOPRI5 = SolverSpec("dopri5")


def simple(shape, kind: str, channels: int) -> nn.Module:
    if kind == "ode":
        return SimpleNet(shape, 10, "ode", 1, channels, 2, solver=DOPRI5)
    return SimpleNet(shape, 10, "residual", 3 if kind == "large" else 1, channels + 2, 0)


# (input shape, model, thesis total, thesis not-in-FC): thesis tables 7.4 (FashionMNIST) and 7.5 (CIFAR10)
TABLE = [
    (FMNIST, lambda: simple(FMNIST, "small", 64), 169_000, 40_100),
    (FMNIST, lambda: simple(FMNIST, "large", 64), 248_000, 119_000),
    (FMNIST, lambda: simple(FMNIST, "ode", 64), 169_000, 40_000),
    (CIFAR, lambda: simple(CIFAR, "small", 256), 1_270_000, 607_000),
    (CIFAR, lambda: simple(CIFAR, "large", 256), 2_470_000, 1_810_000),
    (CIFAR, lambda: simple(CIFAR, "ode", 256), 1_270_000, 607_000),
    (FMNIST, lambda: ComplexNet(FMNIST, 10, "residual"), 394_000, 353_000),
    (FMNIST, lambda: ComplexNet(FMNIST, 10, "ode", solver=DOPRI5), 394_000, 353_000),
    (CIFAR, lambda: ComplexNet(CIFAR, 10, "residual"), 413_000, 372_000),
    (CIFAR, lambda: ComplexNet(CIFAR, 10, "ode", solver=DOPRI5), 413_000, 372_000),
]


@pytest.mark.parametrize("shape,make,total,not_in_fc", TABLE)
def test_parameter_counts_match_thesis_within_5_percent(shape, make, total, not_in_fc):
    counts = count_parameters(make())
    assert abs(counts["total"] - total) / total <= 0.05, counts
    assert abs(counts["not_in_fc"] - not_in_fc) / not_in_fc <= 0.05, counts


def test_group_norm_groups_divide_channels():
    assert group_count(66) == 22 and group_count(258) == 6 and group_count(64) == 32 and group_count(7) == 7


def test_complex_odenet_keeps_one_state_shape_and_strips_padding():
    model = ComplexNet(FMNIST, 10, "ode", solver=SolverSpec("euler", step_size=1.0))
    z = model.stem(torch.randn(3, *FMNIST))
    assert z.shape == (3, 256, 28, 28)
    assert model.body(z).shape == z.shape
    assert model.out_size == (4, 4)


def block_model(solver: SolverSpec) -> nn.Module:
    return SimpleNet((1, 8, 8), 10, "ode", 1, 8, 2, solver=solver)


def test_euler_quarter_step_counts_four_forward_evaluations():
    model = block_model(SolverSpec("euler", step_size=0.25))
    model(torch.randn(4, 1, 8, 8)).sum().backward()
    assert forward_nfe(model) == 4
    assert backward_nfe(model) == 0  # direct backpropagation does not call f again


def test_rk4_counts_four_per_step_and_adjoint_counts_backward():
    model = block_model(SolverSpec("rk4", step_size=0.25, adjoint=True))
    model(torch.randn(4, 1, 8, 8)).sum().backward()
    assert forward_nfe(model) == 16
    assert backward_nfe(model) == 16  # the adjoint solve: 4 steps back from T, 4 evaluations each


def test_dopri5_counts_six_per_step_plus_two_and_resets_per_forward():
    model = block_model(DOPRI5)
    x = torch.randn(4, 1, 8, 8)
    model(x)
    first = forward_nfe(model)
    model(x)
    # f(0, z0) and the initial-step probe, then six evaluations per (accepted or rejected) step (FSAL)
    assert first == 2 + 6 * 3 and forward_nfe(model) == first


def test_set_solver_switches_every_block():
    model = block_model(DOPRI5)
    set_solver(model, SolverSpec("midpoint", step_size=0.5))
    model(torch.randn(2, 1, 8, 8))
    assert forward_nfe(model) == 4


class Exploding(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return 1e3 * z**3  # finite-time blow-up: the adaptive step collapses


@pytest.mark.parametrize(
    "max_steps,cause",
    [
        (100_000, "the adaptive step size collapsed (underflow in dt): the learned dynamics became stiff"),
        (50, "the solver needed more steps than solver.max_steps allows (max_num_steps exceeded (50>=50))"),
    ],
)
def test_a_failing_solve_names_its_own_cause_and_the_fix(max_steps, cause):
    block = ODEBlock(Exploding(), SolverSpec("dopri5", rtol=1e-6, atol=1e-6, max_steps=max_steps))
    with pytest.raises(SolverError) as info:
        block(torch.ones(2, 3))
    assert str(info.value).startswith(f"dopri5(rtol=1e-06, atol=1e-06) failed: {cause}")
    assert info.value.fix == SOLVER_FAILURE_FIX


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"method": "rk5"}, "method"),
        ({"rtol": -1e-3}, "rtol"),
        ({"atol": 0.0}, "atol"),
        ({"method": "euler"}, "step_size"),
        ({"max_steps": 0}, "max_steps"),
    ],
)
def test_solver_spec_rejects_bad_values(kwargs, key):
    with pytest.raises(ConfigError) as info:
        SolverSpec(**kwargs)
    assert info.value.key == key


def test_unknown_solver_lists_valid_choices():
    with pytest.raises(ConfigError) as info:
        SolverSpec("rk5")
    assert "dopri5" in str(info.value) and "euler" in str(info.value)


def test_complex_model_rejects_vector_inputs():
    with pytest.raises(ModelDataMismatch, match="image"):
        ComplexNet((2,), 2, "residual")


class NaNAfterOneCall(nn.Module):
    """A network whose weights became NaN: every evaluation after the first returns NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return -z if self.calls == 1 else z * float("nan")


@pytest.mark.parametrize("backend", ["fused", "torchdiffeq"])
def test_a_nan_state_fails_at_once_with_its_own_message(backend):
    net = NaNAfterOneCall()
    block = ODEBlock(net, SolverSpec("dopri5", backend=backend, max_steps=1000))
    with pytest.raises(SolverError) as info:
        block(torch.ones(2, 3))
    assert "failed: the ODE state became NaN or infinite" in str(info.value) or "the step size became NaN" in str(
        info.value
    )
    assert "not a stiff solve" in info.value.fix
    assert net.calls <= 8  # at once: not after the step size has shrunk for hundreds of steps


def test_raa_odenet_has_the_papers_shape_and_parameter_count():
    from models.raa import RAAODENet

    model = RAAODENet([2], 2, solver=SolverSpec("euler", step_size=0.25))
    # f: Conv1d(1->32, k1) 64 + Conv1d(32->32, k3) 3,104 + Conv1d(32->1, k1) 33; classifier Linear(2->2) 6
    assert count_parameters(model) == {"total": 3207, "not_in_fc": 3201, "in_fc": 6}
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in convs] == [(1, 32, 1), (32, 32, 3), (32, 1, 1)]
    assert all(int(torch.count_nonzero(c.bias.detach())) == 0 for c in convs)  # the paper's initialisation: zero biases
    # Kaiming normal, fan in: weight std sqrt(2 / fan_in); the 3x32 kernel has 3,072 weights to estimate it
    assert float(convs[1].weight.std()) == pytest.approx((2 / 96) ** 0.5, rel=0.1)
    x = torch.randn(5, 2)
    assert model(x).shape == (5, 2) and forward_nfe(model) == 4
    assert RAAODENet([10], 2, solver=SolverSpec("rk4", step_size=0.5))(torch.randn(3, 10)).shape == (3, 2)
