"""The table and the BNFE-per-epoch plot of an architecture study: a multirun over one or more config keys.

Each job of the multirun folder left `result.json` (its summary), `evaluation_report.json` (its per-epoch
history) and `.hydra/overrides.yaml` (what it was run with); the keys whose values differ between the
jobs are what the study varied.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from odeflow.errors import UserError
from odeflow.files import write_atomic
from odeflow.tables import markdown_table

COLUMNS = {
    "test_acc": "test acc",
    "test_loss": "test loss",
    "fnfe": "FNFE",
    "bnfe": "BNFE",
    "epoch_time": "s/epoch",
    "epochs": "epochs",
    "adjoint_grad_err": "adj. grad err",
    "run_id": "run",
}
FORMATS = {
    "test_acc": "{:.4f}",
    "test_loss": "{:.4f}",
    "fnfe": "{:.1f}",
    "bnfe": "{:.1f}",
    "epoch_time": "{:.2f}",
    "adjoint_grad_err": "{:.2g}",
}


def read_jobs(folder: Path) -> list[dict[str, Any]]:
    """One entry per finished job: its overrides (key -> value), summary and per-epoch history."""
    jobs = []
    for result in sorted(
        folder.glob("*/result.json"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1
    ):
        job = result.parent
        overrides = (
            yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
            if (job / ".hydra" / "overrides.yaml").exists()
            else []
        )
        report = (
            json.loads((job / "evaluation_report.json").read_text())
            if (job / "evaluation_report.json").exists()
            else {}
        )
        jobs.append(
            {
                "overrides": dict(o.split("=", 1) for o in overrides if "=" in o),
                "summary": json.loads(result.read_text()),
                "history": report.get("fit", {}).get("history", []),
            }
        )
    return jobs


def varied_keys(jobs: list[dict[str, Any]]) -> list[str]:
    keys = dict.fromkeys(k for job in jobs for k in job["overrides"])
    return [k for k in keys if len({job["overrides"].get(k) for job in jobs}) > 1]


def study_writers() -> dict[str, Callable[[Path], dict[str, Path]]]:
    """The studies with a report of their own (the experiment preset's `name` -> its writer); imported on use,
    as they load models and data."""
    from runner.research.critical_step import write_adaptation_study, write_critical_step
    from runner.research.deep_limit import write_deep_limit
    from runner.research.param_efficiency import write_param_efficiency
    from runner.research.raa_critical_step import write_raa_critical_step

    return {
        "study_critical_step": write_critical_step,
        "study_adaptation": write_adaptation_study,
        "study_raa_critical_step": write_raa_critical_step,
        "study_raa_adaptation": write_adaptation_study,
        "study_deep_limit": write_deep_limit,
        "study_deep_limit_digits": write_deep_limit,
        "study_param_efficiency": write_param_efficiency,
    }


def write_study(folder: Path) -> dict[str, Path]:
    """study.md (a table per varied setting) and bnfe_per_epoch.png in `folder`; returns their paths."""
    from odeflow.plots import metric_across_runs_png

    jobs = read_jobs(folder)
    writers = study_writers()
    if jobs and jobs[0]["summary"].get("name") in writers:
        return writers[jobs[0]["summary"]["name"]](folder)
    if not jobs:
        raise UserError(
            f"{folder} holds no finished study jobs (no */result.json)",
            "run the study first: make study STUDY=t_final (or python -m runner -m experiment=study_t_final)",
        )
    keys = varied_keys(jobs) or ["run_id"]
    label = lambda job: ", ".join(f"{k}={job['overrides'].get(k, job['summary'].get(k))}" for k in keys)  # noqa: E731
    rows = [
        {
            **{k: job["overrides"].get(k, job["summary"].get(k)) for k in keys},
            **{c: job["summary"].get(c) for c in COLUMNS},
        }
        for job in jobs
    ]
    name = jobs[0]["summary"].get("name", folder.name)
    table = markdown_table(rows, FORMATS, COLUMNS)
    md = folder / "study.md"
    write_atomic(
        md,
        f"# {name}\n\n{jobs[0]['summary'].get('model')} on {jobs[0]['summary'].get('dataset')}, "
        f"{jobs[0]['summary'].get('solver')}; FNFE and BNFE are the last epoch's means per batch.\n\n{table}\n",
    )
    series = {
        label(job): ([h["epoch"] for h in job["history"]], [h["nfe.backward"] for h in job["history"]])
        for job in jobs
        if job["history"]
    }
    first = jobs[0]["summary"]
    title = (
        f"{name}: BNFE per epoch over {', '.join(keys)} "
        f"({first.get('model')} on {first.get('dataset')}, {first.get('solver')})"
    )
    png = metric_across_runs_png(series, "nfe.backward", folder / "bnfe_per_epoch.png", title=title)
    return {"study.md": md, "bnfe_per_epoch.png": png}
