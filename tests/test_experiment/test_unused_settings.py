"""A setting the chosen model does not use: named in one warning line, and never recorded as if it had run."""

from __future__ import annotations

from pathlib import Path

from runner.experiment.app import run_experiment
from runner.research.rerun import config_from_record
from runner.tracking.runstore import read_file_store, summary_row
from tests.conftest import compose_config
from tests.test_tracking.conftest import TINY

BASE = [o for o in TINY if not o.startswith("solver")]
RESNET = {"data": "spheres", "model": "resnet_simple_small", "solver": "rk4"}


def test_a_solver_given_for_a_resnet_is_named_once_and_its_record_claims_no_solver(runs_dir: Path, capsys):
    overrides = [*BASE, "model=resnet_simple_small", "solver=rk4", "solver.step_size=0.1", "model.t_final=2.0"]
    run_experiment(compose_config(overrides, runs_dir), runs_dir / "out", RESNET)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: solver=rk4 solver.step_size=0.1 model.t_final=2.0 do nothing for model=resnet_simple_small: it "
        "has no ODE block (its record holds solver: null); drop them, or pick an ODE model (e.g. model=odenet_simple)"
    ]
    (record,) = read_file_store(runs_dir / "store")
    assert record.config["solver"] is None and summary_row(record)["solver"] is None

    # Its record reruns as it is (reproduce, resume): no solver, and of the settings only what it still holds.
    run_experiment(config_from_record(record, compose_config([], runs_dir)), runs_dir / "again", record.choices)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: model.t_final=2.0 does nothing for model=")
    assert read_file_store(runs_dir / "store")[-1].config["solver"] is None


def test_an_ode_model_records_the_solver_it_ran_and_warns_of_nothing(runs_dir: Path, capsys):
    run_experiment(compose_config([*BASE, "solver=rk4"], runs_dir), runs_dir / "out", {**RESNET, "model": "odenet"})
    assert "warning:" not in capsys.readouterr().err
    assert read_file_store(runs_dir / "store")[0].config["solver"]["method"] == "rk4"


def test_solver_settings_the_chosen_solver_ignores_are_named(runs_dir: Path):
    from runner.experiment.factories import instantiate_group, to_plain
    from runner.experiment.unused import describe_ignored, solver_settings_unused

    def ignored(*overrides: str) -> list[str]:
        config = to_plain(compose_config(list(overrides), runs_dir))
        solver = instantiate_group("solver", config["solver"])
        return solver_settings_unused(config, {"solver": overrides[0].split("=")[1]}, solver)

    assert ignored("solver=rk4", "solver.rtol=1e-6", "solver.checkpoints=8", "solver.step_size=0.1") == [
        "solver.rtol=1e-06",
        "solver.checkpoints=8",
    ]
    config = to_plain(compose_config(["solver=rk4", "solver.rtol=1e-6"], runs_dir))
    rk4 = instantiate_group("solver", config["solver"])
    assert solver_settings_unused(config, {"solver": "rk4"}, rk4, adapting=True) == []  # step-size adaptation reads it
    assert ignored("solver=dopri5", "solver.rtol=1e-6", "solver.gradient=checkpoint", "solver.checkpoints=8") == []
    assert ignored("solver=dopri5", "solver.adjoint_norm=seminorm") == ["solver.adjoint_norm=seminorm"]
    assert ignored("solver=dopri5", "solver.adjoint_norm=seminorm", "solver.gradient=adjoint") == []
    solver = instantiate_group("solver", to_plain(compose_config(["solver=rk4"], runs_dir))["solver"])
    assert describe_ignored(["solver.rtol=1e-06"], solver).startswith(
        "warning: solver.rtol=1e-06 does nothing for rk4 with gradient=direct ("
    )
