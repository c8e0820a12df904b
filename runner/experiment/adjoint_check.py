"""How far a trained ODEnet's adjoint gradient is from direct backpropagation through the same solve.

The adjoint method re-solves the ODE backwards instead of storing the forward pass. It saves memory, but
its gradient is only as good as that backward solve, and it can be unstable (the backward state need
not retrace the forward one). At the end of training, a run trained with the adjoint measures on one
batch the relative error of its adjoint gradient against direct backpropagation with the same solver
and tolerance, and is flagged when the error passes a threshold. On the fused path it measures the
checkpointed gradient's error too (round-off: it is the gradient of the forward solve), and a run trained
with the checkpointed gradient measures that alone.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from data.tensors import Split
from models.ode_block import ode_blocks, set_solver
from runner.experiment.precision import reference_numerics


def parameter_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    grads = [
        p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=p.device)
        for p in model.parameters()
        if p.requires_grad
    ]
    model.zero_grad(set_to_none=True)
    return torch.cat(grads)


# Direct backpropagation keeps every step's activations: the check's samples are bounded, so that a run that chose
# the adjoint or checkpointing because direct backpropagation of a whole batch did not fit can still be checked.
MAX_CHECK_SAMPLES = 64


def adjoint_gradient_check(
    model: nn.Module, split: Split, batch_size: int, threshold: float, max_samples: int = MAX_CHECK_SAMPLES
) -> dict[str, Any] | None:
    """{"gradient", "relative_error", "threshold", "flagged", "batch_size"} and, on the fused path,
    "checkpoint_relative_error", for a model whose ODE blocks use the adjoint or the checkpointed gradient;
    None for any other model. relative_error is that of the run's own gradient method. The model's weights,
    solver and mode are left as they were.

    It measures on the first min(batch_size, max_samples) validation samples, halving them while they do not fit
    in memory; where not even one does: {"gradient", "threshold", "skipped"} (no error, no flag).
    """
    blocks = ode_blocks(model)
    if not blocks or blocks[0].solver.gradient == "direct":
        return None
    samples = max(1, min(batch_size, max_samples, len(split)))
    while True:
        try:
            return _measure(model, split.x[:samples], split.y[:samples], threshold)
        except torch.OutOfMemoryError:
            model.zero_grad(set_to_none=True)
            if split.x.device.type == "cuda":
                torch.cuda.empty_cache()
            if samples == 1:
                return {
                    "gradient": blocks[0].solver.gradient,
                    "threshold": threshold,
                    "skipped": "out of memory: direct backpropagation of one sample does not fit",
                }
            samples //= 2


def _measure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threshold: float) -> dict[str, Any]:
    trained_solver = ode_blocks(model)[0].solver
    was_training = model.training
    model.eval()  # no batch-norm statistics are updated by the check
    methods = [trained_solver.gradient] + (
        ["checkpoint"] if trained_solver.fused and trained_solver.gradient != "checkpoint" else []
    )
    try:
        found = {}
        with reference_numerics(x.device):  # float32 without TF32 or autocast, whatever the run trained with
            for method in ["direct", *methods]:
                set_solver(model, replace(trained_solver, gradient=method, adjoint=False))
                found[method] = parameter_gradients(model, x, y)
    finally:
        set_solver(model, trained_solver)
        model.train(was_training)
    direct = found.pop("direct")
    errors = {m: float((g - direct).norm() / direct.norm().clamp_min(1e-30)) for m, g in found.items()}
    error = errors[trained_solver.gradient]
    check = {
        "gradient": trained_solver.gradient,
        "relative_error": error,
        "threshold": threshold,
        "flagged": error > threshold,
        "batch_size": len(y),
    }
    if "checkpoint" in errors:
        check["checkpoint_relative_error"] = errors["checkpoint"]
    return check


def describe(check: dict[str, Any]) -> str:
    if "skipped" in check:
        return f"{check['gradient']} gradient check skipped: {check['skipped']}"
    verdict = (
        f"ABOVE the threshold {check['threshold']:g}: the adjoint's gradients are not the gradients of the forward "
        f"solve; lower solver.rtol/atol, or train with solver.gradient=checkpoint (exact) or direct"
        if check["flagged"]
        else f"within the threshold {check['threshold']:g}"
    )
    checkpoint = (
        f"; the checkpointed gradient's: {check['checkpoint_relative_error']:.3g}"
        if "checkpoint_relative_error" in check and check.get("gradient", "adjoint") != "checkpoint"
        else ""
    )
    name = "adjoint" if check.get("gradient", "adjoint") == "adjoint" else "checkpointed"
    return (
        f"{name} gradient check: relative error {check['relative_error']:.3g} against direct backpropagation "
        f"on {check['batch_size']} validation samples, {verdict}{checkpoint}"
    )
