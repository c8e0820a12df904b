"""The run browser on a store the test fills with real runs, through the CLI and through the Mongo reader."""

from __future__ import annotations

import csv
import dataclasses
import shutil
from pathlib import Path

import pytest

from runner.tracking import browse
from runner.tracking.mongo import sync
from runner.tracking.runstore import read_file_store, read_mongo
from tests.conftest import run_cli
from tests.test_tracking.conftest import tiny_run


@pytest.fixture(scope="module")
def filled_store(tmp_path_factory) -> Path:
    runs_dir = tmp_path_factory.mktemp("browse") / "runs"
    runs_dir.mkdir()
    tiny_run(runs_dir, runs_dir / "o1")
    tiny_run(runs_dir, runs_dir / "o2", "model=resnet_simple_small")
    tiny_run(runs_dir, runs_dir / "o3", "solver=rk4", "solver.step_size=0.5")
    return runs_dir


def test_list_filters_by_model_and_solver(filled_store: Path):
    records = read_file_store(filled_store / "store")
    assert [r.id for r in records] == [1, 2, 3]
    assert [r.id for r in browse.filter_runs(records, solver="rk4")] == [3]
    assert [r.id for r in browse.filter_runs(records, status="completed", dataset="spheres")] == [1, 2, 3]
    proc = run_cli(["runs", "list", "--solver", "euler"], filled_store)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["id", "experiment", "status"] and len(lines) == 3  # header, run 1, footer
    assert lines[2] == "1 run matched (3 in the store)"
    assert "euler" in lines[1]


def test_show_and_compare(filled_store: Path):
    records = read_file_store(filled_store / "store")
    shown = browse.show_run(browse.find_run(records, "1"))
    assert "final metrics:" in shown and "val.loss" in shown and "best_checkpoint.pt" in shown
    compared = browse.compare_runs([browse.find_run(records, i) for i in ("1", "3")])
    assert "config.solver.method" in compared and "rk4" in compared and "euler" in compared
    assert "config.model.channels" not in compared  # equal keys are not differences
    proc = run_cli(["runs", "compare", "1", "2"], filled_store)
    assert proc.returncode == 0 and "config.model.block" in proc.stdout


def test_export_and_plot(filled_store: Path, tmp_path: Path):
    records = read_file_store(filled_store / "store")
    out = browse.export_runs(records, tmp_path / "runs.csv")
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 3 and "config.train.lr" in rows[0] and rows[2]["solver"] == "rk4"
    proc = run_cli(["runs", "plot", "val.acc", "--out", str(tmp_path / "val.png"), "1", "2"], filled_store)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "val.png").read_bytes()[:4] == b"\x89PNG"
    bad = run_cli(["runs", "plot", "val.accuracy"], filled_store)
    assert bad.returncode == 2 and "val.acc" in bad.stderr and "Traceback" not in bad.stderr


def test_mongo_reader_sees_the_same_runs(filled_store: Path, mongo_db):
    client, name = mongo_db
    sync(filled_store / "store", client, name, log=lambda *_: None)
    from_file = browse.list_runs(read_file_store(filled_store / "store"))
    from_mongo = browse.list_runs(read_mongo(client, name))
    assert from_file.splitlines()[0] == from_mongo.splitlines()[0]
    for a, b in zip(from_file.splitlines()[1:], from_mongo.splitlines()[1:], strict=True):
        assert a.split()[:7] == b.split()[:7]


def test_unknown_run_id_is_a_clear_error(filled_store: Path):
    proc = run_cli(["runs", "show", "99"], filled_store)
    assert proc.returncode == 2 and "no run with id 99" in proc.stderr and "Traceback" not in proc.stderr


def test_sync_without_server_explains(filled_store: Path):
    proc = run_cli(["sync", "tracking.url=mongodb://u:pw@127.0.0.1:9", "tracking.timeout_ms=200"], filled_store)
    assert proc.returncode == 2 and "unreachable" in proc.stderr and "make dashboard" in proc.stderr
    assert ":pw@" not in proc.stderr and "pkg_resources" not in proc.stderr


def test_compare_sees_a_key_set_in_one_run_and_null_in_the_other(filled_store: Path):
    one, three = (browse.find_run(read_file_store(filled_store / "store"), i) for i in ("1", "3"))
    assert one.config["data"]["subset"] is None
    three = dataclasses.replace(three, config={**one.config, "data": {**one.config["data"], "subset": 200}})
    compared = browse.compare_runs([one, three])
    assert compared.startswith("config differences:") and "config.data.subset" in compared
    assert browse.compare_runs([one, dataclasses.replace(three, config=one.config)]).startswith("config: identical")


def test_list_filters_refuse_an_unknown_status_and_explain_an_empty_match(filled_store: Path):
    bogus = run_cli(["runs", "list", "--status", "bogus"], filled_store)
    assert (
        bogus.returncode == 2 and "--status bogus is not a run status" in bogus.stderr and "COMPLETED" in bogus.stderr
    )
    none = run_cli(["runs", "list", "--model", "odenet_complex"], filled_store)
    assert none.returncode == 0
    assert (
        "(no runs of 3 match; --model odenet_complex: this store has odenet_simple, resnet_simple_small)" in none.stdout
    )


def test_out_may_name_a_folder_or_leave_out_the_suffix(filled_store: Path, tmp_path: Path):
    plot = run_cli(["runs", "plot", "val.loss", "--out", f"{tmp_path}/plots/"], filled_store)
    assert plot.returncode == 0, plot.stderr
    assert f"wrote {tmp_path}/plots/val.loss.png" in plot.stdout and (tmp_path / "plots" / "val.loss.png").is_file()
    assert not (tmp_path / "plots.png").exists()
    named = run_cli(["runs", "plot", "val.loss", "--out", str(tmp_path / "curves")], filled_store)
    assert f"wrote {tmp_path}/curves.png" in named.stdout and (tmp_path / "curves.png").is_file()
    export = run_cli(["runs", "export", "--out", str(tmp_path)], filled_store)
    assert export.returncode == 0, export.stderr
    assert (
        f"wrote 3 runs to {tmp_path}/runs.csv" in export.stdout
        and len(list(csv.DictReader((tmp_path / "runs.csv").open()))) == 3
    )


def test_report_writes_under_the_runs_folder_it_was_given(filled_store: Path, tmp_path: Path):
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(filled_store / "store", elsewhere / "store")
    proc = run_cli(["report", f"paths.runs={elsewhere}"], filled_store)
    assert proc.returncode == 0, proc.stderr
    assert (elsewhere / "report" / "comparison.md").is_file() and not (filled_store / "report").exists()


def test_one_damaged_run_folder_is_skipped_with_one_warning_naming_the_file(filled_store: Path, tmp_path: Path):
    runs_dir = tmp_path / "runs"
    shutil.copytree(filled_store / "store", runs_dir / "store")
    (runs_dir / "store" / "2" / "metrics.json").write_text('{"val.loss": {"steps": [1, 2')  # truncated
    (runs_dir / "store" / "3" / "run.json").write_text("")
    for command in (
        ["runs", "list"],
        ["runs", "show", "1"],
        ["runs", "export", "--out", str(tmp_path / "x.csv")],
        ["report"],
    ):
        proc = run_cli(command, runs_dir)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, (command, proc.stderr)
        warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: skipping run")]
        if command[:2] == ["runs", "show"]:  # reads run 1 alone
            assert warnings == [], proc.stderr
            continue
        assert len(warnings) == 2, proc.stderr
        assert (
            f"{runs_dir}/store/2/metrics.json is damaged" in warnings[0]
            and f"{runs_dir}/store/3/run.json is damaged" in warnings[1]
        )
    listed = run_cli(["runs", "list"], runs_dir).stdout.splitlines()
    assert len(listed) == 3 and listed[1].split()[0] == "1"


def test_dashboard_fields_are_rounded_carry_memory_and_no_bnfe_without_a_backward_pass():
    from runner.tracking.mongo import table_fields

    def fields(solver: dict) -> dict:
        entry = {
            "config": {"solver": {"method": "dopri5", "rtol": 1e-3, **solver}},
            "meta": {"model_family": "odenet", "choices": {"model": "odenet_simple"}},
            "info": {
                "test": {"test.acc": 0.9722222222222222},
                "cost": {
                    "fnfe": 26.04167,
                    "bnfe": 0.0,
                    "epoch_time": 1.23456,
                    "train_rss_mb": 851.27,
                    "saved_mb": 12.345,
                },
            },
        }
        return table_fields(entry, {"val.loss": 0.123456789})

    direct = fields({"adjoint": False})  # a run logged before solver.gradient existed
    assert direct["test acc"] == 0.9722 and direct["best val loss"] == 0.1235 and direct["FNFE"] == 26.0
    assert direct["BNFE"] is None and direct["gradient"] == "direct"
    assert direct["train RSS MB"] == 851 and direct["train CUDA MB"] is None and direct["saved MB"] == 12.3
    assert fields({"adjoint": True})["BNFE"] == 0.0 and fields({"adjoint": True})["gradient"] == "adjoint"
    assert fields({"gradient": "checkpoint"})["gradient"] == "checkpoint"


def test_list_and_show_carry_peak_memory(filled_store: Path):
    records = read_file_store(filled_store / "store")
    header = browse.list_runs(records).splitlines()[0].split()
    assert "train_rss_mb" in header and "train_cuda_mb" in header and "saved_mb" in header
    shown = browse.show_run(browse.find_run(records, "1"))
    assert "train_rss_mb" in shown and "mem.train.live_mb" in shown and "mem.val.rss_mb" in shown
    assert "bnfe" not in shown.split("final metrics:")[0]  # a direct run: no backward NFE in its summary


def test_params_stay_whole_numbers_when_a_run_lacks_them(filled_store: Path):
    records = read_file_store(filled_store / "store")
    params = records[0].info["parameters"]["total"]
    without = dataclasses.replace(records[1], info={k: v for k, v in records[1].info.items() if k != "parameters"})
    big = dataclasses.replace(records[2], info={**records[2].info, "parameters": {"total": 1_261_372}})
    rows = browse.list_runs([records[0], without, big]).splitlines()
    column = rows[0].split().index("params")
    assert [row.split()[column] for row in rows[1:]] == [str(params), "-", "1261372"]


def test_a_killed_running_run_is_told_from_a_live_one(filled_store: Path, tmp_path: Path):
    import datetime as dt
    import json
    import socket
    import subprocess
    import sys

    store = tmp_path / "runs" / "store"
    shutil.copytree(filled_store / "store", store)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        for run_id, pid, host, beat in (
            (1, sleeper.pid, socket.gethostname(), now),  # its process is there
            (2, gone.pid, socket.gethostname(), now),  # its process is gone: SIGKILL
            (3, 1, "another-host", now - dt.timedelta(hours=1)),  # elsewhere, no heartbeat for an hour
        ):
            run_json = store / str(run_id) / "run.json"
            doc = json.loads(run_json.read_text())
            doc.update(status="RUNNING", heartbeat=beat.isoformat(), host={**doc["host"], "hostname": host})
            doc["meta"]["pid"] = pid
            run_json.write_text(json.dumps(doc))
        listing = run_cli(["runs", "list"], tmp_path / "runs")
        statuses = [line.split()[2] for line in listing.stdout.splitlines()[1:4]]  # newest first: 3, 2, 1
        assert statuses == ["DEAD", "DEAD", "RUNNING"], listing.stdout
        for dead in (3, 2):  # one line each: what became of it, what to do
            assert (
                f"run {dead} DEAD: its process is gone (killed, or the machine went down); continue it: "
                f"python -m runner resume {dead}"
            ) in listing.stdout
        assert "run 1 " not in listing.stdout  # a live run needs nothing
        live = run_cli(["resume", "1"], tmp_path / "runs")
        assert live.returncode == 2 and f"run 1 is still running (pid {sleeper.pid} on" in live.stderr
        assert f"kill -TERM {sleeper.pid}" in live.stderr and "Traceback" not in live.stderr
    finally:
        sleeper.kill()
        sleeper.wait()
