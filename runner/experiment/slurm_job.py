"""Where a run ran when Slurm started it: its job, array index, node and partition (from Slurm's variables)."""

from __future__ import annotations

import os
from collections.abc import Mapping


def slurm_job_info(environ: Mapping[str, str] = os.environ) -> dict[str, str | int | None] | None:
    """`info.slurm` of a run inside a Slurm job (None outside one). For an array task, `job_id` is
    `<array job>_<index>`, what squeue, sacct and scancel take."""
    if "SLURM_JOB_ID" not in environ:
        return None
    array_job, index = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    return {
        "job_id": f"{array_job}_{index}" if array_job and index else environ["SLURM_JOB_ID"],
        "array_job_id": array_job,
        "array_index": int(index) if index else None,
        "node": environ.get("SLURMD_NODENAME"),
        "partition": environ.get("SLURM_JOB_PARTITION"),
        "cluster": environ.get("SLURM_CLUSTER_NAME"),
    }
