"""The run query language of `runs list --where/--sort`, `runs export`, `runs compare`, the report and `runs()`.

    metrics.val.acc > 0.9 and config.solver.method = 'rk4' and config.train.lr < 1e-3
    min(metrics.val.loss) < 0.2 or not status in ('FAILED', 'INTERRUPTED')
    experiment like 'thesis%' and start_time >= '2026-06-01'

A small tokenizer and a recursive-descent parser make a tree (never `eval`); the tree compiles to SQL with
parameters for the file store's index (runner.tracking.index) and to a MongoDB filter and sort for the
database. A comparison with a value the run lacks is false (and `not` of it true), on both backends.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from odeflow.errors import UserError

RUN_COLUMNS = ("id", "status", "result", "experiment", "host", "start_time", "stop_time")
# A run list's columns a query may name too (the --dataset/--model/--solver/--sweep shorthands compare them).
SUMMARY_COLUMNS = ("dataset", "model", "solver", "sweep")
AGGREGATES = ("last", "min", "max", "epochs")  # of a metric's per-epoch values; `last` is the plain name's
OPERATORS = ("=", "!=", "<", "<=", ">", ">=")
KEYWORDS = ("and", "or", "not", "in", "like", "true", "false")


class QueryError(UserError):
    """A --where or --sort the parser cannot read: one line naming the fault, the text, a caret under it."""

    def __init__(self, option: str, text: str, position: int, reason: str) -> None:
        # No fix line: the caret under the text says where, the reason what (README, Querying runs, the rest).
        super().__init__(f"{option}: {reason} (column {position + 1}):\n  {text}\n  {' ' * position}^")


@dataclass(frozen=True)
class Field:
    """What a run is compared or sorted on. scope: a run column, 'config', 'info' or 'metrics'."""

    scope: str
    key: str
    aggregate: str = "last"  # metrics only

    @property
    def name(self) -> str:
        """As written in a query (and as a column's heading)."""
        if self.scope == "column":
            return self.key
        written = f"{self.scope}.{self.key}"
        return written if self.aggregate == "last" else f"{self.aggregate}({written})"


@dataclass(frozen=True)
class Compare:
    field: Field
    op: str  # one of OPERATORS, 'in' or 'like'
    value: Any  # a number, a string, a bool, or a tuple of them for 'in'


@dataclass(frozen=True)
class Not:
    operand: Any


@dataclass(frozen=True)
class Logical:
    op: str  # 'and' | 'or'
    operands: tuple


@dataclass(frozen=True)
class SortKey:
    field: Field
    descending: bool


_TOKEN = re.compile(
    r"""\s*(?:
    (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.]))
    |(?P<string>'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.)*")
    |(?P<name>[A-Za-z_][\w.\-]*)
    |(?P<op><=|>=|!=|<>|==|=|<|>)
    |(?P<punct>[(),])
    )""",
    re.VERBOSE,
)


@dataclass
class _Token:
    kind: str  # number | string | name | op | punct | end
    text: str
    position: int

    @property
    def word(self) -> str:
        return self.text.lower() if self.kind == "name" else ""


def _tokens(text: str, option: str, start: int = 0, end: int | None = None) -> list[_Token]:
    """The tokens of text[start:end], with their positions in the whole text."""
    end = len(text) if end is None else end
    tokens, position = [], start
    while position < end:
        if text[position:end].strip() == "":
            break
        match = _TOKEN.match(text, position, end)
        if not match or match.lastgroup is None:
            at = position + len(text[position:end]) - len(text[position:end].lstrip())
            quote = text[at] in "'\""
            raise QueryError(option, text, at, "a quoted string is not closed" if quote else "unexpected character")
        kind = match.lastgroup
        tokens.append(_Token(kind, match.group(kind), match.start(kind)))
        position = match.end()
    tokens.append(_Token("end", "", end))
    return tokens


class _Parser:
    def __init__(self, text: str, option: str, start: int = 0, end: int | None = None) -> None:
        self.text, self.option = text, option
        self.tokens = _tokens(text, option, start, end)
        self.at = 0

    @property
    def token(self) -> _Token:
        return self.tokens[self.at]

    def fail(self, reason: str, token: _Token | None = None) -> QueryError:
        token = token or self.token
        found = "the end" if token.kind == "end" else repr(token.text)
        return QueryError(self.option, self.text, token.position, f"{reason}, found {found}")

    def take(self) -> _Token:
        token = self.token
        self.at += 1
        return token

    def take_word(self, word: str) -> bool:
        if self.token.word == word:
            self.at += 1
            return True
        return False

    def expect_punct(self, text: str) -> None:
        if self.token.kind != "punct" or self.token.text != text:
            raise self.fail(f"expected '{text}'")
        self.at += 1

    def where(self) -> Any:
        tree = self.disjunction()
        if self.token.kind != "end":
            raise self.fail("expected 'and', 'or' or the end")
        return tree

    def disjunction(self) -> Any:
        operands = [self.conjunction()]
        while self.take_word("or"):
            operands.append(self.conjunction())
        return operands[0] if len(operands) == 1 else Logical("or", tuple(operands))

    def conjunction(self) -> Any:
        operands = [self.negation()]
        while self.take_word("and"):
            operands.append(self.negation())
        return operands[0] if len(operands) == 1 else Logical("and", tuple(operands))

    def negation(self) -> Any:
        if self.take_word("not"):
            return Not(self.negation())
        if self.token.kind == "punct" and self.token.text == "(":
            self.at += 1
            tree = self.disjunction()
            self.expect_punct(")")
            return tree
        return self.comparison()

    def field(self) -> Field:
        token = self.token
        if token.kind != "name" or token.word in KEYWORDS:
            raise self.fail("expected a field such as metrics.val.acc, config.train.lr, status or id")
        self.at += 1
        if token.word in ("min", "max", "epochs") and self.token.kind == "punct" and self.token.text == "(":
            self.at += 1
            inner = self.field()
            if inner.scope != "metrics" or inner.aggregate != "last":
                raise QueryError(self.option, self.text, token.position, f"{token.word}(...) takes a metrics.<name>")
            self.expect_punct(")")
            return Field("metrics", inner.key, token.word)
        scope, _, key = token.text.partition(".")
        if scope in ("metrics", "config", "info") and key:
            return Field(scope, key)
        if token.text in RUN_COLUMNS + SUMMARY_COLUMNS:
            return Field("column", token.text)
        raise QueryError(
            self.option,
            self.text,
            token.position,
            f"unknown field {token.text!r}: use metrics.<name>, min(metrics.<name>), max(metrics.<name>), "
            f"config.<key>, info.<key> or one of {', '.join(RUN_COLUMNS + SUMMARY_COLUMNS)}",
        )

    def value(self) -> Any:
        token = self.take()
        if token.kind == "number":
            number = float(token.text)
            return int(number) if re.fullmatch(r"[-+]?\d+", token.text) else number
        if token.kind == "string":
            body = token.text[1:-1]
            return re.sub(r"\\(.)|''", lambda m: m.group(1) or "'", body)
        if token.word in ("true", "false"):
            return token.word == "true"
        self.at -= 1
        raise self.fail("expected a number, a quoted string, true or false")

    def comparison(self) -> Compare:
        field = self.field()
        negated = self.take_word("not")
        if self.take_word("in"):
            self.expect_punct("(")
            values = [self.value()]
            while self.token.kind == "punct" and self.token.text == ",":
                self.at += 1
                values.append(self.value())
            self.expect_punct(")")
            tree: Any = Compare(field, "in", tuple(values))
        elif self.token.word == "like":
            self.at += 1
            pattern = self.token
            value = self.value()
            if not isinstance(value, str):
                raise self.fail("like takes a quoted pattern ('rk%')", pattern)
            tree = Compare(field, "like", value)
        elif negated:
            raise self.fail("expected 'in' or 'like' after 'not'")
        elif self.token.kind == "op":
            op = {"==": "=", "<>": "!="}.get(self.token.text, self.token.text)
            self.at += 1
            tree = Compare(field, op, self.value())
        else:
            raise self.fail("expected an operator (= != < <= > >= in like)")
        return Not(tree) if negated else tree


def parse_where(text: str | None, option: str = "--where") -> Any:
    """The tree of a --where expression; None for none. Raises QueryError (a UserError) with a caret."""
    if text is None or not text.strip():
        return None
    return _Parser(text, option).where()


def parse_sort(text: str | None, option: str = "--sort") -> list[SortKey]:
    """`-metrics.val.acc,config.train.lr`: keys in order, `-` for descending. Empty for the default order."""
    keys: list[SortKey] = []
    if text is None or not text.strip():
        return keys
    start = 0
    for part in text.split(","):
        end = start + len(part)
        at = start + len(part) - len(part.lstrip())
        descending = text.startswith("-", at)
        parser = _Parser(text, option, at + descending, end)
        keys.append(SortKey(parser.field(), descending))
        if parser.token.kind != "end":
            raise parser.fail("expected ',' or the end")
        start = end + 1
    return keys


def fields_of(tree: Any) -> list[Field]:
    """Every field a tree compares."""
    if tree is None:
        return []
    if isinstance(tree, Compare):
        return [tree.field]
    if isinstance(tree, Not):
        return fields_of(tree.operand)
    return [f for operand in tree.operands for f in fields_of(operand)]


# --- Python: the same semantics on one run's values (runs a database cannot filter, e.g. old MongoDB documents)


def _like_regex(pattern: str) -> str:
    """SQL LIKE (% any, _ one character) as an anchored regular expression."""
    return "^" + "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern) + "$"


def _comparable(value: Any, wanted: Any) -> bool:
    """Numbers compare with numbers (bools as 0/1), strings with strings."""
    if isinstance(wanted, (bool, int, float)):
        return isinstance(value, (bool, int, float))
    return isinstance(value, str)


def matches(tree: Any, lookup: Any) -> bool:
    """Whether a run passes; lookup(field) gives its value (None when the run has none)."""
    if tree is None:
        return True
    if isinstance(tree, Logical):
        results = (matches(t, lookup) for t in tree.operands)
        return all(results) if tree.op == "and" else any(results)
    if isinstance(tree, Not):
        return not matches(tree.operand, lookup)
    value = lookup(tree.field)
    if isinstance(value, datetime):
        value = value.isoformat()
    if value is None:
        return False
    if tree.op == "in":
        return any(_comparable(value, v) and value == v for v in tree.value)
    if tree.op == "like":
        return (
            isinstance(value, str) and re.match(_like_regex(tree.value), value, re.IGNORECASE | re.DOTALL) is not None
        )
    if not _comparable(value, tree.value):
        return False
    return {
        "=": value == tree.value,
        "!=": value != tree.value,
        "<": value < tree.value,
        "<=": value <= tree.value,
        ">": value > tree.value,
        ">=": value >= tree.value,
    }[tree.op]


# --- MongoDB: Sacred's run documents, with the metric summaries the observer keeps in each


def mongo_path(field: Field) -> str:
    """Where a field lives in a Sacred run document."""
    if field.scope == "column":
        return {
            "id": "_id",
            "host": "host.hostname",
            "experiment": "experiment.name",
            "dataset": "meta.choices.data",
            "model": "meta.choices.model",
            "solver": "config.solver.method",
            "sweep": "meta.sweep_id",
        }.get(field.key, field.key)
    if field.scope == "metrics":
        return f"metric_summary.{field.key.replace('.', '__')}.{field.aggregate}"
    return f"{field.scope}.{field.key}"


def _mongo_value(field: Field, value: Any) -> Any:
    if field.scope == "column" and field.key in ("start_time", "stop_time") and isinstance(value, str):
        try:
            return datetime.fromisoformat(value)  # Sacred stores times as dates
        except ValueError:
            return value
    return value


def _mongo_type(value: Any) -> str:
    return "string" if isinstance(value, str) else "bool" if isinstance(value, bool) else "number"


def to_mongo(tree: Any) -> dict:
    """A MongoDB filter with the semantics of `matches` (a missing value makes a comparison false)."""
    if tree is None:
        return {}
    if isinstance(tree, Logical):
        parts = [to_mongo(t) for t in tree.operands]
        return (_merged(parts) if tree.op == "and" else None) or {f"${tree.op}": parts}
    if isinstance(tree, Not):
        return {"$nor": [to_mongo(tree.operand)]}
    path = mongo_path(tree.field)
    if tree.op == "in":
        return {path: {"$in": [_mongo_value(tree.field, v) for v in tree.value]}}
    if tree.op == "like":
        return {path: {"$regex": _like_regex(tree.value), "$options": "is"}}
    value = _mongo_value(tree.field, tree.value)
    if tree.op == "=":
        return {path: value}
    operator = {"!=": "$ne", "<": "$lt", "<=": "$lte", ">": "$gt", ">=": "$gte"}[tree.op]
    condition: dict[str, Any] = {operator: value}
    if tree.op == "!=":  # $ne alone matches documents without the field, and values of another type
        condition["$type"] = "date" if isinstance(value, datetime) else _mongo_type(value)
    return {path: condition}


def _merged(parts: list[dict]) -> dict | None:
    """`and` of conditions on different fields as one filter document ({a: .., b: ..}, which means the same as
    {$and: [..]}): a server picks an index for one of its fields (SecantusDB reads every document for a
    top-level $and). None where two parts share a field or one is itself an operator."""
    merged: dict = {}
    for part in parts:
        if any(key.startswith("$") or key in merged for key in part):
            return None
        merged.update(part)
    return merged


TIGHTER_BOUND = {"$gt": max, "$gte": max, "$lt": min, "$lte": min}  # of two bounds of a range, the narrower


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def narrowed(condition: dict, path: str, clause: dict) -> dict:
    """The condition and `{path: clause}` as one filter document, the path first: SecantusDB answers a filter from
    the index of its first indexed field (and reads every document for a top-level $and, kept for clashes)."""
    rest = {k: v for k, v in condition.items() if k != path}
    if path not in condition:
        return {path: clause, **rest}
    existing = condition[path]
    if not isinstance(existing, dict) or not all(k.startswith("$") for k in existing):
        return {"$and": [{path: clause}, condition]}
    merged = dict(existing)
    for op, bound in clause.items():
        if op not in merged:
            merged[op] = bound
        elif op in TIGHTER_BOUND and is_number(bound) and is_number(merged[op]):  # numbers: the tighter bound
            merged[op] = TIGHTER_BOUND[op](merged[op], bound)
        else:
            return {"$and": [{path: clause}, condition]}
    return {path: merged, **rest}


def mongo_sort(keys: list[SortKey]) -> list[tuple[str, int]]:
    """A pymongo sort: the keys, then newest first."""
    return [(mongo_path(k.field), -1 if k.descending else 1) for k in keys] + [("_id", -1)]
