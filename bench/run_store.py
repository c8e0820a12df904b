"""The run browser at scale: synthetic file stores of N runs shaped like a real one, each command timed.

    .venv/bin/python bench/run_store.py --template runs/store/1 --sizes 1000 10000 [--keep DIR]

The template is one real run folder (`python -m runner experiment=quickstart train.max_epochs=3` makes one).
Each synthetic run copies its run.json, config.json and info.json and varies what a sweep varies (solver,
learning rate, model, status, start time, test accuracy); metrics.json has every metric the template logged,
for 30 epochs. Each command runs as a user runs it (`python -m runner runs ...`, a process of its own): its
wall time, that time less the same command's on a store of one run (its start-up), and its peak memory (RSS).
Logging one epoch's metrics is timed into the empty and into the full store. Printed as a table with the
largest size's ratio to the smallest.
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


def timed(args: list[str], runs_dir: Path) -> tuple[float, float, str]:
    """(seconds, peak RSS in MB, stdout) of `python -m runner <args>` in a process of its own."""
    env = {**os.environ, "ODEFLOW_RUNS": str(runs_dir), "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err
        )
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own peak memory, which communicate() drops
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"runner {' '.join(args)} failed: {err.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024, out.decode()


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


def measure(runs_dir: Path, size: int) -> dict[str, tuple[float, float]]:
    """Each command's (seconds, peak MB) on a store of `size` runs under runs_dir/store."""
    middle = str(max(1, size // 2))
    results = {"index build": timed(["runs", "reindex"], runs_dir)[:2]}
    results["first page"] = timed(["runs", "list"], runs_dir)[:2]
    results["query, sorted"] = timed(
        ["runs", "list", "--where", QUERY, "--sort", "-metrics.val.acc", "--limit", "10"], runs_dir
    )[:2]
    results["show"] = timed(["runs", "show", middle], runs_dir)[:2]
    results["count"] = timed(["runs", "list", "--where", "status = 'COMPLETED'", "--limit", "1"], runs_dir)[:2]
    with tempfile.TemporaryDirectory() as out:
        results["export (all)"] = timed(["runs", "export", "--out", f"{out}/runs.csv"], runs_dir)[:2]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--template", type=Path, required=True, help="one real run folder")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--keep", type=Path, help="keep the stores here (reused by a later run of the same size)")
    args = parser.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="run_store_"))
    one = base / "n1"  # start-up: the same commands on a store of one run
    make_store(args.template, one / "store", 1)
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
    sizes = list(table)
    header = "| command | " + " | ".join(f"{s:,} runs: s (less start-up), peak MB" for s in sizes)
    header += f" | {sizes[-1]:,}/{sizes[0]:,} (less start-up) |" if len(sizes) > 1 else " |"
    print(header)
    print("|---" * (len(sizes) + 1 + (len(sizes) > 1)) + "|")
    for name in table[sizes[0]]:
        cells = [
            f"{table[s][name][0]:.2f} ({table[s][name][0] - startup[name]:.2f}), {table[s][name][1]:.0f}" for s in sizes
        ]
        if len(sizes) > 1:
            low = max(table[sizes[0]][name][0] - startup[name], 1e-3)
            cells.append(f"{(table[sizes[-1]][name][0] - startup[name]) / low:.1f}x")
        print(f"| {name} | " + " | ".join(cells) + " |")
    log_cells = [f"{log_full[s][0] * 1e3:.2f} ms (one-run store {log_empty * 1e3:.2f} ms)" for s in sizes]
    print("| log one epoch's metrics | " + " | ".join(log_cells) + (" | |" if len(sizes) > 1 else " |"))
    event_cells = [f"{log_full[s][1] * 1e3:.1f} ms (one-run store {events_empty * 1e3:.1f} ms)" for s in sizes]
    print(
        "| a run's start and end events (index updated) | "
        + " | ".join(event_cells)
        + (" | |" if len(sizes) > 1 else " |")
    )
    print(
        f"start-up (the same commands on a store of one run): {', '.join(f'{k} {v:.2f} s' for k, v in startup.items())}"
    )
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
