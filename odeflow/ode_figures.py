"""Figures of ODE-ness: the adapted step size or tolerance over training, trajectories of the ODE state, and
the critical-step study's accuracy against test steps. Drawn with plain matplotlib and odeflow.plots.save_figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from odeflow.plots import plt, save_figure


def adaptation_png(adaptation: dict[str, Any], path: Path) -> Path:
    """The step size (or tolerance) in effect after each check, and each check's accuracy gap, over iterations."""
    log = adaptation.get("log", [])
    iterations = [c["iteration"] for c in log]
    fig, (value_ax, gap_ax) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    name = "step size h" if adaptation["kind"] == "step_size" else "tolerance (rtol = atol)"
    value_ax.step(iterations, [c["value"] for c in log], where="post", marker="o", markersize=3)
    value_ax.set_yscale("log")
    value_ax.set(ylabel=name, title=f"{adaptation['kind']} adaptation: {adaptation['changes']} changes")
    gap_ax.plot(iterations, [c["gap"] for c in log], marker="o", markersize=3, label="gap")
    gap_ax.axhline(adaptation["threshold"], color="red", linestyle="--", label="threshold")
    gap_ax.set(xlabel="training iteration", ylabel="|acc(train solver) - acc(test solve)|")
    gap_ax.legend(fontsize=8)
    return save_figure(fig, path)


def trajectories_png(
    panels: dict[str, np.ndarray],
    labels: np.ndarray,
    path: Path,
    projected: bool,
    crossings: dict[str, int | None],
    class_names: list[str] | None = None,
) -> Path:
    """One panel per solver: trajectories (points, times, 2) coloured by class, start dots and end crosses."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.6), squeeze=False)
    colours = plt.get_cmap("coolwarm")(np.linspace(0, 1, max(2, int(labels.max()) + 1)))
    for ax, (title, paths) in zip(axes[0], panels.items(), strict=True):
        for trajectory, label in zip(paths, labels, strict=True):
            ax.plot(trajectory[:, 0], trajectory[:, 1], color=colours[label], linewidth=0.6, alpha=0.7)
        ax.scatter(paths[:, 0, 0], paths[:, 0, 1], c=colours[labels], s=6, marker="o")
        ax.scatter(paths[:, -1, 0], paths[:, -1, 1], c=colours[labels], s=12, marker="x")
        count = crossings.get(title)
        ax.set_title(title + (f"\n{count} crossing pairs" if count is not None else ""), fontsize=9)
        axis = "principal component" if projected else "state"
        ax.set(xlabel=f"{axis} 1", ylabel=f"{axis} 2")
    names = class_names or [str(c) for c in range(len(colours))]
    handles = [plt.Line2D([], [], color=colours[c], label=names[c]) for c in sorted(set(labels.tolist()))]
    axes[0][-1].legend(handles=handles, fontsize=8, title="class (o start, x end)", title_fontsize=8)
    if projected:
        fig.suptitle("projection of the ODE state on its first two principal components", fontsize=9)
    return save_figure(fig, path)


def critical_step_png(curves: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """One panel per test method: test accuracy over the number of test steps (log), one curve per training step.

    `curves[method]` holds rows {train_steps, test_steps, accuracy, trained_here}; the training configuration
    (the training method at the training step count) is marked with a star.
    """
    methods = list(curves)
    fig, axes = plt.subplots(1, len(methods), figsize=(5 * len(methods), 4.2), sharey=True, squeeze=False)
    train_steps = sorted({r["train_steps"] for rows in curves.values() for r in rows})
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(train_steps)))
    for ax, method in zip(axes[0], methods, strict=True):
        for colour, n in zip(colours, train_steps, strict=True):
            rows = sorted((r for r in curves[method] if r["train_steps"] == n), key=lambda r: r["test_steps"])
            ax.plot(
                [r["test_steps"] for r in rows],
                [r["accuracy"] for r in rows],
                color=colour,
                marker="o",
                markersize=3,
                label=f"trained with {n} steps",
            )
            for r in rows:
                if r["trained_here"]:
                    ax.plot(
                        r["test_steps"], r["accuracy"], marker="*", markersize=14, color=colour, markeredgecolor="black"
                    )
        ax.set_xscale("log", base=2)
        ax.set(xlabel="test steps over [0, T] (log)", title=f"tested with {method}")
    axes[0][0].set_ylabel("test accuracy")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)


def deep_limit_png(
    curves: dict[str, list[dict[str, Any]]], slopes: dict[str, dict[str, float | None]], path: Path
) -> Path:
    """Two log-log panels against the number of layers N: the sup relative parameter distance to the ODE
    limit, and the final risk gap; one line per solver family, labelled with its fitted slope."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    panels = (("distance", "sup ||theta_N - theta|| / ||theta||"), ("risk_gap", "|risk_N - risk| at the end"))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for method, rows in curves.items():
            points = [(r["layers"], r[key]) for r in rows if r[key] > 0]
            if not points:
                continue
            slope = slopes.get(method, {}).get(key)
            text = f"{method} (slope {slope:.2f})" if slope is not None else method
            ax.plot(*zip(*points, strict=True), marker="o", label=text)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set(xlabel="layers N (steps of size 1/N)", ylabel=label)
        ax.legend(fontsize=8)
    fig.suptitle("weight-tied ResNet against its ODE limit; the theorem predicts slope -1 for euler", fontsize=9)
    return save_figure(fig, path)


def param_efficiency_png(panels: dict[str, tuple[dict[str, list[dict[str, Any]]], list[float]]], path: Path) -> Path:
    """One panel per title (a dataset): test accuracy against parameter count on a log axis, one line per
    architecture through its widths with error bars of the seeds' standard deviation, and the panel's target
    accuracies as dotted lines. `panels[title]` is ({architecture: rows of params, acc_mean, acc_std}, targets)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(8 * len(panels), 5), squeeze=False)
    for ax, (title, (curves, targets)) in zip(axes[0], panels.items(), strict=True):
        for target in targets:
            ax.axhline(target, color="grey", linestyle=":", linewidth=0.8)
        for architecture, rows in curves.items():
            rows = sorted(rows, key=lambda r: r["params"])
            ax.errorbar(
                [r["params"] for r in rows],
                [r["acc_mean"] for r in rows],
                yerr=[r["acc_std"] or 0.0 for r in rows],
                marker="s" if architecture.startswith("ResNet") else "o",
                markersize=4,
                capsize=3,
                label=architecture,
            )
        ax.set_xscale("log")
        ax.set(xlabel="parameters (log)", ylabel="test accuracy")
        ax.set_title(f"{title}; dotted: the target accuracies", fontsize=9)
        ax.legend(fontsize=8)
    return save_figure(fig, path)
