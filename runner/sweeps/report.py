"""The report of a hyperopt sweep, from its state file: did the search converge, which parameters mattered.

`python -m runner sweep-report <sweep dir or id>`, and written by the sweeper when a sweep ends. Figures:
best-so-far against trial number; the objective against each parameter (log axes for log-distributed
ones); a parallel-coordinates plot; the parameters' permutation importance in a random forest fitted to
the trials (scikit-learn); and a Markdown page with the top trials. Pruned trials are drawn with their own
marker at the value they reached; failed trials, which have none, as red crosses on the worst edge.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from odeflow.errors import UserError  # noqa: E402
from odeflow.files import write_atomic
from odeflow.plots import save_figure  # noqa: E402
from odeflow.tables import markdown_table  # noqa: E402
from runner.sweeps import state as sweep_state  # noqa: E402
from runner.sweeps.state import SweepRecord  # noqa: E402

MIN_TRIALS_FOR_IMPORTANCE = 5
TOP_K = 10
MARKERS = {
    "ok": dict(marker="o", color="tab:blue", label="finished"),
    "pruned": dict(marker="v", color="tab:orange", label="pruned (value when stopped)"),
}
FAILED = dict(marker="x", color="tab:red", label="failed (no value)")
LINES = {"ok": ("-", 0.9), "pruned": ("--", 0.7), "failed": (":", 0.6)}  # parallel coordinates: (line style, alpha)


def is_log(spec: str) -> bool:
    return spec.startswith(("loguniform", "qloguniform", "lognormal"))


def is_choice(spec: str) -> bool:
    return spec.startswith("choice")


def trial_frame(record: SweepRecord) -> pd.DataFrame:
    rows = [
        {
            "trial": t.number,
            "status": t.status,
            "value": t.value,
            "run": t.run_id,
            "pruned_at": (t.pruned or {}).get("epoch"),
            **t.params,
        }
        for t in record.trials
        if t.status != "running"
    ]
    return pd.DataFrame(rows, columns=["trial", "status", "value", "run", "pruned_at", *record.space])


def _worst_edge(values: pd.Series, direction: str) -> float:
    """Where failed trials are drawn: just past the worst value seen."""
    if values.empty:
        return 0.0
    low, high = values.min(), values.max()
    pad = 0.05 * (high - low or abs(high) or 1.0)
    return high + pad if direction == "minimize" else low - pad


def _scatter_by_status(ax, frame: pd.DataFrame, x: str, direction: str, positions: dict | None = None) -> None:
    scored = frame[frame["value"].notna()]
    edge = _worst_edge(scored["value"], direction)
    place = (lambda s: s.map(positions)) if positions else (lambda s: s)
    for status, style in MARKERS.items():
        part = frame[frame["status"] == status]
        if not part.empty:
            ax.scatter(place(part[x]), part["value"], s=28, alpha=0.8, **style)
    failed = frame[frame["status"] == "failed"]
    if not failed.empty:
        ax.scatter(place(failed[x]), [edge] * len(failed), s=40, **FAILED)


def best_so_far_png(frame: pd.DataFrame, record: SweepRecord, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    _scatter_by_status(ax, frame, "trial", record.direction)
    scored = frame[frame["value"].notna()].sort_values("trial")
    if not scored.empty:
        best = scored["value"].cummin() if record.direction == "minimize" else scored["value"].cummax()
        ax.step(scored["trial"], best, where="post", color="black", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(record.objective)
    ax.set_title(f"sweep {record.sweep_id}: {record.objective} ({record.direction}) by trial")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def objective_vs_params_png(frame: pd.DataFrame, record: SweepRecord, path: Path) -> Path:
    names = list(record.space)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        spec = record.space[name]
        positions = None
        if is_choice(spec):
            options = list(dict.fromkeys(frame[name].dropna().tolist()))
            positions = {o: i for i, o in enumerate(options)}
            ax.set_xticks(range(len(options)), [str(o) for o in options], rotation=30)
        elif is_log(spec):
            ax.set_xscale("log")
        _scatter_by_status(ax, frame, name, record.direction, positions)
        ax.set_xlabel(f"{name}\n{spec}", fontsize=8)
        ax.set_ylabel(record.objective, fontsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=8)
    fig.suptitle(f"{record.objective} against each parameter")
    return save_figure(fig, path)


def encode(frame: pd.DataFrame, space: dict[str, str]) -> pd.DataFrame:
    """Each parameter on a [0, 1] axis: log10 scale for log-distributed ones, option order for choices."""
    columns = {}
    for name, spec in space.items():
        column = frame[name]
        if is_choice(spec):
            options = list(dict.fromkeys(column.dropna().tolist()))
            column = column.map({o: i for i, o in enumerate(options)}).astype(float)
        else:
            column = column.astype(float)
            if is_log(spec):
                column = np.log10(column)
        span = column.max() - column.min()
        columns[name] = (column - column.min()) / span if span else column * 0 + 0.5
    return pd.DataFrame(columns, index=frame.index)


def parallel_coordinates_png(frame: pd.DataFrame, record: SweepRecord, path: Path) -> Path:
    names = list(record.space)
    encoded = encode(frame, record.space)
    scored = frame["value"].notna()
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * (len(names) + 1)), 4.5))
    values = frame.loc[scored, "value"]
    low, high = (values.min(), values.max()) if not values.empty else (0.0, 1.0)
    norm = plt.Normalize(low, high if high > low else low + 1)
    cmap = plt.get_cmap("viridis_r" if record.direction == "minimize" else "viridis")  # bright = better
    xs = list(range(len(names) + 1))
    worst = 1.0 if record.direction == "minimize" else 0.0  # where a failed trial's objective axis point goes
    for index, row in frame.iterrows():
        ys = [*encoded.loc[index, names].tolist(), norm(row["value"]) if scored[index] else worst]
        linestyle, alpha = LINES[row["status"]]
        color = "tab:red" if row["status"] == "failed" else cmap(norm(row["value"])) if scored[index] else "grey"
        ax.plot(xs, ys, linewidth=1.2, linestyle=linestyle, alpha=alpha, color=color)
    ax.set_xticks(xs, [*names, record.objective], rotation=15, fontsize=8)
    ax.set_yticks([])
    for x, name in enumerate([*names, "value"]):
        ax.axvline(x, color="black", linewidth=0.5)
        column = frame[name].dropna()
        if column.empty:
            continue
        if name != "value" and is_choice(record.space[name]):
            order = list(dict.fromkeys(column.tolist()))
            low_text, high_text = str(order[0]), str(order[-1])
        else:
            low_text, high_text = f"{column.min():.3g}", f"{column.max():.3g}"
        ax.text(x, -0.04, low_text, ha="center", va="top", fontsize=7)
        ax.text(x, 1.04, high_text, ha="center", va="bottom", fontsize=7)
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=record.objective)
    ax.set_ylim(-0.12, 1.12)
    ax.set_title(
        "parallel coordinates (solid: finished, dashed: pruned, red dotted: failed; log-distributed axes on a log scale)",
        fontsize=9,
    )
    return save_figure(fig, path)


def parameter_importance(frame: pd.DataFrame, space: dict[str, str], seed: int = 0) -> pd.DataFrame | None:
    """Permutation importance of each parameter in a random forest that predicts the objective from the
    parameters (trials with a value); None below MIN_TRIALS_FOR_IMPORTANCE trials."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.inspection import permutation_importance

    scored = frame[frame["value"].notna()]
    if len(scored) < MIN_TRIALS_FOR_IMPORTANCE:
        return None
    features = encode(scored, space)
    forest = RandomForestRegressor(n_estimators=200, min_samples_leaf=2, random_state=seed).fit(
        features, scored["value"]
    )
    result = permutation_importance(forest, features, scored["value"], n_repeats=30, random_state=seed)
    return pd.DataFrame(
        {"parameter": list(space), "importance": result.importances_mean, "std": result.importances_std}
    ).sort_values("importance", ascending=False, ignore_index=True)


def importance_png(importance: pd.DataFrame, record: SweepRecord, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(importance) + 1.5))
    ordered = importance.iloc[::-1]
    ax.barh(ordered["parameter"], ordered["importance"], xerr=ordered["std"], color="tab:blue")
    ax.set_xlabel(f"drop in R² of a random forest predicting {record.objective} when the parameter is shuffled")
    ax.set_title("parameter importance (permutation)")
    return save_figure(fig, path)


def write_report(sweep_dir: Path, out_dir: Path | None = None) -> dict[str, Path]:
    """report.md and the PNGs in `out_dir` (default: <sweep dir>/report); returns their paths by name."""
    return _write(sweep_dir, out_dir)[0]


def _write(sweep_dir: Path, out_dir: Path | None) -> tuple[dict[str, Path], SweepRecord, pd.DataFrame | None]:
    record = sweep_state.load(sweep_dir)
    if record is None:
        raise UserError(f"{sweep_dir} holds no {sweep_state.STATE_FILE}", "point at a hyperopt sweep's directory")
    out = Path(out_dir) if out_dir else Path(sweep_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    frame = trial_frame(record)
    if frame.empty:
        raise UserError(f"sweep {record.sweep_id} has no finished trial yet", "report on it once a batch has finished")
    paths = {
        "best_so_far.png": best_so_far_png(frame, record, out / "best_so_far.png"),
        "objective_vs_params.png": objective_vs_params_png(frame, record, out / "objective_vs_params.png"),
        "parallel_coordinates.png": parallel_coordinates_png(frame, record, out / "parallel_coordinates.png"),
    }
    importance = parameter_importance(frame, record.space)
    if importance is not None:
        paths["importance.png"] = importance_png(importance, record, out / "importance.png")
    paths["report.md"] = out / "report.md"
    write_atomic(paths["report.md"], _markdown(record, frame, importance, paths))
    return paths, record, importance


def _markdown(record: SweepRecord, frame: pd.DataFrame, importance: pd.DataFrame | None, paths: dict[str, Path]) -> str:
    best = record.best()
    scored = frame[frame["value"].notna()]
    top = scored.sort_values("value", ascending=record.direction == "minimize").head(TOP_K)
    counts = frame["status"].value_counts()
    lines = [
        f"# Sweep {record.sweep_id}",
        "",
        f"{record.objective} ({record.direction}) over {', '.join(f'`{n}: {s}`' for n, s in record.space.items())}.",
        "",
        f"{len(frame)} trials: {counts.get('ok', 0)} finished, {counts.get('pruned', 0)} pruned, "
        f"{counts.get('failed', 0)} failed."
        + (f" Warm-started from {', '.join(record.warm_start)}." if record.warm_start else ""),
        "",
    ]
    if best is not None:
        lines += [
            f"Best: trial {best.number} (run {best.run_id}), {record.objective} = {best.value:.6g}, "
            + ", ".join(f"{k}={v}" for k, v in best.params.items()),
            "",
        ]
    lines += [
        f"## Top {min(TOP_K, len(top))} trials",
        "",
        markdown_table(top.drop(columns=["pruned_at"]), {"value": "{:.6g}"}),
        "",
    ]
    lines += [
        "## Convergence",
        "",
        "![best so far](best_so_far.png)",
        "",
        "## The objective against each parameter",
        "",
        "![objective against parameters](objective_vs_params.png)",
        "",
        "![parallel coordinates](parallel_coordinates.png)",
        "",
        "## Parameter importance",
        "",
    ]
    if importance is None:
        lines += [f"Needs at least {MIN_TRIALS_FOR_IMPORTANCE} trials with a value; this sweep has {len(scored)}.", ""]
    else:
        lines += [
            "Permutation importance in a random forest fitted to the trials (scikit-learn): how much worse it "
            "predicts the objective when one parameter's values are shuffled. With few trials it is a hint, not a test.",
            "",
            markdown_table(importance, {"importance": "{:.3f}", "std": "{:.3f}"}),
            "",
            "![importance](importance.png)",
            "",
        ]
    lines += ["## All trials", "", markdown_table(frame, {"value": "{:.6g}"}), ""]
    return "\n".join(lines)


def write_and_log_report(sweep_dir: Path, cfg: Any, out_dir: Path | None = None) -> tuple[Any, dict[str, Path]]:
    """Write the report and log it as a run of its own (command sweep_report) in the store `cfg` names, its
    files as artifacts and the sweep's id in its meta data, so it shows in Omniboard beside the trials."""
    from runner.experiment.factories import instantiate_group
    from runner.tracking.stores import run_tracked

    paths, record, importance = _write(sweep_dir, out_dir)
    best = record.best()
    summary = {
        "sweep_id": record.sweep_id,
        "objective": record.objective,
        "direction": record.direction,
        "space": [f"{n}: {s}" for n, s in record.space.items()],
        "trials": len(record.trials),
        "best_value": best.value if best else None,
        "best_run": best.run_id if best else None,
    }

    def body(run) -> dict[str, Any]:
        run.set_info("sweep", summary)
        for name, path in paths.items():
            run.add_artifact(path, name)
        return summary

    store = instantiate_group("tracking", cfg.tracking)
    run_id, _ = run_tracked(
        "sweep_report", summary, store, body, {"sweep_report_of": record.sweep_id}, command="sweep_report"
    )
    print(
        f"sweep report: {paths['report.md']}" + (f" (logged as run {run_id})" if run_id is not None else ""), flush=True
    )
    print(
        f"  {record.count('ok')} finished, {record.count('pruned')} pruned, {record.count('failed')} failed; "
        + (
            f"best {record.objective} {best.value:.6g} (trial {best.number}, run {best.run_id})"
            if best
            else "no trial with a value"
        ),
        flush=True,
    )
    if importance is not None:
        print(
            "  parameter importance: "
            + ", ".join(f"{row.parameter} {row.importance:.3f}" for row in importance.itertuples()),
            flush=True,
        )
    return run_id, paths
