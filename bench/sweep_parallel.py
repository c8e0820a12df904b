"""Sweep wall time: 2 trials of the digits ODEnet (batches of 2) with the basic launcher (serial, torch on both
cores) and with joblib running the 2 trials of each batch in parallel (one core each). Prints both times
and the ratio from one run.
Usage: .venv/bin/python bench/sweep_parallel.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRIALS = [
    "hydra/sweeper=hyperopt",
    "hydra.sweeper.n_trials=2",
    "hydra.sweeper.n_jobs=2",
    "data=digits",
    "model.stride=1",
    "model.channels=32",
    "train.max_epochs=3",
    "train.progress=false",
    "train.lr=tag(log,interval(1e-3,1e-2))",
]
LAUNCHERS = {
    "serial (basic)": [],
    "joblib, 2 workers": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "train.num_threads=1"],
}


def main() -> None:
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in LAUNCHERS.items():
            sweep_dir = Path(tmp) / ("sweep" + str(len(times)))
            start = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "runner", "-m", *TRIALS, f"hydra.sweep.dir={sweep_dir}", *overrides],
                cwd=ROOT,
                env={**os.environ, "ODEFLOW_RUNS": f"{tmp}/runs"},
                capture_output=True,
                text=True,
            )
            times[name] = time.perf_counter() - start
            if proc.returncode != 0:
                sys.exit(f"{name} sweep failed:\n{proc.stderr[-2000:]}")
    serial = times["serial (basic)"]
    print("\nsweep wall time, 2 trials of the digits ODEnet (32+2 ch, dopri5, 3 epochs) in one batch, one run")
    for name, seconds in times.items():
        print(f"  {name:<20} {seconds:7.1f} s   speed-up vs serial {serial / seconds:.2f}x")


if __name__ == "__main__":
    main()
