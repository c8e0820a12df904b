"""The dashboard's start-up and Omniboard's run table load time, in one run.

(1) `python -m dashboard` from launch to ready: cold (a new data folder: the user is provisioned, two
runs pushed) and warm (the same folder again, nothing to push); Omniboard is installed beforehand, its
one-off `npm ci` is not counted. (2) Omniboard's run table in headless Chromium with 500 runs in the
database against 5 runs, each timed from navigation to the rows on screen in a fresh browser context
(no layout remembered), median of three. The 500 runs are copies of one real run, so every column and
metric is filled. Needs Node.js and chromium. Usage: .venv/bin/python bench/dashboard.py
"""

from __future__ import annotations

import copy
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
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
    series = {c: list(db[c].find({"run_id": 1})) for c in ("metrics", "cost_metrics")}
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
                    for collection in ("metrics", "cost_metrics"):
                        db[collection].delete_many({"run_id": {"$gt": 1}})
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


if __name__ == "__main__":
    main()
