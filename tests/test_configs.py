"""Every file of every config group composes and instantiates through its factory."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from data.tensors import DataBundle
from models.solvers import METHODS, SolverSpec
from runner.checkpoint import build_model, model_recipe
from runner.factories import instantiate_group, to_plain
from runner.settings import TrainSettings
from runner.tracking import FileStore, MongoStore, NoStore
from tests.conftest import CONF, compose_config
from tests.dataset_files import write_cifar10, write_fashion_mnist


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_every_group_has_options():
    for group in ["data", "model", "solver", "train", "tracking", "experiment"]:
        assert options(group), group


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
    assert len(bundle.train) > 0 and len(bundle.val) > 0 and len(bundle.test) > 0
    assert bundle.train.x.min() >= -1.0 and bundle.train.x.max() <= 1.0


@pytest.mark.parametrize("name", options("solver"))
def test_solver_config_instantiates(name: str, runs_dir: Path):
    spec = instantiate_group("solver", compose_config([f"solver={name}"], runs_dir).solver)
    assert isinstance(spec, SolverSpec) and spec.method == name


def test_solver_files_cover_every_method():
    assert set(options("solver")) == set(METHODS)


@pytest.mark.parametrize("name", options("model"))
@pytest.mark.parametrize("input_shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8)])
def test_model_config_instantiates(name: str, input_shape: tuple[int, ...], runs_dir: Path):
    cfg = compose_config([f"model={name}", "solver=euler", "solver.step_size=1.0"], runs_dir)
    recipe = model_recipe(to_plain(cfg.model), to_plain(cfg.solver), input_shape, 10)
    model = build_model(recipe)
    assert model(torch.zeros(2, *input_shape)).shape == (2, 10)
    # the recipe is what checkpoints store: instantiating it directly gives the same architecture
    assert sum(p.numel() for p in instantiate(recipe, _convert_="all").parameters()) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["odenet_simple", "resnet_simple_small", "resnet_simple_large"])
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
