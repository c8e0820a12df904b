"""A Hydra sweeper driven by hyperopt's TPE (no public plugin exists; modelled on hydra-optuna-sweeper)."""
