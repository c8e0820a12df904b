"""The run browser at scale: synthetic stores of N runs shaped like a real one, each command timed, on the file
store (through its index) and on MongoDB (SecantusDB, the no-Docker dashboard's server).

    .venv/bin/python bench/run_store.py --template runs/store/1 --sizes 1000 20000 [--keep DIR] [--mongo-only]

The template is one real run folder (`python -m runner experiment=quickstart train.max_epochs=3` makes one).
Each synthetic run copies its run.json, config.json and info.json and varies what a sweep varies (solver,
learning rate, model, status, start time, test accuracy); metrics.json has every metric the template logged,
for 30 epochs. Each command runs as a user runs it (`python -m runner runs ...`, a process of its own): its
best wall time of three, that time less the same command's on a store of one run (its start-up), and its peak
memory (RSS). Logging one epoch's metrics is timed into a one-run and into the full store or database. Printed
as tables with the largest size's ratio to the smallest (whole commands).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 30
SOLVERS = ("euler", "rk4", "dopri5", "midpoint")
MODELS = ("odenet_simple", "resnet_simple_small", "odenet_complex")
QUERY = "metrics.val.acc > 0.9 and config.solver.method = 'rk4' and config.train.lr < 1e-3"


def synthetic_run(template: dict, run_id: int, rng: random.Random) -> dict[str, dict]:
    """The four JSON files of one run, varied from the template's."""
    run = json.loads(json.dumps(template["run.json"]))
    config = json.loads(json.dumps(template["config.json"]))
    info = json.loads(json.dumps(template["info.json"]))
    solver, model = rng.choice(SOLVERS), rng.choice(MODELS)
    config["solver"]["method"] = solver
    config["train"]["lr"] = 10 ** rng.uniform(-4, -1)
    config["seed"] = run_id
    start = 1_750_000_000 + run_id * 60
    run["start_time"] = time.strftime("%Y-%m-%dT%H:%M:%S.000000", time.gmtime(start))
    run["stop_time"] = time.strftime("%Y-%m-%dT%H:%M:%S.000000", time.gmtime(start + 50))
    run["heartbeat"] = run["stop_time"]
    run["status"] = "COMPLETED" if rng.random() < 0.9 else "FAILED"
    run["meta"]["choices"] = {**run["meta"].get("choices", {}), "model": model, "solver": solver}
    info["choices"] = {**info.get("choices", {}), "model": model, "solver": solver}
    quality = rng.random()
    metrics = {}
    for name, series in template["metrics.json"].items():
        base = series["values"][-1] if series["values"] else 1.0
        values = []
        for epoch in range(EPOCHS):
            progress = (epoch + 1) / EPOCHS
            if name.endswith(".acc"):
                values.append(min(1.0, 0.5 + 0.5 * quality * progress + rng.gauss(0, 0.01)))
            elif name.endswith(".loss"):
                values.append(max(1e-4, (1 - quality) * 2 / (1 + 5 * progress) + rng.gauss(0, 0.01)))
            else:
                values.append(base * (1 + rng.gauss(0, 0.05)))
        metrics[name] = {
            "steps": list(range(1, EPOCHS + 1)),
            "timestamps": [run["start_time"]] * EPOCHS,
            "values": values,
        }
    info.setdefault("test", {})["test.acc"] = metrics.get("val.acc", {"values": [quality]})["values"][-1]
    run["result"] = metrics.get("val.loss", {"values": [None]})["values"][-1]
    return {"run.json": run, "config.json": config, "info.json": info, "metrics.json": metrics}


def make_store(template_dir: Path, store: Path, size: int, seed: int = 0) -> None:
    """A store of `size` runs (ids 1..size); an existing one of that size is kept."""
    if (store / str(size) / "run.json").exists() and not (store / str(size + 1)).exists():
        return
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)
    template = {
        name: json.loads((template_dir / name).read_text())
        for name in ("run.json", "config.json", "info.json", "metrics.json")
    }
    template["run.json"]["artifacts"] = []  # the listing never opens them; a copy of each would be 0.5 MB a run
    rng = random.Random(seed)
    for run_id in range(1, size + 1):
        folder = store / str(run_id)
        folder.mkdir()
        for name, content in synthetic_run(template, run_id, rng).items():
            (folder / name).write_text(json.dumps(content, indent=2, sort_keys=True))


def _peak_kb(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM): its own, from its exec on."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def timed(args: list[str], runs_dir: Path, env: dict[str, str] | None = None) -> tuple[float, float, str, float]:
    """(seconds, peak RSS in MB, stdout, CPU seconds) of `python -m runner <args>` in a process of its own. The CPU
    time counts the process and the workers it waited for (wait4's usage), which a shared machine's load does not
    inflate the way it does the wall time. The peak is read from /proc while the command runs: wait4's ru_maxrss
    keeps the high-water mark of the process the command was forked from (this benchmark, which holds a loaded
    store's runs while it fills MongoDB) across the exec."""
    env = {**os.environ, "ODEFLOW_RUNS": str(runs_dir), "PYTHONPATH": str(ROOT), **(env or {})}
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err
        )
        chunks: list[bytes] = []
        reader = threading.Thread(target=lambda: chunks.append(proc.stdout.read()))
        reader.start()
        peak_kb = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            try:
                peak_kb = max(peak_kb, _peak_kb(proc.pid))
            except (OSError, StopIteration):  # between its exit and the reaping
                pass
            time.sleep(0.01)
        seconds = time.perf_counter() - started
        reader.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"runner {' '.join(args)} failed: {err.read().decode()[-2000:]}")
    return seconds, peak_kb / 1024, b"".join(chunks).decode(), usage.ru_utime + usage.ru_stime


def load_mongo(client, db_name: str, store: Path, size: int) -> None:
    """The store's runs as a current observer writes them: run documents with their metric summaries, and
    every per-epoch series in Sacred's metrics collection. A database already holding `size` runs is kept."""
    import datetime as dt

    sys.path.insert(0, str(ROOT))
    from runner.tracking.index import metric_summaries
    from runner.tracking.mongo import ensure_indexes

    db = client[db_name]
    if db["runs"].estimated_document_count() == size:
        ensure_indexes(db)  # what this version's observer adds when it opens an older database
        return
    client.drop_database(db_name)
    ensure_indexes(db)  # as the observer and the dashboard's copy: the indexes first
    for first in range(1, size + 1, 1000):
        runs, series = [], []
        for run_id in range(first, min(size, first + 999) + 1):
            folder = store / str(run_id)
            run, config, info, metrics = (
                json.loads((folder / n).read_text()) for n in ("run.json", "config.json", "info.json", "metrics.json")
            )
            run.update(_id=run_id, config=config, info=info)
            for key in ("start_time", "stop_time", "heartbeat"):
                run[key] = dt.datetime.fromisoformat(run[key])
            run["metric_summary"] = {k.replace(".", "__"): v for k, v in metric_summaries(metrics).items()}
            runs.append(run)
            series += [
                {"run_id": run_id, "name": n, "steps": m["steps"], "values": m["values"]} for n, m in metrics.items()
            ]
        db["runs"].insert_many(runs)
        db["metrics"].insert_many(series)


def mongo_log_epoch_seconds(client, db_name: str, names: list[str]) -> float:
    """Mean time to log one epoch's metrics the way Sacred's MongoObserver does (an upsert per metric)."""
    metrics = client[db_name]["metrics"]
    run_id = 10**9
    started = time.perf_counter()
    for epoch in range(1, EPOCHS + 1):
        for name in names:
            push = {"steps": {"$each": [epoch]}, "values": {"$each": [0.5]}, "timestamps": {"$each": [None]}}
            metrics.update_one({"run_id": run_id, "name": name}, {"$push": push}, upsert=True)
    seconds = (time.perf_counter() - started) / EPOCHS
    metrics.delete_many({"run_id": run_id})
    return seconds


def log_epoch_seconds(store: Path) -> tuple[float, float]:
    """(mean time to log one epoch's metrics, every metric the template logs, into a new run of this store;
    time of the run's start and end events, where the store's index learns of it)."""
    import datetime as dt

    sys.path.insert(0, str(ROOT))
    from runner.tracking.stores import _file_observer

    observer = _file_observer(str(store))
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    ex_info = {"name": "bench", "base_dir": str(ROOT), "sources": [], "dependencies": [], "repositories": []}
    started = time.perf_counter()
    observer.started_event(ex_info, "train", {}, now, {"seed": 0}, {}, None)
    events = time.perf_counter() - started
    names = json.loads((store / "1" / "metrics.json").read_text()).keys()
    started = time.perf_counter()
    for epoch in range(1, EPOCHS + 1):
        observer.log_metrics({n: {"values": [0.5], "steps": [epoch], "timestamps": [now]} for n in names}, {})
    seconds = (time.perf_counter() - started) / EPOCHS
    started = time.perf_counter()
    observer.completed_event(now, 0.5)
    events += time.perf_counter() - started
    shutil.rmtree(observer.dir)
    return seconds, events


def measure(runs_dir: Path, size: int, mongo: tuple[str, str] | None = None) -> dict[str, tuple[float, float]]:
    """Each command's (best seconds of three, peak MB) on a store of `size` runs under runs_dir/store, or on
    MongoDB (url, database name)."""
    words = ["tracking=mongo", f"tracking.db_name={mongo[1]}"] if mongo else []
    env = {"MONGO_URL": mongo[0]} if mongo else None
    middle = str(max(1, size // 2))
    commands = {
        "first page": ["runs", "list"],
        "query, sorted": ["runs", "list", "--where", QUERY, "--sort", "-metrics.val.acc", "--limit", "10"],
        "show": ["runs", "show", middle],
        "count": ["runs", "list", "--where", "status = 'COMPLETED'", "--limit", "1"],
        "export (all)": ["runs", "export", "--out", "OUT"],
    }
    results = {}
    if not mongo:
        seconds, mb, _, cpu = timed(["runs", "reindex"], runs_dir)
        print(f"index build of {size:,} runs: {seconds:.1f} s wall, {cpu:.1f} s CPU", file=sys.stderr, flush=True)
        results["index build"] = (seconds, mb)
    with tempfile.TemporaryDirectory() as out:
        for name, command in commands.items():
            command = [f"{out}/runs.csv" if w == "OUT" else w for w in command] + words
            tries = [timed(command, runs_dir, env)[:2] for _ in range(1 if name.startswith("export") else 3)]
            results[name] = (min(t for t, _ in tries), max(mb for _, mb in tries))
    return results


def print_table(title: str, table: dict[int, dict[str, tuple[float, float]]], startup: dict[str, float]) -> None:
    sizes = list(table)
    print(f"\n{title}\n")
    header = "| command | " + " | ".join(f"{s:,} runs: s (less start-up), peak MB" for s in sizes)
    header += f" | {sizes[-1]:,}/{sizes[0]:,} |" if len(sizes) > 1 else " |"
    print(header)
    print("|---" * (len(sizes) + 1 + (len(sizes) > 1)) + "|")
    for name in table[sizes[0]]:
        cells = [
            f"{table[s][name][0]:.2f} ({table[s][name][0] - startup[name]:.2f}), {table[s][name][1]:.0f}" for s in sizes
        ]
        if len(sizes) > 1:
            cells.append(f"{table[sizes[-1]][name][0] / table[sizes[0]][name][0]:.2f}x")
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--template", type=Path, required=True, help="one real run folder")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 20000])
    parser.add_argument("--keep", type=Path, help="keep the stores here (reused by a later run of the same size)")
    parser.add_argument("--no-mongo", action="store_true", help="the file store only")
    parser.add_argument("--mongo-only", action="store_true", help="MongoDB only (the stores are made to load it)")
    args = parser.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="run_store_"))
    one = base / "n1"  # start-up: the same commands on a store of one run
    make_store(args.template, one / "store", 1)
    if args.mongo_only:
        for size in args.sizes:
            make_store(args.template, base / f"n{size}" / "store", size)
        measure_mongo(args, base, one)
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        return
    startup = {name: t for name, (t, _) in measure(one, 1).items()}
    log_empty, events_empty = log_epoch_seconds(one / "store")
    table: dict[int, dict[str, tuple[float, float]]] = {}
    log_full: dict[int, tuple[float, float]] = {}
    for size in args.sizes:
        store = base / f"n{size}" / "store"
        started = time.perf_counter()
        make_store(args.template, store, size)
        print(f"store of {size:,} runs ready ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
        table[size] = measure(store.parent, size)
        log_full[size] = log_epoch_seconds(store)
    print_table("File store (with its index)", table, startup)
    log_cells = [f"{log_full[s][0] * 1e3:.2f} ms (one-run store {log_empty * 1e3:.2f} ms)" for s in table]
    print("| log one epoch's metrics | " + " | ".join(log_cells) + (" | |" if len(table) > 1 else " |"))
    event_cells = [f"{log_full[s][1] * 1e3:.1f} ms (one-run store {events_empty * 1e3:.1f} ms)" for s in table]
    print(
        "| a run's start and end events (index updated) | "
        + " | ".join(event_cells)
        + (" | |" if len(table) > 1 else " |")
    )
    small = min(table)
    for large in sorted(table)[1:]:  # the done-when: `runs list` on 20,000 runs within 1.5x of it on 1,000
        ratio = table[large]["first page"][0] / table[small]["first page"][0]
        print(f"\nfirst page, {large:,} runs / {small:,} runs: {ratio:.2f}x (target at 20,000/1,000: 1.5x at most)")
    print(
        "\nstart-up (the same commands on a store of one run): "
        + ", ".join(f"{k} {v:.2f} s" for k, v in startup.items())
    )
    if not args.no_mongo:
        measure_mongo(args, base, one)
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)


def measure_mongo(args: argparse.Namespace, base: Path, one: Path) -> None:
    import pymongo

    sys.path.insert(0, str(ROOT))
    from dashboard.server import DatabaseServer

    server = DatabaseServer(base / "mongo" / "db").start()
    try:
        client = pymongo.MongoClient(server.url)
        names = list(json.loads((one / "store" / "1" / "metrics.json").read_text()))
        load_mongo(client, "bench_1", one / "store", 1)
        startup = {name: t for name, (t, _) in measure(one, 1, (server.url, "bench_1")).items()}
        log_empty = mongo_log_epoch_seconds(client, "bench_1", names)
        table, log_full = {}, {}
        for size in args.sizes:
            started = time.perf_counter()
            load_mongo(client, f"bench_{size}", base / f"n{size}" / "store", size)
            print(
                f"database of {size:,} runs ready ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True
            )
            table[size] = measure(base / f"n{size}", size, (server.url, f"bench_{size}"))
            log_full[size] = mongo_log_epoch_seconds(client, f"bench_{size}", names)
        print_table("MongoDB (SecantusDB, the no-Docker dashboard's server)", table, startup)
        cells = [f"{log_full[s] * 1e3:.2f} ms (one-run database {log_empty * 1e3:.2f} ms)" for s in table]
        print(
            "| log one epoch's metrics (Sacred's upserts) | " + " | ".join(cells) + (" | |" if len(table) > 1 else " |")
        )
        print(
            "\nstart-up (the same commands on a database of one run): "
            + ", ".join(f"{k} {v:.2f} s" for k, v in startup.items())
        )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
