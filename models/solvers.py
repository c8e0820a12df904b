"""ODE solver settings: every torchdiffeq method by name, validated up front."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from torchdiffeq._impl.odeint import SOLVERS as _TORCHDIFFEQ_SOLVERS
from torchdiffeq._impl.solvers import AdaptiveStepsizeODESolver, FixedGridODESolver

from models.fused_rk import CONTROL_OPTIONS, FUSED_METHODS
from odeflow.errors import EXTRA_OPTIONS_FIX, ConfigError, check_choice, check_positive

# Built from torchdiffeq's own table so a method it adds is available here by name. scipy_solver is left
# out: it leaves the autograd graph, so it can neither train nor count backward evaluations.
FIXED_STEP_METHODS = frozenset(n for n, c in _TORCHDIFFEQ_SOLVERS.items() if issubclass(c, FixedGridODESolver))
ADAPTIVE_METHODS = frozenset(n for n, c in _TORCHDIFFEQ_SOLVERS.items() if issubclass(c, AdaptiveStepsizeODESolver))
METHODS = FIXED_STEP_METHODS | ADAPTIVE_METHODS

# fused: the project's Runge-Kutta stepping (models/fused_rk.py, about 2x faster on CPU); torchdiffeq: the
# reference implementation, plain torchdiffeq.odeint.
BACKENDS = ("fused", "torchdiffeq")
# The adjoint solve's error norm: torchdiffeq's default mixed norm, or the seminorm (Kidger et al. 2021).
ADJOINT_NORMS = ("mixed", "seminorm")
# How gradients reach the parameters: backpropagation through the solver's operations (direct), the adjoint
# ODE solved backwards (adjoint), or backpropagation step by step from states stored without a graph
# (checkpoint, models/checkpointed.py; fused Runge-Kutta methods only).
GRADIENTS = ("direct", "adjoint", "checkpoint")
# min_step has a field of its own; the rest of the fused controller's options go in extra_options.
FUSED_EXTRA_OPTIONS = tuple(o for o in CONTROL_OPTIONS if o != "min_step")


@dataclass(frozen=True)
class SolverSpec:
    """How an ODE block integrates: method, tolerances, step size, gradient method and fail-fast bounds.

    rtol/atol only matter for adaptive methods, step_size only for fixed-step ones. max_steps bounds the
    number of (accepted + rejected) adaptive steps per solve, so a collapsing step size fails fast instead
    of running for hours; min_step > 0 keeps the step from collapsing at all (torchdiffeq then accepts it).

    gradient is direct, adjoint or checkpoint; None takes it from `adjoint` (the older spelling: adjoint=True
    means gradient="adjoint"), a gradient that is set wins over `adjoint` (so an override beats a preset's
    `adjoint: true`), and after construction both fields agree. checkpoints bounds the states a
    checkpoint gradient keeps (None: every accepted step's; other gradient methods ignore it).
    """

    method: str = "dopri5"
    rtol: float = 1e-3
    atol: float = 1e-3
    step_size: float | None = None
    adjoint: bool = False
    max_steps: int = 1000
    min_step: float = 0.0
    backend: str = "fused"
    adjoint_norm: str = "mixed"
    extra_options: dict[str, Any] = field(default_factory=dict)
    gradient: str | None = None
    checkpoints: int | None = None

    def __post_init__(self) -> None:
        check_choice("method", self.method, METHODS)
        check_choice("backend", self.backend, BACKENDS)
        check_choice("adjoint_norm", self.adjoint_norm, ADJOINT_NORMS)
        self._resolve_gradient()
        unknown = sorted(set(self.extra_options) - self.accepted_extra_options())
        if unknown:
            raise ConfigError(
                "extra_options",
                dict(self.extra_options),
                f"options {self.method} on the {self.backend} backend takes: "
                + (", ".join(sorted(self.accepted_extra_options())) or "none")
                + f" ({', '.join(unknown)} is not one of them)",
                EXTRA_OPTIONS_FIX,
            )
        check_positive("rtol", self.rtol)
        check_positive("atol", self.atol)
        check_positive("max_steps", self.max_steps)
        check_positive("min_step", self.min_step, allow_zero=True)
        if self.step_size is not None:
            check_positive("step_size", self.step_size)
        if self.is_fixed_step and self.step_size is None:
            raise ConfigError("step_size", None, "a number > 0 for the fixed-step method " + self.method)

    def _resolve_gradient(self) -> None:
        gradient = self.gradient if self.gradient is not None else ("adjoint" if self.adjoint else "direct")
        check_choice("gradient", gradient, GRADIENTS)
        if gradient == "checkpoint" and not self.fused:
            where = f"backend={self.backend}" if self.backend != "fused" else f"method {self.method}"
            raise ConfigError(
                "gradient",
                "checkpoint",
                f"direct or adjoint for {where} (checkpointed gradients run on the fused Runge-Kutta path only)",
                "set solver.backend=fused with a Runge-Kutta method (e.g. solver=dopri5), or solver.gradient=direct",
            )
        if self.checkpoints is not None and (isinstance(self.checkpoints, bool) or not self.checkpoints >= 2):
            raise ConfigError("checkpoints", self.checkpoints, "null (keep every step's state) or an integer >= 2")
        # frozen: the two spellings are made to agree once, here
        object.__setattr__(self, "gradient", gradient)
        object.__setattr__(self, "adjoint", gradient == "adjoint")

    def accepted_extra_options(self) -> set[str]:
        """torchdiffeq's own options for this method that are not SolverSpec fields; on the fused path only
        those it implements (the step-size controller's constants and the largest step)."""
        if self.fused:
            return set() if self.is_fixed_step else set(FUSED_EXTRA_OPTIONS)
        names: set[str] = set()
        for cls in _TORCHDIFFEQ_SOLVERS[self.method].__mro__:
            if "__init__" in vars(cls):
                names |= {
                    name
                    for name, parameter in inspect.signature(cls.__init__).parameters.items()
                    if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
                }
        return names - {
            "self",
            "func",
            "y0",
            "rtol",
            "atol",
            "kwargs",
            "unused_kwargs",
            "step_size",
            "max_num_steps",
            "min_step",
            "first_step",
            "norm",
            "dtype",
        }

    @property
    def is_fixed_step(self) -> bool:
        return self.method in FIXED_STEP_METHODS

    @property
    def fused(self) -> bool:
        """Whether the project's fused Runge-Kutta stepping runs this solve (Adams methods: always torchdiffeq)."""
        return self.backend == "fused" and self.method in FUSED_METHODS

    def odeint_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for torchdiffeq.odeint / odeint_adjoint."""
        options: dict[str, Any] = dict(self.extra_options)
        if self.is_fixed_step:
            options["step_size"] = self.step_size
        else:
            options["max_num_steps"] = self.max_steps
            if self.min_step > 0:
                options["min_step"] = self.min_step
            if self.step_size is not None:
                options["first_step"] = self.step_size
        method = f"fused_{self.method}" if self.fused else self.method  # registered with torchdiffeq by models.fused_rk
        return {"method": method, "rtol": self.rtol, "atol": self.atol, "options": options}

    def describe(self) -> str:
        backend = ("" if self.fused else ", torchdiffeq") + ("" if self.gradient == "direct" else f", {self.gradient}")
        if self.is_fixed_step:
            return f"{self.method}(h={self.step_size}{backend})"
        return f"{self.method}(rtol={self.rtol:g}, atol={self.atol:g}{backend})"
