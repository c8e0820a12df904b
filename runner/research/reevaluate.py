"""Re-evaluate a trained ODEnet with other solvers and tolerances (thesis table 8.2; "ResNet After All").

The ODE-ness gap is the test accuracy with the training solver minus the accuracy with a reference solve
of the same ODE: dopri5 at rtol = atol = 1e-6, added to every grid (whatever the grid's last entry is). A
model whose accuracy collapses under the accurate solve has learned the discretisation, not an ODE.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from data.tensors import DataBundle
from models.ode_block import ode_blocks, set_solver
from models.solvers import FIXED_STEP_METHODS, SolverSpec
from odeflow.errors import ConfigError, UserError
from odeflow.files import write_atomic
from odeflow.tables import markdown_table
from runner.experiment.evaluation import predict
from runner.experiment.precision import reference_numerics

# (method, step size for fixed-step methods / tolerance for adaptive ones), coarse to fine.
DEFAULT_GRID: list[tuple[str, float]] = [
    ("euler", 1.0),
    ("euler", 0.5),
    ("euler", 0.25),
    ("euler", 0.1),
    ("midpoint", 0.5),
    ("midpoint", 0.25),
    ("rk4", 1.0),
    ("rk4", 0.5),
    ("rk4", 0.25),
    ("dopri5", 1e-1),
    ("dopri5", 1e-2),
    ("dopri5", 1e-3),
]
# The accurate solve the gap is measured against (added to every grid).
REFERENCE: tuple[str, float] = ("dopri5", 1e-6)
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
    reference: bool = False
    backend: str = "fused"


def solver_for(method: str, value: float, base: SolverSpec | None = None) -> SolverSpec:
    """A fixed-step method at step `value`, or an adaptive one at rtol = atol = `value`, on the training
    solver's backend (a run trained with torchdiffeq is re-evaluated with torchdiffeq)."""
    max_steps = base.max_steps if base else 1000
    backend = base.backend if base else "fused"
    if method in FIXED_STEP_METHODS:
        return SolverSpec(method, step_size=value, max_steps=max_steps, backend=backend)
    return SolverSpec(method, rtol=value, atol=value, max_steps=max_steps, backend=backend)


def describe_setting(spec: SolverSpec) -> str:
    return f"h={spec.step_size:g}" if spec.is_fixed_step else f"tol={spec.rtol:g}"


def parse_grid(items: list[str]) -> list[tuple[str, float]]:
    """["euler:1,0.5", "dopri5:1e-3"] -> [("euler", 1.0), ("euler", 0.5), ("dopri5", 0.001)], each setting checked."""
    grid = []
    for item in items:
        method, _, values = item.partition(":")
        if not values:
            raise ConfigError("--grid", item, "method:value[,value...], e.g. euler:1,0.5 or dopri5:1e-3")
        for value in values.split(","):
            try:
                number = float(value)
            except ValueError:
                raise ConfigError("--grid", item, f"numbers after the colon ({value!r} is not one)") from None
            try:
                solver_for(method, number)
            except ConfigError as exc:
                raise ConfigError("--grid", item, f"a known method and a value > 0: {exc.cause}") from None
            grid.append((method, number))
    return grid


def with_reference(grid: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """The grid with the reference solve last (moved there if the grid names it)."""
    return [setting for setting in grid if setting != REFERENCE] + [REFERENCE]


def reevaluate(
    model: torch.nn.Module, data: DataBundle, training_solver: SolverSpec, grid: list[tuple[str, float]]
) -> list[SettingResult]:
    """Test-set accuracy, loss, mean FNFE per batch and time for the training solver, every grid setting
    and the reference solve, all in float32 without TF32 or autocast, whatever the run trained with."""
    check_is_odenet(model)
    settings = with_reference(grid)
    specs = [training_solver] + [solver_for(m, v, training_solver) for m, v in settings]
    results = []
    for index, spec in enumerate(specs):
        set_solver(model, spec)
        start = time.perf_counter()
        with reference_numerics(data.test.x.device):
            pred = predict(model, data.test, data.batch_size)
        is_reference = index == len(specs) - 1
        results.append(
            SettingResult(
                spec.method,
                describe_setting(spec),
                pred.accuracy,
                pred.loss,
                pred.mean_fnfe,
                time.perf_counter() - start,
                training_solver=index == 0,
                reference=is_reference,
                backend="fused" if spec.fused else "torchdiffeq",
            )
        )
        note = "  (training solver)" if index == 0 else "  (reference)" if is_reference else ""
        print(
            f"  {spec.method:<10} {describe_setting(spec):<10} acc {pred.accuracy:.4f}  loss {pred.loss:.4f}  "
            f"FNFE {pred.mean_fnfe:6.2f}  {results[-1].seconds:.2f}s{note}",
            flush=True,
        )
    set_solver(model, training_solver)
    return results


def check_is_odenet(model: torch.nn.Module) -> None:
    if not ode_blocks(model):
        raise UserError(
            "this run's model has no ODE block; re-evaluation with other solvers applies to ODEnets",
            "pick an ODEnet run (runs list shows a solver for them)",
        )


def ode_ness_gap(results: list[SettingResult], threshold: float = COLLAPSE_THRESHOLD) -> dict[str, Any]:
    trained, reference = results[0], next(r for r in results if r.reference)
    gap = trained.accuracy - reference.accuracy
    return {
        "training": f"{trained.method} {trained.setting}",
        "reference": f"{reference.method} {reference.setting}",
        "training_accuracy": trained.accuracy,
        "reference_accuracy": reference.accuracy,
        "gap": gap,
        "collapsed": gap > threshold,
        "threshold": threshold,
    }


def write_reports(
    results: list[SettingResult], gap: dict[str, Any], out_dir: Path, title: str, t_final: float = 1.0
) -> dict[str, Path]:
    """reevaluation.csv, reevaluation.md (table + gap) and reevaluation.png: test accuracy against the test
    solver's number of steps over [0, t_final] (fixed-step) or 1 / tolerance (adaptive), one line per solver."""
    from odeflow.plots.reevaluation import reevaluation_png

    out_dir.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame([asdict(r) for r in results])
    csv = out_dir / "reevaluation.csv"
    write_atomic(csv, frame.to_csv(index=False))
    rows = [
        {
            "solver": r.method + (" (training)" if r.training_solver else " (reference)" if r.reference else ""),
            "setting": r.setting,
            "accuracy": r.accuracy,
            "loss": r.loss,
            "mean FNFE": r.mean_fnfe,
            "seconds": r.seconds,
        }
        for r in results
    ]
    table = markdown_table(rows, {"accuracy": "{:.4f}", "loss": "{:.4f}", "mean FNFE": "{:.2f}", "seconds": "{:.2f}"})
    lines = [f"# {title}", "", table]
    verdict = (
        "COLLAPSES under the accurate solve: the model depends on its training discretisation"
        if gap["collapsed"]
        else "keeps its accuracy under the accurate solve"
    )
    lines += [
        "",
        f"ODE-ness gap: accuracy with the training solver ({gap['training']}) minus accuracy with the reference "
        f"({gap['reference']}) = {gap['gap']:+.4f}; the model {verdict} (threshold {gap['threshold']}).",
        "",
        "![test accuracy against the test solver's steps or tolerance](reevaluation.png)",
    ]
    md = out_dir / "reevaluation.md"
    write_atomic(md, "\n".join(lines) + "\n")

    png = reevaluation_png([asdict(r) for r in results], gap, out_dir / "reevaluation.png", title, t_final)
    return {"reevaluation.csv": csv, "reevaluation.md": md, "reevaluation.png": png}


def reevaluate_run(
    record: Any,
    cfg: Any,
    store: Any,
    source: Any,
    grid_items: list[str] | None,
    collapse_threshold: float,
    device_name: str,
) -> tuple[Any, Path | None, bool]:
    """Re-evaluate a logged run as a tracked run of its own (linked to it); returns (run id, output folder, whether
    it was logged now). The same re-evaluation asked for again (the same finished run, grid, threshold and kind of
    device) logs nothing: the run that `source` holds of it already is named and its table shown.

    Everything a user can get wrong (the grid, a run without a checkpoint, a ResNet run) is checked before
    the tracked run starts, so a mistake records nothing.
    """
    from runner.experiment.adaptation import adapted_solver
    from runner.experiment.checkpoint import load_checkpoint
    from runner.experiment.device import resolve_device
    from runner.experiment.factories import instantiate_group, to_plain
    from runner.research.rerun import new_output_dir
    from runner.tracking.listing import REQUEST_KEY, logged_request
    from runner.tracking.masking import mask_secrets
    from runner.tracking.runstore import artifact_ref, fetch_artifact
    from runner.tracking.stores import MongoStore, request_digest, run_tracked

    grid = parse_grid(grid_items) if grid_items else DEFAULT_GRID
    artifact_ref(record, "best_checkpoint.pt")
    device = resolve_device(device_name)
    client = store.client() if isinstance(store, MongoStore) else None
    request = request_digest(
        {
            "reevaluates": record.meta.get("run_uid") or record.id,
            "grid": with_reference(grid),
            "collapse_threshold": collapse_threshold,
            "device": device.type,
        }
    )
    # A run still training has a best checkpoint that may change: only a finished one's re-evaluation is kept.
    earlier = logged_request(source, request) if record.status != "RUNNING" else None
    if earlier is not None:
        return earlier.id, _show_earlier(record, earlier, client, getattr(store, "db_name", None)), False
    out_dir = new_output_dir(Path(cfg.paths.runs), "reevaluate")
    checkpoint_path = fetch_artifact(record, "best_checkpoint.pt", out_dir, client, getattr(store, "db_name", None))
    model, checkpoint = load_checkpoint(checkpoint_path, device)
    check_is_odenet(model)
    t_final = min(block.t_final for block in ode_blocks(model))
    for method, value in grid:
        if method in FIXED_STEP_METHODS and value > t_final:
            raise ConfigError(
                "--grid", f"{method}:{value:g}", f"fixed steps of at most the integration time T={t_final:g}"
            )
    data = instantiate_group("data", checkpoint["config"]["data"]).to(device)
    # With adaptation, the training solver is the one with the step size or tolerance the weights were trained at.
    training_solver = adapted_solver(
        instantiate_group("solver", checkpoint["config"]["solver"]), checkpoint.get("adaptation")
    )
    title = (
        f"run {record.id}: {record.choices.get('model', '')} on {data.name}, trained with {training_solver.describe()}"
    )
    print(f"re-evaluating {title} on {len(data.test)} test samples", flush=True)

    def body(run: Any) -> float:
        results = reevaluate(model, data, training_solver, grid)
        gap = ode_ness_gap(results, collapse_threshold)
        for step, r in enumerate(results):
            run.log_metrics(
                {
                    "reeval.accuracy": r.accuracy,
                    "reeval.loss": r.loss,
                    "reeval.fnfe": r.mean_fnfe,
                    "reeval.time": r.seconds,
                },
                step,
            )
        run.set_info("reevaluation", [asdict(r) for r in results])
        run.set_info("ode_ness_gap", gap)
        for name, path in write_reports(results, gap, out_dir, title, t_final).items():
            run.add_artifact(path, name)
        print((out_dir / "reevaluation.md").read_text())
        return gap["gap"]

    config = {
        "reevaluates": record.id,
        "grid": [list(g) for g in with_reference(grid)],
        "collapse_threshold": collapse_threshold,
        "tracking": mask_secrets(to_plain(cfg.tracking)),
        REQUEST_KEY: request,
    }
    run_id, _ = run_tracked(
        "reevaluate",
        config,
        store,
        body,
        {"reevaluates": record.id, "reevaluates_uid": record.meta.get("run_uid")},
        command="reevaluate",
    )
    return run_id, out_dir, True


def _show_earlier(record: Any, earlier: Any, client: Any, db_name: str | None) -> Path | None:
    """Say in one line that this re-evaluation exists already, and show its table; returns its folder (None: it is
    in MongoDB only)."""
    import tempfile

    from runner.tracking.runstore import fetch_artifact

    print(
        f"run {record.id} was re-evaluated with this grid already, as run {earlier.id}: nothing new is logged "
        "(another --grid, --collapse-threshold or --device makes a new re-evaluation)",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as scratch:
        table = fetch_artifact(earlier, "reevaluation.md", Path(scratch), client, db_name)
        print(table.read_text(), flush=True)
        return table.parent if table.parent != Path(scratch) else None
