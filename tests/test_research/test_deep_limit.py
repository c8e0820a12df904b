"""The deep-limit study: parameter paths of weight-tied ResNets against their ODE limit, and its report."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from runner.research.deep_limit import fitted_slope, sup_relative_distance
from runner.tracking.runstore import read_file_store
from tests.conftest import run_cli


def test_the_distance_is_the_sup_over_shared_steps_of_the_relative_norm():
    limit = {"steps": [0, 10, 20], "vectors": torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 4.0]], dtype=torch.float64)}
    path = {"steps": [0, 10, 20], "vectors": torch.tensor([[1.0, 0.0], [2.0, 1.0], [0.0, 5.0]], dtype=torch.float64)}
    assert sup_relative_distance(path, limit) == pytest.approx(0.5)  # step 10: 1 / 2; step 20: 1 / 4
    assert sup_relative_distance(limit, limit) == 0.0


def test_the_fitted_slope_of_a_power_law_is_its_exponent():
    layers = [1, 2, 4, 8, 16]
    assert fitted_slope(layers, [3.0 / n for n in layers]) == pytest.approx(-1.0)
    assert fitted_slope(layers, [0.5 * n**-4 for n in layers]) == pytest.approx(-4.0)
    assert fitted_slope([1, 2], [0.0, 1.0]) is None  # a zero cannot sit on log axes: one point left


def test_the_study_runs_as_ordinary_runs_and_reports_the_distance_to_the_limit(tmp_path: Path, runs_dir: Path):
    study = tmp_path / "deep_limit"
    tiny = ["data.n_train=200", "data.n_test=100", "data.batch_size=50", "train.max_iterations=8"]
    proc = run_cli(
        ["-m", "experiment=study_deep_limit", "solver=euler,rk4", "solver.step_size=0.5,0.25", *tiny]
        + ["train.record_parameters=2", f"hydra.sweep.dir={study}"],
        runs_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = read_file_store(runs_dir / "store")
    assert len(runs) == 4 and all(r.info["parameter_path"]["records"] == 5 for r in runs)  # steps 0, 2, .., 8
    assert {r.config["train"]["evaluate"] for r in runs} == {"final"}
    report = run_cli(["study", str(study)], runs_dir)
    assert report.returncode == 0, report.stderr
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in (study / "deep_limit.md").read_text().splitlines()
        if line.startswith("|")
    ][2:]
    distance = {(r[1], int(r[2])): float(r[3]) for r in rows}
    assert set(distance) == {("euler", 2), ("euler", 4), ("rk4", 2), ("rk4 (the limit)", 4)}
    # the same start and batches: the paths differ only through the solver, less with more layers
    assert distance[("euler", 4)] < distance[("euler", 2)] and distance[("rk4 (the limit)", 4)] == 0.0
    assert distance[("rk4", 2)] < distance[("euler", 4)]  # rk4 converges faster than euler
    paths = {(r.config["solver"]["method"], r.config["solver"]["step_size"]): r for r in runs}
    limit = torch.load(Path(paths["rk4", 0.25].meta["output_dir"]) / "parameter_path.pt", weights_only=True)
    euler2 = torch.load(Path(paths["euler", 0.5].meta["output_dir"]) / "parameter_path.pt", weights_only=True)
    expected = max(float((a - b).norm() / b.norm()) for a, b in zip(euler2["vectors"], limit["vectors"], strict=True))
    assert distance[("euler", 2)] == pytest.approx(expected, rel=1e-3)
    assert "euler: distance ~ N^" in (study / "deep_limit.md").read_text()
    assert math.isfinite(float((study / "deep_limit.md").read_text().split("euler: distance ~ N^")[1].split(",")[0]))
    assert (study / "deep_limit.png").read_bytes()[:4] == b"\x89PNG"
