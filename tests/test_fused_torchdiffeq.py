"""Through torchdiffeq's own entry points, `fused_<method>` answers as torchdiffeq's `<method>` does on the same
problem (values, gradients with respect to the output times, NFE, callbacks, events), or refuses up front."""

from __future__ import annotations

import warnings

import pytest
import torch
from torchdiffeq import odeint, odeint_adjoint, odeint_event

import models.fused_rk  # noqa: F401  (registers fused_<method> with torchdiffeq)

torch.manual_seed(0)
A = torch.randn(4, 4, dtype=torch.float64) * 0.5
Y0 = torch.randn(3, 4, dtype=torch.float64)


class Dynamics(torch.nn.Module):
    """dy/dt = tanh(A y) * w * (1 + 0.5 sin t): nonlinear, time-dependent, with a parameter; counts its calls
    and, with `log`, records each step callback torchdiffeq's solvers make as (name, t, dt)."""

    def __init__(self, log: list | None = None) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(1.2, dtype=torch.float64))
        self.nfe, self.log = 0, log
        if log is not None:
            for name in ("callback_step", "callback_accept_step", "callback_reject_step"):
                setattr(self, name, self._recorder(name))

    def _recorder(self, name: str):
        return lambda t, y, dt: self.log.append((name, t.item(), dt.item()))

    def forward(self, t, y):
        self.nfe += 1
        return torch.tanh(y @ A.T) * self.w * (1 + 0.5 * torch.sin(t))


def solve(method: str, t: list[float], log: list | None = None, integrate=odeint, **kwargs) -> dict:
    """Values, NFE and the gradients of a loss with respect to the output times, y0 and the parameter."""
    f = Dynamics(log)
    times = torch.tensor(t, dtype=torch.float64, requires_grad=True)
    y0 = Y0.clone().requires_grad_()
    y = integrate(f, y0, times, method=method, **kwargs)
    nfe = f.nfe
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    return {"y": y.detach(), "nfe": nfe, "t_grad": times.grad, "y0_grad": y0.grad, "w_grad": f.w.grad}


def assert_same(fused: dict, reference: dict, tol: float, keys=("y", "t_grad", "y0_grad", "w_grad")) -> None:
    assert fused["nfe"] == reference["nfe"]
    for key in keys:
        assert torch.allclose(fused[key], reference[key], rtol=tol, atol=tol), (key, fused[key], reference[key])


def assert_same_calls(fused: list, reference: list) -> None:
    """The same callbacks in the same order, told the same times and step sizes."""
    assert [name for name, _, _ in fused] == [name for name, _, _ in reference] and len(fused) > 1
    times = [value for _, t, dt in fused for value in (t, dt)]
    assert times == pytest.approx([value for _, t, dt in reference for value in (t, dt)], rel=1e-9, abs=1e-12)


OUTPUT_TIMES = [0.0, 0.3, 0.35, 1.0, 1.7, 3.0]


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "fehlberg2"])
def test_several_output_times_are_one_solve_with_torchdiffeqs_steps_nfe_values_and_gradients(method):
    """One solve read at every output time from the dense output (not a fresh solve per interval), and the
    output times carry gradients. The gradients differ only by the path through torchdiffeq's initial-step
    choice, which the fused solve leaves out (its step sizes carry no gradient; with the first step given,
    the next test, they are equal)."""
    log_f, log_r = [], []
    options = {"rtol": 1e-6, "atol": 1e-7}
    fused = solve(f"fused_{method}", OUTPUT_TIMES, log_f, **options)
    reference = solve(method, OUTPUT_TIMES, log_r, **options)
    assert_same(fused, reference, 1e-9, keys=("y",))
    assert_same(fused, reference, 1e-5, keys=("t_grad", "y0_grad", "w_grad"))
    assert_same_calls(log_f, log_r)
    assert {name for name, _, _ in log_f} == {"callback_step", "callback_accept_step", "callback_reject_step"}


@pytest.mark.parametrize("times", [OUTPUT_TIMES, OUTPUT_TIMES[::-1]], ids=["forward", "backward_in_time"])
def test_with_the_initial_step_given_every_gradient_is_torchdiffeqs(times):
    options = {"rtol": 1e-6, "atol": 1e-7, "options": {"first_step": 0.05}}
    assert_same(solve("fused_dopri5", times, **options), solve("dopri5", times, **options), 1e-9)


@pytest.mark.parametrize("method", ["rk4", "midpoint", "euler"])
@pytest.mark.parametrize(
    "options",
    [{"step_size": 0.3}, {}, {"step_size": 0.3, "interp": "cubic"}, {"interp": "cubic"}],
    ids=["step_size", "on_output_times", "step_size_cubic", "on_output_times_cubic"],
)
def test_fixed_step_methods_step_interpolate_and_call_back_as_torchdiffeq(method, options):
    """torchdiffeq's grid (`step_size` from t[0], or the output times without it), its interpolation of the
    outputs (linear, or cubic with an evaluation of f per output), gradients reaching the output times
    through the grid, and callback_step on every step."""
    log_f, log_r = [], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fused = solve(f"fused_{method}", OUTPUT_TIMES, log_f, options=options)
        reference = solve(method, OUTPUT_TIMES, log_r, options=options)
    assert_same(fused, reference, 1e-12)
    assert_same_calls(log_f, log_r)
    assert {name for name, _, _ in log_f} == {"callback_step"}
    # both warn that the accept/reject callbacks are not called by a fixed-step method
    unsupported = [str(w.message) for w in caught if "does not support callbacks" in str(w.message)]
    assert len(unsupported) == 2, unsupported


def test_the_adjoint_reads_several_output_times_from_one_solve_and_gives_torchdiffeqs_time_gradients():
    options = {"rtol": 1e-7, "atol": 1e-8}
    fused = solve("fused_dopri5", OUTPUT_TIMES, integrate=odeint_adjoint, **options)
    reference = solve("dopri5", OUTPUT_TIMES, integrate=odeint_adjoint, **options)
    assert_same(fused, reference, 1e-6)


class Decay(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(-1.0, dtype=torch.float64))
        self.nfe = 0

    def forward(self, t, y):
        self.nfe += 1
        return self.w * y + 0.1 * torch.sin(t)


@pytest.mark.parametrize(
    "method,options,tol",
    [
        ("dopri5", {}, 1e-7),
        ("bosh3", {}, 1e-5),
        ("rk4", {"step_size": 0.1}, 1e-12),
        ("euler", {"step_size": 0.05, "interp": "cubic"}, 1e-12),
    ],
)
def test_odeint_event_finds_torchdiffeqs_event_with_its_gradients(method, options, tol):
    results = {}
    for name in (method, f"fused_{method}"):
        f, y0 = Decay(), torch.tensor([[1.0, 2.0]], dtype=torch.float64, requires_grad=True)
        t0 = torch.tensor(0.0, dtype=torch.float64)
        event_t, y = odeint_event(
            f, y0, t0, event_fn=lambda t, y: y[0, 0] - 0.5, method=name, options=options, rtol=1e-6, atol=1e-8
        )
        nfe = f.nfe
        (y[-1].sum() + event_t).backward()
        results[name] = {
            "event_t": event_t.detach(),
            "y": y.detach(),
            "nfe": nfe,
            "y0_grad": y0.grad,
            "w_grad": f.w.grad,
        }
    assert 0.6 < results[method]["event_t"] < 0.8  # y(t) = 0.5 near ln 2
    assert_same(results[f"fused_{method}"], results[method], tol, keys=("event_t", "y", "y0_grad", "w_grad"))


@pytest.mark.parametrize(
    "method,options,message",
    [
        ("dopri5", {"interp": "cubic"}, "interp applies to fixed-step methods only"),
        ("rk4", {"step_size": 0.1, "interp": "quadratic"}, "Unknown interpolation method quadratic"),
        ("rk4", {"step_size": 0.1, "grid_constructor": lambda f, y0, t: t}, "grid_constructor"),
        ("dopri5", {"jump_t": torch.tensor([0.5])}, "jump_t"),
        ("rk4", {"step_size": 0.1, "perturb": True}, "perturb"),
    ],
)
def test_what_the_fused_path_cannot_answer_as_torchdiffeq_is_refused_in_one_line(method, options, message):
    with pytest.raises(ValueError, match=message) as refused:
        odeint(Dynamics(), Y0, torch.tensor([0.0, 1.0], dtype=torch.float64), method=f"fused_{method}", options=options)
    assert "\n" not in str(refused.value)


def test_a_fixed_step_event_without_step_size_is_refused_as_torchdiffeq_refuses_it():
    t0 = torch.tensor(0.0, dtype=torch.float64)
    with pytest.raises(AssertionError, match="requires `step_size`"):
        odeint_event(Decay(), Y0, t0, event_fn=lambda t, y: y[0, 0] - 0.5, method="rk4")
    with pytest.raises(ValueError, match="requires `step_size`"):
        odeint_event(Decay(), Y0, t0, event_fn=lambda t, y: y[0, 0] - 0.5, method="fused_rk4")
