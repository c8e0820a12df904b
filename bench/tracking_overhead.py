"""Tracking overhead: the same training run with tracking off, to the file store, and to a real MongoDB-wire
server (SecantusDB in its own process, fsync on every commit, as `make dashboard` runs it).

Two parts, one run: (1) the fixed cost per run: whole 2-epoch runs with each backend, interleaved so
drift on the machine hits them alike; (2) the cost per epoch: what tracking does each epoch, timed
directly over many calls, against the epoch's own time. For the file store that is logging the epoch's
metrics into a live Sacred run; for MongoDB it is also the database writes of one epoch (the metric
updates and the run document save) through the runner's observer, an upper bound: Sacred batches them
per heartbeat. Timing whole runs of different lengths and taking the slope drowns a sub-millisecond cost
in the run-to-run noise of this machine (about 5%). Usage: .venv/bin/python bench/tracking_overhead.py
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pymongo
from hydra import compose, initialize_config_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dashboard.server import DatabaseServer  # noqa: E402
from runner.experiment.app import run_experiment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EPOCHS, REPEATS, LOG_CALLS = 2, 3, 2000
BASE = [
    "experiment=quickstart",
    "model.channels=16",
    "train.patience=100",
    "train.progress=false",
    "train.device=cpu",
    f"train.max_epochs={EPOCHS}",
]
BACKENDS = {"none": ["tracking=none"], "file": ["tracking=file"], "mongo": ["tracking=mongo", "tracking.db_name=bench"]}
EPOCH_METRICS = {
    "train.loss": 0.1,
    "train.acc": 0.9,
    "val.loss": 0.1,
    "val.acc": 0.9,
    "val.nfe.forward": 20.0,
    "nfe.forward": 20.0,
    "nfe.backward": 0.0,
    "epoch.time": 1.0,
}


def per_epoch_logging_seconds(store) -> float:
    """Mean time to log one epoch's metrics into a live Sacred run of `store`."""
    from runner.tracking.stores import run_tracked

    def body(run):
        start = time.perf_counter()
        for step in range(LOG_CALLS):
            run.log_metrics(EPOCH_METRICS, step)
        return (time.perf_counter() - start) / LOG_CALLS

    return run_tracked("bench", {"seed": 0}, store, body, command="train")[1]


def database_write_seconds(url: str) -> float:
    """Mean time of one epoch's database writes (metrics and run document) through the runner's observer."""
    import datetime as dt

    from runner.tracking.mongo import open_observer

    observer = open_observer(pymongo.MongoClient(url), "bench_writes")
    now = dt.datetime.now(dt.timezone.utc)
    observer.started_event(
        {"name": "bench", "sources": [], "base_dir": str(ROOT)},
        "train",
        {},
        now,
        {"seed": 0},
        {"run_uid": "bench"},
        None,
    )
    info: dict = {}
    start = time.perf_counter()
    for step in range(LOG_CALLS // 10):
        observer.log_metrics(
            {k: {"steps": [step], "values": [v], "timestamps": [now]} for k, v in EPOCH_METRICS.items()}, info
        )
        observer.save()
    return (time.perf_counter() - start) / (LOG_CALLS // 10)


def main() -> None:
    import runner.tracking.stores

    walls: dict[str, list[float]] = {b: [] for b in BACKENDS}
    epoch_times: list[float] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        initialize_config_dir(str(ROOT / "conf"), version_base="1.3"),
        DatabaseServer(Path(tmp) / "db", sync_on_commit=True) as server,
    ):
        os.environ["MONGO_URL"] = server.url
        for repeat in range(REPEATS + 1):  # the first round warms caches up and is not counted
            for backend, overrides in BACKENDS.items():
                cfg = compose("config", overrides=[*BASE, *overrides, f"paths.runs={tmp}/runs"])
                start = time.perf_counter()
                summary = run_experiment(
                    cfg, Path(tmp) / f"out-{backend}-{repeat}", {"model": "odenet_simple", "data": "digits"}
                )
                if repeat:
                    walls[backend].append(time.perf_counter() - start)
                    epoch_times.append(summary["epoch_time"])
        stores = {
            "file": runner.tracking.stores.FileStore(f"{tmp}/runs/log-bench"),
            "mongo": runner.tracking.stores.MongoStore(
                url=server.url, db_name="bench", journal_dir=f"{tmp}/runs/log-journal"
            ),
        }
        logging_cost = {name: per_epoch_logging_seconds(store) for name, store in stores.items()}
        write_cost = database_write_seconds(server.url)
    epoch = statistics.median(epoch_times)
    base = statistics.median(walls["none"])
    print(f"\ntracking overhead, quickstart ODEnet (16+2 ch) on digits ({epoch:.2f} s/epoch), medians of {REPEATS}")
    print(
        f"{'backend':<8} {'per-epoch cost s':>17} {'epoch ratio vs none':>20} {'fixed cost s/run':>17} "
        f"{f'{EPOCHS}-epoch run ratio':>19}"
    )
    for backend in BACKENDS:
        cost = logging_cost.get(backend, 0.0) + (write_cost if backend == "mongo" else 0.0)
        wall = statistics.median(walls[backend])
        print(f"{backend:<8} {cost:>17.6f} {(epoch + cost) / epoch:>20.4f} {wall - base:>17.2f} {wall / base:>19.3f}")
    print(
        f"(mongo per epoch: {logging_cost['mongo'] * 1e6:.0f} us logging + {write_cost * 1e3:.2f} ms database writes "
        "of one\n"
        " epoch, an upper bound since Sacred sends them per heartbeat. fixed cost: Sacred start-up, source and git\n"
        " capture, copying artifacts into the store (GridFS for mongo); 'none' still writes its checkpoint and plots.)"
    )


if __name__ == "__main__":
    main()
