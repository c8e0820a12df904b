"""Explicit Runge-Kutta integration with fused stage updates: the project's fast ODE path.

Why not torchdiffeq's loop: it keeps the stages in one buffer with the stage axis last and combines them
with `torch.sum(k[..., :i+1] * beta, -1)`, which walks memory with a stride and materialises a product
tensor per stage (about half of its forward time, measured with the profiler on the simple FashionMNIST
block), fits interpolation coefficients on every
accepted step, and lets gradients flow through the step-size controller. Here each stage input is a
running sum of contiguous stage tensors (one `add` per non-zero coefficient), the error estimate and its
norm are computed without gradients, and the last step is shortened to land on T instead of interpolating.
The tableaus are torchdiffeq's own (same methods, same orders, same step-size rule), so solutions agree
with torchdiffeq's within the tolerance and NFE is counted the same way, one per call of f.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchdiffeq._impl.adaptive_heun import AdaptiveHeunSolver
from torchdiffeq._impl.bosh3 import Bosh3Solver
from torchdiffeq._impl.dopri5 import Dopri5Solver
from torchdiffeq._impl.dopri8 import Dopri8Solver
from torchdiffeq._impl.fehlberg2 import Fehlberg2

from odeflow.errors import unsupported_fused_options

Func = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Tableau:
    """Butcher tableau: stage times `alpha`, stage weights `beta` (row i: stage i+1 from stages 0..i),
    solution weights `c_sol` and, for adaptive methods, error weights `c_error` and the order."""

    alpha: tuple[float, ...]
    beta: tuple[tuple[float, ...], ...]
    c_sol: tuple[float, ...]
    c_error: tuple[float, ...] | None = None
    order: int = 1
    mid: tuple[float, ...] | None = None  # weights of the dense output at the step's midpoint

    @property
    def fsal(self) -> bool:
        """The last stage is evaluated at the solution (first same as last): y1 needs no extra sum."""
        return bool(self.beta) and self.c_sol[-1] == 0 and tuple(self.c_sol[:-1]) == tuple(self.beta[-1])


def _from_torchdiffeq(solver_class) -> Tableau:
    tab = solver_class.tableau
    floats = lambda t: tuple(float(v) for v in t)  # noqa: E731
    return Tableau(
        floats(tab.alpha),
        tuple(floats(b) for b in tab.beta),
        floats(tab.c_sol),
        floats(tab.c_error),
        solver_class.order,
        floats(solver_class.mid),
    )


# Fixed-step methods, written as tableaus that reproduce torchdiffeq's step functions exactly
# (its rk4 is the 3/8 rule, `rk4_alt_step_func`).
FIXED_TABLEAUS = {
    "euler": Tableau((), (), (1.0,)),
    "midpoint": Tableau((0.5,), ((0.5,),), (0.0, 1.0)),
    "heun2": Tableau((1.0,), ((1.0,),), (0.5, 0.5)),
    "heun3": Tableau((1 / 3, 2 / 3), ((1 / 3,), (0.0, 2 / 3)), (0.25, 0.0, 0.75)),
    "rk4": Tableau((1 / 3, 2 / 3, 1.0), ((1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)), (0.125, 0.375, 0.375, 0.125)),
}
ADAPTIVE_TABLEAUS = {
    "dopri5": _from_torchdiffeq(Dopri5Solver),
    "dopri8": _from_torchdiffeq(Dopri8Solver),
    "bosh3": _from_torchdiffeq(Bosh3Solver),
    "fehlberg2": _from_torchdiffeq(Fehlberg2),
    "adaptive_heun": _from_torchdiffeq(AdaptiveHeunSolver),
}
FUSED_METHODS = frozenset(FIXED_TABLEAUS) | frozenset(ADAPTIVE_TABLEAUS)

# torchdiffeq's step-size controller constants
SAFETY, IFACTOR, DFACTOR = 0.9, 10.0, 0.2


class SolveFailed(AssertionError):
    """Raised with torchdiffeq's wording so the ODE block reports it the same way."""


def _combine(
    base: torch.Tensor,
    stages: list[torch.Tensor],
    weights: tuple[float, ...],
    scale: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """base + scale * sum_j weights[j] * stages[j], one pass per non-zero weight, no product tensors.

    With `out` (only without autograd) the result is written into that buffer: a new 6 MB tensor per
    stage costs more in page faults than the arithmetic on this CPU.
    """
    result = None
    for k, w in zip(stages, weights, strict=True):
        if w == 0.0:
            continue
        if result is None:
            result = (
                torch.add(base, k, alpha=scale * w, out=out) if out is not None else torch.add(base, k, alpha=scale * w)
            )
        else:
            result.add_(k, alpha=scale * w)
    if result is None:
        return base if out is None else out.copy_(base)
    return result


class _Buffers:
    """Reusable state-sized buffers for integration without autograd (evaluation)."""

    def __init__(self, like: torch.Tensor, enabled: bool) -> None:
        self.like, self.enabled, self._free = like, enabled, []

    def take(self) -> torch.Tensor | None:
        if not self.enabled:
            return None
        return self._free.pop() if self._free else torch.empty_like(self.like)

    def give(self, tensor: torch.Tensor | None) -> None:
        if self.enabled and tensor is not None and tensor is not self.like:
            self._free.append(tensor)


Norm = Callable[[torch.Tensor], torch.Tensor]


class _Clock:
    """The time argument of f at each stage.

    For the ODE block's autonomous f (it ignores t) one tensor serves every stage. Otherwise a CPU time
    is a new scalar tensor (cheap), and on an accelerator `torch.full` fills one on the device without
    the blocking host-to-device copy that `torch.tensor(value, device=...)` makes.
    """

    def __init__(self, like: torch.Tensor, t0: float, autonomous: bool) -> None:
        self.dtype, self.device = like.dtype, like.device
        self.constant = self._make(t0) if autonomous else None

    def _make(self, value: float) -> torch.Tensor:
        if self.device.type == "cpu":
            return torch.tensor(value, dtype=self.dtype)
        return torch.full((), value, dtype=self.dtype, device=self.device)

    def __call__(self, value: float) -> torch.Tensor:
        return self.constant if self.constant is not None else self._make(value)

    def tensor(self, value: float) -> torch.Tensor:
        """`value` as a time tensor, for what is told the time rather than evaluating f (callbacks, events)."""
        return self._make(value)

    def after(self, t0: float, h: torch.Tensor) -> torch.Tensor:
        """The time t0 + h for a step `h` that is a device tensor, without reading it on the host."""
        return self.constant if self.constant is not None else (h + t0).to(self.dtype)


def _stages(
    func: Func,
    t: float,
    y: torch.Tensor,
    f0: torch.Tensor,
    dt: float,
    tableau: Tableau,
    buffers: _Buffers,
    clock: _Clock,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """All stage derivatives of one step, and the input of the last stage."""
    k = [f0]
    yi = y
    for alpha_i, beta_i in zip(tableau.alpha, tableau.beta, strict=True):
        if yi is not y:
            buffers.give(yi)  # f has consumed it
        yi = _combine(y, k, beta_i, dt, buffers.take())
        k.append(func(clock(t + alpha_i * dt), yi))
        if k[-1].data_ptr() == yi.data_ptr():
            buffers.enabled = False  # f returned its input's storage: recycling buffers would corrupt stages
    return k, yi


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """Root mean square of all entries (torchdiffeq's `_rms_norm`), as a tensor."""
    return torch.linalg.vector_norm(x) / math.sqrt(max(1, x.numel()))


# Told of every accepted step as (t, dt, y, f0, x): x is None, or for a last step that passed t1 the fraction of
# it read from the dense output; f0 is None for fixed-step methods. True when it keeps y, which is then not
# recycled as a buffer (models.checkpointed stores the states a checkpointed backward pass re-runs from).
StepRecorder = Callable[[float, float, torch.Tensor, "torch.Tensor | None", "float | None"], bool]


def solve_fixed(
    func: Func,
    y0: torch.Tensor,
    t0: float,
    t1: float,
    step_size: float,
    method: str,
    autonomous: bool = False,
    record: StepRecorder | None = None,
) -> torch.Tensor:
    """Fixed steps of `step_size` from t0, the last one shortened to end at t1 (torchdiffeq's grid).

    No host synchronisation at all: the number of steps is known before the first one.
    """
    tableau = FIXED_TABLEAUS[method]
    buffers = _Buffers(y0, not torch.is_grad_enabled())
    clock = _Clock(y0, t0, autonomous)
    n = max(1, math.ceil((t1 - t0) / step_size - 1e-9))
    y = y0
    for i in range(n):
        t = t0 + i * step_size
        dt = (t1 - t) if i == n - 1 else step_size
        y_next, _ = _fixed_step(func, t, dt, y, tableau, buffers, clock)
        if record is None or not record(t, dt, y, None, None):
            buffers.give(y)
        y = y_next
    return y


def _fixed_step(
    func: Func, t: float, dt: float, y: torch.Tensor, tableau: Tableau, buffers: _Buffers, clock: _Clock
) -> tuple[torch.Tensor, torch.Tensor]:
    """One fixed step from (t, y): y(t + dt), and the slope f(t, y) (cubic interpolation reads it)."""
    f0 = func(clock(t), y)
    k, last_input = _stages(func, t, y, f0, dt, tableau, buffers, clock)
    if last_input is not y:
        buffers.give(last_input)
    return _combine(y, k, tableau.c_sol, dt, buffers.take()), f0


def _weighted_sum(tensors: list[torch.Tensor], weights: tuple[float, ...] | list[float]) -> torch.Tensor:
    return sum(w * x for x, w in zip(tensors, weights, strict=True) if w != 0.0)


def _fixed_step_in_time_graph(
    func: Func, t: torch.Tensor, dt: torch.Tensor, y: torch.Tensor, tableau: Tableau
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same step with its time and length as tensors in the autograd graph, as torchdiffeq takes it: used
    when the output times require gradients (their grid's times and lengths then carry them)."""
    k = [func(t, y)]
    for alpha_i, beta_i in zip(tableau.alpha, tableau.beta, strict=True):
        k.append(func(t + alpha_i * dt, y + dt * _weighted_sum(k, beta_i)))
    return y + dt * _weighted_sum(k, tableau.c_sol), k[0]


class _TimeGraphClock(_Clock):
    """Stage times as t[0] + offset, tensors in the autograd graph of the output times `t`: gradients reach t
    through f's time argument as in torchdiffeq (where every step starts at t[0] plus the steps before it)."""

    def __init__(self, like: torch.Tensor, t0: float, origin: torch.Tensor) -> None:
        super().__init__(like, t0, autonomous=False)
        self.t0, self.origin = t0, origin.to(like.dtype)

    def __call__(self, value: float) -> torch.Tensor:
        return self.origin + (value - self.t0)

    def after(self, t0: float, h: torch.Tensor) -> torch.Tensor:
        return (self.origin + h).to(self.dtype)


@torch.no_grad()
def _initial_step(
    func: Func,
    t0: float,
    y0: torch.Tensor,
    f0: torch.Tensor,
    order: int,
    rtol: float,
    atol: float,
    norm: Norm,
    clock: _Clock,
) -> float:
    """Hairer, Norsett & Wanner II.4 as torchdiffeq does it (one evaluation of f). torchdiffeq passes the
    method's order minus one, so the exponent is 1 / order."""
    scale = torch.abs(y0).mul_(rtol).add_(atol)
    d0, d1 = norm(y0 / scale), norm(f0 / scale)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1).to(y0.dtype)
    # h0 stays a device tensor: the trial step and its time are computed without reading it on the host
    f1 = func(clock.after(t0, h0), torch.addcmul(y0, f0, h0))
    d2 = norm((f1 - f0) / scale) / h0
    h1 = torch.where(
        (d1 <= 1e-15) & (d2 <= 1e-15), torch.clamp(h0 * 1e-3, min=1e-6), (0.01 / torch.maximum(d1, d2)) ** (1.0 / order)
    )
    return float(torch.minimum(100 * h0, h1))  # the solve's one synchronisation before its first step


class _ErrorNorm:
    """norm(error / (atol + rtol * max(|y0|, |y1|))) without autograd, in reused buffers.

    Computed as norm((error / rtol) / (atol / rtol + max(|y0|, |y1|))), with |y0| kept from the step that
    accepted y0: two passes over the state fewer per step than the formula as written. Reading the result
    as a Python float is the step's one host synchronisation: the accept/reject decision.
    """

    def __init__(self, y0: torch.Tensor, rtol: float, atol: float, norm: Norm | None) -> None:
        self.rtol, self.atol, self.norm = rtol, atol, norm or rms_norm
        self.error, self.tolerance, self.abs_y1 = (torch.empty_like(y0) for _ in range(3))
        self.abs_y0 = torch.abs(y0).detach()

    @torch.no_grad()
    def __call__(self, k: list[torch.Tensor], c_error: tuple[float, ...], dt: float, y1: torch.Tensor) -> float:
        scale = dt / self.rtol
        first = True
        for kj, w in zip(k, c_error, strict=True):
            if w != 0.0:
                if first:
                    torch.mul(kj, scale * w, out=self.error)
                    first = False
                else:
                    self.error.add_(kj, alpha=scale * w)
        torch.maximum(self.abs_y0, torch.abs(y1, out=self.abs_y1), out=self.tolerance)
        return float(self.norm(self.error.div_(self.tolerance.add_(self.atol / self.rtol))))

    def accepted(self) -> None:
        """y1 became y0: so did its absolute value."""
        self.abs_y0, self.abs_y1 = self.abs_y1, self.abs_y0


def _callback(func: Func, name: str) -> Callable | None:
    """torchdiffeq's step callback `name` of `func`, or None when it has none (torchdiffeq installs a no-op)."""
    from torchdiffeq._impl.misc import _null_callback

    callback = getattr(func, name, None)
    return None if callback is None or callback is _null_callback else callback


def solve_adaptive(
    func: Func,
    y0: torch.Tensor,
    t0: float,
    t1: float,
    method: str,
    rtol: float,
    atol: float,
    max_steps: int,
    min_step: float = 0.0,
    first_step: float | None = None,
    *,
    max_step: float = math.inf,
    safety: float = SAFETY,
    ifactor: float = IFACTOR,
    dfactor: float = DFACTOR,
    norm: Norm | None = None,
    autonomous: bool = False,
    record: StepRecorder | None = None,
) -> torch.Tensor:
    """y(t1) by adaptive steps that are torchdiffeq's own: the same initial step, error estimate, `norm`,
    controller and options, so the accepted and rejected steps, and with them FNFE and BNFE, are the
    same; like torchdiffeq the last step may pass t1, and y(t1) is read from the same 4th-order dense
    output. Raises SolveFailed on underflow, too many steps or a non-finite state.

    `norm` measures the scaled error (torchdiffeq's `norm` option; None is the RMS over the whole state,
    torchdiffeq's default for one tensor). `func.callback_step`, `callback_accept_step` and
    `callback_reject_step` are called as torchdiffeq calls them, if `func` has them. `record` is told of
    every accepted step (see StepRecorder).

    What differs is how, not what: stage inputs are running in-place sums, the error estimate and its
    norm run without autograd in reused buffers (no gradient flows through step-size control in
    torchdiffeq either), the dense output is fitted only where it is read, and each step synchronises
    with the host once (the accept/reject decision).
    """
    control = {"max_step": max_step, "safety": safety, "ifactor": ifactor, "dfactor": dfactor}
    solve = AdaptiveSolve(
        func, y0, t0, t1, method, rtol, atol, min_step, first_step, norm, _Clock(y0, t0, autonomous), record, **control
    )
    return solve.advance(t1, max_steps)


class AdaptiveSolve:
    """One adaptive solve read at increasing times, as torchdiffeq's RK solvers are read: `advance(t)` steps
    only while the last accepted step ends before t, and a time inside that step is read from its dense
    output, so several output times cost the steps of one solve (torchdiffeq's NFE), not a solve each."""

    def __init__(
        self,
        func: Func,
        y0: torch.Tensor,
        t0: float,
        t_end: float,
        method: str,
        rtol: float,
        atol: float,
        min_step: float,
        first_step: float | None,
        norm: Norm | None,
        clock: _Clock,
        record: StepRecorder | None,
        *,
        max_step: float = math.inf,
        safety: float = SAFETY,
        ifactor: float = IFACTOR,
        dfactor: float = DFACTOR,
    ) -> None:
        self.func, self.tableau, self.clock, self.record, self.t_end = (
            func,
            ADAPTIVE_TABLEAUS[method],
            clock,
            record,
            t_end,
        )
        self.min_step, self.max_step, self.safety, self.ifactor, self.dfactor = (
            min_step,
            max_step,
            safety,
            ifactor,
            dfactor,
        )
        self.on_step, self.on_accept, self.on_reject = (
            _callback(func, name) for name in ("callback_step", "callback_accept_step", "callback_reject_step")
        )
        self.buffers = _Buffers(y0, not torch.is_grad_enabled())
        self.error_norm = _ErrorNorm(y0, rtol, atol, norm)
        self.t, self.y = t0, y0
        self.f0 = func(clock(t0), y0)
        self.dt = (
            first_step
            if first_step is not None
            else _initial_step(func, t0, y0, self.f0, self.tableau.order, rtol, atol, norm or rms_norm, clock)
        )
        self.trial_not_finite = not math.isfinite(self.dt)  # f returned NaN or infinity near y0
        if self.trial_not_finite:
            _check_finite(y0, self.f0)
        # (t, dt, y0, y1, k, kept) of the last accepted step: outputs inside it are read from its dense output
        self.last: tuple | None = None

    def advance(self, t_out: float, max_steps: int) -> torch.Tensor:
        """y(t_out) for t_out at or after the end of the previous `advance`, in at most `max_steps` tries."""
        steps = 0
        while self.t < t_out:
            if steps >= max_steps:
                _fail_not_finite_or(self.trial_not_finite, f"max_num_steps exceeded ({steps}>={max_steps})")
            self.attempt()
            steps += 1
        if self.last is None or self.t == t_out:
            return self.y
        t, dt, y0, y1, k, _ = self.last
        return _dense_output(y0, y1, k, dt, self.tableau.mid, (t_out - t) / dt)

    def attempt(self) -> bool:
        """One step from the current point, accepted (True) or rejected; then the next step size."""
        t, y, tableau, buffers, clock = self.t, self.y, self.tableau, self.buffers, self.clock
        dt = min(max(self.dt if math.isfinite(self.dt) else self.min_step, self.min_step), self.max_step)
        if not t + dt > t:
            _fail_not_finite_or(self.trial_not_finite, f"underflow in dt {dt}")
        if self.on_step:
            self.on_step(clock.tensor(t), y, clock.tensor(dt))
        k, last_input = _stages(self.func, t, y, self.f0, dt, tableau, buffers, clock)
        if tableau.fsal:
            y1 = last_input
        else:
            buffers.give(last_input)
            y1 = _combine(y, k, tableau.c_sol, dt, buffers.take())
        ratio = self.error_norm(k, tableau.c_error, dt, y1)
        self.trial_not_finite = not math.isfinite(ratio)
        if self.trial_not_finite:
            # A trial step may overflow: it is rejected and the step shrinks, as in torchdiffeq. A non-finite
            # state or slope at the accepted point fails at once: no smaller step can fix it.
            _check_finite(y, self.f0)
        accepted = ratio <= 1 or dt <= self.min_step
        if accepted:
            if self.on_accept:
                self.on_accept(clock.tensor(t), y, clock.tensor(dt))
            passed = t + dt > self.t_end
            kept = self.record is not None and self.record(t, dt, y, self.f0, (self.t_end - t) / dt if passed else None)
            if self.last is not None and not self.last[5]:
                buffers.give(self.last[2])  # the previous step's start: no output time falls in that step any more
            self.last = (t, dt, y, y1, k, kept)
            # torchdiffeq takes the last stage as f(t1, y1) for every tableau (exact only for FSAL ones such
            # as dopri5); doing the same keeps NFE and trajectories comparable method for method.
            self.error_norm.accepted()
            self.t, self.y, self.f0 = t + dt, y1, k[-1]
        else:
            if self.on_reject:
                self.on_reject(clock.tensor(t), y, clock.tensor(dt))
            buffers.give(y1)
        if ratio == 0:
            factor = self.ifactor
        elif math.isfinite(ratio):
            factor = min(
                self.ifactor, max(self.safety / ratio ** (1.0 / tableau.order), 1.0 if ratio < 1 else self.dfactor)
            )
        else:
            factor = self.dfactor
        self.dt = min(max(dt * factor, self.min_step), self.max_step)
        return accepted


def _quartic_weights(x: float) -> tuple[float, float, float, float, float]:
    """Weights of y0, y1, y_mid, f0 and f1 in torchdiffeq's dense output at the fraction x of a step (its
    `_interp_fit` coefficients collected per term)."""
    return (
        1 - 11 * x**2 + 18 * x**3 - 8 * x**4,
        -5 * x**2 + 14 * x**3 - 8 * x**4,
        16 * x**2 - 32 * x**3 + 16 * x**4,
        x - 4 * x**2 + 5 * x**3 - 2 * x**4,
        x**2 - 3 * x**3 + 2 * x**4,
    )


def _quartic_slopes(x: float) -> tuple[float, float, float, float, float]:
    """The derivatives of `_quartic_weights` with respect to x."""
    return (
        -22 * x + 54 * x**2 - 32 * x**3,
        -10 * x + 42 * x**2 - 32 * x**3,
        32 * x - 96 * x**2 + 64 * x**3,
        1 - 8 * x + 15 * x**2 - 8 * x**3,
        2 * x - 9 * x**2 + 8 * x**3,
    )


def _stage_weights(w_mid: float, w_f0: float, w_f1: float, mid: tuple[float, ...]) -> list[float]:
    weights = [w_mid * m for m in mid]
    weights[0] += w_f0
    weights[-1] += w_f1
    return weights


def _dense_output(
    y0: torch.Tensor, y1: torch.Tensor, k: list[torch.Tensor], dt: float, mid: tuple[float, ...], x: float
) -> torch.Tensor:
    """The solution at the fraction `x` of a step, from torchdiffeq's dense output: the quartic through y0,
    the midpoint estimate y_mid = y0 + dt * sum(mid_j k_j) and y1, with slopes k_0 and k_last at the ends.

    The quartic at a fixed x is a linear combination of those five; written as one it costs a pass per
    stage instead of fitting five coefficient tensors.
    """
    w_y0, w_y1, w_mid, w_f0, w_f1 = _quartic_weights(x)
    weights = [w_y0 + w_mid - 1.0, w_y1, *(dt * w for w in _stage_weights(w_mid, w_f0, w_f1, mid))]  # y0 is the base
    return _combine(y0, [y0, y1, *k], tuple(weights), 1.0)


def _dense_slope(
    y0: torch.Tensor, y1: torch.Tensor, k: list[torch.Tensor], dt: float, mid: tuple[float, ...], x: float
) -> torch.Tensor:
    """d/dt of `_dense_output` at the fraction x: what torchdiffeq's output at time t changes by per unit of t."""
    w_y0, w_y1, w_mid, w_f0, w_f1 = _quartic_slopes(x)
    weights = [(w_y0 + w_mid) / dt, w_y1 / dt, *_stage_weights(w_mid, w_f0, w_f1, mid)]
    return _weighted_sum([y0, y1, *k], weights)


NOT_FINITE = "non-finite values in state `y`"


def _check_finite(*tensors: torch.Tensor) -> None:
    if not all(bool(torch.isfinite(x).all()) for x in tensors):
        raise SolveFailed(f"{NOT_FINITE}: the ODE state or its slope became NaN or infinite")


def _fail_not_finite_or(trial_not_finite: bool, message: str) -> None:
    """The step size collapsed: because f kept returning NaN or infinity (even for tiny steps), or truly."""
    if trial_not_finite:
        raise SolveFailed(f"{NOT_FINITE}: f returned NaN or infinity however small the step ({message})")
    raise SolveFailed(message)


# torchdiffeq's step-size controller options an adaptive fused solve takes as keyword arguments.
CONTROL_OPTIONS = ("min_step", "max_step", "safety", "ifactor", "dfactor")
# torchdiffeq's options the adapter honours (torchdiffeq passes all of them to every solver it builds).
ADAPTER_OPTIONS = frozenset({*CONTROL_OPTIONS, "norm", "first_step", "max_num_steps", "step_size", "dtype", "perturb"})
INTERPOLATIONS = ("linear", "cubic")  # torchdiffeq's fixed-grid `interp` option
# torchdiffeq's own words
FIXED_EVENT_NEEDS_STEP = (
    "Event handling for fixed step solvers currently requires `step_size` to be provided in options."
)


def _refusal(method: str, options: dict) -> str | None:
    """Why the adapter cannot answer as torchdiffeq's `method` would with these options, or None."""
    if "interp" in options:
        if method in ADAPTIVE_TABLEAUS:
            return (
                f"interp applies to fixed-step methods only (torchdiffeq's {method} ignores it with a warning); "
                "drop the option: an adaptive method reads every output time from its dense output"
            )
        if options["interp"] not in INTERPOLATIONS:
            return f"Unknown interpolation method {options['interp']}; use interp='linear' or 'cubic'"
    unsupported = sorted(
        k for k, v in options.items() if k not in {*ADAPTER_OPTIONS, "interp"} or (k == "perturb" and v)
    )
    return unsupported_fused_options(unsupported) if unsupported else None


class TorchdiffeqAdapter:
    """Makes the fused solver usable by torchdiffeq's `odeint`, `odeint_adjoint` and `odeint_event` under the
    name `fused_<method>`, answering as torchdiffeq's `<method>` does: the adjoint method (and its O(1)
    memory) comes from torchdiffeq unchanged while both its solves use the fused stepping.

    Like torchdiffeq's solvers, an adaptive method makes one solve for all output times and reads each from
    the dense output of the step it falls in; a fixed-step method steps on torchdiffeq's grid (`step_size`
    from t[0], or the output times themselves without it) and interpolates the outputs (`interp`); output
    times that require gradients get them (through the interpolation, and through f's time argument); step
    callbacks are called where torchdiffeq calls them; `event_fn` is served by `integrate_until_event`.
    Every option torchdiffeq hands over is honoured (the adjoint's mixed norm included) or refused:
    `grid_constructor`, `step_t`, `jump_t` and `perturb=True` need torchdiffeq's own solvers.
    """

    method = "dopri5"  # set per registered subclass

    def __init__(self, func: Func, y0: torch.Tensor, rtol, atol, **options) -> None:
        refusal = _refusal(self.method, options)
        if refusal:
            raise ValueError(refusal)
        from torchdiffeq._impl.misc import _rms_norm

        self.func, self.y0, self.rtol, self.atol = _without_perturb_wrapper(func, y0), y0, float(rtol), float(atol)
        norm = options.get("norm")
        self.norm = None if norm is _rms_norm else norm  # torchdiffeq's default for one tensor: our buffered RMS
        self.step_size, self.max_steps = options.get("step_size"), options.get("max_num_steps", 2**31 - 1)
        self.min_step = float(options.get("min_step", 0.0))
        self.control = {k: float(options[k]) for k in CONTROL_OPTIONS if k in options and k != "min_step"}
        self.first_step = options.get("first_step")
        self.interp = options.get("interp", "linear")

    @classmethod
    def valid_callbacks(cls) -> set[str]:
        # torchdiffeq's fixed-grid solvers call callback_step only (and warn of the others); its RK solvers all three
        if cls.method in FIXED_TABLEAUS:
            return {"callback_step"}
        return {"callback_step", "callback_accept_step", "callback_reject_step"}

    def integrate(self, t: torch.Tensor) -> torch.Tensor:
        # Filled as it goes, as torchdiffeq does: an output is copied out before its buffer can be reused.
        solution = torch.empty(len(t), *self.y0.shape, dtype=self.y0.dtype, device=self.y0.device)
        solution[0] = self.y0
        time_graph = t.requires_grad and torch.is_grad_enabled()
        if self.method in FIXED_TABLEAUS:
            self._integrate_fixed(t, solution, time_graph)
        else:
            self._integrate_adaptive(t, solution, time_graph)
        return solution

    def _adaptive_solve(self, t0: float, t_end: float, clock: _Clock) -> AdaptiveSolve:
        return AdaptiveSolve(
            self.func,
            self.y0,
            t0,
            t_end,
            self.method,
            self.rtol,
            self.atol,
            self.min_step,
            self.first_step,
            self.norm,
            clock,
            None,
            **self.control,
        )

    def _integrate_adaptive(self, t: torch.Tensor, solution: torch.Tensor, time_graph: bool) -> None:
        times = t.tolist()
        clock = _TimeGraphClock(self.y0, times[0], t[0]) if time_graph else _Clock(self.y0, times[0], False)
        solve = self._adaptive_solve(times[0], times[-1], clock)
        for j in range(1, len(times)):
            y = solve.advance(times[j], self.max_steps)  # torchdiffeq counts max_num_steps per output time
            if time_graph:
                # The output's dependence on its time and on t[0] (where its step starts), as torchdiffeq's
                # interpolation has it: zero in value, the dense output's slope in gradient.
                step_start, dt, y_start, y_end, k, _ = solve.last
                offset = t[j] - clock(step_start)
                slope = _dense_slope(y_start, y_end, k, dt, solve.tableau.mid, (times[j] - step_start) / dt)
                y = y + (offset - offset.detach()).to(y.dtype) * slope.detach()
            solution[j] = y

    def _grid(self, t: torch.Tensor) -> torch.Tensor:
        """torchdiffeq's fixed grid: `step_size` from t[0] with the last step shortened, else the output times."""
        from torchdiffeq._impl.solvers import FixedGridODESolver

        if self.step_size is None:
            return t
        return FixedGridODESolver._grid_constructor_from_step_size(self.step_size)(self.func, self.y0, t)

    def _integrate_fixed(self, t: torch.Tensor, solution: torch.Tensor, time_graph: bool) -> None:
        grid = self._grid(t)
        times, grid = (t, grid) if time_graph else (t.tolist(), grid.tolist())
        tableau = FIXED_TABLEAUS[self.method]
        buffers = _Buffers(self.y0, not torch.is_grad_enabled())
        clock = _Clock(self.y0, 0.0, autonomous=False)
        to_time = (lambda v: v) if time_graph else clock.tensor
        on_step = _callback(self.func, "callback_step")
        j, y = 1, self.y0
        for t0, t1 in itertools.pairwise(grid):
            dt = t1 - t0
            if on_step:
                on_step(to_time(t0), y, to_time(dt))
            if time_graph:
                y1, f0 = _fixed_step_in_time_graph(self.func, t0, dt, y, tableau)
            else:
                y1, f0 = _fixed_step(self.func, t0, dt, y, tableau, buffers, clock)
            while j < len(times) and t1 >= times[j]:
                solution[j] = self._interpolant(t0, y, f0, t1, y1, to_time)(times[j])
                j += 1
            buffers.give(y)
            y = y1

    def _interpolant(self, t0, y0, f0, t1, y1, to_time: Callable) -> Callable:
        """y(t) for t0 < t <= t1 by torchdiffeq's own formulas (its methods do not use `self`); cubic
        interpolation evaluates f(t1, y1) here, as torchdiffeq does each time it builds one."""
        from torchdiffeq._impl.solvers import FixedGridODESolver

        if self.interp == "linear":
            return functools.partial(FixedGridODESolver._linear_interp, None, t0, t1, y0, y1)
        f1 = self.func(to_time(t1), y1)
        return functools.partial(FixedGridODESolver._cubic_hermite_interp, None, t0, y0, f0, t1, y1, f1)

    def integrate_until_event(self, t0: torch.Tensor, event_fn: Callable) -> tuple[torch.Tensor, torch.Tensor]:
        """The first time after t0 where event_fn(t, y) changes sign, found as torchdiffeq finds it (bisection on
        the last step's interpolant to atol), and [y0, y(event)]: what `odeint_event` needs."""
        from torchdiffeq._impl.event_handling import find_event

        if self.method in FIXED_TABLEAUS:
            return self._fixed_until_event(t0, event_fn, find_event)
        start = float(t0.detach())
        solve = self._adaptive_solve(start, math.inf, _Clock(self.y0, start, False))

        def at(value: float) -> torch.Tensor:
            return torch.tensor(value, dtype=torch.float64, device=self.y0.device)

        if event_fn(at(solve.t), solve.y) == 0:
            return at(solve.t), torch.stack([self.y0, solve.y])
        sign0 = torch.sign(event_fn(at(solve.t), solve.y))
        steps = 0
        while sign0 == torch.sign(event_fn(at(solve.t), solve.y)):
            if steps >= self.max_steps:
                raise SolveFailed(f"max_num_steps exceeded ({steps}>={self.max_steps})")
            solve.attempt()
            steps += 1
        step_start, dt, y_start, y_end, k, _ = solve.last

        def interpolant(t: torch.Tensor) -> torch.Tensor:
            return _dense_output(y_start, y_end, k, dt, solve.tableau.mid, float((t - step_start) / dt))

        event_t, y_event = find_event(interpolant, sign0, at(step_start), at(step_start + dt), event_fn, self.atol)
        return event_t, torch.stack([self.y0, y_event])

    def _fixed_until_event(self, t0: torch.Tensor, event_fn: Callable, find_event: Callable):
        if self.step_size is None:
            raise ValueError(FIXED_EVENT_NEEDS_STEP)
        tableau, buffers, clock = FIXED_TABLEAUS[self.method], _Buffers(self.y0, False), _Clock(self.y0, 0.0, False)
        t0, y0, dt = t0.type_as(self.y0.abs()), self.y0, self.step_size
        sign0 = torch.sign(event_fn(t0, y0))
        for _ in range(20000):  # torchdiffeq's limit
            t1 = t0 + dt
            y1, f0 = _fixed_step(self.func, float(t0.detach()), float((t1 - t0).detach()), y0, tableau, buffers, clock)
            if sign0 != torch.sign(event_fn(t1, y1)):
                interpolant = self._interpolant(t0, y0, f0, t1, y1, lambda v: v)
                event_t, y_event = find_event(interpolant, sign0, t0, t1, event_fn, self.atol)
                return event_t, torch.stack([self.y0, y_event])
            t0, y0 = t1, y1
        raise RuntimeError("Reached maximum number of iterations 20000.")


class _Unperturbed:
    """torchdiffeq's outermost wrapper of f minus its work: `_PerturbFunc` computes `y.abs()` on every call only
    to read a dtype (a pass over the state per evaluation, the adjoint's whole augmented state included), and
    otherwise only serves `perturb=True`, which the adapter refuses. Keeps the step callbacks torchdiffeq
    attached to the wrapper."""

    def __init__(self, wrapper: torch.nn.Module) -> None:
        from torchdiffeq._impl.misc import _all_callback_names

        self.evaluate = wrapper.base_func
        for name in _all_callback_names:
            setattr(self, name, getattr(wrapper, name, None))

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.evaluate(t, y)


def _without_perturb_wrapper(func: Func, y0: torch.Tensor) -> Func:
    from torchdiffeq._impl.misc import _PerturbFunc

    # the wrapper also casts a complex t to real; the fused clock already gives t the state's (real) dtype
    return _Unperturbed(func) if isinstance(func, _PerturbFunc) and not y0.is_complex() else func


def _register_with_torchdiffeq() -> None:
    from torchdiffeq._impl.odeint import SOLVERS

    for name in FUSED_METHODS:
        SOLVERS.setdefault(f"fused_{name}", type(f"Fused_{name}", (TorchdiffeqAdapter,), {"method": name}))


_register_with_torchdiffeq()
