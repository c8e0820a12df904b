"""The one place config objects become typed objects: Hydra instantiate plus readable errors."""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from odeflow.errors import ConfigError, UserError

# Classes that configs name as `_target_` and that moved when runner/ was split into wings: runs, checkpoints
# and sweeps logged before the move name the old paths, and must still reproduce, resume and re-evaluate.
MOVED_TARGETS = {
    "runner.tracking.FileStore": "runner.tracking.stores.FileStore",
    "runner.tracking.MongoStore": "runner.tracking.stores.MongoStore",
    "runner.tracking.NoStore": "runner.tracking.stores.NoStore",
    "runner.settings.TrainSettings": "runner.experiment.settings.TrainSettings",
    "runner.callbacks.MultirunSummary": "runner.experiment.callbacks.MultirunSummary",
}


def current_targets(config: Any) -> Any:
    """`config` (plain containers) with every `_target_` that names a moved class replaced by its new path."""
    if isinstance(config, dict):
        return {
            k: (MOVED_TARGETS.get(v, v) if k == "_target_" and isinstance(v, str) else current_targets(v))
            for k, v in config.items()
        }
    if isinstance(config, list):
        return [current_targets(v) for v in config]
    return config


def to_plain(node: DictConfig | dict) -> dict[str, Any]:
    """A resolved, plain-dict copy of a config node."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def instantiate_group(group: str, node: DictConfig | dict, **kwargs: Any) -> Any:
    """instantiate(node) for config group `group`; user errors come back naming `group.key`."""
    plain = to_plain(node)
    if current_targets(plain) != plain:  # logged before a class moved
        node = plain = current_targets(plain)
    try:
        check_types(plain)
    except ConfigError as exc:
        raise exc.within(group) from None
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, ConfigError):
            raise cause.within(group) from None
        if isinstance(cause, UserError):
            raise cause from None
        if isinstance(cause, TypeError) and "keyword argument" in str(cause):
            target = plain.get("_target_", "")
            raise UserError(
                f"{group}: {cause}", f"use only the keys {target} accepts: {', '.join(accepted_keys(target))}"
            ) from None
        raise


def accepted_keys(target: str) -> list[str]:
    try:
        return [
            p
            for p in inspect.signature(get_object(target)).parameters
            if p not in ("self", "input_shape", "num_classes", "solver")
        ]
    except Exception:  # an unknown target has no signature to list
        return []


def check_types(values: dict[str, Any]) -> None:
    """Raise a ConfigError for the first value whose type does not match its parameter's type hint.

    Hydra passes command-line values as YAML parsed them (`maybe` stays a string, `1.5` a float), and
    the classes would otherwise take them: a string is truthy, a float breaks `range()` epochs later.
    """
    try:
        target = get_object(values["_target_"])
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:  # no target, or hints that do not resolve: Hydra reports the target itself
        return
    for key, value in values.items():
        if (
            key in hints
            and not (isinstance(value, dict) and "_target_" in value)
            and not matches_type(value, hints[key])
        ):
            raise ConfigError(key, value, describe_type(hints[key]))


def matches_type(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(matches_type(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence) or hint in (list, tuple):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return (
            isinstance(value, (list, tuple)) and all(matches_type(v, args[0]) for v in value)
            if args
            else isinstance(value, (list, tuple))
        )
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True  # a type this check does not know: the class validates it


def describe_type(hint: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(describe_type(arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) in (list, tuple, collections.abc.Sequence) or hint in (list, tuple):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return f"a list of {describe_type(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    if typing.get_origin(hint) is dict or hint is dict:
        return "a mapping (key: value)"
    return names.get(hint, getattr(hint, "__name__", str(hint)))
