"""Fixed cost per trial: what a run costs besides its training epochs, tracked to the file store with all
its outputs (checkpoint, evaluation report, figures), in a warm process (imports done), as a sweep's
trials run in one process or one worker.

A trial here trains one epoch of a tiny ODEnet on 64 samples (milliseconds), so its wall time is almost all
fixed cost: setup, data, model, Sacred's start (sources, git state, dependencies), evaluation, outputs.
Printed per run: wall time, training time (the epochs' own `epoch.time`), their ratio, and the fixed cost
(wall - training), medians over REPEATS runs. Figures a worker draws after the trial's result are waited
for after each trial, outside its time, and that time is printed too (they are written, off its path).
With `--before REV` it first measures the code of git revision REV the same way (extracted into a
temporary repository of its own, committed, so Sacred's git lookups are those of a checkout), then this
code, and prints both and their ratio.
Usage: .venv/bin/python bench/trial_fixed_cost.py [--before REV]
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
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


def measure() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        one_trial(runs, 0)  # warm: imports, first-use caches
        walls, trainings, figure_waits = [], [], []
        for index in range(1, REPEATS + 1):
            wall, training = one_trial(runs, index)
            walls.append(wall)
            trainings.append(training)
            figure_waits.append(wait_for_figures())  # outside the trial's time, and not overlapping the next
        missing = [
            p
            for i in range(1, REPEATS + 1)
            for p in ("learning_curves.png", "nfe.png", "confusion_matrix.png")
            if not (runs / "trials" / str(i) / p).exists()
        ]
    wall, training = statistics.median(walls), statistics.median(trainings)
    return {"wall": wall, "training": training, "figures": statistics.median(figure_waits), "missing": len(missing)}


def measure_revision(revision: str) -> dict[str, float]:
    """The same measurement on the code of `revision`, in a subprocess."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "code"
        tree.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
        (tree / "bench").mkdir(exist_ok=True)
        shutil.copy(__file__, tree / "bench" / Path(__file__).name)
        for command in (
            ["init", "-q"],
            ["add", "-A"],
            ["-c", "user.name=bench", "-c", "user.email=b@b", "commit", "-qm", revision],
        ):
            subprocess.run(["git", "-C", str(tree), *command], check=True, capture_output=True)
        done = subprocess.run(
            [sys.executable, str(tree / "bench" / Path(__file__).name), "--json"], capture_output=True, text=True
        )
        if done.returncode != 0:
            sys.exit(f"measuring {revision} failed:\n{done.stderr[-2000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    if sys.argv[1:] == ["--json"]:
        print(json.dumps(measure()))
        return
    rows = {}
    if sys.argv[1:2] == ["--before"]:
        rows[f"before ({sys.argv[2]})"] = measure_revision(sys.argv[2])
    rows["this code"] = measure()
    print(f"fixed cost per trial: tiny ODEnet, 1 epoch on 64 samples, file store, all outputs; medians of {REPEATS}")
    print(
        f"  {'code':<22} {'wall s':>7} {'training s':>11} {'wall/training':>14} {'fixed s':>8} {'figures after s':>16}"
    )
    for name, row in rows.items():
        print(
            f"  {name:<22} {row['wall']:7.3f} {row['training']:11.3f} {row['wall'] / row['training']:13.1f}x "
            f"{row['wall'] - row['training']:8.3f} {row['figures']:16.3f}"
        )
    if len(rows) == 2:
        before, after = rows.values()
        ratio = (after["wall"] - after["training"]) / (before["wall"] - before["training"])
        print(f"  fixed cost after / before: {ratio:.2f}x; figures missing: {int(after['missing'])}")


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
