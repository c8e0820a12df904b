"""Pruning decisions: the median stopping rule and successive halving on an evidence file."""

from __future__ import annotations

import json

import pytest

from odeflow.errors import ConfigError
from runner.sweeps.pruning import Evidence, PrunerSettings, TrialPruner, decide, running_best

MEDIAN = PrunerSettings("median", warmup_epochs=2, min_trials=3)


def finished(job: int, values: list[float], how: str = "ok") -> list[dict]:
    lines = [{"job": job, "trial": job, "epoch": e, "value": v} for e, v in enumerate(values, start=1)]
    return [*lines, {"job": job, "trial": job, "finished": how}]


def three_finished() -> list[dict]:
    return [*finished(0, [0.9, 0.5, 0.4]), *finished(1, [0.9, 0.6, 0.5]), *finished(2, [0.9, 0.7, 0.6])]


def test_median_prunes_a_trial_worse_than_the_median_of_finished_trials_at_the_same_epoch():
    reason = decide(MEDIAN, three_finished(), job=5, epoch=2, value=0.65, direction="minimize")
    assert reason and "worse than the median 0.6 of 3 finished trials" in reason
    assert decide(MEDIAN, three_finished(), job=5, epoch=2, value=0.55, direction="minimize") is None


def test_median_waits_for_warmup_and_for_enough_finished_trials():
    assert decide(MEDIAN, three_finished(), job=5, epoch=1, value=5.0, direction="minimize") is None  # warm-up
    two = three_finished()[:8]  # jobs 0 and 1 only
    assert decide(MEDIAN, two, job=5, epoch=2, value=5.0, direction="minimize") is None


def test_median_ignores_running_and_pruned_trials_and_carries_an_early_stopped_value_forward():
    evidence = [
        *three_finished()[:4],
        *finished(1, [0.9, 0.6]),
        *finished(2, [0.9, 0.05], how="pruned"),
        *[{"job": j, "trial": j, "epoch": e, "value": 0.1} for j in (3, 5) for e in (1, 2, 3)],  # still running
        *finished(4, [0.9, 0.8, 0.7]),
    ]
    # finished unpruned at epoch 3: job 0 (0.4), job 1 (stopped at epoch 2: 0.6), job 4 (0.7) -> median 0.6
    assert decide(MEDIAN, evidence, job=9, epoch=3, value=0.65, direction="minimize")
    assert decide(MEDIAN, evidence, job=9, epoch=3, value=0.59, direction="minimize") is None


def test_median_for_an_objective_to_maximize():
    assert decide(MEDIAN, three_finished(), job=5, epoch=2, value=0.55, direction="maximize")
    assert decide(MEDIAN, three_finished(), job=5, epoch=2, value=0.65, direction="maximize") is None


def test_asha_keeps_the_best_fraction_at_each_rung_and_decides_only_there():
    asha = PrunerSettings("asha", warmup_epochs=1, min_trials=4, reduction_factor=2)  # rungs at epochs 1, 2, 4, 8
    others = [{"job": j, "trial": j, "epoch": 2, "value": v} for j, v in enumerate([0.3, 0.5, 0.7])]
    # 4 values at rung 2 (with the trial's own): the best 2 go on, so the cut-off is 0.5
    assert "not in the best 2 of 4" in decide(asha, others, job=7, epoch=2, value=0.6, direction="minimize")
    assert decide(asha, others, job=7, epoch=2, value=0.4, direction="minimize") is None
    assert (
        decide(asha, [{**o, "epoch": 3} for o in others], job=7, epoch=3, value=0.9, direction="minimize") is None
    )  # no rung
    assert decide(asha, others[:2], job=7, epoch=2, value=0.9, direction="minimize") is None  # 3 < min_trials


def pruner_after_three_finished(tmp_path, last_epoch: int) -> tuple[TrialPruner, Evidence]:
    """Job 7's pruner (trial 3, best_val_loss) on an evidence file holding `three_finished()`."""
    evidence = Evidence(tmp_path / "evidence.jsonl")
    for line in three_finished():
        evidence.append(line)
    return TrialPruner(MEDIAN, evidence, job=7, trial=3, objective="best_val_loss", last_epoch=last_epoch), evidence


def test_a_trial_pruner_compares_its_best_so_far_and_leaves_evidence(tmp_path):
    pruner, evidence = pruner_after_three_finished(tmp_path, last_epoch=4)
    assert pruner.after_epoch(1, {"val.loss": 0.55}) is None  # warm-up
    assert pruner.after_epoch(2, {"val.loss": 0.8}) is None  # best so far 0.55 against the median 0.6 at epoch 2
    reason = pruner.after_epoch(3, {"val.loss": 0.52})  # best so far 0.52 against the median 0.5 at epoch 3
    assert reason and reason.startswith("median pruner: val.loss 0.52 after epoch 3")
    pruner.finished(pruned=True)
    mine = [r for r in evidence.read() if r["job"] == 7]
    assert [r.get("value") for r in mine] == [0.55, 0.55, 0.52, None] and mine[-1]["finished"] == "pruned"


def test_a_trial_is_not_pruned_at_its_last_epoch(tmp_path):
    pruner, evidence = pruner_after_three_finished(tmp_path, last_epoch=3)
    assert pruner.after_epoch(1, {"val.loss": 0.95}) is None  # warm-up
    assert pruner.after_epoch(2, {"val.loss": 0.58}) is None  # 0.58 against the median 0.6 at epoch 2
    assert pruner.after_epoch(3, {"val.loss": 0.57}) is None  # worse than the median 0.5, but it ends here anyway
    assert [r["value"] for r in evidence.read() if r["job"] == 7] == [0.95, 0.58, 0.57]


def test_running_best_and_bad_settings():
    assert running_best([3, 1, 2, 0.5], "minimize") == [3, 1, 1, 0.5]
    assert running_best([0.1, 0.3, 0.2], "maximize") == [0.1, 0.3, 0.3]
    with pytest.raises(
        ConfigError, match="hydra.sweeper.pruner.kind='hyperband' is invalid: expected one of none, median, asha"
    ):
        PrunerSettings("hyperband")
    with pytest.raises(
        ConfigError, match="hydra.sweeper.pruner.reduction_factor=1 is invalid: expected an integer >= 2"
    ):
        PrunerSettings("asha", reduction_factor=1)


def test_an_evidence_file_cut_mid_line_is_read_without_it_and_later_lines_stay_whole(tmp_path, capsys):
    pruner, evidence = pruner_after_three_finished(tmp_path, last_epoch=4)
    whole = evidence.read()
    with evidence.path.open("a") as f:
        f.write('{"job": 5, "trial": 2, "epo')  # a crash mid-write
    assert evidence.read() == whole  # the cut line is skipped
    assert pruner.after_epoch(1, {"val.loss": 0.55}) is None  # the next append lands on a line of its own
    pruner.finished(pruned=False)
    lines = evidence.path.read_text().splitlines()
    assert lines[-3] == '{"job": 5, "trial": 2, "epo'
    assert [json.loads(line) for line in lines[-2:]] == [
        {"job": 7, "trial": 3, "epoch": 1, "value": 0.55},
        {"job": 7, "trial": 3, "finished": "ok"},
    ]
    assert evidence.read() == [*whole, *map(json.loads, lines[-2:])]
    warning = capsys.readouterr().err
    assert f"{evidence.path} line {len(lines) - 2} is cut or damaged" in warning and warning.count("\n") == 1
