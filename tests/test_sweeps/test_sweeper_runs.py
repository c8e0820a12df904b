"""Whole sweeps run as subprocesses on offline data: results, failures, the failure-rate bound, resume, joblib,
pruning, warm start, an old state, a crash mid-batch, the report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from runner.tracking.runstore import read_file_store
from tests.conftest import ROOT, run_cli

FIXTURES = Path(__file__).parent / "fixtures"

TINY = [
    "search=quickstart",
    "data.n_train=300",
    "data.n_test=100",
    "model.channels=4",
    "train.max_epochs=2",
    "hydra.sweeper.n_startup_jobs=3",
    "hydra.sweeper.pruner.kind=none",
    "hydra.sweeper.report=false",
]
PRUNING = [
    "train.max_epochs=4",
    "train.patience=4",
    "hydra.sweeper.pruner.kind=median",
    "hydra.sweeper.pruner.warmup_epochs=1",
    "hydra.sweeper.pruner.min_trials=2",
]


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
    assert len(listing.stdout.strip().splitlines()) == 9  # header, 7 trials, "7 runs matched (...)"


def test_failure_rate_bound_stops_the_sweep(runs_dir: Path, tmp_path: Path):
    sweep_dir = tmp_path / "sweep"
    proc = sweep(
        runs_dir,
        sweep_dir,
        "hydra.sweeper.n_trials=8",
        "hydra.sweeper.max_failure_rate=0.5",
        "hydra.sweeper.failure_rate_min_finished=2",
        "train.optimizer=sgd",
        "train.lr=1e12",
    )
    assert proc.returncode == 3
    assert "max_failure_rate=0.5" in proc.stderr and "TrainingDivergedError" in proc.stderr
    out = results(sweep_dir)
    assert out["n_trials"] == 2 and out["n_failed"] == 2  # stopped after the first batch of 2
    assert "Traceback" not in proc.stderr.split("stopping sweep")[-1]


def test_an_accuracy_objective_is_maximized(runs_dir: Path, tmp_path: Path):
    sweep_dir = tmp_path / "sweep"
    proc = sweep(
        runs_dir,
        sweep_dir,
        "hydra.sweeper.n_trials=3",
        "objective=best_val_acc",
        "hydra.sweeper.n_jobs=1",
        "train.lr=choice(0.3,0.00001)",
    )  # two very different accuracies after 2 epochs
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = results(sweep_dir)
    values = [t["value"] for t in out["trials"] if t["status"] == "ok"]
    assert out["direction"] == "maximize" and len(set(values)) > 1 and out["best_value"] == max(values)


def test_a_direction_that_contradicts_the_objective_is_refused_before_any_trial(runs_dir: Path, tmp_path: Path):
    proc = sweep(runs_dir, tmp_path / "sweep", "objective=test_acc", "hydra.sweeper.direction=minimize")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        "hydra.sweeper.direction=minimize contradicts objective=test_acc" in proc.stderr
        and "set it to maximize" in proc.stderr
    )
    assert not (runs_dir / "store").exists()


def test_pruned_trials_across_two_joblib_workers_and_after_resume(runs_dir: Path, tmp_path: Path):
    sweep_dir = tmp_path / "sweep"
    args = [*PRUNING, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2"]
    first = sweep(runs_dir, sweep_dir, *args, "hydra.sweeper.n_trials=2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in first.stdout + first.stderr
    out = results(sweep_dir)
    assert [t["status"] for t in out["trials"]] == ["ok", "ok"] and len({t["run_id"] for t in out["trials"]}) == 2
    for job in ("0", "1"):
        assert json.loads((sweep_dir / job / "result.json").read_text())["sweep_id"] == out["sweep_id"]

    resumed = sweep(runs_dir, sweep_dir, *args, "hydra.sweeper.n_trials=6")  # pruned on the first run's evidence
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming sweep" in resumed.stdout and "(pruned after epoch" in resumed.stdout
    out = results(sweep_dir)
    pruned = [t for t in out["trials"] if t["status"] == "pruned"]
    assert pruned and out["n_pruned"] == len(pruned) and all(t["number"] >= 2 for t in pruned)
    evidence = [json.loads(line) for line in (sweep_dir / "pruning_evidence.jsonl").read_text().splitlines()]
    assert {r["job"] for r in evidence} == set(range(6))  # every worker's epochs, the first run's kept
    store = {r.id: r for r in read_file_store(runs_dir / "store")}
    for trial in pruned:
        run, epoch = store[trial["run_id"]], trial["pruned"]["epoch"]
        assert 1 <= epoch < 4 and "worse than the median" in trial["pruned"]["reason"]
        assert run.status == "COMPLETED" and run.info["pruned"]["epoch"] == epoch
        assert len(run.metrics["val.loss"]["values"]) == epoch  # stopped at the end of that epoch, metrics kept
        assert trial["value"] == min(run.metrics["val.loss"]["values"])  # reported with the objective it reached
        assert (sweep_dir / str(trial["job"]) / "best_checkpoint.pt").exists()
        assert (sweep_dir / str(trial["job"]) / "last_checkpoint.pt").exists()


def test_warm_start_from_a_sweep_with_the_same_space_and_refused_with_a_changed_one(runs_dir: Path, tmp_path: Path):
    earlier_dir = runs_dir / "sweeps" / "earlier"
    earlier = sweep(runs_dir, earlier_dir, "hydra.sweeper.n_trials=2")
    assert earlier.returncode == 0, earlier.stderr[-3000:]
    earlier_id = results(earlier_dir)["sweep_id"]

    seeded = sweep(
        runs_dir,
        tmp_path / "seeded",
        "hydra.sweeper.n_trials=1",
        "hydra.sweeper.n_jobs=1",
        f"hydra.sweeper.warm_start=[{earlier_id}]",
    )  # by id: found under paths.runs
    assert seeded.returncode == 0, seeded.stderr[-3000:]
    assert f"warm start: 2 trials of sweep {earlier_id} ({earlier_dir})" in seeded.stdout
    state = json.loads((tmp_path / "seeded" / "sweep_state.json").read_text())
    assert state["warm_start"] == [earlier_id] and len(state["trials"]) == 1  # the seeds are not its trials

    changed = sweep(
        runs_dir,
        tmp_path / "changed",
        "hydra.sweeper.n_trials=1",
        f"hydra.sweeper.warm_start=[{earlier_dir}]",
        "train.lr=tag(log,interval(1e-5,1e-1))",
    )  # by folder
    assert changed.returncode == 2 and "Traceback" not in changed.stderr
    assert (
        f"cannot warm-start from sweep {earlier_id}" in changed.stderr
        and "train.lr: loguniform(0.001, 0.1) then, loguniform(1e-05, 0.1) now" in changed.stderr
    )
    assert not (tmp_path / "changed" / "0").exists()  # refused before any trial


def test_a_state_of_the_old_format_is_migrated_on_resume(runs_dir: Path, tmp_path: Path):
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    shutil.copy(FIXTURES / "old_state" / "hyperopt_state.pkl", sweep_dir)  # written by the pickling sweeper
    proc = sweep(runs_dir, sweep_dir, "hydra.sweeper.n_trials=5", "hydra.sweeper.n_jobs=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        "migrated the sweep state of an older odeflow (hyperopt_state.pkl, kept) to sweep_state.json: 4 trials"
        in proc.stdout
    )
    out = results(sweep_dir)
    assert out["sweep_id"] == "sweep-a19153f7" and [t["number"] for t in out["trials"]] == list(range(5))
    assert out["trials"][1]["value"] == pytest.approx(0.7041419982910156) and out["trials"][4]["job"] == 4


def test_a_crash_mid_batch_records_finished_trials_and_reruns_lost_ones_under_new_job_numbers(
    runs_dir: Path, tmp_path: Path
):
    sweep_dir = tmp_path / "sweep"
    proc = sweep(runs_dir, sweep_dir, "hydra.sweeper.n_trials=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # What a kill during the batch leaves: both trials still 'running' in the state (it is written before the
    # launch and after it), trial 0 finished (its result.json is there), trial 1 killed in training.
    state_file = sweep_dir / "sweep_state.json"
    state = json.loads(state_file.read_text())
    done_value = state["trials"][0]["value"]
    for trial in state["trials"]:
        trial.update(status="running", value=None, run_id=None)
    state_file.write_text(json.dumps(state))
    (sweep_dir / "1" / "result.json").unlink()

    resumed = sweep(runs_dir, sweep_dir, "hydra.sweeper.n_trials=2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "trial 0 (job 0) had finished before the interruption: recorded" in resumed.stdout
    assert "trial 1 (job 1) was lost in an interruption: it runs again under a new job number" in resumed.stdout
    state = json.loads(state_file.read_text())
    assert [(t["number"], t["job"], t["status"], t["lost_jobs"]) for t in state["trials"]] == [
        (0, 0, "ok", []),
        (1, 2, "ok", [1]),
    ]
    assert state["trials"][0]["value"] == done_value and state["next_job"] == 3
    assert json.loads((sweep_dir / "2" / "result.json").read_text())["sweep_id"] == state["sweep_id"]

    other = sweep(runs_dir, sweep_dir, "hydra.sweeper.n_trials=3", "objective=best_val_acc")
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert "objective best_val_loss (minimize) then, best_val_acc (maximize) now" in other.stderr
    assert f"hydra.sweep.dir={sweep_dir}-2" in other.stderr
    assert len(json.loads(state_file.read_text())["trials"]) == 2  # nothing ran, nothing recorded


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time (what "nothing touched" compares)."""
    files = (p for p in folder.rglob("*") if p.is_file() and p.name != ".sweep.lock")  # the lock is no trial's
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in files}


def test_a_new_sweep_never_starts_over_another_sweeps_trials(runs_dir: Path, tmp_path: Path):
    sweep_dir = tmp_path / "sweep"
    first = sweep(runs_dir, sweep_dir, "hydra.sweeper.n_trials=1", "hydra.sweeper.n_jobs=1")
    assert first.returncode == 0, first.stderr[-3000:]
    sweep_id = results(sweep_dir)["sweep_id"]
    before = snapshot(sweep_dir)

    over = sweep(runs_dir, sweep_dir, "hydra.sweeper.n_trials=1", "hydra.sweeper.resume=false")
    assert over.returncode == 2 and "Traceback" not in over.stderr
    assert f"{sweep_dir} holds the trials of sweep {sweep_id}" in over.stderr
    assert f"hydra.sweep.dir={sweep_dir}-2" in over.stderr
    # What a lost or deleted state leaves (the old damaged-state advice was to delete it): the trial folders.
    (sweep_dir / "sweep_state.json").rename(tmp_path / "kept_state.json")
    del before["sweep_state.json"]
    again = sweep(runs_dir, sweep_dir, "hydra.sweeper.n_trials=1")
    assert again.returncode == 2 and "1 trial folders of an earlier sweep" in again.stderr
    assert snapshot(sweep_dir) == before  # not a file of the first sweep touched
    assert len(read_file_store(runs_dir / "store")) == 1

    elsewhere = sweep(runs_dir, tmp_path / "sweep-2", "hydra.sweeper.n_trials=1", "hydra.sweeper.n_jobs=1")
    assert elsewhere.returncode == 0, elsewhere.stderr[-3000:]  # the folder the message proposed


def test_a_damaged_state_is_named_and_its_fix_loses_nothing(runs_dir: Path, tmp_path: Path):
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / "sweep_state.json").write_text(
        '{"format": "odeflow-sweep-state", "version": 1, "sweep_id": "s-1", "tr'
    )
    proc = sweep(runs_dir, sweep_dir, "hydra.sweeper.n_trials=1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{sweep_dir / 'sweep_state.json'} is damaged" in proc.stderr
    assert "delete it" not in proc.stderr.replace("do not delete", "") and "another hydra.sweep.dir" in proc.stderr


def test_two_sweeps_started_together_on_one_folder_one_runs_the_other_is_refused(runs_dir: Path, tmp_path: Path):
    sweep_dir = tmp_path / "sweep"
    command = [sys.executable, "-m", "runner", "-m", *TINY, f"hydra.sweep.dir={sweep_dir}", "hydra.sweeper.n_trials=4"]
    env = {**os.environ, "ODEFLOW_RUNS": str(runs_dir)}
    procs = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    procs.append(
        subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    )
    outputs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outputs
    refused_out, refused_err = next(o for p, o in zip(procs, outputs, strict=True) if p.returncode == 2)
    out = results(sweep_dir)
    assert "Traceback" not in refused_err and len(refused_err.strip().splitlines()) == 2  # the cause, the fix
    assert f"{sweep_dir} is in use by sweep {out['sweep_id']} (pid " in refused_err or (
        f"{sweep_dir} is in use by a sweep starting up (pid " in refused_err
    )
    assert "[hyperopt] sweep" not in refused_out  # refused before it started anything
    state = json.loads((sweep_dir / "sweep_state.json").read_text())
    assert state["sweep_id"] == out["sweep_id"] and [t["status"] for t in state["trials"]] == ["ok"] * 4
    store = read_file_store(runs_dir / "store")
    assert len(store) == 4 and {r.meta["sweep_id"] for r in store} == {out["sweep_id"]}
    for job in range(4):
        assert json.loads((sweep_dir / str(job) / "result.json").read_text())["sweep_id"] == out["sweep_id"]
    assert not (sweep_dir / "4").exists()


def test_failed_trials_are_recorded_the_sweep_goes_on_and_ends_with_its_report(runs_dir: Path, tmp_path: Path):
    sweep_dir = runs_dir / "sweeps" / "reported"
    proc = sweep(
        runs_dir,
        sweep_dir,
        "hydra.sweeper.n_trials=6",
        "hydra.sweeper.report=true",
        "hydra.sweeper.max_failure_rate=1.0",
        "train.optimizer=sgd",
        "train.lr=choice(0.05,1e12)",
        *PRUNING,
    )  # lr 1e12 diverges to NaN
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = results(sweep_dir)
    failed = [t for t in out["trials"] if t["status"] == "failed"]
    assert out["n_trials"] == 6 and failed and len(failed) < 6
    assert all("TrainingDivergedError" in t["error"] for t in failed)
    assert all(t["params"]["train.lr"] == 1e12 for t in failed)
    assert "the sweep goes on" in proc.stdout
    store = read_file_store(runs_dir / "store")
    trials = [r for r in store if r.meta.get("sweep_id") == out["sweep_id"]]
    assert sum(r.status == "FAILED" for r in trials) == len(failed)  # each failure is a logged, failed run

    assert f"sweep report: {sweep_dir / 'report' / 'report.md'}" in proc.stdout.split("results:")[-1]  # the last word
    report_runs = [r for r in store if r.meta.get("sweep_report_of") == out["sweep_id"]]
    assert len(report_runs) == 1 and report_runs[0].status == "COMPLETED"
    assert {"report.md", "best_so_far.png", "objective_vs_params.png", "parallel_coordinates.png"} <= set(
        report_runs[0].artifacts
    )
    again = run_cli(
        ["sweep-report", out["sweep_id"], "--out", str(tmp_path / "again"), "tracking=none"], runs_dir
    )  # by id
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{len(failed)} failed" in again.stdout and (tmp_path / "again" / "report.md").exists()
    missing = run_cli(["sweep-report", "no-such-sweep"], runs_dir)
    assert (
        missing.returncode == 2 and "no sweep 'no-such-sweep'" in missing.stderr and "Traceback" not in missing.stderr
    )


def _signal_during_trial_1(runs_dir: Path, sweep_dir: Path, n_trials: int, signum: int, wait: float):
    """(the sweep's arguments, its process, its stderr): a sweep of `n_trials` several-second trials, sent `signum`
    `wait` seconds after its trial 1 (run 2) started."""
    import time

    args = ["-m", *TINY, f"hydra.sweep.dir={sweep_dir}", f"hydra.sweeper.n_trials={n_trials}", "hydra.sweeper.n_jobs=1"]
    args += ["train.max_epochs=15", "train.patience=15"]  # trials of several seconds
    env = {**os.environ, "ODEFLOW_RUNS": str(runs_dir)}
    victim = subprocess.Popen(
        [sys.executable, "-m", "runner", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert any('Started run with ID "2"' in line for line in victim.stdout)  # trial 1 is a tracked run
        time.sleep(wait)
        victim.send_signal(signum)
        _, stderr = victim.communicate(timeout=120)
    finally:
        if victim.poll() is None:
            victim.kill()
    return args, victim, stderr


def test_a_sweep_stopped_by_sigterm_interrupts_its_trial_and_resumes(runs_dir: Path, tmp_path: Path):
    import signal

    sweep_dir = tmp_path / "sweep"
    args, victim, stderr = _signal_during_trial_1(runs_dir, sweep_dir, 3, signal.SIGTERM, 0.5)  # into its training
    assert victim.returncode == 128 + signal.SIGTERM and "Traceback" not in stderr, stderr[-3000:]
    line = stderr.strip().splitlines()[-1]
    assert (
        line.startswith("[hyperopt] sweep ")
        and "interrupted (SIGTERM): run 2 (trial 1) recorded as INTERRUPTED" in line
    )
    assert "resume it by running the same command again" in line
    assert [r.status for r in read_file_store(runs_dir / "store")] == ["COMPLETED", "INTERRUPTED"]

    resumed = run_cli(args, runs_dir)  # the lock died with the process: the same command resumes
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "trial 1 (job 1) was lost in an interruption: it runs again under a new job number" in resumed.stdout
    assert [t["status"] for t in results(sweep_dir)["trials"]] == ["ok", "ok", "ok"]
    interrupted = next(r for r in read_file_store(runs_dir / "store") if r.id == 2)
    assert interrupted.meta["superseded_by"] == results(sweep_dir)["trials"][1]["run_id"]  # never resumed


def test_a_trial_killed_with_sigkill_runs_again_and_its_lost_attempt_points_to_the_rerun(
    runs_dir: Path, tmp_path: Path
):
    import signal

    sweep_dir = tmp_path / "sweep"
    args, _, _ = _signal_during_trial_1(runs_dir, sweep_dir, 2, signal.SIGKILL, 0.0)
    assert [r.status for r in read_file_store(runs_dir / "store")] == ["COMPLETED", "RUNNING"]
    assert "run 2 DEAD: its process is gone" in run_cli(["runs", "list"], runs_dir).stdout

    resumed = run_cli(args, runs_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rerun = results(sweep_dir)["trials"][1]["run_id"]
    assert rerun == 3 and "run 3 replaces the lost attempt (run 2), now marked superseded" in resumed.stdout
    runs = {r.id: r for r in read_file_store(runs_dir / "store")}
    assert runs[2].meta["superseded_by"] == 3 and runs[2].meta["superseded_by_uid"] == runs[3].meta["run_uid"]
    assert runs[3].meta["supersedes"] == 2 and runs[3].meta["supersedes_uid"] == runs[2].meta["run_uid"]
    listing = run_cli(["runs", "list"], runs_dir).stdout
    assert "run 2 SUPERSEDED: nothing to do: its sweep trial ran again as run 3" in listing
    assert "resume" not in listing
    refused = run_cli(["resume", "2"], runs_dir)
    assert refused.returncode == 2 and "was replaced by run 3 already" in refused.stderr
