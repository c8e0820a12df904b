"""PNG figures of a run (confusion matrix, learning curves, NFE per epoch) and of a metric across runs."""

from __future__ import annotations

from pathlib import Path

import matplotlib

from odeflow.files import save_atomic

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def confusion_matrix_png(matrix: list[list[int]], class_names: list[str], path: Path) -> Path:
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
    ax.set_title("test confusion matrix")
    return save_figure(fig, path)


def learning_curves_png(history: list[dict[str, float]], path: Path) -> Path:
    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        loss_ax.plot(epochs, [h[f"{split}.loss"] for h in history], marker="o", label=split)
        acc_ax.plot(epochs, [h[f"{split}.acc"] for h in history], marker="o", label=split)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    loss_ax.legend()
    acc_ax.legend()
    return save_figure(fig, path)


def nfe_png(history: list[dict[str, float]], path: Path) -> Path:
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [h["nfe.forward"] for h in history], marker="o", label="forward (FNFE)")
    ax.plot(epochs, [h["nfe.backward"] for h in history], marker="o", label="backward (BNFE)")
    ax.set(xlabel="epoch", ylabel="function evaluations per batch", title="NFE per epoch")
    ax.legend()
    return save_figure(fig, path)


def metric_across_runs_png(series: dict[str, tuple[list[float], list[float]]], metric: str, path: Path) -> Path:
    """One line per run: label -> (steps, values)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, (steps, values) in series.items():
        ax.plot(steps, values, marker="o", markersize=3, label=label)
    ax.set(xlabel="epoch", ylabel=metric, title=metric)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Write `fig` as a PNG (creating folders) and close it; every figure of the project goes through here."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    save_atomic(path, lambda f: fig.savefig(f, dpi=100, format=path.suffix.lstrip(".") or "png"))
    plt.close(fig)
    return path
