"""The sweeper's config, registered in Hydra's ConfigStore as hydra/sweeper=hyperopt."""
# No `from __future__ import annotations`: Hydra execs plugin modules outside sys.modules, where dataclasses
# cannot resolve string annotations.

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class PrunerConf:
    # none, median (median stopping rule) or asha (successive halving); see runner/sweeps/pruning.py
    kind: str = "none"
    # no trial is pruned before it has trained this many epochs (asha: the first rung)
    warmup_epochs: int = 2
    # median: finished trials needed before it prunes; asha: trials at a rung before it cuts there
    min_trials: int = 4
    # asha: keep the best 1/reduction_factor at each rung; rungs at warmup_epochs * reduction_factor^k
    reduction_factor: int = 3


@dataclass
class HyperoptSweeperConf:
    _target_: str = "hydra_plugins.hydra_hyperopt_sweeper.hyperopt_sweeper.HyperoptSweeper"
    # minimize or maximize the float each trial returns (the `objective` key of the task config); null follows
    # the objective (losses are minimized, accuracies maximized), and a contradicting value is refused
    direction: str | None = None
    # total number of trials, counting those of a resumed sweep
    n_trials: int = 20
    # trials suggested per batch and handed to the launcher together (parallel with joblib, Slurm, Ray)
    n_jobs: int = 1
    # random trials before TPE starts modelling
    n_startup_jobs: int = 10
    seed: int = 0
    # stop once more than this fraction of the finished trials failed ...
    max_failure_rate: float = 0.5
    # ... counting only once this many trials have finished
    failure_rate_min_finished: int = 4
    # continue from the state saved in the sweep directory instead of starting over
    resume: bool = True
    # stop hopeless trials at the end of an epoch (kind: none, median, asha)
    pruner: PrunerConf = field(default_factory=PrunerConf)
    # earlier sweeps (directories or sweep ids) with the same search space whose trials seed TPE
    warm_start: list[str] = field(default_factory=list)
    # write the sweep report (plots, importance, top trials) at the end, logged as a run of its own
    report: bool = True
    # search space: one line per parameter, e.g. train.lr: loguniform(1e-4, 1e-2)
    params: dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(
    group="hydra/sweeper", name="hyperopt", node=HyperoptSweeperConf, provider="hyperopt_sweeper"
)
