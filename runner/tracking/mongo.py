"""MongoDB side of tracking: a mirror observer that never fails a run, and `sync` from the local journal.

Sacred's own MongoObserver writes the documents (so Omniboard reads them as usual); this module decides
when to stop talking to a database that has gone away, keeps documents far below MongoDB's 16 MB limit,
and replays journalled runs into the database idempotently, keyed by each run's `meta.run_uid`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

from odeflow.files import write_atomic

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    from sacred.observers import MongoObserver
    from sacred.observers.base import RunObserver

from runner.tracking.masking import mask_url
from runner.tracking.outcome import LINKS
from runner.tracking.runstore import gradient_method

# Captured output kept in the run document: the head and the tail, so the document stays far below 16 MB
# however long a run prints. The journal keeps all of it (cout.txt).
CAPTURED_OUT_HEAD = 200_000
CAPTURED_OUT_TAIL = 1_800_000
MARKER = "mongo.json"  # in a journal run folder: {"run_uid", "mongo_id", "complete"}
FINAL_STATUSES = ("COMPLETED", "FAILED", "INTERRUPTED")
# Older versions kept the per-epoch costs (NFE, epoch times, memory) in a collection of their own; every
# series now lives in Sacred's `metrics`, where every Sacred client (incense, Omniboard) finds it, and
# `migrate_legacy_costs` moves what an older version left there.
LEGACY_COST_METRICS = "cost_metrics"
COST_METRICS_COLLECTION = LEGACY_COST_METRICS  # the name readers of older databases import
LAYOUT_COLLECTION = "odeflow.layout"  # what `upgrade` has done to a database
SUMMARY_FIELD = "metric_summary"  # on each run document: {name with '.' as '__': {last, min, max, epochs}}


def summary_key(name: str) -> str:
    """A metric's key under `metric_summary` (MongoDB field names may not hold dots: val.acc -> val__acc)."""
    return name.replace(".", "__")


def summarize(values: list[Any], previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """{last, min, max, epochs} of a series, extended by `values` when `previous` summarizes its start.

    NaN and non-numbers count as epochs and can be the last value, but never the min or the max."""
    summary = dict(previous or {"last": None, "min": None, "max": None, "epochs": 0})
    for value in values:
        summary["last"] = value
        summary["epochs"] += 1
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value):
            summary["min"] = value if summary["min"] is None else min(summary["min"], value)
            summary["max"] = value if summary["max"] is None else max(summary["max"], value)
    return summary


def metric_summaries(series: dict[str, list[Any]]) -> dict[str, dict[str, Any]]:
    """`metric_summary` of a run from its whole series {name: values}."""
    return {summary_key(name): summarize(values) for name, values in series.items()}


# What each collection is looked up and sorted by. Sacred's observer and Omniboard create no index, so
# without these every metric write scans the whole metrics collection and every run table page sorts the
# whole runs collection. Omniboard sorts its run table on the columns the dashboard seeds (table_fields).
METRIC_INDEXES = [[("run_id", 1), ("name", 1)]]
RUN_INDEXES = [
    [("status", 1), ("start_time", -1)],
    [("start_time", -1)],
    [("experiment.name", 1), ("start_time", -1)],
    [("meta.run_uid", 1)],  # sync and the dashboard's copy find a journalled run's document by it
    # relink finds the runs whose links name a run just copied or pushed by these
    *([(f"meta.{key}_uid", 1)] for key in LINKS),
    [("omniboard.tags", 1)],  # Omniboard's tag list: the runs that have a tag (dashboard/omniboard_queries.js)
]


ID_INDEX = [("_id", -1)]
# The metric summaries a run listing sorts by (`--sort -metrics.val.acc`, `--sort min(metrics.val.loss)`): with an
# index, a sorted page is read from a range of the best values (runstore._threshold_page) instead of every run.
SORTED_SUMMARIES = {
    "val.acc": ("last", "max"),
    "val.loss": ("last", "min"),
    "train.acc": ("last",),
    "train.loss": ("last",),
}

# The run documents without summaries (an older observer's): `metric_summary: {$exists: false}` alone reads every
# run on SecantusDB; the null of an indexed summary is an index lookup, and the test of the whole field on its few
# candidates gives the same documents on any server.
UNSUMMARIZED = {f"{SUMMARY_FIELD}.{summary_key('val.acc')}.last": None, SUMMARY_FIELD: {"$exists": False}}


def run_indexes() -> list[list[tuple[str, int]]]:
    summaries = [
        [(f"{SUMMARY_FIELD}.{summary_key(name)}.{aggregate}", 1)]
        for name, aggregates in SORTED_SUMMARIES.items()
        for aggregate in aggregates
    ]
    return [*RUN_INDEXES, *([(column, 1)] for column in table_fields({}, {})), *summaries]


def ensure_indexes(db: Any) -> None:
    """Create the indexes the observer, sync, the run browser and Omniboard query by (a no-op when present)."""
    from pymongo import IndexModel
    from pymongo.errors import OperationFailure

    db["metrics"].create_indexes([IndexModel(keys) for keys in METRIC_INDEXES])
    db["runs"].create_indexes([IndexModel(keys) for keys in run_indexes()])
    try:  # the run browser's newest runs: a range of ids (SecantusDB's own _id index answers points only)
        db["runs"].create_indexes([IndexModel(ID_INDEX)])
    except OperationFailure:  # a server that refuses a second index on _id has one that answers ranges
        pass


def _rounded(value: Any, digits: int) -> Any:
    return round(value, digits) if isinstance(value, float) else value


def _significant(value: Any, digits: int = 2) -> Any:
    return float(f"{value:.{digits}g}") if isinstance(value, float) else value


def truncate_output(text: str) -> str:
    if len(text) <= CAPTURED_OUT_HEAD + CAPTURED_OUT_TAIL:
        return text
    cut = len(text) - CAPTURED_OUT_HEAD - CAPTURED_OUT_TAIL
    note = f"[... {cut} characters cut here; the full output is in the local journal (cout.txt) ...]"
    return f"{text[:CAPTURED_OUT_HEAD]}\n{note}\n{text[-CAPTURED_OUT_TAIL:]}"


def table_fields(entry: dict[str, Any], best: dict[str, float]) -> dict[str, Any]:
    """The run's headline numbers as top-level fields of its document, under the names of Omniboard's columns.

    Omniboard opens its run table with one column per top-level field, in document order, and the run's
    config keys after them; only the first dozen columns are on screen. Fields written first (at insert)
    put what a researcher compares next to the run id, and custom columns named like them show them.
    """
    config, meta, info = entry.get("config") or {}, entry.get("meta") or {}, entry.get("info") or {}
    solver = (config.get("solver") or {}) if meta.get("model_family") == "odenet" else {}  # a ResNet has no solver
    choices, cost, parameters = meta.get("choices") or {}, info.get("cost") or {}, info.get("parameters") or {}
    gradient = gradient_method(solver)
    # rounded as a reader compares them (a test accuracy of 0.9722222222222222 reads 0.9722); BNFE only where a
    # backward pass evaluates f (direct backpropagation has no backward solve)
    return {  # most compared first: a 1920-pixel screen shows about ten
        "model": choices.get("model"),
        "dataset": choices.get("data"),
        "solver": solver.get("method"),
        "rtol": solver.get("rtol"),
        "test acc": _rounded((info.get("test") or {}).get("test.acc"), 4),
        "best val loss": _rounded(best.get("val.loss"), 4),
        "FNFE": _rounded(cost.get("fnfe"), 1),
        "BNFE": _rounded(cost.get("bnfe"), 1) if gradient not in (None, "direct") else None,
        "params": parameters.get("total"),
        "sweep": meta.get("sweep_id") or meta.get("sweep_report_of"),
        "s/epoch": _rounded(cost.get("epoch_time"), 2),
        "gradient": gradient,
        "train RSS MB": _rounded(cost.get("train_rss_mb"), 0),
        "train CUDA MB": _rounded(cost.get("train_cuda_mb"), 0),
        "saved MB": _rounded(cost.get("saved_mb"), 1),
        "best val acc": _rounded(best.get("val.acc"), 4),
        "trial": meta.get("trial"),
        "adjoint grad err": _significant((info.get("adjoint_gradient_check") or {}).get("relative_error")),
        "val RSS MB": _rounded(cost.get("val_rss_mb"), 0),
        "val CUDA MB": _rounded(cost.get("val_cuda_mb"), 0),
        "pruned after epoch": (info.get("pruned") or {}).get("epoch"),
        "adapted h/tol": (info.get("adaptation") or {}).get("at_best_epoch"),
        "slurm job": (info.get("slurm") or {}).get("job_id"),
        "device": " ".join(filter(None, [info.get("device"), (info.get("device_info") or {}).get("gpu")])) or None,
    }


BEST = {"val.loss": min, "val.acc": max}


class StrictMongoObserver(MongoObserver):
    """Sacred's MongoObserver, but every failed write raises (Sacred's swallows lost connections in
    heartbeats and retries final saves for seconds), ids are always the database's own, and captured
    output is truncated."""

    def started_event(self, ex_info, command, host_info, start_time, config, meta_info, _id):
        return super().started_event(ex_info, command, host_info, start_time, config, meta_info, None)

    def heartbeat_event(self, info, captured_out, beat_time, result):
        super().heartbeat_event(info, truncate_output(captured_out), beat_time, result)

    def log_metrics(self, metrics_by_name, info):
        for name, pick in BEST.items():
            seen = [*metrics_by_name.get(name, {}).get("values", []), *([self.best[name]] if name in self.best else [])]
            if seen:
                self.best[name] = pick(seen)
        super().log_metrics(metrics_by_name, info)
        summaries = self.run_entry.setdefault(SUMMARY_FIELD, {})
        for name, m in metrics_by_name.items():
            summaries[summary_key(name)] = summarize(m["values"], summaries.get(summary_key(name)))
        # the summaries reach the document with the heartbeat Sacred sends right after every log_metrics

    def insert(self):
        self.run_entry = {**table_fields(self.run_entry, self.best), **self.run_entry}
        super().insert()

    def save(self):
        self.run_entry.update(table_fields(self.run_entry, self.best))
        self.runs.update_one({"_id": self.run_entry["_id"]}, {"$set": self.run_entry})

    def final_save(self, attempts):
        self.run_entry.update(table_fields(self.run_entry, self.best))
        self.runs.update_one({"_id": self.run_entry["_id"]}, {"$set": self.run_entry}, upsert=True)

    @staticmethod
    def _try_to_detect_content_type(filename):
        import mimetypes

        return mimetypes.guess_type(filename)[0]  # Sacred's version prints a line per artifact


def open_observer(client: Any, db_name: str) -> StrictMongoObserver:
    import gridfs

    database = client[db_name]
    observer = StrictMongoObserver.create_from(
        database["runs"], gridfs.GridFS(database), metrics_collection=database["metrics"]
    )
    ensure_indexes(database)
    observer.best = {}
    return observer


class MongoMirror(RunObserver):
    """Forwards a run's events to MongoDB until the first failure, then only says so, once.

    It runs before the journal, so a run that reaches the database has the database's id everywhere (the
    console, the summary, links between runs, `runs list tracking=mongo`, Omniboard); a run that does not
    reach it has the journal's id.
    """

    priority = 50  # above the journal's (FILE_STORE_PRIORITY)

    def __init__(self, store: Any, journal: Any) -> None:
        self.store = store
        self.journal = journal  # the FileStorageObserver that holds the full run
        self.mongo: StrictMongoObserver | None = None
        self.complete = False
        self.run_uid: str | None = None

    def _call(self, method: str, *args: Any) -> Any:
        if self.mongo is None:
            return None
        try:
            return getattr(self.mongo, method)(*args)
        except Exception as exc:  # any database failure: the journal has the run; never fail it
            self._give_up(exc)
            return None

    def _give_up(self, exc: BaseException) -> None:
        self.mongo, self.complete = None, False
        print(
            f"{describe_failure(self.store.url, exc)}; the run goes on and is journalled locally in "
            f"{self.journal.basedir}. "
            f"Push it later with: python -m runner sync tracking=mongo",
            file=sys.stderr,
            flush=True,
        )

    def started_event(self, ex_info, command, host_info, start_time, config, meta_info, _id):
        self.run_uid = meta_info.get("run_uid")
        try:
            self.mongo = open_observer(self.store.client(), self.store.db_name)
        except Exception as exc:
            self._give_up(exc)
            return None
        self.complete = True
        mongo_id = self._call("started_event", ex_info, command, host_info, start_time, config, meta_info, _id)
        if mongo_id is not None:
            print(
                f"logging to MongoDB {mask_url(self.store.url)} db {self.store.db_name} as run {mongo_id}", flush=True
            )
        return mongo_id

    def heartbeat_event(self, info, captured_out, beat_time, result):
        self._call("heartbeat_event", info, captured_out, beat_time, result)

    def log_metrics(self, metrics_by_name, info):
        self._call("log_metrics", metrics_by_name, info)

    def artifact_event(self, name, filename, metadata=None, content_type=None):
        self._call("artifact_event", name, filename, metadata, content_type)

    def resource_event(self, filename):
        self._call("resource_event", filename)

    def completed_event(self, stop_time, result):
        self._call("completed_event", stop_time, result)
        self._write_marker()

    def interrupted_event(self, interrupt_time, status):
        self._call("interrupted_event", interrupt_time, status)
        self._write_marker()

    def failed_event(self, fail_time, fail_trace):
        self._call("failed_event", fail_time, fail_trace)
        self._write_marker()

    def _write_marker(self) -> None:
        mongo_id = self.mongo.run_entry["_id"] if self.mongo is not None and self.mongo.run_entry else None
        write_marker(Path(self.journal.dir), self.run_uid, mongo_id, self.complete and self.mongo is not None)


AUTH_FAILED = 18  # MongoDB's error code for a wrong user name or password


def describe_failure(url: str, exc: BaseException) -> str:
    """One line saying why the database at `url` did not take a write: refused credentials or unreachable."""
    reason = (
        mask_url(str(exc).splitlines()[0].split(" (configured timeouts")[0][:160]) if str(exc) else type(exc).__name__
    )
    if getattr(exc, "code", None) == AUTH_FAILED:
        return f"MongoDB at {mask_url(url)} refused the user name or password in MONGO_URL ({reason.split(',')[0]})"
    return f"MongoDB at {mask_url(url)} is unreachable ({reason})"


def write_marker(run_dir: Path, run_uid: str | None, mongo_id: Any, complete: bool) -> None:
    write_atomic(run_dir / MARKER, json.dumps({"run_uid": run_uid, "mongo_id": mongo_id, "complete": complete}))


def migrate_legacy_costs(db: Any, run_ids: list[Any] | None = None) -> int:
    """Move the per-epoch cost series an older version kept in `cost_metrics` into Sacred's `metrics` (all
    runs', or those of `run_ids`), each named in its run's `info.metrics` and summarized; returns how many.

    Each series is copied under its own id before it is deleted, so a crash part-way repeats the move."""
    legacy = db[LEGACY_COST_METRICS]
    query = {} if run_ids is None else {"run_id": {"$in": run_ids}}
    moved = 0
    for series in legacy.find(query):
        run_id, name = series["run_id"], series["name"]
        if db["metrics"].find_one({"run_id": run_id, "name": name}, {"_id": 1}) is None:
            db["metrics"].insert_one(series)
        kept = db["metrics"].find_one({"run_id": run_id, "name": name}, {"_id": 1, "values": 1})
        db["runs"].update_one(
            {"_id": run_id, "info.metrics.name": {"$ne": name}},
            {"$push": {"info.metrics": {"name": name, "id": str(kept["_id"])}}},
        )
        db["runs"].update_one(
            {"_id": run_id}, {"$set": {f"{SUMMARY_FIELD}.{summary_key(name)}": summarize(kept.get("values", []))}}
        )
        legacy.delete_one({"_id": series["_id"]})
        moved += 1
    return moved


def backfill_summaries(db: Any, stop: Any = None) -> int:
    """`metric_summary` on the run documents an older version wrote without it; returns how many."""
    filled = 0
    for run in db["runs"].find(UNSUMMARIZED, {"_id": 1}):
        if stop is not None and stop.is_set():
            break
        series = {
            m["name"]: m.get("values", []) for m in db["metrics"].find({"run_id": run["_id"]}, {"name": 1, "values": 1})
        }
        db["runs"].update_one(
            {"_id": run["_id"], SUMMARY_FIELD: {"$exists": False}}, {"$set": {SUMMARY_FIELD: metric_summaries(series)}}
        )
        filled += 1
    return filled


def upgrade(db: Any, stop: Any = None) -> None:
    """A database an older version wrote, brought to this one's layout: indexes, every series in `metrics`,
    summaries on every run. Cheap when there is nothing to do."""
    ensure_indexes(db)
    layout = db[LAYOUT_COLLECTION]
    if layout.find_one({"_id": SUMMARY_FIELD}) is None:  # the backfill scans every run: once per database
        backfill_summaries(db, stop)  # before the move, which adds the moved series' summaries
        if stop is not None and stop.is_set():
            return
        layout.update_one({"_id": SUMMARY_FIELD}, {"$set": {"backfilled": True}}, upsert=True)
    migrate_legacy_costs(db)


# --- sync: replay journalled runs into MongoDB ------------------------------------------------------------


def _time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


def run_uid_of(run_dir: Path, record: dict[str, Any]) -> str:
    """The run's uid; runs journalled before uids existed get one derived from their record."""
    return record.get("meta", {}).get("run_uid") or f"journal:{run_dir.resolve()}:{record.get('start_time')}"


def replay(run_dir: Path, client: Any, db_name: str) -> Any:
    """Write one journalled run (Sacred file-store folder) into MongoDB as Sacred's observer would; returns its id.

    A document already there for the run (partial: the run lost the database mid-run, or a server crash lost
    its last writes) is rewritten in place under its id, never deleted first: a crash part-way leaves it
    with a status that is not the journal's, so the next sync writes it again. Its metric series are
    emptied and refilled (keeping their ids, which Omniboard follows), and the GridFS files only it used
    are deleted once the new ones are in.
    """
    record = json.loads((run_dir / "run.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    info = json.loads((run_dir / "info.json").read_text()) if (run_dir / "info.json").exists() else {}
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").exists() else {}
    captured = (run_dir / "cout.txt").read_text(errors="replace") if (run_dir / "cout.txt").exists() else ""
    uid = run_uid_of(run_dir, record)
    meta = {**record.get("meta", {}), "run_uid": uid}

    observer = open_observer(client, db_name)
    old = observer.runs.find_one({"meta.run_uid": uid})
    old_files = _files_of(old) if old else []
    info.pop("metrics", None)
    if old is not None:
        migrate_legacy_costs(observer.runs.database, [old["_id"]])  # their series ids go on in `metrics`
        observer.metrics.update_many({"run_id": old["_id"]}, {"$set": {"steps": [], "values": [], "timestamps": []}})
        old.pop(SUMMARY_FIELD, None)  # summarized afresh from the refilled series
        info["metrics"] = [
            {"name": m["name"], "id": str(m["_id"])} for m in observer.metrics.find({"run_id": old["_id"]}, {"name": 1})
        ]
    store_root = run_dir.parent
    sources = [
        [name, observer.fs.put((store_root / stored).read_bytes(), filename=name, metadata={"run_uid": uid})]
        for name, stored in record["experiment"].get("sources", [])
        if (store_root / stored).is_file()
    ]
    observer.save_sources = lambda ex_info: sources  # the document switches to them in its first write
    observer.run_entry, observer.overwrite = None, old  # with `overwrite`, Sacred's observer updates that document
    MongoObserver.started_event(
        observer,
        dict(record["experiment"]),
        record.get("command"),
        record.get("host", {}),
        _time(record.get("start_time")),
        config,
        meta,
        None,
    )
    observer.log_metrics(
        {
            name: {"steps": m["steps"], "values": m["values"], "timestamps": [_time(t) for t in m["timestamps"]]}
            for name, m in metrics.items()
        },
        info,
    )
    for name in record.get("artifacts", []):
        if (run_dir / name).is_file():
            observer.artifact_event(name, str(run_dir / name))
    observer.heartbeat_event(info, captured, _time(record.get("heartbeat")), record.get("result"))
    status = record.get("status")
    if status == "COMPLETED":
        observer.completed_event(_time(record.get("stop_time")), record.get("result"))
    elif status == "FAILED":
        observer.failed_event(_time(record.get("stop_time")), record.get("fail_trace"))
    elif status in FINAL_STATUSES:
        observer.interrupted_event(_time(record.get("stop_time")), status)
    else:  # the process died mid-run; keep the state the journal knows
        observer.run_entry["status"] = status
        observer.final_save(1)
    _delete_unused_files(observer, uid, old_files, [*record.get("artifacts", []), *(name for name, _ in old_files)])
    return observer.run_entry["_id"]


def _delete_unused_files(
    observer: StrictMongoObserver, uid: str, old_files: list[tuple[str, Any]], artifact_names: list[str]
) -> None:
    """Delete the GridFS files of earlier writes of this run that its document no longer names: the old
    document's, and those of an earlier replay that died part-way (its sources carry the run uid, its
    artifacts are named after the run id)."""
    kept = {file_id for _, file_id in _files_of(observer.run_entry)}
    prefix = f"artifact://{observer.runs.name}/{observer.run_entry['_id']}/"
    ours = {f._id for f in observer.fs.find({"metadata.run_uid": uid})}
    ours |= {f._id for f in observer.fs.find({"filename": {"$in": [prefix + name for name in set(artifact_names)]}})}
    for file_id in ours - kept:
        observer.fs.delete(file_id)
    for name, file_id in old_files:  # sources a live run wrote may be shared with other runs
        shared = observer.runs.count_documents(
            {"$or": [{"artifacts.file_id": file_id}, {"experiment.sources": [name, file_id]}]}
        )
        if file_id not in kept | ours and not shared:
            observer.fs.delete(file_id)


def _files_of(document: dict[str, Any]) -> list[tuple[str, Any]]:
    """(name, GridFS id) of a run document's artifacts and source files."""
    return [(a["name"], a["file_id"]) for a in document.get("artifacts", [])] + [
        (name, file_id) for name, file_id in document.get("experiment", {}).get("sources", [])
    ]


def ids_by_uid(db: Any, uids: Any) -> dict[str, list[Any]]:
    """The ids of the runs with these uids in a database (by its index on meta.run_uid)."""
    found: dict[str, list[Any]] = {}
    for doc in db["runs"].find({"meta.run_uid": {"$in": sorted(set(uids))}}, {"meta.run_uid": 1}):
        found.setdefault(doc["meta"]["run_uid"], []).append(doc["_id"])
    return found


def relink(db: Any, run_ids: list) -> int:
    """Set every run's links (runner.tracking.outcome.LINKS) to the ids the linked runs have in this database,
    found by their uids: runs copied or pushed here took new ids, and the ids their links carried named runs of
    the store they came from. A link to a run not (yet) here gets no id; its uid stays for a later pass.
    Only the runs just copied or pushed (`run_ids`) and the runs whose links name them are looked at, through the
    indexes on the link uids (a search of every run for links made SecantusDB read the whole collection: its
    memory peaked at 2.8 GB at the end of a 20,000-run copy, 565 MB with this). Returns how many run documents
    changed."""
    from runner.tracking.outcome import link_target

    uid_keys = [f"meta.{key}_uid" for key in LINKS]
    projection = {"_id": 1, "meta.run_uid": 1, **{f"meta.{key}": 1 for key in LINKS}, **dict.fromkeys(uid_keys, 1)}
    found: dict[Any, dict] = {}
    for chunk in range(0, len(run_ids), 1000):
        for doc in db["runs"].find({"_id": {"$in": list(run_ids[chunk : chunk + 1000])}}, projection):
            found[doc["_id"]] = doc
    new_uids = sorted({doc.get("meta", {}).get("run_uid") for doc in found.values()} - {None})
    found = {i: d for i, d in found.items() if any(d.get("meta", {}).get(f"{k}_uid") for k in LINKS)}
    for chunk in range(0, len(new_uids), 1000):
        for key in uid_keys:
            for doc in db["runs"].find({key: {"$in": new_uids[chunk : chunk + 1000]}}, projection):
                found.setdefault(doc["_id"], doc)
    linking = list(found.values())
    uids = {doc["meta"].get(f"{key}_uid") for doc in linking for key in LINKS} - {None}
    ids = ids_by_uid(db, uids)
    changed = 0
    for doc in linking:
        meta = doc.get("meta", {})
        targets = {key: link_target(meta.get(key), meta.get(f"{key}_uid"), ids) for key in LINKS}
        fix = {
            f"meta.{key}": targets[key]
            for key in LINKS
            if meta.get(f"{key}_uid") is not None and meta.get(key) != targets[key]
        }
        if fix:
            db["runs"].update_one({"_id": doc["_id"]}, {"$set": fix})
            changed += 1
    return changed


def sync(journal_dir: Path, client: Any, db_name: str, include_running: bool = False, log=print) -> dict[str, int]:
    """Push every journalled run that is not completely in MongoDB. Idempotent: run it as often as you like.

    Runs still marked RUNNING (in progress, or killed) are left out unless `include_running`.
    """
    counts = {"pushed": 0, "already_there": 0, "running": 0}
    runs = (
        sorted(
            (p for p in Path(journal_dir).iterdir() if p.name.isdigit() and (p / "run.json").exists()),
            key=lambda p: int(p.name),
        )
        if Path(journal_dir).is_dir()
        else []
    )
    db = client[db_name]
    upgrade(db)
    pushed: list[Any] = []
    for run_dir in runs:
        record = json.loads((run_dir / "run.json").read_text())
        uid = run_uid_of(run_dir, record)
        marker = json.loads((run_dir / MARKER).read_text()) if (run_dir / MARKER).exists() else {}
        if record.get("status") == "RUNNING" and not marker and not include_running:
            counts["running"] += 1  # still running (or killed): push when it has finished
            continue
        existing = db["runs"].find_one({"meta.run_uid": uid}, {"_id": 1, "status": 1})
        # The status is the run's last write: a server that crashed after the run may have lost writes the
        # marker counted on, but never the status without the writes before it.
        if marker.get("complete") and existing is not None and existing.get("status") == record.get("status"):
            counts["already_there"] += 1
            continue
        mongo_id = replay(run_dir, client, db_name)
        write_marker(run_dir, uid, mongo_id, True)
        pushed.append(mongo_id)
        counts["pushed"] += 1
        log(f"pushed journal run {run_dir.name} -> MongoDB run {mongo_id}")
    relink(db, pushed)  # the pushed runs' links name the ids their runs have here
    return counts
