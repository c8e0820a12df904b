"""Thin plugin class: Hydra imports every plugin module at start-up, so the heavy work lives in _impl."""

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
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        return self.sweeper.sweep(arguments)
