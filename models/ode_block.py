"""The ODE block: integrates dz/dt = f(z) over [0, T] and counts function evaluations."""

from __future__ import annotations

import torch
from torch import nn
from torchdiffeq import odeint, odeint_adjoint

from models.checkpointed import solve_checkpointed
from models.fused_rk import StepRecorder, rms_norm, solve_adaptive, solve_fixed
from models.solvers import SolverSpec
from models.time_dependent import TimeDependent, as_time
from odeflow.errors import (
    MAX_STEPS_CAUSE,
    NONFINITE_FIX,
    SOLVER_FAILURE_FIX,
    ConfigError,
    SolverError,
    step_longer_than_interval,
)

_SOLVER_FAILURES = {
    # torchdiffeq turns a NaN step size (f returned NaN) into a step of 0: not a stiff solve
    "underflow in dt 0.0": "the step size became NaN: f returned NaN or infinity",
    "underflow in dt": "the adaptive step size collapsed (underflow in dt): the learned dynamics became stiff",
    "max_num_steps exceeded": MAX_STEPS_CAUSE,
    "non-finite values in state": "the ODE state became NaN or infinite",
}
_SOLVER_FIXES = {"non-finite values in state": NONFINITE_FIX, "underflow in dt 0.0": NONFINITE_FIX}


class CountingODEFunc(nn.Module):
    """Wraps f as f(t, z) for torchdiffeq and counts every evaluation. An autonomous f is called as f(z), a
    time-dependent one (models.time_dependent.TimeDependent) as f(t, z)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.time_dependent = isinstance(net, TimeDependent)
        self.nfe = 0

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        # Under autocast f computes in bfloat16; the solver's stages, state and error control stay in the
        # state's precision.
        return (self.net(t, z) if self.time_dependent else self.net(z)).to(z.dtype)

    def uncounted(self, t: float, z: torch.Tensor) -> torch.Tensor:
        """f(t, z) without counting an evaluation (step-size heuristics that are not part of a solve)."""
        return (self.net(as_time(t, z), z) if self.time_dependent else self.net(z)).to(z.dtype)


class ODEBlock(nn.Module):
    """z(T) = z(0) + integral_0^T f(z(t)) dt (or f(t, z(t)) for a time-dependent f), solved numerically with
    the given SolverSpec. The fused solvers hand an autonomous f one time tensor for every stage and a
    time-dependent one each stage's own time.

    Counting follows torchdiffeq's odenet_mnist example: `forward_nfe` holds the evaluations of the last
    forward pass; evaluations made after it (the adjoint's backward pass) accumulate in `func.nfe` until
    the next forward pass and are read through `backward_nfe`.
    """

    def __init__(self, net: nn.Module, solver: SolverSpec, t_final: float = 1.0) -> None:
        super().__init__()
        if not t_final > 0:
            raise ConfigError("t_final", t_final, "a final time T > 0")
        check_step_fits(solver, float(t_final))
        self.func = CountingODEFunc(net)
        self.solver = solver
        self.t_final = float(t_final)
        self.forward_nfe = 0
        self._time_tensors: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    @property
    def time_dependent(self) -> bool:
        return self.func.time_dependent

    @property
    def backward_nfe(self) -> int:
        return self.func.nfe

    def forward(self, z0: torch.Tensor) -> torch.Tensor:
        self.func.nfe = 0
        spec = self.solver
        if z0.dtype in (torch.bfloat16, torch.float16):  # an autocast layer before the block: solve in float32
            z0 = z0.float()
        try:
            # Without autograd the adjoint has nothing to do: its forward pass is this same solve (same options,
            # the same RMS norm), taken directly, without torchdiffeq's wrapping and per-stage time tensors.
            if spec.gradient == "checkpoint":
                z = solve_checkpointed(
                    self.func,
                    z0,
                    self._fused_direct,
                    spec.method,
                    checkpoints=spec.checkpoints,
                    autonomous=not self.time_dependent,
                )
            elif spec.fused and (not spec.adjoint or not torch.is_grad_enabled()):
                z = self._fused_direct(z0)
            else:
                t = self._times(z0)
                kwargs = spec.odeint_kwargs()
                if spec.adjoint:
                    # The adjoint has its own solve; bound it the same way, and measure its error with the
                    # chosen norm (torchdiffeq's default mixed norm, or the seminorm).
                    kwargs["adjoint_options"] = {**kwargs["options"], **adjoint_norm_option(spec)}
                    z = odeint_adjoint(self.func, z0, t, **kwargs)[-1]
                else:
                    z = odeint(self.func, z0, t, **kwargs)[-1]
        except AssertionError as exc:
            raise translate_solver_failure(exc, spec) from exc
        self.forward_nfe = self.func.nfe
        self.func.nfe = 0
        return z

    def _times(self, like: torch.Tensor) -> torch.Tensor:
        """[0, T] on the state's device, made once per dtype and device: each `torch.tensor(..., device=cuda)`
        is a copy from the host."""
        key = (like.dtype, like.device)
        if key not in self._time_tensors:
            self._time_tensors[key] = torch.tensor([0.0, self.t_final], dtype=like.dtype, device=like.device)
        return self._time_tensors[key]

    def _fused_direct(self, z0: torch.Tensor, record: StepRecorder | None = None) -> torch.Tensor:
        spec = self.solver
        if spec.is_fixed_step:
            return solve_fixed(
                self.func,
                z0,
                0.0,
                self.t_final,
                spec.step_size,
                spec.method,
                autonomous=not self.time_dependent,
                record=record,
            )
        return solve_adaptive(
            self.func,
            z0,
            0.0,
            self.t_final,
            spec.method,
            spec.rtol,
            spec.atol,
            spec.max_steps,
            spec.min_step,
            spec.step_size,
            autonomous=not self.time_dependent,
            record=record,
            **spec.extra_options,
        )


def adjoint_norm_option(spec: SolverSpec) -> dict:
    """The adjoint solve's `norm` option. torchdiffeq's default is a mixed norm: the max of the RMS norms of
    t's adjoint, the state, the state's adjoint and each parameter's adjoint. The seminorm (Kidger et al.
    2021, "Hey, that's not an ODE") leaves the parameters' adjoints out: they never feed back into the
    dynamics, so their error need not shrink the step, and the backward solve takes fewer steps.

    The torchdiffeq backend gets torchdiffeq's own choice; the fused one the same norm computed as one
    tensor, so reading it costs one synchronisation per step however many parameters there are.
    """
    seminorm = spec.adjoint_norm == "seminorm"
    if not spec.fused:
        return {"norm": "seminorm"} if seminorm else {}

    def norm(parts: tuple[torch.Tensor, ...]) -> torch.Tensor:
        t, y, adj_y, *adj_params = parts
        kept = [y, adj_y] + ([] if seminorm else adj_params)
        return torch.stack([t.abs().reshape(()).to(y.dtype), *(rms_norm(p).to(y.dtype) for p in kept)]).max()

    return {"norm": norm}


def translate_solver_failure(exc: BaseException, solver: SolverSpec) -> BaseException:
    """A SolverError naming the cause and the fix for torchdiffeq's assertion failures; others unchanged."""
    text = str(exc)
    for marker, cause in _SOLVER_FAILURES.items():
        if marker in text:
            return SolverError(
                f"{solver.describe()} failed: {cause} ({text.splitlines()[0][:120]})",
                _SOLVER_FIXES.get(marker, SOLVER_FAILURE_FIX),
            )
    return exc


def check_step_fits(solver: SolverSpec, t_final: float) -> None:
    """A fixed step longer than [0, T] would silently become one step of h = T."""
    if solver.is_fixed_step and solver.step_size > t_final:
        raise step_longer_than_interval(solver.step_size, t_final)


def ode_blocks(model: nn.Module) -> list[ODEBlock]:
    return [m for m in model.modules() if isinstance(m, ODEBlock)]


def set_solver(model: nn.Module, solver: SolverSpec) -> None:
    """Switch every ODE block of `model` to another solver (re-evaluation with other settings)."""
    for block in ode_blocks(model):
        check_step_fits(solver, block.t_final)
        block.solver = solver


def forward_nfe(model: nn.Module) -> int:
    return sum(b.forward_nfe for b in ode_blocks(model))


def backward_nfe(model: nn.Module) -> int:
    return sum(b.backward_nfe for b in ode_blocks(model))
