"""`python -m runner` end to end on the offline datasets: it learns, logs a Sacred run and a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data import load_digits
from runner.experiment.checkpoint import load_checkpoint
from runner.experiment.evaluation import predict
from tests.conftest import run_cli


def only_run(store: Path) -> Path:
    runs = [p for p in store.iterdir() if p.name.isdigit()]
    assert len(runs) == 1, runs
    return runs[0]


def test_odenet_learns_digits_and_logs_the_run(runs_dir: Path):
    proc = run_cli(["experiment=quickstart", "train.max_epochs=4", "train.patience=2", "model.channels=16"], runs_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = only_run(runs_dir / "store")
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "COMPLETED"
    assert record["result"] > 0.7  # chance is 0.1
    info = json.loads((run / "info.json").read_text())
    assert info["parameters"]["total"] > 0 and info["choices"]["model"] == "odenet_simple"
    assert {a for a in record["artifacts"]} >= {"best_checkpoint.pt", "evaluation_report.json"}
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["channels"] == 16 and config["solver"]["method"] == "dopri5"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val.loss"]["steps"] == list(range(1, len(metrics["val.loss"]["values"]) + 1))
    assert all(v > 6 for v in metrics["nfe.forward"]["values"])  # dopri5 counts
    assert "test acc" in proc.stdout

    # the checkpoint alone rebuilds the model and reproduces the logged test accuracy
    model, checkpoint = load_checkpoint(run / "best_checkpoint.pt")
    data = load_digits(**{k: v for k, v in checkpoint["config"]["data"].items() if k != "_target_"})
    assert predict(model, data.test, 128).accuracy == pytest.approx(record["result"])


def test_spheres_with_vector_odenet_and_rk4(runs_dir: Path):
    proc = run_cli(["data=spheres", "solver=rk4", "model.channels=16", "train.lr=1e-2", "train.max_epochs=6"], runs_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((only_run(runs_dir / "store") / "run.json").read_text())
    assert record["result"] > 0.9  # chance is 0.5
    metrics = json.loads((only_run(runs_dir / "store") / "metrics.json").read_text())
    assert set(metrics["nfe.forward"]["values"]) == {16.0}  # rk4, h=0.25 over [0, 1]


def test_multirun_compares_odenet_and_resnet(runs_dir: Path):
    proc = run_cli(
        [
            "-m",
            "data=spheres",
            "model=odenet_simple,resnet_simple_small",
            "solver=euler",
            "model.channels=8",
            "train.max_epochs=2",
        ],
        runs_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "summary of 2 runs" in proc.stdout
    assert "odenet_simple" in proc.stdout and "resnet_simple_small" in proc.stdout
    assert len([p for p in (runs_dir / "store").iterdir() if p.name.isdigit()]) == 2


def test_an_adjoint_run_records_its_gradient_check_in_info_console_and_report(tmp_path: Path, runs_dir: Path, capsys):
    from runner.research.report import comparison_rows
    from runner.tracking.runstore import read_file_store
    from tests.test_tracking.conftest import tiny_run

    summary = tiny_run(
        runs_dir, tmp_path / "out", "solver=dopri5", "solver.adjoint=true", "train.adjoint_check_threshold=1e-9"
    )
    record = read_file_store(runs_dir / "store")[0]
    check = record.info["adjoint_gradient_check"]
    assert check["flagged"] and check["relative_error"] == summary["adjoint_grad_err"] > 0
    assert "adjoint gradient check: relative error" in capsys.readouterr().out
    assert comparison_rows([record]).iloc[0]["adjoint_grad_err"] == check["relative_error"]
    assert record.metrics["nfe.backward"]["values"][-1] > 0  # BNFE in the record
    # the older spelling still means the adjoint, and the check measures the exact checkpointed gradient beside it
    assert record.config["solver"]["adjoint"] is True and check["gradient"] == "adjoint"
    assert check["checkpoint_relative_error"] < 1e-5 < check["relative_error"]


def test_the_quickstart_odenet_trains_with_checkpointed_gradients_and_logs_its_memory(runs_dir: Path):
    proc = run_cli(
        ["experiment=quickstart", "solver.gradient=checkpoint", "train.max_epochs=2", "model.channels=8"],
        runs_dir,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = only_run(runs_dir / "store")
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "COMPLETED" and record["result"] > 0.3  # chance is 0.1
    info = json.loads((run / "info.json").read_text())
    assert info["adjoint_gradient_check"]["gradient"] == "checkpoint"
    assert info["adjoint_gradient_check"]["relative_error"] < 1e-5  # the gradient of the forward solve
    metrics = json.loads((run / "metrics.json").read_text())
    assert all(
        0 < b <= f for b, f in zip(metrics["nfe.backward"]["values"], metrics["nfe.forward"]["values"], strict=True)
    )
    for name in ("mem.train.rss_mb", "mem.train.live_mb", "mem.train.saved_mb", "mem.val.rss_mb", "mem.val.live_mb"):
        assert len(metrics[name]["values"]) == 2 and min(metrics[name]["values"]) > 0, name
    assert info["cost"]["train_rss_mb"] == max(metrics["mem.train.rss_mb"]["values"])
    assert "train_cuda_mb" not in info["cost"]  # CUDA's figures have columns of their own, empty on a CPU
    assert "mem MB train" in proc.stdout and "train RSS MB" in proc.stdout  # the epoch line and the summary
