"""The parameter-matched comparison report (thesis table 8.1) over the runs in a store."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from odeflow.files import write_atomic
from odeflow.plots import plt, save_figure
from odeflow.plots.scales import apply_axis, plan_axis
from odeflow.tables import markdown_table
from runner.tracking.runstore import RunRecord, summary_row


def _mean(record: RunRecord, metric: str) -> float | None:
    values = record.metrics.get(metric, {}).get("values")
    return sum(values) / len(values) if values else None


def comparison_rows(records: list[RunRecord]) -> pd.DataFrame:
    """One row per (dataset, model, solver, gradient method): the latest completed training run of each."""
    rows = []
    for r in records:
        if r.status != "COMPLETED" or "parameters" not in r.info:
            continue  # failed runs, re-evaluations
        summary = summary_row(r)
        is_ode = r.info.get("model_family") == "odenet"
        rows.append(
            {
                "run": r.id,
                "dataset": summary["dataset"],
                "model": summary["model"],
                "solver": summary["solver"] or "-",
                "params": r.info["parameters"]["total"],
                "params_not_in_fc": r.info["parameters"]["not_in_fc"],
                "test_acc": summary["test_acc"],
                "test_loss": summary["test_loss"],
                "epoch_time_s": _mean(r, "epoch.time"),
                "epochs": summary["epochs"],
                "fnfe": _mean(r, "nfe.forward") if is_ode else None,
                "bnfe": _mean(r, "nfe.backward") if summary["bnfe"] is not None else None,  # direct: no backward
                # evaluations of f per forward pass: FNFE for ODEnets, residual blocks for ResNets
                "f_evaluations": _mean(r, "nfe.forward") if is_ode else r.info.get("residual_blocks"),
                "adjoint_grad_err": (r.info.get("adjoint_gradient_check") or {}).get("relative_error"),
                "gradient": summary["gradient"] or "-",
                "train_rss_mb": summary["train_rss_mb"],
                "train_cuda_mb": summary["train_cuda_mb"],
                "saved_mb": summary["saved_mb"],
            }
        )
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    return (
        frame.sort_values("run")
        .groupby(["dataset", "model", "solver", "gradient"], as_index=False)
        .last()
        .sort_values(["dataset", "params"])
    )


def write_report(records: list[RunRecord], out_dir: Path) -> dict[str, Path]:
    """comparison.md (a table per dataset), comparison.csv and two PNGs: accuracy vs parameters and vs NFE."""
    frame = comparison_rows(records)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv = out_dir / "comparison.csv"
    write_atomic(csv, frame.to_csv(index=False))
    lines = ["# Parameter-matched comparison (thesis table 8.1)", ""]
    columns = {
        "model": "model",
        "solver": "solver",
        "params": "params",
        "params_not_in_fc": "not in FC",
        "test_acc": "test acc",
        "test_loss": "test loss",
        "epoch_time_s": "s/epoch",
        "fnfe": "FNFE",
        "bnfe": "BNFE",
        "adjoint_grad_err": "adj. grad err",
        "gradient": "gradient",
        "train_rss_mb": "train RSS MB",
        "train_cuda_mb": "train CUDA MB",
        "saved_mb": "saved MB",
        "run": "run",
    }
    formats = {
        "params": "{:,}",
        "params_not_in_fc": "{:,}",
        "test_acc": "{:.4f}",
        "test_loss": "{:.4f}",
        "epoch_time_s": "{:.2f}",
        "fnfe": "{:.1f}",
        "bnfe": "{:.1f}",
        "adjoint_grad_err": "{:.2g}",
        "train_rss_mb": "{:.0f}",
        "train_cuda_mb": "{:.0f}",
        "saved_mb": "{:.1f}",
    }
    for dataset, group in frame.groupby("dataset") if not frame.empty else []:
        lines += [f"## {dataset}", "", markdown_table(group[list(columns)], formats, columns), ""]
    if frame.empty:
        lines.append("(no completed training runs in this store)")
    md = out_dir / "comparison.md"
    write_atomic(md, "\n".join(lines) + "\n")
    paths = {"comparison.md": md, "comparison.csv": csv}
    for x, label, name in [
        ("params", "parameters", "accuracy_vs_parameters.png"),
        (
            "f_evaluations",
            "evaluations of f per forward pass (FNFE; residual blocks for ResNets)",
            "accuracy_vs_nfe.png",
        ),
    ]:
        paths[name] = save_figure(accuracy_against_figure(frame, x, label), out_dir / name)
    return paths


def accuracy_against_figure(frame: pd.DataFrame, x: str, label: str) -> plt.Figure:
    """Test accuracy of each (dataset, model, solver) row against column `x`; ODEnets as circles, ResNets as
    squares; the x axis by the plotting layer's rules (log when it spans decades)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if not frame.empty:
        apply_axis(ax, plan_axis(frame[x], clip=False), "x")
        apply_axis(ax, plan_axis(frame["test_acc"], clip=False))
    for (dataset, model), group in frame.groupby(["dataset", "model"]) if not frame.empty else []:
        marker = "o" if group["fnfe"].notna().any() else "s"
        ax.scatter(group[x], group["test_acc"], label=f"{dataset}: {model}", s=40, marker=marker)
    runs = len(frame)
    datasets = ", ".join(sorted(frame["dataset"].unique())) if not frame.empty else "no runs"
    ax.set(xlabel=label, ylabel="test accuracy")
    ax.set_title(
        f"test accuracy vs {label.split(' (')[0]}: {runs} run{'s' * (runs != 1)} on {datasets} "
        "(circles: ODEnets, squares: ResNets)",
        fontsize=9,
    )
    if not frame.empty:
        ax.legend(fontsize=8)
    return fig
