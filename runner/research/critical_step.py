"""The critical-step and adaptation studies of "ResNet After All" on the runs of a multirun folder.

Every job's best checkpoint is tested with euler, midpoint and rk4 at 1 to 128 steps over [0, T]. A model is
an ODE when its test accuracy with the training solver and with the finest rk4 solve differ by at most the
threshold; the critical step size is the largest training step at which it (and every finer step) is one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import mean
from typing import Any

import torch

from models.ode_block import ode_blocks, set_solver
from models.solvers import SolverSpec
from odeflow.errors import UserError
from odeflow.ode_figures import critical_step_png
from odeflow.tables import markdown_table
from runner.experiment.adaptation import adapted_solver
from runner.experiment.checkpoint import load_checkpoint
from runner.experiment.evaluation import predict
from runner.experiment.factories import instantiate_group

TEST_METHODS = ("euler", "midpoint", "rk4")
TEST_STEPS = (1, 2, 4, 8, 16, 32, 64, 128)
THRESHOLD = 0.1  # the adaptation's default: the accuracy gap that makes a model "not an ODE"


def evaluate_jobs(folder: Path) -> list[dict[str, Any]]:
    """Per finished job: how it was trained, its summary, and its test accuracy under every test solve."""
    jobs = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster than several contending ones
    try:
        for result in sorted(folder.glob("*/result.json"), key=_job_number):
            jobs.append(evaluate_job(result))
    finally:
        torch.set_num_threads(threads)
    if not jobs:
        raise UserError(
            f"{folder} holds no finished study jobs (no */result.json)",
            "run the study first: make study STUDY=critical_step (or STUDY=adaptation)",
        )
    return jobs


def _job_number(result: Path) -> int:
    return int(result.parent.name) if result.parent.name.isdigit() else -1


def evaluate_job(result: Path) -> dict[str, Any]:
    """How one job was trained, its summary, and its test accuracy under every test solve."""
    summary = json.loads(result.read_text())
    model, checkpoint = load_checkpoint(result.parent / "best_checkpoint.pt")
    data = instantiate_group("data", checkpoint["config"]["data"])
    trained = adapted_solver(instantiate_group("solver", checkpoint["config"]["solver"]), checkpoint.get("adaptation"))
    t_final = ode_blocks(model)[0].t_final
    accuracy: dict[tuple[str, int], float] = {}
    with torch.no_grad():
        for method in TEST_METHODS:
            for steps in TEST_STEPS:
                set_solver(model, SolverSpec(method, step_size=t_final / steps))
                accuracy[method, steps] = predict(model, data.test, len(data.test)).accuracy
        set_solver(model, trained)
        trained_acc = predict(model, data.test, len(data.test)).accuracy
    history = checkpoint.get("history", [])
    return {
        "summary": summary,
        "seed": checkpoint["config"]["seed"],
        "adaptation": (checkpoint.get("adaptation") or {}).get("kind", "none"),
        "start_step": checkpoint["config"]["solver"]["step_size"],
        "train_step": trained.step_size,
        "train_steps": math.ceil(t_final / trained.step_size - 1e-9),
        "train_method": trained.method,
        "trained_acc": trained_acc,
        "accuracy": accuracy,
        "gap": abs(trained_acc - accuracy["rk4", TEST_STEPS[-1]]),
        "mean_fnfe": mean(h["nfe.forward"] for h in history) if history else summary.get("fnfe"),
        "check_share": summary.get("adapt_check_share"),
    }


def critical_step(rows: list[dict[str, Any]]) -> float | None:
    """The largest training step whose models, and those of every finer step, stay within the threshold."""
    found = None
    for row in sorted(rows, key=lambda r: r["h"]):
        if row["gap"] > THRESHOLD:
            break
        found = row["h"]
    return found


def per_training_step(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per training step: seed means of accuracy (training solver, finest rk4), gap and FNFE."""
    rows = []
    for h in sorted({j["train_step"] for j in jobs}, reverse=True):
        mine = [j for j in jobs if j["train_step"] == h]
        rows.append(
            {
                "h": h,
                "steps": mine[0]["train_steps"],
                "seeds": len(mine),
                "acc_trained": mean(j["trained_acc"] for j in mine),
                "acc_rk4": mean(j["accuracy"]["rk4", TEST_STEPS[-1]] for j in mine),
                "gap": mean(j["gap"] for j in mine),
                "fnfe": mean(j["mean_fnfe"] for j in mine),
            }
        )
    for row in rows:
        row["ode"] = "yes" if row["gap"] <= THRESHOLD else "no"
    return rows


ROW_FORMATS = {"h": "{:.4g}", "acc_trained": "{:.3f}", "acc_rk4": "{:.3f}", "gap": "{:.3f}", "fnfe": "{:.1f}"}
ROW_HEADERS = {
    "h": "training step h",
    "steps": "steps",
    "acc_trained": "test acc (training solver)",
    "acc_rk4": f"test acc (rk4, {TEST_STEPS[-1]} steps)",
    "gap": "gap",
    "fnfe": "mean FNFE",
    "ode": f"ODE (gap <= {THRESHOLD})",
}


def write_critical_step(folder: Path) -> dict[str, Path]:
    """critical_step.png (accuracy over test steps, one curve per training step) and critical_step.md."""
    jobs = evaluate_jobs(folder)
    curves = {
        method: [
            {
                "train_steps": n,
                "test_steps": steps,
                "accuracy": mean(j["accuracy"][method, steps] for j in jobs if j["train_steps"] == n),
                "trained_here": method == jobs[0]["train_method"] and steps == n,
            }
            for n in sorted({j["train_steps"] for j in jobs})
            for steps in TEST_STEPS
        ]
        for method in TEST_METHODS
    }
    png = critical_step_png(curves, folder / "critical_step.png")
    rows = per_training_step(jobs)
    found = critical_step(rows)
    verdict = (
        f"critical step size: h = {found:g} ({math.ceil(1 / found - 1e-9)} steps over [0, T=1]); models trained with a "
        f"coarser step lose more than {THRESHOLD} accuracy under the finest rk4 solve"
        if found
        else "no training step in this grid keeps the model an ODE"
    )
    md = folder / "critical_step.md"
    md.write_text(
        f"# Critical step size ({jobs[0]['summary'].get('model')} on {jobs[0]['summary'].get('dataset')}, "
        f"trained with {jobs[0]['train_method']})\n\nSeed means over {rows[0]['seeds']} seeds; test accuracy on "
        f"the test split.\n\n{markdown_table(rows, ROW_FORMATS, ROW_HEADERS)}\n\n{verdict}.\n"
    )
    return {"critical_step.md": md, "critical_step.png": png}


def write_adaptation_study(folder: Path) -> dict[str, Path]:
    """adaptation.md: the grid search's largest step that stays an ODE against the step-size adaptation."""
    jobs = evaluate_jobs(folder)
    grid = [j for j in jobs if j["adaptation"] == "none"]
    adapted = [j for j in jobs if j["adaptation"] != "none"]
    if not grid or not adapted:
        raise UserError(
            f"{folder} needs runs with and without adaptation ({len(grid)} without, {len(adapted)} with)",
            "run the whole study: make study STUDY=adaptation",
        )
    grid_rows = per_training_step(grid)
    found = critical_step(grid_rows)
    chosen = next((r for r in grid_rows if r["h"] == found), None)
    summary_rows = [
        {
            "method": f"grid search (largest h with gap <= {THRESHOLD}: {found:g})" if chosen else "grid search (none)",
            "acc": chosen["acc_trained"] if chosen else None,
            "acc_rk4": chosen["acc_rk4"] if chosen else None,
            "gap": chosen["gap"] if chosen else None,
            "fnfe": chosen["fnfe"] if chosen else None,
            "runs": len(grid),
            "h": found,
            "share": None,
        },
        {
            "method": "step-size adaptation (all starts and seeds)",
            "acc": mean(j["trained_acc"] for j in adapted),
            "acc_rk4": mean(j["accuracy"]["rk4", TEST_STEPS[-1]] for j in adapted),
            "gap": mean(j["gap"] for j in adapted),
            "fnfe": mean(j["mean_fnfe"] for j in adapted),
            "runs": len(adapted),
            "h": mean(j["train_step"] for j in adapted),
            "share": mean(j["check_share"] or 0.0 for j in adapted),
        },
    ]
    per_start = [
        {
            "start": start,
            "h": mean(j["train_step"] for j in mine),
            "acc": mean(j["trained_acc"] for j in mine),
            "gap": mean(j["gap"] for j in mine),
            "fnfe": mean(j["mean_fnfe"] for j in mine),
            "share": mean(j["check_share"] or 0.0 for j in mine),
        }
        for start in sorted({j["start_step"] for j in adapted}, reverse=True)
        for mine in [[j for j in adapted if j["start_step"] == start]]
    ]
    formats = {**ROW_FORMATS, "acc": "{:.3f}", "share": "{:.1%}"}
    headers = {
        "acc": "test acc",
        "acc_rk4": f"test acc (rk4, {TEST_STEPS[-1]} steps)",
        "gap": "gap",
        "fnfe": "mean FNFE (training)",
        "h": "final h",
        "share": "checks' share of training time",
        "start": "starting h",
    }
    md = folder / "adaptation.md"
    md.write_text(
        "# Grid search vs step-size adaptation\n\n"
        f"euler on {jobs[0]['summary'].get('dataset')}; seed means. The grid's runs trained at a fixed step; the "
        "adapted runs started from each grid step.\n\n"
        f"{markdown_table(summary_rows, formats, headers)}\n\n## The grid\n\n"
        f"{markdown_table(grid_rows, ROW_FORMATS, ROW_HEADERS)}\n\n## Adaptation by starting step\n\n"
        f"{markdown_table(per_start, formats, headers)}\n"
    )
    return {"adaptation.md": md}
