"""Runs chosen by a query, from either backend: a page of a run list, every match streamed, or one run.

The file store answers from its index (runner.tracking.index), MongoDB on the server (runstore.read_mongo_page);
both take the same query tree (runner.tracking.query) and give rows with the same columns (summary_row's).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from odeflow.errors import UserError
from runner.tracking import query as q
from runner.tracking.mongo_counts import Count, RunCounter
from runner.tracking.outcome import DEAD, SUPERSEDED, link_target, link_uids
from runner.tracking.runstore import (
    LINK_COLUMNS,
    RunRecord,
    _read_run_folder,
    read_mongo_page,
    record_value,
    summary_row,
)

DEFAULT_LIMIT = 50
REQUEST_KEY = "request"  # in a derived run's config (a re-evaluation): the digest of what it was made from
DAMAGE = (OSError, ValueError, KeyError, TypeError, AttributeError)  # what a damaged run folder raises

EXPORT_PAGE = 500  # runs a MongoDB export reads per query


@dataclass(frozen=True)
class Query:
    """What a command asks for: a filter, an order, a page; extra columns beyond summary_row's."""

    where: Any = None  # a query tree (query.parse_where)
    sort: list[q.SortKey] = field(default_factory=list)
    limit: int = DEFAULT_LIMIT  # 0: every match
    offset: int = 0
    columns: list[q.Field] = field(default_factory=list)
    after: Any = None  # newest first: the page starts below this run id (a page token's last run)

    @staticmethod
    def parse(
        where: str | None = None,
        sort: str | None = None,
        limit: int = DEFAULT_LIMIT,
        offset: int = 0,
        columns: str | list[str] | None = None,
        shorthands: dict[str, str | None] | None = None,
        page_token: str | None = None,
    ) -> Query:
        """A query from the command line's strings; shorthands (--model X ...) join the filter with `and` and,
        as before, ignore case (they compare with `like`). A page token (a footer's) continues the page before."""
        if limit < 0 or offset < 0:
            raise UserError(f"--limit {limit} --offset {offset}: both must be 0 or more", "--limit 0 lists every run")
        parts = [q.parse_where(where)] + [
            q.Compare(q.Field("column", name), "like", str(value))
            for name, value in (shorthands or {}).items()
            if value is not None
        ]
        parts = [p for p in parts if p is not None]
        tree = None if not parts else parts[0] if len(parts) == 1 else q.Logical("and", tuple(parts))
        query = Query(tree, q.parse_sort(sort), limit, offset, parse_columns(columns))
        return query.continued(page_token) if page_token else query

    def fingerprint(self) -> str:
        """What a page token is valid for: the filter and the order (not the page size or the columns)."""
        return hashlib.sha1(repr((self.where, self.sort)).encode()).hexdigest()[:10]

    def next_page_token(self, page: Page) -> str | None:
        """The token of the page after `page` (None when it was the last): the position after it, and its last
        run, from which a newest-first listing goes on exactly, even when new runs came meanwhile."""
        shown = len(page.rows)
        last = self.offset + shown >= page.total if page.total_exact else shown < self.limit
        if not shown or not self.limit or last:
            return None
        state = {"q": self.fingerprint(), "o": self.offset + shown, "a": page.rows[-1]["id"]}
        return base64.urlsafe_b64encode(json.dumps(state, separators=(",", ":")).encode()).decode().rstrip("=")

    def continued(self, token: str) -> Query:
        """This query from where the page that gave `token` ended."""
        try:
            state = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            fingerprint, offset, after = state["q"], int(state["o"]), state["a"]
        except (ValueError, TypeError, KeyError, AttributeError):  # binascii.Error is a ValueError
            raise UserError(
                f"--page-token {token[:40]}: not a page token", "copy the token a listing's footer printed"
            ) from None
        if fingerprint != self.fingerprint():
            raise UserError(
                "--page-token: that token belongs to another query (a different --where or --sort)",
                "repeat the --where and --sort of the listing whose footer printed it",
            )
        return Query(self.where, self.sort, self.limit, offset, self.columns, after if not self.sort else None)


def parse_columns(columns: str | list[str] | None) -> list[q.Field]:
    """--columns metrics.val.acc,config.train.lr: fields shown after the summary's columns."""
    if not columns:
        return []
    text = columns if isinstance(columns, str) else ",".join(columns)
    return [k.field for k in q.parse_sort(text, "--columns")]


@dataclass
class Page:
    rows: list[dict[str, Any]]  # summary_row's columns (and the query's extra columns), in order
    total: int  # how many runs match in all
    dead: list[Any]  # ids on the page that are RUNNING in the store with their process gone
    store_size: int  # how many runs the store holds
    ids_by_uid: dict[str, list[Any]] = field(default_factory=dict)  # the ids here of the runs the rows link to
    # False where a count is an estimate: MongoDB on a server that would take longer to count (mongo_counts)
    total_exact: bool = True
    store_size_exact: bool = True


def with_links_here(rows: list[dict[str, Any]], ids_by_uid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The rows with their link columns naming the linked runs' ids in this store, found by their uids (None: no
    run here has it; outcome.link_target): a listing, an export or the API's frame of runs copied in under other
    ids name the right runs."""
    for row in rows:
        for key in LINK_COLUMNS:
            if row.get(f"{key}_uid") is not None:
                row[key] = link_target(row.get(key), row[f"{key}_uid"], ids_by_uid)
    return rows


def summary_columns() -> list[str]:
    return list(summary_row(RunRecord(0, "", "", {}, {}, {}, None, None, None)))


class FileSource:
    """A Sacred file store (or a MongoDB store's local journal), read through its index."""

    def __init__(self, directory: Path | str, warn: Callable[[str], None] | None = None) -> None:
        self.dir = Path(directory).expanduser()
        self.warn = warn

    def describe(self) -> str:
        return str(self.dir)

    def page(self, query: Query, exact_count: bool = False) -> Page:
        """A page and how many runs match (the index counts exactly: `exact_count` changes nothing here)."""
        from runner.tracking.index import using_index

        def work(index) -> Page:
            ids, total = index.select(query.where, query.sort, query.limit, query.offset, query.after)
            summaries = index.summaries(ids)
            extra = index.values(ids, query.columns) if query.columns else {}
            rows = [{**summaries[i], **extra.get(i, {})} for i in ids]
            linked = index.ids_by_uid([uid for row in rows for uid in link_uids(row)])
            return Page(with_links_here(rows, linked), total, self._dead(rows), index.count(), linked)

        return using_index(self.dir, work, self.warn)

    def ids_by_uid(self, uids: list[str]) -> dict[str, list[Any]]:
        """The ids of the runs with these uids in this store (links are resolved by them: outcome.link_target)."""
        from runner.tracking.index import using_index

        return using_index(self.dir, lambda index: index.ids_by_uid(uids), self.warn) if uids else {}

    def _dead(self, rows: list[dict[str, Any]]) -> list[Any]:
        """RUNNING runs whose process is gone, read from their folders (the index knows no processes)."""
        dead = []
        for row in rows:
            if row.get("status") == "RUNNING":
                try:
                    record = _read_run_folder(self.dir / str(row["id"]))
                except DAMAGE:
                    continue
                if record is not None and record.liveness == "dead":
                    dead.append(row["id"])
        return sorted(dead)

    def distinct(self, column: str) -> list[str]:
        from runner.tracking.index import using_index

        return using_index(self.dir, lambda index: index.distinct(column), self.warn)

    def rows(self, query: Query) -> tuple[list[str], Iterator[dict[str, Any]]]:
        """(the columns, every matching run's row with its whole config, in order, read as it goes)."""
        from runner.tracking.index import using_index

        index = using_index(self.dir, warn=self.warn)
        config_columns = index.config_columns()
        extra = query.columns + [q.Field("config", c[len("config.") :]) for c in config_columns]
        columns = [*summary_columns(), *dict.fromkeys(f.name for f in extra)]

        def generate() -> Iterator[dict[str, Any]]:
            try:
                batch: list[int] = []
                for run_id in _limited(index.iter_ids(query.where, query.sort), query):
                    batch.append(run_id)
                    if len(batch) == 500:
                        yield from _index_rows(index, batch, extra)
                        batch = []
                yield from _index_rows(index, batch, extra)
            finally:
                index.close()

        return columns, generate()

    def records(self, query: Query) -> list[RunRecord]:
        """The matching runs in full (histories included), for compare, plot and the report."""
        found = []
        for row in self.page(query).rows:
            record = _read_run_folder(self.dir / str(row["id"]))
            if record is not None:
                found.append(record)
        return found

    def run(self, run_id: str) -> RunRecord:
        """One run, read from its folder alone."""
        run_dir = self.dir / str(run_id).strip()
        record = _read_run_folder(run_dir) if str(run_id).strip().isdigit() and run_dir.is_dir() else None
        if record is None:
            raise UserError(f"no run with id {run_id} in {self.dir}", "list the ids with: python -m runner runs list")
        return record


def _limited(ids: Iterator[int], query: Query) -> Iterator[int]:
    for n, run_id in enumerate(ids):
        if n < query.offset:
            continue
        if query.limit and n >= query.offset + query.limit:
            return
        yield run_id


def _index_rows(index, ids: list[int], extra: list[q.Field]) -> Iterator[dict[str, Any]]:
    if not ids:
        return
    summaries = index.summaries(ids)
    values = index.values(ids, extra)
    rows = [{**summaries[run_id], **values.get(run_id, {})} for run_id in ids]
    yield from with_links_here(rows, index.ids_by_uid([uid for row in rows for uid in link_uids(row)]))


class MongoSource:
    """A Sacred MongoDB database: filter, sort and page on the server."""

    def __init__(self, client: Any, db_name: str) -> None:
        self.client, self.db_name = client, db_name

    def describe(self) -> str:
        return f"MongoDB database {self.db_name}"

    def page(self, query: Query, exact_count: bool = False) -> Page:
        """A page and how many runs match: counted within mongo_counts' budget and estimated beyond it, unless
        `exact_count`."""
        counter = RunCounter(self.client[self.db_name]["runs"], exact=exact_count)
        records, total = read_mongo_page(
            self.client,
            self.db_name,
            query.where,
            query.sort,
            query.limit,
            query.offset,
            lazy=True,
            counter=counter,
            after=query.after,
        )
        assert total is not None  # a counter was given
        rows = [_record_row(r, query.columns) for r in records]
        dead = sorted(r.id for r in records if r.liveness == "dead")
        linked = self.ids_by_uid([uid for row in rows for uid in link_uids(row)])
        if rows and not total.exact:  # an estimate is at least what the pages so far hold
            total = Count(max(total.n, query.offset + len(rows)), exact=False)
        size = total if query.where is None else counter.count({})
        return Page(with_links_here(rows, linked), total.n, dead, size.n, linked, total.exact, size.exact)

    def ids_by_uid(self, uids: list[str]) -> dict[str, list[Any]]:
        from runner.tracking.mongo import ids_by_uid

        return ids_by_uid(self.client[self.db_name], uids) if uids else {}

    def distinct(self, column: str) -> list[str]:
        path = q.mongo_path(q.Field("column", column))
        return sorted({str(v) for v in self.client[self.db_name]["runs"].distinct(path) if v is not None})

    def rows(self, query: Query) -> tuple[list[str], Iterator[dict[str, Any]]]:
        from runner.tracking.index import flatten

        runs = self.client[self.db_name]["runs"]
        keys: dict[str, None] = {}
        for doc in runs.find(q.to_mongo(query.where), {"config": 1}):  # the header first: one light pass
            keys.update((f"config.{k}", None) for k, _ in flatten(doc.get("config") or {}))
        extra = query.columns + [q.Field("config", c[len("config.") :]) for c in keys]
        columns = [*summary_columns(), *dict.fromkeys(f.name for f in extra)]

        def generate() -> Iterator[dict[str, Any]]:
            # Newest first, each page goes on below the last id, as page tokens do: an offset makes the server
            # read every run above it again for each page (72 s for 10,000 runs on SecantusDB).
            step = EXPORT_PAGE
            offset, left, after = query.offset, query.limit or None, query.after
            while left is None or left > 0:
                size = step if left is None else min(step, left)
                records, _ = read_mongo_page(
                    self.client,
                    self.db_name,
                    query.where,
                    query.sort,
                    size,
                    0 if after is not None else offset,
                    lazy=True,
                    after=after,
                )
                rows = [_record_row(r, extra) for r in records]
                yield from with_links_here(rows, self.ids_by_uid([uid for row in rows for uid in link_uids(row)]))
                if len(records) < size:
                    return
                if query.sort:
                    offset += size
                else:
                    after = records[-1].id
                left = None if left is None else left - size

        return columns, generate()

    def records(self, query: Query) -> list[RunRecord]:
        records, _ = read_mongo_page(self.client, self.db_name, query.where, query.sort, query.limit, query.offset)
        return records

    def run(self, run_id: str) -> RunRecord:
        wanted = int(run_id) if str(run_id).strip().isdigit() else run_id
        records, _ = read_mongo_page(
            self.client, self.db_name, q.Compare(q.Field("column", "id"), "=", wanted), limit=1
        )
        if not records:
            raise UserError(
                f"no run with id {run_id} in {self.describe()}", "list the ids with: python -m runner runs list"
            )
        return records[0]


def status_condition(source: FileSource | MongoSource, status: str) -> Any:
    """`--status` as the status column shows it (outcome.shown_status), not only as Sacred recorded it: a run a later
    one replaced is SUPERSEDED, a RUNNING one whose process is gone DEAD (found among the RUNNING ones)."""
    wanted = status.upper()
    superseded = q.Compare(q.Field("meta", "superseded_by_uid"), "like", "%")
    if wanted == SUPERSEDED:
        return superseded
    recorded = "RUNNING" if wanted == DEAD else wanted
    tree: Any = q.Logical("and", (q.Compare(q.Field("column", "status"), "like", recorded), q.Not(superseded)))
    if recorded == "RUNNING":
        dead = q.Compare(q.Field("column", "id"), "in", tuple(source.page(Query(tree, limit=0)).dead))
        tree = q.Logical("and", (tree, dead if wanted == DEAD else q.Not(dead)))
    return tree


def logged_request(source: FileSource | MongoSource, digest: str) -> RunRecord | None:
    """The newest completed run made from the same request (its config's `request`: stores.request_digest of what
    it was made from), or None: what a repeated command shows instead of logging the same record again."""
    where = q.Logical(
        "and",
        (
            q.Compare(q.Field("config", REQUEST_KEY), "=", digest),
            q.Compare(q.Field("column", "status"), "=", "COMPLETED"),
        ),
    )
    found = source.records(Query(where, limit=1))
    return found[0] if found else None


def _record_row(record: RunRecord, columns: list[q.Field]) -> dict[str, Any]:
    return {**summary_row(record), **{f.name: record_value(record, f) for f in columns}}
