"""`python -m runner [overrides]`: run one experiment (or a sweep with -m) from the Hydra config tree."""
from __future__ import annotations

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def hydra_main(cfg: DictConfig) -> float:
    from runner.app import run_from_hydra  # torch loads only when a job runs, not for --help

    return run_from_hydra(cfg)


def main() -> None:
    hydra_main()


if __name__ == "__main__":
    main()
