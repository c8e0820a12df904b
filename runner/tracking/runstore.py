"""Read logged runs from either backend (Sacred file store or MongoDB) into one shape and into pandas."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from runner.tracking.mongo_counts import SAMPLE_CHUNK, Count, RunCounter, narrowed_by_id_ranges, top_run_id
from runner.tracking.outcome import failure_cause
from runner.tracking.query import is_number, narrowed

TopId = Callable[[], "int | None"]  # the highest run id of a runs collection, looked up when first asked for
LINK_COLUMNS = ("resumed_from", "continued_as", "superseded_by")  # summary_row's links (and <link>_uid)


@dataclass
class RunRecord:
    id: Any
    experiment: str
    status: str
    config: dict[str, Any]
    info: dict[str, Any]
    meta: dict[str, Any]
    result: Any
    start_time: Any
    stop_time: Any
    metrics: dict[str, dict[str, list]] = field(default_factory=dict)  # name -> {"steps": [...], "values": [...]}
    artifacts: list[str] = field(default_factory=list)
    host: dict[str, Any] = field(default_factory=dict)
    location: str = ""
    experiment_info: dict[str, Any] = field(default_factory=dict)  # Sacred's: sources, dependencies, repositories
    artifact_refs: dict[str, Any] = field(default_factory=dict)  # name -> file path (file store) or GridFS id
    heartbeat: Any = None  # Sacred's last sign of life of the run (every 10 s while it runs)
    # name -> {"last", "min", "max", "epochs"}: what a listing knows of a metric without reading its history
    metric_summary: dict[str, dict[str, Any]] = field(default_factory=dict)
    fail_trace: Any = None  # a FAILED run's traceback (Sacred's), read for its cause (runner.tracking.outcome)

    @property
    def liveness(self) -> str | None:
        """For a RUNNING run: "dead" (killed by SIGKILL or a power loss before it could say so), "alive" or
        "unknown" (see runner.tracking.liveness); None for a run that ended."""
        from runner.tracking.liveness import liveness

        return liveness(self.status, self.meta, self.host, self.heartbeat)

    @property
    def choices(self) -> dict[str, str]:
        """The config options the run was composed from (model=..., data=...); in meta from the start."""
        return self.info.get("choices") or self.meta.get("choices") or {}

    def final(self, metric: str) -> float | None:
        values = self.metrics.get(metric, {}).get("values")
        return values[-1] if values else self.metric_summary.get(metric, {}).get("last")

    def best(self, metric: str) -> float | None:
        values = self.metrics.get(metric, {}).get("values")
        return min(values) if values else self.metric_summary.get(metric, {}).get("min")

    def epochs(self, metric: str) -> int:
        """How many values of a metric the run logged (its history's length, or the summary's count)."""
        values = self.metrics.get(metric, {}).get("values")
        return len(values) if values else int(self.metric_summary.get(metric, {}).get("epochs") or 0)


def _read_json(path: Path, default: Any, cut: re.Pattern | None = None) -> Any:
    """A JSON file's content (default where the file is missing). With `cut`, the arrays it matches are read as
    null, unless the text left is no longer JSON: then the whole file is read."""
    try:
        with open(path, "rb") as file:
            text = file.read()
    except FileNotFoundError:
        return default
    if cut is not None:
        try:
            return json.loads(cut.sub(rb'"steps": null', text))
        except ValueError:
            pass
    return json.loads(text)


# A metrics.json's per-epoch steps and timestamps (Sacred writes every metric as {"steps": [...], "timestamps":
# [...], "values": [...]}): a listing needs only the values, and reading both as null (under one name: a fixed
# replacement is the fast one) halves the file's parse. The arrays hold numbers and ISO times, never a "]";
# were a "]" inside a string, the text left would not be JSON.
_STEPS_AND_TIMES = re.compile(rb'"(?:steps|timestamps)": *\[[^\]]*\]')


def read_file_store(directory: Path | str, warn: Callable[[str], None] | None = None) -> list[RunRecord]:
    """Every run folder of a Sacred file store (or journal), ordered by id.

    A run whose files are damaged (truncated or not JSON) is left out with one warning naming the file,
    so one broken folder does not hide the others.
    """
    warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
    root = Path(directory).expanduser()
    if not root.is_dir():
        return []
    records = []
    for run_dir in sorted((p for p in root.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        try:
            record = _read_run_folder(run_dir)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            damaged = getattr(exc, "damaged_file", run_dir)
            warn(
                f"warning: skipping run {run_dir.name}: {damaged} is damaged "
                f"({str(exc).splitlines()[0][:120] or type(exc).__name__}); "
                f"restore or delete that run folder"
            )
            continue
        if record is not None:
            records.append(record)
    return records


def _read_run_folder(run_dir: Path, histories: bool = True) -> RunRecord | None:
    """One run folder's record (None while its run.json is not written yet). Without histories, each metric's
    values only (no steps), read faster: what a listing's summary needs."""
    files = {}
    for name, default in (("run.json", None), ("config.json", {}), ("info.json", {}), ("metrics.json", {})):
        try:
            cut = _STEPS_AND_TIMES if name == "metrics.json" and not histories else None
            files[name] = _read_json(run_dir / name, default, cut)
        except (OSError, ValueError) as exc:
            exc.damaged_file = run_dir / name
            raise
    run = files["run.json"]
    if run is None:
        return None
    try:
        metrics = {
            k: {"steps": list(v["steps"]) if histories else [], "values": list(v["values"])}
            for k, v in files["metrics.json"].items()
        }
    except (KeyError, TypeError, AttributeError) as exc:
        exc.damaged_file = run_dir / "metrics.json"
        raise
    return RunRecord(
        id=int(run_dir.name),
        experiment=run.get("experiment", {}).get("name", ""),
        status=run.get("status", ""),
        config=files["config.json"],
        info=files["info.json"],
        meta=run.get("meta", {}),
        result=run.get("result"),
        start_time=run.get("start_time"),
        stop_time=run.get("stop_time"),
        metrics=metrics,
        artifacts=list(run.get("artifacts", [])),
        host=run.get("host", {}),
        location=str(run_dir),
        experiment_info=run.get("experiment", {}),
        artifact_refs={name: run_dir / name for name in run.get("artifacts", [])},
        heartbeat=run.get("heartbeat"),
        fail_trace=run.get("fail_trace"),
    )


# What a listing leaves out of a run document: the captured output, the source files, the package list.
LISTING_PROJECTION = {
    "captured_out": 0,
    "experiment.sources": 0,
    "experiment.dependencies": 0,
    "experiment.repositories": 0,
    "resources": 0,
}


def read_mongo(client: Any, db_name: str) -> list[RunRecord]:
    """Every run document of a Sacred MongoDB database with its metrics, ordered by id."""
    return read_mongo_page(client, db_name, limit=0, newest_first=False)[0]


def read_mongo_page(
    client: Any,
    db_name: str,
    where: Any = None,
    sort: list | None = None,
    limit: int = 0,
    offset: int = 0,
    lazy: bool = False,
    counter: RunCounter | None = None,
    newest_first: bool = True,
    after: Any = None,
) -> tuple[list[RunRecord], Count | None]:
    """(the runs a query matches, filtered, sorted and paged on the server; how many match in all, where a counter
    is given: a page that is not full tells without one, the others count with it, within its budget).

    A run document carries its metrics' summaries (`metric_summary`), so a listing (lazy) reads no metric
    history; documents written before that are filtered here, their summaries made from the metrics collection.
    Without lazy every run comes with its per-epoch histories. `after` (newest first only): the page starts below
    that run id, in place of the offset.
    """
    from runner.tracking import query as q
    from runner.tracking.mongo import COST_METRICS_COLLECTION, UNSUMMARIZED

    if after is not None and not sort and newest_first:  # the page below a token's last run; the total of all
        keyset = q.Compare(q.Field("column", "id"), "<", after)
        page_where = keyset if where is None else q.Logical("and", (keyset, where))
        records, _ = read_mongo_page(client, db_name, page_where, None, limit, 0, lazy)
        return records, _count_mongo(client[db_name], where, counter) if counter else None
    db = client[db_name]
    condition = q.to_mongo(where)
    order = q.mongo_sort(sort or []) if newest_first or sort else [("_id", 1)]
    projection = LISTING_PROJECTION if lazy else {"captured_out": 0}
    top_id = counter.top_id if counter else None  # looked up once for the page and its count
    summarized = narrowed(condition, "metric_summary", {"$exists": True})
    # Only a query on metrics needs the old documents apart (the server cannot compare their summaries): such a
    # search costs a scan of the collection, which SecantusDB makes for any query it cannot answer from an index.
    on_metrics = any(f.scope == "metrics" for f in [*q.fields_of(where), *(k.field for k in sort or [])])
    old_docs = list(db["runs"].find(UNSUMMARIZED, projection)) if on_metrics else []
    if old_docs:  # written before run documents carried summaries: read their metrics, filter them here
        histories = _mongo_metrics(db, [d["_id"] for d in old_docs], (COST_METRICS_COLLECTION,))
        old = [_mongo_record(d, db_name, histories.get(d["_id"], {})) for d in old_docs]
        old = [r for r in old if q.matches(where, lambda f, r=r: record_value(r, f))]
        docs = _server_page(db["runs"], summarized, projection, order, 0, offset + limit if limit else 0, top_id)
        new = [_mongo_record(d, db_name, {}) for d in docs]
        records = _python_order(new + old, sort or [], newest_first)
        told = not limit or len(docs) < offset + limit  # every matching run with summaries is in `new`
        total = (Count(len(records)) if told else _old_and_new(counter, summarized, len(old))) if counter else None
        records = records[offset : offset + limit if limit else None]
    else:
        docs = _server_page(db["runs"], condition, projection, order, offset, limit, top_id)
        records = [_mongo_record(d, db_name, {}) for d in docs]
        told = (not limit or len(docs) < limit) and (docs or not offset)  # the last page, not beyond it
        total = (Count(offset + len(docs)) if told else counter.count(condition)) if counter else None
    unsummarized = [r for r in records if not r.metric_summary and not r.metrics]
    if not lazy or unsummarized:  # histories: all asked for, or those of old documents for their summaries
        wanted = records if not lazy else unsummarized
        histories = _mongo_metrics(db, [r.id for r in wanted], (COST_METRICS_COLLECTION,))
        for r in wanted:
            r.metrics = histories.get(r.id, r.metrics)
    return records, total


def _old_and_new(counter: RunCounter, summarized: dict, old: int) -> Count:
    """The count of the runs with summaries that match, and of the old documents (matched here) that do."""
    new = counter.count(summarized)
    return Count(new.n + old, new.exact)


def _count_mongo(db: Any, where: Any, counter: RunCounter) -> Count:
    """How many runs match `where` in all (a page token's page does not tell)."""
    return read_mongo_page(db.client, db.name, where, None, 1, 0, True, counter)[1] or Count(0)


def _server_page(
    runs: Any, condition: dict, projection: dict, order: list, offset: int, limit: int, top_id: TopId | None = None
) -> list[dict]:
    """One page, sorted on the server. MongoDB sorts a missing value first when ascending; the index (and so
    every backend) puts it last: an ascending first key reads the runs that have it, then those that lack it."""
    path, direction = order[0]
    if order == [("_id", -1)] and limit:
        return _newest_page(runs, condition, projection, offset, limit, top_id)
    if limit and path != "_id":
        page = _threshold_page(runs, condition, projection, order, offset, limit, top_id)
        if page is not None:
            return page
    if direction == -1 or path == "_id":
        cursor = runs.find(condition, projection).sort(order).skip(offset)
        return list(cursor.limit(limit) if limit else cursor)
    has = {"$and": [condition, {path: {"$ne": None}}]} if condition else {path: {"$ne": None}}
    lacks = {"$and": [condition, {path: None}]} if condition else {path: None}
    cursor = runs.find(has, projection).sort(order).skip(offset)
    page = list(cursor.limit(limit) if limit else cursor)
    if limit and len(page) >= limit:
        return page
    skip = max(0, offset - runs.count_documents(has)) if not page else 0
    cursor = runs.find(lacks, projection).sort(order[1:] or [("_id", -1)]).skip(skip)
    return page + list(cursor.limit(limit - len(page)) if limit else cursor)


def _newest_page(
    runs: Any, condition: dict, projection: dict, offset: int, limit: int, top_id: TopId | None = None
) -> list[dict]:
    """One page of the newest runs (by id), read from a window of the highest ids (`_id > low`), widened until it
    holds the page. A window holds every run above `low`, so a full page from it is the page on any server; it
    spares a server that reads every document for a sort with a limit (SecantusDB, which answers a range from
    an index: the observer's index on `_id`) all but the window's. Run ids are Sacred's integers; a database
    with string or ObjectId ids (which sort above numbers) is read whole, and so are ids the condition names
    (`runs show`, `id in (...)`: points the server looks up); a range of ids in the condition (a page token's)
    narrows the window. `top_id`: the highest run id, where the caller looks it up already (RunCounter.top_id)."""
    wanted, top = offset + limit, 0  # 0: read whole
    if narrowed_by_id_ranges(condition):  # below its upper bound on ids (a page token's), else below the highest id
        bounds = [v for k, v in condition.get("_id", {}).items() if k in ("$lt", "$lte") and is_number(v)]
        top = min(bounds) if bounds else (top_id or (lambda: top_run_id(runs)))() or 0
    width = 2 * wanted
    while top - width > 0:
        window = narrowed(condition, "_id", {"$gt": top - width})
        page = list(runs.find(window, projection).sort([("_id", -1)]).limit(wanted))
        if len(page) >= wanted:
            return page[offset:]
        width *= 8
    return list(runs.find(condition, projection).sort([("_id", -1)]).skip(offset).limit(limit))


# Values of the types MongoDB sorts above numbers that a metric's summary can hold (strings, booleans, dates), as
# ranges an index answers: a descending sort puts them before every number.
_ABOVE_NUMBERS = ({"$gte": ""}, {"$in": [False, True]}, {"$gte": dt.datetime.min})


def _threshold_page(
    runs: Any, condition: dict, projection: dict, order: list, offset: int, limit: int, top_id: TopId | None = None
) -> list[dict] | None:
    """One page of a sort whose first key has an index, read from a range of its best values: `key >= t` when
    descending (`key <= t` ascending) with the condition, t widened until the range holds the page. The range holds
    every run that sorts before t, ties at t included, so a full page from it is the page of a sort of every run,
    on any server; it spares a server that reads every document for a sort with a limit (SecantusDB, which
    answers a range from an index) all but the range's. Ascending, NaN sorts before every number: those runs
    come first. The first t: of a sample of the key's values (√N runs read by id, evenly spread over Sacred's
    integer ids), the one about two pages of runs pass. None (the caller sorts every run) where no index leads with
    the key, the ids are not Sacred's integers, the sample holds no number, a value of another type sorts before the
    numbers, or the sample's last value leaves the page short."""
    path, direction = order[0]
    if any(k.startswith("$") for k in condition):  # SecantusDB reads every run for each range of such a filter
        return None
    if not any(spec["key"][0][0] == path for spec in runs.index_information().values()):
        return None
    descending, wanted = direction == -1, offset + limit
    if descending and any(runs.find_one({path: probe}, {"_id": 1}) for probe in _ABOVE_NUMBERS):
        return None
    top = (top_id or (lambda: top_run_id(runs)))()
    if top is None:
        return None
    count = min(top, max(16, math.isqrt(top)))
    ids = sorted({1 + n * top // count for n in range(count)})
    chunks = (ids[start : start + SAMPLE_CHUNK] for start in range(0, len(ids), SAMPLE_CHUNK))
    sample = (_dig(doc, path) for chunk in chunks for doc in runs.find({"_id": {"$in": chunk}}, {path: 1}))
    values = sorted((v for v in sample if is_number(v)), reverse=descending)
    if not values:
        return None
    nan = narrowed(condition, path, {"$eq": math.nan})
    first = [] if descending else list(runs.find(nan, projection).sort(order).limit(wanted))
    rank = max(1, math.ceil(2 * wanted * len(ids) / top))
    while len(first) < wanted:
        bound = {"$gte" if descending else "$lte": values[min(rank, len(values)) - 1]}
        page = list(runs.find(narrowed(condition, path, bound), projection).sort(order).limit(wanted - len(first)))
        if len(first) + len(page) >= wanted:
            return (first + page)[offset:]
        if rank >= len(values):
            return None
        rank *= 4
    return first[offset:wanted]


def _mongo_metrics(db: Any, run_ids: list, collections: tuple[str, ...]) -> dict[Any, dict[str, dict[str, list]]]:
    metrics: dict[Any, dict[str, dict[str, list]]] = {}
    for collection in ("metrics", *collections):
        if collection not in db.list_collection_names():
            continue
        for chunk in range(0, len(run_ids), 1000):
            ids = run_ids[chunk : chunk + 1000]
            for m in db[collection].find({"run_id": {"$in": ids}}, {"run_id": 1, "name": 1, "steps": 1, "values": 1}):
                metrics.setdefault(m["run_id"], {})[m["name"]] = {
                    "steps": list(m["steps"]),
                    "values": list(m["values"]),
                }
    return metrics


def _python_order(records: list[RunRecord], sort: list, newest_first: bool) -> list[RunRecord]:
    """The order of a database's sort: by each key (missing values last), then by id."""
    ordered = sorted(
        records, key=lambda r: str(r.id).zfill(20) if not isinstance(r.id, int) else r.id, reverse=newest_first
    )
    for key in reversed(sort):
        present = [r for r in ordered if record_value(r, key.field) is not None]
        missing = [r for r in ordered if record_value(r, key.field) is None]
        present.sort(key=lambda r: _sortable(record_value(r, key.field)), reverse=key.descending)
        ordered = present + missing
    return ordered


def _sortable(value: Any) -> tuple:
    """Numbers before strings, as MongoDB and SQLite order them."""
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def _mongo_record(doc: dict, db_name: str, metrics: dict[str, dict[str, list]]) -> RunRecord:
    return RunRecord(
        id=doc["_id"],
        experiment=doc.get("experiment", {}).get("name", ""),
        status=doc.get("status", ""),
        config=doc.get("config", {}),
        info=doc.get("info", {}),
        meta=doc.get("meta", {}),
        result=doc.get("result"),
        start_time=doc.get("start_time"),
        stop_time=doc.get("stop_time"),
        metrics=metrics,
        artifacts=[a["name"] for a in doc.get("artifacts", [])],
        host=doc.get("host", {}),
        location=f"mongodb {db_name}.runs/{doc['_id']}",
        experiment_info=doc.get("experiment", {}),
        artifact_refs={a["name"]: a["file_id"] for a in doc.get("artifacts", [])},
        heartbeat=doc.get("heartbeat"),
        metric_summary={k.replace("__", "."): v for k, v in (doc.get("metric_summary") or {}).items()},
        fail_trace=doc.get("fail_trace"),
    )


def _dig(tree: Any, dotted: str) -> Any:
    """A nested value by its dotted key; keys that hold dots themselves (info.test["test.acc"]) are found too."""
    if not dotted:
        return tree
    if not isinstance(tree, dict):
        return None
    if dotted in tree:
        return tree[dotted]
    parts = dotted.split(".")
    for n in range(1, len(parts)):
        head = ".".join(parts[:n])
        if head in tree:
            found = _dig(tree[head], ".".join(parts[n:]))
            if found is not None:
                return found
    return None


def record_value(record: RunRecord, field: Any) -> Any:
    """A query field's value for one run (runner.tracking.query.Field); None where the run has none."""
    if field.scope == "config":
        return _dig(record.config, field.key)
    if field.scope == "info":
        return _dig(record.info, field.key)
    if field.scope == "meta":  # not for users' queries: what the run browser filters on (its run_uid, its links)
        return _dig(record.meta, field.key)
    if field.scope == "metrics":
        if field.key not in record.metrics:
            return record.metric_summary.get(field.key, {}).get(field.aggregate)
        values = record.metrics[field.key].get("values") or []
        finite = [v for v in values if isinstance(v, (int, float)) and v == v and abs(v) != float("inf")]
        return {
            "last": values[-1] if values else None,
            "min": min(finite) if finite else None,
            "max": max(finite) if finite else None,
            "epochs": len(values),
        }[field.aggregate]
    if field.key == "host":
        return (record.host or {}).get("hostname")
    if field.key in ("start_time", "stop_time"):
        value = getattr(record, field.key)
        return value.isoformat() if hasattr(value, "isoformat") else value
    if field.key in ("dataset", "model", "solver", "sweep"):
        return summary_row(record).get(field.key)
    return getattr(record, field.key, None)


def _duration(start: Any, stop: Any) -> float | None:
    if isinstance(start, str) and isinstance(stop, str):  # a file store's ISO times: the standard library's parse
        try:  # is 20x pandas', which an index build of 100,000 runs feels
            return (dt.datetime.fromisoformat(stop) - dt.datetime.fromisoformat(start)).total_seconds()
        except (TypeError, ValueError):
            pass
    try:
        return (pd.Timestamp(stop) - pd.Timestamp(start)).total_seconds()
    except (TypeError, ValueError):
        return None


def gradient_method(solver: dict[str, Any]) -> str | None:
    """A logged solver config's gradient method; configs from before `gradient` existed say it with `adjoint`."""
    if not solver:
        return None
    return solver.get("gradient") or ("adjoint" if solver.get("adjoint") else "direct")


def memory_columns(cost: dict[str, Any], device: str) -> dict[str, Any]:
    """train/val peak RSS and CUDA allocated (MB) in columns of their own. Runs logged before they were
    separate have one figure per phase (`<phase>_mem_mb`): CUDA's on a CUDA device, else the RSS."""
    columns = {}
    for phase in ("train", "val"):
        legacy = cost.get(f"{phase}_mem_mb")
        on_cuda = device.startswith("cuda")
        columns[f"{phase}_rss_mb"] = cost.get(f"{phase}_rss_mb", None if on_cuda else legacy)
        columns[f"{phase}_cuda_mb"] = cost.get(f"{phase}_cuda_mb", legacy if on_cuda else None)
    return columns


def summary_row(r: RunRecord) -> dict[str, Any]:
    """The columns a run list shows: what ran, how it ended, and its headline numbers."""
    choices = r.choices
    is_ode = (r.info.get("model_family") or r.meta.get("model_family")) == "odenet"
    test = r.info.get("test", {})
    gradient = gradient_method(r.config.get("solver") or {}) if is_ode else None
    cost = r.info.get("cost") or {}
    return {
        "id": r.id,
        "experiment": r.experiment,
        "status": r.status,
        "cause": failure_cause(r.fail_trace) if r.status == "FAILED" else None,  # why it failed, where known
        **{key: r.meta.get(key) for key in LINK_COLUMNS},
        **{f"{key}_uid": r.meta.get(f"{key}_uid") for key in LINK_COLUMNS},
        "dataset": choices.get("data", str(r.config.get("data", {}).get("_target_", ""))),
        "model": choices.get("model", str(r.config.get("model", {}).get("_target_", ""))),
        "solver": r.config.get("solver", {}).get("method") if is_ode else None,
        "sweep": r.meta.get("sweep_id"),
        "test_acc": test.get("test.acc"),
        "test_loss": test.get("test.loss"),
        "best_val_loss": r.best("val.loss"),
        "epochs": r.epochs("train.loss"),  # every epoch logs it; val.* only with a validation split
        "pruned_at": (r.info.get("pruned") or {}).get("epoch"),  # the epoch a sweep's pruner stopped it
        "fnfe": r.final("nfe.forward") if is_ode else None,
        "bnfe": r.final("nfe.backward") if gradient not in (None, "direct") else None,  # no backward pass
        "gradient": gradient,
        **memory_columns(cost, str(r.info.get("device", ""))),  # peak RSS and CUDA memory per phase, MB
        "saved_mb": cost.get("saved_mb"),  # bytes autograd saved in one training step, MB
        "adapted": (r.info.get("adaptation") or {}).get("at_best_epoch"),  # the adapted step size or tolerance
        "params": r.info.get("parameters", {}).get("total"),
        "start": str(r.start_time)[:19] if r.start_time else None,
        "seconds": _duration(r.start_time, r.stop_time),
    }


def runs_frame(records: list[RunRecord], with_config: bool = False) -> pd.DataFrame:
    """One row per run; with_config adds every config key as a `config.<key>` column."""
    rows = []
    for r in records:
        row = summary_row(r)
        if with_config:
            row.update({f"config.{k}": v for k, v in pd.json_normalize(r.config, sep=".").iloc[0].to_dict().items()})
        rows.append(row)
    return pd.DataFrame(rows)


def artifact_ref(record: RunRecord, name: str) -> Any:
    """Where one artifact of a run is (a file path or a GridFS id); a UserError if the run has none of that name."""
    from odeflow.errors import UserError

    ref = record.artifact_refs.get(name)
    if ref is None:
        raise UserError(
            f"run {record.id} has no artifact {name!r} (it has: {', '.join(record.artifacts) or 'none'})",
            "re-evaluation and reproduction need a run that finished training",
        )
    return ref


def fetch_artifact(
    record: RunRecord, name: str, dest_dir: Path, client: Any = None, db_name: str | None = None
) -> Path:
    """A local path to one artifact of a run: the file itself for the file store, a copy out of GridFS for MongoDB."""
    ref = artifact_ref(record, name)
    if isinstance(ref, Path):
        return ref
    import gridfs

    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / name
    path.write_bytes(gridfs.GridFS(client[db_name]).get(ref).read())
    return path
