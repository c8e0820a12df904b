"""The figures of one run: confusion matrix, learning curves, NFE per epoch, and any other per-epoch series.

Each `*_figure` function returns the matplotlib figure (tests read its axes); `*_png` writes it. A history
is the run's list of per-epoch metric dicts (`{"epoch": 1, "train.loss": ..., ...}`); a metric missing
from an epoch, or NaN, leaves a gap instead of failing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from odeflow.plots import save_figure
from odeflow.plots.scales import apply_axis, as_array, finite, mark_off_chart, plan_axis
from odeflow.plots.styles import BEST_EPOCH_STYLE

# Prefixes of the series the standard figures draw; any other family (memory.*, adaptation.*, ...) gets
# a figure of its own from extra_epoch_figures.
STANDARD_FAMILIES = ("train", "val", "nfe", "epoch")
VALIDATION_STYLE = {"marker": "o", "markersize": 6, "linestyle": "--", "markerfacecolor": "none"}
LOSS_LOG_DECADES = 1.0  # losses fall geometrically: a log axis as soon as they span one decade


def series(history: list[dict[str, float]], name: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) of one metric; NaN where an epoch lacks it."""
    epochs = as_array(h.get("epoch", i + 1) for i, h in enumerate(history))
    return epochs, as_array(h.get(name) for h in history)


def has_values(history: list[dict[str, float]], name: str) -> bool:
    return finite(series(history, name)[1]).size > 0


def confusion_matrix_figure(matrix: list[list[int]], class_names: list[str], title: str | None = None) -> plt.Figure:
    data = np.asarray(matrix)
    size = max(4.0, 0.5 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(data, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = data.max() / 2 if data.size else 0
    for (i, j), value in np.ndenumerate(data):
        ax.text(j, i, str(value), ha="center", va="center", color="white" if value > threshold else "black", fontsize=8)
    ax.set_title("test confusion matrix" + (f"\n{title}" if title else ""), fontsize=9)
    return fig


def confusion_matrix_png(matrix: list[list[int]], class_names: list[str], path: Path, title: str | None = None) -> Path:
    return save_figure(confusion_matrix_figure(matrix, class_names, title), path)


def draw_series(ax, curves: dict[str, tuple[np.ndarray, np.ndarray]], log_decades: float = 2.0, **plot_style) -> None:
    """Lines label -> (x, y) on one axis whose y scale and limits the layer plans from all of them;
    points beyond the limits are drawn on the edge with their value."""
    plan = plan_axis(np.concatenate([y for _, y in curves.values()]) if curves else [], log_decades=log_decades)
    apply_axis(ax, plan)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs
    for label, (x, y) in curves.items():
        # Validation dashed with open markers, so a train line with the same values still shows beneath it.
        style = VALIDATION_STYLE if label.startswith("val") else {"marker": "o", "markersize": 4}
        (line,) = ax.plot(x, plan.placed(y), label=label, **{**style, **plot_style})
        mark_off_chart(ax, x, y, plan, color=line.get_color(), marker="o", s=16)
        if finite(y).size == 1:  # a lone value has no line: keep its marker visible
            line.set_markersize(7)


def mark_best_epoch(ax, best_epoch: int | None, label: bool = True) -> None:
    if best_epoch:
        ax.axvline(
            best_epoch, label=f"best epoch {best_epoch} (restored, tested)" if label else None, **BEST_EPOCH_STYLE
        )


def learning_curves_figure(
    history: list[dict[str, float]],
    best_epoch: int | None = None,
    title: str | None = None,
    test: dict[str, float] | None = None,
) -> plt.Figure:
    """Loss (log axis once it spans a decade, so the first epoch does not flatten the rest) and accuracy of
    train and validation per epoch; the best epoch, whose weights the run restores and tests, marked, with
    the test loss and accuracy on it when given (`{"test.loss": ..., "test.acc": ...}`)."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, log_decades in ((loss_ax, "loss", LOSS_LOG_DECADES), (acc_ax, "acc", np.inf)):
        curves = {split: series(history, f"{split}.{metric}") for split in ("train", "val")}
        curves = {k: v for k, v in curves.items() if finite(v[1]).size}
        draw_series(ax, curves, log_decades=log_decades)
        mark_best_epoch(ax, best_epoch)
        value = (test or {}).get(f"test.{metric}")
        if best_epoch and value is not None and np.isfinite(value):
            ax.scatter(
                [best_epoch], [value], marker="*", s=160, color="black", zorder=6, label=f"test {metric} {value:.4g}"
            )
        if not curves:
            ax.text(0.5, 0.5, f"no {metric} logged", transform=ax.transAxes, ha="center", va="center")
        ax.set(xlabel="epoch", ylabel="accuracy" if metric == "acc" else "loss")
        ax.set_title("accuracy" if metric == "acc" else f"loss ({ax.get_yscale()} axis)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def learning_curves_png(
    history: list[dict[str, float]],
    path: Path,
    best_epoch: int | None = None,
    title: str | None = None,
    test: dict[str, float] | None = None,
) -> Path:
    return save_figure(learning_curves_figure(history, best_epoch, title, test), path)


def nfe_figure(history: list[dict[str, float]], best_epoch: int | None = None, title: str | None = None) -> plt.Figure:
    """Mean function evaluations per batch: training forward, validation forward, and backward only when f
    was evaluated backwards (the adjoint's backward solve, the checkpointed gradient's re-run steps; direct
    backpropagation logs BNFE 0 throughout)."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    names = {"nfe.forward": "train forward (FNFE)", "val.nfe.forward": "validation forward"}
    backward = finite(series(history, "nfe.backward")[1])
    has_backward = bool((backward > 0).any())
    if has_backward:
        names["nfe.backward"] = "backward (BNFE)"
    curves = {label: series(history, name) for name, label in names.items() if has_values(history, name)}
    draw_series(ax, curves)
    mark_best_epoch(ax, best_epoch)
    ax.set(xlabel="epoch", ylabel="function evaluations per batch")
    note = "" if has_backward else "\nno backward evaluations (direct backpropagation): no BNFE line"
    ax.set_title("NFE per epoch" + (f": {title}" if title else "") + note, fontsize=9)
    if curves:
        ax.legend(fontsize=8)
    return fig


def nfe_png(
    history: list[dict[str, float]], path: Path, best_epoch: int | None = None, title: str | None = None
) -> Path:
    return save_figure(nfe_figure(history, best_epoch, title), path)


def _unit(name: str) -> tuple[float, str]:
    """(divisor, unit) for a series' values: bytes in MiB, others as logged."""
    return (2**20, "MiB") if name.endswith("bytes") else (1.0, "")


def epoch_series_figure(
    history: list[dict[str, float]],
    names: Iterable[str],
    best_epoch: int | None = None,
    title: str | None = None,
) -> plt.Figure | None:
    """Any named per-epoch series, in the style of the learning curves: one panel per quantity (the last
    dotted part of the name: `memory.train.peak_bytes` and `memory.val.peak_bytes` share a `peak_bytes`
    panel), each with the layer's scale rules; bytes shown in MiB. None when no series has a value."""
    panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for name in names:
        epochs, values = series(history, name)
        if finite(values).size:
            divisor, _ = _unit(name)
            panels.setdefault(name.rsplit(".", 1)[-1], {})[name] = (epochs, values / divisor)
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for ax, (quantity, curves) in zip(axes.flat, panels.items(), strict=True):
        draw_series(ax, curves)
        mark_best_epoch(ax, best_epoch)
        unit = _unit(next(iter(curves)))[1]
        ax.set(xlabel="epoch", ylabel=re.sub(r"_?bytes$", "", quantity) + (f" ({unit})" if unit else ""))
        ax.set_title(quantity, fontsize=9)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def epoch_series_png(
    history: list[dict[str, float]],
    names: Iterable[str],
    path: Path,
    best_epoch: int | None = None,
    title: str | None = None,
) -> Path | None:
    fig = epoch_series_figure(history, names, best_epoch, title)
    return None if fig is None else save_figure(fig, path)


def extra_families(history: list[dict[str, float]]) -> dict[str, list[str]]:
    """Series outside the standard figures, by family (the first dotted part): {"memory": [...], ...}."""
    families: dict[str, list[str]] = {}
    for name in dict.fromkeys(k for h in history for k in h):
        family = name.split(".", 1)[0]
        if family not in STANDARD_FAMILIES and has_values(history, name):
            families.setdefault(family, []).append(name)
    return families


def extra_epoch_figures(
    history: list[dict[str, float]],
    out_dir: Path,
    best_epoch: int | None = None,
    title: str | None = None,
    skip: frozenset[str] = frozenset(),
) -> dict[str, Path]:
    """`<family>.png` in `out_dir` for each family of extra per-epoch series (e.g. mem.png for mem.train.rss_mb,
    adaptation.png for adaptation.value), by file name; not for the families in
    `skip` (drawn by a figure of their own)."""
    paths = {}
    for family, names in extra_families(history).items():
        if family in skip:
            continue
        path = epoch_series_png(
            history, names, Path(out_dir) / f"{family}.png", best_epoch, family + (f": {title}" if title else "")
        )
        if path is not None:
            paths[path.name] = path
    return paths
