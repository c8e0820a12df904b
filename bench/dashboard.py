"""The dashboard's start-up and Omniboard's run table load time, in one run.

(1) `python -m dashboard` from launch to ready: cold (a new data folder: the user is provisioned, two
runs pushed) and warm (the same folder again, nothing to push); Omniboard is installed beforehand, its
one-off `npm ci` is not counted. (2) Omniboard's run table in headless Chromium with 500 runs in the
database against 5 runs, each timed from navigation to the rows on screen in a fresh browser context
(no layout remembered), median of three. The 500 runs are copies of one real run, so every column and
metric is filled. Needs Node.js and chromium. Usage: .venv/bin/python bench/dashboard.py

`--scale N` measures the dashboard at scale instead, in one run: (3) a file store of N copies of one real
30-epoch run (files hard-linked, each its own run uid): `python -m dashboard --no-omniboard` from launch
to serving, to the copy done (runs per second), the database server's peak memory, and a second start
(nothing new to copy); (4) the time to log one epoch's metrics (log_metrics and the heartbeat after it,
as a live run does) into an empty database and into one holding N runs' series, with and without the
indexes the observer creates. Usage: .venv/bin/python bench/dashboard.py --scale 5000
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pymongo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from dashboard.omniboard import Omniboard, ensure_installed  # noqa: E402
from dashboard.server import DatabaseServer, free_port, mongo_url  # noqa: E402

TINY = [
    "data=spheres",
    "data.n_train=300",
    "data.n_test=100",
    "model.channels=4",
    "solver=euler",
    "solver.step_size=0.5",
    "train.max_epochs=5",
    "train.progress=false",
]
REPEATS = 3


def dashboard_start_seconds(env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "dashboard"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if "Ctrl-C stops the dashboard" in line:
            break
    seconds = time.perf_counter() - start
    proc.terminate()
    proc.wait(60)
    return seconds


def fill(db, runs: int) -> None:
    """Copies of run 1 (its document and metric series) up to `runs` runs."""
    run = db["runs"].find_one({"_id": 1})
    series = {"metrics": list(db["metrics"].find({"run_id": 1}))}
    for run_id in range(2, runs + 1):
        doc = copy.deepcopy(run)
        doc["_id"], doc["meta"]["run_uid"] = run_id, uuid.uuid4().hex
        doc["info"]["metrics"] = []
        for collection, docs in series.items():
            for metric in docs:
                new = {key: value for key, value in metric.items() if key != "_id"}
                inserted = db[collection].insert_one({**new, "run_id": run_id}).inserted_id
                if collection == "metrics":
                    doc["info"]["metrics"].append({"name": metric["name"], "id": str(inserted)})
        db["runs"].insert_one(doc)


def table_load_seconds(browser, url: str, runs: int) -> float:
    times = []
    for _ in range(REPEATS):
        context = browser.new_context(viewport={"width": 1920, "height": 1000})
        page = context.new_page()
        start = time.perf_counter()
        page.goto(url)
        page.wait_for_selector(f"text={runs} experiments", timeout=120_000)
        page.wait_for_selector(".fixedDataTableRowLayout_rowWrapper >> nth=1", timeout=120_000)
        times.append(time.perf_counter() - start)
        context.close()
    return statistics.median(times)


def main() -> None:
    from playwright.sync_api import sync_playwright

    ensure_installed()
    chromium = shutil.which("chromium") or sys.exit("chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        runs, env_file = Path(tmp) / "runs", Path(tmp) / ".env"
        port = free_port()
        env_file.write_text(
            f"MONGO_USER=bench\nMONGO_PASSWORD=bench-pw\nMONGO_PORT={port}\nOMNIBOARD_PORT={free_port()}\n"
            f"MONGO_URL={mongo_url(port, 'bench', 'bench-pw')}\n"
        )
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("MONGO_", "OMNIBOARD_"))},
            "ODEFLOW_RUNS": str(runs),
            "ODEFLOW_ENV_FILE": str(env_file),
        }
        for seed in (0, 1):
            subprocess.run(
                [sys.executable, "-m", "runner", *TINY, f"seed={seed}"],
                cwd=ROOT,
                env=env,
                check=True,
                capture_output=True,
            )
        cold = dashboard_start_seconds(env)
        warm = dashboard_start_seconds(env)

        server = DatabaseServer(runs / "dashboard" / "db", free_port(), "bench", "bench-pw").start()
        db = pymongo.MongoClient(server.url)["odeflow"]
        loads = {}
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=chromium,
                    args=[
                        "--no-sandbox",
                        "--disable-gpu",
                        "--disable-background-networking",
                        "--disable-component-update",
                    ],
                )
                for count in (500, 5):
                    db["runs"].delete_many({"_id": {"$gt": 1}})
                    db["metrics"].delete_many({"run_id": {"$gt": 1}})
                    fill(db, count)
                    omniboard = Omniboard(server.url, "odeflow", free_port(), Path(tmp) / "omniboard").start()
                    try:
                        loads[count] = table_load_seconds(browser, omniboard.url, count)
                    finally:
                        omniboard.stop()
                browser.close()
        finally:
            server.stop()
    print("\ndashboard start-up and run table load")
    print(
        f"python -m dashboard to ready: cold {cold:.1f} s (new data folder, user provisioned, 2 runs pushed), "
        f"warm {warm:.1f} s; cold/warm {cold / warm:.2f}x"
    )
    print(
        f"Omniboard run table on screen, median of {REPEATS}: 500 runs {loads[500]:.2f} s, 5 runs {loads[5]:.2f} s; "
        f"500/5 = {loads[500] / loads[5]:.2f}x (Omniboard fetches the first 50 rows, then more as you scroll)"
    )


def bench_env(tmp: Path) -> dict[str, str]:
    runs, env_file = tmp / "runs", tmp / ".env"
    port = free_port()
    env_file.write_text(
        f"MONGO_USER=bench\nMONGO_PASSWORD=bench-pw\nMONGO_PORT={port}\nOMNIBOARD_PORT={free_port()}\n"
        f"MONGO_URL={mongo_url(port, 'bench', 'bench-pw')}\n"
    )
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MONGO_", "OMNIBOARD_", "DASHBOARD_"))},
        "ODEFLOW_RUNS": str(runs),
        "ODEFLOW_ENV_FILE": str(env_file),
        "PYTHONUNBUFFERED": "1",
    }


def replicate(run_dir: Path, count: int) -> None:
    """`count` more runs beside `run_dir`: its files hard-linked, its run.json with a run uid of its own (the
    dashboard's tests make their stores with it too)."""
    record = json.loads((run_dir / "run.json").read_text())
    for n in range(1, count + 1):
        target = run_dir.parent / str(int(run_dir.name) + n)
        target.mkdir()
        for file in run_dir.iterdir():
            if file.name != "run.json":
                os.link(file, target / file.name)
        record["meta"]["run_uid"] = uuid.uuid4().hex
        (target / "run.json").write_text(json.dumps(record))


def timed_start(env: dict[str, str]) -> dict[str, float]:
    """`python -m dashboard --no-omniboard` until its copy is done: seconds to serving, to the copy done, the
    copy's counts, the database server's peak memory; then SIGTERM and the seconds it took to stop."""
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dashboard", "--no-omniboard"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    result: dict[str, float] = {"peak_mb": 0.0}
    server: psutil.Process | None = None
    lines: list[str] = []

    def sample() -> None:
        while proc.poll() is None:
            if server is not None:
                try:
                    result["peak_mb"] = max(result["peak_mb"], server.memory_info().rss / 1e6)
                except psutil.Error:
                    return
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for line in proc.stdout:
        lines.append(line)
        if "Ctrl-C stops the dashboard" in line:
            result["serving_s"] = time.perf_counter() - start
            pid_file = Path(env["ODEFLOW_RUNS"]) / "dashboard" / "db.pid"
            server = psutil.Process(json.loads(pid_file.read_text())["pid"])
        if line.startswith("copy done:"):
            result["done_s"] = time.perf_counter() - start
            words = line.split()
            result["copied"], result["already"] = float(words[2]), float(words[5])
            result["copy_s"] = float(line.rsplit("(", 1)[1].split()[0])
            break
    else:
        sys.exit("the dashboard stopped before its copy was done:\n" + "".join(lines[-20:]))
    sent = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    result["stop_s"] = time.perf_counter() - sent
    return result


def one_epoch_seconds(db, with_indexes: bool, epochs: int = 20) -> float:
    """Median seconds of one epoch's log_metrics + heartbeat of a new run in `db` (as the runner's observer)."""
    import datetime as dt

    import runner.tracking.mongo as mongo

    ensure = mongo.ensure_indexes
    if not with_indexes:
        mongo.ensure_indexes = lambda db: None
        for collection in ("runs", "metrics"):
            db[collection].drop_indexes()
    try:
        observer = mongo.open_observer(db.client, db.name)
    finally:
        mongo.ensure_indexes = ensure
    template = db["runs"].find_one({"_id": 1})
    names = [m["name"] for m in db["metrics"].find({"run_id": 1}, {"name": 1})]
    now = dt.datetime.now(dt.timezone.utc)
    observer.started_event(
        {k: v for k, v in template["experiment"].items() if k != "sources"} | {"sources": []},
        "train",
        template["host"],
        now,
        template["config"],
        {**template["meta"], "run_uid": uuid.uuid4().hex},
        None,
    )
    times = []
    for epoch in range(1, epochs + 1):
        metrics = {name: {"steps": [epoch], "values": [0.5], "timestamps": [now]} for name in names}
        start = time.perf_counter()
        observer.log_metrics(metrics, {})
        observer.heartbeat_event({}, "", now, None)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def scale(runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = bench_env(Path(tmp))
        subprocess.run(
            [sys.executable, "-m", "runner", *TINY, "train.max_epochs=30", "seed=0"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        store = Path(env["ODEFLOW_RUNS"]) / "store"
        replicate(store / "1", runs - 1)
        first = timed_start(env)
        second = timed_start(env)
        print(f"\ndashboard at scale: a file store of {runs} copies of one real 30-epoch run", flush=True)
        print(
            f"first start: serving after {first['serving_s']:.1f} s; copy done after {first['done_s']:.1f} s "
            f"({first['copied']:.0f} runs in {first['copy_s']:.1f} s: {first['copied'] / first['copy_s']:.0f} "
            f"runs/s); database server peak memory {first['peak_mb']:.0f} MB; stopped {first['stop_s']:.2f} s "
            "after SIGTERM",
            flush=True,
        )
        print(
            f"second start: serving after {second['serving_s']:.1f} s; copy done after {second['done_s']:.1f} s "
            f"({second['copied']:.0f} copied, {second['already']:.0f} already there); "
            f"database server peak memory {second['peak_mb']:.0f} MB",
            flush=True,
        )

        # (4) one epoch logged into an empty database and into the full one, with and without indexes
        server = DatabaseServer(Path(env["ODEFLOW_RUNS"]) / "dashboard" / "db", free_port(), "bench", "bench-pw")
        server.start()
        try:
            client = pymongo.MongoClient(server.url)
            full = client["odeflow"]
            empty = client["empty"]
            empty["runs"].insert_one(full["runs"].find_one({"_id": 1}))
            empty["metrics"].insert_many(list(full["metrics"].find({"run_id": 1})))
            epoch = {}
            for with_indexes in (True, False):
                for name, db in (("empty", empty), ("full", full)):
                    # without indexes every write scans the whole metrics collection: fewer epochs
                    epoch[name, with_indexes] = one_epoch_seconds(db, with_indexes, 20 if with_indexes else 3)
            client.close()
        finally:
            server.stop()
    print(f"one epoch logged (log_metrics + heartbeat, median of 20; of 3 without indexes), 1 run vs {runs} runs:")
    for with_indexes in (True, False):
        e, f = epoch["empty", with_indexes], epoch["full", with_indexes]
        label = "with the indexes   " if with_indexes else "without any index  "
        print(f"  {label} empty {e * 1000:.1f} ms   full {f * 1000:.1f} ms   full/empty {f / e:.2f}x")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, metavar="RUNS", help="the dashboard at scale, with a store of RUNS runs")
    args = parser.parse_args()
    if args.scale:
        scale(args.scale)
    else:
        main()
