"""Step-size and tolerance adaptation that keeps a trained ODEnet an ODE (Ott et al., "ResNet After All", 2021).

Every `interval` training iterations, after the backward pass and before the optimiser step, the batch
accuracy with the training solver is compared with that of a more accurate test solve. A gap above
`threshold` means the model is starting to depend on the discretisation: the step (or tolerance) shrinks.
Otherwise a coarser one is tried and kept only if it still agrees with the test solve. The value in
effect is part of the training state (resumed with it, replayed by the same seed) and of the trained model.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from models.ode_block import ODEBlock, ode_blocks
from models.solvers import FIXED_STEP_METHODS, SolverSpec
from odeflow.errors import ConfigError, UserError, check_choice, check_positive
from runner.experiment.precision import reference_numerics

KINDS = ("none", "step_size", "tolerance")
TESTED_BATCHES = ("train", "validation")
# The order of each fixed-step method the step-size rule knows, and the higher-order method that tests it.
METHOD_ORDERS = {"euler": 1, "midpoint": 2, "rk4": 4}
HIGHER_ORDER = {"euler": "midpoint", "midpoint": "rk4", "rk4": "rk4"}
# The tolerance test solve is tightened until it takes more evaluations than the training solve; below this
# tolerance a float32 solve cannot get more accurate, so the tightening stops there whatever the NFE.
TIGHTEST_TEST_TOL = 1e-12
# The test solve of each adaptive training method and the factor applied to its tolerance (the paper's);
# other adaptive methods are tested with dopri5 at tol * test_tol_factor.
TOLERANCE_TESTS = {"dopri5": ("dopri5", 0.1), "fehlberg2": ("dopri5", 0.2)}
# Tolerance adaptation does not loosen a tolerance while the loosened solve takes as many evaluations as each
# of this many last training iterations did: the coarser tolerance would save nothing.
SAME_NFE_ITERATIONS = 5
INITIAL_RULES = ("paper", "hairer", "config")


@dataclass(frozen=True)
class AdaptationSettings:
    """What adapts (`kind`), how often it is checked, and the rule that decides (the paper's defaults)."""

    kind: str = "none"
    interval: int = 50  # training iterations between checks
    threshold: float = 0.1  # accuracy gap between training and test solve that counts as disagreement
    max_steps: int = 500  # step-size adaptation never takes more steps than this over [0, T]
    shrink: float = 0.5
    grow: float = 1.1
    batch: str = "train"  # train: the current training batch (the paper); validation: one fixed validation batch
    test_solver: str = "auto"  # auto: euler -> midpoint, midpoint -> rk4, rk4 -> rk4; or a fixed-step method
    test_error_ratio: float = 50.0  # the test solve's error is made about this many times smaller
    # paper: first step by Hairer's rule at t=0 in batch-mean L2 norms; hairer: the same rule in torchdiffeq's
    # tolerance-scaled RMS norm; config: the solver's step_size / tol
    initial: str = "paper"
    initial_tol: float = 1e-6  # tolerance adaptation's starting rtol = atol (unless initial=config)
    test_tol_factor: float = 0.1  # the tolerance test solve runs at tol * this (tightened until it works harder)

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, KINDS)
        check_choice("batch", self.batch, TESTED_BATCHES)
        check_choice("initial", self.initial, INITIAL_RULES)
        check_choice("test_solver", self.test_solver, ("auto", *sorted(METHOD_ORDERS)))
        if not isinstance(self.interval, int) or self.interval < 1:
            raise ConfigError("interval", self.interval, "an integer >= 1 (training iterations between checks)")
        if not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ConfigError("max_steps", self.max_steps, "an integer >= 1 (most steps over [0, T])")
        if not 0 < self.threshold < 1:
            raise ConfigError("threshold", self.threshold, "an accuracy gap strictly between 0 and 1")
        if not 0 < self.shrink < 1:
            raise ConfigError("shrink", self.shrink, "a factor strictly between 0 and 1")
        if not self.grow > 1:
            raise ConfigError("grow", self.grow, "a factor > 1")
        if not 0 < self.test_tol_factor < 1:
            raise ConfigError("test_tol_factor", self.test_tol_factor, "a factor strictly between 0 and 1")
        check_positive("test_error_ratio", self.test_error_ratio)
        check_positive("initial_tol", self.initial_tol)

    @property
    def enabled(self) -> bool:
        return self.kind != "none"

    def check_solver(self, solver: SolverSpec, is_ode: bool) -> None:
        """Refuse, before training, an adaptation the model or solver cannot take."""
        if not self.enabled:
            return
        if not is_ode:
            raise UserError(
                f"adaptation={self.kind} adapts an ODE solver, but this model has no ODE block",
                "drop adaptation= (or use adaptation=none) for ResNets",
            )
        if self.kind == "step_size" and not solver.is_fixed_step:
            raise UserError(
                f"adaptation=step_size adapts fixed-step solvers; {solver.method} chooses its own steps",
                f"use adaptation=tolerance with {solver.method}, or a fixed-step solver (solver=euler, midpoint, rk4)",
            )
        if self.kind == "tolerance" and solver.is_fixed_step:
            raise UserError(
                f"adaptation=tolerance adapts adaptive solvers; {solver.method} takes fixed steps and no tolerance",
                f"use adaptation=step_size with {solver.method}, or an adaptive solver (solver=dopri5)",
            )
        if self.kind == "step_size" and solver.method not in METHOD_ORDERS:
            raise UserError(
                f"adaptation=step_size knows the orders of {', '.join(METHOD_ORDERS)}, not {solver.method}",
                "train with solver=euler, solver=midpoint or solver=rk4",
            )


def hairer_initial_step(
    f: Callable[[torch.Tensor], torch.Tensor],
    y0: torch.Tensor,
    order: int,
    rtol: float,
    atol: float,
    scaled: bool = True,
) -> float:
    """First step of a solve of order `order` from y0 (Hairer, Norsett & Wanner, Solving ODEs I, II.4).

    h0 = 0.01 |y0| / |f0|, one Euler trial step of h0, and the step whose local error estimate (from the change
    of f over it) would be 0.01: h1 = (0.01 / max(d1, d2)) ** (1 / (order + 1)); the step is min(100 h0, h1).
    `scaled`: the norms are torchdiffeq's RMS norm of v / (atol + rtol |y0|), the same formula as its
    `_select_initial_step(func, t0, y0, order, rtol, atol, rms_norm)`. Unscaled: the batch mean of each
    sample's Euclidean norm, as "ResNet After All" computed it (rtol and atol unused).
    """
    with torch.no_grad():
        if scaled:
            scale = atol + y0.abs() * rtol
            norm = lambda v: float((v / scale).pow(2).mean().sqrt())  # noqa: E731
        else:
            norm = lambda v: float(v.flatten(1).norm(dim=1).mean())  # noqa: E731
        f0 = f(y0)
        d0, d1 = norm(y0), norm(f0)
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        f1 = f(y0 + h0 * f0)
        d2 = norm(f1 - f0) / h0
        if d1 <= 1e-15 and d2 <= 1e-15:
            h1 = max(1e-6, h0 * 1e-3)
        else:
            h1 = (0.01 / max(d1, d2)) ** (1.0 / (order + 1))
        return min(100 * h0, h1)


@dataclass
class AdaptationCheck:
    iteration: int
    epoch: int
    value: float  # the step size or tolerance in effect after the check
    gap: float  # |training-solver accuracy - test-solve accuracy| on the tested batch
    test_setting: float  # the test solve's step size or tolerance
    action: str  # shrink, grow, keep (a coarser value was tried and refused) or limit (at a bound)
    seconds: float


@dataclass
class SolverAdapter:
    """Runs the checks during training and owns the value in effect (a step size or a tolerance)."""

    settings: AdaptationSettings
    t_final: float
    value: float | None = None
    iteration: int = 0
    checks: list[AdaptationCheck] = field(default_factory=list)
    initial_value: float | None = None
    check_seconds: float = 0.0
    recent_nfe: list[int] = field(default_factory=list)  # forward NFE of the last training iterations

    @property
    def adapts_step(self) -> bool:
        return self.settings.kind == "step_size"

    @property
    def min_step(self) -> float:
        return self.t_final / self.settings.max_steps

    def changes(self) -> int:
        return sum(c.action in ("shrink", "grow") for c in self.checks)

    # --- the training state -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "initial_value": self.initial_value,
            "iteration": self.iteration,
            "check_seconds": self.check_seconds,
            "checks": [dataclasses.asdict(c) for c in self.checks],
            "recent_nfe": list(self.recent_nfe),
        }

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        self.value, self.initial_value = state["value"], state["initial_value"]
        self.iteration, self.check_seconds = state["iteration"], state["check_seconds"]
        self.checks = [AdaptationCheck(**c) for c in state["checks"]]
        self.recent_nfe = list(state.get("recent_nfe", []))  # absent in states saved before the rule existed
        if self.value is not None:
            self.apply(model, self.value)

    # --- during training ----------------------------------------------------------------------------------

    def start(self, model: nn.Module, first_batch: torch.Tensor, solver: SolverSpec) -> None:
        """Pick the starting value (Hairer's rule at t=0 on the first batch, or the configured one)."""
        if self.value is not None:  # resumed
            return
        if self.adapts_step:
            if self.settings.initial == "config":
                h = float(solver.step_size)
            else:
                block, z0 = block_input(model, first_batch)
                order, scaled = METHOD_ORDERS[solver.method], self.settings.initial == "hairer"
                f = functools.partial(block.func.uncounted, 0.0)  # f at t = 0, where the solve starts
                h = hairer_initial_step(f, z0, order, solver.rtol, solver.atol, scaled=scaled)
            self.value = self._clamp_step(h)
        else:
            self.value = float(solver.rtol) if self.settings.initial == "config" else self.settings.initial_tol
        self.initial_value = self.value
        self.apply(model, self.value)

    def after_backward(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int, validation: tuple | None = None
    ) -> AdaptationCheck | None:
        """Count the iteration and, every `interval`, check and adapt. Leaves gradients and NFE counters as they
        were: the optimiser step that follows and the batch's logged NFE are unchanged."""
        self.iteration += 1
        self.recent_nfe = [*self.recent_nfe, sum(b.forward_nfe for b in ode_blocks(model))][-SAME_NFE_ITERATIONS:]
        if self.iteration % self.settings.interval:
            return None
        if self.settings.batch == "validation" and validation is not None:
            x, y = validation
        start = time.perf_counter()
        saved = [(b, b.forward_nfe, b.func.nfe, b.solver) for b in ode_blocks(model)]
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                check = self._check(model, x, y, epoch)
        finally:
            model.train(was_training)
            for block, fnfe, nfe, solver in saved:
                block.forward_nfe, block.func.nfe, block.solver = fnfe, nfe, solver
        self.apply(model, self.value)
        check.seconds = time.perf_counter() - start
        self.check_seconds += check.seconds
        self.checks.append(check)
        return check

    def _check(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int) -> AdaptationCheck:
        base = ode_blocks(model)[0].solver
        value = float(self.value)
        with reference_numerics(x.device):  # the test solve is the reference: float32, no TF32, no autocast
            test_spec, test_setting = self._test_solver(model, x, base, value)
            reference = self.accuracy(model, x, y, test_spec)
        gap = abs(self.accuracy(model, x, y, self._spec(base, value)) - reference)
        if gap > self.settings.threshold:
            new = self._shrunk(value)
            action = "shrink" if new != value else "limit"
        else:
            tried = self._grown(value)
            if tried == value:
                new, action = value, "limit"
            elif abs(self.accuracy(model, x, y, self._spec(base, tried)) - reference) > self.settings.threshold:
                new, action = value, "keep"
            elif not self.adapts_step and self._saves_nothing(model):
                new, action = value, "keep"
            else:
                new, action = tried, "grow"
        self.value = new
        return AdaptationCheck(self.iteration, epoch, new, gap, test_setting, action, 0.0)

    def _saves_nothing(self, model: nn.Module) -> bool:
        """The solve just made at the loosened tolerance took as many evaluations as each of the last
        SAME_NFE_ITERATIONS training iterations."""
        nfe = sum(b.forward_nfe for b in ode_blocks(model))
        return len(self.recent_nfe) == SAME_NFE_ITERATIONS and all(n == nfe for n in self.recent_nfe)

    def _test_solver(
        self, model: nn.Module, x: torch.Tensor, base: SolverSpec, value: float
    ) -> tuple[SolverSpec, float]:
        if self.adapts_step:
            method = HIGHER_ORDER[base.method] if self.settings.test_solver == "auto" else self.settings.test_solver
            h = finer_test_step(value, self.t_final, METHOD_ORDERS[base.method], METHOD_ORDERS[method], self.settings)
            return dataclasses.replace(base, method=method, step_size=h), h
        # Tighten the test tolerance until the test solve works harder than the training solve (otherwise its
        # answer is no more accurate than the one it tests).
        trained_nfe = _nfe(model, x, self._spec(base, value))
        method, factor = TOLERANCE_TESTS.get(base.method, ("dopri5", self.settings.test_tol_factor))
        tol = value * factor
        spec = dataclasses.replace(base, method=method, rtol=tol, atol=tol, step_size=None)
        while tol > TIGHTEST_TEST_TOL and _nfe(model, x, spec) <= trained_nfe:
            tol = max(tol * self.settings.test_tol_factor, TIGHTEST_TEST_TOL)
            spec = dataclasses.replace(spec, rtol=tol, atol=tol)
        return spec, tol

    def accuracy(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: SolverSpec) -> float:
        """The batch accuracy of `model` solved with `spec`."""
        for block in ode_blocks(model):
            block.solver = spec
        return (model(x).argmax(1) == y).float().mean().item()

    def _spec(self, base: SolverSpec, value: float) -> SolverSpec:
        if self.adapts_step:
            return dataclasses.replace(base, step_size=value)
        return dataclasses.replace(base, rtol=value, atol=value)

    def apply(self, model: nn.Module, value: float) -> None:
        for block in ode_blocks(model):
            block.solver = self._spec(block.solver, value)

    def _clamp_step(self, h: float) -> float:
        return min(max(h, self.min_step), self.t_final)

    def _shrunk(self, value: float) -> float:
        if not self.adapts_step:
            return value * self.settings.shrink
        steps, bound = self.t_final / value, self.settings.max_steps
        if steps / self.settings.shrink <= bound:
            return value * self.settings.shrink
        if math.ceil(steps - 1e-9) >= bound:
            return value  # at the bound already
        # Shrinking would pass the bound: the step count goes halfway to it instead (the paper's
        # h' = 2h / (max_steps h + 1) on [0, 1]), so runs near the bound keep refining without crossing it.
        return 2 * self.t_final * value / (bound * value + self.t_final)

    def _grown(self, value: float) -> float:
        return self._clamp_step(value * self.settings.grow) if self.adapts_step else value * self.settings.grow

    # --- reporting ----------------------------------------------------------------------------------------

    def epoch_metrics(self, epoch: int, epoch_seconds: float) -> dict[str, float]:
        """The per-epoch metrics: the value in effect, the epoch's mean gap, its changes, the checks' time share."""
        mine = [c for c in self.checks if c.epoch == epoch]
        metrics = {"adaptation.value": float(self.value), "adaptation.changes": float(self.changes())}
        if mine:
            metrics["adaptation.gap"] = sum(c.gap for c in mine) / len(mine)
            metrics["adaptation.check_share"] = sum(c.seconds for c in mine) / max(epoch_seconds, 1e-9)
        return metrics

    def finish(self, model: nn.Module, history: list[dict[str, float]], best_epoch: int) -> dict[str, Any]:
        """Give the model the value it had when its restored (best-epoch) weights were saved; the run's record."""
        at_best = history[best_epoch - 1].get("adaptation.value", self.value) if best_epoch else self.value
        self.apply(model, at_best)
        total = sum(h["epoch.time"] for h in history)
        return {**self.info(total, at_best), "log": [dataclasses.asdict(c) for c in self.checks]}

    def info(self, total_seconds: float, value_at_best: float | None) -> dict[str, Any]:
        return {
            "kind": self.settings.kind,
            "initial": self.initial_value,
            "final": self.value,
            "at_best_epoch": value_at_best,
            "steps_over_T": math.ceil(self.t_final / self.value - 1e-9) if self.adapts_step else None,
            "changes": self.changes(),
            "checks": len(self.checks),
            "check_share": round(self.check_seconds / max(total_seconds, 1e-9), 4),
            "threshold": self.settings.threshold,
        }


def finer_test_step(h: float, t_final: float, order: int, test_order: int, settings: AdaptationSettings) -> float:
    """The test solve's step: h itself when h is already fine ((T / h) ** order above `test_error_ratio`: more
    than 50 steps for euler, more than sqrt(50) for midpoint); otherwise the step whose error
    h_test ** test_order is `test_error_ratio` times smaller than h ** order."""
    if (t_final / h) ** order > settings.test_error_ratio:
        return h
    finer = (h**order / settings.test_error_ratio) ** (1.0 / test_order)
    return min(h, finer, t_final)


def _nfe(model: nn.Module, x: torch.Tensor, spec: SolverSpec) -> int:
    for block in ode_blocks(model):
        block.solver = spec
    model(x)
    return sum(b.forward_nfe for b in ode_blocks(model))


def block_input(model: nn.Module, x: torch.Tensor) -> tuple[ODEBlock, torch.Tensor]:
    """The first ODE block and its initial state z(0) for input x."""
    block = ode_blocks(model)[0]
    captured: list[torch.Tensor] = []
    handle = block.register_forward_pre_hook(lambda _module, args: captured.append(args[0].detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return block, captured[0]


def adapted_solver(solver: SolverSpec, adaptation: dict[str, Any] | None) -> SolverSpec:
    """The training solver with the adapted value a checkpoint recorded (unchanged without one)."""
    value = (adaptation or {}).get("at_best_epoch") or (adaptation or {}).get("final")
    if not value:
        return solver
    if (adaptation or {}).get("kind") == "step_size" and solver.method in FIXED_STEP_METHODS:
        return dataclasses.replace(solver, step_size=float(value))
    return dataclasses.replace(solver, rtol=float(value), atol=float(value))
