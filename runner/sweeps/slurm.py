"""Trials as Slurm array jobs (submitit), with what Hydra's stock submitit launcher leaves out.

- The request is checked against the partition before anything is submitted (`sinfo`): CPUs, memory and
  GPUs per node and the partition's existence; a request no node can satisfy is refused in one line naming
  the resource, what the partition offers and the override. A job Slurm keeps pending for a reason that no
  wait will change (PartitionConfig, QOS limits, ...) is cancelled and refused the same way within seconds.
- Each submitted job is written to `<sweep dir>/slurm_jobs.json` (trial -> Slurm job id) the moment sbatch
  returns, so a sweep whose submitting process died finds its trials' jobs again: running the same command
  waits for a job still queued or running instead of submitting the trial twice.
- A job that ended without a result is a failed trial naming the cause from its Slurm state (`sacct`):
  "cancelled by Slurm", "timed out after N min", out of memory, node failure. The sweep goes on.
- `cpus_per_task` follows `train.num_threads` (and torch uses exactly the CPUs the job was given).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf

from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher
from odeflow.errors import UserError

LEDGER_FILE = "slurm_jobs.json"
DEFAULT_CPUS = 2  # cpus_per_task when neither it nor train.num_threads is set
POLL_S = 1.0
ACTIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED", "STAGE_OUT"}
# Pending reasons no wait resolves: the job can never start as requested.
HOPELESS_REASONS = {
    "PartitionConfig",
    "BadConstraints",
    "PartitionNodeLimit",
    "PartitionTimeLimit",
    "InvalidQOS",
    "InvalidAccount",
    "QOSMaxCpuPerJobLimit",
    "QOSMaxMemoryPerJob",
    "QOSMaxGRESPerJob",
    "QOSMaxWallDurationPerJobLimit",
    "AssocMaxCpuPerJobLimit",
    "AssocMaxWallDurationPerJobLimit",
}


class SlurmRequestError(UserError):
    """A resource request the cluster can never satisfy, or a Slurm command that refused the submission."""


class TrialJobError(RuntimeError):
    """A trial's Slurm job ended without a result (cancelled, timed out, out of memory, node failure)."""


# --- talking to Slurm ------------------------------------------------------------------------------------


def slurm(*args: str, timeout: float = 60) -> str:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, list(args), done.stdout, done.stderr)
    return done.stdout


@dataclass
class Partition:
    """What the largest node of a partition offers one job."""

    name: str
    cpus: int
    memory_mb: int
    gpus: int
    max_time_min: int | None  # None: no limit


def _gpu_count(gres: str) -> int:
    """`gpu:1`, `gpu:a100:4(S:0-1)`, `gpu:2,shard:8` -> the GPU count (0 for `(null)`)."""
    total = 0
    for item in gres.split(","):
        parts = re.sub(r"\(.*?\)", "", item).split(":")
        if parts[0] == "gpu" and len(parts) >= 2 and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def _minutes(limit: str) -> int | None:
    """sinfo's time limit (`infinite`, `30:00`, `1-12:00:00`, `5`) in minutes."""
    if limit in ("infinite", "UNLIMITED", "n/a", ""):
        return None
    days, _, rest = limit.rpartition("-")
    fields = [int(f) for f in rest.split(":")]
    hours, minutes = {1: (0, fields[0]), 2: (0, fields[0]), 3: (fields[0], fields[1])}[len(fields)]
    return (int(days) if days else 0) * 1440 + hours * 60 + minutes


def query_partition(name: str | None) -> Partition:
    """The partition's largest node (CPUs, memory, GPUs) and time limit, from sinfo; None: the default one."""
    try:
        lines = slurm("sinfo", "-h", "-N", "-o", "%P|%c|%m|%G|%l").splitlines()
    except FileNotFoundError as error:
        raise SlurmRequestError(
            "hydra/launcher=slurm: the Slurm commands (sinfo, sbatch) are not on this machine",
            "run the sweep on a Slurm login node, or pick another launcher (hydra/launcher=joblib)",
        ) from error
    except subprocess.CalledProcessError as error:
        raise SlurmRequestError(
            f"hydra/launcher=slurm: sinfo failed: {error.stderr.strip().splitlines()[-1:] or error.returncode}",
            "check that the Slurm controller is reachable from here (sinfo)",
        ) from error
    rows = [line.split("|") for line in lines if line.count("|") == 4]
    partitions = sorted({row[0].rstrip("*") for row in rows})
    if name is None:
        default = [row[0].rstrip("*") for row in rows if row[0].endswith("*")]
        if not default:
            raise SlurmRequestError(
                "hydra.launcher.partition is not set and this cluster has no default partition",
                f"set hydra.launcher.partition to one of: {', '.join(partitions)}",
            )
        name = default[0]
    nodes = [row for row in rows if row[0].rstrip("*") == name]
    if not nodes:
        raise SlurmRequestError(
            f"hydra.launcher.partition={name}: no such partition on this cluster (it has {', '.join(partitions)})",
            f"set hydra.launcher.partition to one of: {', '.join(partitions)}",
        )
    return Partition(
        name,
        cpus=max(int(row[1].rstrip("+")) for row in nodes),
        memory_mb=max(int(row[2].rstrip("+")) for row in nodes),
        gpus=max(_gpu_count(row[3]) for row in nodes),
        max_time_min=_minutes(nodes[0][4]),
    )


def check_request(params: dict[str, Any], partition: Partition) -> None:
    """Refuse a request no node of the partition can ever satisfy (one line: resource, offer, override)."""
    cpus = (params.get("cpus_per_task") or 1) * (params.get("tasks_per_node") or 1)
    gpus = params.get("gpus_per_node") or 0
    mem_gb = params.get("mem_gb")
    where = f"partition {partition.name}"
    if cpus > partition.cpus:
        raise SlurmRequestError(
            f"hydra.launcher.cpus_per_task={params.get('cpus_per_task')}: {where} offers at most {partition.cpus} "
            f"CPUs per node",
            f"set hydra.launcher.cpus_per_task={partition.cpus} (or lower train.num_threads) or pick another "
            "hydra.launcher.partition",
        )
    if mem_gb is not None and mem_gb * 1024 > partition.memory_mb:
        raise SlurmRequestError(
            f"hydra.launcher.mem_gb={mem_gb}: {where} offers at most {partition.memory_mb // 1024} GB "
            f"({partition.memory_mb} MB) per node",
            f"set hydra.launcher.mem_gb={max(1, partition.memory_mb // 1024)} or lower, or pick another "
            "hydra.launcher.partition",
        )
    if gpus > partition.gpus:
        offer = f"at most {partition.gpus} GPUs per node" if partition.gpus else "no GPUs"
        raise SlurmRequestError(
            f"hydra.launcher.gpus_per_node={gpus}: {where} offers {offer}",
            "use hydra/launcher=slurm_cpu, or a GPU partition (hydra.launcher.partition)"
            if not partition.gpus
            else f"set hydra.launcher.gpus_per_node={partition.gpus}",
        )
    timeout = params.get("timeout_min")
    if partition.max_time_min is not None and timeout and timeout > partition.max_time_min:
        raise SlurmRequestError(
            f"hydra.launcher.timeout_min={timeout}: {where} allows at most {partition.max_time_min} min per job",
            f"set hydra.launcher.timeout_min={partition.max_time_min}",
        )


@dataclass
class JobState:
    state: str  # Slurm's state word: PENDING, RUNNING, COMPLETED, CANCELLED, TIMEOUT, ...
    reason: str = ""
    node: str = ""
    partition: str = ""
    time_limit: str = ""


def job_states(job_ids: Sequence[str]) -> dict[str, JobState]:
    """The state of each job: squeue for jobs queued, running or recently ended (with the pending reason),
    sacct (the accounting database) for the ones the controller has forgotten. Jobs neither knows (yet) are
    left out."""
    if not job_ids:
        return {}
    states: dict[str, JobState] = {}
    arrays = sorted({j.split("_")[0] for j in job_ids})
    try:
        for line in slurm(
            "squeue", "-h", "-r", "-t", "all", "-j", ",".join(arrays), "-o", "%i|%T|%r|%N|%P|%l"
        ).splitlines():
            fields = line.strip().split("|")
            if len(fields) == 6:
                states[fields[0]] = JobState(*fields[1:])
    except subprocess.CalledProcessError:
        pass  # squeue refuses ids it has forgotten: sacct knows them
    ended = [j for j in job_ids if j not in states]
    if ended:
        try:
            out = slurm(
                "sacct",
                "-n",
                "-X",
                "-P",
                "-j",
                ",".join(ended),
                "-o",
                "JobID,State,Reason,NodeList,Partition,Timelimit",
            )
        except subprocess.CalledProcessError:
            out = ""
        for line in out.splitlines():
            fields = line.strip().split("|")
            if len(fields) == 6 and fields[0] in ended:
                states[fields[0]] = JobState(fields[1].split()[0], fields[2], fields[3], fields[4], fields[5])
    return {j: states[j] for j in job_ids if j in states}


def failure_cause(state: JobState, job_id: str, timeout_min: int | None) -> str:
    """What a trial's record says about a job that ended without a result, from its Slurm state."""
    limit = _minutes(state.time_limit) if state.time_limit else timeout_min
    causes = {
        "CANCELLED": "cancelled by Slurm (scancel, or an administrator)",
        "TIMEOUT": f"timed out after {limit} min (hydra.launcher.timeout_min)",
        "OUT_OF_MEMORY": "ran out of memory (raise hydra.launcher.mem_gb)",
        "NODE_FAIL": f"its node {state.node} failed",
        "PREEMPTED": "preempted by Slurm",
        "BOOT_FAIL": "its node failed to boot",
        "DEADLINE": "past its deadline",
        "FAILED": "failed on the node (no result written; see the job's log in .submitit)",
    }
    return f"Slurm job {job_id} {causes.get(state.state, state.state.lower())}"


# --- the record of submitted jobs --------------------------------------------------------------------------


class JobLedger:
    """`<sweep dir>/slurm_jobs.json`: per trial (sweep id and trial number) its Slurm job and Hydra job number."""

    def __init__(self, sweep_dir: Path) -> None:
        self.path = sweep_dir / LEDGER_FILE
        try:
            self.entries: dict[str, dict[str, Any]] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    def get(self, trial_key: str | None) -> dict[str, Any] | None:
        return self.entries.get(trial_key) if trial_key else None

    def add(self, trial_key: str | None, entry: dict[str, Any]) -> None:
        if trial_key:
            self.entries[trial_key] = entry

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.entries, indent=1))
        os.replace(temporary, self.path)


def trial_key(overrides: Sequence[str]) -> str | None:
    """`<sweep_id>/<sweep_trial>` from a trial's overrides (None outside a sweep of this project)."""
    values = dict(o.split("=", 1) for o in overrides if "=" in o)
    if "sweep_id" in values and "sweep_trial" in values:
        return f"{values['sweep_id']}/{values['sweep_trial']}"
    return None


# --- the launcher ----------------------------------------------------------------------------------------


class SlurmJobLauncher(SubmititSlurmLauncher):
    """Hydra's submitit Slurm launcher with request checks, a job ledger for resume, and Slurm-state failures."""

    def setup(self, *, hydra_context, task_function, config) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        threads = OmegaConf.select(config, "train.num_threads")
        self.cpus = int(self.params.get("cpus_per_task") or threads or DEFAULT_CPUS)
        self.params["cpus_per_task"] = self.cpus
        self.threads_fixed = threads is not None
        self.checked = False

    def __call__(self, sweep_overrides, job_dir_key, job_num, job_id, singleton_state) -> JobReturn:
        # submitit's SIGUSR1 handler would requeue the trial near its time limit and run it again from the
        # start; the trial runs until Slurm's limit instead, and its record says it timed out.
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        return super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        return None  # never requeue: a requeued trial would train again from its first epoch

    def _executor(self):
        import submitit

        params = dict(self.params)
        executor = submitit.AutoExecutor(
            folder=params.pop("submitit_folder"),
            cluster="slurm",
            slurm_max_num_timeout=params.pop("max_num_timeout", 0),
        )
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
        return executor

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        assert self.config is not None
        if not self.checked:
            check_request(self.params, query_partition(self.params.get("partition")))
            self.checked = True
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        ledger = JobLedger(sweep_dir)
        folder = str(self.params["submitit_folder"])
        jobs: list[Any] = [None] * len(job_overrides)
        nums = [initial_job_idx + i for i in range(len(job_overrides))]
        known = job_states([ledger.get(trial_key(o))["job_id"] for o in job_overrides if ledger.get(trial_key(o))])
        fresh = []
        for i, overrides in enumerate(job_overrides):
            entry = ledger.get(trial_key(overrides))
            if entry is not None and entry["job_id"] in known:
                # an earlier submitting process launched this trial: wait for that job, never run it twice
                jobs[i] = submitit.SlurmJob(folder=entry["folder"], job_id=entry["job_id"])
                nums[i] = entry["job_num"]
                print(
                    f"[slurm] trial {trial_key(overrides)}: waiting for its job {entry['job_id']} "
                    f"({known[entry['job_id']].state.lower()}) from before the interruption",
                    flush=True,
                )
            else:
                fresh.append(i)
        if fresh:
            params = []
            for i in fresh:
                overrides = list(job_overrides[i])
                if not self.threads_fixed:
                    overrides.append(f"train.num_threads={self.cpus}")
                print(f"[slurm] #{nums[i]} : {' '.join(filter_overrides(overrides))}", flush=True)
                params.append((overrides, "hydra.sweep.dir", nums[i], f"job_id_for_{nums[i]}", Singleton.get_state()))
            try:
                submitted = self._executor().map_array(self, *zip(*params, strict=True))
            except subprocess.CalledProcessError as error:
                output = (error.stderr or error.output or b"").strip()
                output = output.decode() if isinstance(output, bytes) else output
                raise SlurmRequestError(
                    f"sbatch refused the trials: {output.splitlines()[-1] if output else error}",
                    "change the hydra.launcher setting it names (hydra.launcher.partition, cpus_per_task, mem_gb, "
                    "gpus_per_node, additional_parameters)",
                ) from error
            for i, job in zip(fresh, submitted, strict=True):
                jobs[i] = job
                ledger.add(trial_key(job_overrides[i]), {"job_id": job.job_id, "job_num": nums[i], "folder": folder})
            ledger.save()
            print(
                f"[slurm] submitted {len(fresh)} trials as Slurm job {submitted[0].job_id.split('_')[0]} "
                f"(partition {self.params.get('partition') or 'default'}, {self.cpus} CPUs each)",
                flush=True,
            )
        states = self._wait([j.job_id for j in jobs])
        return [
            self._outcome(job, states[job.job_id], list(o), n)
            for job, o, n in zip(jobs, job_overrides, nums, strict=True)
        ]

    def _wait(self, job_ids: list[str]) -> dict[str, JobState]:
        """Poll until every job ended; a job pending for a hopeless reason cancels the batch and is refused."""
        final: dict[str, JobState] = {}
        unknown_since = time.monotonic()
        while True:
            waiting = [j for j in job_ids if j not in final]
            if not waiting:
                return final
            states = job_states(waiting)
            for job_id, state in states.items():
                if state.state == "PENDING" and state.reason in HOPELESS_REASONS:
                    slurm("scancel", *sorted({j.split("_")[0] for j in job_ids}))
                    raise SlurmRequestError(
                        f"Slurm will never start job {job_id} as requested (pending, reason {state.reason}) on "
                        f"partition {state.partition}: the request exceeds what the partition or your account allows",
                        "lower hydra.launcher.cpus_per_task, mem_gb, gpus_per_node or timeout_min, or pick another "
                        "hydra.launcher.partition (scontrol show partition lists its limits)",
                    )
                if state.state not in ACTIVE_STATES:
                    final[job_id] = state
            if len(states) == len(waiting):
                unknown_since = time.monotonic()
            elif time.monotonic() - unknown_since > 120:
                # neither squeue nor sacct has heard of them for two minutes (no accounting database?)
                for job_id in waiting:
                    final.setdefault(job_id, states.get(job_id) or JobState("UNKNOWN"))
            time.sleep(POLL_S)

    def _outcome(self, job: Any, state: JobState, overrides: list[str], job_num: int) -> JobReturn:
        if state.state in ("COMPLETED", "UNKNOWN"):  # UNKNOWN: Slurm forgot it (no accounting); its result says
            try:
                return job.results()[0]
            except Exception as error:  # noqa: BLE001 - no result pickle: recorded as the trial's failure
                return self._failed(overrides, job_num, TrialJobError(f"Slurm job {job.job_id}: {error}"))
        # CANCELLED, TIMEOUT, ...: whatever the trial did on its way out, its Slurm state names the cause
        return self._failed(
            overrides, job_num, TrialJobError(failure_cause(state, job.job_id, self.params.get("timeout_min")))
        )

    def _failed(self, overrides: list[str], job_num: int, error: Exception) -> JobReturn:
        assert self.config is not None
        output_dir = Path(str(self.config.hydra.sweep.dir)) / str(job_num)
        hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(output_dir)}, "job": {"num": job_num}}})
        return JobReturn(overrides=overrides, hydra_cfg=hydra_cfg, status=JobStatus.FAILED, _return_value=error)
