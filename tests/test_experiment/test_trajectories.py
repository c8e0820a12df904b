"""The crossing counter on trajectories built to cross and not to cross, and trajectories.png of a 2-D flow."""

from __future__ import annotations

import math

import numpy as np
import torch

from data.tensors import DataBundle, Split
from models.solvers import SolverSpec
from runner.experiment.trajectories import crossing_pairs, draw_trajectories
from tests.test_experiment.test_adaptation import rotation_model


def test_crossing_segments_count_once_and_parallel_ones_not_at_all():
    diagonal = np.array([[[0.0, 0.0], [1.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])
    assert crossing_pairs(diagonal) == 1
    parallel = np.array([[[0.0, y], [1.0, y]] for y in (0.0, 0.5, 1.0)])
    assert crossing_pairs(parallel) == 0


def test_arcs_on_concentric_circles_never_cross_and_zigzags_that_weave_do():
    angles = np.linspace(0, math.pi / 2, 20)
    arcs = np.stack(
        [np.stack([r * np.cos(angles + r), r * np.sin(angles + r)], axis=1) for r in np.linspace(0.2, 2, 12)]
    )
    assert crossing_pairs(arcs) == 0
    x = np.linspace(0, 1, 11)
    up = np.stack([x, 0.1 * (-1) ** np.arange(11)], axis=1)
    down = np.stack([x, -0.1 * (-1) ** np.arange(11)], axis=1)  # crosses `up` ten times: still one pair
    flat = np.stack([x, np.full(11, 0.5)], axis=1)
    assert crossing_pairs(np.stack([up, down, flat])) == 1


def test_a_coarse_euler_rotation_crosses_and_the_reference_solve_does_not(tmp_path):
    k = np.arange(40)
    radius, angle = 0.5 + 0.03 * k, 0.7 * k  # each point on a circle of its own
    x = torch.tensor(np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1), dtype=torch.float32)
    y = (x[:, 0] > 0).long()
    split = Split(x, y)
    data = DataBundle("circle", split, split, split, ["left", "right"], 40)
    model = rotation_model(SolverSpec("euler", step_size=1.0), angle=math.pi)
    info = draw_trajectories(model, data, tmp_path / "trajectories.png")
    assert (tmp_path / "trajectories.png").stat().st_size > 0
    assert info["crossing_pairs_reference"] == 0  # arcs of concentric circles
    assert info["crossing_pairs_training"] > 0  # tangent segments of length pi each cut their neighbours
    assert not info["projected"] and info["state_dims"] == 2


def test_higher_dimensional_states_are_drawn_as_a_labelled_projection_without_a_count(tmp_path):
    from data import load_spheres
    from models.state import StateODENet

    data = load_spheres(n_train=40, n_test=30, batch_size=10)
    model = StateODENet(data.input_shape, 2, hidden=8, augment_dims=2, solver=SolverSpec("rk4", step_size=0.25))
    info = draw_trajectories(model, data, tmp_path / "trajectories.png")
    assert info["projected"] and info["state_dims"] == 4 and info["points"] == 30
    assert info["crossing_pairs_training"] is None and info["crossing_pairs_reference"] is None
