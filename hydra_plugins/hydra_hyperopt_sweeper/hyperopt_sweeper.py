"""Thin plugin class: Hydra imports every plugin module at start-up, so the heavy work lives in _impl."""

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from hydra_plugins.hydra_hyperopt_sweeper.config import HyperoptSweeperConf  # noqa: F401  (registers the config)


class HyperoptSweeper(Sweeper):
    def __init__(self, **kwargs: Any) -> None:
        from hydra_plugins.hydra_hyperopt_sweeper._impl import HyperoptSweeperImpl

        self.sweeper = HyperoptSweeperImpl(**kwargs)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        with _one_line_errors():
            self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        with _one_line_errors():
            return self.sweeper.sweep(arguments)


@contextlib.contextmanager
def _one_line_errors() -> Iterator[None]:
    """A bad search space or sweeper setting ends in its message, not under Hydra's traceback."""
    from odeflow.errors import UserError

    try:
        yield
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
