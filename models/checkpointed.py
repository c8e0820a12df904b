"""Checkpointed backpropagation through a fused solve: the exact gradient of the forward solve, without its graph.

Direct backpropagation keeps every stage's activations of every step (accepted and rejected) until the
backward pass; the adjoint keeps nothing but solves another ODE backwards, whose gradient is not the
gradient of the forward solve. Here (discretise-then-optimise with stored states, as in ANODE and ACA) the
forward solve runs without autograd and keeps each accepted step's (t, dt) and its starting state (and, for
adaptive methods, the slope f0 it started from); the backward pass re-runs the accepted steps with autograd,
from the last to the first, and backpropagates through each one alone before the next. The re-run takes the
same arithmetic on the same inputs, so the gradient equals direct backpropagation's to round-off; it costs
one more evaluation of the accepted steps' stages (counted as backward NFE) and no backward solve.

With `checkpoints=K` only K states are kept (every s-th accepted step, s doubling whenever K would be
exceeded, since an adaptive solve's length is not known in advance); the backward pass recomputes the
states of one segment between two kept ones without autograd, then backpropagates through it. Memory is
then K + s states (s <= 2 N / K for N accepted steps) for one more evaluation of most steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from models.fused_rk import (
    ADAPTIVE_TABLEAUS,
    FIXED_TABLEAUS,
    Func,
    StepRecorder,
    _Buffers,
    _Clock,
    _combine,
    _dense_output,
    _stages,
)

Step = tuple[float, float, "float | None"]  # (t, dt, fraction read from the dense output or None)
ForwardSolve = Callable[[torch.Tensor, StepRecorder], torch.Tensor]


class Trajectory:
    """A StepRecorder: (t, dt, x) of every accepted step; (y, f0) at every `stride`-th one, at most `limit`."""

    def __init__(self, limit: int | None) -> None:
        self.limit, self.stride = limit, 1
        self.steps: list[Step] = []
        self.kept: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def __call__(self, t: float, dt: float, y: torch.Tensor, f0: torch.Tensor | None, x: float | None) -> bool:
        index = len(self.steps)
        self.steps.append((t, dt, x))
        if index % self.stride:
            return False
        self.kept[index] = (y, f0)
        if self.limit is not None and len(self.kept) > self.limit:
            self.stride *= 2
            self.kept = {i: v for i, v in self.kept.items() if i % self.stride == 0}
        return index in self.kept


class _Stepper:
    """One accepted step of a method, re-run from its (y, f0): (y1, the next step's f0), or y(t1) for a last
    step read from the dense output. The same operations as models.fused_rk's solves, without buffers."""

    def __init__(self, func: Func, method: str, t0: float, like: torch.Tensor, autonomous: bool) -> None:
        self.func, self.adaptive = func, method in ADAPTIVE_TABLEAUS
        self.tableau = ADAPTIVE_TABLEAUS[method] if self.adaptive else FIXED_TABLEAUS[method]
        self.clock = _Clock(like, t0, autonomous)

    def __call__(
        self, step: Step, y: torch.Tensor, f0: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        t, dt, x = step
        if f0 is None:
            f0 = self.func(self.clock(t), y)
        k, last_input = _stages(self.func, t, y, f0, dt, self.tableau, _Buffers(y, False), self.clock)
        y1 = last_input if self.adaptive and self.tableau.fsal else _combine(y, k, self.tableau.c_sol, dt)
        if x is not None:
            return _dense_output(y, y1, k, dt, self.tableau.mid, x), None
        return y1, (k[-1] if self.adaptive else None)


@contextmanager
def _buffers_restored(func: Func) -> Iterator[None]:
    """Re-running f must not count twice in its modules' state (batch norm's running statistics)."""
    buffers = list(func.buffers()) if isinstance(func, nn.Module) else []
    saved = [b.detach().clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in zip(buffers, saved, strict=True):
                b.copy_(value)


class _CheckpointedSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, solve: ForwardSolve, stepper: _Stepper, limit: int | None, y0: torch.Tensor, *params):
        trajectory = Trajectory(limit)
        y = solve(y0, trajectory)  # autograd is off inside Function.forward: no graph, no saved activations
        ctx.stepper, ctx.steps, ctx.params = stepper, trajectory.steps, params
        ctx.autocast = _autocast_state(y0.device.type)
        ctx.kept = sorted(trajectory.kept)
        # saved through autograd (not kept on ctx) so that saved-tensor hooks see and count them
        ctx.save_for_backward(*(trajectory.kept[i][0] for i in ctx.kept), *(trajectory.kept[i][1] for i in ctx.kept))
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: torch.Tensor):
        stepper, steps, params = ctx.stepper, ctx.steps, ctx.params
        saved = ctx.saved_tensors
        states, slopes = saved[: len(ctx.kept)], saved[len(ctx.kept) :]
        grad_params: list[torch.Tensor | None] = [None] * len(params)
        grads: tuple[torch.Tensor | None, torch.Tensor | None] = (grad_y, None)  # into (y1, f1) of a step
        bounds = [*ctx.kept, len(steps)]
        # the backward pass runs outside the forward's autocast (if any): the re-run must compute as it did
        with _buffers_restored(stepper.func), torch.autocast(**ctx.autocast):
            for segment in reversed(range(len(ctx.kept))):
                start, end = bounds[segment], bounds[segment + 1]
                inputs = [(states[segment], slopes[segment])]
                with torch.no_grad():  # the states between two kept ones
                    for i in range(start, end - 1):
                        inputs.append(stepper(steps[i], *inputs[-1]))
                for i in reversed(range(start, end)):
                    y, f0 = inputs.pop()
                    grads = _backprop_step(stepper, steps[i], y, f0, grads, params, grad_params)
            grad_y0, grad_f0 = grads
            if grad_f0 is not None:  # the first slope f0 = f(t0, y0) of an adaptive solve
                with torch.enable_grad():
                    y0 = states[0].detach().requires_grad_()
                    f0 = stepper.func(stepper.clock(steps[0][0]), y0)
                    grad_y0 = _accumulate(grad_y0, _grad([f0], [grad_f0], [y0], params, grad_params)[0])
        return (None, None, None, grad_y0, *grad_params)


def _autocast_state(device_type: str) -> dict:
    """torch.autocast's arguments that reproduce the autocast state in force now on `device_type`."""
    return {
        "device_type": device_type,
        "dtype": torch.get_autocast_dtype(device_type),
        "enabled": torch.is_autocast_enabled(device_type),
        "cache_enabled": torch.is_autocast_cache_enabled(),
    }


def _accumulate(total: torch.Tensor | None, part: torch.Tensor | None) -> torch.Tensor | None:
    if part is None:
        return total
    return part if total is None else total + part


def _grad(outputs, grad_outputs, inputs, params, grad_params) -> list[torch.Tensor | None]:
    """Gradients with respect to `inputs`; those of the parameters are added into `grad_params`."""
    pairs = [
        (o, g)
        for o, g in zip(outputs, grad_outputs, strict=True)
        if o is not None and g is not None and o.requires_grad
    ]
    if not pairs:
        return [None] * len(inputs)
    found = torch.autograd.grad(
        [o for o, _ in pairs], [*inputs, *params], [g for _, g in pairs], allow_unused=True, materialize_grads=False
    )
    for j, g in enumerate(found[len(inputs) :]):
        grad_params[j] = _accumulate(grad_params[j], g)
    return list(found[: len(inputs)])


def _backprop_step(stepper: _Stepper, step: Step, y, f0, grads, params, grad_params):
    """Re-run one step with autograd and backpropagate `grads` (into its y1 and f1) to its y and f0."""
    with torch.enable_grad():
        y = y.detach().requires_grad_()
        f0 = f0.detach().requires_grad_() if f0 is not None else None
        outputs = stepper(step, y, f0)
        found = _grad(outputs, grads, [y] if f0 is None else [y, f0], params, grad_params)
    return found[0], (found[1] if f0 is not None else None)


def solve_checkpointed(
    func: Func,
    y0: torch.Tensor,
    solve: ForwardSolve,
    method: str,
    t0: float = 0.0,
    checkpoints: int | None = None,
    autonomous: bool = False,
) -> torch.Tensor:
    """`solve(y0, recorder)` (a fused solve of `method` from t0 that reports its accepted steps to `recorder`)
    with checkpointed backpropagation: gradients reach y0 and the parameters of `func` (an nn.Module)."""
    params = tuple(p for p in func.parameters() if p.requires_grad) if isinstance(func, nn.Module) else ()
    if not torch.is_grad_enabled() or not (y0.requires_grad or params):
        return solve(y0, None)
    stepper = _Stepper(func, method, t0, y0, autonomous)
    return _CheckpointedSolve.apply(solve, stepper, checkpoints, y0, *params)
