"""One look for the outcome of a trial or run in every figure: finished, pruned, failed, still running."""

from __future__ import annotations

from typing import Any

STATUS_STYLES: dict[str, dict[str, Any]] = {
    "ok": {"marker": "o", "color": "tab:blue", "label": "finished"},
    "pruned": {"marker": "v", "color": "tab:orange", "label": "pruned (value when stopped)"},
    "failed": {"marker": "X", "color": "tab:red", "label": "failed"},
    "running": {"marker": "s", "color": "tab:gray", "label": "running"},
}
# Sacred's run statuses as trial outcomes (a pruned run is COMPLETED with info.pruned set).
RUN_STATUS = {
    "COMPLETED": "ok",
    "FAILED": "failed",
    "INTERRUPTED": "failed",
    "TIMEOUT": "failed",
    "RUNNING": "running",
    "QUEUED": "running",
}
TRAINED_STYLE = {"marker": "*", "s": 260, "color": "black", "zorder": 6}  # the configuration a model was trained with
BEST_EPOCH_STYLE = {"color": "tab:green", "linestyle": "--", "linewidth": 1.2}


def run_outcome(status: str | None, pruned: bool = False) -> str:
    """The STATUS_STYLES key of a logged run."""
    return "pruned" if pruned else RUN_STATUS.get(str(status).upper(), "running")
