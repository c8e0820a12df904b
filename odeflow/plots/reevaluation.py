"""Test accuracy of a trained ODEnet against the test solver's resolution ("ResNet After All", Ott et al.).

x is the number of test steps over [0, T] for fixed-step solvers (T / h) and 1 / tolerance for adaptive
ones, both on log axes (panels side by side, one accuracy axis); one line per test solver; the training
configuration is a black star with its accuracy as a dotted line across, the reference solve a ring, and
the ODE-ness gap is written on the figure (red when the model collapses).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from odeflow.plots import save_figure
from odeflow.plots.styles import TRAINED_STYLE

METHOD_MARKERS = ("o", "s", "^", "D", "P", "v", "h")


def resolution(setting: str, t_final: float = 1.0) -> tuple[str, float, str]:
    """("fixed", T/h, tick label) for "h=0.5", ("adaptive", 1/tol, tick label) for "tol=0.001"."""
    key, _, value = setting.partition("=")
    number = float(value)
    if key == "h":
        return "fixed", t_final / number, f"{t_final / number:g}\nh={number:g}"
    return "adaptive", 1.0 / number, f"{number:g}"


def reevaluation_figure(
    results: list[dict[str, Any]], gap: dict[str, Any], title: str, t_final: float = 1.0
) -> plt.Figure:
    """`results`: rows with method, setting ("h=..." / "tol=..."), accuracy, training_solver, reference;
    the training solver's row first. `gap`: training_accuracy, reference_accuracy, gap, collapsed, threshold."""
    rows = [{**r, "kind": resolution(r["setting"], t_final)} for r in results]
    kinds = [k for k in ("fixed", "adaptive") if any(r["kind"][0] == k for r in rows)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.2 * len(kinds) + 1, 4.8), sharey=True, squeeze=False)
    panels = dict(zip(kinds, axes.flat, strict=True))
    methods = list(dict.fromkeys(r["method"] for r in rows if not r["training_solver"]))
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    # Solvers often agree exactly: earlier lines are drawn wider, with larger markers, so none hides another.
    widths = {m: 1.2 + 2.4 * (len(methods) - 1 - i) / max(1, len(methods) - 1) for i, m in enumerate(methods)}
    for kind, ax in panels.items():
        ticks: dict[float, str] = {}
        for method in methods:
            points = sorted(
                (r["kind"][1], r["accuracy"], r["kind"][2])
                for r in rows
                if r["method"] == method and r["kind"][0] == kind and not r["training_solver"]
            )
            if not points:
                continue
            xs, ys, labels = zip(*points, strict=True)
            ax.plot(
                xs,
                ys,
                marker=METHOD_MARKERS[methods.index(method) % len(METHOD_MARKERS)],
                markersize=3 + 2 * widths[method],
                linewidth=widths[method],
                alpha=0.85,
                color=colors[method],
                label=f"test: {method}",
            )
            ticks.update(zip(xs, labels, strict=True))
        ax.set_xscale("log")
        ax.set_xticks(list(ticks), list(ticks.values()), fontsize=7)
        ax.minorticks_off()
        if kind == "fixed":
            ax.set_xlabel(f"number of test steps over [0, {t_final:g}] (step size h)")
        else:
            ax.set_xlabel("1 / tolerance (rtol = atol shown), tighter to the right")
        ax.grid(alpha=0.3)
    trained = rows[0]
    reference = next((r for r in rows if r["reference"]), None)
    for ax in panels.values():
        ax.axhline(trained["accuracy"], color="black", linestyle=":", linewidth=1)
    train_ax = panels[trained["kind"][0]]
    train_ax.scatter(
        [trained["kind"][1]],
        [trained["accuracy"]],
        label=f"trained: {trained['method']} {trained['setting']} ({trained['accuracy']:.3f})",
        **TRAINED_STYLE,
    )
    if reference is not None:
        panels[reference["kind"][0]].scatter(
            [reference["kind"][1]],
            [reference["accuracy"]],
            s=220,
            facecolor="none",
            edgecolor="tab:red",
            linewidth=1.8,
            zorder=5,
            label=f"reference: {reference['method']} {reference['setting']} ({reference['accuracy']:.3f})",
        )
    accuracies = np.array([r["accuracy"] for r in rows], dtype=float)
    low, high = np.nanmin(accuracies), np.nanmax(accuracies)
    pad = max(0.02, 0.08 * (high - low))
    axes.flat[0].set_ylim(max(0.0, low - pad), min(1.0 + pad / 2, high + pad))
    axes.flat[0].set_ylabel("test accuracy")
    verdict = (
        "COLLAPSES under the accurate solve: it learned the discretisation"
        if gap["collapsed"]
        else "keeps its accuracy under the accurate solve"
    )
    fig.supxlabel(
        f"ODE-ness gap = trained {gap['training_accuracy']:.3f} - reference {gap['reference_accuracy']:.3f} "
        f"= {gap['gap']:+.3f}: the model {verdict} (threshold {gap['threshold']:g})",
        fontsize=9,
        color="tab:red" if gap["collapsed"] else "black",
        gid="ode-ness-gap",
    )
    handles, labels = [], []
    for ax in panels.values():
        h, lab = ax.get_legend_handles_labels()
        handles += h
        labels += lab
    axes.flat[-1].legend(handles, labels, fontsize=7, loc="best")
    fig.suptitle(title, fontsize=9)
    return fig


def reevaluation_png(
    results: list[dict[str, Any]], gap: dict[str, Any], path: Path, title: str, t_final: float = 1.0
) -> Path:
    return save_figure(reevaluation_figure(results, gap, title, t_final), path)
