"""Every file of every config group composes and instantiates through its factory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from data.tensors import DataBundle
from models.solvers import METHODS, SolverSpec
from runner.experiment.checkpoint import build_model, load_checkpoint, model_recipe, save_checkpoint
from runner.experiment.factories import instantiate_group, to_plain
from runner.experiment.settings import TrainSettings
from runner.tracking.stores import FileStore, MongoStore, NoStore
from tests.conftest import CONF, compose_config
from tests.dataset_files import write_cifar10, write_fashion_mnist


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


# Models over their input itself take vectors only (their ODE state is the input)
VECTOR_MODELS = ("odenet_state", "raa_odenet")
INPUT_SHAPES = {
    "fashion_mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
    "digits": (1, 8, 8),
    "spheres": (2,),
    "raa_spheres": (2,),
}


@pytest.mark.parametrize("name", options("experiment"))
def test_every_experiment_preset_composes_and_builds(name: str, runs_dir: Path):
    """Each preset's keys exist and its values pass the factories: solver, training settings, the model."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={name}", f"paths.runs={runs_dir}"], return_hydra_config=True)
    choices = cfg.hydra.runtime.choices
    assert choices["experiment"] == name
    solver = instantiate_group("solver", cfg.solver)
    assert isinstance(solver, SolverSpec) and isinstance(instantiate_group("train", cfg.train), TrainSettings)
    shape = INPUT_SHAPES[choices["data"]]
    model = build_model(model_recipe(to_plain(cfg.model), to_plain(cfg.solver), shape, 10))
    assert model(torch.zeros(2, *shape)).shape == (2, 10)


@pytest.mark.parametrize("name", options("search"))
def test_every_search_preset_parses(name: str, runs_dir: Path):
    from hydra_plugins.hydra_hyperopt_sweeper._impl import sweep_direction
    from runner.sweeps.search_space import build_space

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"search={name}", f"paths.runs={runs_dir}"], return_hydra_config=True)
    searched, _ = build_space(OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=True), [])
    assert searched and all(key.split(".")[0] in cfg for key in searched)
    assert sweep_direction(cfg.hydra.sweeper.direction, cfg.objective) == "minimize"  # the presets minimize a loss


@pytest.mark.parametrize("name", options("data"))
def test_data_config_instantiates(name: str, runs_dir: Path, tmp_path: Path):
    root = tmp_path / "datasets"
    write_fashion_mnist(root)
    write_cifar10(root)
    overrides = [f"data={name}", f"paths.datasets={root}"]
    if name == "cifar10":
        overrides.append("data.verify_checksums=false")  # the test files are not the official bytes
    cfg = compose_config(overrides, runs_dir)
    bundle = instantiate_group("data", cfg.data)
    assert isinstance(bundle, DataBundle)
    assert len(bundle.train) > 0 and len(bundle.test) > 0
    # raa_spheres trains on every point, as the paper did; the others hold out a validation split
    assert bundle.has_validation == (name != "raa_spheres")
    assert bundle.train.x.min() >= -1.0 and bundle.train.x.max() <= 1.0


@pytest.mark.parametrize("name", options("solver"))
def test_solver_config_instantiates(name: str, runs_dir: Path):
    spec = instantiate_group("solver", compose_config([f"solver={name}"], runs_dir).solver)
    assert isinstance(spec, SolverSpec) and spec.method == name


def test_solver_files_cover_every_method():
    assert set(options("solver")) == set(METHODS)


@pytest.mark.parametrize("name", sorted(set(options("model")) - set(VECTOR_MODELS)))
@pytest.mark.parametrize("input_shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8)])
def test_model_config_instantiates(name: str, input_shape: tuple[int, ...], runs_dir: Path):
    cfg = compose_config([f"model={name}", "solver=euler", "solver.step_size=1.0"], runs_dir)
    recipe = model_recipe(to_plain(cfg.model), to_plain(cfg.solver), input_shape, 10)
    model = build_model(recipe).eval()
    x = torch.randn(2, *input_shape)
    assert model(x).shape == (2, 10)
    # the recipe is what checkpoints store: the model rebuilt from a checkpoint is the same function
    rebuilt, _ = load_checkpoint(save_checkpoint(runs_dir / "model.pt", model, recipe, {}))
    assert torch.equal(rebuilt.eval()(x), model(x))


@pytest.mark.parametrize("name", ["odenet_simple", "resnet_simple_small", "resnet_simple_large", *VECTOR_MODELS])
def test_simple_models_build_for_vector_data(name: str, runs_dir: Path):
    cfg = compose_config([f"model={name}", "data=spheres"], runs_dir)
    model = build_model(model_recipe(to_plain(cfg.model), to_plain(cfg.solver), (2,), 2))
    assert model(torch.zeros(5, 2)).shape == (5, 2)


def test_train_and_tracking_configs_instantiate(runs_dir: Path):
    for name in options("train"):
        assert isinstance(instantiate_group("train", compose_config([f"train={name}"], runs_dir).train), TrainSettings)
    for name in options("tracking"):
        store = instantiate_group("tracking", compose_config([f"tracking={name}"], runs_dir).tracking)
        assert isinstance(store, (FileStore, MongoStore, NoStore))
        if not isinstance(store, NoStore):
            assert str(runs_dir) in str(store.local_dir)


@pytest.mark.parametrize("name", options("experiment"))
def test_experiment_presets_compose_and_build(name: str, runs_dir: Path):
    cfg = compose_config([f"experiment={name}"], runs_dir)
    assert cfg.name == name
    instantiate_group("train", cfg.train)
    instantiate_group("solver", cfg.solver)
