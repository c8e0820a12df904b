"""A hyperopt sweep's state: a versioned, readable JSON record of its trials (`<sweep dir>/sweep_state.json`).

It holds what a person reads and what TPE needs, nothing else: the objective and direction, the search
space as written, and per trial its parameters, status, objective value, run id and Hydra job number.
TPE's history is rebuilt from it at every batch, so neither a renamed class nor a new hyperopt version
can make a sweep unreadable. Sweeps written before this format (a pickle, `hyperopt_state.pkl`) are
migrated on resume.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from odeflow.errors import UserError
from odeflow.files import write_atomic

STATE_FILE = "sweep_state.json"
OLD_STATE_FILE = "hyperopt_state.pkl"
FORMAT = "odeflow-sweep-state"
VERSION = 1
STATUSES = ("running", "ok", "pruned", "failed")  # running: launched, no outcome recorded yet (a crash mid-batch)


@dataclass
class TrialRecord:
    number: int
    job: int  # Hydra's job number: the trial's output folder <sweep dir>/<job>
    params: dict[str, Any]
    status: str = "running"
    value: float | None = None
    run_id: Any = None
    error: str | None = None
    pruned: dict[str, Any] | None = None  # {"epoch": e, "reason": ...}
    lost_jobs: list[int] = field(default_factory=list)  # earlier attempts lost in a crash

    @property
    def has_value(self) -> bool:
        return self.status in ("ok", "pruned") and self.value is not None


@dataclass
class SweepRecord:
    sweep_id: str
    objective: str
    direction: str
    space: dict[str, str]  # parameter -> its distribution as written, e.g. "loguniform(0.001, 0.1)"
    trials: list[TrialRecord] = field(default_factory=list)
    next_job: int = 0
    warm_start: list[str] = field(default_factory=list)  # sweep ids whose trials seed TPE
    # the run its report was logged as: {"run_id", "store", "trials"} (the store, a digest of the trials reported)
    report_run: dict[str, Any] | None = None

    def count(self, *statuses: str) -> int:
        return sum(t.status in statuses for t in self.trials)

    def best(self) -> TrialRecord | None:
        scored = [t for t in self.trials if t.has_value]
        if not scored:
            return None
        return (min if self.direction == "minimize" else max)(scored, key=lambda t: t.value)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, **asdict(self)}

    def save(self, sweep_dir: Path) -> Path:
        path = Path(sweep_dir) / STATE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_atomic(path, json.dumps(self.to_json(), indent=1, default=_plain))  # a crash keeps the last state

    @classmethod
    def from_json(cls, data: dict[str, Any], source: Path) -> SweepRecord:
        if data.get("format") != FORMAT:
            raise UserError(
                f"{source} is not an odeflow sweep state", "point at a sweep directory (it holds sweep_state.json)"
            )
        if data.get("version") != VERSION:
            raise UserError(
                f"{source} has sweep-state version {data.get('version')}; this odeflow reads version {VERSION}",
                "use the odeflow version that wrote it, or start a new sweep in another hydra.sweep.dir",
            )
        fields = {k: v for k, v in data.items() if k not in ("format", "version")}
        try:
            fields["trials"] = [TrialRecord(**t) for t in fields.get("trials", [])]
            return cls(**fields)
        except TypeError as exc:  # a field missing or unknown: edited by hand, or cut
            raise damaged_state(source, str(exc)) from None


def load(sweep_dir: Path) -> SweepRecord | None:
    """The state in `sweep_dir`, migrated from the old pickle when that is all there is; None for a new sweep."""
    path = Path(sweep_dir) / STATE_FILE
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise damaged_state(path, str(exc)) from None
        if not isinstance(data, dict):
            raise damaged_state(path, f"it holds a JSON {type(data).__name__}, not a sweep state")
        return SweepRecord.from_json(data, path)
    return None


def recorded_id(sweep_dir: Path) -> str | None:
    """The id of the sweep whose state is in `sweep_dir` (read leniently: "unknown" for a damaged state)."""
    path = Path(sweep_dir) / STATE_FILE
    if not path.exists():
        return None
    try:
        return str(json.loads(path.read_text())["sweep_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"unknown (its {STATE_FILE} is damaged)"


def damaged_state(path: Path, detail: str) -> UserError:
    """The error for a state file that cannot be read; its fix keeps every trial of the sweep."""
    return UserError(
        f"{path} is damaged ({detail}): this sweep cannot be resumed as it is",
        f"restore {path.name} from a backup, or repair it by hand (optimization_results.yaml beside it lists the "
        "trials); or start a new sweep in another hydra.sweep.dir (do not delete the file: a new sweep in this "
        "folder is refused, so that it never overwrites these trials)",
    )


def migrate_pickle(sweep_dir: Path, objective: str, space: dict[str, str]) -> SweepRecord | None:
    """A sweep state of the old format (a pickle of the sweeper's classes and hyperopt's Trials), read
    without those classes: only its trial records are kept, TPE's history is rebuilt from them."""
    path = Path(sweep_dir) / OLD_STATE_FILE
    if not path.exists():
        return None
    try:
        with path.open("rb") as f:
            old = _RecordsOnly(f).load()
        trials = [
            TrialRecord(
                number=t.number,
                job=t.number,
                params=dict(t.params),
                status=t.status,
                value=t.value,
                run_id=t.run_id,
                error=t.error,
            )
            for t in old.records
        ]
        direction = getattr(old, "direction", None)
    except Exception as exc:
        raise UserError(
            f"{path} (a sweep state of an older odeflow) cannot be read: {type(exc).__name__}: {exc}",
            "start a new sweep in another hydra.sweep.dir (optimization_results.yaml beside it lists the old trials)",
        ) from None
    names = {n for t in trials for n in t.params}
    if trials and names != set(space):
        raise UserError(
            f"the old sweep state {path} searched {', '.join(sorted(names))}; the search space now has "
            f"{', '.join(sorted(space))}",
            "resume with the old search space, or start a new sweep in another hydra.sweep.dir",
        )
    from odeflow.objectives import OBJECTIVE_DIRECTIONS

    return SweepRecord(
        old.sweep_id,
        objective,
        direction or OBJECTIVE_DIRECTIONS.get(objective, "minimize"),
        dict(space),
        trials,
        next_job=1 + max((t.job for t in trials), default=-1),
    )


class _Attributes:
    """Stands in for every class of the old pickle (the sweeper's dataclasses, hyperopt's Trials)."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple):  # (dict, slots)
            state = {k: v for part in state if isinstance(part, dict) for k, v in part.items()}
        self.__dict__.update(state if isinstance(state, dict) else {})


class _RecordsOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module.startswith(("hydra_plugins.", "hyperopt")):
            return _Attributes
        if module in ("builtins", "copyreg", "collections", "datetime") or module.startswith("numpy"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected class {module}.{name}")


def describe_change(before: SweepRecord, space: dict[str, str], objective: str, direction: str) -> list[str]:
    """What differs between a recorded sweep and the one asked for now, one phrase per difference."""
    changes = []
    if before.objective != objective or before.direction != direction:
        changes.append(f"objective {before.objective} ({before.direction}) then, {objective} ({direction}) now")
    for name in sorted(set(before.space) | set(space)):
        if name not in space:
            changes.append(f"{name}: searched then ({before.space[name]}), not now")
        elif name not in before.space:
            changes.append(f"{name}: not searched then, {space[name]} now")
        elif before.space[name] != space[name]:
            changes.append(f"{name}: {before.space[name]} then, {space[name]} now")
    return changes


def find_sweep(reference: str, runs_root: Path) -> Path:
    """A sweep directory from a path or a sweep id (searched for under `runs_root`)."""
    path = Path(reference)
    if (path / STATE_FILE).exists():
        return path
    if path.exists():
        raise UserError(
            f"{path} holds no {STATE_FILE}: not a hyperopt sweep directory (or one from an older odeflow "
            "that was never resumed)",
            "point at the hydra.sweep.dir of a sweep run with hydra/sweeper=hyperopt",
        )
    for state in sorted(Path(runs_root).rglob(STATE_FILE)):
        try:
            if json.loads(state.read_text()).get("sweep_id") == reference:
                return state.parent
        except (OSError, json.JSONDecodeError):
            continue
    raise UserError(
        f"no sweep {reference!r}: neither a sweep directory nor the id of a sweep under {runs_root}",
        "give the sweep's directory (hydra.sweep.dir) or its id (printed at its start, in optimization_results.yaml)",
    )


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
