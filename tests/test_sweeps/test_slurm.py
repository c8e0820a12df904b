"""Sweeps on a real single-node Slurm that this module starts (tests/slurm_cluster.py) and stops.

All Slurm tests live in this one file, so one pytest-xdist worker (--dist loadfile) owns the cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pymongo
import pytest
import yaml

from runner.sweeps.slurm import LEDGER_FILE, SlurmJobLauncher, SlurmRequestError, check_request, query_partition
from runner.tracking.runstore import read_file_store
from tests.conftest import ROOT, run_cli
from tests.slurm_cluster import PARTITION, Cluster, ClusterUnavailable
from tests.test_sweeps.test_sweeper_runs import PRUNING
from tests.test_tracking.conftest import mongo_server  # noqa: F401  (a MongoDB-wire server for the jobs)

# A trial is about a second of training; a job's cost here is mostly Python and torch starting.
TINY = [
    "search=quickstart",
    "hydra/launcher=slurm_cpu",
    f"hydra.launcher.partition={PARTITION}",
    "hydra.launcher.cpus_per_task=1",  # two trials at once on the 2-CPU node
    "hydra.launcher.mem_gb=1",
    "data.n_train=300",
    "data.n_test=100",
    "model.channels=4",
    "hydra.sweeper.n_startup_jobs=3",
    "hydra.sweeper.report=false",
]


@pytest.fixture(scope="module")
def cluster():
    root = Path(tempfile.mkdtemp(prefix="odeflow-slurm-"))  # not under pytest's 0700 folders: munge and mysql enter it
    try:
        started = Cluster(root).start()
    except ClusterUnavailable as error:
        if os.geteuid() != 0 or "not installed" in str(error):
            pytest.skip(f"no test Slurm here: {error}")
        raise
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(started.conf)  # for the in-process sinfo checks
    yield started
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous
    started.stop()
    shutil.rmtree(root, ignore_errors=True)


def sweep(cluster: Cluster, runs_dir: Path, sweep_dir: Path, *overrides: str, env: dict | None = None):
    return run_cli(
        ["-m", *TINY, f"hydra.sweep.dir={sweep_dir}", *overrides], runs_dir, env={**cluster.env(), **(env or {})}
    )


def results(sweep_dir: Path) -> dict:
    return yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())


def accounted_jobs(cluster: Cluster) -> dict[str, str]:
    """Every job the accounting database knows: id -> state."""
    out = cluster.command("sacct", "-n", "-X", "-P", "-a", "-S", "now-1hour", "-o", "JobID,State")
    return {line.split("|")[0]: line.split("|")[1].split()[0] for line in out.splitlines() if "|" in line}


def wait_for(what: str, condition, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout} s")


def job_state(cluster: Cluster, job_id: str) -> str:
    out = cluster.command("squeue", "-h", "-r", "-j", job_id.split("_")[0], "-o", "%i|%T").splitlines()
    return dict(line.split("|") for line in out).get(job_id, "")


def job_environment_id(pid: int) -> str:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return ""
    return next((v[len(b"SLURM_JOB_ID=") :].decode() for v in environ if v.startswith(b"SLURM_JOB_ID=")), "")


def trial_processes(cluster: Cluster, job_id: str) -> list[int]:
    """The pids Slurm started for a job, once its trial step runs; [] until then.

    `scontrol listpids` prints -1 for a task that is still starting, and `os.kill(-1, ...)` as root signals every
    process on the machine (a SIGSTOP there once froze a whole CI run), so only pids that are real processes of
    this very job (their environment says so) are returned.
    """
    raw_id = cluster.command("squeue", "-h", "-j", job_id, "-o", "%A").strip()  # listpids takes no array ids
    rows = [line.split() for line in cluster.command("scontrol", "listpids", raw_id).splitlines()[1:]]
    if not any(row[2] == "0" and int(row[0]) > 1 for row in rows):
        return []  # the trial's step (srun's step 0) has not started yet
    pids = [int(row[0]) for row in rows if int(row[0]) > 1 and int(row[0]) != os.getpid()]
    return [pid for pid in pids if job_environment_id(pid) == raw_id]


@contextmanager
def started(command: list[str], env: dict[str, str], **kwargs) -> Iterator[subprocess.Popen]:
    """A sweep started in the background; killed on the way out if a failed wait left it running."""
    process = subprocess.Popen(command, cwd=ROOT, env=env, text=True, **kwargs)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def communicate_or_kill(process: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """`communicate`, but a sweep still running after `timeout` is killed and fails the test instead of hanging it."""
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        raise AssertionError(f"the sweep did not end within {timeout} s; its stderr:\n{stderr[-3000:]}") from None


def ledger_jobs(sweep_dir: Path) -> list[str]:
    try:
        entries = json.loads((sweep_dir / LEDGER_FILE).read_text())
    except (OSError, ValueError):
        return []
    return [e["job_id"] for e in sorted(entries.values(), key=lambda e: e["job_num"])]


def test_requests_the_partition_can_never_satisfy_are_refused_before_any_trial(cluster, runs_dir, tmp_path):
    partition = query_partition(PARTITION)
    assert partition.cpus == os.cpu_count() and partition.gpus == 1 and partition.memory_mb > 1024
    assert query_partition(None).name == PARTITION  # the default partition
    check_request({"cpus_per_task": partition.cpus, "mem_gb": 1, "gpus_per_node": 1}, partition)  # fits
    refusals = {
        "cpus_per_task": ({"cpus_per_task": partition.cpus + 1}, f"offers at most {partition.cpus} CPUs per node"),
        "mem_gb": ({"mem_gb": 100_000}, f"offers at most {partition.memory_mb // 1024} GB"),
        "gpus_per_node": ({"gpus_per_node": 2}, "offers at most 1 GPUs per node"),
    }
    for key, (request, offer) in refusals.items():
        with pytest.raises(SlurmRequestError) as refused:
            check_request(request, partition)
        assert f"hydra.launcher.{key}=" in refused.value.cause and offer in refused.value.cause
        assert f"partition {PARTITION}" in refused.value.cause and "hydra.launcher." in refused.value.fix
    with pytest.raises(SlurmRequestError, match=f"no such partition on this cluster \\(it has {PARTITION}\\)"):
        query_partition("gpu-a100")

    # The GPU preset as shipped, on a node without GPUs: one line, before any job is submitted.
    before = accounted_jobs(cluster)
    cluster.command("scontrol", "update", f"NodeName={cluster_node(cluster)}", "Gres=gpu:0")
    try:
        refused = sweep(cluster, runs_dir, tmp_path / "gpu", "hydra/launcher=slurm", "hydra.sweeper.n_trials=2")
    finally:
        cluster.restart_controller()  # the fake GPU back, from slurm.conf, and usable by the next tests' jobs
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"hydra.launcher.gpus_per_node=1: partition {PARTITION} offers no GPUs" in refused.stderr
    assert "hydra/launcher=slurm_cpu" in refused.stderr
    unknown = sweep(cluster, runs_dir, tmp_path / "unknown", "hydra.launcher.partition=gpu-a100")
    assert unknown.returncode == 2 and "hydra.launcher.partition=gpu-a100: no such partition" in unknown.stderr
    assert accounted_jobs(cluster) == before and not (tmp_path / "gpu" / LEDGER_FILE).exists()
    wait_for("the node back with its GPU", lambda: query_partition(PARTITION).gpus == 1, 30)


def test_a_job_slurm_would_keep_pending_for_ever_is_cancelled_and_refused_within_seconds(cluster):
    # What the shipped preset did on this node before requests were checked: more CPUs than any node has.
    job = cluster.command("sbatch", "--parsable", "-c", "64", "--wrap", "true").strip()
    start = time.monotonic()
    with pytest.raises(SlurmRequestError, match=f"Slurm will never start job {job} as requested") as refused:
        SlurmJobLauncher()._wait([job])
    assert time.monotonic() - start < 30 and "hydra.launcher.cpus_per_task" in refused.value.fix
    assert wait_for("the job cancelled", lambda: accounted_jobs(cluster).get(job) == "CANCELLED", 30)


def cluster_node(cluster: Cluster) -> str:
    return cluster.command("sinfo", "-h", "-N", "-o", "%N").split()[0]


def test_a_sweep_runs_its_trials_as_slurm_array_jobs_prunes_across_them_and_resumes(cluster, runs_dir, tmp_path):
    sweep_dir = tmp_path / "sweep"
    first = sweep(cluster, runs_dir, sweep_dir, *PRUNING, "hydra.sweeper.n_trials=2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "submitted 2 trials as Slurm job" in first.stdout
    resumed = sweep(cluster, runs_dir, sweep_dir, *PRUNING, "hydra.sweeper.n_trials=6")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming sweep" in resumed.stdout and "2 trials done" in resumed.stdout
    assert resumed.stdout.count("submitted 2 trials as Slurm job") == 2

    out = results(sweep_dir)
    assert [t["number"] for t in out["trials"]] == list(range(6))
    assert all(t["status"] in ("ok", "pruned") for t in out["trials"])
    pruned = [t for t in out["trials"] if t["status"] == "pruned"]
    values = [(t["status"], t["value"]) for t in out["trials"]]
    assert pruned and all(t["number"] >= 2 for t in pruned), values  # on the evidence the first jobs left
    evidence = [json.loads(line) for line in (sweep_dir / "pruning_evidence.jsonl").read_text().splitlines()]
    assert {r["job"] for r in evidence} == set(range(6))

    jobs = ledger_jobs(sweep_dir)
    arrays = {job.split("_")[0] for job in jobs}
    assert len(jobs) == 6 and len(arrays) == 3 and all("_" in job for job in jobs)  # three array jobs
    accounted = accounted_jobs(cluster)
    assert all(accounted[job] == "COMPLETED" for job in jobs)
    store = {str(r.id): r for r in read_file_store(runs_dir / "store")}
    for trial, job in zip(out["trials"], jobs, strict=True):
        slurm = store[str(trial["run_id"])].info["slurm"]
        assert slurm["job_id"] == job and slurm["array_index"] == int(job.split("_")[1])
        assert slurm["partition"] == PARTITION and slurm["node"] == cluster_node(cluster)
        assert store[str(trial["run_id"])].config["train"]["num_threads"] == 1  # what the job was given
        # drawn after the trial's result by a worker thread, which the job's process waited for
        assert {"learning_curves.png", "nfe.png", "confusion_matrix.png"} <= set(store[str(trial["run_id"])].artifacts)

    shown = run_cli(["runs", "show", str(out["trials"][0]["run_id"])], runs_dir)
    node = cluster_node(cluster)
    assert shown.returncode == 0 and f"slurm: job {jobs[0]} on node {node}, partition {PARTITION}" in shown.stdout
    report = run_cli(["sweep-report", str(sweep_dir)], runs_dir)
    assert report.returncode == 0, report.stderr[-2000:]
    assert (sweep_dir / "report" / "report.md").exists()


def test_a_gpu_trial_trains_on_the_gpu_slurm_gave_it_not_one_the_submitter_counted(cluster, runs_dir, tmp_path):
    # The submitter names four GPUs of its own; the node offers one (fake) GPU, which Slurm hands each trial.
    sweep_dir = tmp_path / "sweep"
    gpu_preset = ["hydra/launcher=slurm", "train.max_epochs=1", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2"]
    proc = sweep(cluster, runs_dir, sweep_dir, *gpu_preset, env={"CUDA_VISIBLE_DEVICES": "0,1,2,3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    store = {str(r.id): r for r in read_file_store(runs_dir / "store")}
    trials = [store[str(t["run_id"])] for t in results(sweep_dir)["trials"]]
    assert len(trials) == 2
    for run in trials:
        assert run.config["train"]["device"] == "auto"  # no cuda:N from the submitter
        assert run.meta["cuda_visible_devices"] == "0" and "gpu_slot" not in run.meta  # what Slurm set, as cuda:0
        assert run.info["slurm"]["node"] == cluster_node(cluster)


def test_cancelled_and_timed_out_trial_jobs_are_failed_trials_naming_the_cause(cluster, runs_dir, tmp_path):
    sweep_dir = tmp_path / "sweep"
    command = [
        sys.executable,
        "-m",
        "runner",
        "-m",
        *TINY,
        f"hydra.sweep.dir={sweep_dir}",
        "hydra.sweeper.pruner.kind=none",
        "train.max_epochs=2",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=3",
        "hydra.sweeper.max_failure_rate=0.7",
    ]
    env = {**os.environ, "ODEFLOW_RUNS": str(runs_dir), **cluster.env()}
    with started(command, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as p:
        jobs = wait_for("the first array", lambda: ledger_jobs(sweep_dir))
        cancelled, stalled = jobs[0], jobs[1]
        wait_for("the first trial running", lambda: job_state(cluster, cancelled) == "RUNNING")
        cluster.command("scancel", cancelled)
        wait_for("the second trial running", lambda: job_state(cluster, stalled) == "RUNNING")
        # Past its time limit for real: a one-minute limit, and the trial's processes stopped until Slurm ends it.
        cluster.command("scontrol", "update", f"JobId={stalled}", "TimeLimit=1")
        for pid in wait_for("the second trial's processes", lambda: trial_processes(cluster, stalled)):
            os.kill(pid, signal.SIGSTOP)
        stdout, stderr = communicate_or_kill(p, timeout=400)
    assert p.returncode == 0, stderr[-3000:]
    out = results(sweep_dir)
    assert [t["status"] for t in out["trials"]] == ["failed", "failed", "ok", "ok"]  # and the sweep went on
    assert (
        out["trials"][0]["error"]
        == f"TrialJobError: Slurm job {cancelled} cancelled by Slurm (scancel, or an administrator)"
    )
    assert out["trials"][1]["error"].startswith(f"TrialJobError: Slurm job {stalled} timed out after 1 min")
    assert f"trial 0 failed (TrialJobError: Slurm job {cancelled} cancelled by Slurm" in stdout
    accounted = accounted_jobs(cluster)
    assert accounted[cancelled] == "CANCELLED" and accounted[stalled] == "TIMEOUT"


def test_a_killed_submitter_resumes_with_no_trial_run_twice_and_runs_reach_mongodb(
    cluster,
    runs_dir,
    tmp_path,
    mongo_server,  # noqa: F811
):
    sweep_dir, db_name = tmp_path / "sweep", "slurm_runs"
    args = [
        f"hydra.sweep.dir={sweep_dir}",
        "hydra.sweeper.pruner.kind=none",
        "train.max_epochs=2",
        "hydra.sweeper.n_trials=2",
        "tracking=mongo",
        f"tracking.db_name={db_name}",
    ]
    env = {**os.environ, "ODEFLOW_RUNS": str(runs_dir), "MONGO_URL": mongo_server.url, **cluster.env()}
    command = [sys.executable, "-m", "runner", "-m", *TINY, *args]
    with started(command, env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as submitter:
        jobs = wait_for("the array", lambda: ledger_jobs(sweep_dir))
        wait_for("a trial running", lambda: job_state(cluster, jobs[0]) == "RUNNING")
        submitter.kill()  # SIGKILL: no chance to tidy up; the jobs run on
        submitter.wait()
    assert job_state(cluster, jobs[0]) in ("RUNNING", "COMPLETING", "COMPLETED")

    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming sweep" in again.stdout
    out = results(sweep_dir)
    assert [t["status"] for t in out["trials"]] == ["ok", "ok"]
    assert ledger_jobs(sweep_dir) == jobs  # nothing submitted again
    assert [j for j in accounted_jobs(cluster) if j.split("_")[0] == jobs[0].split("_")[0]] == jobs
    state = json.loads((sweep_dir / "sweep_state.json").read_text())
    assert [t["job"] for t in state["trials"]] == [0, 1]  # recorded from the jobs' own folders
    journal_runs = list((runs_dir / "journal").glob("*/run.json"))
    assert len(journal_runs) == 2  # one run per trial: none ran twice

    client = pymongo.MongoClient(mongo_server.url, serverSelectionTimeoutMS=3000)
    documents = list(client[db_name].runs.find({"meta.sweep_id": out["sweep_id"]}))
    assert sorted(d["info"]["slurm"]["job_id"] for d in documents) == jobs
    assert all(d["status"] == "COMPLETED" and d["slurm job"] == d["info"]["slurm"]["job_id"] for d in documents)
    assert sorted(d["_id"] for d in documents) == sorted(t["run_id"] for t in out["trials"])
