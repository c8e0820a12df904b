"""Counting the runs of a MongoDB database within a time budget (runner.tracking.mongo_counts), on the real
MongoDB-wire server: exact while the budget lasts, an estimate labelled as one beyond it, the same answer as the
server's own count wherever the count finishes."""

from __future__ import annotations

import contextlib
import random
import uuid

import pymongo
import pytest

from runner.tracking import mongo_counts
from runner.tracking.listing import MongoSource, Query
from runner.tracking.mongo_counts import RunCounter, top_run_id
from tests.conftest import run_cli

CONDITIONS = [{}, {"status": "FAILED"}, {"config.lr": {"$lt": 0.3}, "status": "COMPLETED"}, {"_id": {"$lt": 700}}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A SecantusDB server of this module's own, in this process, with mongod's test commands (its failpoints)."""
    from secantus import SecantusDBServer

    from dashboard.server import free_port

    port = free_port()
    server = SecantusDBServer(
        host="127.0.0.1",
        port=port,
        storage_path=str(tmp_path_factory.mktemp("counts")),
        replica_set_name=None,
        enable_test_commands=True,
        sync_on_commit=False,
    )
    server.start()
    client = pymongo.MongoClient(f"mongodb://127.0.0.1:{port}", serverSelectionTimeoutMS=5000)
    rng = random.Random(3)
    ids = sorted(rng.sample(range(1, 1501), 1200))
    statuses = ["COMPLETED"] * 3 + ["FAILED"]
    client["counts"]["runs"].insert_many(
        [{"_id": i, "status": rng.choice(statuses), "config": {"lr": rng.random()}} for i in ids]
    )
    yield client, f"mongodb://127.0.0.1:{port}"
    client.close()
    server.stop()


@pytest.fixture
def runs(server):
    """1,200 run documents with ids 1..1,500 (some deleted), a status and a learning rate."""
    return server[0]["counts"]["runs"]


@pytest.fixture
def empty_db(server):
    client = server[0]
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield client[name]
    client.drop_database(name)


@contextlib.contextmanager
def time_limits_running_out(client):
    """mongod's failpoint: every operation with a time limit (maxTimeMS) runs out of it at once."""
    client.admin.command("configureFailPoint", "maxTimeAlwaysTimeOut", mode="alwaysOn")
    try:
        yield
    finally:
        client.admin.command("configureFailPoint", "maxTimeAlwaysTimeOut", mode="off")


def test_counts_within_the_budget_are_the_servers(runs):
    for condition in CONDITIONS:
        count = RunCounter(runs).count(condition)
        assert (count.n, count.exact) == (runs.count_documents(condition), True), condition
        assert str(count) == f"{count.n:,}"


@pytest.mark.parametrize("chunks_in_budget", [0, 1, 6])
def test_ranges_counted_before_the_budget_ends_and_a_sample_of_the_rest_add_up(runs, monkeypatch, chunks_in_budget):
    """A budget that lets a few ranges of ids be counted; the sample then reads every id left (SAMPLE above them),
    so the sum is the server's count exactly when no range is counted twice or left out."""
    monkeypatch.setattr(mongo_counts, "COUNT_CHUNK", 100)
    monkeypatch.setattr(mongo_counts, "SAMPLE", 2000)
    calls = {"n": 0}

    def left_ms(self) -> int:
        calls["n"] += 1
        return 1000 if calls["n"] <= chunks_in_budget else 0

    monkeypatch.setattr(RunCounter, "_left_ms", left_ms)
    for condition in [*CONDITIONS[1:], {"config.lr": {"$gte": 0}}]:  # the last: every run, boundaries too
        calls["n"] = 0
        count = RunCounter(runs).count(condition)
        assert (count.n, count.exact) == (runs.count_documents(condition), False), condition


def test_an_estimate_from_a_sample_is_near_the_count_and_says_so(runs, monkeypatch):
    monkeypatch.setattr(mongo_counts, "COUNT_BUDGET_S", 0.0)
    monkeypatch.setattr(mongo_counts, "SAMPLE", 300)
    top = top_run_id(runs)
    for condition in CONDITIONS:
        count, truth = RunCounter(runs).count(condition), runs.count_documents(condition)
        share = truth / top  # of the ids 1..top; three standard deviations of a sample of 300 of them
        assert not count.exact and abs(count.n - truth) <= 3 * (share * (1 - share) / 300) ** 0.5 * top + 1
        assert str(count).startswith("about ")


def test_the_servers_time_limit_ends_a_count_of_every_run(server, runs):
    """estimated_document_count under maxTimeMS: the server's own time-out (its failpoint) gives an estimate."""
    with time_limits_running_out(server[0]):
        count = RunCounter(runs).count({})
    assert not count.exact and abs(count.n - 1200) <= 60
    assert RunCounter(runs, exact=True).count({}).exact


def test_conditions_the_ranges_cannot_narrow_are_counted_by_the_server(runs, monkeypatch):
    monkeypatch.setattr(mongo_counts, "COUNT_BUDGET_S", 0.0)
    for condition in ({"$or": [{"status": "FAILED"}, {"config.lr": {"$lt": 0.1}}]}, {"_id": {"$in": [3, 5, 7]}}):
        count = RunCounter(runs).count(condition)
        assert (count.n, count.exact) == (runs.count_documents(condition), True)


@pytest.mark.parametrize(
    "ids, top",
    [(range(1, 301), 300), ([*range(1, 200, 3), 5000], 199), ([70, 80], None), ([], None), (range(1, 20), 19)],
    ids=["dense", "a-gap-hides-5000", "none-in-the-first-range", "empty", "few"],
)
def test_the_highest_run_id_is_found_from_ranges(empty_db, ids, top):
    if ids:
        empty_db["runs"].insert_many([{"_id": i} for i in ids])
    assert top_run_id(empty_db["runs"]) == top


def test_ids_of_other_types_have_no_highest_run_id(empty_db):
    empty_db["runs"].insert_many([{"_id": 1}, {"_id": 2}, {"_id": "imported"}])
    assert top_run_id(empty_db["runs"]) is None
    assert RunCounter(empty_db["runs"]).count({"_id": {"$gt": 0}}).n == 2


def test_a_listing_with_an_estimated_count_says_so_and_pages_on(server, runs, monkeypatch, tmp_path):
    client, url = server
    monkeypatch.setattr(mongo_counts, "COUNT_BUDGET_S", 0.0)
    source = MongoSource(client, "counts")
    page = source.page(Query.parse("status = 'FAILED'", limit=20))
    assert not page.total_exact and not page.store_size_exact
    assert Query.parse("status = 'FAILED'", limit=20).next_page_token(page) is not None
    exact = source.page(Query.parse("status = 'FAILED'", limit=20), exact_count=True)
    assert (exact.total, exact.total_exact) == (runs.count_documents({"status": "FAILED"}), True)
    assert [r["id"] for r in exact.rows] == [r["id"] for r in page.rows]
    last = source.page(Query.parse("id > 1490", limit=20))  # not a full page: it tells how many match, no count
    assert (last.total, last.total_exact) == (len(last.rows), True)
    beyond = source.page(Query.parse("status = 'FAILED'", limit=0, offset=5000), exact_count=True)  # past the end
    assert beyond.rows == [] and beyond.total == exact.total

    # the command line, the server's time limits running out: the count estimated and labelled; --exact-count
    listing = ["runs", "list", "tracking=mongo", "tracking.db_name=counts", "--limit", "5"]
    with time_limits_running_out(client):
        listed = run_cli(listing, tmp_path, env={"MONGO_URL": url})
        counted = run_cli([*listing, "--exact-count"], tmp_path, env={"MONGO_URL": url})
    assert listed.returncode == 0, listed.stderr
    assert "runs 1-5 of about 1," in listed.stdout and "--exact-count waits for it" in listed.stdout
    assert "runs 1-5 of 1,200 matched" in counted.stdout and "about" not in counted.stdout
