"""Trajectories of the ODE state from t=0 to T under the training solver and an accurate reference solve.

Two trajectories of an autonomous ODE in the plane never cross (the solution through a point is unique), so
crossing pairs under the training solver are the first sign that the model has stopped being an ODE
("ResNet After All"; Dupont et al. 2019). States of more than two dimensions are drawn on their first two
principal components, without a crossing count (a projection crosses where the flow does not).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchdiffeq import odeint

from data.tensors import DataBundle
from models.ode_block import ODEBlock, ode_blocks
from models.solvers import SolverSpec
from odeflow.ode_figures import trajectories_png
from runner.experiment.adaptation import block_input

POINTS = 100  # test points drawn (and compared pairwise for crossings)
REFERENCE_TOL = 1e-6  # dopri5 at rtol = atol = this: the reference solve
REFERENCE_TIMES = 65


def crossing_pairs(paths: np.ndarray, tolerance: float | None = None) -> int:
    """How many pairs of 2-D polylines (paths: points x times x 2) cross somewhere.

    Two segments cross when each one's ends lie on opposite sides of the other, each end farther than
    `tolerance` from the other's line (default 1e-3 of the picture's diagonal): trajectories of a true ODE that
    converge onto one curve come arbitrarily close, and their sampled chords would otherwise cross.
    """
    if tolerance is None:
        flat = paths.reshape(-1, 2)
        tolerance = 1e-3 * float(np.linalg.norm(flat.max(axis=0) - flat.min(axis=0)))
    starts, ends = paths[:, :-1], paths[:, 1:]  # segments: points x segments x 2
    lengths = np.linalg.norm(ends - starts, axis=-1)
    count = 0
    for i in range(len(paths) - 1):
        p1, p2 = starts[i][None, :, None], ends[i][None, :, None]  # 1 x segments x 1 x 2
        q1, q2 = starts[i + 1 :][:, None], ends[i + 1 :][:, None]  # others x 1 x segments x 2
        p_length, q_length = lengths[i][None, :, None], lengths[i + 1 :][:, None]
        apart = lambda a, b: (a * b < 0) & (np.abs(a) > tolerance) & (np.abs(b) > tolerance)  # noqa: E731
        with np.errstate(divide="ignore", invalid="ignore"):  # zero-length segments (a state at rest) never cross
            # signed distances of one segment's ends from the other's line
            d1, d2 = _orientation(p1, p2, q1) / p_length, _orientation(p1, p2, q2) / p_length
            d3, d4 = _orientation(q1, q2, p1) / q_length, _orientation(q1, q2, p2) / q_length
            hits = apart(d1, d2) & apart(d3, d4)
        count += int(hits.any(axis=(1, 2)).sum())
    return count


def _orientation(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    return (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0])


def solve_path(block: ODEBlock, z0: torch.Tensor, spec: SolverSpec) -> np.ndarray:
    """The states (points x times x D) at every step of a fixed-step solver, or at evenly spaced times."""
    t_final = block.t_final
    if spec.is_fixed_step:
        steps = max(1, math.ceil(t_final / spec.step_size - 1e-9))
        times = torch.tensor([min(k * spec.step_size, t_final) for k in range(steps + 1)], dtype=z0.dtype)
        options = {"step_size": spec.step_size}
    else:
        times = torch.linspace(0.0, t_final, REFERENCE_TIMES, dtype=z0.dtype)
        options = {"max_num_steps": spec.max_steps}
    with torch.no_grad():
        states = odeint(
            block.func, z0, times.to(z0.device), method=spec.method, rtol=spec.rtol, atol=spec.atol, options=options
        )
    return states.transpose(0, 1).cpu().numpy()


def draw_trajectories(model: nn.Module, data: DataBundle, path: Path) -> dict[str, Any] | None:
    """trajectories.png for a model whose ODE state is a vector; the crossing counts (2-D states) for its info."""
    traced = trace_trajectories(model, data)
    if traced is None:
        return None
    info, draw = traced
    draw(path)
    return info


def trace_trajectories(model: nn.Module, data: DataBundle) -> tuple[dict[str, Any], Callable[[Path], None]] | None:
    """The flows of test points for a model whose ODE state is a vector: the crossing counts (2-D states) for
    its info, and the function that draws them as a PNG, which may be called later (a sweep trial's figures
    are drawn after its result is recorded). None for other models."""
    if not ode_blocks(model) or len(data.input_shape) != 1:  # image states have no picture here
        return None
    chosen = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(0))[:POINTS]  # both classes
    x, labels = data.test.x[chosen.to(data.test.x.device)], data.test.y[chosen.to(data.test.y.device)].cpu().numpy()
    block, z0 = block_input(model, x)
    if z0.ndim != 2 or z0.shape[1] < 2:
        return None
    training = block.solver
    reference = dataclasses.replace(training, method="dopri5", rtol=REFERENCE_TOL, atol=REFERENCE_TOL, step_size=None)
    panels = {
        f"training solver {training.describe()}": solve_path(block, z0, training),
        f"reference dopri5 tol={REFERENCE_TOL:g}": solve_path(block, z0, reference),
    }
    projected = z0.shape[1] > 2
    if projected:
        panels = project_on_principal_components(panels)
    crossings = {title: None if projected else crossing_pairs(paths) for title, paths in panels.items()}
    counts = list(crossings.values())
    info = {
        "state_dims": int(z0.shape[1]),
        "points": len(labels),
        "projected": projected,
        "crossing_pairs_training": counts[0],
        "crossing_pairs_reference": counts[1],
    }
    return info, lambda path: trajectories_png(panels, labels, path, projected, crossings, data.class_names)


def project_on_principal_components(panels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every panel's states on the first two principal components of all states together."""
    stacked = np.concatenate([p.reshape(-1, p.shape[-1]) for p in panels.values()])
    mean = stacked.mean(axis=0)
    _, _, components = np.linalg.svd(stacked - mean, full_matrices=False)
    return {title: (p - mean) @ components[:2].T for title, p in panels.items()}
