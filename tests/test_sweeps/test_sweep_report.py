"""The sweep report on a sweep with finished, pruned and failed trials."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from matplotlib.image import imread

from odeflow.errors import UserError
from runner.sweeps.report import encode, parameter_importance, trial_frame, write_report
from runner.sweeps.state import SweepRecord, TrialRecord

SPACE = {
    "train.lr": "loguniform(0.0001, 0.1)",
    "train.weight_decay": "loguniform(1e-06, 0.01)",
    "train.optimizer": "choice(adam, sgd)",
}


def record_where_only_lr_matters(n: int = 24) -> SweepRecord:
    """Objective = (log10 lr + 2.5)^2: best near lr 3e-3; weight decay and optimizer change nothing."""
    rng = np.random.default_rng(0)
    trials = []
    for i in range(n):
        params = {
            "train.lr": float(10 ** rng.uniform(-4, -1)),
            "train.weight_decay": float(10 ** rng.uniform(-6, -2)),
            "train.optimizer": ["adam", "sgd"][i % 2],
        }
        value = (math.log10(params["train.lr"]) + 2.5) ** 2
        status = "failed" if i in (5, 11) else "pruned" if value > 1.5 else "ok"
        trials.append(
            TrialRecord(
                i,
                i,
                params,
                status,
                None if status == "failed" else value,
                run_id=i + 1,
                pruned={"epoch": 2, "reason": "median"} if status == "pruned" else None,
            )
        )
    return SweepRecord("sweep-x", "best_val_loss", "minimize", SPACE, trials, next_job=n)


def test_report_of_a_sweep_with_failed_and_pruned_trials(tmp_path):
    record = record_where_only_lr_matters()
    record.save(tmp_path)
    paths = write_report(tmp_path)
    assert set(paths) == {
        "best_so_far.png",
        "objective_vs_params.png",
        "parallel_coordinates.png",
        "importance.png",
        "report.md",
    }
    for name, path in paths.items():
        if name.endswith(".png"):
            assert imread(path).shape[0] > 200  # a real figure
    text = paths["report.md"].read_text()
    counts = {s: sum(t.status == s for t in record.trials) for s in ("ok", "pruned", "failed")}
    assert counts["pruned"] and f"24 trials: {counts['ok']} finished, {counts['pruned']} pruned, 2 failed." in text
    best = record.best()
    assert f"Best: trial {best.number} (run {best.run_id})" in text
    top = text.split("## Top 10 trials")[1].split("##")[0]
    rows = [line for line in top.splitlines() if line.startswith("| ")]
    assert len(rows) == 11 and "failed" not in top  # header + 10 trials, all with a value
    assert rows[1].startswith(f"| {best.number} ")  # best first
    importance = text.split("## Parameter importance")[1]
    assert importance.index("train.lr") < importance.index("train.weight_decay")


def test_importance_ranks_the_parameter_that_matters_first_and_needs_enough_trials():
    record = record_where_only_lr_matters()
    frame = trial_frame(record)
    ranking = parameter_importance(frame, record.space)
    assert ranking["parameter"].iloc[0] == "train.lr"
    assert ranking["importance"].iloc[0] > 5 * max(ranking["importance"].iloc[1:].max(), 0.01)
    few = SweepRecord("s", "best_val_loss", "minimize", SPACE, record.trials[:4])
    assert parameter_importance(trial_frame(few), SPACE) is None


def test_axes_of_log_distributed_and_categorical_parameters():
    frame = trial_frame(record_where_only_lr_matters())
    encoded = encode(frame, SPACE)
    assert encoded.min().min() == 0 and encoded.max().max() == 1
    lr = frame["train.lr"]
    expected = (np.log10(lr) - np.log10(lr).min()) / (np.log10(lr).max() - np.log10(lr).min())
    assert np.allclose(encoded["train.lr"], expected)  # log scale, not linear
    assert set(encoded["train.optimizer"]) == {0.0, 1.0}


def test_a_folder_without_a_sweep_state_is_named(tmp_path):
    with pytest.raises(UserError, match="holds no sweep_state.json"):
        write_report(tmp_path)


def test_a_report_asked_for_again_of_an_unchanged_sweep_logs_no_second_run(tmp_path):
    from runner.cli import current_config
    from runner.sweeps.report import write_and_log_report
    from runner.tracking.runstore import read_file_store

    sweep_dir = tmp_path / "sweep"
    record = record_where_only_lr_matters(6)
    record.save(sweep_dir)
    cfg = current_config([f"paths.runs={tmp_path / 'runs'}", f"tracking.dir={tmp_path / 'runs' / 'store'}"])
    first, _ = write_and_log_report(sweep_dir, cfg)
    again, _ = write_and_log_report(sweep_dir, cfg)  # a finished sweep's command run again
    assert again == first and len(read_file_store(tmp_path / "runs" / "store")) == 1

    record = record_where_only_lr_matters(7)  # one more trial: a new report, logged as a run of its own
    record.report_run = json.loads((sweep_dir / "sweep_state.json").read_text())["report_run"]
    record.save(sweep_dir)
    newer, _ = write_and_log_report(sweep_dir, cfg)
    assert newer != first and len(read_file_store(tmp_path / "runs" / "store")) == 2
