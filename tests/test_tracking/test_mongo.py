"""MongoDB backend against a real wire-protocol server: the whole record, crashes, parallel writers, auth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import bson
import gridfs
import pandas
import pymongo
import pymongo.errors
import pytest

from dashboard.server import DatabaseServer
from runner.tracking.mongo import (
    CAPTURED_OUT_HEAD,
    CAPTURED_OUT_TAIL,
    COST_METRICS_COLLECTION,
    MARKER,
    SUMMARY_FIELD,
    StrictMongoObserver,
    replay,
    sync,
    truncate_output,
)
from runner.tracking.stores import PROJECT_ROOT, RunLog
from tests.conftest import ROOT, run_cli
from tests.test_tracking.conftest import MONGO, TINY, tiny_run

DOWN_URL = "mongodb://alice:s3cret-pw@127.0.0.1:9/?authSource=admin"  # nothing listens on port 9


def journal_run(runs_dir: Path, run_id) -> Path:
    return runs_dir / "journal" / str(run_id)


def quiet_sync(journal: Path, client, db_name: str) -> dict[str, int]:
    return sync(journal, client, db_name, log=lambda *_: None)


def assert_summaries(doc: dict, journalled: dict) -> None:
    """The run document's metric_summary is the journal's series summarized: last, min, max, epochs."""
    expected = {
        name.replace(".", "__"): {
            "last": m["values"][-1],
            "min": min(m["values"]),
            "max": max(m["values"]),
            "epochs": len(m["values"]),
        }
        for name, m in journalled.items()
    }
    assert doc[SUMMARY_FIELD] == expected


def test_whole_record_in_a_real_server(runs_dir, tmp_path, mongo_db, capsys):
    client, name = mongo_db
    summary = tiny_run(runs_dir, tmp_path / "out", *MONGO, f"tracking.db_name={name}", "train.progress=true")
    db = client[name]
    assert db["runs"].count_documents({}) == 1
    doc = db["runs"].find_one()
    journal = journal_run(runs_dir, summary["run_id"])
    assert doc["status"] == "COMPLETED" and doc["result"] == summary["test_acc"] and doc["command"] == "train"
    assert doc["config"] == json.loads((journal / "config.json").read_text())
    assert doc["config"]["solver"]["method"] == "euler"
    assert doc["info"]["parameters"]["total"] > 0 and doc["info"]["cost"]["fnfe"] == 2.0
    assert doc["meta"]["run_uid"] == json.loads((journal / "run.json").read_text())["meta"]["run_uid"]
    assert doc["captured_out"] == (journal / "cout.txt").read_text() and "epoch" in doc["captured_out"]
    # Every per-epoch series in Sacred's `metrics`, as the journal has them, and summarized on the run.
    journalled = json.loads((journal / "metrics.json").read_text())
    curves = {m["name"]: m for m in db["metrics"].find({"run_id": doc["_id"]})}
    assert set(curves) == set(journalled) and {"nfe.forward", "epoch.time", "mem.train.rss_mb"} <= set(curves)
    assert curves["val.loss"]["steps"] == [1, 2, 3] and curves["nfe.forward"]["values"] == [2.0] * 3
    assert curves["val.loss"]["values"] == journalled["val.loss"]["values"]
    assert {m["name"] for m in doc["info"]["metrics"]} == set(curves)
    assert_summaries(doc, journalled)
    assert not db[COST_METRICS_COLLECTION].count_documents({})
    # read back as incense (the Sacred run loader) reads a run's metrics: the `metrics` collection by run id
    as_incense = {
        m["name"]: pandas.Series(m["values"], index=pandas.Index(m["steps"], name="step"))
        for m in db["metrics"].find({"run_id": doc["_id"]})
    }
    for metric in ("train.loss", "val.acc", "nfe.forward", "nfe.backward", "epoch.time", "mem.train.rss_mb"):
        assert list(as_incense[metric].index) == [1, 2, 3], metric
    indexes = {tuple(i["key"]) for i in db["metrics"].index_information().values()}
    assert (("run_id", 1), ("name", 1)) in indexes
    run_indexes = {tuple(i["key"]) for i in db["runs"].index_information().values()}
    assert {(("status", 1), ("start_time", -1)), (("experiment.name", 1), ("start_time", -1))} <= run_indexes
    assert {(("meta.run_uid", 1),), (("test acc", 1),), (("FNFE", 1),)} <= run_indexes
    sorted_on = {(("metric_summary.val__acc.last", 1),), (("metric_summary.val__loss.min", 1),)}
    assert sorted_on <= run_indexes  # what a listing sorted on a metric reads a range of
    fs = gridfs.GridFS(db)
    sources = dict(doc["experiment"]["sources"])
    assert (
        fs.get(sources["runner/experiment/app.py"]).read()
        == (PROJECT_ROOT / "runner" / "experiment" / "app.py").read_bytes()
    )
    artifacts = {a["name"]: a["file_id"] for a in doc["artifacts"]}
    assert {"best_checkpoint.pt", "confusion_matrix.png", "learning_curves.png", "nfe.png"} <= set(artifacts)
    assert (
        fs.get(artifacts["confusion_matrix.png"]).read()
        == (Path(doc["meta"]["output_dir"]) / "confusion_matrix.png").read_bytes()
    )
    marker = json.loads((journal / MARKER).read_text())
    assert marker["complete"] and marker["mongo_id"] == doc["_id"]
    assert "logging to MongoDB" in capsys.readouterr().out
    assert quiet_sync(runs_dir / "journal", client, name)["pushed"] == 0


def test_database_down_at_start_journals_and_sync_pushes_once(runs_dir, tmp_path, capsys, monkeypatch, mongo_db):
    client, name = mongo_db
    monkeypatch.setenv("MONGO_URL", DOWN_URL)
    summary = tiny_run(runs_dir, tmp_path / "out", *MONGO)
    err = capsys.readouterr().err
    assert err.count("is unreachable") == 1 and "python -m runner sync" in err
    run = journal_run(runs_dir, summary["run_id"])
    assert json.loads((run / "run.json").read_text())["status"] == "COMPLETED"
    assert not json.loads((run / MARKER).read_text())["complete"]

    assert quiet_sync(runs_dir / "journal", client, name) == {"pushed": 1, "already_there": 0, "running": 0}
    assert quiet_sync(runs_dir / "journal", client, name) == {"pushed": 0, "already_there": 1, "running": 0}
    db = client[name]
    assert db["runs"].count_documents({}) == 1
    doc = db["runs"].find_one()
    assert doc["status"] == "COMPLETED" and doc["result"] == summary["test_acc"]
    assert db["metrics"].find_one({"run_id": doc["_id"], "name": "val.acc"})["steps"] == [1, 2, 3]
    assert db["metrics"].find_one({"run_id": doc["_id"], "name": "nfe.forward"})["steps"] == [1, 2, 3]
    assert_summaries(doc, json.loads((run / "metrics.json").read_text()))


def test_server_killed_mid_run_then_restarted_and_synced_exactly_once(runs_dir, tmp_path, monkeypatch, capsys):
    data = tmp_path / "crashing" / "db"
    server = DatabaseServer(data).start()
    monkeypatch.setenv("MONGO_URL", server.url)
    log_metrics = RunLog.log_metrics

    def kill_at_epoch_2(self, metrics, step):
        log_metrics(self, metrics, step)
        if step == 2:
            server.kill()  # SIGKILL, as a crash of the database host

    monkeypatch.setattr(RunLog, "log_metrics", kill_at_epoch_2)
    summary = tiny_run(runs_dir, tmp_path / "out", *MONGO, "tracking.db_name=crash")
    assert capsys.readouterr().err.count("is unreachable") == 1
    run = journal_run(runs_dir, summary["run_id"])
    assert json.loads((run / "run.json").read_text())["status"] == "COMPLETED"
    assert len(json.loads((run / "metrics.json").read_text())["val.loss"]["values"]) == 3

    restarted = DatabaseServer(data).start()  # same data, a new port: the old one may still be held
    try:
        client = pymongo.MongoClient(restarted.url, serverSelectionTimeoutMS=3000)
        db = client["crash"]
        before = db["runs"].find_one()
        assert before["status"] == "RUNNING"  # the run's start reached the database and survived its crash
        for _ in range(2):
            quiet_sync(runs_dir / "journal", client, "crash")
        assert db["runs"].count_documents({}) == 1
        doc = db["runs"].find_one()
        assert doc["_id"] == before["_id"] and doc["status"] == "COMPLETED" and doc["result"] == summary["test_acc"]
        assert db["metrics"].count_documents({"run_id": doc["_id"], "name": "val.loss"}) == 1
        assert db["metrics"].find_one({"run_id": doc["_id"], "name": "val.loss"})["steps"] == [1, 2, 3]
        # A crash after the marker said "complete" loses the end of the run in the database; sync notices.
        db["runs"].update_one({"_id": doc["_id"]}, {"$set": {"status": "RUNNING"}})
        assert quiet_sync(runs_dir / "journal", client, "crash")["pushed"] == 1
        assert db["runs"].find_one()["status"] == "COMPLETED" and db["runs"].count_documents({}) == 1
    finally:
        restarted.stop()


def test_a_crash_during_sync_loses_nothing_and_leaves_no_orphaned_files(runs_dir, tmp_path, monkeypatch, mongo_db):
    client, name = mongo_db
    monkeypatch.setenv("MONGO_URL", DOWN_URL)
    tiny_run(runs_dir, tmp_path / "out", *MONGO)
    quiet_sync(runs_dir / "journal", client, name)
    db, fs = client[name], gridfs.GridFS(client[name])
    first = db["runs"].find_one()
    files = {f._id for f in fs.find()}
    assert files == {file_id for _, file_id in first["experiment"]["sources"]} | {
        a["file_id"] for a in first["artifacts"]
    }
    db["runs"].update_one({"_id": first["_id"]}, {"$set": {"status": "RUNNING"}})  # a write the database lost

    def crash(*_):
        raise pymongo.errors.AutoReconnect("connection closed")  # sync dies half-way through the rewrite

    monkeypatch.setattr(StrictMongoObserver, "artifact_event", crash)
    with pytest.raises(pymongo.errors.AutoReconnect):
        quiet_sync(runs_dir / "journal", client, name)
    assert db["runs"].count_documents({"_id": first["_id"]}) == 1  # still there, under its id
    monkeypatch.undo()

    assert quiet_sync(runs_dir / "journal", client, name)["pushed"] == 1
    doc = db["runs"].find_one()
    assert db["runs"].count_documents({}) == 1 and doc["_id"] == first["_id"] and doc["status"] == "COMPLETED"
    assert db["metrics"].find_one({"run_id": doc["_id"], "name": "val.loss"})["steps"] == [1, 2, 3]
    assert {m["id"] for m in doc["info"]["metrics"]} == {
        str(m["_id"]) for m in db["metrics"].find({"run_id": doc["_id"]})
    }
    assert db["metrics"].find_one({"run_id": doc["_id"], "name": "nfe.forward"})["steps"] == [1, 2, 3]
    assert doc[SUMMARY_FIELD]["val__loss"]["epochs"] == 3  # summarized afresh, not added to the first push's
    referenced = {file_id for _, file_id in doc["experiment"]["sources"]} | {a["file_id"] for a in doc["artifacts"]}
    assert {f._id for f in fs.find()} == referenced  # nothing orphaned: not the first push's, not the crashed attempt's
    assert not files & referenced and len(referenced) == len(files)


def older_layout(db, run_id) -> dict[str, str]:
    """Turn run `run_id` into what an older version wrote: its cost series in `cost_metrics`, not named in
    info.metrics, no metric_summary. Returns the moved series' ids by name."""
    moved = {}
    for series in db["metrics"].find({"run_id": run_id}):
        if {"nfe", "fnfe", "time", "mem"} & set(series["name"].split(".")):
            db[COST_METRICS_COLLECTION].insert_one(series)
            db["metrics"].delete_one({"_id": series["_id"]})
            moved[series["name"]] = series["_id"]
    db["runs"].update_one(
        {"_id": run_id},
        {"$pull": {"info.metrics": {"name": {"$in": list(moved)}}}, "$unset": {SUMMARY_FIELD: 1}},
    )
    db["odeflow.layout"].drop()
    return moved


def test_cost_series_an_older_version_kept_apart_move_into_metrics_on_the_next_sync(runs_dir, tmp_path, mongo_db):
    client, name = mongo_db
    summary = tiny_run(runs_dir, tmp_path / "out", *MONGO, f"tracking.db_name={name}")
    db = client[name]
    moved = older_layout(db, summary["run_id"])
    assert {"nfe.forward", "epoch.time", "mem.train.rss_mb"} <= set(moved)
    assert db["metrics"].count_documents({"name": "nfe.forward"}) == 0

    assert quiet_sync(runs_dir / "journal", client, name)["pushed"] == 0  # the run itself is complete there
    doc = db["runs"].find_one({"_id": summary["run_id"]})
    series = {m["name"]: m for m in db["metrics"].find({"run_id": doc["_id"]})}
    assert {metric: series[metric]["_id"] for metric in moved} == moved  # same ids: links to them still hold
    assert series["nfe.forward"]["steps"] == [1, 2, 3]
    assert {m["name"]: m["id"] for m in doc["info"]["metrics"]} == {n: str(m["_id"]) for n, m in series.items()}
    assert_summaries(doc, json.loads((journal_run(runs_dir, summary["run_id"]) / "metrics.json").read_text()))
    assert db[COST_METRICS_COLLECTION].count_documents({}) == 0
    quiet_sync(runs_dir / "journal", client, name)  # again: nothing moves twice
    assert len(db["runs"].find_one({"_id": doc["_id"]})["info"]["metrics"]) == len(series)
    assert db["metrics"].count_documents({"run_id": doc["_id"]}) == len(series)


def test_two_parallel_trials_get_unique_ids_and_lose_nothing(runs_dir, mongo_db):
    client, name = mongo_db
    proc = run_cli(
        [
            "-m",
            *TINY,
            *MONGO,
            f"tracking.db_name={name}",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "seed=0,1",
            "train.num_threads=1",
            "train.progress=false",
        ],
        runs_dir,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    db = client[name]
    docs = list(db["runs"].find({}, {"_id": 1, "status": 1, "meta": 1, "info.metrics": 1}))
    assert len(docs) == 2 and len({d["_id"] for d in docs}) == 2
    assert {d["status"] for d in docs} == {"COMPLETED"}
    assert {d["meta"]["run_uid"] for d in docs} == {
        json.loads((p / "run.json").read_text())["meta"]["run_uid"]
        for p in (runs_dir / "journal").iterdir()
        if p.name.isdigit()
    }
    for d in docs:
        assert db["metrics"].find_one({"run_id": d["_id"], "name": "val.loss"})["steps"] == [1, 2, 3]
    assert quiet_sync(runs_dir / "journal", client, name) == {"pushed": 0, "already_there": 2, "running": 0}


def test_a_run_has_its_database_id_everywhere_in_a_database_that_holds_other_runs(tmp_path, mongo_db):
    """Machine A logs run 1; from an empty runs folder `reproduce 1` must be database run 2 in every place."""
    client, name = mongo_db
    machine_a, machine_b = tmp_path / "a", tmp_path / "b"
    original = tiny_run(machine_a, tmp_path / "out", *MONGO, f"tracking.db_name={name}")
    assert original["run_id"] == 1
    proc = run_cli(["reproduce", "1", "tracking=mongo", f"tracking.db_name={name}"], machine_b, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "run 1 reproduced as run 2:" in proc.stdout and 'Started run with ID "2"' in proc.stderr
    db = client[name]
    copy = db["runs"].find_one({"_id": 2})
    assert (
        copy["meta"]["reproduces"] == 1
        and copy["meta"]["run_uid"] != db["runs"].find_one({"_id": 1})["meta"]["run_uid"]
    )
    times = [db["metrics"].find_one({"run_id": i, "name": "epoch.time"})["values"] for i in (1, 2)]
    assert times[0] != times[1]  # two runs compared, not one with itself
    assert "epoch.time" in proc.stdout and "\nMATCH:" in proc.stdout
    assert "pkg_resources" not in proc.stderr and "warning:" not in proc.stdout.replace("warning: git", "")
    journal = machine_b / "journal" / "1"  # the journal numbers its own folders
    assert json.loads((journal / MARKER).read_text())["mongo_id"] == 2


def test_wrong_password_one_clear_message_and_the_run_journalled(runs_dir, tmp_path):
    with DatabaseServer(tmp_path / "auth" / "db", user="odeflow", password="right-pw") as server:
        wrong = server.url.replace("right-pw", "wrong-pw")
        env = {"MONGO_URL": wrong}
        proc = run_cli([*TINY, *MONGO, "train.progress=false"], runs_dir, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        lines = [line for line in proc.stderr.splitlines() if "MongoDB" in line]
        assert len(lines) == 1 and "refused the user name or password in MONGO_URL" in lines[0]
        assert "python -m runner sync" in lines[0] and "wrong-pw" not in proc.stderr + proc.stdout
        record = json.loads((runs_dir / "journal" / "1" / "run.json").read_text())
        assert record["status"] == "COMPLETED"

        refused = run_cli(["sync"], runs_dir, env=env)
        assert refused.returncode == 2 and "refused the user name or password" in refused.stderr
        assert "Traceback" not in refused.stderr and "wrong-pw" not in refused.stderr
        pushed = run_cli(["sync"], runs_dir, env={"MONGO_URL": server.url})
        assert pushed.returncode == 0 and "1 pushed" in pushed.stdout, pushed.stderr
        client = pymongo.MongoClient(server.url)
        assert client["odeflow"]["runs"].find_one({"meta.run_uid": record["meta"]["run_uid"]})["status"] == "COMPLETED"


def test_password_never_logged_or_printed(runs_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MONGO_URL", DOWN_URL)
    summary = tiny_run(runs_dir, tmp_path / "out", *MONGO)
    out = capsys.readouterr()
    run = journal_run(runs_dir, summary["run_id"])
    logged = [out.out, out.err] + [
        p.read_text(errors="replace") for p in run.iterdir() if p.suffix in (".json", ".txt")
    ]
    assert not any("s3cret-pw" in text for text in logged)
    assert (
        json.loads((run / "config.json").read_text())["tracking"]["url"]
        == "mongodb://alice:***@127.0.0.1:9/?authSource=admin"
    )


def test_documents_stay_far_below_16_mb(runs_dir, tmp_path, monkeypatch, mongo_db):
    client, name = mongo_db
    monkeypatch.setenv("MONGO_URL", DOWN_URL)
    run = journal_run(runs_dir, tiny_run(runs_dir, tmp_path / "out", *MONGO)["run_id"])
    (run / "cout.txt").write_text("epoch line of a very chatty run\n" * 1_000_000)  # 32 MB of output
    replay(run, client, name)
    doc = client[name]["runs"].find_one()
    assert len(bson.encode(doc)) < 4 * 1024 * 1024
    assert "characters cut here" in doc["captured_out"]


def test_truncate_output_keeps_head_and_tail():
    text = "a" * CAPTURED_OUT_HEAD + "b" * 5_000_000 + "c" * CAPTURED_OUT_TAIL
    cut = truncate_output(text)
    assert cut.startswith("a" * CAPTURED_OUT_HEAD) and cut.endswith("c" * CAPTURED_OUT_TAIL)
    assert truncate_output("short") == "short"


def test_the_runner_reads_mongo_url_from_dot_env(runs_dir, tmp_path, mongo_db):
    """`python -m runner tracking=mongo` finds MONGO_URL in .env, as docker compose does.

    The environment wins."""
    client, name = mongo_db
    dot_env = tmp_path / ".env"
    dot_env.write_text(f"MONGO_URL={os.environ['MONGO_URL']}\n")
    env = {k: v for k, v in os.environ.items() if k != "MONGO_URL"}
    proc = subprocess.run(
        [sys.executable, "-m", "runner", *TINY, *MONGO, f"tracking.db_name={name}", "train.progress=false"],
        cwd=ROOT,
        env={**env, "ODEFLOW_RUNS": str(runs_dir), "ODEFLOW_ENV_FILE": str(dot_env)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "logging to MongoDB" in proc.stdout, proc.stderr[-2000:]
    assert client[name]["runs"].count_documents({"status": "COMPLETED"}) == 1
    proc = run_cli(
        ["runs", "list", "tracking=mongo", f"tracking.db_name={name}"],
        runs_dir,
        env={"ODEFLOW_ENV_FILE": str(dot_env), "MONGO_URL": DOWN_URL},
    )
    assert "is unreachable" in proc.stderr  # MONGO_URL in the environment wins over .env


def _journalled(journal: Path, folder: int, uid: str, status: str, **links) -> None:
    """A journal run folder as the file observer writes it, its meta holding `links` (key: (id, uid))."""
    run_dir = journal / str(folder)
    run_dir.mkdir(parents=True)
    meta = {"run_uid": uid, **{k: v[0] for k, v in links.items()}, **{f"{k}_uid": v[1] for k, v in links.items()}}
    record = {
        "experiment": {"name": "odeflow", "sources": []},
        "command": "train",
        "host": {"hostname": "h"},
        "start_time": "2026-01-01T00:00:00",
        "stop_time": "2026-01-01T00:01:00",
        "heartbeat": "2026-01-01T00:01:00",
        "status": status,
        "meta": meta,
        "artifacts": [],
        **({"fail_trace": ["OSError: [Errno 28] No space left on device\n"]} if status == "FAILED" else {}),
    }
    (run_dir / "run.json").write_text(json.dumps(record))
    (run_dir / "config.json").write_text(json.dumps({"seed": 0}))
    (run_dir / "metrics.json").write_text(json.dumps({"val.loss": {"values": [1.0], "steps": [1], "timestamps": [
        "2026-01-01T00:00:30"]}}))  # fmt: skip


def test_links_between_runs_name_the_runs_ids_in_the_database_they_were_pushed_to(tmp_path, mongo_db, capsys):
    from runner.cli import main

    client, name = mongo_db
    db = client[name]
    db["runs"].insert_many([{"_id": 1, "meta": {"run_uid": "other-1"}}, {"_id": 2, "meta": {"run_uid": "other-2"}}])
    journal = tmp_path / "journal"
    # Run 1 filled the disk, run 2 resumed it; run 3 re-evaluates run 2; in the journal's own numbering.
    _journalled(journal, 1, "uid-a", "FAILED", continued_as=(2, "uid-b"))
    _journalled(journal, 2, "uid-b", "COMPLETED", resumed_from=(1, "uid-a"))
    _journalled(journal, 3, "uid-c", "COMPLETED", reevaluates=(2, "uid-b"))
    _journalled(journal, 4, "uid-d", "COMPLETED", reproduces=(9, "uid-not-pushed"))

    def ids() -> dict[str, int]:
        return {doc["meta"]["run_uid"]: doc["_id"] for doc in db["runs"].find({}, {"meta.run_uid": 1})}

    for _ in range(2):  # synced twice: the second changes nothing
        quiet_sync(journal, client, name)
        by_uid = ids()
        assert by_uid["uid-a"] != 1 and len(by_uid) == 6  # new ids there, none of the journal's
        meta = {uid: db["runs"].find_one({"_id": i})["meta"] for uid, i in by_uid.items()}
        assert meta["uid-a"]["continued_as"] == by_uid["uid-b"]
        assert meta["uid-b"]["resumed_from"] == by_uid["uid-a"]
        assert meta["uid-c"]["reevaluates"] == by_uid["uid-b"]
        assert meta["uid-d"]["reproduces"] is None and meta["uid-d"]["reproduces_uid"] == "uid-not-pushed"

    # The run a link named arrives later, pushed on its own: the link of the run already there finds it then.
    _journalled(journal, 5, "uid-not-pushed", "COMPLETED")
    quiet_sync(journal, client, name)
    by_uid = ids()
    assert db["runs"].find_one({"_id": by_uid["uid-d"]})["meta"]["reproduces"] == by_uid["uid-not-pushed"]

    # Copied by the dashboard into a database of its own (other ids again): the links follow there too.
    import threading

    from dashboard.copy import Copier

    copy_db = client[f"{name}_copy"]
    copy_db["runs"].insert_one({"_id": 1, "meta": {"run_uid": "other-1"}})
    try:
        copier = Copier(copy_db, [journal], threading.Event(), log=lambda *_: None)
        copier.run()
        assert copier.error is None and copier.finished
        copied = {doc["meta"]["run_uid"]: doc for doc in copy_db["runs"].find({}, {"meta": 1})}
        assert copied["uid-b"]["meta"]["resumed_from"] == copied["uid-a"]["_id"] != by_uid["uid-a"]
        assert copied["uid-a"]["meta"]["continued_as"] == copied["uid-b"]["_id"]
    finally:
        client.drop_database(f"{name}_copy")

    listing = run_cli(["runs", "list", "tracking=mongo", f"tracking.db_name={name}"], tmp_path)
    assert f"run {by_uid['uid-a']} FAILED (the disk was full): nothing to do: continued as run {by_uid['uid-b']}" in (
        listing.stdout
    ), listing.stdout + listing.stderr
    # --status on the database's runs too (the server filters): FAILED as recorded, SUPERSEDED as linked.
    db["runs"].update_one({"_id": by_uid["uid-c"]}, {"$set": {"meta.superseded_by_uid": "uid-d"}})
    capsys.readouterr()
    for status, run_id in (("failed", by_uid["uid-a"]), ("SUPERSEDED", by_uid["uid-c"])):
        assert main(["runs", "list", "tracking=mongo", f"tracking.db_name={name}", "--status", status]) == 0
        shown = capsys.readouterr().out
        rows = [line.split() for line in shown.splitlines()[1:] if line.split()[1:2] == ["odeflow"]]
        assert [row[0] for row in rows] == [str(run_id)] and "1 run matched" in shown, shown


def test_the_same_reevaluation_asked_for_again_in_mongodb_logs_no_second_run(runs_dir, tmp_path, mongo_db, capsys):
    from runner.cli import main

    client, name = mongo_db
    tiny_run(runs_dir, tmp_path / "out", *MONGO, f"tracking.db_name={name}")
    command = ["reevaluate", "1", "--grid", "euler:0.5", *MONGO, f"tracking.db_name={name}", f"paths.runs={runs_dir}"]
    assert main(command) == 0
    capsys.readouterr()
    assert main(command) == 0
    again = capsys.readouterr().out
    assert client[name]["runs"].count_documents({}) == 2, again  # the training run and one re-evaluation
    assert "as run 2: nothing new is logged" in again and "ODE-ness gap" in again  # its table, out of GridFS


def test_a_database_that_stops_answering_during_a_listing_is_one_line(tmp_path, mongo_db, capsys, monkeypatch):
    """The server answered when the command began, then failed under a query (killed, or its client's monitor
    gave up on it): one line naming the cause and the fix, no traceback. The reading client waits for a busy
    server far longer than the 3 s that find an unreachable one."""
    import pymongo.errors

    from runner.cli import main, source_of
    from runner.tracking.listing import MongoSource
    from runner.tracking.stores import PATIENT_CONNECT_MS, MongoStore

    client, name = mongo_db
    client[name]["runs"].insert_one({"_id": 1, "status": "COMPLETED"})
    source = source_of(MongoStore(url=os.environ["MONGO_URL"], db_name=name, journal_dir=str(tmp_path / "j")))
    assert source.client.options.pool_options.connect_timeout * 1000 == PATIENT_CONNECT_MS
    assert source.client.options.server_selection_timeout == 3

    def cancelled(self, query, exact_count=False):
        raise pymongo.errors.AutoReconnect("operation cancelled")

    monkeypatch.setattr(MongoSource, "page", cancelled)
    code = main(["runs", "list", "tracking=mongo", f"tracking.db_name={name}", f"tracking.journal_dir={tmp_path}/j"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert err.startswith("error: MongoDB stopped answering during this command (AutoReconnect: operation cancelled)")
    assert "\n  fix: check that the server still runs" in err
