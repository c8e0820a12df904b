"""The report of a hyperopt sweep, from its state file: did the search converge, which parameters mattered.

`python -m runner sweep-report <sweep dir or id>`, and written by the sweeper when a sweep ends. Figures:
best-so-far against trial number; the objective against each parameter (log axes for log-distributed
ones); a parallel-coordinates plot; the parameters' permutation importance in a random forest fitted to
the trials (scikit-learn); and a Markdown page with the top trials. Pruned trials are drawn with their own
marker at the value they reached; failed trials, which have none, as red crosses on the worst edge. The
objective axis is planned from the values (odeflow.plots.scales): log when they span decades, a diverged
trial that would squash the rest left off the chart and marked with its value.
"""

from __future__ import annotations

import math
from dataclasses import asdict
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
from odeflow.plots.scales import AxisPlan, apply_axis, color_norm, mark_off_chart, plan_axis  # noqa: E402
from odeflow.plots.styles import STATUS_STYLES  # noqa: E402
from odeflow.tables import markdown_table  # noqa: E402
from runner.sweeps import state as sweep_state  # noqa: E402
from runner.sweeps.state import SweepRecord  # noqa: E402

MIN_TRIALS_FOR_IMPORTANCE = 5
TOP_K = 10
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


def objective_plan(frame: pd.DataFrame) -> AxisPlan:
    """The objective axis of every figure of the report, planned from the trials' values (log when they
    span decades, a diverged trial left off the chart and marked when it would squash the rest)."""
    return plan_axis(frame["value"])


def _scatter_by_status(
    ax, frame: pd.DataFrame, x: str, plan: AxisPlan, direction: str, positions: dict | None = None
) -> None:
    """Trials as points in their outcome's marker (odeflow.plots.styles); failed ones, which have no
    value, on the worst edge of the axis."""
    place = (lambda s: s.map(positions)) if positions else (lambda s: s)
    for status in ("ok", "pruned"):
        part = frame[(frame["status"] == status) & frame["value"].notna()]
        if not part.empty:
            style = STATUS_STYLES[status]
            ax.scatter(place(part[x]), plan.placed(part["value"]), s=28, alpha=0.8, **style)
            mark_off_chart(ax, place(part[x]), part["value"], plan, color=style["color"], marker=style["marker"], s=28)
    no_value = frame[frame["value"].isna()]  # failed trials, and any whose objective came out NaN
    if not no_value.empty:
        ax.autoscale_view()
        low, high = ax.get_ylim()
        edge = high if direction == "minimize" else low
        for status, part in no_value.groupby("status"):
            style = dict(STATUS_STYLES[status])
            if status != "failed":
                style.update(facecolor="none", edgecolor=style.pop("color"), label=f"{style['label']}, no value")
            ax.scatter(place(part[x]), [edge] * len(part), s=44, clip_on=False, zorder=5, **style)
        ax.set_ylim(low, high)


def _trial_counts(frame: pd.DataFrame) -> str:
    counts = frame["status"].value_counts()
    return (
        f"{len(frame)} trials: {counts.get('ok', 0)} finished, {counts.get('pruned', 0)} pruned, "
        f"{counts.get('failed', 0)} failed"
    )


def best_so_far_figure(frame: pd.DataFrame, record: SweepRecord) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    plan = objective_plan(frame)
    apply_axis(ax, plan)
    scored = frame[frame["value"].notna()].sort_values("trial")
    if not scored.empty:
        best = scored["value"].cummin() if record.direction == "minimize" else scored["value"].cummax()
        ax.step(scored["trial"], plan.placed(best), where="post", color="black", label="best so far")
    _scatter_by_status(ax, frame, "trial", plan, record.direction)
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{record.objective} ({plan.scale} axis)")
    ax.set_title(
        f"sweep {record.sweep_id}: {record.objective} ({record.direction}) by trial\n{_trial_counts(frame)}",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    return fig


def best_so_far_png(frame: pd.DataFrame, record: SweepRecord, path: Path) -> Path:
    return save_figure(best_so_far_figure(frame, record), path)


def objective_vs_params_figure(frame: pd.DataFrame, record: SweepRecord) -> plt.Figure:
    names = list(record.space)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows + 0.6), squeeze=False)
    plan = objective_plan(frame)
    for ax, name in zip(axes.flat, names, strict=False):  # surplus panels are switched off below
        spec = record.space[name]
        positions = None
        apply_axis(ax, plan)
        if is_choice(spec):
            options = list(dict.fromkeys(frame[name].dropna().tolist()))
            positions = {o: i for i, o in enumerate(options)}
            ax.set_xticks(range(len(options)), [str(o) for o in options], rotation=30)
        elif is_log(spec):
            ax.set_xscale("log")
        else:
            apply_axis(ax, plan_axis(pd.to_numeric(frame[name], errors="coerce"), clip=False), "x")
        _scatter_by_status(ax, frame, name, plan, record.direction, positions)
        ax.set_xlabel(f"{name}\n{spec}", fontsize=8)
        ax.set_ylabel(record.objective, fontsize=8)
    spare = list(axes.flat)[len(names) :]
    for ax in spare:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if spare:  # the legend in an empty panel, clear of the title
        spare[0].legend(handles, labels, loc="center", fontsize=9)
    else:
        fig.legend(handles, labels, loc="upper right", fontsize=8)
    fig.suptitle(
        f"sweep {record.sweep_id}: {record.objective} against each parameter ({_trial_counts(frame)})", fontsize=10
    )
    return fig


def objective_vs_params_png(frame: pd.DataFrame, record: SweepRecord, path: Path) -> Path:
    return save_figure(objective_vs_params_figure(frame, record), path)


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


def parallel_coordinates_figure(frame: pd.DataFrame, record: SweepRecord) -> plt.Figure:
    """One line per trial across the parameters and the objective; the objective axis and the colours
    follow the report's objective plan (log colours when the values span decades, an outlier clipped)."""
    names = list(record.space)
    encoded = encode(frame, record.space)
    scored = frame["value"].notna()
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * (len(names) + 1)), 4.7))
    plan = objective_plan(frame)
    norm, extend = color_norm(plan, frame["value"])
    cmap = plt.get_cmap("viridis_r" if record.direction == "minimize" else "viridis")  # bright = better
    xs = list(range(len(names) + 1))
    worst = 1.0 if record.direction == "minimize" else 0.0  # where a failed trial's objective axis point goes
    for index, row in frame.iterrows():
        position = float(norm(row["value"])) if scored[index] else worst
        ys = [*encoded.loc[index, names].tolist(), position]
        linestyle, alpha = LINES[row["status"]]
        color = STATUS_STYLES["failed"]["color"] if row["status"] == "failed" else cmap(position)
        ax.plot(xs, ys, linewidth=1.2, linestyle=linestyle, alpha=alpha, color=color)
        style = STATUS_STYLES[row["status"]]
        ax.scatter([xs[-1]], [position], marker=style["marker"], color=color, s=30, zorder=4, clip_on=False)
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
        elif name == "value":
            low_text, high_text = f"{norm.vmin:.3g}", f"{norm.vmax:.3g}"
            low_text += " or less" if plan.low is not None else ""
            high_text += " or more" if plan.high is not None else ""
        else:
            low_text, high_text = f"{column.min():.3g}", f"{column.max():.3g}"
        ax.text(x, -0.04, low_text, ha="center", va="top", fontsize=7)
        ax.text(x, 1.04, high_text, ha="center", va="bottom", fontsize=7)
    fig.colorbar(
        plt.cm.ScalarMappable(norm=norm, cmap=cmap),
        ax=ax,
        extend=extend,
        label=f"{record.objective} ({'log' if plan.scale == 'log' else 'linear'} colours)",
    )
    ax.set_ylim(-0.12, 1.12)
    ax.set_title(
        f"sweep {record.sweep_id}, {_trial_counts(frame)}: parallel coordinates\n(solid: finished, dashed: pruned, "
        "red dotted: failed; log-distributed parameters on a log scale)",
        fontsize=9,
    )
    return fig


def parallel_coordinates_png(frame: pd.DataFrame, record: SweepRecord, path: Path) -> Path:
    return save_figure(parallel_coordinates_figure(frame, record), path)


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
            "predicts the objective when one parameter's values are shuffled. "
            "With few trials it is a hint, not a test.",
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
    from runner.experiment.figures import wait_for_figures
    from runner.tracking.stores import request_digest, run_tracked

    wait_for_figures()  # the trials' own figures, drawn after their results (pyplot: one drawer at a time)
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
    reported = {"store": store.describe(), "trials": request_digest([asdict(t) for t in record.trials])}
    earlier = record.report_run or {}
    if earlier.get("run_id") is not None and all(earlier.get(k) == v for k, v in reported.items()):
        # the same trials reported to the same store: the command is repeated, not the record
        run_id, logged = earlier["run_id"], "logged already as run {} (the sweep has not changed since)"
    else:
        run_id, _ = run_tracked(
            "sweep_report", summary, store, body, {"sweep_report_of": record.sweep_id}, command="sweep_report"
        )
        logged = "logged as run {}"
        if run_id is not None:
            record.report_run = {"run_id": run_id, **reported}
            record.save(sweep_dir)
    print(
        f"sweep report: {paths['report.md']}" + (f" ({logged.format(run_id)})" if run_id is not None else ""),
        flush=True,
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
