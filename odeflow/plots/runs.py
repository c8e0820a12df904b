"""A metric across runs (`runs plot`, a study's BNFE per epoch): one line per run on a planned axis."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from odeflow.plots import save_figure
from odeflow.plots.scales import apply_axis, as_array, finite, mark_off_chart, plan_axis
from odeflow.plots.styles import STATUS_STYLES


def metric_across_runs_figure(
    series: dict[str, tuple[list[float], list[float]]],
    metric: str,
    outcomes: dict[str, str] | None = None,
    title: str | None = None,
) -> plt.Figure:
    """One line per run (label -> (steps, values)), its last point in the marker of the run's outcome
    (`outcomes`: label -> a STATUS_STYLES key: ok, pruned, failed, running)."""
    outcomes = outcomes or {}
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    curves = {label: (as_array(steps), as_array(values)) for label, (steps, values) in series.items()}
    plan = plan_axis(np.concatenate([v for _, v in curves.values()]) if curves else [])
    apply_axis(ax, plan)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs
    shown_outcomes = set()
    for label, (steps, values) in curves.items():
        (line,) = ax.plot(steps, plan.placed(values), marker="o", markersize=3, label=label)
        mark_off_chart(ax, steps, values, plan, color=line.get_color(), marker="o", s=14)
        kept = np.isfinite(values)
        if kept.any():
            outcome = outcomes.get(label, "ok")
            style = STATUS_STYLES[outcome]
            ax.scatter(
                steps[kept][-1:],
                plan.placed(values[kept][-1:]),
                marker=style["marker"],
                s=60,
                color=line.get_color(),
                edgecolor=style["color"],
                linewidth=1.5,
                zorder=4,
                clip_on=False,
            )
            shown_outcomes.add(outcome)
    for outcome in sorted(shown_outcomes):  # the outcome markers' legend, in neutral colour
        style = STATUS_STYLES[outcome]
        ax.scatter([], [], marker=style["marker"], color="white", edgecolor=style["color"], label=style["label"])
    ax.set(xlabel="epoch", ylabel=metric)
    runs = len(curves)
    ax.set_title(title or f"{metric} per epoch, {runs} run{'s' * (runs != 1)}", fontsize=9)
    if not finite(np.concatenate([v for _, v in curves.values()]) if curves else []).size:
        ax.text(0.5, 0.5, f"no value of {metric} logged", transform=ax.transAxes, ha="center", va="center")
    ax.legend(fontsize=8)
    return fig


def metric_across_runs_png(
    series: dict[str, tuple[list[float], list[float]]],
    metric: str,
    path: Path,
    outcomes: dict[str, str] | None = None,
    title: str | None = None,
) -> Path:
    return save_figure(metric_across_runs_figure(series, metric, outcomes, title), path)
