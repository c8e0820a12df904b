"""Step-size and tolerance adaptation during training: the initial-step rule, the shrink/grow rule and its
bounds, both backends and gradient modes, and the adapted value as part of the training state."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torchdiffeq._impl.misc import _rms_norm, _select_initial_step

from data import load_spheres
from models.solvers import SolverSpec
from models.state import StateODENet
from odeflow.errors import UserError
from runner.experiment.adaptation import AdaptationSettings, SolverAdapter, finer_test_step, hairer_initial_step
from runner.experiment.factories import instantiate_group
from runner.experiment.settings import TrainSettings, seed_everything
from runner.experiment.training import fit
from tests.conftest import compose_config, run_cli


def rotation_model(solver: SolverSpec, angle: float = math.pi / 2, cut: float = 0.5) -> StateODENet:
    """dz/dt = A z rotating the plane by `angle` over [0, 1]; class 1 when the final x-coordinate exceeds `cut`."""
    model = StateODENet([2], 2, hidden=2, activation="none", solver=solver)
    with torch.no_grad():
        first, second = model.body.func.net[0], model.body.func.net[2]
        first.weight.copy_(torch.eye(2))
        first.bias.zero_()
        second.weight.copy_(torch.tensor([[0.0, -angle], [angle, 0.0]]))
        second.bias.zero_()
        model.classifier.weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
        model.classifier.bias.copy_(torch.tensor([cut, -cut]))
    return model


class ScriptedAccuracy(SolverAdapter):
    """An adapter whose batch accuracy is a given function of the solver spec: the rule alone under test."""

    def __init__(self, settings: AdaptationSettings, accuracy_of, value: float) -> None:
        super().__init__(settings, t_final=1.0, value=value, initial_value=value)
        self.accuracy_of = accuracy_of

    def accuracy(self, model, x, y, spec):  # noqa: ARG002 - the model is not consulted
        return self.accuracy_of(spec)


def nfe_with(model, x, spec) -> int:
    model.body.solver = spec
    with torch.no_grad():
        model(x)
    return model.body.forward_nfe


def checks(adapter: SolverAdapter, model, times: int) -> list:
    x, y = torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)
    return [adapter.after_backward(model, x, y, epoch=1) for _ in range(times)]


@pytest.mark.parametrize("order", [1, 2, 4])
def test_initial_step_is_torchdiffeqs_hairer_rule(order):
    torch.manual_seed(order)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    y0 = torch.randn(8, 3)
    ours = hairer_initial_step(net, y0, order, 1e-3, 1e-4)
    theirs = _select_initial_step(lambda t, y: net(y), torch.tensor(0.0), y0, order, 1e-3, 1e-4, _rms_norm)
    assert ours == pytest.approx(float(theirs.detach()), rel=1e-5)


def test_a_large_gap_halves_the_step():
    # Euler at h = 1 barely rotates (1, 0): x stays 1, class 1; the true flow ends near (0, 1), class 0.
    model = rotation_model(SolverSpec("euler", step_size=1.0))
    adapter = SolverAdapter(AdaptationSettings("step_size", interval=1, initial="config"), 1.0)
    adapter.start(model, torch.zeros(1, 2), model.body.solver)
    x, y = torch.tensor([[1.0, 0.0]] * 8), torch.zeros(8, dtype=torch.long)
    check = adapter.after_backward(model, x, y, epoch=1)
    assert check.gap == pytest.approx(1.0)
    assert check.action == "shrink" and adapter.value == 0.5
    assert model.body.solver.step_size == 0.5 and model.body.solver.method == "euler"  # the test solver is undone


def test_growth_is_refused_when_the_coarser_step_disagrees():
    settings = AdaptationSettings("step_size", interval=1)
    fine_enough = lambda spec: 1.0 if spec.method == "midpoint" or spec.step_size <= 0.3 else 0.0  # noqa: E731
    model = rotation_model(SolverSpec("euler", step_size=0.29))
    adapter = ScriptedAccuracy(settings, fine_enough, 0.29)
    (check,) = checks(adapter, model, 1)
    assert check.action == "keep" and adapter.value == 0.29  # 1.1 * 0.29 > 0.3 was tried and refused
    adapter = ScriptedAccuracy(settings, fine_enough, 0.2)
    (check,) = checks(adapter, model, 1)
    assert check.action == "grow" and adapter.value == pytest.approx(0.22)


def test_the_step_never_goes_below_t_over_max_steps():
    always_off = lambda spec: 1.0 if spec.method == "midpoint" else 0.0  # noqa: E731
    model = rotation_model(SolverSpec("euler", step_size=1.0))
    adapter = ScriptedAccuracy(AdaptationSettings("step_size", interval=1, max_steps=6), always_off, 1.0)
    made = checks(adapter, model, 6)
    # 0.125 would be 8 steps: from 4 steps the count goes halfway to the bound, 5, then 5.5 (6 steps: the bound)
    assert [c.value for c in made] == pytest.approx([0.5, 0.25, 0.2, 2 / 11, 2 / 11, 2 / 11])
    assert [c.action for c in made] == ["shrink"] * 4 + ["limit"] * 2


def test_near_the_bound_the_step_count_goes_halfway_to_it_as_in_the_paper():
    always_off = lambda spec: 1.0 if spec.method == "midpoint" else 0.0  # noqa: E731
    model = rotation_model(SolverSpec("euler", step_size=1 / 256))
    adapter = ScriptedAccuracy(AdaptationSettings("step_size", interval=1), always_off, 1 / 256)
    (check,) = checks(adapter, model, 1)
    assert check.value == pytest.approx(2 * (1 / 256) / (500 / 256 + 1))  # h' = 2h / (500h + 1): 378 steps
    assert 1 / check.value == pytest.approx(378)


def test_checks_run_every_interval_and_leave_the_nfe_counters_alone():
    model = rotation_model(SolverSpec("euler", step_size=0.5))
    adapter = SolverAdapter(AdaptationSettings("step_size", interval=3, initial="config"), 1.0)
    adapter.start(model, torch.zeros(1, 2), model.body.solver)
    model.body.forward_nfe, model.body.func.nfe = 99, 77  # as a training forward and backward pass left them
    made = checks(adapter, model, 7)
    assert [c is not None for c in made] == [False, False, True, False, False, True, False]
    assert (model.body.forward_nfe, model.body.func.nfe) == (99, 77)  # the batch's logged NFE, not a check's


def test_the_test_step_is_finer_for_coarse_steps_and_h_itself_for_fine_ones():
    settings = AdaptationSettings("step_size")
    assert finer_test_step(1.0, 1.0, 1, 2, settings) == pytest.approx(math.sqrt(1 / 50))
    assert finer_test_step(0.01, 1.0, 1, 2, settings) == 0.01
    # midpoint against rk4: h itself once 1/h^2 > 50 (8 steps), else (h^2 / 50)^(1/4)
    assert finer_test_step(0.125, 1.0, 2, 4, settings) == 0.125
    assert finer_test_step(0.25, 1.0, 2, 4, settings) == pytest.approx((0.25**2 / 50) ** 0.25)


def test_the_papers_initial_step_uses_unscaled_batch_mean_norms():
    # f(y) = 2y on samples of norms 1 and 3: d0 = 2, d1 = 4, h0 = 0.01 * d0 / d1, d2 = |f(y0 + h0 f0) - f0| / h0 = 8
    y0 = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    double = lambda y: 2 * y  # noqa: E731
    for order in (1, 2, 4):
        expected = min(100 * 0.005, (0.01 / 8) ** (1 / (order + 1)))
        assert hairer_initial_step(double, y0, order, 1e-3, 1e-6, scaled=False) == pytest.approx(expected, rel=1e-5)
        assert hairer_initial_step(double, y0, order, 0.1, 0.1, scaled=False) == pytest.approx(expected, rel=1e-5)
    assert hairer_initial_step(double, y0, 1, 1e-3, 1e-6) != pytest.approx(expected, rel=1e-2)  # the scaled rule


def test_the_default_start_is_the_papers_rule():
    model = rotation_model(SolverSpec("euler", step_size=1.0))
    x = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    adapter = SolverAdapter(AdaptationSettings("step_size"), 1.0)
    adapter.start(model, x, model.body.solver)
    assert adapter.value == pytest.approx(hairer_initial_step(model.body.func.net, x, 1, 1e-3, 1e-3, scaled=False))


@pytest.mark.parametrize("backend", ["fused", "torchdiffeq"])
@pytest.mark.parametrize("adjoint", [False, True])
def test_tolerance_adaptation_on_dopri5_trains_with_both_backends_and_gradients(backend, adjoint):
    seed_everything(0, True)
    data = load_spheres(n_train=160, n_test=40, batch_size=32)
    solver = SolverSpec("dopri5", rtol=1e-3, atol=1e-3, backend=backend, adjoint=adjoint)
    model = StateODENet(data.input_shape, 2, hidden=8, solver=solver)
    adapter = SolverAdapter(AdaptationSettings("tolerance", interval=2, initial="config"), 1.0)
    result = fit(model, data, TrainSettings(max_epochs=2, progress=False, device="cpu"), adapter=adapter)
    assert len(adapter.checks) == 4  # 4 batches of 32 per epoch, a check every 2nd
    expected = 1e-3
    for check in adapter.checks:
        assert check.test_setting <= check.value * 0.1 + 1e-15 or check.action == "shrink"
        expected = {"grow": expected * 1.1, "shrink": expected * 0.5}.get(check.action, expected)
        assert check.value == pytest.approx(expected)
    # the restored weights' epoch's value
    assert model.body.solver.rtol == model.body.solver.atol == result.adaptation["at_best_epoch"]
    assert model.body.solver.backend == backend and model.body.solver.adjoint == adjoint
    last = adapter.checks[-1]  # the test solve was tightened until it worked harder than the training solve
    x = data.train.x[:32]
    assert nfe_with(model, x, dataclasses.replace(solver, rtol=last.test_setting, atol=last.test_setting)) > nfe_with(
        model, x, dataclasses.replace(solver, rtol=last.value, atol=last.value)
    )


def test_tolerance_adaptation_halves_the_tolerance_on_a_large_gap():
    off_unless_tight = lambda spec: 1.0 if spec.rtol < 1e-4 else 0.0  # noqa: E731
    model = rotation_model(SolverSpec("dopri5", rtol=1e-3, atol=1e-3))
    adapter = ScriptedAccuracy(AdaptationSettings("tolerance", interval=1), off_unless_tight, 1e-3)
    (check,) = checks(adapter, model, 1)
    assert check.action == "shrink" and adapter.value == pytest.approx(5e-4)
    assert model.body.solver.rtol == pytest.approx(5e-4)


def train(tmp_path: Path, max_epochs: int, resume: dict | None = None) -> tuple[SolverAdapter, object]:
    seed_everything(3, True)
    data = load_spheres(n_train=200, n_test=40, batch_size=16, seed=3)
    model = StateODENet(data.input_shape, 2, hidden=8, solver=SolverSpec("euler", step_size=1.0))
    adapter = SolverAdapter(AdaptationSettings("step_size", interval=3, initial="config", threshold=0.05), 1.0)
    settings = TrainSettings(lr=0.02, max_epochs=max_epochs, patience=10, progress=False, device="cpu", seed=3)
    result = fit(model, data, settings, checkpoint_path=tmp_path / "state.pt", resume=resume, adapter=adapter)
    return adapter, result


def test_the_same_seed_replays_the_same_adaptations(tmp_path):
    first, _ = train(tmp_path, 3)
    second, _ = train(tmp_path, 3)
    assert first.changes() > 0
    strip = lambda a: [dataclasses.replace(c, seconds=0.0) for c in a.checks]  # noqa: E731
    assert strip(first) == strip(second)


def test_resume_continues_with_the_adapted_value(tmp_path):
    (tmp_path / "whole").mkdir()
    (tmp_path / "cut").mkdir()
    whole, whole_result = train(tmp_path / "whole", 3)
    cut, _ = train(tmp_path / "cut", 1)
    state = torch.load(tmp_path / "cut" / "state.pt", weights_only=False)
    assert state["adaptation"]["value"] == cut.value != 1.0
    resumed, result = train(tmp_path / "cut", 3, resume=state)
    assert [(c.iteration, c.value, c.gap) for c in resumed.checks] == [
        (c.iteration, c.value, c.gap) for c in whole.checks
    ]
    assert [h["adaptation.value"] for h in result.history] == [h["adaptation.value"] for h in whole_result.history]


def test_mismatched_adaptations_are_refused():
    with pytest.raises(UserError, match="adaptation=tolerance adapts adaptive solvers; euler"):
        AdaptationSettings("tolerance").check_solver(SolverSpec("euler", step_size=0.5), is_ode=True)
    with pytest.raises(UserError, match="adaptation=step_size adapts fixed-step solvers; dopri5"):
        AdaptationSettings("step_size").check_solver(SolverSpec("dopri5"), is_ode=True)
    with pytest.raises(UserError, match="no ODE block"):
        AdaptationSettings("step_size").check_solver(SolverSpec("euler", step_size=0.5), is_ode=False)
    with pytest.raises(UserError, match="orders of euler, midpoint, rk4, not heun3"):
        AdaptationSettings("step_size").check_solver(SolverSpec("heun3", step_size=0.5), is_ode=True)
    AdaptationSettings("none").check_solver(SolverSpec("euler", step_size=0.5), is_ode=False)


def test_a_mismatch_ends_before_training_in_one_message(runs_dir):
    proc = run_cli(["data=spheres", "solver=euler", "adaptation=tolerance", "tracking=none"], runs_dir, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "adaptation=tolerance adapts adaptive solvers" in output and "fix: use adaptation=step_size" in output
    assert "Traceback" not in output and "epoch" not in proc.stdout


@pytest.mark.parametrize("name", ["none", "step_size", "tolerance"])
def test_every_adaptation_file_instantiates_with_the_papers_defaults(name, runs_dir):
    settings = instantiate_group("adaptation", compose_config([f"adaptation={name}"], runs_dir).adaptation)
    assert isinstance(settings, AdaptationSettings) and settings.kind == name
    assert (settings.interval, settings.threshold, settings.shrink, settings.grow) == (50, 0.1, 0.5, 1.1)


def test_an_adapted_run_logs_its_value_reproduces_it_and_is_reevaluated_with_it(runs_dir):
    from runner.tracking.runstore import read_file_store

    quick = ["data=spheres", "data.n_train=200", "data.n_test=100", "data.batch_size=16", "model=odenet_state"]
    quick += ["solver=euler", "solver.step_size=1", "train.max_epochs=3", "train.lr=0.02", "train.progress=true"]
    proc = run_cli([*quick, "adaptation=step_size", "adaptation.interval=3", "adaptation.initial=config"], runs_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = read_file_store(runs_dir / "store")
    info = run.info["adaptation"]
    assert info["kind"] == "step_size" and info["initial"] == 1.0 and info["checks"] == 10  # 10 batches x 3 epochs / 3
    assert run.metrics["adaptation.check.value"]["steps"] == [3 * k for k in range(1, 11)]
    assert f"adapted {run.metrics['adaptation.value']['values'][0]:.4g}" in proc.stdout  # the epoch line
    assert {"adaptation.png", "trajectories.png"} <= set(run.artifacts)
    assert run.info["trajectories"]["state_dims"] == 2 and run.info["trajectories"]["crossing_pairs_reference"] >= 0

    proc = run_cli(["reproduce", "1"], runs_dir)
    assert proc.returncode == 0 and "\nMATCH: largest per-epoch difference 0 " in proc.stdout, proc.stdout[-3000:]

    proc = run_cli(["reevaluate", "1", "--grid", "rk4:0.25"], runs_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (reevaluation,) = [r for r in read_file_store(runs_dir / "store") if r.meta.get("reevaluates") == 1]
    training_row = reevaluation.info["reevaluation"][0]
    assert training_row["training_solver"] and training_row["setting"] == f"h={info['at_best_epoch']:g}"


def test_fehlberg2_is_tested_with_dopri5_at_a_fifth_of_its_tolerance():
    model = rotation_model(SolverSpec("fehlberg2", rtol=1e-3, atol=1e-3))
    adapter = SolverAdapter(AdaptationSettings("tolerance", interval=1, initial="config"), 1.0)
    adapter.start(model, torch.zeros(1, 2), model.body.solver)
    x, y = torch.tensor([[1.0, 0.0], [0.5, 0.5]]), torch.zeros(2, dtype=torch.long)
    check = adapter.after_backward(model, x, y, epoch=1)
    trained = nfe_with(model, x, SolverSpec("fehlberg2", rtol=1e-3, atol=1e-3))
    assert nfe_with(model, x, SolverSpec("dopri5", rtol=2e-4, atol=2e-4)) > trained  # so no tightening needed
    assert check.test_setting == pytest.approx(2e-4)


def test_the_tolerance_test_solve_is_tightened_until_it_works_harder_without_a_fixed_limit():
    # A slow rotation trained with dopri8 (28 evaluations at 1e-3): dopri5 needs a tolerance far below 1e-8
    # to take more.
    model = rotation_model(SolverSpec("dopri8", rtol=1e-3, atol=1e-3), angle=0.001)
    adapter = SolverAdapter(AdaptationSettings("tolerance", interval=1, initial="config"), 1.0)
    adapter.start(model, torch.zeros(1, 2), model.body.solver)
    x, y = torch.tensor([[1.0, 0.0], [0.5, 0.5]]), torch.zeros(2, dtype=torch.long)
    check = adapter.after_backward(model, x, y, epoch=1)
    trained = nfe_with(model, x, SolverSpec("dopri8", rtol=1e-3, atol=1e-3))
    tol = check.test_setting
    assert tol < 1e-4 * 0.1**4  # more than the 4 tightenings the runner used to stop at
    assert nfe_with(model, x, SolverSpec("dopri5", rtol=tol, atol=tol)) > trained
    assert nfe_with(model, x, SolverSpec("dopri5", rtol=tol * 10, atol=tol * 10)) <= trained


def test_a_loosened_tolerance_that_saves_no_evaluation_over_5_iterations_is_refused():
    # Every point stays in class 0 whatever the solve: the gap is 0 and a looser tolerance always agrees.
    model = rotation_model(SolverSpec("dopri5", rtol=1e-3, atol=1e-3), cut=10.0)
    x, y = torch.tensor([[1.0, 0.0], [0.5, 0.5]]), torch.zeros(2, dtype=torch.long)

    def iterations(adapter: SolverAdapter, times: int, training_nfe: int | None = None) -> list:
        made = []
        for _ in range(times):
            with torch.no_grad():
                model(x)  # the training iteration's forward pass, as fit() leaves its NFE
            if training_nfe is not None:
                model.body.forward_nfe = training_nfe
            made.append(adapter.after_backward(model, x, y, epoch=1))
        return made

    adapter = SolverAdapter(AdaptationSettings("tolerance", interval=5, initial="config"), 1.0)
    adapter.start(model, x, model.body.solver)
    *_, check = iterations(adapter, 5)
    assert check.action == "keep" and adapter.value == 1e-3  # 1.1e-3 takes the NFE of the last 5 iterations
    adapter = SolverAdapter(AdaptationSettings("tolerance", interval=5, initial="config"), 1.0)
    adapter.start(model, x, model.body.solver)
    *_, check = iterations(adapter, 5, training_nfe=99)
    assert check.action == "grow" and adapter.value == pytest.approx(1.1e-3)
