"""The ready launcher configs compose to the right plugins (the plugins are installed by the project)."""

from __future__ import annotations

import importlib.util

import pytest
from hydra import compose, initialize_config_dir

from tests.conftest import CONF


def hydra_launcher(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True).hydra.launcher


def test_joblib_launcher():
    assert "JoblibLauncher" in hydra_launcher("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")._target_


def test_slurm_launcher_config():
    launcher = hydra_launcher("hydra/launcher=slurm", "hydra.launcher.partition=gpu")
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.partition == "gpu"


def test_slurm_cpu_launcher_config():
    launcher = hydra_launcher("hydra/launcher=slurm_cpu", "hydra.launcher.partition=short")
    assert launcher._target_ == "hydra_plugins.odeflow_slurm_launcher.SlurmLauncher"
    assert launcher.gpus_per_node is None and launcher.partition == "short" and launcher.max_num_timeout == 0
    assert launcher.cpus_per_task is None  # follows train.num_threads (runner.sweeps.slurm)


@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None, reason="make install-ray")
@pytest.mark.parametrize(("preset", "address"), [("ray_cluster", "auto"), ("ray_local", None)])
def test_ray_launcher_configs_ask_one_gpu_per_trial(preset: str, address: str | None):
    launcher = hydra_launcher(f"hydra/launcher={preset}")
    assert launcher.ray.init.address == address and launcher.ray.remote.num_gpus == 1
