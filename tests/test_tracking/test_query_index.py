"""The query language and the file store's index, on small synthetic stores checked against brute force, and
the same queries on the real MongoDB-wire server."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from pathlib import Path

import pytest

from odeflow.errors import UserError
from runner.tracking import listing
from runner.tracking import query as q
from runner.tracking.index import INDEX_FILE, RunIndex, folder_signature, using_index
from runner.tracking.listing import FileSource, MongoSource, Query
from tests.conftest import run_cli

SOLVERS = ("euler", "rk4", "dopri5")
RUNS = 600
ISSUE_QUERY = "metrics.val.acc > 0.9 and config.solver.method = 'rk4' and config.train.lr < 1e-3"


def write_run(store: Path, run_id: int, rng: random.Random) -> dict:
    """A run folder in Sacred's file format with random values; returns what the test knows of it."""
    epochs = rng.randint(0, 5)
    acc = [round(rng.random() ** 0.3, 3) for _ in range(epochs)]  # a third above 0.9
    solver = rng.choice(SOLVERS)
    lr = rng.choice([1e-4, 5e-4, 1e-3, 2e-3, 1e-2])
    config = {"solver": {"method": solver}, "train": {"lr": lr, "max_epochs": epochs}, "seed": run_id}
    if rng.random() < 0.1:
        del config["train"]["lr"]  # a run logged before the key existed
    status = rng.choice(["COMPLETED", "COMPLETED", "FAILED", "INTERRUPTED"])
    start = f"2026-01-{1 + run_id % 28:02d}T10:00:{run_id % 60:02d}.000000"
    run = {
        "experiment": {"name": rng.choice(["quickstart", "thesis_a", "thesis_b"])},
        "status": status,
        "start_time": start,
        "stop_time": start,
        "host": {"hostname": "node1"},
        "meta": {"choices": {"model": "odenet_simple", "data": "spheres"}},
        "result": acc[-1] if acc else None,
        "artifacts": [],
    }
    metrics = {"val.acc": {"steps": list(range(1, epochs + 1)), "values": acc, "timestamps": [start] * epochs}}
    folder = store / str(run_id)
    folder.mkdir(parents=True)
    for name, content in (("run.json", run), ("config.json", config), ("info.json", {}), ("metrics.json", metrics)):
        (folder / name).write_text(json.dumps(content))
    return {
        "id": run_id,
        "acc": acc[-1] if acc else None,
        "max_acc": max(acc) if acc else None,
        "solver": solver,
        "lr": config["train"].get("lr"),
        "status": status,
    }


@pytest.fixture
def synthetic(tmp_path: Path) -> tuple[Path, list[dict]]:
    store = tmp_path / "runs" / "store"
    rng = random.Random(7)
    return store, [write_run(store, i, rng) for i in range(1, RUNS + 1)]


def listed(store: Path, where: str | None = None, sort: str | None = None, limit: int = 0, **kw) -> list[int]:
    return [row["id"] for row in FileSource(store).page(Query.parse(where, sort, limit, **kw)).rows]


def test_the_issues_query_gives_exactly_the_brute_force_runs_in_order(synthetic):
    store, runs = synthetic
    chosen = [r for r in runs if r["acc"] is not None and r["acc"] > 0.9 and r["solver"] == "rk4"]
    chosen = [r for r in chosen if r["lr"] is not None and r["lr"] < 1e-3]
    expected = [r["id"] for r in sorted(chosen, key=lambda r: (-r["acc"], -r["id"]))][:10]
    assert len(chosen) > 10  # the limit cuts
    assert listed(store, ISSUE_QUERY, "-metrics.val.acc", 10) == expected
    page = FileSource(store).page(Query.parse(ISSUE_QUERY, "-metrics.val.acc", 10))
    assert page.total == len(chosen) and page.store_size == RUNS
    proc = run_cli(
        ["runs", "list", "--where", ISSUE_QUERY, "--sort", "-metrics.val.acc", "--limit", "10"], store.parent
    )
    assert proc.returncode == 0, proc.stderr
    table = [line for line in proc.stdout.splitlines()[1:-1] if not line.startswith("run ")]  # notes under it
    ids = [int(line.split()[0]) for line in table]
    assert ids == expected
    assert proc.stdout.splitlines()[-1].startswith(f"runs 1-10 of {len(chosen)} matched ({RUNS} in the store)")


def test_default_listing_is_the_newest_50_and_the_footer_counts_all(synthetic):
    store, _ = synthetic
    assert listed(store, limit=50) == list(range(RUNS, RUNS - 50, -1))
    assert listed(store, limit=5, offset=10) == list(range(RUNS - 10, RUNS - 15, -1))
    assert len(listed(store)) == RUNS  # --limit 0
    proc = run_cli(["runs", "list"], store.parent)
    lines = [line for line in proc.stdout.splitlines() if not line.startswith("run ")]  # less the runs' notes
    assert len(lines) == 52 and lines[-1].startswith(f"runs 1-50 of {RUNS} matched; --limit 0 for all, --page-token ")
    token = lines[-1].split("--page-token ")[1].split()[0]
    proc = run_cli(["runs", "list", "--page-token", token], store.parent)
    lines = [line for line in proc.stdout.splitlines() if not line.startswith("run ")]  # less the runs' notes
    assert [int(line.split()[0]) for line in lines[1:-1]] == list(range(RUNS - 50, RUNS - 100, -1))
    assert lines[-1].startswith(f"runs 51-100 of {RUNS} matched;")


def pages(source, where: str | None = None, sort: str | None = None, limit: int = 7) -> list[list[int]]:
    """Every page of a query, each from the token of the page before."""
    found, query = [], Query.parse(where, sort, limit)
    while True:
        page = source.page(query)
        found.append([row["id"] for row in page.rows])
        token = query.next_page_token(page)
        if token is None:
            return found
        query = Query.parse(where, sort, limit, page_token=token)


@pytest.mark.parametrize(
    "where, sort", [(None, None), (ISSUE_QUERY, "-metrics.val.acc"), ("id > 590", "config.train.lr")]
)
def test_page_tokens_walk_every_match_once_in_order(synthetic, where, sort):
    store, _ = synthetic
    walked = pages(FileSource(store), where, sort, limit=7)
    assert [i for page in walked for i in page] == listed(store, where, sort)
    assert all(len(page) == 7 for page in walked[:-1]) and 0 < len(walked[-1]) <= 7


def test_a_page_token_goes_on_below_its_last_run_when_new_runs_came(synthetic):
    store, _ = synthetic
    first = Query.parse(limit=10)
    page = FileSource(store).page(first)
    write_run(store, RUNS + 1, random.Random(2))  # a run started between the two pages
    following = FileSource(store).page(Query.parse(limit=10, page_token=first.next_page_token(page)))
    assert [row["id"] for row in following.rows] == list(range(RUNS - 10, RUNS - 20, -1))  # no run twice


def test_a_page_token_of_another_query_or_none_at_all_is_one_clear_error(synthetic):
    store, _ = synthetic
    query = Query.parse("status = 'FAILED'", limit=5)
    token = query.next_page_token(FileSource(store).page(query))
    with pytest.raises(UserError, match="belongs to another query"):
        Query.parse("status = 'COMPLETED'", limit=5, page_token=token)
    with pytest.raises(UserError, match="not a page token"):
        Query.parse(limit=5, page_token="bogus!")
    proc = run_cli(["runs", "list", "--page-token", "bogus"], store.parent)
    assert proc.returncode != 0 and "not a page token" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "where, wanted",
    [
        ("not metrics.val.acc > 0.5", lambda r: not (r["acc"] is not None and r["acc"] > 0.5)),
        ("config.train.lr != 0.001", lambda r: r["lr"] is not None and r["lr"] != 0.001),
        (
            "max(metrics.val.acc) >= 0.8 or status in ('FAILED')",
            lambda r: (r["max_acc"] or 0) >= 0.8 or r["status"] == "FAILED",
        ),
        (
            "config.solver.method like 'R%' and not (id < 100 or id > 200)",
            lambda r: r["solver"] == "rk4" and 100 <= r["id"] <= 200,
        ),
        ("config.solver.method = 1", lambda r: False),  # numbers compare with numbers only
        ("config.no.such.key = 'x' or metrics.nothing > 0", lambda r: False),
    ],
)
def test_operators_and_missing_values_match_brute_force(synthetic, where, wanted):
    store, runs = synthetic
    assert sorted(listed(store, where)) == sorted(r["id"] for r in runs if wanted(r))


def test_sort_puts_missing_values_last_both_ways_then_newest_first(synthetic):
    store, runs = synthetic
    for descending in (False, True):
        present = sorted((r for r in runs if r["lr"] is not None), key=lambda r: -r["id"])
        present.sort(key=lambda r: r["lr"], reverse=descending)
        missing = sorted((r["id"] for r in runs if r["lr"] is None), reverse=True)
        assert (
            listed(store, sort=("-" if descending else "") + "config.train.lr") == [r["id"] for r in present] + missing
        )


def test_a_new_run_a_copied_folder_a_changed_and_a_removed_one_show_in_the_next_listing(synthetic):
    store, runs = synthetic
    assert listed(store, limit=1) == [RUNS]  # the index is built
    write_run(store, RUNS + 1, random.Random(1))  # another process's new run
    shutil.copytree(store / "5", store / "9000")  # copied in by hand (rsync keeps times: the copy is old)
    os.utime(store / "9000" / "run.json", ns=(1, 1))
    assert listed(store, limit=3) == [9000, RUNS + 1, RUNS]
    metrics = json.loads((store / "7" / "metrics.json").read_text())
    metrics["val.acc"] = {"steps": [1], "values": [0.123456], "timestamps": [None]}
    (store / "7" / "metrics.tmp").write_text(json.dumps(metrics))
    os.replace(store / "7" / "metrics.tmp", store / "7" / "metrics.json")  # as the observer writes
    assert listed(store, "metrics.val.acc = 0.123456") == [7]
    shutil.rmtree(store / str(RUNS))
    assert RUNS not in listed(store)


def test_a_run_logged_by_the_file_observer_is_in_the_index_as_it_ends(tmp_path: Path):
    from tests.test_tracking.conftest import tiny_run

    runs_dir = tmp_path / "runs"
    (runs_dir / "store").mkdir(parents=True)
    using_index(runs_dir / "store", lambda index: None)  # an index exists before the run
    tiny_run(runs_dir, tmp_path / "out")
    index = RunIndex(runs_dir / "store")
    try:
        sig, status = index.conn.execute("SELECT sig, status FROM runs WHERE id = 1").fetchone()
    finally:
        index.close()
    assert status == "COMPLETED" and sig.split("|racy")[0] == folder_signature(os.stat(runs_dir / "store" / "1"))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_damaged_index_gives_the_right_answer_with_one_warning(synthetic, damage):
    store, runs = synthetic
    expected = listed(store, "config.solver.method = 'rk4'", "-metrics.val.acc")
    index_file = store / INDEX_FILE
    using_index(store, lambda index: index.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)"))
    data = index_file.read_bytes()
    if damage == "garbage":
        index_file.write_bytes(data[:4096] + os.urandom(len(data) - 4096))
    elif damage == "truncated":
        index_file.write_bytes(data[: len(data) // 3])
    else:
        index_file.write_bytes(b"not a database at all" * 10)
    warnings: list[str] = []
    page = FileSource(store, warn=warnings.append).page(
        Query.parse("config.solver.method = 'rk4'", "-metrics.val.acc", 0)
    )
    assert [r["id"] for r in page.rows] == expected
    assert len(warnings) <= 1 and all("run index" in w and "rebuilding" in w for w in warnings)
    assert listed(store, "config.solver.method = 'rk4'", "-metrics.val.acc") == expected  # rebuilt: quiet again


def test_reindex_and_an_index_of_another_version_are_rebuilt(synthetic):
    store, _ = synthetic
    listed(store)
    index = RunIndex(store)
    index.conn.execute("UPDATE meta SET value = 'old' WHERE key = 'version'")
    index.conn.execute("DELETE FROM runs WHERE id > 10")  # an old version's index would be wrong: not used
    index.close()
    assert len(listed(store)) == RUNS
    proc = run_cli(["runs", "reindex"], store.parent)
    assert proc.returncode == 0 and f"indexed {RUNS} runs" in proc.stdout, proc.stderr


@pytest.mark.parametrize(
    "where, caret, reason",
    [
        ("metrics.val.acc > ", 18, "expected a number"),
        ("config.x = 1 and bogus = 2", 17, "unknown field 'bogus'"),
        ("status = 'COMPLETED", 9, "not closed"),
        ("(id = 1 or id = 2", 17, "expected ')'"),
        ("min(config.x) > 1", 0, "min(...) takes a metrics.<name>"),
        ("status like 3", 12, "like takes a quoted pattern"),
    ],
)
def test_a_wrong_expression_is_one_error_with_a_caret_under_the_fault(where, caret, reason):
    with pytest.raises(UserError) as raised:
        q.parse_where(where)
    lines = str(raised.value).splitlines()
    assert reason in lines[0] and lines[1] == f"  {where}" and lines[2] == " " * (2 + caret) + "^"
    assert len(lines) == 3


def test_a_wrong_expression_on_the_command_line_is_one_error_without_a_traceback(synthetic):
    store, _ = synthetic
    proc = run_cli(["runs", "list", "--where", "metrics.val.acc >> 1"], store.parent)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        "error: --where: expected a number, a quoted string, true or false, found '>' (column 18):",
        "  metrics.val.acc >> 1",
        "                   ^",
    ]


def test_export_streams_every_match_with_the_whole_config(synthetic, tmp_path: Path):
    import csv

    store, runs = synthetic
    proc = run_cli(["runs", "export", "--where", "status = 'FAILED'", "--out", str(tmp_path / "f.csv")], store.parent)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((tmp_path / "f.csv").open()))
    failed = sorted((r for r in runs if r["status"] == "FAILED"), key=lambda r: -r["id"])
    assert [int(r["id"]) for r in rows] == [r["id"] for r in failed]
    assert [r["config.solver.method"] for r in rows] == [r["solver"] for r in failed]


def test_show_reads_one_run_only(synthetic):
    store, _ = synthetic
    (store / "9" / "metrics.json").write_text("{")  # another run's damage does not matter to `show 3`
    proc = run_cli(["runs", "show", "3"], store.parent)
    assert proc.returncode == 0 and proc.stderr == "" and proc.stdout.startswith("run 3 (")
    assert not (store / INDEX_FILE).exists()


def test_the_python_api_returns_a_frame_of_the_same_rows(synthetic):
    from runner.api import run, runs

    store, _ = synthetic
    frame = runs(
        ISSUE_QUERY,
        sort="-metrics.val.acc",
        limit=10,
        columns="metrics.val.acc,config.train.lr,epochs(metrics.val.acc)",
        store=store.parent,
    )
    assert list(frame.id) == listed(store, ISSUE_QUERY, "-metrics.val.acc", 10)
    assert (frame["metrics.val.acc"] > 0.9).all() and (frame["config.train.lr"] < 1e-3).all()
    assert frame.attrs["matched"] >= len(frame)
    more = runs(ISSUE_QUERY, sort="-metrics.val.acc", limit=10, store=store, page_token=frame.attrs["next_page_token"])
    assert list(more.id) == listed(store, ISSUE_QUERY, "-metrics.val.acc", 10, offset=10)
    assert len(run(frame.id[0], store=store).metrics["val.acc"]["values"]) == frame["epochs(metrics.val.acc)"][0]


def _mongo_doc(store: Path, run_id: int, summarized: bool) -> tuple[dict, list[dict]]:
    """A Sacred run document (with the metric summaries of a current observer, or without: an old one) and its
    metrics documents, from a synthetic run folder."""
    import datetime as dt

    from runner.tracking.index import metric_summaries

    folder = store / str(run_id)
    run, config, metrics = (json.loads((folder / n).read_text()) for n in ("run.json", "config.json", "metrics.json"))
    doc = {
        **run,
        "_id": run_id,
        "config": config,
        "info": {},
        "start_time": dt.datetime.fromisoformat(run["start_time"]),
    }
    if summarized:
        doc["metric_summary"] = {k.replace(".", "__"): v for k, v in metric_summaries(metrics).items()}
    series = [{"run_id": run_id, "name": n, "steps": m["steps"], "values": m["values"]} for n, m in metrics.items()]
    return doc, series


@pytest.mark.parametrize("old_documents", [False, True])
def test_mongo_answers_every_query_as_the_index_does(synthetic, mongo_db, old_documents, monkeypatch):
    store, _ = synthetic
    client, name = mongo_db
    docs = [_mongo_doc(store, i, summarized=not (old_documents and i % 3 == 0)) for i in range(1, RUNS + 1)]
    client[name]["runs"].insert_many([d for d, _ in docs])
    client[name]["metrics"].insert_many([m for _, series in docs for m in series])
    source = MongoSource(client, name)
    for where, sort, limit in [
        (ISSUE_QUERY, "-metrics.val.acc", 10),
        ("not metrics.val.acc > 0.5", "config.train.lr", 0),
        ("config.train.lr != 0.001 and experiment like 'THESIS%'", None, 0),
        ("max(metrics.val.acc) >= 0.8 or status in ('FAILED', 'INTERRUPTED')", "-max(metrics.val.acc)", 20),
        ("start_time >= '2026-01-20' and id > 100", "-start_time", 0),
        (None, None, 50),
    ]:
        query = Query.parse(where, sort, limit, columns="metrics.val.acc,epochs(metrics.val.acc)")
        page = source.page(query)
        expected = FileSource(store).page(query)
        shown = ("id", "metrics.val.acc", "epochs(metrics.val.acc)")  # old documents' from their metrics
        assert [[r.get(c) for c in shown] for r in page.rows] == [[r.get(c) for c in shown] for r in expected.rows]
        assert page.total == expected.total, where
    for where, sort in [(None, None), (ISSUE_QUERY, "-metrics.val.acc")]:
        assert pages(source, where, sort, limit=40) == pages(FileSource(store), where, sort, limit=40)
    monkeypatch.setattr(listing, "EXPORT_PAGE", 7)  # an export of many pages from these few runs
    exports = [(None, None, 0), ("status = 'COMPLETED'", None, 30), (ISSUE_QUERY, "-metrics.val.acc", 0)]
    for where, sort, limit in exports:
        query = Query.parse(where, sort, limit)
        exported = [row["id"] for row in source.rows(query)[1]]
        assert exported == [row["id"] for row in FileSource(store).rows(query)[1]], where


def test_python_matching_agrees_with_the_index(synthetic):
    """The evaluator that filters old MongoDB documents, against the index, on random expressions."""
    from runner.tracking.runstore import _read_run_folder, record_value

    store, _ = synthetic
    records = [_read_run_folder(store / str(i)) for i in range(1, RUNS + 1)]
    rng = random.Random(3)
    atoms = [
        "metrics.val.acc > 0.5",
        "min(metrics.val.acc) <= 0.3",
        "config.train.lr < 1e-3",
        "config.solver.method in ('rk4', 'euler')",
        "status = 'FAILED'",
        "experiment like '%b'",
        "config.train.lr != 0.002",
    ]
    for _ in range(30):
        where = " and ".join(f"{rng.choice(['', 'not '])}{rng.choice(atoms)}" for _ in range(2))
        where = f"{where} or {rng.choice(atoms)}"
        tree = q.parse_where(where)
        by_python = [r.id for r in records if q.matches(tree, lambda f, r=r: record_value(r, f))]
        assert sorted(listed(store, where)) == by_python, where


def index_content(store: Path) -> list[list[tuple]]:
    """Every row the index holds of the runs (key ids by name, so two builds compare)."""
    index = RunIndex(store)
    try:
        keys = dict(index.conn.execute("SELECT id, scope || ':' || name FROM keys"))
        runs = index.conn.execute("SELECT * FROM runs ORDER BY id").fetchall()
        fields = [(r, keys[k], v) for r, k, v in index.conn.execute("SELECT * FROM fields")]
        metrics = [(r, keys[k], *rest) for r, k, *rest in index.conn.execute("SELECT * FROM metrics")]
    finally:
        index.close()
    return [[tuple(row) for row in runs], sorted(fields, key=repr), sorted(metrics, key=repr)]


def test_a_big_build_on_a_process_pool_indexes_what_run_by_run_indexing_does(synthetic, monkeypatch):
    from runner.tracking import index as index_module

    store, _ = synthetic
    (store / "3" / "metrics.json").write_text("{truncated")  # a damaged run is kept as such by both
    using_index(store, warn=lambda line: None).close()  # run by run: fewer runs than BIG_BUILD
    one_by_one = index_content(store)
    monkeypatch.setattr(index_module, "BIG_BUILD", 100)
    using_index(store, warn=lambda line: None, rebuild=True).close()
    assert index_content(store) == one_by_one
    assert len(one_by_one[0]) == RUNS and any(row[2] == "damaged" for row in one_by_one[0])


@pytest.mark.parametrize(
    "timestamps", [["2026-01-01T10:00:00"], ["x]y"], []], ids=["iso", "bracket-in-a-string", "none"]
)
def test_a_listing_reads_the_values_a_full_read_does(tmp_path: Path, timestamps):
    """The index's reader skips steps and timestamps unparsed; where it cannot (a "]" in a string) it reads all."""
    from runner.tracking.runstore import _read_run_folder

    write_run(tmp_path, 1, random.Random(3))
    metrics = {
        "val.acc": {"steps": [1, 2], "timestamps": timestamps, "values": [0.5, 0.75]},
        "odd]name": {"steps": [1], "timestamps": ["]"], "values": [2.0]},
    }
    (tmp_path / "1" / "metrics.json").write_text(json.dumps(metrics, indent=2))
    full, listing = _read_run_folder(tmp_path / "1"), _read_run_folder(tmp_path / "1", histories=False)
    assert {k: v["values"] for k, v in listing.metrics.items()} == {"val.acc": [0.5, 0.75], "odd]name": [2.0]}
    assert {k: v["values"] for k, v in full.metrics.items()} == {k: v["values"] for k, v in listing.metrics.items()}
    assert full.metrics["val.acc"]["steps"] == [1, 2]


@pytest.mark.parametrize(
    "ids", [list(range(1, 301)), [*range(1, 200, 3), 5000, 90000]], ids=["dense", "gaps-and-ids-above-the-count"]
)
def test_mongo_newest_pages_from_an_id_window_are_the_servers_sorted_pages(mongo_db, ids):
    """The newest runs read from a window of the highest ids (what SecantusDB answers from an index), against
    the server's own sort of the whole collection, on every page, with and without a filter."""
    from runner.tracking.mongo import ensure_indexes
    from runner.tracking.runstore import _newest_page

    client, name = mongo_db
    runs = client[name]["runs"]
    runs.insert_many([{"_id": i, "status": "FAILED" if n % 4 == 0 else "COMPLETED"} for n, i in enumerate(ids)])
    ensure_indexes(client[name])
    named = [
        {"_id": ids[5]},  # runs show
        {"_id": {"$in": ids[3:9]}, "status": "COMPLETED"},
        {"_id": {"$lt": ids[-40]}},  # a page token's range, and one on the window's own operator
        {"_id": {"$gt": ids[50], "$lte": ids[-3]}, "status": "FAILED"},
        {"_id": {"$gt": ids[-30]}, "status": "FAILED"},  # fewer than some pages: the window crosses the bound
        {"$or": [{"_id": {"$lt": ids[9]}}, {"status": "FAILED"}]},
    ]
    for condition in ({}, {"status": "FAILED"}, *named):
        for offset, limit in ((0, 50), (50, 50), (10, 7), (0, 1000), (0, 1)):
            expected = [d["_id"] for d in runs.find(condition).sort("_id", -1).skip(offset).limit(limit)]
            assert [d["_id"] for d in _newest_page(runs, condition, {}, offset, limit)] == expected


def _sorted_runs(runs, condition: dict, order: list, offset: int, limit: int) -> list:
    """The ids of a page of the server's own sort of every matching run, a missing value last both ways."""
    path, direction = order[0]
    if direction == -1:
        return [d["_id"] for d in runs.find(condition, {"_id": 1}).sort(order).skip(offset).limit(limit)]
    has = list(runs.find({"$and": [condition, {path: {"$ne": None}}]}, {"_id": 1}).sort(order))
    lacks = list(runs.find({"$and": [condition, {path: None}]}, {"_id": 1}).sort(order))
    return [d["_id"] for d in has + lacks][offset : offset + limit]


@pytest.mark.parametrize("odd_value", [None, "a string"], ids=["numbers", "a-string-among-them"])
def test_mongo_sorted_pages_from_a_threshold_range_are_the_servers_sorted_pages(mongo_db, odd_value):
    """A page sorted on an indexed metric summary, read from a range of its best values (what SecantusDB answers
    from an index), against the server's own sort of every run: ties at the threshold, NaN, null and missing
    values, gaps in the ids, both directions, a second sort key, offsets, a condition on the sort key itself, one
    on a field no index holds, one that matches fewer runs than the page."""
    from runner.tracking.mongo import ensure_indexes
    from runner.tracking.runstore import _server_page, _threshold_page

    client, name = mongo_db
    runs = client[name]["runs"]
    rng = random.Random(5)
    docs = []
    for n, run_id in enumerate([*range(1, 500, 2), 777, 5000]):
        acc = round(rng.uniform(0.5, 1.0), 2)  # 51 values: ties everywhere
        acc = math.nan if n % 41 == 0 else None if n % 37 == 0 else acc
        summary = {"val__acc": {"last": acc}, "val__loss": {"min": round(rng.uniform(0, 1), 1)}}
        config = {"solver": {"method": rng.choice(SOLVERS)}, "train": {"lr": rng.choice([1, 2])}}
        doc = {"_id": run_id, "config": config}
        docs.append(doc if n % 29 == 0 else {**doc, "metric_summary": summary})
    docs[7]["config"]["solver"]["method"] = docs[9]["config"]["solver"]["method"] = "rare"
    if odd_value is not None:
        docs[11]["metric_summary"]["val__acc"]["last"] = odd_value
    ensure_indexes(client[name])
    runs.insert_many(docs)
    acc, loss = "metric_summary.val__acc.last", "metric_summary.val__loss.min"
    orders = [
        [(acc, -1), ("_id", -1)],
        [(acc, 1), ("_id", -1)],
        [(acc, -1), ("config.train.lr", 1), ("_id", -1)],
        [(loss, 1), ("config.train.lr", -1), ("_id", -1)],
    ]
    conditions = [
        {},
        {"config.solver.method": "rk4"},
        {acc: {"$gt": 0.8}},
        {acc: {"$gte": 0.95}},  # the range's own operator, both ways: the tighter bound of the two
        {acc: {"$lte": 0.55}},
        {acc: {"$lt": 0.6}, "config.train.lr": 2},
        {"config.solver.method": "rare"},
        {"$or": [{"config.solver.method": "rk4"}, {acc: {"$lt": 0.6}}]},
    ]
    windowed = 0
    for order in orders:
        for condition in conditions:
            for offset, limit in ((0, 10), (0, 1), (25, 10), (3, 50), (0, 400)):
                expected = _sorted_runs(runs, condition, order, offset, limit)
                page = _server_page(runs, condition, {"_id": 1}, order, offset, limit)
                assert [d["_id"] for d in page] == expected, (order, condition, offset, limit)
                from_range = _threshold_page(runs, condition, {"_id": 1}, order, offset, limit)
                assert from_range is None or [d["_id"] for d in from_range] == expected
                windowed += from_range is not None
    # the range answers most pages; a string sorts before every number descending, so those go to the full sort
    assert windowed >= (70 if odd_value is None else 35)
