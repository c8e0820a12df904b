"""Console summary tables of finished runs."""
from __future__ import annotations

from typing import Any

COLUMNS = [
    ("run_id", "run", "{}"), ("model", "model", "{}"), ("dataset", "data", "{}"), ("solver", "solver", "{}"),
    ("test_acc", "test acc", "{:.4f}"), ("test_loss", "test loss", "{:.4f}"), ("best_epoch", "best ep", "{}"),
    ("epochs", "epochs", "{}"), ("params_total", "params", "{:,}"), ("params_not_in_fc", "not in FC", "{:,}"),
    ("fnfe", "FNFE", "{:.1f}"), ("bnfe", "BNFE", "{:.1f}"), ("epoch_time", "s/epoch", "{:.2f}"),
]


def format_summary(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table, one row per run."""
    cells = [[fmt.format(r[key]) if r.get(key) is not None else "-" for key, _, fmt in COLUMNS] for r in rows]
    headers = [h for _, h, _ in COLUMNS]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    line = lambda values: "  ".join(v.rjust(w) for v, w in zip(values, widths))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(c) for c in cells)])
