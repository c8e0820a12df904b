"""The sweeper's config, registered in Hydra's ConfigStore as hydra/sweeper=hyperopt."""
# No `from __future__ import annotations`: Hydra execs plugin modules outside sys.modules, where dataclasses
# cannot resolve string annotations.

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class HyperoptSweeperConf:
    _target_: str = "hydra_plugins.hydra_hyperopt_sweeper.hyperopt_sweeper.HyperoptSweeper"
    # minimize or maximize the float each trial returns (the `objective` key of the task config); null follows
    # the objective (losses are minimized, accuracies maximized), and a contradicting value is refused
    direction: Optional[str] = None
    # total number of trials, counting those of a resumed sweep
    n_trials: int = 20
    # trials suggested per batch and handed to the launcher together (parallel with joblib, Slurm, Ray)
    n_jobs: int = 1
    # random trials before TPE starts modelling
    n_startup_jobs: int = 10
    seed: int = 0
    # stop once more than this fraction of the finished trials failed
    max_failure_rate: float = 0.5
    # continue from the state saved in the sweep directory instead of starting over
    resume: bool = True
    # search space: one line per parameter, e.g. train.lr: loguniform(1e-4, 1e-2)
    params: Dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(group="hydra/sweeper", name="hyperopt", node=HyperoptSweeperConf, provider="hyperopt_sweeper")
