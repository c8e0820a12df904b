"""Which GPU a sweep's trial trains on, for each launcher: one GPU per trial, never a `cuda:N` from the submitter.

The sweeper hands out no device: a trial keeps its `train.device` (`auto` takes the first GPU it sees), and
what it sees depends on the launcher:
- basic (and joblib with one worker): the trials run one after another in the sweeper's process, on the GPUs it
  sees (`auto`: the first);
- joblib: each worker process binds itself, at its first trial, to one GPU of the submitting machine for the
  rest of its life (CUDA_VISIBLE_DEVICES set before CUDA starts in that process, so its trials see that GPU as
  cuda:0). The workers claim numbered slots (a lock file each, released by the kernel when a worker ends);
  slot k takes the k-th GPU, round-robin when there are more workers than GPUs;
- Slurm and Ray: the scheduler gives each trial its own GPU and sets CUDA_VISIBLE_DEVICES; the trial sees it as
  cuda:0. The submitter's GPU count means nothing on another node.
After every trial, the CUDA memory it cached is handed back, so a worker's next trial starts with a clean GPU.

The submitting machine's GPUs are CUDA_VISIBLE_DEVICES when it is set (`CUDA_VISIBLE_DEVICES=2,3 python -m
runner -m ...` gives a sweep GPUs 2 and 3), read without starting CUDA; otherwise every GPU torch counts.
"""

from __future__ import annotations

import fcntl
import gc
import os
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

# What the sweeper passes to its joblib workers (they inherit its environment when joblib starts them).
WORKER_GPUS_ENV = "ODEFLOW_WORKER_GPUS"  # the GPUs to bind to, as CUDA_VISIBLE_DEVICES entries, comma separated
WORKER_SLOTS_ENV = "ODEFLOW_WORKER_GPU_SLOTS"  # the folder of the slots' lock files
SWEEPER_PID_ENV = "ODEFLOW_SWEEPER_PID"  # trials run in this process (basic, joblib n_jobs=1) are not bound
SLOTS_FOLDER = ".gpu_slots"


def machine_gpus(environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """The GPUs a sweep on this machine can use, as CUDA_VISIBLE_DEVICES entries (indices or UUIDs).

    CUDA_VISIBLE_DEVICES, when set, is read as CUDA reads it: its entries up to the first invalid one (`-1`,
    empty). Otherwise torch counts the GPUs (0 without a usable CUDA)."""
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        entries = []
        for entry in (e.strip() for e in listed.split(",")):
            if not entry or entry.startswith("-"):
                break
            entries.append(entry)
        return entries
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no usable CUDA runtime
        return []


def binds_workers(launcher_target: str) -> bool:
    """Whether the launcher runs trials in local worker processes that need a GPU each (joblib); Slurm and Ray
    give every trial its GPU themselves, and the basic launcher runs them one at a time."""
    return "joblib" in launcher_target.lower()


def bind_workers_to_gpus(
    launcher_target: str,
    trial_device: str,
    sweep_dir: Path,
    n_jobs: int,
    environ: MutableMapping[str, str] = os.environ,
) -> str | None:
    """Called by the sweeper before it launches trials: for a joblib launcher, tells the workers it will start
    (through its environment, which they inherit) which GPUs to bind to. Returns a line saying how trials
    get their GPU, or None when there is nothing to say (no GPU, or a launcher that assigns them)."""
    if not binds_workers(launcher_target):
        return None
    gpus = machine_gpus(environ)
    if not gpus or trial_device == "cpu":
        return None
    if trial_device not in ("auto", "cuda"):
        return (
            f"train.device={trial_device} for every trial: joblib workers are not bound to GPUs of their own "
            "(leave train.device=auto to give each worker one GPU)"
        )
    slots = sweep_dir / SLOTS_FOLDER
    slots.mkdir(parents=True, exist_ok=True)
    environ[WORKER_GPUS_ENV] = ",".join(gpus)
    environ[WORKER_SLOTS_ENV] = str(slots)
    environ[SWEEPER_PID_ENV] = str(os.getpid())
    shared = f"; n_jobs={n_jobs} > {len(gpus)} GPUs: some workers share a GPU" if n_jobs > len(gpus) else ""
    return f"each joblib worker trains on one GPU of {','.join(gpus)} for its life{shared}"


@dataclass(frozen=True)
class WorkerGpu:
    """The GPU this worker process bound itself to, for its life."""

    slot: int
    gpu: str
    lock: IO[Any]  # held open: the claim on the slot ends with the process


_bound: WorkerGpu | None = None


def bind_trial_gpu(environ: MutableMapping[str, str] = os.environ) -> dict[str, Any]:
    """Called at the start of each trial, in the process that runs it. In a joblib worker of a sweep on GPUs,
    the first trial binds the worker to one GPU for its life. Returns what the trial sees, for its run's
    record: {"cuda_visible_devices": ..., "gpu_slot": ... (bound workers only)}."""
    global _bound
    gpus = [g for g in environ.get(WORKER_GPUS_ENV, "").split(",") if g]
    if _bound is None and gpus and environ.get(SWEEPER_PID_ENV) != str(os.getpid()):
        slot, lock = _claim_slot(Path(environ[WORKER_SLOTS_ENV]))
        gpu = gpus[slot % len(gpus)]
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            # Too late for CUDA_VISIBLE_DEVICES in this process: make the GPU its current device (what
            # train.device=auto and cuda use) among those it already sees, listed in the same order.
            torch.cuda.set_device(slot % len(gpus))
        else:
            environ["CUDA_VISIBLE_DEVICES"] = gpu
        _bound = WorkerGpu(slot, gpu, lock)
        print(f"[sweep] worker {os.getpid()} (slot {slot}) trains on GPU {gpu} for its life", flush=True)
    seen: dict[str, Any] = {"cuda_visible_devices": environ.get("CUDA_VISIBLE_DEVICES")}
    if _bound is not None:
        seen["gpu_slot"] = _bound.slot
    return seen


def _claim_slot(folder: Path) -> tuple[int, IO[Any]]:
    """The lowest slot no living worker holds, and its lock (held by this process until it ends)."""
    folder.mkdir(parents=True, exist_ok=True)
    slot = 0
    while True:
        handle = open(folder / f"{slot}.lock", "a")  # noqa: SIM115 - kept open: it is the claim
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            slot += 1
            continue
        return slot, handle


def release_cuda_memory() -> None:
    """After a trial: hand the CUDA memory its tensors cached back to the driver, so that the worker's next
    trial, or another process on the GPU, can have it (PyTorch's caching allocator otherwise keeps it)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        gc.collect()  # tensors held only by reference cycles of the finished trial
        torch.cuda.empty_cache()
