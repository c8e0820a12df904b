"""Search-space lines and command-line sweep overrides -> hyperopt distributions; discovery."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hyperopt.pyll import stochastic

from hydra_plugins.hydra_hyperopt_sweeper.hyperopt_sweeper import HyperoptSweeper
from runner.sweeps.search_space import Parameter, SearchSpaceError, build_space, parse_line
from tests.conftest import run_cli


def distribution(parameter: Parameter) -> str:
    """The hyperopt node name under hyperopt_param (choice is a 'switch' over 'randint')."""
    node = parameter.expression
    if node.name == "switch":
        return "choice"
    while node.name != "hyperopt_param":
        node = node.pos_args[0]
    return node.pos_args[1].name


def samples(parameter: Parameter, n: int = 300) -> list:
    rng = np.random.default_rng(0)
    return [parameter.value(stochastic.sample(parameter.expression, rng=rng)) for _ in range(n)]


TABLE = [
    # line, hyperopt distribution, check on samples
    ("choice(adam, sgd, rmsprop)", "choice", lambda s: set(s) == {"adam", "sgd", "rmsprop"}),
    ("choice(1, 2.5, true)", "choice", lambda s: set(s) == {1, 2.5}),
    ("uniform(0.1, 0.9)", "uniform", lambda s: all(0.1 <= v <= 0.9 for v in s)),
    ("loguniform(1e-4, 1e-2)", "loguniform", lambda s: all(1e-4 <= v <= 1e-2 for v in s) and min(s) < 1e-3 < max(s)),
    ("quniform(0, 8, 1)", "quniform", lambda s: all(isinstance(v, int) and 0 <= v <= 8 for v in s)),
    (
        "quniform(0.0, 1.0, 0.25)",
        "quniform",
        lambda s: set(s) <= {0.0, 0.25, 0.5, 0.75, 1.0} and isinstance(s[0], float),
    ),
    (
        "qloguniform(16, 256, 16)",
        "qloguniform",
        lambda s: all(isinstance(v, int) and v % 16 == 0 and 16 <= v <= 256 for v in s),
    ),
    ("normal(0, 1)", "normal", lambda s: abs(np.mean(s)) < 0.2 and 0.8 < np.std(s) < 1.2),
    ("qnormal(10, 2, 1)", "qnormal", lambda s: all(isinstance(v, int) for v in s)),
    ("lognormal(0, 0.5)", "lognormal", lambda s: all(v > 0 for v in s)),
    ("randint(2, 5)", "randint", lambda s: set(s) == {2, 3, 4}),
]


@pytest.mark.parametrize("line,expected,check", TABLE, ids=[t[0] for t in TABLE])
def test_line_to_distribution(line, expected, check):
    parameter = parse_line("p", line)
    assert isinstance(parameter, Parameter)
    assert distribution(parameter) == expected
    assert check(samples(parameter))


def test_plain_values_are_fixed_overrides():
    assert parse_line("p", "adam") == "adam"
    assert parse_line("p", 0.5) == 0.5


@pytest.mark.parametrize(
    "line,fragment",
    [
        ("logunifrom(1e-4, 1e-2)", "unknown distribution"),
        ("loguniform(0, 1)", "0 < low < high"),
        ("uniform(1, 0)", "low < high"),
        ("quniform(0, 8)", "takes 3 arguments"),
        ("uniform(a, b)", "needs numbers"),
    ],
)
def test_bad_lines_name_the_parameter(line, fragment):
    with pytest.raises(SearchSpaceError, match=fragment) as info:
        parse_line("train.lr", line)
    assert "train.lr" in str(info.value)


def test_command_line_adds_and_replaces_parameters():
    params = {"train": {"lr": "loguniform(1e-4, 1e-2)"}, "train.optimizer": "choice(adam, sgd)"}
    searched, fixed = build_space(
        params,
        [
            "train.lr=tag(log,interval(1e-5,1e-3))",  # replaces the config line
            "model.augment_dims=range(0,4)",  # adds a choice
            "train.weight_decay=interval(0.0,0.1)",  # adds a uniform
            "model.channels=tag(int,interval(8,32))",  # whole numbers -> quniform, q=1
            "train.max_epochs=3",  # fixed for every trial
        ],
    )
    assert set(searched) == {
        "train.lr",
        "train.optimizer",
        "model.augment_dims",
        "train.weight_decay",
        "model.channels",
    }
    assert fixed == {"train.max_epochs": "3"}
    lr = samples(searched["train.lr"])
    assert all(1e-5 <= v <= 1e-3 for v in lr)
    assert set(samples(searched["model.augment_dims"])) == {0, 1, 2, 3}
    assert distribution(searched["train.weight_decay"]) == "uniform"
    channels = samples(searched["model.channels"])
    assert all(isinstance(v, int) and 8 <= v <= 32 for v in channels)


def test_plugin_is_discovered():
    names = [p.__name__ for p in Plugins.instance().discover(Sweeper)]
    assert HyperoptSweeper.__name__ in names


def test_log_bounds_are_natural_scale():
    parameter = parse_line("lr", "loguniform(1e-4, 1e-2)")
    node = parameter.expression.pos_args[0].pos_args[1]
    assert math.isclose(node.pos_args[0].obj, math.log(1e-4))


@pytest.mark.parametrize(
    "argument,words",
    [
        ("train.lr=loguniform(1e-4,1e-2)", ["hyperopt's syntax", "train.lr='tag(log, interval(a, b))'"]),
        ("train.lr=tag(log,interval(0,1))", ["train.lr: log-scale bounds need 0 < low < high, got (0.0, 1.0)"]),
        ("train.lr=interval(1,1)", ["train.lr: bounds need low < high"]),
    ],
)
def test_command_line_search_mistakes_end_in_one_message(tmp_path, argument, words):
    proc = run_cli(["-m", "search=quickstart", argument], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2, proc.stderr  # the error line and its fix
    for word in words:
        assert word in proc.stderr, proc.stderr


def test_a_search_over_time_dependence_samples_models_that_build(runs_dir):
    """search=digits_odenet_time: its choices and whole-number K reach the model as the sweeper passes them."""
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from runner.experiment.checkpoint import build_model, model_recipe
    from runner.experiment.factories import to_plain
    from runner.sweeps.search_space import format_value
    from tests.conftest import CONF, compose_config

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "config", overrides=["search=digits_odenet_time", f"paths.runs={runs_dir}"], return_hydra_config=True
        )
    searched, _ = build_space(OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=True), [])
    drawn = {name: samples(parameter, 60) for name, parameter in searched.items()}
    assert set(drawn["model.time_dependence"]) == {"none", "concat", "basis"}
    assert set(drawn["model.basis"]) == {"piecewise", "fourier"}
    assert set(drawn["model.basis_size"]) == {1, 2, 3, 4, 5, 6}
    counts = {}
    for i in range(12):
        trial = {name: values[i] for name, values in drawn.items()}
        overrides = [f"{k}={format_value(v)}" for k, v in trial.items()]
        trial_cfg = compose_config(["search=digits_odenet_time", *overrides], runs_dir)
        model = build_model(model_recipe(to_plain(trial_cfg.model), to_plain(trial_cfg.solver), (1, 8, 8), 10))
        assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
        f = model.body.func.net[0]
        weights = sum(p.numel() for p in f.parameters())
        counts[(trial["model.time_dependence"], trial["model.basis_size"])] = weights
    base = 18 * 18 * 9 + 18  # f's conv3x3 over 16 + 2 augmented channels
    for (kind, k), weights in counts.items():
        assert weights == {"none": base, "concat": base + 18 * 9, "basis": k * base}[kind]
