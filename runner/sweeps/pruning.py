"""Pruning of sweep trials at the end of an epoch: the median stopping rule and successive halving (ASHA).

Neither hyperopt nor Hydra prunes, and Optuna's pruners work on Optuna's own study storage, so the rules
are written here, after Optuna's MedianPruner and SuccessiveHalvingPruner. Trials run in other processes
(the joblib launcher, Slurm), so the evidence is a file the sweep owns, `<sweep dir>/pruning_evidence.jsonl`:
every trial appends its value after each epoch and a line when it finishes, and each decision reads the
whole file. The file stays with the sweep, so a resumed sweep prunes on the evidence of its earlier trials.

The value compared is the best so far of the epoch metric behind the sweep's objective (validation loss
for best_val_loss and test_loss, validation accuracy for best_val_acc and test_acc): after epoch e a
trial's value is what its objective would be if it stopped there.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from odeflow.errors import ConfigError
from odeflow.files import append_line

EVIDENCE_FILE = "pruning_evidence.jsonl"
PRUNERS = ("none", "median", "asha")
# objective -> (epoch metric, which way it is better)
EPOCH_METRIC = {
    "best_val_loss": ("val.loss", "minimize"),
    "test_loss": ("val.loss", "minimize"),
    "best_val_acc": ("val.acc", "maximize"),
    "test_acc": ("val.acc", "maximize"),
}


@dataclass(frozen=True)
class PrunerSettings:
    """`kind`: none, median or asha. No decision before `warmup_epochs` epochs of a trial. median: acts once
    `min_trials` trials have finished unpruned; asha: rungs at warmup_epochs x reduction_factor^k epochs, acts
    once `min_trials` trials have reached a rung and keeps the best 1/reduction_factor of them."""

    kind: str = "none"
    warmup_epochs: int = 2
    min_trials: int = 4
    reduction_factor: int = 3

    def __post_init__(self) -> None:
        if self.kind not in PRUNERS:
            raise ConfigError("hydra.sweeper.pruner.kind", self.kind, f"one of {', '.join(PRUNERS)}")
        for key, low in (("warmup_epochs", 1), ("min_trials", 1), ("reduction_factor", 2)):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"hydra.sweeper.pruner.{key}", value, f"an integer >= {low}")

    @property
    def active(self) -> bool:
        return self.kind != "none"


class Evidence:
    """The append-only evidence file of a sweep. Each record is one line written in one call (atomic between
    processes, O_APPEND); a line cut by a crash is skipped with one warning, and the next append starts on a
    line of its own."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._warned: set[int] = set()

    def append(self, record: dict[str, Any]) -> None:
        append_line(self.path, json.dumps(record))

    def read(self) -> list[dict[str, Any]]:
        try:
            lines = self.path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        records = []
        for number, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
                if not _is_record(record):
                    raise ValueError("not an evidence record")
            except ValueError:
                if line.strip() and number not in self._warned and number < len(lines):  # the last may be in writing
                    self._warned.add(number)
                    print(
                        f"warning: {self.path} line {number} is cut or damaged (a crash mid-write?); it is ignored",
                        file=sys.stderr,
                        flush=True,
                    )
                continue
            records.append(record)
        return records


def _is_record(record: Any) -> bool:
    return isinstance(record, dict) and "job" in record and ("finished" in record or {"epoch", "value"} <= set(record))


def running_best(values: list[float], direction: str) -> list[float]:
    pick = min if direction == "minimize" else max
    best, out = math.nan, []
    for value in values:
        best = value if math.isnan(best) else pick(best, value)
        out.append(best)
    return out


def _histories(records: list[dict[str, Any]]) -> tuple[dict[int, dict[int, float]], dict[int, str]]:
    """Per job: {epoch: value}, and how each finished job ended (ok, pruned)."""
    values: dict[int, dict[int, float]] = {}
    finished: dict[int, str] = {}
    for r in records:
        if "finished" in r:
            finished[r["job"]] = r["finished"]
        else:
            values.setdefault(r["job"], {})[r["epoch"]] = r["value"]
    return values, finished


def _worse(a: float, b: float, direction: str) -> bool:
    return a > b if direction == "minimize" else a < b


def decide(
    settings: PrunerSettings, records: list[dict[str, Any]], job: int, epoch: int, value: float, direction: str
) -> str | None:
    """Why the trial of `job`, at `value` after `epoch`, should stop now; None to go on."""
    if not settings.active or epoch < settings.warmup_epochs:
        return None
    values, finished = _histories(records)
    if settings.kind == "median":
        # finished trials' value at this epoch; one that stopped early (patience) keeps its last value
        peers = [
            history[max(e for e in history if e <= epoch)]
            for other, history in values.items()
            if finished.get(other) == "ok" and other != job and any(e <= epoch for e in history)
        ]
        if len(peers) < settings.min_trials:
            return None
        median = statistics.median(peers)
        if _worse(value, median, direction):
            return (
                f"{value:.4g} after epoch {epoch} is worse than the median {median:.4g} of {len(peers)} finished trials"
            )
        return None
    rung, factor = settings.warmup_epochs, settings.reduction_factor
    while rung < epoch:
        rung *= factor
    if rung != epoch:
        return None
    at_rung = [history[epoch] for other, history in values.items() if other != job and epoch in history] + [value]
    if len(at_rung) < settings.min_trials:
        return None
    kept = max(1, len(at_rung) // factor)
    ranked = sorted(at_rung, reverse=direction == "maximize")
    if _worse(value, ranked[kept - 1], direction):
        return (
            f"{value:.4g} after epoch {epoch} is not in the best {kept} of {len(at_rung)} trials at this rung "
            f"(cut-off {ranked[kept - 1]:.4g})"
        )
    return None


class TrialPruner:
    """One trial's side: `after_epoch` records the epoch's value and returns why to stop (or None).

    Never at `last_epoch`: the trial ends there anyway, so stopping saves nothing and would only mislabel a
    trial that ran its full budget as pruned."""

    def __init__(
        self, settings: PrunerSettings, evidence: Evidence, job: int, trial: int, objective: str, last_epoch: int
    ) -> None:
        self.settings, self.evidence, self.job, self.trial = settings, evidence, job, trial
        self.last_epoch = last_epoch
        self.metric, self.direction = EPOCH_METRIC[objective]
        self.seen: list[float] = []

    def after_epoch(self, epoch: int, metrics: dict[str, float]) -> str | None:
        self.seen.append(float(metrics[self.metric]))
        value = running_best(self.seen, self.direction)[-1]
        records = self.evidence.read()
        self.evidence.append({"job": self.job, "trial": self.trial, "epoch": epoch, "value": value})
        if epoch >= self.last_epoch:
            return None
        reason = decide(self.settings, records, self.job, epoch, value, self.direction)
        return f"{self.settings.kind} pruner: {self.metric} {reason}" if reason else None

    def finished(self, pruned: bool) -> None:
        self.evidence.append({"job": self.job, "trial": self.trial, "finished": "pruned" if pruned else "ok"})


def trial_pruner(
    sweeper: Any, sweep_dir: Path, job: int, trial: int, objective: str, max_epochs: int
) -> TrialPruner | None:
    """The pruner of a hyperopt sweep's trial, from the sweeper's settings; None when the sweep does not prune."""
    from runner.experiment.factories import to_plain

    if "hyperopt" not in str(sweeper.get("_target_", "")).lower() or not sweeper.get("pruner"):
        return None
    settings = PrunerSettings(**to_plain(sweeper.pruner))
    if not settings.active:
        return None
    return TrialPruner(settings, Evidence(sweep_dir / EVIDENCE_FILE), job, trial, objective, max_epochs)
