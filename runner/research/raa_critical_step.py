"""The critical-step study as "ResNet After All" ran it: every model tested at 0.5 to 2 times its training steps.

Each job trained an ODEnet with euler or rk4 at h = 1, 1/2, ..., 1/64 (N = 1/h steps over [0, 1]). Its final
weights are tested with euler, midpoint and rk4 at 0.5, 0.75, 1, 1.5 and 2 times N steps (at least one). A
model is an ODE when no test solve at N steps or more (the same or finer) moves its test accuracy by more than
the threshold from the accuracy with its training solver; the critical step of a training method is the
largest h at which it, and every finer h, is one. Jobs are grouped by input dimension and training method.
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
from odeflow.files import write_atomic
from odeflow.ode_figures import critical_step_png
from odeflow.tables import markdown_table
from runner.experiment.checkpoint import load_checkpoint
from runner.experiment.evaluation import predict
from runner.experiment.factories import instantiate_group
from runner.research.critical_step import TEST_METHODS, THRESHOLD, critical_step

TEST_FACTORS = (0.5, 0.75, 1.0, 1.5, 2.0)


def steps_tested(train_steps: int) -> list[int]:
    """The test step counts of a model trained with `train_steps` steps: 0.5x to 2x, at least one step."""
    return sorted({max(1, round(train_steps * factor)) for factor in TEST_FACTORS})


def evaluate_job(result: Path) -> dict[str, Any]:
    """One job: its dimension, training method and steps, seed, and test accuracy under every test solve."""
    model, checkpoint = load_checkpoint(result.parent / "best_checkpoint.pt")
    config = checkpoint["config"]
    data = instantiate_group("data", config["data"])
    trained = instantiate_group("solver", config["solver"])
    t_final = ode_blocks(model)[0].t_final
    n = math.ceil(t_final / trained.step_size - 1e-9)
    accuracy = {}
    with torch.no_grad():
        for method in TEST_METHODS:
            for steps in steps_tested(n):
                set_solver(model, SolverSpec(method, step_size=t_final / steps))
                accuracy[method, steps] = predict(model, data.test, len(data.test)).accuracy
    trained_acc = accuracy[trained.method, n]
    finer = [acc for (_, steps), acc in accuracy.items() if steps >= n]
    return {
        "dim": int(config["data"].get("dim", data.input_shape[0])),
        "train_method": trained.method,
        "train_steps": n,
        "h": trained.step_size,
        "seed": config["seed"],
        "trained_acc": trained_acc,
        "worst_finer": max(finer, key=lambda acc: abs(acc - trained_acc)),
        "gap": max(abs(acc - trained_acc) for acc in finer),
        "accuracy": accuracy,
        "fnfe": json.loads(result.read_text()).get("fnfe"),
    }


ROW_FORMATS = {"h": "{:.4g}", "trained_acc": "{:.3f}", "worst_finer": "{:.3f}", "gap": "{:.3f}", "fnfe": "{:.1f}"}
ROW_HEADERS = {
    "h": "training step h",
    "steps": "steps",
    "seeds": "seeds",
    "trained_acc": "test acc (training solver)",
    "worst_finer": "test acc farthest from it (1-2x steps, 3 solvers)",
    "gap": "gap",
    "fnfe": "FNFE",
    "ode": f"ODE (gap <= {THRESHOLD})",
}


def group_rows(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Seed means per training step (coarsest first)."""
    rows = []
    for h in sorted({j["h"] for j in jobs}, reverse=True):
        mine = [j for j in jobs if j["h"] == h]
        rows.append(
            {
                "h": h,
                "steps": mine[0]["train_steps"],
                "seeds": len(mine),
                "trained_acc": mean(j["trained_acc"] for j in mine),
                "worst_finer": mean(j["worst_finer"] for j in mine),
                "gap": mean(j["gap"] for j in mine),
                "fnfe": mean(j["fnfe"] for j in mine if j["fnfe"] is not None) if mine[0]["fnfe"] else None,
            }
        )
    for row in rows:
        row["ode"] = "yes" if row["gap"] <= THRESHOLD else "no"
    return rows


def figure_curves(jobs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The paper's figure: per test method, accuracy over test steps, one curve for every second training step."""
    trained = sorted({j["train_steps"] for j in jobs})[::2]
    return {
        method: [
            {
                "train_steps": n,
                "test_steps": steps,
                "accuracy": mean(j["accuracy"][method, steps] for j in jobs if j["train_steps"] == n),
                "trained_here": method == jobs[0]["train_method"] and steps == n,
            }
            for n in trained
            for steps in steps_tested(n)
        ]
        for method in TEST_METHODS
    }


def write_raa_critical_step(folder: Path) -> dict[str, Path]:
    """raa_critical_step.md (a table and the critical step per dimension and training method) and one figure
    per dimension and training method, raa_critical_step_<dim>d_<method>.png."""
    jobs = [evaluate_job(result) for result in sorted(folder.glob("*/result.json"))]
    if not jobs:
        raise UserError(
            f"{folder} holds no finished study jobs (no */result.json)",
            "run the study first: make study STUDY=raa_critical_step",
        )
    sections, paths = [], {}
    for dim, method in sorted({(j["dim"], j["train_method"]) for j in jobs}):
        mine = [j for j in jobs if (j["dim"], j["train_method"]) == (dim, method)]
        name = f"raa_critical_step_{dim}d_{method}.png"
        paths[name] = critical_step_png(figure_curves(mine), folder / name)
        rows = group_rows(mine)
        found = critical_step(rows)
        coarser = [r["worst_finer"] for r in rows if found is None or r["h"] > found]
        verdict = (
            f"critical step h = {found:g} ({math.ceil(1 / found - 1e-9)} step(s) over [0, 1])"
            if found
            else "no training step in this grid stays an ODE"
        ) + (f"; above it the farthest test accuracy averages {mean(coarser):.3f}" if coarser else "")
        sections.append(
            f"## {dim}-D spheres, trained with {method}\n\n{markdown_table(rows, ROW_FORMATS, ROW_HEADERS)}\n\n"
            f"{verdict}.\n\n![{dim}-D, {method}]({name})\n"
        )
    md = folder / "raa_critical_step.md"
    write_atomic(
        md,
        f'# Critical step size as in "ResNet After All"\n\n{jobs[0]["train_method"]} and other training '
        f"methods; each model tested with {', '.join(TEST_METHODS)} at {', '.join(map(str, TEST_FACTORS))} times "
        "its training steps. Seed means; the gap is the largest change of test accuracy under a test solve of "
        "the same or more steps. Chance is 0.5 (two classes of equal size).\n\n" + "\n".join(sections),
    )
    return {"raa_critical_step.md": md, **paths}
