"""A sweep trial's figures are drawn after its result is recorded and still end up in its run record."""

from __future__ import annotations

import json
from pathlib import Path

from runner.experiment import figures
from runner.experiment.app import run_experiment
from runner.experiment.figures import wait_for_figures
from tests.conftest import compose_config

TINY = ["data=spheres", "data.n_train=64", "data.n_test=64", "model.channels=4", "solver=euler", "train.max_epochs=1"]
FIGURES = {"confusion_matrix.png", "learning_curves.png", "nfe.png", "trajectories.png"}  # spheres: vector states


def run(runs_dir: Path, out_dir: Path, meta: dict | None) -> tuple[dict, Path]:
    summary = run_experiment(compose_config(TINY, runs_dir), out_dir, {"data": "spheres"}, meta=meta)
    return summary, runs_dir / "store" / str(summary["run_id"])


def test_a_trials_figures_come_after_its_result_and_are_attached_to_its_run(runs_dir: Path, tmp_path: Path):
    summary, run_dir = run(runs_dir, tmp_path / "trial", {"sweep_id": "s-1", "trial": 0})
    assert json.loads((tmp_path / "trial" / "result.json").read_text())["run_id"] == summary["run_id"]
    wait_for_figures()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "COMPLETED" and FIGURES <= set(record["artifacts"])
    assert {"best_checkpoint.pt", "evaluation_report.json", "classification_report.csv"} <= set(record["artifacts"])
    for name in FIGURES:
        assert (run_dir / name).read_bytes()[:4] == b"\x89PNG" == (tmp_path / "trial" / name).read_bytes()[:4]


def test_a_run_outside_a_sweep_draws_its_figures_before_it_completes(runs_dir: Path, tmp_path: Path):
    _, run_dir = run(runs_dir, tmp_path / "single", None)
    record = json.loads((run_dir / "run.json").read_text())  # no waiting: they are in the run itself
    assert FIGURES <= set(record["artifacts"]) and all((run_dir / name).exists() for name in FIGURES)


def test_no_figure_is_drawn_on_a_trials_path(runs_dir: Path, tmp_path: Path, monkeypatch):
    queued = []
    monkeypatch.setattr(figures, "draw_later", lambda draw, attach: queued.append((draw, attach)))
    _, run_dir = run(runs_dir, tmp_path / "trial", {"sweep_id": "s-1", "trial": 0})
    assert not [name for name in FIGURES if (tmp_path / "trial" / name).exists()]  # the result came first
    assert json.loads((run_dir / "info.json").read_text())["trajectories"]["points"] > 0  # counted already
    ((draw, attach),) = queued
    attach(draw())
    assert FIGURES <= set(json.loads((run_dir / "run.json").read_text())["artifacts"])
