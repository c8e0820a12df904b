"""The plotting layer: scales, limits, markers and titles chosen from the data, read back from matplotlib's
own objects (axis scales, limits, the artists drawn), for wide ranges, an outlier, a single trial, NaN
values and missing metrics."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import LogNorm
from matplotlib.markers import MarkerStyle

from odeflow import plots
from odeflow.plots.reevaluation import reevaluation_figure
from odeflow.plots.run import epoch_series_figure, learning_curves_figure, nfe_figure
from odeflow.plots.runs import metric_across_runs_figure
from odeflow.plots.scales import OFF_CHART_GID, plan_axis
from runner.sweeps.report import (
    best_so_far_figure,
    objective_vs_params_figure,
    parallel_coordinates_figure,
    trial_frame,
)
from runner.sweeps.state import SweepRecord, TrialRecord


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def marker_of(collection) -> str | None:
    """The marker a scatter was drawn with (matplotlib keeps only its path)."""
    path = collection.get_paths()[0]
    for name in ("o", "v", "X", "s", "*", "^", "D"):
        style = MarkerStyle(name)
        reference = style.get_path().transformed(style.get_transform())
        if path.vertices.shape == reference.vertices.shape and np.allclose(path.vertices, reference.vertices):
            return name
    return None


def by_label(ax, label: str):
    found = [c for c in ax.collections if c.get_label() == label]
    assert found, f"no scatter labelled {label!r} in {[c.get_label() for c in ax.collections]}"
    return found[0]


def off_chart_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts if t.get_gid() == OFF_CHART_GID]


# --- the rules --------------------------------------------------------------------------------------------


def test_a_positive_quantity_spanning_more_than_two_decades_gets_a_log_axis():
    assert plan_axis([2e-4, 3e-3, 0.05, 0.7]).scale == "log"
    assert plan_axis([0.2, 0.5, 0.9]).scale == "linear"
    assert plan_axis([0.2, 0.5, 0.9], log_decades=0.5).scale == "log"
    assert plan_axis([0.0, 0.0, 1.0, 10.0, 1000.0]).scale == "symlog"  # zeros and decades: symlog
    assert plan_axis([-1.0, 0.5, 2.0]).scale == "linear"


def test_an_outlier_a_log_axis_cannot_absorb_is_left_off_the_chart():
    values = [0.5, 0.55, 0.6, 0.62, 0.7, 0.75, 0.8, 0.85, 0.9, 33.0]  # 1.8 decades: no log by span
    plan = plan_axis(values)
    assert plan.scale == "linear" and plan.low is None and 0.9 < plan.high < 1.0
    assert plan.above(values).tolist() == [False] * 9 + [True]
    assert plan.placed(values)[-1] == plan.high


def test_a_log_axis_is_chosen_when_it_shows_the_outlier_without_squashing_the_rest():
    plan = plan_axis([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 60])  # squashed on a linear axis, not on a log one
    assert plan.scale == "log" and not plan.clips


def test_nan_none_and_near_equal_values_are_no_outliers():
    assert plan_axis([np.nan, None, 0.96, 0.96, 0.96, 0.953, math.inf]) == plan_axis([0.96])
    assert not plan_axis([0.96, 0.96, 0.96, 0.953]).clips
    assert plan_axis([]).scale == "linear" and plan_axis([np.nan]).scale == "linear"


# --- sweep report -----------------------------------------------------------------------------------------

SPACE = {
    "train.lr": "loguniform(0.001, 0.1)",
    "train.optimizer": "choice(adam, sgd)",
    "model.augment_dims": "quniform(0, 4, 1)",
}


def sweep(values: list[tuple[str, float | None]]) -> SweepRecord:
    trials = [
        TrialRecord(
            i,
            i,
            {
                "train.lr": 10 ** (-3 + 2 * i / max(1, len(values) - 1)),
                "train.optimizer": "adam",
                "model.augment_dims": i % 5,
            },
            status,
            value,
            run_id=i + 1,
            pruned={"epoch": 2, "reason": "median"} if status == "pruned" else None,
        )
        for i, (status, value) in enumerate(values)
    ]
    return SweepRecord("sweep-x", "best_val_loss", "minimize", SPACE, trials, next_job=len(values))


# As `make sweep` found: finished trials 0.0002-0.6, one diverged pruned trial at 32, one failure.
WIDE = [("ok", 0.58), ("ok", 3e-3), ("ok", 2.4e-4), ("pruned", 0.8), ("pruned", 32.1), ("failed", None), ("ok", 3.7e-4)]


def test_best_so_far_puts_a_wide_objective_on_a_log_axis_with_one_marker_per_outcome():
    record = sweep(WIDE)
    fig = best_so_far_figure(trial_frame(record), record)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    finished, pruned, failed = (by_label(ax, label) for label in ("finished", "pruned (value when stopped)", "failed"))
    assert (marker_of(finished), marker_of(pruned), marker_of(failed)) == ("o", "v", "X")
    assert sorted(finished.get_offsets()[:, 1]) == pytest.approx([2.4e-4, 3.7e-4, 3e-3, 0.58])
    assert failed.get_offsets()[0, 1] == pytest.approx(ax.get_ylim()[1])  # on the worst edge
    staircase = next(line for line in ax.lines if line.get_label() == "best so far")
    assert staircase.get_ydata().tolist() == pytest.approx([0.58, 3e-3, 2.4e-4, 2.4e-4, 2.4e-4, 2.4e-4])
    assert "7 trials: 4 finished, 2 pruned, 1 failed" in ax.get_title()


def test_an_outlier_on_a_linear_objective_is_marked_off_the_chart():
    record = sweep(
        [("ok", 0.6), ("ok", 0.5), ("ok", 0.55), ("pruned", 0.7), ("ok", 0.45), ("pruned", 0.65), ("pruned", 33.0)]
    )
    ax = best_so_far_figure(trial_frame(record), record).axes[0]
    assert ax.get_yscale() == "linear" and ax.get_ylim()[1] < 1.0  # the rest is not squashed by 33
    assert off_chart_texts(ax) == ["↑ 33"]
    edge = [c for c in ax.collections if c.get_gid() == OFF_CHART_GID]
    assert (
        len(edge) == 1 and marker_of(edge[0]) == "v" and edge[0].get_offsets()[0, 1] == pytest.approx(ax.get_ylim()[1])
    )


def test_sweep_figures_of_a_single_trial_and_of_nan_values():
    single = sweep([("ok", 0.3)])
    for make in (best_so_far_figure, objective_vs_params_figure, parallel_coordinates_figure):
        fig = make(trial_frame(single), single)
        assert fig.axes[0].get_yscale() == "linear"
    with_nan = sweep([*WIDE, ("ok", float("nan"))])
    ax = best_so_far_figure(trial_frame(with_nan), with_nan).axes[0]
    assert ax.get_yscale() == "log" and len(by_label(ax, "finished").get_offsets()) == 4  # NaN not drawn
    assert np.isfinite(ax.get_ylim()).all()
    nan_trial = by_label(ax, "finished, no value")  # drawn on the worst edge like a failure, in its own marker
    assert marker_of(nan_trial) == "o" and nan_trial.get_offsets()[0].tolist() == [7, pytest.approx(ax.get_ylim()[1])]


def test_objective_vs_params_shares_the_planned_objective_axis_and_scales_each_parameter():
    record = sweep(WIDE)
    fig = objective_vs_params_figure(trial_frame(record), record)
    lr, optimizer, augment = fig.axes[:3]
    assert [ax.get_yscale() for ax in (lr, optimizer, augment)] == ["log"] * 3
    assert lr.get_xscale() == "log" and augment.get_xscale() == "linear"
    assert [t.get_text() for t in optimizer.get_xticklabels()] == ["adam"]
    assert "sweep sweep-x" in fig._suptitle.get_text()


def test_parallel_coordinates_colours_a_wide_objective_by_its_log():
    record = sweep(WIDE)
    fig = parallel_coordinates_figure(trial_frame(record), record)
    colorbar_ax = fig.axes[-1]
    assert colorbar_ax.get_yscale() == "log"  # a LogNorm colour bar
    assert isinstance(colorbar_ax._colorbar.norm, LogNorm)
    ax = fig.axes[0]
    lines = {i: line for i, line in enumerate(ax.lines) if len(line.get_xdata()) > 2}  # trials, not axis lines
    ends = [line.get_ydata()[-1] for line in lines.values()]
    # log colours spread the good trials: 2.4e-4 and 3e-3 lie far apart on the objective axis
    assert ends[2] < 0.15 and ends[1] > ends[2] + 0.15 and ends[4] == pytest.approx(1.0)
    styles = [line.get_linestyle() for line in lines.values()]
    assert styles[3] == "--" and styles[5] == ":"  # pruned dashed, failed dotted


# --- per-run figures --------------------------------------------------------------------------------------


def history(n: int = 8, **extra) -> list[dict[str, float]]:
    rows = []
    for epoch in range(1, n + 1):
        row = {
            "epoch": epoch,
            "train.loss": 30.0 / epoch**3,  # 30 -> 0.06: the first epoch would flatten a linear axis
            "val.loss": 2.0 / epoch + 0.05,
            "train.acc": 1 - 0.5 / epoch,
            "val.acc": 1 - 0.6 / epoch,
            "nfe.forward": 20.0,
            "val.nfe.forward": 20.0,
            "nfe.backward": 0.0,
        }
        row.update({k: v(epoch) for k, v in extra.items()})
        rows.append(row)
    return rows


def test_learning_curves_mark_the_best_epoch_and_keep_the_first_epoch_from_dominating():
    fig = learning_curves_figure(
        history(), best_epoch=5, title="run 3 quickstart", test={"test.loss": 0.5, "test.acc": 0.9}
    )
    loss_ax, acc_ax = fig.axes
    assert loss_ax.get_yscale() == "log" and acc_ax.get_yscale() == "linear"
    for ax in (loss_ax, acc_ax):
        best = [line for line in ax.lines if "best epoch 5" in line.get_label()]
        assert len(best) == 1 and list(best[0].get_xdata()) == [5, 5]
        assert marker_of(by_label(ax, "test loss 0.5" if ax is loss_ax else "test acc 0.9")) == "*"
    assert {line.get_label() for line in loss_ax.lines} >= {"train", "val"}
    assert fig._suptitle.get_text() == "run 3 quickstart"


def test_a_first_epoch_spike_within_a_decade_is_left_off_the_chart():
    rows = history(6)
    for row, loss in zip(rows, [5.0, 0.8, 0.7, 0.65, 0.6, 0.58], strict=True):
        row["train.loss"] = row["val.loss"] = loss
    loss_ax = learning_curves_figure(rows).axes[0]
    assert loss_ax.get_yscale() == "linear" and loss_ax.get_ylim()[1] < 1.0
    assert off_chart_texts(loss_ax) == ["↑ 5", "↑ 5"]


def test_learning_curves_with_nan_values_and_missing_metrics():
    rows = history(5)
    rows[2]["val.loss"] = float("nan")
    del rows[3]["val.loss"]
    for row in rows:
        del row["train.acc"], row["val.acc"]
    loss_ax, acc_ax = learning_curves_figure(rows, best_epoch=2).axes
    val = next(line for line in loss_ax.lines if line.get_label() == "val")
    assert np.isnan(val.get_ydata()[2:4]).all() and np.isfinite(loss_ax.get_ylim()).all()
    assert not [line for line in acc_ax.lines if line.get_label() in ("train", "val")]
    assert "no acc logged" in [t.get_text() for t in acc_ax.texts]
    single = learning_curves_figure(history(1), best_epoch=1).axes[0]
    assert single.get_yscale() == "log"  # one epoch: train 30, val 2.05 span more than a decade


def test_nfe_draws_no_bnfe_line_without_a_backward_solve():
    direct = nfe_figure(history(), best_epoch=3).axes[0]
    labels = [line.get_label() for line in direct.lines]
    assert "train forward (FNFE)" in labels and not [label for label in labels if "BNFE" in label]
    assert "no backward evaluations" in direct.get_title()
    adjoint_rows = history(nfe_backward=lambda e: 30.0 + e)
    for row in adjoint_rows:
        row["nfe.backward"] = row.pop("nfe_backward")
    adjoint = nfe_figure(adjoint_rows).axes[0]
    assert "backward (BNFE)" in [line.get_label() for line in adjoint.lines]
    assert "no backward evaluations" not in adjoint.get_title()


def test_any_extra_epoch_series_gets_a_figure_in_the_same_style(tmp_path):
    rows = history(
        6,
        **{
            "memory.train.peak_bytes": lambda e: 300 * 2**20 + e,
            "memory.val.peak_bytes": lambda e: 100 * 2**20,
            "adaptation.step_size": lambda e: 0.5 / 10 ** (e - 1),  # five decades: log
            "adaptation.gap": lambda e: 0.01 * e,
        },
    )
    rows[2]["adaptation.gap"] = float("nan")
    paths = plots.extra_epoch_figures(rows, tmp_path, best_epoch=4, title="run 9")
    assert set(paths) == {"memory.png", "adaptation.png"} and all(
        p.read_bytes()[:4] == b"\x89PNG" for p in paths.values()
    )
    memory = epoch_series_figure(rows, ["memory.train.peak_bytes", "memory.val.peak_bytes"], best_epoch=4)
    (ax,) = memory.axes
    assert {line.get_label() for line in ax.lines} >= {"memory.train.peak_bytes", "memory.val.peak_bytes"}
    assert ax.get_ylabel() == "peak (MiB)" and 299 < max(ax.lines[0].get_ydata()) < 301
    step, gap = epoch_series_figure(rows, ["adaptation.step_size", "adaptation.gap"]).axes
    assert step.get_yscale() == "log" and gap.get_yscale() == "linear"
    assert plots.extra_epoch_figures(history(3), tmp_path / "none") == {}  # nothing beyond the standard series
    assert epoch_series_figure(rows, ["no.such.metric"]) is None


# --- across runs, reevaluation ----------------------------------------------------------------------------


def test_metric_across_runs_marks_each_runs_outcome_and_clips_an_outlier():
    series = {
        "run 1": ([1, 2, 3, 4], [0.9, 0.6, 0.5, 0.45]),
        "run 2": ([1, 2], [0.8, float("nan")]),
        "run 3": ([1], [0.7]),  # a single epoch
        "run 4": ([1, 2, 3], [0.85, 0.7, 40.0]),  # diverged
    }
    outcomes = {"run 1": "ok", "run 2": "pruned", "run 3": "failed", "run 4": "ok"}
    ax = metric_across_runs_figure(series, "val.loss", outcomes, title="val.loss per epoch: runs 1-4").axes[0]
    assert ax.get_yscale() == "linear" and ax.get_ylim()[1] < 1.0 and off_chart_texts(ax) == ["↑ 40"]
    ends = {
        marker_of(c): c.get_offsets()[0].tolist()
        for c in ax.collections
        if c.get_offsets().size and c.get_gid() is None
    }
    assert ends["v"] == [1, 0.8] and ends["X"] == [1, 0.7]  # pruned run 2 ends at its last value, failed run 3
    assert {"finished", "pruned (value when stopped)", "failed"} <= set(ax.get_legend_handles_labels()[1])
    wide = metric_across_runs_figure({"a": ([1, 2, 3], [1e-4, 1e-2, 1.0])}, "train.loss").axes[0]
    assert wide.get_yscale() == "log" and wide.get_title() == "train.loss per epoch, 1 run"


def test_reevaluation_figure_plots_accuracy_against_steps_and_tolerance_with_the_training_point():
    rows = [
        {"method": "euler", "setting": "h=1", "accuracy": 1.0, "training_solver": True, "reference": False},
        {"method": "euler", "setting": "h=1", "accuracy": 1.0, "training_solver": False, "reference": False},
        {"method": "euler", "setting": "h=0.5", "accuracy": 0.81, "training_solver": False, "reference": False},
        {"method": "euler", "setting": "h=0.25", "accuracy": 0.64, "training_solver": False, "reference": False},
        {"method": "rk4", "setting": "h=0.25", "accuracy": 0.55, "training_solver": False, "reference": False},
        {"method": "rk4", "setting": "h=1", "accuracy": 0.6, "training_solver": False, "reference": False},
        {"method": "dopri5", "setting": "tol=0.01", "accuracy": 0.53, "training_solver": False, "reference": False},
        {"method": "dopri5", "setting": "tol=1e-06", "accuracy": 0.52, "training_solver": False, "reference": True},
    ]
    gap = {"training_accuracy": 1.0, "reference_accuracy": 0.52, "gap": 0.48, "collapsed": True, "threshold": 0.05}
    fig = reevaluation_figure(rows, gap, "run 4: odenet_simple on spheres, trained with euler(h=1)", t_final=2.0)
    fixed, adaptive = fig.axes
    assert fixed.get_xscale() == adaptive.get_xscale() == "log"
    lines = {line.get_label(): line for line in fixed.lines if line.get_label().startswith("test:")}
    assert set(lines) == {"test: euler", "test: rk4"}
    assert lines["test: euler"].get_xdata().tolist() == [2, 4, 8]  # steps over [0, 2], sorted
    assert lines["test: rk4"].get_ydata().tolist() == [0.6, 0.55]
    assert [line.get_xdata().tolist() for line in adaptive.lines if line.get_label() == "test: dopri5"] == [[100, 1e6]]
    star = next(c for c in fixed.collections if c.get_label().startswith("trained: euler h=1"))
    assert marker_of(star) == "*" and star.get_offsets()[0].tolist() == [2, 1.0]
    assert any(c.get_label().startswith("reference: dopri5 tol=1e-06") for c in adaptive.collections)
    note = fig._supxlabel
    assert "ODE-ness gap" in note.get_text() and "+0.480" in note.get_text() and note.get_color() == "tab:red"
    only_fixed = reevaluation_figure(rows[:4], {**gap, "collapsed": False}, "fixed only")
    assert len(only_fixed.axes) == 1 and only_fixed._supxlabel.get_color() == "black"


def test_logged_runs_map_to_the_trial_outcome_markers():
    from odeflow.plots.styles import run_outcome

    assert [run_outcome(s) for s in ("COMPLETED", "FAILED", "INTERRUPTED", "TIMEOUT", "RUNNING")] == [
        "ok",
        "failed",
        "failed",
        "failed",
        "running",
    ]
    assert run_outcome("COMPLETED", pruned=True) == "pruned"
