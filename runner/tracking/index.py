"""An index of a file store: one SQLite file beside the run folders, so a listing reads one file, not every run.

The run folders stay the source of truth. Every read first compares each folder's signature (size and
modification time of run.json, metrics.json and info.json: three stat calls, no JSON parsed) with the one
the index holds, and re-reads only the folders that are new or changed, and forgets removed ones. So runs
written by another process or node, copied in by rsync or logged by an older version appear in the next
listing, and a listing never answers from a stale index. The file observer also updates the index when a
run starts and ends (`note_run`), so that the next read finds nothing to do.

A missing index is built; one this version did not write, or one SQLite finds damaged, is rebuilt from the
run folders (the latter with one warning line). `python -m runner runs reindex` rebuilds it on demand.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from runner.tracking import query as q
from runner.tracking.outcome import LINKS
from runner.tracking.runstore import _read_run_folder, summary_row

INDEX_FILE = ".odeflow-index.sqlite"  # in the store's folder; Sacred and the readers only look at numbered folders
SIGNATURE_FILES = ("run.json", "metrics.json", "info.json")  # Sacred rewrites these as a run goes on
SCHEMA_VERSION = 2  # 2: each run's uid and its links' (fields of scope 'meta'), by which links are resolved
INDEXED_META = ("run_uid", *(f"{key}_uid" for key in LINKS))
FINISHED = ("COMPLETED", "FAILED", "INTERRUPTED", "TIMEOUT")  # Sacred writes nothing more into such a run
BATCH = 2000  # runs per transaction while (re)building: an interrupted build keeps what it did

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY, sig TEXT NOT NULL, state TEXT NOT NULL, problem TEXT,
    status TEXT, experiment TEXT, host TEXT, start_time TEXT, stop_time TEXT, result,
    dataset TEXT, model TEXT, solver TEXT, sweep TEXT, summary TEXT);
CREATE TABLE keys (id INTEGER PRIMARY KEY, scope TEXT NOT NULL, name TEXT NOT NULL, UNIQUE (scope, name));
CREATE TABLE fields (run_id INTEGER, key_id INTEGER, value, PRIMARY KEY (run_id, key_id)) WITHOUT ROWID;
CREATE TABLE metrics (
    run_id INTEGER, key_id INTEGER, last REAL, min REAL, max REAL, epochs INTEGER,
    PRIMARY KEY (run_id, key_id)) WITHOUT ROWID;
"""
# Dropped while a big build inserts (then made once, faster than kept up row by row), and made at every open.
SECONDARY_INDEXES = """
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status);
CREATE INDEX IF NOT EXISTS runs_by_start ON runs (start_time);
CREATE INDEX IF NOT EXISTS fields_by_value ON fields (key_id, value);
CREATE INDEX IF NOT EXISTS metrics_by_last ON metrics (key_id, last);
"""
BIG_BUILD = 2000  # runs to (re)read at once from which a build drops the indexes and reads with a process pool
BUILD_CACHE_KB = 32_000  # SQLite's page cache while building (2 MB otherwise): the secondary indexes' sort; 64 MB
# was no faster and took a 100,000-run build to 343 MB of memory (264 MB with this)


def _version() -> str:
    """Changes when the schema or the summary columns change: an index written by another version is rebuilt."""
    source = inspect.getsource(summary_row)
    return f"{SCHEMA_VERSION}:{hashlib.sha1(source.encode()).hexdigest()[:12]}"


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def signature(run_dir: str) -> str:
    """Size and modification time of the files Sacred rewrites: a changed run has a changed signature."""
    parts = []
    for name in SIGNATURE_FILES:
        try:
            st = os.stat(os.path.join(run_dir, name))
            parts.append(f"{st.st_mtime_ns}:{st.st_size}")
        except OSError:
            parts.append("-")
    return "|".join(parts)


def folder_signature(st: os.stat_result) -> str:
    """A finished run's folder: its modification and change times. Every write of this project's observer
    replaces a file (a rename in the folder), and a copy by rsync or cp -a sets the folder's time (which changes
    its change time); so one stat per finished run, not three, tells that it changed."""
    return f"d{st.st_mtime_ns}:{st.st_ctime_ns}"


def _racy(sig: str) -> bool:
    """A file changed in the last two seconds may change again within its modification time's resolution (a few
    milliseconds on Linux) without changing size: its signature could then miss the change. Such runs are read
    again at the next refresh (git's "racily clean" entries, the same problem)."""
    newest = max((int(part.lstrip("d").split(":")[0]) for part in sig.split("|") if ":" in part), default=0)
    return newest > time.time_ns() - 2_000_000_000


def flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Dotted keys and their leaf values (bools as 0/1); lists and other non-scalars as JSON text."""
    leaves: list[tuple[str, Any]] = []
    _flatten_into(leaves, value, prefix)
    return leaves


def _flatten_into(leaves: list, value: Any, prefix: str) -> None:
    if type(value) is dict and value:
        for key, inner in value.items():
            _flatten_into(leaves, inner, f"{prefix}.{key}" if prefix else str(key))
    elif not prefix:
        return
    elif value is None or type(value) in (int, str):
        leaves.append((prefix, value))
    elif type(value) is float:
        leaves.append((prefix, value if math.isfinite(value) else None))
    elif type(value) is bool:
        leaves.append((prefix, int(value)))
    else:
        leaves.append((prefix, json.dumps(value, default=str, sort_keys=True)))


def metric_summaries(metrics: dict[str, dict[str, list]]) -> dict[str, dict[str, Any]]:
    """name -> last, min, max (of the finite values) and how many values."""
    summaries = {}
    for name, series in metrics.items():
        values = series.get("values") or []
        try:
            finite = values if math.isfinite(sum(values)) else None  # NaN or infinity anywhere makes the sum so
        except TypeError:
            finite = None
        if finite is None:
            finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
        last = values[-1] if values and isinstance(values[-1], (int, float)) and math.isfinite(values[-1]) else None
        summaries[name] = {
            "last": last,
            "min": min(finite) if finite else None,
            "max": max(finite) if finite else None,
            "epochs": len(values),
        }
    return summaries


def read_for_index(run_dir: str) -> tuple:
    """What the index keeps of one run folder (made in a worker process during a big build):
    ("gone",) | ("damaged", files' signature, problem) | ("empty", files' signature) |
    ("ok", signature, the runs row's values after id and sig, [(scope, key, value)], [(metric, last, min, max, n)])"""
    try:  # the signatures are taken before reading: a change while reading shows at the next refresh
        folder = folder_signature(os.stat(run_dir))
    except OSError:
        return ("gone",)
    files = signature(run_dir)
    try:
        record = _read_run_folder(Path(run_dir), histories=False)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        damaged = getattr(exc, "damaged_file", run_dir)
        return (
            "damaged",
            files,
            f"{damaged} is damaged ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})",
        )
    if record is None:  # a folder whose run.json is not written yet
        return ("empty", files)
    sig = folder if record.status in FINISHED else files
    summary = summary_row(record)
    row = (
        record.status,
        record.experiment,
        (record.host or {}).get("hostname"),
        _time(record.start_time),
        _time(record.stop_time),
        record.result if isinstance(record.result, (int, float, str)) else None,
        *(None if summary.get(c) is None else str(summary[c]) for c in q.SUMMARY_COLUMNS),
        json.dumps(summary, default=str),
    )
    fields = [("config", k, v) for k, v in flatten(record.config)] + [("info", k, v) for k, v in flatten(record.info)]
    # Its uid (what a link to it carries, whatever its id here) and its links' uids (SUPERSEDED: superseded_by_uid).
    fields += [("meta", key, record.meta[key]) for key in INDEXED_META if isinstance(record.meta.get(key), str)]
    metrics = [(n, m["last"], m["min"], m["max"], m["epochs"]) for n, m in metric_summaries(record.metrics).items()]
    return ("ok", sig + "|racy" if _racy(sig) else sig, row, fields, metrics)  # racy: read again next time


_NO_ROW = (None,) * 11  # the runs row of a damaged or empty folder: no status, times, result or summary


def _time(value: Any) -> str | None:
    return None if value is None else str(value)


class RunIndex:
    """The index of one file store. `using_index` opens it, brings it in step with the run folders and
    rebuilds it when it is damaged; `refresh` must run before answering."""

    def __init__(self, store_dir: Path | str, warn: Callable[[str], None] | None = None, in_memory: bool = False):
        self.root = Path(store_dir).expanduser()
        self.path = self.root / INDEX_FILE
        self.warn = warn or _stderr
        self._keys: dict[tuple[str, str], int] = {}
        self.in_memory = in_memory or not (self.root.is_dir() and os.access(self.root, os.W_OK))
        self.conn = self._create(sqlite3.connect(":memory:")) if self.in_memory else self._open_file()

    def _open_file(self) -> sqlite3.Connection:
        """The index file, created if missing, recreated if another version wrote it."""
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            version = (
                conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone() if _has_meta(conn) else None
            )
            if not version or version[0] != _version():
                conn.close()
                remove_index(self.root)
                conn = self._create(sqlite3.connect(self.path, timeout=30, isolation_level=None))
            conn.execute("PRAGMA journal_mode = WAL")  # readers go on while a run's end is written
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.executescript(SECONDARY_INDEXES)
        except BaseException:
            conn.close()
            raise
        return conn

    def _create(self, conn: sqlite3.Connection) -> sqlite3.Connection:
        conn.isolation_level = None
        conn.executescript(SCHEMA + SECONDARY_INDEXES)
        conn.execute("INSERT INTO meta VALUES ('version', ?)", (_version(),))
        return conn

    # --- keeping it in step with the run folders

    def refresh(self) -> None:
        """Re-read the run folders that are new or changed since the index saw them; forget removed ones.

        A run that ended is checked by its folder's times (one stat), one still running or unreadable by its
        files' (three): runs still being written are the ones whose files may change in place."""
        known = dict(self.conn.execute("SELECT id, sig FROM runs"))
        changed, found = [], set()
        try:
            entries = os.scandir(self.root)
        except FileNotFoundError:
            entries = None
        for entry in entries or ():
            name = entry.name
            if not name.isdigit():
                continue
            run_id = int(name)
            found.add(run_id)
            old = known.get(run_id)
            if old is not None and old[0] == "d":
                try:
                    if folder_signature(entry.stat()) == old:
                        continue
                except OSError:
                    pass
            elif old is not None and signature(entry.path) == old:
                continue
            changed.append(run_id)
        if entries is not None:
            entries.close()
        removed = [i for i in known if i not in found]
        changed.sort(reverse=True)  # newest first: an interrupted build has the runs a listing shows first
        if len(changed) > 2000:
            self.warn(f"indexing {len(changed):,} runs of {self.root} (once: later commands read {INDEX_FILE} there)")
        if removed:
            self._write(lambda: self._forget(removed))
        if len(changed) >= BIG_BUILD:
            self._build(changed, fresh=not known)
        for start in range(0, len(changed) if len(changed) < BIG_BUILD else 0, BATCH):
            batch = changed[start : start + BATCH]
            self._write(lambda batch=batch: self._insert([(i, read_for_index(str(self.root / str(i)))) for i in batch]))
        for run_id, problem in self.conn.execute("SELECT id, problem FROM runs WHERE state = 'damaged' ORDER BY id"):
            self.warn(f"warning: skipping run {run_id}: {problem}; restore or delete that run folder")

    def _build(self, changed: list[int], fresh: bool = False) -> None:
        """Many runs at once (a new index): folders read by a process pool, rows inserted in large transactions
        without the secondary indexes, which are made once at the end (sorting once is cheaper than keeping a
        B-tree in order row by row). Durability is relaxed meanwhile: a build cut short by a crash is a cache
        lost, read again from the folders; each batch's commit still leaves a consistent index."""
        import multiprocessing

        for name in ("runs_by_status", "runs_by_start", "fields_by_value", "metrics_by_last"):
            self.conn.execute(f"DROP INDEX IF EXISTS {name}")
        self.conn.execute("PRAGMA synchronous = OFF")
        self.conn.execute(f"PRAGMA cache_size = -{BUILD_CACHE_KB}")
        paths = [str(self.root / str(i)) for i in changed]
        workers = max(1, min(4, (os.cpu_count() or 1)))
        context = multiprocessing.get_context("fork") if sys.platform != "win32" else None
        try:
            with context.Pool(workers) if context and workers > 1 else _SerialPool() as pool:
                # One batch read ahead while the last is inserted: at most two batches of parsed runs wait here
                # whatever the store's size (one imap over every folder queues them all when SQLite is slower).
                batches = [paths[start : start + BATCH] for start in range(0, len(changed), BATCH)]
                reading = [pool.imap(read_for_index, batch, chunksize=64) for batch in batches[:1]]
                for number, start in enumerate(range(0, len(changed), BATCH)):
                    if number + 1 < len(batches):
                        reading.append(pool.imap(read_for_index, batches[number + 1], chunksize=64))
                    batch = list(zip(changed[start : start + BATCH], reading.pop(0), strict=True))
                    self._write(lambda batch=batch: self._insert(batch, fresh))
            self.conn.executescript(SECONDARY_INDEXES)
        finally:
            self.conn.execute("PRAGMA synchronous = NORMAL")
            self.conn.execute("PRAGMA cache_size = -2000")  # SQLite's default

    def note(self, run_id: int) -> None:
        """Index one run now (the file observer calls this as a run starts and ends)."""
        self._write(lambda: self._insert([(run_id, read_for_index(str(self.root / str(run_id))))]))

    def _write(self, work: Callable[[], Any]) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            work()
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def _forget(self, ids: list[int]) -> None:
        for table, column in (("runs", "id"), ("fields", "run_id"), ("metrics", "run_id")):
            self.conn.executemany(f"DELETE FROM {table} WHERE {column} = ?", [(i,) for i in ids])

    def key_id(self, scope: str, name: str, create: bool = False) -> int | None:
        cached = self._keys.get((scope, name))
        if cached is not None:
            return cached
        row = self.conn.execute("SELECT id FROM keys WHERE scope = ? AND name = ?", (scope, name)).fetchone()
        if row is None and create:
            row = (self.conn.execute("INSERT INTO keys (scope, name) VALUES (?, ?)", (scope, name)).lastrowid,)
        if row is not None:
            self._keys[(scope, name)] = row[0]
        return row[0] if row else None

    def _insert(self, reads: list[tuple[int, tuple]], fresh: bool = False) -> None:
        """Store what read_for_index read of run folders, replacing what the index held of them (nothing, when
        `fresh`: a new index). One statement per table for the whole batch."""
        if not fresh:
            self._forget([run_id for run_id, _ in reads])
        keys, key_id = self._keys, self.key_id
        runs, fields, metrics = [], [], []
        for run_id, read in reads:
            if read[0] in ("damaged", "empty"):
                runs.append((run_id, read[1], read[0], read[2] if read[0] == "damaged" else None, *_NO_ROW))
            elif read[0] == "ok":
                _, sig, row, run_fields, run_metrics = read
                runs.append((run_id, sig, "ok", None, *row))
                for scope, key, value in run_fields:
                    fields.append((run_id, keys.get((scope, key)) or key_id(scope, key, create=True), value))
                for name, *summary in run_metrics:
                    key = keys.get(("metrics", name)) or key_id("metrics", name, create=True)
                    metrics.append((run_id, key, *summary))
        self.conn.executemany(f"INSERT INTO runs VALUES ({','.join('?' * (4 + len(_NO_ROW)))})", runs)
        # OR REPLACE: a dotted key can come twice ({"a.b": 1, "a": {"b": 2}}); the last one stays
        self.conn.executemany("INSERT OR REPLACE INTO fields VALUES (?, ?, ?)", fields)
        self.conn.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?)", metrics)

    # --- answering

    def select(
        self,
        where: Any = None,
        sort: list[q.SortKey] | None = None,
        limit: int = 50,
        offset: int = 0,
        after: int | None = None,
    ) -> tuple[list[int], int]:
        """(the ids of one page of runs that match, in order; how many match in all). `after` (newest first
        only): the page starts below that id, in place of the offset."""
        condition, params = self._sql_where(where)
        total = self.conn.execute(f"SELECT count(*) FROM runs WHERE {condition}", params).fetchone()[0]
        if after is not None and not sort:
            condition, params, offset = f"runs.id < ? AND {condition}", [int(after), *params], 0
        order, joins, join_params = self._sql_order(sort or [])
        page = f" LIMIT {int(limit)} OFFSET {int(offset)}" if limit else f" LIMIT -1 OFFSET {int(offset)}"
        sql = f"SELECT runs.id FROM runs {joins} WHERE {condition} ORDER BY {order}{page}"
        return [row[0] for row in self.conn.execute(sql, join_params + params)], total

    def iter_ids(self, where: Any = None, sort: list[q.SortKey] | None = None) -> Iterator[int]:
        """Every matching id in order, read as it goes."""
        condition, params = self._sql_where(where)
        order, joins, join_params = self._sql_order(sort or [])
        cursor = self.conn.execute(
            f"SELECT runs.id FROM runs {joins} WHERE {condition} ORDER BY {order}", join_params + params
        )
        while rows := cursor.fetchmany(1000):
            yield from (row[0] for row in rows)

    def summaries(self, ids: list[int]) -> dict[int, dict[str, Any]]:
        """summary_row of each run, as indexed."""
        found = {}
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            for run_id, summary in self.conn.execute(f"SELECT id, summary FROM runs WHERE id IN ({marks})", chunk):
                found[run_id] = json.loads(summary)
        return found

    def values(self, ids: list[int], fields: list[q.Field]) -> dict[int, dict[str, Any]]:
        """The value of each field for each run (None where a run has none): extra columns of a listing."""
        table: dict[int, dict[str, Any]] = {i: {} for i in ids}
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            for f in fields:
                if f.scope == "column":
                    column = f.key if f.key in (*q.RUN_COLUMNS, *q.SUMMARY_COLUMNS) else None
                    sql = f"SELECT id, {column} FROM runs WHERE id IN ({marks})"
                    rows = self.conn.execute(sql, chunk) if column else []
                else:
                    key = self.key_id(f.scope, f.key)
                    if key is None:
                        continue
                    if f.scope == "metrics":
                        sql = f"SELECT run_id, {f.aggregate} FROM metrics WHERE key_id = ? AND run_id IN ({marks})"
                    else:
                        sql = f"SELECT run_id, value FROM fields WHERE key_id = ? AND run_id IN ({marks})"
                    rows = self.conn.execute(sql, [key, *chunk])
                for run_id, value in rows:
                    table[run_id][f.name] = value
        return table

    def ids_by_uid(self, uids: list[str]) -> dict[str, list[int]]:
        """The ids of the runs with these uids (by the fields' value index, not by reading folders)."""
        key = self.key_id("meta", "run_uid")
        found: dict[str, list[int]] = {}
        for chunk in _chunks(sorted(set(uids))) if key is not None else ():
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT value, run_id FROM fields WHERE key_id = ? AND value IN ({marks}) ORDER BY run_id"
            for uid, run_id in self.conn.execute(sql, [key, *chunk]):
                found.setdefault(uid, []).append(run_id)
        return found

    def config_columns(self) -> list[str]:
        """Every config key any indexed run has, as `config.<key>` columns."""
        rows = self.conn.execute("SELECT name FROM keys WHERE scope = 'config' ORDER BY name")
        return [f"config.{name}" for (name,) in rows]

    def distinct(self, column: str) -> list[str]:
        if column not in (*q.RUN_COLUMNS, *q.SUMMARY_COLUMNS):
            return []
        rows = self.conn.execute(f"SELECT DISTINCT {column} FROM runs WHERE state = 'ok' AND {column} IS NOT NULL")
        return sorted(str(v) for (v,) in rows)

    def count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM runs WHERE state = 'ok'").fetchone()[0]

    def close(self) -> None:
        self.conn.close()

    # --- the query tree as SQL (values always as parameters)

    def _sql_where(self, tree: Any) -> tuple[str, list]:
        condition, params = self._sql(tree) if tree is not None else ("1", [])
        return f"state = 'ok' AND ({condition})", params

    def _sql(self, tree: Any) -> tuple[str, list]:
        if isinstance(tree, q.Logical):
            parts = [self._sql(t) for t in tree.operands]
            return "(" + f" {tree.op.upper()} ".join(p for p, _ in parts) + ")", [v for _, ps in parts for v in ps]
        if isinstance(tree, q.Not):
            inner, params = self._sql(tree.operand)
            return f"NOT {inner}", params
        return self._sql_compare(tree)

    def _sql_compare(self, c: q.Compare) -> tuple[str, list]:
        test, params = _sql_test("value", c)
        f = c.field
        if f.scope == "column":
            if f.key not in (*q.RUN_COLUMNS, *q.SUMMARY_COLUMNS):
                return "0", []
            return _sql_test("runs." + f.key, c)
        key = self.key_id(f.scope, f.key)
        if key is None:  # no run has it: nothing compares true
            return "0", []
        if f.scope == "metrics":
            test, params = _sql_test(f.aggregate, c)
            return f"runs.id IN (SELECT run_id FROM metrics WHERE key_id = ? AND {test})", [key, *params]
        return f"runs.id IN (SELECT run_id FROM fields WHERE key_id = ? AND {test})", [key, *params]

    def _sql_order(self, keys: list[q.SortKey]) -> tuple[str, str, list]:
        """(ORDER BY terms, LEFT JOINs, the joins' parameters): missing values last either way, then newest first."""
        terms, joins, params = [], [], []
        for n, k in enumerate(keys):
            f, direction = k.field, "DESC" if k.descending else "ASC"
            if f.scope == "column":
                column = f"runs.{f.key}" if f.key in (*q.RUN_COLUMNS, *q.SUMMARY_COLUMNS) else "NULL"
            else:
                table = "metrics" if f.scope == "metrics" else "fields"
                joins.append(f"LEFT JOIN {table} s{n} ON s{n}.run_id = runs.id AND s{n}.key_id = ?")
                params.append(self.key_id(f.scope, f.key) or -1)
                column = f"s{n}.{f.aggregate if f.scope == 'metrics' else 'value'}"
            terms.append(f"{column} {direction} NULLS LAST")
        terms.append("runs.id DESC")
        return ", ".join(terms), " ".join(joins), params


def _sql_test(column: str, c: q.Compare) -> tuple[str, list]:
    """A comparison that is true or false, never NULL; numbers compare with numbers, strings with strings."""
    if c.op == "like":
        return f"(typeof({column}) = 'text' AND {column} LIKE ?)", [c.value]
    values = c.value if c.op == "in" else (c.value,)
    if not values:  # `in ()`: nothing is in it
        return "0", []
    numeric = [int(v) if isinstance(v, bool) else v for v in values if not isinstance(v, str)]
    text = [v for v in values if isinstance(v, str)]
    if c.op == "in":
        parts, params = [], []
        if numeric:
            parts.append(f"(typeof({column}) IN ('integer', 'real') AND {column} IN ({','.join('?' * len(numeric))}))")
            params += numeric
        if text:
            parts.append(f"(typeof({column}) = 'text' AND {column} IN ({','.join('?' * len(text))}))")
            params += text
        return "(" + " OR ".join(parts) + ")", params
    kind = "= 'text'" if text else "IN ('integer', 'real')"
    return f"(typeof({column}) {kind} AND {column} {c.op} ?)", [(numeric or text)[0]]


class _SerialPool:
    def __enter__(self) -> _SerialPool:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def imap(self, function: Callable, items: list, chunksize: int = 1) -> Iterator:
        return map(function, items)


def _has_meta(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone() is not None


def _chunks(ids: list[int], size: int = 900) -> Iterator[list[int]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def remove_index(store_dir: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{Path(store_dir) / INDEX_FILE}{suffix}").unlink(missing_ok=True)


def note_run(store_dir: str, run_id: Any) -> None:
    """Index one run as the file observer records it, where the store already has an index; never raises
    (a run must not fail over its index: the next read re-reads the folder)."""
    try:
        if not str(run_id).isdigit() or not (Path(store_dir) / INDEX_FILE).exists():
            return
        index = RunIndex(store_dir, warn=lambda line: None)
        try:
            index.note(int(run_id))
        finally:
            index.close()
    except Exception:  # noqa: BLE001 - the index is a cache; the run folder has the record
        pass


# SQLite's answers for an index it cannot use now (locked by another process for 30 s, not writable, disk full):
# such a command answers from an index in memory instead, and leaves the file alone.
_NOT_DAMAGE = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_FULL", "SQLITE_PERM")


def using_index(
    store_dir: Path | str,
    work: Callable[[RunIndex], Any] | None = None,
    warn: Callable[[str], None] | None = None,
    rebuild: bool = False,
) -> Any:
    """work(index) on the store's index brought in step with its run folders (without work: that index, open,
    for the caller to close). A damaged index is rebuilt from the folders (one warning line) and the work done
    again: no answer comes from a damaged one."""
    warn = warn or _stderr
    root = Path(store_dir).expanduser()
    if rebuild:
        remove_index(root)
    in_memory, warned = False, False
    while True:
        index = None
        try:
            index = RunIndex(root, warn, in_memory=in_memory)
            index.refresh()
            if work is None:
                index, opened = None, index
                return opened
            return work(index)
        except sqlite3.DatabaseError as exc:
            if in_memory:
                raise
            name = getattr(exc, "sqlite_errorname", "") or ""
            if index is not None:
                index.close()
                index = None
            if not any(name.startswith(n) for n in _NOT_DAMAGE) and not warned:
                warn(
                    f"warning: the run index {root / INDEX_FILE} is damaged ({exc}): rebuilding it from the run folders"
                )
                warned = True
                remove_index(root)
            else:
                in_memory = True
        finally:
            if index is not None:
                index.close()
