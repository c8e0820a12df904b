"""Fixed cost per trial: what a run costs besides its training epochs, tracked to the file store with all
its outputs (checkpoint, evaluation report, figures), in a warm process (imports done), as a sweep's
trials run in one process or one worker.

A trial here trains one epoch of a tiny ODEnet on 64 samples (milliseconds), so its wall time is almost all
fixed cost: setup, data, model, Sacred's start (sources, git state, dependencies), evaluation, outputs.
Printed per run: wall time, training time (the epochs' own `epoch.time`), their ratio, and the fixed cost
(wall - training), medians over REPEATS runs. Figures a worker draws after the trial's result are waited
for after each trial, outside its time, and that time is printed too (they are written, off its path).
Usage: .venv/bin/python bench/trial_fixed_cost.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from runner.experiment.app import run_experiment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REPEATS = 7
TRIAL = [
    "data=spheres",
    "data.n_train=64",
    "data.n_test=64",
    "model=odenet_simple",
    "model.channels=4",
    "solver=euler",
    "solver.step_size=0.5",
    "train.max_epochs=1",
    "train.progress=false",
    "train.device=cpu",
    "tracking=file",
]


def one_trial(runs: Path, index: int) -> tuple[float, float]:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"paths.runs={runs}", *TRIAL])
    start = time.perf_counter()
    choices = {"data": "spheres", "model": "odenet_simple"}
    summary = run_experiment(cfg, runs / "trials" / str(index), choices, meta={"sweep_id": "bench", "trial": index})
    wall = time.perf_counter() - start
    return wall, summary["epoch_time"] * summary["epochs"]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        one_trial(runs, 0)  # warm: imports, first-use caches
        walls, trainings, figure_waits = [], [], []
        for index in range(1, REPEATS + 1):
            wall, training = one_trial(runs, index)
            walls.append(wall)
            trainings.append(training)
            figure_waits.append(wait_for_figures())  # outside the trial's time, and not overlapping the next
        figures_wait = statistics.median(figure_waits)
        missing = [
            p
            for i in range(1, REPEATS + 1)
            for p in ("learning_curves.png", "nfe.png", "confusion_matrix.png")
            if not (runs / "trials" / str(i) / p).exists()
        ]
    wall, training = statistics.median(walls), statistics.median(trainings)
    print(f"fixed cost per trial: tiny ODEnet, 1 epoch on 64 samples, file store, all outputs; medians of {REPEATS}")
    print(f"  wall per trial        {wall:.3f} s")
    print(f"  training per trial    {training:.3f} s")
    print(f"  wall / training       {wall / training:.1f}x")
    print(f"  fixed cost per trial  {wall - training:.3f} s (target <= 0.2 s)")
    print(f"  figures drawn after the trial returned: {figures_wait:.3f} s per trial; missing: {missing or 'none'}")


def wait_for_figures() -> float:
    """Seconds until every figure of the runs is on disk (0 when they are drawn in the run itself)."""
    try:
        from runner.experiment.figures import wait_for_figures as wait
    except ImportError:
        return 0.0
    start = time.perf_counter()
    wait()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
