"""Re-evaluate a trained ODEnet with other solvers and tolerances (thesis table 8.2; "ResNet After All").

The ODE-ness gap is the test accuracy with the training solver minus the accuracy with a reference solver
that solves the ODE accurately (the last, finest setting of the grid). A model whose accuracy collapses
under the finer solver has learned the discretisation, not an ODE.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from data.tensors import DataBundle
from models.ode_block import ode_blocks, set_solver
from models.solvers import FIXED_STEP_METHODS, SolverSpec
from runner.errors import ConfigError, UserError
from runner.evaluation import predict

# (method, step size for fixed-step methods / tolerance for adaptive ones), coarse to fine; the last is the reference.
DEFAULT_GRID: list[tuple[str, float]] = [
    ("euler", 1.0), ("euler", 0.5), ("euler", 0.25), ("euler", 0.1),
    ("midpoint", 0.5), ("midpoint", 0.25),
    ("rk4", 1.0), ("rk4", 0.5), ("rk4", 0.25),
    ("dopri5", 1e-1), ("dopri5", 1e-2), ("dopri5", 1e-3), ("dopri5", 1e-5),
]
COLLAPSE_THRESHOLD = 0.05  # accuracy points lost under the reference solver that flag a non-ODE model


@dataclass
class SettingResult:
    method: str
    setting: str
    accuracy: float
    loss: float
    mean_fnfe: float
    seconds: float
    training_solver: bool = False


def solver_for(method: str, value: float, base: SolverSpec | None = None) -> SolverSpec:
    """A fixed-step method at step `value`, or an adaptive one at rtol = atol = `value`."""
    max_steps = base.max_steps if base else 1000
    if method in FIXED_STEP_METHODS:
        return SolverSpec(method, step_size=value, max_steps=max_steps)
    return SolverSpec(method, rtol=value, atol=value, max_steps=max_steps)


def describe_setting(spec: SolverSpec) -> str:
    return f"h={spec.step_size:g}" if spec.is_fixed_step else f"tol={spec.rtol:g}"


def parse_grid(items: list[str]) -> list[tuple[str, float]]:
    """["euler:1,0.5", "dopri5:1e-3"] -> [("euler", 1.0), ("euler", 0.5), ("dopri5", 0.001)]."""
    grid = []
    for item in items:
        method, _, values = item.partition(":")
        if not values:
            raise ConfigError("grid", item, "method:value[,value...], e.g. euler:1,0.5 or dopri5:1e-3")
        for value in values.split(","):
            grid.append((method, float(value)))
    return grid


def reevaluate(model: torch.nn.Module, data: DataBundle, training_solver: SolverSpec,
               grid: list[tuple[str, float]]) -> list[SettingResult]:
    """Test-set accuracy, loss, mean FNFE per batch and time for the training solver and every grid setting."""
    if not ode_blocks(model):
        raise UserError("this run's model has no ODE block; re-evaluation with other solvers applies to ODEnets",
                        "pick an ODEnet run (runs list shows a solver for them)")
    specs = [training_solver] + [solver_for(m, v, training_solver) for m, v in grid]
    results = []
    for index, spec in enumerate(specs):
        set_solver(model, spec)
        start = time.perf_counter()
        pred = predict(model, data.test, data.batch_size)
        results.append(SettingResult(spec.method, describe_setting(spec), pred.accuracy, pred.loss, pred.mean_fnfe,
                                     time.perf_counter() - start, training_solver=index == 0))
        print(f"  {spec.method:<10} {describe_setting(spec):<10} acc {pred.accuracy:.4f}  loss {pred.loss:.4f}  "
              f"FNFE {pred.mean_fnfe:6.2f}  {results[-1].seconds:.2f}s{'  (training solver)' if index == 0 else ''}", flush=True)
    set_solver(model, training_solver)
    return results


def ode_ness_gap(results: list[SettingResult], threshold: float = COLLAPSE_THRESHOLD) -> dict[str, Any]:
    trained, reference = results[0], results[-1]
    gap = trained.accuracy - reference.accuracy
    return {"training": f"{trained.method} {trained.setting}", "reference": f"{reference.method} {reference.setting}",
            "training_accuracy": trained.accuracy, "reference_accuracy": reference.accuracy, "gap": gap,
            "collapsed": gap > threshold, "threshold": threshold}


def write_reports(results: list[SettingResult], gap: dict[str, Any], out_dir: Path, title: str) -> dict[str, Path]:
    """reevaluation.csv, reevaluation.md (table + gap) and reevaluation_heatmap.png (accuracy per setting)."""
    from runner.plots import plt, save_figure

    out_dir.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame([asdict(r) for r in results])
    csv = out_dir / "reevaluation.csv"
    frame.to_csv(csv, index=False)
    lines = [f"# {title}", "", "| solver | setting | accuracy | loss | mean FNFE | seconds |", "|---|---|---|---|---|---|"]
    for r in results:
        mark = " (training)" if r.training_solver else ""
        lines.append(f"| {r.method}{mark} | {r.setting} | {r.accuracy:.4f} | {r.loss:.4f} | {r.mean_fnfe:.2f} | {r.seconds:.2f} |")
    verdict = "COLLAPSES under the finer solver: the model depends on its training discretisation" if gap["collapsed"] else "keeps its accuracy under the finer solver"
    lines += ["", f"ODE-ness gap: accuracy with the training solver ({gap['training']}) minus accuracy with the reference "
              f"({gap['reference']}) = {gap['gap']:+.4f}; the model {verdict} (threshold {gap['threshold']})."]
    md = out_dir / "reevaluation.md"
    md.write_text("\n".join(lines) + "\n")

    grid = frame[~frame.training_solver]
    methods = list(dict.fromkeys(grid.method))
    settings = list(dict.fromkeys(grid.setting))
    matrix = np.full((len(methods), len(settings)), np.nan)
    for r in grid.itertuples():
        matrix[methods.index(r.method), settings.index(r.setting)] = r.accuracy
    fig, ax = plt.subplots(figsize=(1.1 * len(settings) + 2, 0.6 * len(methods) + 1.8))
    image = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(settings)), settings, rotation=45, ha="right")
    ax.set_yticks(range(len(methods)), methods)
    for (i, j), value in np.ndenumerate(matrix):
        if not np.isnan(value):
            ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=8, color="white" if value < 0.6 else "black")
    fig.colorbar(image, ax=ax, label="test accuracy")
    ax.set_title(title, fontsize=9)
    png = save_figure(fig, out_dir / "reevaluation_heatmap.png")
    return {"reevaluation.csv": csv, "reevaluation.md": md, "reevaluation_heatmap.png": png}
