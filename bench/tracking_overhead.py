"""Tracking overhead: the same training run with tracking off, to the file store, and to MongoDB (mongomock).

Prints the wall time per run and per epoch and the ratios tracked / untracked, measured in one run with
the backends interleaved so drift on the machine hits them alike. Usage: .venv/bin/python bench/tracking_overhead.py
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import mongomock
import mongomock.gridfs
from hydra import compose, initialize_config_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from runner.app import run_experiment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EPOCHS, REPEATS = 5, 3
BASE = ["experiment=quickstart", "model.channels=16", f"train.max_epochs={EPOCHS}", "train.patience=100",
        "train.progress=false", "train.device=cpu"]
BACKENDS = {"none": ["tracking=none"], "file": ["tracking=file"], "mongo": ["tracking=mongo", "tracking.db_name=bench"]}


def main() -> None:
    mongomock.gridfs.enable_gridfs_integration()
    client = mongomock.MongoClient()
    import runner.tracking

    runner.tracking.MongoStore.client = lambda self: client  # in-process database: no server here
    walls: dict[str, list[float]] = {b: [] for b in BACKENDS}
    epochs: dict[str, list[float]] = {b: [] for b in BACKENDS}
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        for repeat in range(REPEATS + 1):  # the first round warms caches up and is not counted
            for backend, overrides in BACKENDS.items():
                cfg = compose("config", overrides=[*BASE, *overrides, f"paths.runs={tmp}/runs"])
                out = Path(tmp) / f"out-{backend}-{repeat}"
                out.mkdir()
                start = time.perf_counter()
                summary = run_experiment(cfg, out, {"model": "odenet_simple", "data": "digits"})
                if repeat:
                    walls[backend].append(time.perf_counter() - start)
                    epochs[backend].append(summary["epoch_time"])
    base_wall = statistics.median(walls["none"])
    print(f"\ntracking overhead, quickstart ODEnet (16+2 ch) on digits, {EPOCHS} epochs, median of {REPEATS}")
    print(f"{'backend':<8} {'run wall s':>10} {'per epoch s':>12} {'ratio vs none':>14} {'extra s/epoch':>14}")
    for backend in BACKENDS:
        wall = statistics.median(walls[backend])
        print(f"{backend:<8} {wall:>10.2f} {wall / EPOCHS:>12.3f} {wall / base_wall:>14.3f} {(wall - base_wall) / EPOCHS:>14.3f}")
    print("(run wall includes the fixed per-run cost: Sacred start-up, source capture, checkpoint and plots)")


if __name__ == "__main__":
    main()
