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
        from odeflow.interrupts import sigterm_as_interrupt

        with _one_line_errors(self.sweeper), sigterm_as_interrupt():
            return self.sweeper.sweep(arguments)


@contextlib.contextmanager
def _one_line_errors(sweeper: Any = None) -> Iterator[None]:
    """A bad search space or sweeper setting ends in its message, not under Hydra's traceback; so does an
    interrupted sweep (Ctrl-C, SIGTERM), saying how to resume it."""
    from odeflow.errors import UserError
    from odeflow.interrupts import as_interrupted

    try:
        yield
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt as exc:
        interrupted = as_interrupted(exc)
        print(sweeper.describe_interruption(interrupted), file=sys.stderr, flush=True)
        raise SystemExit(interrupted.exit_code) from None
