"""Runs as pandas DataFrames, for notebooks: the query language of `runs list`, the same columns.

Beside the command line, not in the tracking wing: like `runs list`, it reads the store the config names.

    from runner.api import runs, run
    frame = runs(where="metrics.val.acc > 0.9 and config.solver.method = 'rk4'", sort="-metrics.val.acc",
                 columns=["config.train.lr"], store="runs/store")
    history = run(frame.id[0], store="runs/store").metrics["val.acc"]   # one run's per-epoch values

A listing reads no metric history (the index, or MongoDB's run documents, hold each metric's last, min, max
and count); `run` reads one run in full.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from runner.tracking.listing import DEFAULT_LIMIT, FileSource, MongoSource, Query
from runner.tracking.runstore import RunRecord


def _source(store: Any) -> FileSource | MongoSource:
    """A store given as a folder, a tracking store object (FileStore, MongoStore), config overrides, or None
    (the store the default config names, ODEFLOW_RUNS included)."""
    if isinstance(store, FileSource | MongoSource):
        return store
    if isinstance(store, (str, Path)):
        folder = Path(store).expanduser()
        nested = folder / "store"  # paths.runs given instead of its store folder
        has_runs = folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())
        return FileSource(nested if not has_runs and nested.is_dir() else folder)
    from runner.cli import load_store, source_of

    if store is None or isinstance(store, list):
        store = load_store(list(store or []))
    return source_of(store)


def runs(
    where: str | None = None,
    sort: str | list[str] | None = None,
    limit: int = DEFAULT_LIMIT,
    offset: int = 0,
    columns: str | list[str] | None = None,
    store: Any = None,
    page_token: str | None = None,
    exact_count: bool = False,
) -> pd.DataFrame:
    """One row per matching run (newest first unless `sort` says otherwise; `limit=0` for every match) with the
    columns of `runs list` and any `columns` asked for (e.g. "config.train.lr", "min(metrics.val.loss)").
    `where` and `sort` are README's query language; a wrong one raises a UserError with a caret under the fault.
    `frame.attrs["matched"]` counts every match (`frame.attrs["matched_exact"]` False: estimated from a sample of
    runs, where a large MongoDB database on SecantusDB would take longer to count; `exact_count=True` waits for the
    count); `frame.attrs["next_page_token"]`, where more match, is what `page_token` takes (with the same `where`
    and `sort`) for the next page."""
    sort_text = ",".join(sort) if isinstance(sort, list) else sort
    query = Query.parse(where, sort_text, limit, offset, columns, page_token=page_token)
    page = _source(store).page(query, exact_count=exact_count)
    return _frame(page.rows, page.total, query.next_page_token(page), page.total_exact)


def _frame(rows: list[dict], total: int, next_page_token: str | None = None, exact: bool = True) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    frame.attrs["matched"] = total  # how many runs matched in all (the frame may hold one page of them)
    frame.attrs["matched_exact"] = exact
    frame.attrs["next_page_token"] = next_page_token
    return frame


def run(run_id: Any, store: Any = None) -> RunRecord:
    """One run in full: config, info, and every metric's per-epoch history (`.metrics[name]["values"]`)."""
    return _source(store).run(str(run_id))
