"""The parameter-efficiency study: test accuracy against parameter count, one curve per architecture.

The thesis (table 8.1) compared one ODEnet with two ResNets at one matched parameter count. Here every
architecture (the model and its time dependence) is trained at several widths with several seeds; per
architecture and width the table gives the seeds' mean and spread, the cost per epoch, and how many
parameters each architecture needs to reach a target accuracy.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import mean, stdev
from typing import Any

import yaml

from odeflow.errors import UserError
from odeflow.files import write_atomic
from odeflow.ode_figures import param_efficiency_png
from odeflow.tables import markdown_table

# The targets: this far below the best mean test accuracy of any architecture at any width
TARGET_GAPS = (0.01, 0.02, 0.05)
BASELINE = "ResNet small"  # time per epoch is also given as a multiple of this architecture's at the same width
NAMES = {"resnet_simple_small": "ResNet small", "resnet_simple_large": "ResNet large", "odenet_simple": "ODEnet"}

HEADERS = {
    "architecture": "architecture",
    "width": "width",
    "params": "params",
    "seeds": "seeds",
    "acc_mean": "test acc (mean)",
    "acc_std": "spread (std)",
    "fnfe": "FNFE",
    "bnfe": "BNFE",
    "epoch_time": "s/epoch",
    "time_ratio": f"time vs {BASELINE}",
}
FORMATS = {
    "params": "{:,}",
    "acc_mean": "{:.4f}",
    "acc_std": "{:.4f}",
    "fnfe": "{:.1f}",
    "bnfe": "{:.1f}",
    "epoch_time": "{:.2f}",
    "time_ratio": "{:.1f}x",
}
TARGET_HEADERS = {
    "architecture": "architecture",
    "target": "target acc",
    "interpolated": "params to reach it (interpolated on log params)",
    "smallest": "smallest width reaching it (params)",
}


def architecture(summary: dict[str, Any], model: dict[str, Any]) -> str:
    """A readable name for the model and its time dependence: `ODEnet basis (fourier, K=4)`, `ResNet large`."""
    name = NAMES.get(summary.get("model"), summary.get("model") or model.get("_target_", "?"))
    kind = model.get("time_dependence", "none")
    if kind == "basis":
        return f"{name} basis ({model.get('basis')}, K={model.get('basis_size')})"
    return name if kind in (None, "none") else f"{name} {kind}"


def width_of(model: dict[str, Any]) -> Any:
    """What the study varies for the model's size: channels (simple nets), hidden units or the stage channels."""
    for key in ("channels", "hidden", "stage_channels"):
        if key in model:
            return model[key]
    return None


def read_jobs(folder: Path) -> list[dict[str, Any]]:
    """Per finished job of the multirun folder: its architecture, width, seed and summary."""
    jobs = []
    for result in sorted(folder.glob("*/result.json"), key=_job_number):
        config_file = result.parent / ".hydra" / "config.yaml"
        if not config_file.exists():
            raise UserError(
                f"{result.parent} has no .hydra/config.yaml: it is not a job of a Hydra multirun",
                "run the study's preset: make study STUDY=param_efficiency",
            )
        config = yaml.safe_load(config_file.read_text())
        summary = json.loads(result.read_text())
        jobs.append(
            {
                "architecture": architecture(summary, config["model"]),
                "width": width_of(config["model"]),
                "seed": config.get("seed"),
                "summary": summary,
            }
        )
    if not jobs:
        raise UserError(
            f"{folder} holds no finished study jobs (no */result.json)",
            "run the study first: make study STUDY=param_efficiency",
        )
    return jobs


def _job_number(result: Path) -> tuple[str, int]:
    """Jobs in the order they ran: folders `<n>` or `<dataset>_<n>` (the preset's, to keep datasets apart)."""
    prefix, _, number = result.parent.name.rpartition("_")
    return (prefix, int(number)) if number.isdigit() else (result.parent.name, -1)


def _mean_of(jobs: list[dict[str, Any]], key: str) -> float | None:
    values = [j["summary"][key] for j in jobs if j["summary"].get(key) is not None]
    return mean(values) if values else None


def per_width(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per architecture and width: parameters, the seeds' mean test accuracy and its sample standard
    deviation, and the means of FNFE, BNFE (last epoch, per batch) and seconds per epoch."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for job in jobs:
        groups.setdefault((job["architecture"], json.dumps(job["width"])), []).append(job)
    rows = []
    for (arch, _), mine in groups.items():
        accuracies = [j["summary"]["test_acc"] for j in mine]
        rows.append(
            {
                "architecture": arch,
                "width": mine[0]["width"],
                "params": round(mean(j["summary"]["params_total"] for j in mine)),
                "seeds": len(mine),
                "acc_mean": mean(accuracies),
                "acc_std": stdev(accuracies) if len(accuracies) > 1 else None,
                "fnfe": _mean_of(mine, "fnfe"),
                "bnfe": _mean_of(mine, "bnfe"),
                "epoch_time": _mean_of(mine, "epoch_time"),
            }
        )
    baseline = {json.dumps(r["width"]): r["epoch_time"] for r in rows if r["architecture"] == BASELINE}
    for row in rows:
        base = baseline.get(json.dumps(row["width"]))
        row["time_ratio"] = row["epoch_time"] / base if base and row["epoch_time"] is not None else None
    order = list(dict.fromkeys(j["architecture"] for j in jobs))  # as the sweep ran them
    return sorted(rows, key=lambda r: (order.index(r["architecture"]), r["params"]))


def targets(rows: list[dict[str, Any]]) -> list[float]:
    """The target accuracies: TARGET_GAPS below the best mean accuracy, rounded down to 0.001."""
    best = max(r["acc_mean"] for r in rows)
    return [math.floor(round((best - gap) * 1000, 6)) / 1000 for gap in TARGET_GAPS]  # 0.95 - 0.01 is 0.9399..


def params_to_reach(points: list[tuple[int, float]], target: float) -> float | None:
    """The parameter count at which the accuracy curve (params, mean acc) first reaches `target`, interpolated
    linearly in log(params) between the last width below it and the first at or above it; the smallest
    width's count when that one already reaches it; None when no width does."""
    points = sorted(points)
    for i, (params, acc) in enumerate(points):
        if acc >= target:
            if i == 0:
                return float(params)
            below_params, below_acc = points[i - 1]
            share = (target - below_acc) / (acc - below_acc)
            return math.exp(math.log(below_params) + share * (math.log(params) - math.log(below_params)))
    return None


def threshold_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per architecture and target: the interpolated parameter count and the smallest width reaching it."""
    table = []
    for arch in dict.fromkeys(r["architecture"] for r in rows):
        mine = sorted((r for r in rows if r["architecture"] == arch), key=lambda r: r["params"])
        best = max(r["acc_mean"] for r in mine)
        for target in targets(rows):
            reached = next((r for r in mine if r["acc_mean"] >= target), None)
            params = params_to_reach([(r["params"], r["acc_mean"]) for r in mine], target)
            table.append(
                {
                    "architecture": arch,
                    "target": target,
                    "interpolated": (
                        f"not reached (best {best:.4f})"
                        if params is None
                        else f"<= {params:,.0f} (reached at the smallest width)"
                        if reached is mine[0]
                        else f"{params:,.0f}"
                    ),
                    "smallest": "-" if reached is None else f"{reached['width']} ({reached['params']:,})",
                }
            )
    return table


def write_param_efficiency(folder: Path) -> dict[str, Path]:
    """param_efficiency.md (per dataset, per architecture and width: parameters, test accuracy over seeds,
    FNFE/BNFE and time per epoch; then the parameters each architecture needs to reach the target accuracies)
    and param_efficiency.png (per dataset, test accuracy against parameters on a log axis, one line per
    architecture) in `folder`."""
    jobs = read_jobs(folder)
    sections, panels = [], {}
    for dataset in dict.fromkeys(j["summary"].get("dataset") for j in jobs):
        mine = [j for j in jobs if j["summary"].get("dataset") == dataset]
        rows = per_width(mine)
        curves = {
            arch: [r for r in rows if r["architecture"] == arch]
            for arch in dict.fromkeys(r["architecture"] for r in rows)
        }
        seeds = max(r["seeds"] for r in rows)
        panels[f"{dataset}: mean and standard deviation over {seeds} seed{'s' * (seeds != 1)}"] = (
            curves,
            targets(rows),
        )
        solvers = sorted({j["summary"]["solver"] for j in mine if j["summary"].get("solver")})
        sections.append(
            f"## {dataset}\n\n"
            f"{len(mine)} runs; ODEnets solved with {', '.join(solvers) or '-'}. Per architecture and width: the "
            "parameter count, the test accuracy's mean and sample standard deviation over the seeds, the last "
            "epoch's mean function evaluations per batch (FNFE forward, BNFE backward: '-' for ResNets and direct "
            f"backpropagation) and the mean seconds per epoch, also as a multiple of the {BASELINE}'s at the same "
            "width.\n\n"
            f"{markdown_table(rows, FORMATS, HEADERS)}\n\n"
            "### Parameters needed to reach a target accuracy\n\n"
            f"Targets: {', '.join(f'{g:g}' for g in TARGET_GAPS)} below the best mean test accuracy of any "
            "architecture on this dataset. The parameter count is interpolated linearly in log(parameters) between "
            "the last width whose mean accuracy is below the target and the first at or above it; the last column "
            "is that first width.\n\n"
            f"{markdown_table(threshold_rows(rows), {'target': '{:.3f}'}, TARGET_HEADERS)}\n"
        )
    png = param_efficiency_png(panels, folder / "param_efficiency.png")
    md = folder / "param_efficiency.md"
    write_atomic(md, "# Parameter efficiency: test accuracy against parameter count\n\n" + "\n".join(sections))
    return {"param_efficiency.md": md, "param_efficiency.png": png}
