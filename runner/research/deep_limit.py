"""The deep-limit study: a weight-tied ResNet of N layers against its neural-ODE limit (Avelin & Nystrom).

A ResNet x_{i+1} = x_i + (1/N) f_theta(x_i) whose N layers share one theta is an ODEnet solved with euler at
step 1/N over [0, 1]. The theorem: trained by SGD on a penalised risk (here weight decay, a convex penalty of
quadratic growth) from the same start on the same batches, its parameter path follows that of the ODE
x' = f_theta(x), the distance shrinking like 1/N. Every job of the multirun recorded its parameter path
(train.record_parameters); the ODE limit is the run with the finest rk4 solve, and the next-finest rk4 run
shows how far the limit itself still moves when its step is halved.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from odeflow.errors import UserError
from odeflow.files import write_atomic
from odeflow.ode_figures import deep_limit_png
from odeflow.tables import markdown_table
from runner.experiment.checkpoint import load_checkpoint
from runner.experiment.factories import instantiate_group

LIMIT_METHOD = "rk4"
HEADERS = {
    "method": "method",
    "layers": "N (steps)",
    "distance": "sup relative parameter distance",
    "risk": "final risk",
    "risk_gap": "risk gap",
    "test_acc": "test acc",
}
FORMATS = {"distance": "{:.3e}", "risk": "{:.5f}", "risk_gap": "{:.3e}", "test_acc": "{:.4f}"}


def read_job(result: Path) -> dict[str, Any]:
    """One job: its solver, seed, summary, parameter path, and the penalised training risk at its last iterate."""
    job = result.parent
    if not (job / "parameter_path.pt").exists():
        raise UserError(
            f"{job} has no parameter_path.pt: it was trained without train.record_parameters",
            "run the study's preset: make study STUDY=deep_limit (or set train.record_parameters=K)",
        )
    path = torch.load(job / "parameter_path.pt", weights_only=True)
    model, checkpoint = load_checkpoint(job / "best_checkpoint.pt")
    config = checkpoint["config"]
    step = float(config["solver"]["step_size"])
    return {
        "method": config["solver"]["method"],
        "layers": round(float(config["model"].get("t_final", 1.0)) / step),
        "seed": config.get("seed", 0),
        "steps": list(path["steps"]),
        "vectors": path["vectors"],
        "risk": penalised_risk(model, config, path["vectors"][-1]),
        "test_acc": json.loads(result.read_text())["test_acc"],
    }


def penalised_risk(model: torch.nn.Module, config: dict[str, Any], theta: torch.Tensor) -> float:
    """Mean cross entropy over the training split plus (weight_decay / 2) ||theta||^2 at parameters `theta`:
    the objective SGD with weight decay descends."""
    torch.nn.utils.vector_to_parameters(theta.to(torch.float32), [p for p in model.parameters() if p.requires_grad])
    data = instantiate_group("data", config["data"])
    model.eval()
    with torch.no_grad():
        loss = float(F.cross_entropy(model(data.train.x), data.train.y))
    return loss + 0.5 * float(config["train"].get("weight_decay", 0.0)) * float(theta.pow(2).sum())


def sup_relative_distance(path: dict[str, Any], limit: dict[str, Any]) -> float:
    """sup over the recorded steps both paths share of ||theta_N(k) - theta(k)|| / ||theta(k)||."""
    mine = dict(zip(path["steps"], path["vectors"], strict=True))
    ratios = [
        float((mine[s] - v).norm() / v.norm())
        for s, v in zip(limit["steps"], limit["vectors"], strict=True)
        if s in mine
    ]
    if not ratios:
        raise UserError("the runs recorded no common steps", "record every run with the same train.record_parameters")
    return max(ratios)


def fitted_slope(layers: list[int], values: list[float]) -> float | None:
    """The least-squares slope of log(values) against log(layers); None with fewer than two positive points."""
    points = [(math.log(n), math.log(v)) for n, v in zip(layers, values, strict=True) if v > 0]
    if len(points) < 2:
        return None
    x, y = np.array(points).T
    return float(np.polyfit(x, y, 1)[0])


def write_deep_limit(folder: Path) -> dict[str, Path]:
    """deep_limit.md (per N: the sup relative parameter distance to the ODE limit, the final risk gap, test
    accuracy, and the fitted slopes) and deep_limit.png (both against N on log-log axes) in `folder`."""
    jobs = [read_job(r) for r in sorted(folder.glob("*/result.json"))]
    rows, curves = [], {}
    for seed in sorted({j["seed"] for j in jobs}):
        mine = [j for j in jobs if j["seed"] == seed]
        limits = sorted((j for j in mine if j["method"] == LIMIT_METHOD), key=lambda j: -j["layers"])
        if not limits:
            raise UserError(
                f"{folder} has no {LIMIT_METHOD} run for seed {seed}: nothing stands for the ODE limit",
                "run the whole study: make study STUDY=deep_limit",
            )
        limit = limits[0]
        for job in sorted(mine, key=lambda j: (j["method"] != "euler", j["layers"])):
            if job is limit:
                continue
            rows.append(
                {
                    "seed": seed,
                    "method": job["method"],
                    "layers": job["layers"],
                    "distance": sup_relative_distance(job, limit),
                    "risk": job["risk"],
                    "risk_gap": abs(job["risk"] - limit["risk"]),
                    "test_acc": job["test_acc"],
                }
            )
        rows.append(
            {"seed": seed, "method": f"{LIMIT_METHOD} (the limit)", "layers": limit["layers"], "distance": 0.0}
            | {"risk": limit["risk"], "risk_gap": 0.0, "test_acc": limit["test_acc"]}
        )
    slopes = {}
    for method in ("euler", LIMIT_METHOD):
        points = [r for r in rows if r["method"] == method]
        if points:
            slopes[method] = {
                "distance": fitted_slope([r["layers"] for r in points], [r["distance"] for r in points]),
                "risk_gap": fitted_slope([r["layers"] for r in points], [r["risk_gap"] for r in points]),
            }
            curves[method] = points
    png = deep_limit_png(curves, slopes, folder / "deep_limit.png")
    limit_row = next(r for r in rows if r["method"].endswith("(the limit)"))
    finest_rk4 = [r for r in rows if r["method"] == LIMIT_METHOD]
    floor = (
        f"Halving the limit's step (rk4 with {finest_rk4[-1]['layers']} against {limit_row['layers']} steps) moves "
        f"its path by {finest_rk4[-1]['distance']:.2e}: distances far above that are the ResNet's own."
        if finest_rk4
        else "Run rk4 at two fine steps to see how far the limit itself still moves."
    )
    slope_lines = "\n".join(
        f"- {method}: distance ~ N^{_fmt(s['distance'])}, risk gap ~ N^{_fmt(s['risk_gap'])}"
        for method, s in slopes.items()
    )
    md = folder / "deep_limit.md"
    write_atomic(
        md,
        "# Weight-tied ResNets against their neural-ODE limit\n\n"
        f"The ODE limit: {LIMIT_METHOD} with {limit_row['layers']} steps. The sup relative parameter distance is "
        "the largest, over the recorded training steps, of ||theta_N - theta|| / ||theta|| (theta: the limit's "
        "parameters at the same step); the risk is the training objective (mean cross entropy + weight decay / 2 "
        "||theta||^2) at the last iterate, and the risk gap its distance to the limit's. The theorem predicts "
        "slope -1 for euler (a weight-tied ResNet of N layers).\n\n"
        f"{markdown_table(rows, FORMATS, HEADERS)}\n\nFitted slopes on log-log axes:\n\n{slope_lines}\n\n{floor}\n",
    )
    return {"deep_limit.md": md, "deep_limit.png": png}


def _fmt(slope: float | None) -> str:
    return "-" if slope is None else f"{slope:.2f}"
