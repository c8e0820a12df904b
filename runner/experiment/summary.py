"""Console summary tables of finished runs."""

from __future__ import annotations

from typing import Any

from odeflow.tables import text_table

COLUMNS = [
    ("run_id", "run", "{}"),
    ("model", "model", "{}"),
    ("dataset", "data", "{}"),
    ("solver", "solver", "{}"),
    ("precision", "precision", "{}"),
    ("test_acc", "test acc", "{:.4f}"),
    ("test_loss", "test loss", "{:.4f}"),
    ("best_epoch", "best ep", "{}"),
    ("epochs", "epochs", "{}"),
    ("params_total", "params", "{:,}"),
    ("params_not_in_fc", "not in FC", "{:,}"),
    ("fnfe", "FNFE", "{:.1f}"),
    ("bnfe", "BNFE", "{:.1f}"),
    ("epoch_time", "s/epoch", "{:.2f}"),
    ("adjoint_grad_err", "adj. grad err", "{:.2g}"),
    ("train_rss_mb", "train RSS MB", "{:.0f}"),
    ("train_cuda_mb", "train CUDA MB", "{:.0f}"),
    ("train_cuda_added_mb", "train CUDA added MB", "{:.0f}"),
    ("saved_mb", "saved MB", "{:.1f}"),
    ("adapted", "adapted h/tol", "{:.4g}"),
    ("device", "device", "{}"),
]


# shown only where a run has them (runs on a GPU)
CUDA_COLUMNS = frozenset({"train_cuda_mb", "train_cuda_added_mb"})


def format_summary(rows: list[dict[str, Any]]) -> str:
    """One row per run: what ran and its headline numbers."""
    columns = [c for c in COLUMNS if c[0] not in CUDA_COLUMNS or any(r.get(c[0]) is not None for r in rows)]
    return text_table(
        [{key: r.get(key) for key, _, _ in columns} for r in rows],
        {key: fmt for key, _, fmt in columns},
        {key: header for key, header, _ in columns},
    )
