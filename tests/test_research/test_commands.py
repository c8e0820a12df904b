"""Reproduce, re-evaluate with other solvers, resume after SIGKILL, and the comparison report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from runner.research.report import comparison_rows, write_report
from runner.tracking.runstore import read_file_store
from tests.conftest import ROOT, run_cli
from tests.test_tracking.conftest import tiny_run

QUICK = ["experiment=quickstart", "model.channels=8", "train.max_epochs=3"]


def record(runs_dir: Path, run_id: int):
    return next(r for r in read_file_store(runs_dir / "store") if r.id == run_id)


def assert_same_epochs(a, b, tolerance=1e-6):
    compared = [m for m in a.metrics if m != "epoch.time" and not m.startswith("mem.")]  # wall time, memory
    assert set(compared) == {m for m in b.metrics if m != "epoch.time" and not m.startswith("mem.")}
    for name in compared:
        va, vb = a.metrics[name]["values"], b.metrics[name]["values"]
        assert a.metrics[name]["steps"] == b.metrics[name]["steps"], name
        assert max(abs(x - y) for x, y in zip(va, vb, strict=True)) <= tolerance, name


def start_run(args: list[str], runs_dir: Path, stderr: int) -> subprocess.Popen:
    """`python -m runner <args>` in the background, its console lines readable from `.stdout`.

    It starts with Ctrl-C's default action, as in a terminal: a suite started in the background of a
    non-interactive shell (`make test &`) ignores SIGINT, and its children would inherit that."""
    env = {**os.environ, "ODEFLOW_RUNS": str(runs_dir)}
    return subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def read_epoch_lines(run: subprocess.Popen, max_epochs: int, count: int) -> None:
    """Read `run`'s output up to its `count`-th epoch line, checking each is the next epoch of `max_epochs`."""
    epoch_lines = (line for line in run.stdout if line.startswith("epoch "))
    for epoch in range(1, count + 1):
        assert next(epoch_lines).startswith(f"epoch {epoch:>3}/{max_epochs}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A store holding one quickstart ODEnet run (id 1), trained with dopri5."""
    runs_dir = tmp_path_factory.mktemp("research") / "runs"
    runs_dir.mkdir()
    proc = run_cli(QUICK, runs_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return runs_dir


def test_reproduce_matches_every_epoch(trained: Path):
    proc = run_cli(["reproduce", "1"], trained)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "\nMATCH: largest per-epoch difference 0 " in proc.stdout and "run 1 reproduced as run 2:" in proc.stdout
    # Nothing was installed or removed since the run: no package may be reported as changed.
    assert [
        line for line in proc.stdout.splitlines() if line.startswith("warning:") and not line.startswith("warning: git")
    ] == []
    reproduced = max(read_file_store(trained / "store"), key=lambda r: r.id)
    assert reproduced.meta["reproduces"] == 1
    assert reproduced.config["model"] == record(trained, 1).config["model"]
    assert_same_epochs(record(trained, 1), reproduced)
    assert reproduced.result == record(trained, 1).result


def test_reproduce_strict_refuses_another_environment(trained: Path):
    run_json = trained / "store" / "1" / "run.json"
    original = run_json.read_text()
    doc = json.loads(original)
    doc["experiment"]["dependencies"] = [*doc["experiment"]["dependencies"], "torch==0.4.0"]
    run_json.write_text(json.dumps(doc))
    try:
        proc = run_cli(["reproduce", "1", "--strict"], trained)
    finally:
        run_json.write_text(original)
    assert proc.returncode == 2 and "torch: logged 0.4.0" in proc.stderr and "Traceback" not in proc.stderr


def test_reevaluation_grid_table_figure_and_link(trained: Path):
    # The run id and an override after --grid are not grid settings.
    proc = run_cli(
        ["reevaluate", "--grid", "euler:1,0.5", "rk4:1,0.5", "dopri5:1e-2", "1", f"paths.runs={trained}"], trained
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    linked = [r for r in read_file_store(trained / "store") if r.meta.get("reevaluates") == 1]
    assert len(linked) == 1
    rows = {(row["method"], row["setting"]): row for row in linked[0].info["reevaluation"]}
    assert list(rows)[1:] == [
        ("euler", "h=1"),
        ("euler", "h=0.5"),
        ("rk4", "h=1"),
        ("rk4", "h=0.5"),
        ("dopri5", "tol=0.01"),
        ("dopri5", "tol=1e-06"),
    ]
    assert rows[("euler", "h=1")]["mean_fnfe"] == 1 and rows[("euler", "h=0.5")]["mean_fnfe"] == 2  # 1 per step
    assert rows[("rk4", "h=1")]["mean_fnfe"] == 4 and rows[("rk4", "h=0.5")]["mean_fnfe"] == 8  # 4 per step
    assert rows[("dopri5", "tol=1e-06")]["mean_fnfe"] > rows[("dopri5", "tol=0.01")]["mean_fnfe"]
    training_row = next(r for r in linked[0].info["reevaluation"] if r["training_solver"])
    assert training_row["accuracy"] == pytest.approx(record(trained, 1).result)
    # The gap is measured against the accurate solve, not against the grid's last entry.
    assert [r["setting"] for r in linked[0].info["reevaluation"] if r["reference"]] == ["tol=1e-06"]
    gap = linked[0].info["ode_ness_gap"]
    assert gap["reference"] == "dopri5 tol=1e-06"
    assert gap["gap"] == pytest.approx(training_row["accuracy"] - rows[("dopri5", "tol=1e-06")]["accuracy"])
    assert set(linked[0].artifacts) == {"reevaluation.csv", "reevaluation.md", "reevaluation.png"}
    table = (Path(linked[0].location) / "reevaluation.md").read_text()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("|")]
    assert ["rk4", "h=0.5"] in [c[:2] for c in cells] and ["dopri5 (reference)", "tol=1e-06"] in [c[:2] for c in cells]
    assert "ODE-ness gap" in table
    assert "![test accuracy" in table and "(reevaluation.png)" in table
    assert (Path(linked[0].location) / "reevaluation.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "grid,words",
    [
        (["euler:abc"], ["--grid='euler:abc'", "'abc' is not one"]),
        (["rk5:1"], ["--grid='rk5:1'", "dopri5", "euler"]),
        (["euler:-1"], ["--grid='euler:-1'", "> 0"]),
    ],
)
def test_a_bad_grid_is_refused_before_anything_is_recorded(trained: Path, grid: list[str], words: list[str]):
    before = len(read_file_store(trained / "store"))
    proc = run_cli(["reevaluate", "1", "--grid", *grid], trained)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr
    assert len(read_file_store(trained / "store")) == before


def test_reevaluating_a_resnet_is_a_clear_error(tmp_path: Path, runs_dir: Path):
    tiny_run(runs_dir, tmp_path / "out", "model=resnet_simple_small")
    proc = run_cli(["reevaluate", "1"], runs_dir)
    assert proc.returncode == 2 and "no ODE block" in proc.stderr and "Traceback" not in proc.stderr
    assert [r.id for r in read_file_store(runs_dir / "store")] == [1]  # no FAILED re-evaluation run


def test_run_killed_with_sigkill_resumes_with_continuous_epochs(runs_dir: Path):
    args = [
        "experiment=quickstart",
        "model.channels=8",
        "train.max_epochs=6",
        "train.patience=10",
        "train.progress=true",
    ]
    victim = start_run(args, runs_dir, stderr=subprocess.DEVNULL)
    try:
        # The epoch line is printed after that epoch's training state is saved: kill on the second one.
        read_epoch_lines(victim, 6, 2)
        assert victim.poll() is None, "the run finished before it could be killed"
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=60) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
    killed = record(runs_dir, 1)
    assert killed.status == "RUNNING"  # what a killed run looks like in the store
    saved_epoch = torch.load(Path(killed.meta["output_dir"]) / "last_checkpoint.pt", weights_only=False)["epoch"]
    assert 2 <= saved_epoch < 6

    listing = run_cli(["runs", "list"], runs_dir)
    assert listing.stdout.splitlines()[1].split()[2] == "DEAD"
    assert (
        "run 1 DEAD: its process is gone (killed, or the machine went down); continue it: python -m runner resume 1"
        in (listing.stdout)
    )

    resumed_proc = run_cli(["resume", "1"], runs_dir)
    assert resumed_proc.returncode == 0, resumed_proc.stderr[-3000:]
    assert "run 1 was killed (status RUNNING, but pid " in resumed_proc.stdout
    assert f"resuming run 1 after epoch {saved_epoch}" in resumed_proc.stdout
    resumed = record(runs_dir, 2)
    assert resumed.status == "COMPLETED" and resumed.meta["resumed_from"] == 1
    assert record(runs_dir, 1).meta["continued_as"] == 2  # and back: it is never resumed twice
    assert resumed.metrics["val.loss"]["steps"] == [1, 2, 3, 4, 5, 6]

    # Continuing is exact: the same run without the kill (a reproduction of the resumed one) gives the
    # same numbers epoch by epoch.
    uninterrupted_proc = run_cli(["reproduce", "2"], runs_dir)
    assert uninterrupted_proc.returncode == 0, uninterrupted_proc.stdout[-3000:] + uninterrupted_proc.stderr[-3000:]
    assert "\nMATCH: largest per-epoch difference 0 " in uninterrupted_proc.stdout
    assert_same_epochs(record(runs_dir, 3), resumed, tolerance=0)

    # A finished run has nothing to continue.
    again = run_cli(["resume", "2"], runs_dir)
    assert again.returncode == 2 and "run 2 is COMPLETED" in again.stderr and "reproduce 2" in again.stderr
    assert "Traceback" not in again.stderr and max(r.id for r in read_file_store(runs_dir / "store")) == 3


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_run_stopped_by_sigterm_or_ctrl_c_is_interrupted_with_its_epochs_and_resumes_exactly(runs_dir: Path, signum):
    # epochs of about 0.6 s on an idle machine: the signal lands while epoch 3 trains, before the run can end;
    # 8 epochs leave a loaded machine (a test worker slow to read the epoch lines) 5 epochs' time to send it
    epochs = 8
    args = ["experiment=quickstart", "model.channels=4", "data.subset=600", "solver=rk4", "solver.step_size=0.05"]
    args += [f"train.max_epochs={epochs}", "train.patience=10", "train.progress=true"]
    victim = start_run(args, runs_dir, stderr=subprocess.PIPE)
    try:
        read_epoch_lines(victim, epochs, 2)
        victim.send_signal(signum)  # during epoch 3 (or the bookkeeping right after epoch 2)
        rest, stderr = victim.communicate(timeout=120)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == 128 + signum, stderr[-3000:]
    interrupted = record(runs_dir, 1)
    assert interrupted.status == "INTERRUPTED"
    steps = interrupted.metrics["val.loss"]["steps"]
    saved_epoch = torch.load(Path(interrupted.meta["output_dir"]) / "last_checkpoint.pt", weights_only=False)["epoch"]
    assert steps == list(range(1, saved_epoch + 1)) and 2 <= saved_epoch < epochs  # every finished epoch recorded
    name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert stderr.splitlines()[-1] == (
        f"interrupted ({name}): run 1 stopped, status INTERRUPTED, its {saved_epoch} finished epochs recorded; "
        "continue it with: python -m runner resume 1"
    )
    if signum == signal.SIGINT:
        return  # the rest is the same for both

    resumed_proc = run_cli(["resume", "1"], runs_dir)
    assert resumed_proc.returncode == 0, resumed_proc.stderr[-3000:]
    resumed = record(runs_dir, 2)
    assert resumed.status == "COMPLETED" and resumed.metrics["val.loss"]["steps"] == list(range(1, epochs + 1))
    uninterrupted_proc = run_cli(["reproduce", "2"], runs_dir)  # the same run, never interrupted
    assert "\nMATCH: largest per-epoch difference 0 " in uninterrupted_proc.stdout, uninterrupted_proc.stderr[-3000:]
    assert_same_epochs(record(runs_dir, 3), resumed, tolerance=0)


def test_comparison_report_over_several_models(tmp_path: Path, runs_dir: Path):
    for i, model in enumerate(["odenet_simple", "resnet_simple_small", "resnet_simple_large"]):
        tiny_run(runs_dir, tmp_path / f"o{i}", f"model={model}")
    tiny_run(runs_dir, tmp_path / "o3", "model=odenet_simple", "solver=rk4", "solver.step_size=0.5")
    records = read_file_store(runs_dir / "store")
    frame = comparison_rows(records)
    assert len(frame) == 4 and set(frame.dataset) == {"spheres"}
    large = frame[frame.model == "resnet_simple_large"].iloc[0]
    assert large.f_evaluations == 3 and large.params == records[2].info["parameters"]["total"]
    odenet = frame[(frame.model == "odenet_simple") & (frame.solver == "rk4")].iloc[0]
    assert odenet.fnfe == 8.0  # rk4 at h=0.5 over [0, 1]
    paths = write_report(records, tmp_path / "report")
    table = paths["comparison.md"].read_text()
    models = [line.strip("|").split("|")[0].strip() for line in table.splitlines() if line.startswith("|")]
    assert "## spheres" in table and models.count("odenet_simple") == 2 and "resnet_simple_large" in models
    for name in ("accuracy_vs_parameters.png", "accuracy_vs_nfe.png"):
        assert paths[name].read_bytes()[:4] == b"\x89PNG"
    proc = run_cli(["report", "--out", str(tmp_path / "cli_report")], runs_dir)
    assert proc.returncode == 0 and "resnet_simple_small" in proc.stdout


def test_an_empty_or_truncated_checkpoint_is_named(tmp_path: Path, runs_dir: Path):
    tiny_run(runs_dir, tmp_path / "out")
    best, last = runs_dir / "store" / "1" / "best_checkpoint.pt", tmp_path / "out" / "last_checkpoint.pt"
    best.write_bytes(best.read_bytes()[:1000])
    last.write_bytes(b"")
    run_json = runs_dir / "store" / "1" / "run.json"
    run_json.write_text(json.dumps({**json.loads(run_json.read_text()), "status": "FAILED"}))  # as if it had crashed
    for command, path in ((["reevaluate", "1"], best), (["resume", "1"], last)):
        proc = run_cli(command, runs_dir)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert f"error: {path} is damaged" in proc.stderr and "empty or truncated" in proc.stderr
    assert [r.id for r in read_file_store(runs_dir / "store")] == [1]


def test_a_study_multirun_gets_its_table_and_bnfe_plot(tmp_path: Path, runs_dir: Path):
    study_dir = tmp_path / "t_final"
    proc = run_cli(
        [
            "-m",
            "experiment=study_t_final",
            "model.t_final=1,3",
            "model.channels=4",
            "data.subset=300",
            "train.max_epochs=2",
            f"hydra.sweep.dir={study_dir}",
        ],
        runs_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = read_file_store(runs_dir / "store")
    assert [r.config["solver"]["adjoint"] for r in runs] == [True, True]  # as the thesis trained them
    report = run_cli(["study", str(study_dir)], runs_dir)
    assert report.returncode == 0, report.stderr
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in (study_dir / "study.md").read_text().splitlines()
        if line.startswith("|")
    ]
    assert rows[0][:3] == ["model.t_final", "test acc", "test loss"] and [r[0] for r in rows[2:]] == ["1", "3"]
    bnfe = {r[0]: float(r[4]) for r in rows[2:]}
    assert bnfe == {str(int(r.config["model"]["t_final"])): r.metrics["nfe.backward"]["values"][-1] for r in runs}
    assert bnfe["3"] > bnfe["1"] > 0  # a longer time interval takes more backward steps
    assert (study_dir / "bnfe_per_epoch.png").read_bytes()[:4] == b"\x89PNG"
    missing = run_cli(["study", "no_such_study"], runs_dir)
    assert missing.returncode == 2 and "no finished study jobs" in missing.stderr and "make study" in missing.stderr


def test_a_run_trained_with_torchdiffeq_is_reevaluated_with_torchdiffeq(tmp_path: Path, runs_dir: Path):
    tiny_run(runs_dir, tmp_path / "out", "solver=dopri5", "solver.backend=torchdiffeq")
    proc = run_cli(["reevaluate", "1", "--grid", "euler:0.5", "rk4:1"], runs_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_file_store(runs_dir / "store")[-1].info["reevaluation"]
    assert [(r["method"], r["backend"]) for r in rows] == [
        ("dopri5", "torchdiffeq"),
        ("euler", "torchdiffeq"),
        ("rk4", "torchdiffeq"),
        ("dopri5", "torchdiffeq"),
    ]


def test_a_run_logged_before_runner_was_split_reproduces_and_reevaluates(tmp_path: Path, runs_dir: Path):
    """Runs logged before runner/ was split into wings name the classes' old paths (runner.tracking.FileStore,
    runner.settings.TrainSettings) in their config and their checkpoints; they must still reproduce exactly."""
    old_targets = {
        "runner.tracking.stores.FileStore": "runner.tracking.FileStore",
        "runner.experiment.settings.TrainSettings": "runner.settings.TrainSettings",
    }
    tiny_run(runs_dir, tmp_path / "out")
    store = runs_dir / "store" / "1"
    config_json = store / "config.json"
    text = config_json.read_text()
    for new, old in old_targets.items():
        assert new in text
        text = text.replace(new, old)
    config_json.write_text(text)
    for checkpoint in [store / "best_checkpoint.pt", tmp_path / "out" / "best_checkpoint.pt"]:
        content = torch.load(checkpoint, weights_only=False)
        content["config"]["train"]["_target_"] = "runner.settings.TrainSettings"
        content["config"]["tracking"]["_target_"] = "runner.tracking.FileStore"
        torch.save(content, checkpoint)
    assert record(runs_dir, 1).config["train"]["_target_"] == "runner.settings.TrainSettings"

    proc = run_cli(["reproduce", "1"], runs_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "\nMATCH: largest per-epoch difference 0 " in proc.stdout
    assert record(runs_dir, 2).config["train"]["_target_"] == "runner.experiment.settings.TrainSettings"
    proc = run_cli(["reevaluate", "1", "--grid", "euler:0.5"], runs_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert record(runs_dir, 3).meta["reevaluates"] == 1


def test_the_same_reevaluation_asked_for_again_logs_no_second_run(tmp_path: Path, runs_dir: Path, monkeypatch, capsys):
    from runner.cli import main

    monkeypatch.setenv("ODEFLOW_RUNS", str(runs_dir))
    tiny_run(runs_dir, tmp_path / "out")
    assert main(["reevaluate", "1", "--grid", "euler:0.5"]) == 0
    capsys.readouterr()
    assert main(["reevaluate", "1", "--grid", "euler:0.5"]) == 0  # in this process: a CLI call costs seconds more
    again = capsys.readouterr().out
    assert [r.id for r in read_file_store(runs_dir / "store")] == [1, 2]  # no second record of the same thing
    assert "run 1 was re-evaluated with this grid already, as run 2: nothing new is logged" in again
    assert "ODE-ness gap" in again and "re-evaluation logged before as run 2" in again
    assert main(["reevaluate", "1", "--grid", "euler:0.25"]) == 0  # another grid: a new re-evaluation
    assert "already" not in capsys.readouterr().out and record(runs_dir, 3).meta["reevaluates"] == 1
