"""The one place config objects become typed objects: Hydra instantiate plus readable errors."""
from __future__ import annotations

import inspect
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from odeflow.errors import ConfigError, UserError


def to_plain(node: DictConfig | dict) -> dict[str, Any]:
    """A resolved, plain-dict copy of a config node."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def instantiate_group(group: str, node: DictConfig | dict, **kwargs: Any) -> Any:
    """instantiate(node) for config group `group`; user errors come back naming `group.key`."""
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, ConfigError):
            raise cause.within(group) from None
        if isinstance(cause, UserError):
            raise cause from None
        if isinstance(cause, TypeError) and "keyword argument" in str(cause):
            target = to_plain(node).get("_target_", "")
            raise UserError(f"{group}: {cause}", f"use only the keys {target} accepts: {', '.join(accepted_keys(target))}") from None
        raise


def accepted_keys(target: str) -> list[str]:
    try:
        return [p for p in inspect.signature(get_object(target)).parameters if p not in ("self", "input_shape", "num_classes", "solver")]
    except Exception:  # an unknown target has no signature to list
        return []
