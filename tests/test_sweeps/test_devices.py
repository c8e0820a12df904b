"""One GPU per trial for each launcher (runner/sweeps/devices.py), on a CPU machine with a fake GPU topology:
the submitting machine's GPUs are read from CUDA_VISIBLE_DEVICES, which the tests set to GPUs that are not there
(the trials train on the CPU, train.device=auto, and record what they saw). The Slurm case is in test_slurm.py."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from odeflow.errors import ConfigError, SolverError, UserError
from runner.sweeps import devices
from runner.sweeps.devices import (
    SWEEPER_PID_ENV,
    WORKER_GPUS_ENV,
    WORKER_SLOTS_ENV,
    bind_trial_gpu,
    bind_workers_to_gpus,
    machine_gpus,
)
from runner.tracking.runstore import read_file_store
from tests.conftest import CONF, ROOT, run_cli
from tests.test_sweeps.test_sweeper_runs import TINY, results

JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
SLURM = "hydra_plugins.odeflow_slurm_launcher.SlurmLauncher"
RAY = "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"
BASIC = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


@pytest.mark.parametrize(
    ("listed", "gpus"),
    [("0,1", ["0", "1"]), ("3, 1", ["3", "1"]), ("2,-1,3", ["2"]), ("", []), ("-1", []), ("GPU-8f3a", ["GPU-8f3a"])],
)
def test_the_machine_gpus_are_cuda_visible_devices_read_as_cuda_reads_it(listed: str, gpus: list[str]):
    assert machine_gpus({"CUDA_VISIBLE_DEVICES": listed}) == gpus


@pytest.mark.parametrize("launcher", [BASIC, SLURM, RAY])
def test_only_joblib_workers_are_bound_the_schedulers_and_the_basic_launcher_hand_out_nothing(launcher, tmp_path):
    environ = {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    assert bind_workers_to_gpus(launcher, "auto", tmp_path, 4, environ) is None
    assert environ == {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}  # nothing for the trials to bind to


def test_joblib_workers_are_told_the_gpus_unless_the_trials_fix_their_device(tmp_path):
    environ = {"CUDA_VISIBLE_DEVICES": "0,1"}
    line = bind_workers_to_gpus(JOBLIB, "auto", tmp_path, 3, environ)
    assert (
        line == "each joblib worker trains on one GPU of 0,1 for its life; n_jobs=3 > 2 GPUs: some workers share a GPU"
    )
    assert environ[WORKER_GPUS_ENV] == "0,1" and environ[SWEEPER_PID_ENV] == str(os.getpid())
    assert Path(environ[WORKER_SLOTS_ENV]).is_dir()

    for device, said in [
        ("cpu", None),
        ("cuda:1", "train.device=cuda:1 for every trial: joblib workers are not bound"),
    ]:
        environ = {"CUDA_VISIBLE_DEVICES": "0,1"}
        line = bind_workers_to_gpus(JOBLIB, device, tmp_path, 2, environ)
        assert (line is None if said is None else line.startswith(said)) and WORKER_GPUS_ENV not in environ
    assert bind_workers_to_gpus(JOBLIB, "auto", tmp_path, 2, {"CUDA_VISIBLE_DEVICES": ""}) is None  # no GPU


def test_a_slot_is_held_until_its_holder_lets_go(tmp_path):
    first, first_lock = devices._claim_slot(tmp_path)
    second, second_lock = devices._claim_slot(tmp_path)
    assert (first, second) == (0, 1)
    first_lock.close()  # the kernel drops the lock with its file, as when a worker process ends
    again, again_lock = devices._claim_slot(tmp_path)
    assert again == 0
    second_lock.close()
    again_lock.close()


def test_trials_in_the_sweepers_own_process_are_not_bound(monkeypatch, tmp_path):
    monkeypatch.setattr(devices, "_bound", None)
    environ = {"CUDA_VISIBLE_DEVICES": "0,1", WORKER_GPUS_ENV: "0,1", WORKER_SLOTS_ENV: str(tmp_path)}
    environ[SWEEPER_PID_ENV] = str(os.getpid())
    assert bind_trial_gpu(environ) == {"cuda_visible_devices": "0,1"}
    assert environ["CUDA_VISIBLE_DEVICES"] == "0,1" and not list(tmp_path.iterdir())


# The sweeper's process, reduced to what binds its workers: it tells them the GPUs, then runs batches of trials on
# joblib's loky workers, which it keeps between batches (as Hydra's joblib launcher does). A process of its own,
# so that its workers are new ones and inherit its environment.
BATCHES = """
import json, os, sys, time
from pathlib import Path
from joblib import Parallel, delayed
from runner.sweeps.devices import bind_workers_to_gpus

def trial():
    from runner.sweeps.devices import bind_trial_gpu
    seen = bind_trial_gpu()
    time.sleep(0.5)  # long enough for every worker to take trials
    return os.getpid(), seen["cuda_visible_devices"], seen.get("gpu_slot")

workers = int(sys.argv[1])
bind_workers_to_gpus("JoblibLauncher", "auto", Path(sys.argv[2]), workers)
seen = []
for batch in range(3):
    seen += Parallel(n_jobs=workers, backend="loky")(delayed(trial)() for _ in range(workers))
print(json.dumps(seen))
"""


@pytest.mark.parametrize(("gpus", "workers"), [("0,1", 2), ("4,5,6,7", 4), ("0,1", 3)])
def test_each_joblib_worker_binds_to_one_gpu_for_its_life(tmp_path, gpus: str, workers: int):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpus, "PYTHONPATH": str(ROOT)}  # the machine's fake GPUs
    proc = subprocess.run(
        [sys.executable, "-c", BATCHES, str(workers), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    by_worker: dict[int, set] = {}
    for pid, visible, slot in json.loads(proc.stdout.splitlines()[-1]):
        by_worker.setdefault(pid, set()).add((visible, slot))
    assert all(len(bound) == 1 for bound in by_worker.values()), by_worker  # one GPU for each worker's life
    bound = sorted((next(iter(b)) for b in by_worker.values()), key=lambda b: b[1])
    listed = gpus.split(",")
    assert [slot for _, slot in bound] == list(range(len(bound)))  # distinct slots, the lowest free first
    assert [visible for visible, _ in bound] == [listed[slot % len(listed)] for _, slot in bound]
    if workers <= len(listed):
        assert len(by_worker) == workers  # every worker took trials, each on a GPU of its own


def sweep(runs_dir: Path, sweep_dir: Path, *overrides: str, env: dict[str, str]):
    return run_cli(["-m", *TINY, f"hydra.sweep.dir={sweep_dir}", *overrides], runs_dir, env=env)


def _trial_runs(runs_dir: Path, sweep_id: str) -> list:
    return [r for r in read_file_store(runs_dir / "store") if r.meta.get("sweep_id") == sweep_id]


def _devices_asked(sweep_dir: Path) -> list[str]:
    """The distinct train.device overrides the sweep's trials ran with."""
    jobs = [yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) for job in sweep_dir.glob("[0-9]*")]
    return sorted({o for line in jobs for o in line if o.startswith("train.device=")})


QUICK = ["train.max_epochs=1", "train.device=auto", "hydra.sweeper.n_jobs=2"]


def test_a_joblib_sweep_on_two_fake_gpus_gives_each_worker_its_own(runs_dir, tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = sweep(
        runs_dir,
        sweep_dir,
        *QUICK,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "hydra.sweeper.n_trials=4",
        env={"CUDA_VISIBLE_DEVICES": "0,1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "each joblib worker trains on one GPU of 0,1 for its life" in proc.stdout
    runs = _trial_runs(runs_dir, results(sweep_dir)["sweep_id"])
    assert len(runs) == 4
    gpu_of = {}
    for run in runs:
        assert gpu_of.setdefault(run.meta["pid"], run.meta["cuda_visible_devices"]) == run.meta["cuda_visible_devices"]
        assert run.meta["cuda_visible_devices"] in ("0", "1") and run.meta["gpu_slot"] in (0, 1)
    assert sorted(gpu_of.values()) == ["0", "1"]  # two workers, one GPU each, for both batches
    assert _devices_asked(sweep_dir) == ["train.device=auto"]  # as given: no cuda:N from the sweeper


def test_a_sequential_sweep_runs_its_trials_on_the_gpus_the_sweeper_sees(runs_dir, tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = sweep(runs_dir, sweep_dir, *QUICK, "hydra.sweeper.n_trials=2", env={"CUDA_VISIBLE_DEVICES": "0,1,2,3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = _trial_runs(runs_dir, results(sweep_dir)["sweep_id"])
    assert len(runs) == 2 and len({r.meta["pid"] for r in runs}) == 1  # the sweeper's own process
    assert all(r.meta["cuda_visible_devices"] == "0,1,2,3" and "gpu_slot" not in r.meta for r in runs)
    assert _devices_asked(sweep_dir) == ["train.device=auto"]  # as given: no cuda:N from the sweeper


@pytest.mark.parametrize("preset", ["ray_cluster", "ray_local"])
def test_the_ray_presets_ask_one_gpu_per_trial(preset: str):
    # Read as files: Ray is an optional extra (make install-ray); test_launchers composes them when it is there.
    launcher = OmegaConf.load(CONF / "hydra" / "launcher" / f"{preset}.yaml")
    assert launcher.defaults == ["ray"] and launcher.ray.remote.num_gpus == 1


@pytest.mark.parametrize(
    "error",
    [
        ConfigError("train.device", "cuda:1", "cuda:0 .. cuda:0"),
        ConfigError("device", "cuda:3", "auto, cpu, cuda or cuda:N", "leave train.device=auto").within("train"),
        UserError("no CUDA device is visible", "train.device=auto"),
        SolverError("step size underflow"),
    ],
)
def test_a_trials_error_crosses_from_a_joblib_worker_whole(error: UserError):
    # A trial asking for a GPU its worker does not have raises a ConfigError there; joblib pickles it back to
    # the sweeper, which records a failed trial. A ConfigError that cannot be rebuilt ended the whole sweep.
    crossed = pickle.loads(pickle.dumps(error))
    assert type(crossed) is type(error) and str(crossed) == str(error) and crossed.fix == error.fix
    assert crossed.__dict__ == error.__dict__
