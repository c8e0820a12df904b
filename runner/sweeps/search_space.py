"""A sweep's search space: hyperopt distributions from search-config lines (`loguniform(1e-4, 1e-2)`) and from
Hydra's sweep syntax on the command line (`tag(log, interval(1e-4, 1e-2))`), and the values they give trials."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, Transformer
from hyperopt import hp

from odeflow.errors import UserError


class SearchSpaceError(UserError, ValueError):
    """A search-space line or sweeper setting that cannot be used; the message names it and the valid forms."""


def _parse_scalar(text: str) -> Any:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _log_bounds(name: str, low: float, high: float) -> tuple[float, float]:
    if not 0 < low < high:
        raise SearchSpaceError(f"{name}: log-scale bounds need 0 < low < high, got ({low}, {high})")
    return math.log(low), math.log(high)


def _bounds(name: str, low: float, high: float) -> tuple[float, float]:
    if not low < high:
        raise SearchSpaceError(f"{name}: bounds need low < high, got ({low}, {high})")
    return low, high


# name -> (number of arguments, builder(name, args) -> hyperopt expression). Log-scale bounds are given on
# the natural scale (loguniform(1e-4, 1e-2)), unlike hyperopt's own API, which takes their logarithms.
DISTRIBUTIONS: dict[str, tuple[int | None, Callable[[str, list], Any]]] = {
    "choice": (None, lambda n, a: hp.choice(n, a)),
    "uniform": (2, lambda n, a: hp.uniform(n, *_bounds(n, a[0], a[1]))),
    "loguniform": (2, lambda n, a: hp.loguniform(n, *_log_bounds(n, a[0], a[1]))),
    "quniform": (3, lambda n, a: hp.quniform(n, *_bounds(n, a[0], a[1]), a[2])),
    "qloguniform": (3, lambda n, a: hp.qloguniform(n, *_log_bounds(n, a[0], a[1]), a[2])),
    "normal": (2, lambda n, a: hp.normal(n, a[0], a[1])),
    "qnormal": (3, lambda n, a: hp.qnormal(n, a[0], a[1], a[2])),
    "lognormal": (2, lambda n, a: hp.lognormal(n, a[0], a[1])),
    "randint": (2, lambda n, a: hp.randint(n, a[0], a[1])),
}
_CALL = re.compile(r"^\s*([A-Za-z_]\w*)\s*\((.*)\)\s*$", re.S)


@dataclass
class Parameter:
    """One searched parameter: its hyperopt expression, its distribution as written (`spec`: what a resumed
    or warm-started sweep is compared on, and what the report reads its axes from), and its choices."""

    name: str
    expression: Any
    spec: str
    integer: bool = False
    options: list | None = None  # choice: the values, whose index is what hyperopt records

    def value(self, sampled: Any) -> Any:
        return int(round(sampled)) if self.integer else sampled

    def to_hyperopt(self, value: Any) -> Any:
        """The value as hyperopt records it in a trial's `vals` (a choice: the option's index)."""
        if self.options is None:
            return value
        if value not in self.options:
            raise SearchSpaceError(
                f"{self.name}={format_value(value)} of an earlier trial is not an option of {self.spec}"
            )
        return self.options.index(value)


def _spec(function: str, args: list) -> str:
    return f"{function}({', '.join(format_value(a) for a in args)})"


def parse_line(name: str, spec: Any) -> Parameter | Any:
    """`loguniform(1e-4, 1e-2)` -> Parameter; a value without a distribution -> that fixed value."""
    if not isinstance(spec, str):
        return spec
    match = _CALL.match(spec)
    if not match:
        return _parse_scalar(spec)
    function, body = match.group(1), match.group(2)
    if function not in DISTRIBUTIONS:
        raise SearchSpaceError(
            f"{name}: unknown distribution {function!r} in {spec!r}; valid: {', '.join(DISTRIBUTIONS)}"
        )
    args = [_parse_scalar(a) for a in body.split(",")] if body.strip() else []
    arity, build = DISTRIBUTIONS[function]
    if (arity is not None and len(args) != arity) or not args:
        raise SearchSpaceError(
            f"{name}: {function} takes {arity or 'one or more'} arguments, got {len(args)} in {spec!r}"
        )
    if function != "choice" and not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise SearchSpaceError(f"{name}: {function} needs numbers, got {spec!r}")
    integer = (
        function in ("quniform", "qloguniform", "qnormal") and all(_is_int(a) for a in args)
    ) or function == "randint"
    return Parameter(name, build(name, args), _spec(function, args), integer, args if function == "choice" else None)


def parse_override(override: Override) -> Parameter | Any:
    """Hydra's sweep syntax on the command line: a,b,c / choice(...) / range(...) / interval(...) /
    tag(log, interval(...)) for log scale / tag(int, interval(...)) for whole numbers (Hydra's interval is
    always float)."""
    name = override.get_key_element()
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    if override.is_choice_sweep() or override.is_range_sweep():
        options = list(override.sweep_iterator(transformer=Transformer.encode))
        return Parameter(name, hp.choice(name, options), _spec("choice", options), options=options)
    value = override.value()
    assert isinstance(value, IntervalSweep)
    low, high = value.start, value.end
    if "log" in value.tags:
        return Parameter(name, hp.loguniform(name, *_log_bounds(name, low, high)), _spec("loguniform", [low, high]))
    if "int" in value.tags:
        return Parameter(
            name, hp.quniform(name, *_bounds(name, low, high), 1), _spec("quniform", [low, high, 1]), integer=True
        )
    return Parameter(name, hp.uniform(name, *_bounds(name, low, high)), _spec("uniform", [low, high]))


def flatten_params(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": ...}} -> {"train.lr": ...} (command-line additions arrive nested)."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_params(value, full + "."))
        else:
            flat[full] = value
    return flat


def build_space(params: dict[str, Any], arguments: list[str]) -> tuple[dict[str, Parameter], dict[str, Any]]:
    """(searched parameters, fixed overrides) from config lines, then command-line overrides on top."""
    entries: dict[str, Any] = {k: parse_line(k, v) for k, v in flatten_params(params).items()}
    for override in OverridesParser.create().parse_overrides(arguments):
        entries[override.get_key_element()] = parse_override(override)
    searched = {k: v for k, v in entries.items() if isinstance(v, Parameter)}
    fixed = {k: v for k, v in entries.items() if not isinstance(v, Parameter)}
    return searched, fixed


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if value is None:
        return "null"
    return str(value)
