"""The project's figures, drawn with scales, limits and markers chosen from the data (see `scales`).

- `scales`: log / symlog / linear axes, outliers left off the chart and marked, colour scales;
- `styles`: the markers of finished / pruned / failed trials and runs, the trained-configuration star;
- `run`: the figures of one run (confusion matrix, learning curves, NFE, any other per-epoch series);
- `runs`: a metric across runs (`runs plot`, studies);
- `reevaluation`: test accuracy of a trained ODEnet against the test solver's steps or tolerance.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

from odeflow.files import save_atomic

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Write `fig` as a PNG (creating folders) and close it; every figure of the project goes through here."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fig.get_layout_engine() is None:  # a figure may have set its own (e.g. tight with room for a note)
        fig.tight_layout()
    save_atomic(path, lambda f: fig.savefig(f, dpi=100, format=path.suffix.lstrip(".") or "png"))
    plt.close(fig)
    return path


from odeflow.plots.run import (  # noqa: E402
    confusion_matrix_png,
    epoch_series_png,
    extra_epoch_figures,
    learning_curves_png,
    nfe_png,
)
from odeflow.plots.runs import metric_across_runs_png  # noqa: E402

__all__ = [
    "confusion_matrix_png",
    "epoch_series_png",
    "extra_epoch_figures",
    "learning_curves_png",
    "metric_across_runs_png",
    "nfe_png",
    "plt",
    "save_figure",
]
