"""The sweep state record: TPE's history rebuilt from it, changes named, the old pickle migrated, the failure rule."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hyperopt import base, space_eval

from hydra_plugins.hydra_hyperopt_sweeper._impl import failure_rate_exceeded, suggest_batch, tpe_history
from odeflow.errors import UserError
from runner.sweeps import state as sweep_state
from runner.sweeps.search_space import build_space
from runner.sweeps.state import SweepRecord, TrialRecord, describe_change

FIXTURES = Path(__file__).parent / "fixtures"
PARAMS = {
    "train.lr": "loguniform(1e-4, 1e-1)",
    "train.optimizer": "choice(adam, sgd)",
    "model.augment_dims": "quniform(0, 4, 1)",
    "train.momentum": "uniform(0.5, 0.99)",
    "data.seed": "randint(0, 5)",
    "train.weight_decay": "lognormal(-9, 1)",
}


def test_tpe_history_rebuilt_from_records_gives_back_each_trial_and_its_result():
    searched, _ = build_space(PARAMS, [])
    space = {n: p.expression for n, p in searched.items()}
    domain = base.Domain(lambda _: 0.0, space)
    trials = [
        TrialRecord(
            0,
            0,
            {
                "train.lr": 0.01,
                "train.optimizer": "sgd",
                "model.augment_dims": 3,
                "train.momentum": 0.9,
                "data.seed": 4,
                "train.weight_decay": 1e-4,
            },
            "ok",
            0.5,
        ),
        TrialRecord(
            1,
            1,
            {
                "train.lr": 0.002,
                "train.optimizer": "adam",
                "model.augment_dims": 0,
                "train.momentum": 0.6,
                "data.seed": 0,
                "train.weight_decay": 2e-4,
            },
            "pruned",
            0.9,
            pruned={"epoch": 2},
        ),
        TrialRecord(
            2,
            2,
            {
                **{
                    "train.lr": 0.05,
                    "train.optimizer": "adam",
                    "model.augment_dims": 1,
                    "train.momentum": 0.7,
                    "data.seed": 1,
                    "train.weight_decay": 3e-4,
                }
            },
            "failed",
        ),
        TrialRecord(
            3,
            3,
            {
                "train.lr": 0.05,
                "train.optimizer": "adam",
                "model.augment_dims": 1,
                "train.momentum": 0.7,
                "data.seed": 1,
                "train.weight_decay": 3e-4,
            },
            "running",
        ),
    ]
    history = tpe_history(trials, searched, "maximize", domain)
    assert len(history.trials) == 3  # the running one is left out
    for doc, trial in zip(history.trials, trials, strict=False):  # the running trial, last, has no doc
        vals = {k: v[0] for k, v in doc["misc"]["vals"].items()}
        sampled = space_eval(space, vals)
        assert {n: searched[n].value(sampled[n]) for n in searched} == trial.params
    assert [d["result"] for d in history.trials] == [
        {"loss": -0.5, "status": "ok"},
        {"loss": -0.9, "status": "ok"},
        {"status": "fail"},
    ]


def test_a_parameter_value_outside_its_choices_is_named():
    searched, _ = build_space(PARAMS, [])
    with pytest.raises(
        UserError, match="train.optimizer=rmsprop of an earlier trial is not an option of choice\\(adam, sgd\\)"
    ):
        searched["train.optimizer"].to_hyperopt("rmsprop")


def test_differences_are_named_one_by_one():
    before = SweepRecord(
        "s", "best_val_loss", "minimize", {"train.lr": "loguniform(0.001, 0.1)", "train.optimizer": "choice(adam, sgd)"}
    )
    now = {"train.lr": "loguniform(0.0001, 0.1)", "model.channels": "choice(8, 16)"}
    assert describe_change(before, now, "test_acc", "maximize") == [
        "objective best_val_loss (minimize) then, test_acc (maximize) now",
        "model.channels: not searched then, choice(8, 16) now",
        "train.lr: loguniform(0.001, 0.1) then, loguniform(0.0001, 0.1) now",
        "train.optimizer: searched then (choice(adam, sgd)), not now",
    ]
    assert describe_change(before, dict(before.space), "best_val_loss", "minimize") == []


def test_the_state_is_readable_json_and_round_trips(tmp_path):
    record = SweepRecord(
        "s-1",
        "best_val_loss",
        "minimize",
        {"train.lr": "uniform(0, 1)"},
        [TrialRecord(0, 0, {"train.lr": 0.5}, "ok", 0.25, run_id=3)],
        next_job=1,
    )
    path = record.save(tmp_path)
    data = json.loads(path.read_text())
    assert data["format"] == "odeflow-sweep-state" and data["version"] == 1 and data["trials"][0]["value"] == 0.25
    assert sweep_state.load(tmp_path) == record
    data["version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="sweep-state version 99; this odeflow reads version 1"):
        sweep_state.load(tmp_path)


def test_a_pickled_state_of_the_old_format_is_migrated_without_its_classes(tmp_path):
    """fixtures/old_state/hyperopt_state.pkl was written by the sweeper before the JSON state (4 trials)."""
    shutil.copy(FIXTURES / "old_state" / "hyperopt_state.pkl", tmp_path)
    space = {"train.lr": "a", "train.weight_decay": "b", "train.optimizer": "c", "model.augment_dims": "d"}
    record = sweep_state.migrate_pickle(tmp_path, "best_val_loss", space)
    assert record.sweep_id == "sweep-a19153f7" and record.direction == "minimize" and record.next_job == 4
    assert [(t.number, t.job, t.status, t.run_id) for t in record.trials] == [(i, i, "ok", i + 1) for i in range(4)]
    assert (
        record.trials[1].value == pytest.approx(0.7041419982910156)
        and record.trials[1].params["train.optimizer"] == "adam"
    )
    with pytest.raises(
        UserError,
        match="searched model.augment_dims, train.lr, train.optimizer, train.weight_decay; "
        "the search space now has train.lr",
    ):
        sweep_state.migrate_pickle(tmp_path, "best_val_loss", {"train.lr": "a"})
    (tmp_path / "hyperopt_state.pkl").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="cannot be read"):
        sweep_state.migrate_pickle(tmp_path, "best_val_loss", space)


def test_the_failure_rule_waits_for_enough_finished_trials():
    assert not failure_rate_exceeded(finished=1, failed=1, max_rate=0.5, min_finished=4)  # one early failure
    assert not failure_rate_exceeded(finished=4, failed=2, max_rate=0.5, min_finished=4)
    assert failure_rate_exceeded(finished=4, failed=3, max_rate=0.5, min_finished=4)
    assert failure_rate_exceeded(finished=1, failed=1, max_rate=0.5, min_finished=0)
    assert not failure_rate_exceeded(finished=0, failed=0, max_rate=0.0, min_finished=0)


def test_a_batch_for_parallel_workers_gets_one_suggestion_per_new_trial_past_the_start_up_trials():
    """tpe.suggest answers one id past its start-up trials: the batch must still fill every worker."""
    searched, _ = build_space({"train.lr": "loguniform(1e-4, 1e-1)"}, [])
    domain = base.Domain(lambda _: 0.0, {n: p.expression for n, p in searched.items()})
    done = [
        TrialRecord(n, n, {"train.lr": lr}, "ok", loss)
        for n, (lr, loss) in enumerate([(1e-3, 0.5), (1e-2, 0.3), (3e-2, 0.9)])
    ]
    history = tpe_history(done, searched, "minimize", domain)
    docs = suggest_batch([3, 4], domain, history, sweep_seed=0, n_startup_jobs=2)
    assert [d["tid"] for d in docs] == [3, 4]
    values = [d["misc"]["vals"]["train.lr"][0] for d in docs]
    assert values[0] != values[1]
    # the same numbers on resume
    assert [d["misc"]["vals"]["train.lr"][0] for d in suggest_batch([3, 4], domain, history, 0, 2)] == values
