"""Whole sweeps run as subprocesses on offline data: results, failures, the failure-rate bound, resume, joblib."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from runner.runstore import read_file_store
from tests.conftest import run_cli

TINY = ["search=quickstart", "data.n_train=300", "data.n_test=100", "model.channels=4", "train.max_epochs=2",
        "hydra.sweeper.n_startup_jobs=3"]


def sweep(runs_dir: Path, sweep_dir: Path, *overrides: str):
    return run_cli(["-m", *TINY, f"hydra.sweep.dir={sweep_dir}", *overrides], runs_dir)


def results(sweep_dir: Path) -> dict:
    return yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())


def test_sweep_records_best_and_resumes(runs_dir: Path, tmp_path: Path):
    sweep_dir = tmp_path / "sweep"
    first = sweep(runs_dir, sweep_dir, "hydra.sweeper.n_trials=4")
    assert first.returncode == 0, first.stderr[-3000:]
    assert results(sweep_dir)["n_trials"] == 4

    resumed = sweep(runs_dir, sweep_dir, "hydra.sweeper.n_trials=7")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming sweep" in resumed.stdout and "4 trials done" in resumed.stdout
    out = results(sweep_dir)
    assert [t["number"] for t in out["trials"]] == list(range(7))  # continued, not restarted
    values = [t["value"] for t in out["trials"] if t["status"] == "ok"]
    assert len(values) == 7 and out["best_value"] == min(values)
    best = out["trials"][out["best_trial"]]
    assert best["value"] == out["best_value"] and best["params"] == out["best_params"]
    assert isinstance(out["best_params"]["model.augment_dims"], int)
    assert out["best_params"]["train.optimizer"] in {"adam", "adamw", "rmsprop", "sgd"}

    # every trial is a tracked run carrying the sweep id; the best run id points at the best value
    runs = [r for r in read_file_store(runs_dir / "store") if r.meta.get("sweep_id") == out["sweep_id"]]
    assert len(runs) == 7
    best_run = next(r for r in runs if r.id == out["best_run_id"])
    assert min(best_run.metrics["val.loss"]["values"]) == out["best_value"]
    assert sorted(r.meta["trial"] for r in runs) == list(range(7))
    assert "best: trial" in resumed.stdout
    listing = run_cli(["runs", "list", "--sweep", out["sweep_id"]], runs_dir)
    assert len(listing.stdout.strip().splitlines()) == 8


def test_failed_trials_are_recorded_and_the_sweep_goes_on(runs_dir: Path, tmp_path: Path):
    sweep_dir = tmp_path / "sweep"
    proc = sweep(runs_dir, sweep_dir, "hydra.sweeper.n_trials=6", "hydra.sweeper.max_failure_rate=1.0",
                 "train.optimizer=sgd", "train.lr=choice(0.05,1e12)")  # lr 1e12 diverges to NaN
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = results(sweep_dir)
    failed = [t for t in out["trials"] if t["status"] == "failed"]
    ok = [t for t in out["trials"] if t["status"] == "ok"]
    assert out["n_trials"] == 6 and failed and ok
    assert all("TrainingDivergedError" in t["error"] for t in failed)
    assert all(t["params"]["train.lr"] == 1e12 for t in failed)
    assert "the sweep goes on" in proc.stdout
    store = [r for r in read_file_store(runs_dir / "store") if r.meta.get("sweep_id") == out["sweep_id"]]
    assert sum(r.status == "FAILED" for r in store) == len(failed)  # each failure is a logged, failed run


def test_failure_rate_bound_stops_the_sweep(runs_dir: Path, tmp_path: Path):
    sweep_dir = tmp_path / "sweep"
    proc = sweep(runs_dir, sweep_dir, "hydra.sweeper.n_trials=8", "hydra.sweeper.max_failure_rate=0.5",
                 "train.optimizer=sgd", "train.lr=1e12")
    assert proc.returncode == 3
    assert "max_failure_rate=0.5" in proc.stderr and "TrainingDivergedError" in proc.stderr
    out = results(sweep_dir)
    assert out["n_trials"] == 2 and out["n_failed"] == 2  # stopped after the first batch of 2
    assert "Traceback" not in proc.stderr.split("stopping sweep")[-1]


def test_joblib_sweep_with_two_workers(runs_dir: Path, tmp_path: Path):
    sweep_dir = tmp_path / "sweep"
    proc = sweep(runs_dir, sweep_dir, "hydra.sweeper.n_trials=2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    out = results(sweep_dir)
    assert [t["status"] for t in out["trials"]] == ["ok", "ok"]
    assert len({t["run_id"] for t in out["trials"]}) == 2
    for job in ("0", "1"):
        assert json.loads((sweep_dir / job / "result.json").read_text())["sweep_id"] == out["sweep_id"]


def test_an_accuracy_objective_is_maximized(runs_dir: Path, tmp_path: Path):
    sweep_dir = tmp_path / "sweep"
    proc = sweep(runs_dir, sweep_dir, "hydra.sweeper.n_trials=3", "objective=best_val_acc", "hydra.sweeper.n_jobs=1",
                 "train.lr=choice(0.3,0.00001)")  # two very different accuracies after 2 epochs
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = results(sweep_dir)
    values = [t["value"] for t in out["trials"] if t["status"] == "ok"]
    assert out["direction"] == "maximize" and len(set(values)) > 1 and out["best_value"] == max(values)


def test_a_direction_that_contradicts_the_objective_is_refused_before_any_trial(runs_dir: Path, tmp_path: Path):
    proc = sweep(runs_dir, tmp_path / "sweep", "objective=test_acc", "hydra.sweeper.direction=minimize")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "hydra.sweeper.direction=minimize contradicts objective=test_acc" in proc.stderr and "set it to maximize" in proc.stderr
    assert not (runs_dir / "store").exists()
