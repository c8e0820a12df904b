"""The studies of "ResNet After All" on its own data and model: the relative test grid and the report."""

from __future__ import annotations

from pathlib import Path

from runner.research.raa_critical_step import steps_tested
from runner.tracking.runstore import read_file_store
from tests.conftest import run_cli


def test_each_model_is_tested_at_half_to_twice_its_training_steps():
    assert steps_tested(8) == [4, 6, 8, 12, 16]
    assert steps_tested(2) == [1, 2, 3, 4]  # 0.75 x 2 rounds to 2
    assert steps_tested(1) == [1, 2]  # never fewer than one step


def test_the_critical_step_study_trains_on_raas_data_and_reports_per_dimension_and_method(
    tmp_path: Path, runs_dir: Path
):
    study = tmp_path / "raa"
    proc = run_cli(
        ["-m", "experiment=study_raa_critical_step", "data.dim=2,3", "solver=euler", "solver.step_size=0.5"]
        + ["train.max_iterations=6", "data.n_train=200", "data.n_test=100", f"hydra.sweep.dir={study}"],
        runs_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = read_file_store(runs_dir / "store")
    assert sorted(r.config["data"]["dim"] for r in runs) == [2, 3]
    assert {(r.config["model"]["_target_"], r.config["train"]["lr"], r.config["train"]["evaluate"]) for r in runs} == {
        ("models.raa.RAAODENet", 1e-4, "final")
    }
    report = run_cli(["study", str(study)], runs_dir)
    assert report.returncode == 0, report.stderr
    text = (study / "raa_critical_step.md").read_text()
    assert "## 2-D spheres, trained with euler" in text and "## 3-D spheres, trained with euler" in text
    rows = [line for line in text.splitlines() if line.startswith("| 0.5 ")]
    assert len(rows) == 2  # one training step, in each dimension
    for name in ("raa_critical_step_2d_euler.png", "raa_critical_step_3d_euler.png"):
        assert (study / name).read_bytes()[:4] == b"\x89PNG"
