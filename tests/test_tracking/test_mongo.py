"""MongoDB backend against mongomock: the run document, metrics and artifacts; faults; sync; masking."""
from __future__ import annotations

import json
from pathlib import Path

import bson
import gridfs
import mongomock
import pymongo.errors
import pytest

from runner.mongo import CAPTURED_OUT_HEAD, CAPTURED_OUT_TAIL, MARKER, replay, sync, truncate_output
from tests.test_tracking.conftest import tiny_run

MONGO = ["tracking=mongo", "tracking.db_name=odeflow_test", "tracking.timeout_ms=300"]
DOWN_URL = "mongodb://alice:s3cret-pw@127.0.0.1:9/?authSource=admin"  # nothing listens on port 9


def journal_run(runs_dir: Path, run_id) -> Path:
    return runs_dir / "journal" / str(run_id)


def test_run_document_metrics_and_artifacts(runs_dir, tmp_path, mongo_client, capsys):
    summary = tiny_run(runs_dir, tmp_path / "out", *MONGO)
    db = mongo_client["odeflow_test"]
    doc = db["runs"].find_one()
    assert db["runs"].count_documents({}) == 1
    assert doc["status"] == "COMPLETED" and doc["result"] == summary["test_acc"]
    assert doc["config"]["solver"]["method"] == "euler"
    assert doc["info"]["parameters"]["total"] > 0
    assert doc["meta"]["run_uid"] == json.loads((journal_run(runs_dir, summary["run_id"]) / "run.json").read_text())["meta"]["run_uid"]
    metrics = {m["name"]: m for m in db["metrics"].find({"run_id": doc["_id"]})}
    assert metrics["val.loss"]["steps"] == [1, 2, 3] and len(metrics["nfe.forward"]["values"]) == 3
    fs = gridfs.GridFS(db)
    artifacts = {a["name"]: a["file_id"] for a in doc["artifacts"]}
    assert fs.get(artifacts["learning_curves.png"]).read()[:4] == b"\x89PNG"
    assert len(doc["experiment"]["sources"]) > 5
    marker = json.loads((journal_run(runs_dir, summary["run_id"]) / MARKER).read_text())
    assert marker["complete"] and marker["mongo_id"] == doc["_id"]
    assert "logging to MongoDB" in capsys.readouterr().out


def test_database_down_at_start_journals_and_sync_pushes_once(runs_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MONGO_URL", DOWN_URL)
    summary = tiny_run(runs_dir, tmp_path / "out", *MONGO)
    err = capsys.readouterr().err
    assert err.count("is unreachable") == 1 and "python -m runner sync" in err
    run = journal_run(runs_dir, summary["run_id"])
    assert json.loads((run / "run.json").read_text())["status"] == "COMPLETED"
    assert not json.loads((run / MARKER).read_text())["complete"]

    mongomock.gridfs.enable_gridfs_integration()
    client = mongomock.MongoClient()
    assert sync(runs_dir / "journal", client, "odeflow_test", log=lambda *_: None) == {"pushed": 1, "already_there": 0, "running": 0}
    assert sync(runs_dir / "journal", client, "odeflow_test", log=lambda *_: None) == {"pushed": 0, "already_there": 1, "running": 0}
    db = client["odeflow_test"]
    assert db["runs"].count_documents({}) == 1
    doc = db["runs"].find_one()
    assert doc["status"] == "COMPLETED" and doc["result"] == summary["test_acc"]
    assert db["metrics"].find_one({"run_id": doc["_id"], "name": "val.acc"})["steps"] == [1, 2, 3]


def test_database_lost_mid_run_finishes_and_sync_completes_the_document(runs_dir, tmp_path, mongo_client, monkeypatch, capsys):
    original = mongomock.collection.Collection.update_one
    calls = {"n": 0}

    def failing_update_one(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise pymongo.errors.AutoReconnect("connection closed")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(mongomock.collection.Collection, "update_one", failing_update_one)
    summary = tiny_run(runs_dir, tmp_path / "out", *MONGO)
    assert capsys.readouterr().err.count("is unreachable") == 1
    run = journal_run(runs_dir, summary["run_id"])
    assert json.loads((run / "run.json").read_text())["status"] == "COMPLETED"
    assert len(json.loads((run / "metrics.json").read_text())["val.loss"]["values"]) == 3
    db = mongo_client["odeflow_test"]
    assert db["runs"].find_one()["status"] == "RUNNING"  # what reached the database before it went away

    monkeypatch.setattr(mongomock.collection.Collection, "update_one", original)
    for _ in range(2):
        sync(runs_dir / "journal", mongo_client, "odeflow_test", log=lambda *_: None)
    assert db["runs"].count_documents({}) == 1
    doc = db["runs"].find_one()
    assert doc["status"] == "COMPLETED"
    assert db["metrics"].count_documents({"run_id": doc["_id"], "name": "val.loss"}) == 1
    assert db["metrics"].find_one({"run_id": doc["_id"], "name": "val.loss"})["steps"] == [1, 2, 3]


def test_password_never_logged_or_printed(runs_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MONGO_URL", DOWN_URL)
    summary = tiny_run(runs_dir, tmp_path / "out", *MONGO)
    out = capsys.readouterr()
    run = journal_run(runs_dir, summary["run_id"])
    logged = [out.out, out.err] + [p.read_text(errors="replace") for p in run.iterdir() if p.suffix in (".json", ".txt")]
    assert not any("s3cret-pw" in text for text in logged)
    assert json.loads((run / "config.json").read_text())["tracking"]["url"] == "mongodb://alice:***@127.0.0.1:9/?authSource=admin"


def test_documents_stay_far_below_16_mb(runs_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MONGO_URL", DOWN_URL)
    run = journal_run(runs_dir, tiny_run(runs_dir, tmp_path / "out", *MONGO)["run_id"])
    (run / "cout.txt").write_text("epoch line of a very chatty run\n" * 1_000_000)  # 32 MB of output
    mongomock.gridfs.enable_gridfs_integration()
    client = mongomock.MongoClient()
    replay(run, client, "big")
    doc = client["big"]["runs"].find_one()
    assert len(bson.encode(doc)) < 4 * 1024 * 1024
    assert "characters cut here" in doc["captured_out"]


def test_truncate_output_keeps_head_and_tail():
    text = "a" * CAPTURED_OUT_HEAD + "b" * 5_000_000 + "c" * CAPTURED_OUT_TAIL
    cut = truncate_output(text)
    assert cut.startswith("a" * CAPTURED_OUT_HEAD) and cut.endswith("c" * CAPTURED_OUT_TAIL)
    assert truncate_output("short") == "short"


@pytest.mark.mongo
def test_whole_record_against_a_real_server(runs_dir, tmp_path):
    """Opt-in: MONGO_URL=mongodb://... pytest -m mongo (see README, `make up`)."""
    import os

    url = os.environ.get("MONGO_URL")
    if not url:
        pytest.skip("MONGO_URL is not set")
    client = pymongo.MongoClient(url, serverSelectionTimeoutMS=3000)
    db_name = "odeflow_pytest"
    client.drop_database(db_name)
    summary = tiny_run(runs_dir, tmp_path / "out", "tracking=mongo", f"tracking.db_name={db_name}")
    doc = client[db_name]["runs"].find_one()
    assert doc["status"] == "COMPLETED" and doc["result"] == summary["test_acc"]
    assert client[db_name]["metrics"].count_documents({"run_id": doc["_id"]}) >= 7
    assert sync(runs_dir / "journal", client, db_name, log=lambda *_: None)["pushed"] == 0
    client.drop_database(db_name)
