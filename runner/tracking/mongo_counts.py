"""How many runs of a Sacred MongoDB database match a filter, within a time budget.

A MongoDB server counts from an index or from its metadata in milliseconds; SecantusDB (the no-Docker dashboard's
server) decodes every document it counts, about 0.3 ms a run (30 s for 90,000 matching runs), and cannot be
interrupted once a count has started. So a listing's footer counts the matching runs newest first, in ranges of
run ids the `_id` index answers, while its budget lasts, and estimates the rest from an even sample of run ids:
exact on a MongoDB server and on small databases, an estimate labelled as one on a large SecantusDB database.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from runner.tracking.query import TIGHTER_BOUND, narrowed

COUNT_BUDGET_S = 0.5  # what one command may spend counting before it estimates the rest
ID_WINDOW = 8  # run ids a probe for the highest id looks at (a gap of deleted runs this wide can hide higher ids)
COUNT_CHUNK = 1024  # run ids one counting request covers
SAMPLE = 1000  # run ids an estimate looks at
SAMPLE_CHUNK = 100  # ids per `$in`: SecantusDB tests each document against the whole list (quadratic)


@dataclass(frozen=True)
class Count:
    """How many runs: counted by the server (exact), or estimated from a sample of run ids."""

    n: int
    exact: bool = True

    def __str__(self) -> str:
        return f"{self.n:,}" if self.exact else f"about {_two_figures(self.n):,}"


def _two_figures(n: int) -> int:
    """An estimate rounded to what its sample can tell (two significant figures)."""
    return n if n < 100 else int(round(n, 2 - len(str(n))))


class RunCounter:
    """The counts of one command: one time budget for all of them, and the highest run id looked up once.
    `exact`: count on the server however long it takes (`runs list --exact-count`)."""

    def __init__(self, runs: Any, exact: bool = False) -> None:
        self.runs, self.exact = runs, exact
        self.deadline = time.monotonic() + COUNT_BUDGET_S
        self._top: int | None = None
        self._top_known = False

    def count(self, condition: dict) -> Count:
        """How many runs match the (MongoDB filter) condition."""
        if self.exact or not narrowed_by_id_ranges(condition):
            return Count(self._server_count(condition))
        if not condition and self._left_ms():
            try:
                return Count(self.runs.estimated_document_count(maxTimeMS=self._left_ms()))
            except _timeout():
                pass
        top = self.top_id()
        if top is None:  # ids other than Sacred's integers: only the server can count them
            return Count(self._server_count(condition))
        counted, below = 0, None  # counted: the runs with ids >= below (every id above top in the first range)
        while condition and self._left_ms():
            low = (top if below is None else below) - COUNT_CHUNK
            bound = {"$gt": low} if below is None else {"$gt": low, "$lt": below}
            if low < 1:  # the last range: every id below, ids under 1 too
                bound.pop("$gt")
            counted += self._server_count(narrowed(condition, "_id", bound) if bound else condition)
            if low < 1:
                return Count(counted)
            below = low + 1
        rest = top if below is None else below - 1  # the ids 1..rest are not counted: estimated from a sample
        return Count(counted + self._sampled(condition, rest), exact=False)

    def top_id(self) -> int | None:
        """The highest run id (Sacred numbers runs 1, 2, 3, ...), from ranges of ID_WINDOW ids the `_id` index
        answers: doubling from 1 while a range holds a run, then halving back. None where the database holds ids
        of other types (strings and ObjectIds sort above numbers) or none in the first range."""
        if not self._top_known:
            self._top, self._top_known = top_run_id(self.runs), True
        return self._top

    def _sampled(self, condition: dict, last: int) -> int:
        """Of the ids 1..last, how many runs match: estimated from SAMPLE ids spread evenly over them."""
        if last < 1:
            return 0
        size = min(last, SAMPLE)
        ids = sorted({1 + n * last // size for n in range(size)})
        found = sum(
            self._server_count(narrowed(condition, "_id", {"$in": ids[start : start + SAMPLE_CHUNK]}))
            for start in range(0, len(ids), SAMPLE_CHUNK)
        )
        return round(found * last / len(ids))

    def _server_count(self, condition: dict) -> int:
        return self.runs.count_documents(condition) if condition else self.runs.estimated_document_count()

    def _left_ms(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


def narrowed_by_id_ranges(condition: dict) -> bool:
    """Whether ranges of run ids narrow this (MongoDB filter) condition on SecantusDB: not with an operator at its
    top (an `or`, a `not`: the server reads every run for it) nor with ids it names (points, which the server looks
    up at once); a range of ids in it (a page token's) is fine."""
    named = condition.get("_id")
    ranged = named is None or (isinstance(named, dict) and set(named) <= set(TIGHTER_BOUND))
    return ranged and not any(key.startswith("$") for key in condition)


def top_run_id(runs: Any) -> int | None:
    """The highest integer run id of a runs collection (RunCounter.top_id)."""
    from bson import ObjectId

    for first_of_type in ("", ObjectId("0" * 24)):  # ranges, which the index answers (a $type test reads all)
        if runs.find_one({"_id": {"$gte": first_of_type}}, {"_id": 1}) is not None:
            return None

    def holds_run(start: int) -> bool:
        return runs.find_one({"_id": {"$gte": start, "$lt": start + ID_WINDOW}}, {"_id": 1}) is not None

    if not holds_run(1):
        return None
    low = 1
    while holds_run(2 * low):
        low *= 2
    high = 2 * low  # holds_run(low) and not holds_run(high)
    while high - low > ID_WINDOW:
        middle = (low + high) // 2
        low, high = (middle, high) if holds_run(middle) else (low, middle)
    last = runs.find_one({"_id": {"$gte": low, "$lt": high + ID_WINDOW}}, {"_id": 1}, sort=[("_id", -1)])
    return int(last["_id"]) if last is not None else low


def _timeout() -> type[Exception]:
    from pymongo.errors import ExecutionTimeout

    return ExecutionTimeout
