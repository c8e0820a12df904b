"""Pruning: the same 24-trial TPE sweep of the digits ODEnet (search=digits_odenet: dopri5, up to 15 epochs)
without pruning (seeds 0 and 1: the run-to-run spread of the best objective) and with the median rule
(seed 0). Prints wall times, their ratio and each sweep's best validation loss, from one run.
Usage: .venv/bin/python bench/sweep_pruning.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = {
    "unpruned, seed 0": ["hydra.sweeper.pruner.kind=none", "hydra.sweeper.seed=0"],
    "unpruned, seed 1": ["hydra.sweeper.pruner.kind=none", "hydra.sweeper.seed=1"],
    "median pruning, seed 0": ["hydra.sweeper.pruner.kind=median", "hydra.sweeper.seed=0"],
}


def trained_epochs(job_dir: Path) -> int:
    result = job_dir / "result.json"
    return json.loads(result.read_text())["epochs"] if result.exists() else 0


def main() -> None:
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in SWEEPS.items():
            sweep_dir = Path(tmp) / f"sweep{len(rows)}"
            print(f"--- {name}", flush=True)
            start = time.perf_counter()
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "runner",
                    "-m",
                    "search=digits_odenet",
                    f"hydra.sweep.dir={sweep_dir}",
                    "hydra.sweeper.report=false",
                    *overrides,
                ],
                cwd=ROOT,
                env={**os.environ, "ODEFLOW_RUNS": f"{tmp}/runs"},
                capture_output=True,
                text=True,
            )
            seconds = time.perf_counter() - start
            if proc.returncode != 0:
                sys.exit(f"{name} sweep failed:\n{proc.stderr[-2000:]}")
            out = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
            epochs = sum(trained_epochs(sweep_dir / str(t["job"])) for t in out["trials"])
            rows[name] = (seconds, out["best_value"], out["n_pruned"], epochs)
            print(
                f"{seconds:.0f} s, best {out['best_value']:.4f}, {out['n_pruned']} pruned, {epochs} epochs", flush=True
            )
    base_time = rows["unpruned, seed 0"][0]
    spread = abs(rows["unpruned, seed 0"][1] - rows["unpruned, seed 1"][1])
    print(
        "\npruning: 24-trial TPE sweep of the digits ODEnet (16+2 ch, dopri5 1e-3, up to 15 epochs, patience 3), one "
        "run"
    )
    print(f"  {'sweep':<24} {'wall time':>10} {'x unpruned':>11} {'best val loss':>14} {'pruned':>7} {'epochs':>7}")
    for name, (seconds, best, pruned, epochs) in rows.items():
        print(f"  {name:<24} {seconds:8.0f} s {seconds / base_time:10.2f}x {best:14.4f} {pruned:7d} {epochs:7d}")
    pruned_best = rows["median pruning, seed 0"][1]
    print(
        f"  run-to-run spread of the unpruned best (seeds 0, 1): {spread:.4f}; pruned best - unpruned seed-0 best: "
        f"{pruned_best - rows['unpruned, seed 0'][1]:+.4f} "
        f"({'within' if abs(pruned_best - rows['unpruned, seed 0'][1]) <= spread else 'outside'} the spread)"
    )


if __name__ == "__main__":
    main()
