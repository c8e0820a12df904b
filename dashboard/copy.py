"""The dashboard's copy of the run folders into its database: in bulk, in the background, resumable, incremental.

Each run folder is written as the runner's MongoDB observer would write it (runner.tracking.mongo.replay),
but a batch of runs at a time, in a few bulk writes instead of dozens of round trips per run: the run
documents (their ids reserved by inserting them, so a run logged live meanwhile never shares an id), then
their metric series and GridFS files. Source files shared by many runs are stored once.

A batch is written whole: the stop signal is seen between batches, and a batch a kill cut short is
recorded before it starts (COPY_BATCH) and deleted at the next start, then copied again. What was copied
is recorded per folder with the size and mtime of its files (COPIED), so a later start reads only the
folders that are new or changed since.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import mimetypes
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bson import Binary, ObjectId
from pymongo.errors import BulkWriteError

from runner.tracking.mongo import (
    BEST,
    MARKER,
    SUMMARY_FIELD,
    metric_summaries,
    relink,
    replay,
    run_uid_of,
    table_fields,
    truncate_output,
    upgrade,
    write_marker,
)

COPIED = "odeflow.dashboard.copied"  # {_id: run folder, signature, run_id}: what a later start need not read again
COPY_BATCH = "odeflow.dashboard.batch"  # the batch being written: deleted and copied again if a kill cut it short
SIGNATURE_FILES = ("run.json", "info.json", "metrics.json")
CHUNK_SIZE = 255 * 1024  # GridFS's default chunk size
SACRED_FORMAT = "MongoObserver-0.7.0"
PROGRESS_EVERY = 5.0  # seconds between progress lines
KNOWN_PER_WRITE = 1000  # folders recorded as already copied per write
BATCH_SECONDS = 0.4  # a batch's writes take about this long, so a stop waits for at most one short batch


def signature(run_dir: Path) -> list[list[int]]:
    """(size, mtime) of the files a run's record changes in: another value means the run changed."""
    stats = []
    for name in SIGNATURE_FILES:
        try:
            st = (run_dir / name).stat()
            stats.append([st.st_size, st.st_mtime_ns])
        except FileNotFoundError:
            stats.append([-1, 0])
    return stats


def run_folders(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def _time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else {}


def _gridfs(data: bytes, filename: str, metadata: dict | None, content_type: str | None) -> tuple[dict, list[dict]]:
    """A GridFS file as its `fs.files` document and `fs.chunks` documents (the layout GridFS readers expect)."""
    file_id = ObjectId()
    chunks = [
        {"_id": ObjectId(), "files_id": file_id, "n": n, "data": Binary(data[start : start + CHUNK_SIZE])}
        for n, start in enumerate(range(0, len(data), CHUNK_SIZE))
    ]
    document = {
        "_id": file_id,
        "filename": filename,
        "length": len(data),
        "chunkSize": CHUNK_SIZE,
        "uploadDate": dt.datetime.now(dt.timezone.utc),
        "metadata": metadata,
    }
    if content_type:
        document["contentType"] = content_type
    return document, chunks


class Batch:
    """Runs read from their folders, written together."""

    def __init__(self) -> None:
        self.runs: list[dict] = []
        self.metrics: list[dict] = []
        self.files: list[dict] = []
        self.chunks: list[dict] = []
        self.folders: list[tuple[Path, list, bool]] = []  # (folder, signature, is a journal folder)
        self.artifacts: list[list[dict]] = []  # per run: its artifact files (named after its id once known)
        self.known: list[tuple[Path, list, Any]] = []  # folders whose run the database has: recorded only

    def __len__(self) -> int:
        return len(self.runs)


class Copier:
    """Copies the runs of `folders` (the file store, the journal) into database `db`, until done or `stop`."""

    def __init__(
        self,
        db: Any,
        folders: list[Path],
        stop: threading.Event,
        journal: Path | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.db, self.folders, self.stop, self.journal, self.log = db, folders, stop, journal, log
        self.counts = {"copied": 0, "already_there": 0, "running": 0}
        self.total = 0
        self.done = threading.Event()
        self.finished = False  # every pending run copied (not stopped, no error)
        self.error: BaseException | None = None
        self.error_reported = False
        self._sources: dict[tuple[str, str], Any] = {}
        self._batch_size = 16
        self._next_id: int | None = None
        self._copied_ids: list[Any] = []  # relinked once the copy is done

    # --- the whole copy ------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._copy()
        except BaseException as exc:  # the batch in flight is repaired at the next start
            if not self.stop.is_set():  # (a stop closes the connection under a batch: not an error)
                self.error = exc
        finally:
            self.done.set()

    def _copy(self) -> None:
        started = time.monotonic()
        upgrade(self.db, self.stop)  # indexes first; an older version's layout brought up to date
        copied = {doc["_id"]: doc.get("signature") for doc in self.db[COPIED].find({}, {"signature": 1})}
        pending = []
        for folder in self.folders:
            for run_dir in run_folders(folder):
                sig = signature(run_dir)
                if sig[0][0] < 0:
                    continue  # no run.json: not a run (or not yet one)
                previous = copied.get(str(run_dir.resolve()))
                if previous == sig:
                    self.counts["already_there"] += 1
                else:
                    pending.append((run_dir, sig, previous is not None, folder == self.journal))
        self.total = len(pending)
        in_db = {  # (read only when there is something to copy: it reads every run document)
            doc.get("meta", {}).get("run_uid"): (doc["_id"], doc.get("status"))
            for doc in (self.db["runs"].find({}, {"meta.run_uid": 1, "status": 1}) if pending else [])
        }
        # Read and write at once: one thread reads run folders into batches while this one writes the last.
        batches: queue.Queue[Batch | None] = queue.Queue(maxsize=2)
        failed: list[BaseException] = []
        reader = threading.Thread(target=self._read, args=(pending, in_db, batches, failed), name="read runs")
        reader.start()
        last_progress = time.monotonic()
        while (batch := batches.get()) is not None:
            if self.stop.is_set():
                continue  # drained, not written, until the reader has seen the stop
            self._write(batch)
            if time.monotonic() - last_progress >= PROGRESS_EVERY:
                last_progress = time.monotonic()
                rate = self.counts["copied"] / max(last_progress - started, 1e-9)
                self.log(
                    f"copying runs into the dashboard's database: {self.counts['copied']} of {self.total} "
                    f"copied ({rate:.0f} runs/s)"
                )
        reader.join()
        if failed:
            raise failed[0]
        if not self.stop.is_set():
            if self.counts["copied"]:
                relink(self.db, self._copied_ids)  # the copied runs' links name the ids their runs have here
            self.finished = True
            self.log(
                f"copy done: {self.counts['copied']} runs copied, {self.counts['already_there']} already there"
                + (f", {self.counts['running']} still running or killed (not copied)" if self.counts["running"] else "")
                + f" ({time.monotonic() - started:.1f} s)"
            )

    def _read(self, pending: list, in_db: dict[str, Any], batches: queue.Queue, failed: list) -> None:
        try:
            batch = Batch()
            for run_dir, sig, changed, is_journal in pending:
                if self.stop.is_set():
                    break
                self._add(batch, run_dir, sig, changed, is_journal, in_db)
                if len(batch) >= self._batch_size or len(batch.known) >= KNOWN_PER_WRITE:
                    batches.put(batch)
                    batch = Batch()
            if len(batch) or batch.known:
                batches.put(batch)
        except BaseException as exc:
            failed.append(exc)
        finally:
            batches.put(None)

    def _add(
        self, batch: Batch, run_dir: Path, sig: list, changed: bool, is_journal: bool, in_db: dict[str, Any]
    ) -> None:
        record = json.loads((run_dir / "run.json").read_text())
        marker = _read_json(run_dir / MARKER)
        if record.get("status") == "RUNNING" and not marker:
            self.counts["running"] += 1  # still running (or killed): copied once it has finished
            return
        uid = run_uid_of(run_dir, record)
        there = in_db.get(uid)
        if there is not None and there[1] == record.get("status") and not changed:
            batch.known.append((run_dir, sig, there[0]))  # logged live, or copied by an older version
            return
        if there is not None:  # a changed run, or one the database holds partly: rewritten in place
            mongo_id = replay(run_dir, self.db.client, self.db.name)
            self._copied_ids.append(mongo_id)
            self._record([(run_dir, sig, mongo_id)])
            if is_journal:
                write_marker(run_dir, uid, mongo_id, True)
            self.counts["copied"] += 1
            return
        self._read_into(batch, run_dir, record, uid)
        batch.folders.append((run_dir, sig, is_journal))

    # --- one run, read --------------------------------------------------------------------------------

    def _read_into(self, batch: Batch, run_dir: Path, record: dict, uid: str) -> None:
        config = _read_json(run_dir / "config.json")
        info = _read_json(run_dir / "info.json")
        info.pop("metrics", None)
        metrics = _read_json(run_dir / "metrics.json")
        captured = (run_dir / "cout.txt").read_text(errors="replace") if (run_dir / "cout.txt").exists() else ""
        series = []
        for name, m in metrics.items():
            series.append(
                {
                    "_id": ObjectId(),
                    "name": name,
                    "steps": m["steps"],
                    "values": m["values"],
                    "timestamps": [_time(t) for t in m["timestamps"]],
                }
            )
        info["metrics"] = [{"name": s["name"], "id": str(s["_id"])} for s in series]
        experiment = dict(record["experiment"])
        experiment["sources"] = [
            [name, self._source(batch, name, run_dir.parent / stored)]
            for name, stored in record["experiment"].get("sources", [])
            if (run_dir.parent / stored).is_file()
        ]
        artifacts = []
        for name in record.get("artifacts", []):
            if (run_dir / name).is_file():
                files_doc, chunks = _gridfs(
                    (run_dir / name).read_bytes(), name, None, mimetypes.guess_type(name)[0]
                )  # named artifact://runs/<id>/<name> once the run has its id
                artifacts.append(files_doc)
                batch.files.append(files_doc)
                batch.chunks.extend(chunks)
        status = record.get("status")
        document = {
            "experiment": experiment,
            "format": SACRED_FORMAT,
            "command": record.get("command"),
            "host": record.get("host", {}),
            "start_time": _time(record.get("start_time")),
            "config": config,
            "meta": {**record.get("meta", {}), "run_uid": uid},
            "status": status,
            "resources": [],
            "artifacts": [{"name": f["filename"], "file_id": f["_id"]} for f in artifacts],
            "captured_out": truncate_output(captured),
            "info": info,
            "heartbeat": _time(record.get("heartbeat")),
            "result": record.get("result"),
        }
        if record.get("stop_time"):
            document["stop_time"] = _time(record.get("stop_time"))
        if status == "FAILED":
            document["fail_trace"] = record.get("fail_trace")
        best = {
            name: pick(metrics[name]["values"]) for name, pick in BEST.items() if metrics.get(name, {}).get("values")
        }
        document = {**table_fields(document, best), **document}
        document[SUMMARY_FIELD] = metric_summaries({name: m["values"] for name, m in metrics.items()})
        batch.runs.append(document)
        batch.metrics.append(series)
        batch.artifacts.append(artifacts)

    def _source(self, batch: Batch, name: str, path: Path) -> Any:
        """The GridFS id of source file `name` with this content: stored once, shared by every run."""
        data = path.read_bytes()
        key = (name, hashlib.sha256(data).hexdigest())
        if key not in self._sources:
            found = self.db["fs.files"].find_one({"filename": name, "metadata.sha256": key[1]}, {"_id": 1})
            if found is None:
                files_doc, chunks = _gridfs(data, name, {"sha256": key[1]}, None)
                batch.files.append(files_doc)
                batch.chunks.extend(chunks)
                found = files_doc
            self._sources[key] = found["_id"]
        return self._sources[key]

    # --- a batch, written -----------------------------------------------------------------------------

    def _write(self, batch: Batch) -> None:
        if batch.known:
            self._record(batch.known)
            self.counts["already_there"] += len(batch.known)
        if not len(batch):
            return
        started = time.monotonic()
        uids = [doc["meta"]["run_uid"] for doc in batch.runs]
        self.db[COPY_BATCH].replace_one(
            {"_id": "batch"},
            {
                "run_uids": uids,
                "metric_ids": [s["_id"] for series in batch.metrics for s in series],
                "file_ids": [f["_id"] for f in batch.files],
            },
            upsert=True,
        )
        self._insert_runs(batch.runs)
        self._copied_ids.extend(document["_id"] for document in batch.runs)
        for document, series, artifacts in zip(batch.runs, batch.metrics, batch.artifacts, strict=True):
            for s in series:
                s["run_id"] = document["_id"]
            for files_doc in artifacts:
                files_doc["filename"] = f"artifact://runs/{document['_id']}/{files_doc['filename']}"
        metrics = [s for series in batch.metrics for s in series]
        if metrics:
            self.db["metrics"].insert_many(metrics, ordered=False)
        if batch.chunks:
            self.db["fs.chunks"].insert_many(batch.chunks, ordered=False)
        if batch.files:
            self.db["fs.files"].insert_many(batch.files, ordered=False)
        # The batch is whole: from here a kill leaves runs the next start finds by their uid, not a batch to redo.
        self.db[COPY_BATCH].delete_one({"_id": "batch"})
        self._record(
            [(run_dir, sig, doc["_id"]) for (run_dir, sig, _), doc in zip(batch.folders, batch.runs, strict=True)]
        )
        for (run_dir, _, is_journal), doc in zip(batch.folders, batch.runs, strict=True):
            if is_journal:  # `runner sync` reads the journal's markers
                write_marker(run_dir, doc["meta"]["run_uid"], doc["_id"], True)
        self.counts["copied"] += len(batch)
        seconds = time.monotonic() - started
        if seconds < BATCH_SECONDS / 2:
            self._batch_size = min(self._batch_size * 2, 512)
        elif seconds > BATCH_SECONDS * 2:
            self._batch_size = max(self._batch_size // 2, 1)

    def _insert_runs(self, documents: list[dict]) -> None:
        """Insert with the next free ids; a run logged live meanwhile may take one, then the rest move up.

        The next id is kept here, not asked for each batch: finding the highest id sorts the whole runs
        collection in SecantusDB (about 0.2 s at 2,000 runs, growing with every run)."""
        remaining = documents
        while remaining:
            if self._next_id is None:
                last = self.db["runs"].find_one({}, {"_id": 1}, sort=[("_id", -1)])
                self._next_id = last["_id"] + 1 if last is not None else 1
            for offset, document in enumerate(remaining):
                document["_id"] = self._next_id + offset
            try:
                self.db["runs"].insert_many(remaining, ordered=True)
                self._next_id += len(remaining)
                return
            except BulkWriteError as exc:
                if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                    raise
                remaining = remaining[exc.details.get("nInserted", 0) :]
                self._next_id = None  # taken by a live run: ask again

    def _record(self, entries: list[tuple[Path, list, Any]]) -> None:
        from pymongo import ReplaceOne

        if entries:
            self.db[COPIED].bulk_write(
                [
                    ReplaceOne({"_id": str(run_dir.resolve())}, {"signature": sig, "run_id": run_id}, upsert=True)
                    for run_dir, sig, run_id in entries
                ],
                ordered=False,
            )

    def repair(self) -> None:
        """Delete what a batch cut short by a kill wrote (its runs are copied again)."""
        batch = self.db[COPY_BATCH].find_one({"_id": "batch"})
        if batch is None:
            return
        self.db["runs"].delete_many({"meta.run_uid": {"$in": batch["run_uids"]}})
        self.db["metrics"].delete_many({"_id": {"$in": batch["metric_ids"]}})
        self.db["fs.chunks"].delete_many({"files_id": {"$in": batch["file_ids"]}})
        self.db["fs.files"].delete_many({"_id": {"$in": batch["file_ids"]}})
        self.db[COPY_BATCH].delete_one({"_id": "batch"})
