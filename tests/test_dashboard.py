"""`python -m dashboard` as a user runs it: a real database server, the runs copied, Omniboard in Chromium."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import gridfs
import psutil
import pymongo
import pytest

from bench.dashboard import replicate
from dashboard.columns import CUSTOM_COLUMNS
from dashboard.copy import COPIED
from dashboard.server import DatabaseServer, alive, free_port, mongo_url
from odeflow.errors import UserError
from tests.conftest import ROOT, run_cli
from tests.test_tracking.conftest import TINY

READY = "Ctrl-C stops the dashboard"


@pytest.fixture
def dashboard_env(tmp_path) -> dict[str, str]:
    """Environment for a dashboard over a runs folder of its own, with its own .env and free ports."""
    env_file = tmp_path / "dashboard.env"
    port = free_port()
    env_file.write_text(
        f"MONGO_USER=researcher\nMONGO_PASSWORD=pw-{port}\nMONGO_PORT={port}\nOMNIBOARD_PORT={free_port()}\n"
        f"MONGO_URL={mongo_url(port, 'researcher', f'pw-{port}')}\n"
    )
    runs = tmp_path / "runs"
    runs.mkdir()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MONGO_", "OMNIBOARD_"))}
    return {**clean, "ODEFLOW_RUNS": str(runs), "ODEFLOW_ENV_FILE": str(env_file), "PYTHONUNBUFFERED": "1"}


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def no_dashboard_left():
    """A test that fails part-way leaves no dashboard (nor, through it, a database server) running."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start_dashboard(
    env: dict[str, str], *args: str, timeout: float = 240, cwd: Path = ROOT
) -> tuple[subprocess.Popen, str]:
    """`python -m dashboard` in the background; returns it and what it printed up to READY."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dashboard", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    STARTED.append(proc)
    lines: queue.Queue[str] = queue.Queue()
    proc.reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)
    proc.reader.start()
    out, deadline = "", time.monotonic() + timeout
    while READY not in out:
        try:
            out += lines.get(timeout=0.5)
        except queue.Empty:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"dashboard did not start:\n{out}")
    proc.printed = lines  # the rest of its output, for stop_dashboard
    return proc, out


def wait_for(proc: subprocess.Popen, text: str, timeout: float = 120) -> str:
    """What the dashboard prints from now until a line holding `text` (the test fails after `timeout` s)."""
    out, deadline = "", time.monotonic() + timeout
    while text not in out:
        try:
            out += proc.printed.get(timeout=0.5)
        except queue.Empty:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"dashboard never printed {text!r}:\n{out}")
    return out


def stop_dashboard(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> str:
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == 0
    proc.reader.join(10)
    return "".join(proc.printed.get() for _ in range(proc.printed.qsize()))


def dashboard_url(env: dict[str, str]) -> str:
    return dict(line.split("=", 1) for line in Path(env["ODEFLOW_ENV_FILE"]).read_text().split())["MONGO_URL"]


def dashboard_client(env: dict[str, str]) -> pymongo.MongoClient:
    return pymongo.MongoClient(dashboard_url(env), serverSelectionTimeoutMS=5000)


def train(env: dict[str, str], *overrides: str) -> None:
    flags = [o for o in overrides if o.startswith("-")]  # -m goes before the overrides
    proc = run_cli(
        [*flags, *TINY, "train.progress=false", *(o for o in overrides if o not in flags)],
        Path(env["ODEFLOW_RUNS"]),
        env={"ODEFLOW_ENV_FILE": env["ODEFLOW_ENV_FILE"], "MONGO_URL": dashboard_url(env)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_missing_node_is_one_clear_message(dashboard_env):
    env = {**dashboard_env, "PATH": str(Path(sys.executable).parent)}  # no node, no npm
    proc = subprocess.run(
        [sys.executable, "-m", "dashboard"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "node and npm is not on PATH" in proc.stderr and "install Node.js 18 or newer" in proc.stderr


def test_runs_pushed_once_stopped_cleanly_and_there_again(dashboard_env):
    train(dashboard_env)  # the file store, as make run leaves it
    proc, _ = start_dashboard(dashboard_env, "--no-omniboard")
    assert "copy done: 1 runs copied, 0 already there" in wait_for(proc, "copy done")
    client = dashboard_client(dashboard_env)
    db = client["odeflow"]
    assert db["runs"].find_one({"_id": 1})["status"] == "COMPLETED"
    assert db["omniboard.custom.columns"].count_documents({}) == len(CUSTOM_COLUMNS)
    db["omniboard.custom.columns"].delete_one({"name": "trial"})  # a user removes a column in Omniboard
    train(dashboard_env, "tracking=mongo")  # a live run while the dashboard is up
    assert db["runs"].find_one({"_id": 2})["status"] == "COMPLETED"
    assert "dashboard stopped" in stop_dashboard(proc, signal.SIGINT)

    proc, _ = start_dashboard(dashboard_env, "--no-omniboard")
    assert "copy done: 0 runs copied, 2 already there" in wait_for(proc, "copy done")
    client = dashboard_client(dashboard_env)
    db = client["odeflow"]
    assert [d["status"] for d in db["runs"].find({}, {"status": 1}).sort("_id", 1)] == ["COMPLETED", "COMPLETED"]
    assert db["omniboard.custom.columns"].find_one({"name": "trial"}) is None  # seeded once, not forced back
    stop_dashboard(proc)
    assert not list(Path(dashboard_env["ODEFLOW_RUNS"], "dashboard").glob("omniboard-config.json"))  # not started


def test_a_killed_dashboard_leaves_no_server_behind(dashboard_env):
    proc, _ = start_dashboard(dashboard_env, "--no-omniboard")
    proc.kill()  # kill -9: no chance to stop its children
    proc.wait()
    proc, out = start_dashboard(
        dashboard_env, "--no-omniboard", timeout=150
    )  # the port and the data folder are free again
    assert "copy done: 0 runs copied" in wait_for(proc, "copy done")
    stop_dashboard(proc)


def a_store_of(env: dict[str, str], runs: int) -> Path:
    train(env)
    store = Path(env["ODEFLOW_RUNS"]) / "store"
    replicate(store / "1", runs - 1)
    return store


def assert_copied_whole(env: dict[str, str], store: Path, runs: int) -> None:
    """Every run of the store once in the database, with all its series and files, nothing left over."""
    db = dashboard_client(env)["odeflow"]
    docs = list(db["runs"].find({}, {"meta.run_uid": 1, "info.metrics": 1, "artifacts": 1, "experiment.sources": 1}))
    uids = {json.loads((store / str(n) / "run.json").read_text())["meta"]["run_uid"] for n in range(1, runs + 1)}
    assert len(docs) == runs and {d["meta"]["run_uid"] for d in docs} == uids
    series = len(json.loads((store / "1" / "metrics.json").read_text()))
    assert db["metrics"].count_documents({}) == runs * series
    for doc in docs:
        assert len(doc["info"]["metrics"]) == series
    fs = gridfs.GridFS(db)
    referenced = {a["file_id"] for d in docs for a in d["artifacts"]} | {
        file_id for d in docs for _, file_id in d["experiment"]["sources"]
    }
    assert {f._id for f in fs.find()} == referenced  # no file of a batch cut short is left
    last = max(docs, key=lambda d: d["_id"])
    artifact = next(a for a in last["artifacts"] if a["name"] == "confusion_matrix.png")
    assert fs.get(artifact["file_id"]).read() == (store / "1" / "confusion_matrix.png").read_bytes()


STORE_RUNS = 200


def test_a_store_is_served_while_it_is_copied_and_a_later_start_copies_only_what_changed(dashboard_env):
    store = a_store_of(dashboard_env, STORE_RUNS)
    proc, out = start_dashboard(dashboard_env, "--no-omniboard")
    assert "copy done" not in out  # serving before the copy has finished
    assert f"copy done: {STORE_RUNS} runs copied, 0 already there" in wait_for(proc, "copy done")
    assert_copied_whole(dashboard_env, store, STORE_RUNS)
    stop_dashboard(proc)

    info = json.loads((store / "7" / "info.json").read_text())
    (store / "7" / "info.json").unlink()  # a hard link: the run's own file is replaced, not its copies'
    (store / "7" / "info.json").write_text(json.dumps({**info, "note": "re-evaluated"}))
    proc, _ = start_dashboard(dashboard_env, "--no-omniboard")
    assert f"copy done: 1 runs copied, {STORE_RUNS - 1} already there" in wait_for(proc, "copy done")
    db = dashboard_client(dashboard_env)["odeflow"]
    uid = json.loads((store / "7" / "run.json").read_text())["meta"]["run_uid"]
    assert db["runs"].find_one({"meta.run_uid": uid})["info"]["note"] == "re-evaluated"
    assert_copied_whole(dashboard_env, store, STORE_RUNS)
    stop_dashboard(proc)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_a_signal_during_the_copy_stops_everything_at_once_and_the_next_start_completes_it(dashboard_env, sig):
    store = a_store_of(dashboard_env, STORE_RUNS)
    proc, _ = start_dashboard(dashboard_env, "--no-omniboard")
    pid_file = Path(dashboard_env["ODEFLOW_RUNS"]) / "dashboard" / "db.pid"
    server = psutil.Process(json.loads(pid_file.read_text())["pid"])
    copied = dashboard_client(dashboard_env)["odeflow"][COPIED]
    while not copied.count_documents({}):  # mid-copy: the first batch is in
        time.sleep(0.05)
    sent = time.monotonic()
    proc.send_signal(sig)
    proc.wait(timeout=30)
    # SIGKILL gives the dashboard no chance: its server stops on the parent-death signal, in its own time
    limit = 30 if sig == signal.SIGKILL else 2
    gone, _ = psutil.wait_procs([server], timeout=max(0.1, sent + limit - time.monotonic()))
    took = time.monotonic() - sent
    assert gone, f"the database server still runs {took:.1f} s after {sig.name}"
    if sig != signal.SIGKILL:
        assert proc.returncode == 0 and took < 2, f"{sig.name}: stopped after {took:.1f} s"
        proc.reader.join(10)
        out = "".join(proc.printed.get() for _ in range(proc.printed.qsize()))
        assert "copy stopped after" in out and "dashboard stopped" in out  # it was copying

    proc, _ = start_dashboard(dashboard_env, "--no-omniboard")
    done = wait_for(proc, "copy done")
    copied = int(done.split("copy done: ")[1].split()[0])
    assert 0 < copied < STORE_RUNS  # only what the first start had not copied
    assert_copied_whole(dashboard_env, store, STORE_RUNS)
    stop_dashboard(proc)


OWNER = """
import sys, time
from pathlib import Path
from dashboard.server import DatabaseServer
server = DatabaseServer(Path(sys.argv[1]), int(sys.argv[2])).start()
print(server.process.pid, flush=True)
time.sleep(600)
"""


def owned_server(data: Path, port: int) -> tuple[subprocess.Popen, int]:
    """A database server started by another process (as a dashboard starts it).

    Returns that owner and the server's pid."""
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(data), str(port)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    return owner, int(owner.stdout.readline())


def test_a_wedged_server_of_a_killed_dashboard_is_killed_at_the_next_start_and_keeps_its_data(tmp_path, capsys):
    data, port = tmp_path / "db", free_port()
    owner, server_pid = owned_server(data, port)
    with pymongo.MongoClient(mongo_url(port)) as client:
        client["odeflow"]["runs"].insert_one({"_id": 1, "status": "COMPLETED"})
    os.kill(server_pid, signal.SIGSTOP)  # a close that hangs: it cannot act on its parent-death SIGTERM
    owner.kill()
    owner.wait()
    server = DatabaseServer(data, port)
    server.leftover_grace = 2
    try:
        server.start()
        assert not alive(server_pid)
        assert "did not stop within 2 s: killed" in capsys.readouterr().err
        with pymongo.MongoClient(server.url) as client:
            assert client["odeflow"]["runs"].find_one({"_id": 1})["status"] == "COMPLETED"
    finally:
        server.stop()
        if alive(server_pid):
            os.kill(server_pid, signal.SIGKILL)


def test_a_second_server_on_a_data_folder_in_use_is_refused_and_the_first_keeps_serving(tmp_path):
    data, port = tmp_path / "db", free_port()
    owner, server_pid = owned_server(data, port)
    try:
        with pytest.raises(UserError, match=f"another process \\(pid {owner.pid}, a dashboard or a test\\) serves"):
            DatabaseServer(data, free_port()).start()
        with pymongo.MongoClient(mongo_url(port), serverSelectionTimeoutMS=5000) as client:
            assert client.admin.command("ping")["ok"] == 1
    finally:
        owner.terminate()
        owner.wait()
        deadline = time.monotonic() + 10  # its parent-death SIGTERM stops the server; a test leaves none behind
        while alive(server_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if alive(server_pid):
            os.kill(server_pid, signal.SIGKILL)


def test_changed_password_is_refused_with_the_fix(dashboard_env):
    proc, _ = start_dashboard(dashboard_env, "--no-omniboard")
    stop_dashboard(proc)
    env_file = Path(dashboard_env["ODEFLOW_ENV_FILE"])
    env_file.write_text(env_file.read_text().replace("MONGO_PASSWORD=pw-", "MONGO_PASSWORD=other-"))
    done = subprocess.run(
        [sys.executable, "-m", "dashboard", "--no-omniboard"],
        cwd=ROOT,
        env=dashboard_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "created with other credentials" in done.stderr and "delete that folder" in done.stderr


@pytest.mark.browser
def test_omniboard_in_a_browser(dashboard_env, tmp_path):
    """Headless Chromium over Omniboard: the run listed with this project's columns, its curves, artifacts, config."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None or shutil.which("node") is None:
        pytest.skip("needs chromium (apt-get install chromium; .ci/run installs it) and Node.js")
    from playwright.sync_api import sync_playwright

    train(dashboard_env, "-m", "sweep_id=sweep-a")  # one trial of a sweep
    # A relative runs folder, as `make run` leaves it (runs/ beside the Makefile).
    proc, out = start_dashboard({**dashboard_env, "ODEFLOW_RUNS": "runs"}, cwd=tmp_path)
    url = next(word for word in out.split() if word.startswith("http://127.0.0.1:"))
    try:
        train(dashboard_env, "tracking=mongo", "solver=rk4", "solver.step_size=0.25")  # appears live
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=chromium,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                ],
            )
            page = browser.new_page(viewport={"width": 2200, "height": 900})
            page.goto(url)
            page.wait_for_selector("text=2 experiments", timeout=60_000)
            headers = page.inner_text(".fixedDataTableLayout_header")
            for column in (
                "Model",
                "Dataset",
                "Solver",
                "Rtol",
                "Test acc",
                "Best val loss",
                "FNFE",
                "BNFE",
                "Params",
                "Sweep",
            ):
                assert column.lower() in headers.lower(), (column, headers)
            table = page.inner_text(".fixedDataTableLayout_main")
            assert "euler" in table and "rk4" in table and "odenet_simple" in table  # rk4: the live run
            page.screenshot(path=str(tmp_path / "omniboard-runs.png"))
            page.click("text=Column Name")  # a sweep's trials, by its id
            page.keyboard.type("sweep")
            page.keyboard.press("Enter")
            page.click("text=Enter Value...")
            page.keyboard.type("sweep-a")
            page.wait_for_selector("[class*='option']:has-text('sweep-a')", timeout=30_000)  # values load as you type
            page.keyboard.press("Enter")
            page.click("text=Add Filter")
            page.wait_for_selector("text=1 experiments", timeout=30_000)
            assert "rk4" not in page.inner_text(".fixedDataTableLayout_main")

            page.goto(f"{url}?showDrillDownRunModal=true&runIdToExpand=1&runIdStatus=COMPLETED")
            page.wait_for_selector(".modal .js-plotly-plot", timeout=60_000)
            legend = page.inner_text(".modal .js-plotly-plot")
            # every per-epoch series is in Sacred's metrics collection, so Omniboard offers NFE and epoch times too
            assert "val.loss" in legend and "nfe.forward" in legend and "epoch.time" in legend
            page.screenshot(path=str(tmp_path / "omniboard-metrics.png"))
            page.click(".modal a:has-text('Artifacts')")
            page.wait_for_selector(".modal >> text=confusion_matrix.png", timeout=30_000)
            page.click(".modal a:has-text('Config')")
            page.click('.modal >> text="solver"', timeout=30_000)  # the config tree opens collapsed
            page.wait_for_selector('.modal >> text="method"', timeout=30_000)
            page.screenshot(path=str(tmp_path / "omniboard-config.png"))
            config = page.inner_text(".modal-body")
            assert "method" in config and "euler" in config
            browser.close()
    finally:
        stop_dashboard(proc)
    print(f"screenshots in {tmp_path}")


def test_omniboards_opening_queries_read_only_the_runs_they_need_and_answer_as_before(tmp_path):
    """Omniboard's first page, count of runs and tag list on a database of 400 runs with gaps in their ids, through
    its own API: the same answers as the server's sort, count and distinct of every run, read from a window of the
    highest ids, the collection's count and the tagged runs (dashboard/omniboard_queries.js says so in its log)."""
    import random
    import urllib.parse
    import urllib.request

    from dashboard.omniboard import Omniboard
    from runner.tracking.mongo import ensure_indexes

    if shutil.which("node") is None:
        pytest.skip("needs Node.js")
    rng = random.Random(7)
    ids = [*sorted(rng.sample(range(1, 580), 398)), 599, 600]  # 580-598 deleted: a window of the top ids widens
    runs = [{"_id": i, "status": rng.choice(["COMPLETED", "FAILED"]), "config": {"seed": i}} for i in ids]
    for run in rng.sample(runs, 5):
        run["omniboard"] = {"tags": rng.sample(["rk4", "baseline", "wide"], 2)}
    server = DatabaseServer(tmp_path / "db").start()
    omniboard = None
    try:
        db = pymongo.MongoClient(server.url)["odeflow"]
        ensure_indexes(db)
        db["runs"].insert_many(runs)
        omniboard = Omniboard(server.url, "odeflow", free_port(), tmp_path / "omniboard").start()

        def ask(path: str, **query: object) -> object:
            url = f"{omniboard.url.rstrip('/')}/api/v1/{path}?{urllib.parse.urlencode(query)}"
            with urllib.request.urlopen(url, timeout=60) as response:
                return json.loads(response.read())

        newest = [d["_id"] for d in db["runs"].find({}, {"_id": 1}).sort("_id", -1)]
        for skip, limit in ((0, 50), (50, 50), (0, 5), (360, 50), (395, 10)):
            page = ask("Runs", select="_id,status", sort_by="_id", order_by=-1, query="{}", skip=skip, limit=limit)
            assert [run["_id"] for run in page] == newest[skip : skip + limit], (skip, limit)
        failed = ask("Runs", select="_id", sort_by="_id", order_by=-1, query='{"status": "FAILED"}', limit=20)
        newest_failed = [d["_id"] for d in db["runs"].find({"status": "FAILED"}).sort("_id", -1)]
        assert [r["_id"] for r in failed] == newest_failed[:20]  # a filter: Omniboard's own query
        assert ask("Runs/count", query="{}") == {"count": 400}
        assert ask("Runs", distinct="omniboard.tags") == sorted(db["runs"].distinct("omniboard.tags"))
        log = omniboard.log_file.read_text()
        assert "odeflow: run table page read from the runs with ids above" in log
        assert "odeflow: runs counted by the collection" in log and "tags read from the 5 runs that have one" in log
    finally:
        if omniboard is not None:
            omniboard.stop()
        server.stop()
