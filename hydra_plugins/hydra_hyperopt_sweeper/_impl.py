"""Hyperopt TPE sweeps over Hydra's launchers: search space parsing, batches, failures, resume, results.

Hyperopt has no ask/tell API, so the sweep drives `tpe.suggest` over a `Trials` object itself: suggest a
batch, run it through the configured launcher, write each trial's result back, persist, repeat.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import pickle
import re
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hyperopt import base, hp, space_eval, tpe
from omegaconf import DictConfig, OmegaConf

from odeflow.errors import UserError
from odeflow.objectives import OBJECTIVE_DIRECTIONS
from odeflow.tables import text_table

logging.getLogger("hyperopt").setLevel(logging.WARNING)  # it logs every TPE step at INFO

STATE_FILE = "hyperopt_state.pkl"
RESULTS_FILE = "optimization_results.yaml"
DIRECTIONS = ("minimize", "maximize")


class SearchSpaceError(UserError, ValueError):
    """A search-space line or sweeper setting that cannot be used; the message names it and the valid forms."""


# --- search space -------------------------------------------------------------------------------------

def _parse_scalar(text: str) -> Any:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _log_bounds(name: str, low: float, high: float) -> tuple[float, float]:
    if not 0 < low < high:
        raise SearchSpaceError(f"{name}: log-scale bounds need 0 < low < high, got ({low}, {high})")
    return math.log(low), math.log(high)


def _bounds(name: str, low: float, high: float) -> tuple[float, float]:
    if not low < high:
        raise SearchSpaceError(f"{name}: bounds need low < high, got ({low}, {high})")
    return low, high


# name -> (number of arguments, builder(name, args) -> hyperopt expression). Log-scale bounds are given on
# the natural scale (loguniform(1e-4, 1e-2)), unlike hyperopt's own API, which takes their logarithms.
DISTRIBUTIONS: dict[str, tuple[int | None, Callable[[str, list], Any]]] = {
    "choice": (None, lambda n, a: hp.choice(n, a)),
    "uniform": (2, lambda n, a: hp.uniform(n, *_bounds(n, a[0], a[1]))),
    "loguniform": (2, lambda n, a: hp.loguniform(n, *_log_bounds(n, a[0], a[1]))),
    "quniform": (3, lambda n, a: hp.quniform(n, *_bounds(n, a[0], a[1]), a[2])),
    "qloguniform": (3, lambda n, a: hp.qloguniform(n, *_log_bounds(n, a[0], a[1]), a[2])),
    "normal": (2, lambda n, a: hp.normal(n, a[0], a[1])),
    "qnormal": (3, lambda n, a: hp.qnormal(n, a[0], a[1], a[2])),
    "lognormal": (2, lambda n, a: hp.lognormal(n, a[0], a[1])),
    "randint": (2, lambda n, a: hp.randint(n, a[0], a[1])),
}
_CALL = re.compile(r"^\s*([A-Za-z_]\w*)\s*\((.*)\)\s*$", re.S)


@dataclass
class Parameter:
    """One searched parameter: its hyperopt expression and whether sampled values are whole numbers."""

    name: str
    expression: Any
    integer: bool = False

    def value(self, sampled: Any) -> Any:
        return int(round(sampled)) if self.integer else sampled


def parse_line(name: str, spec: Any) -> Parameter | Any:
    """`loguniform(1e-4, 1e-2)` -> Parameter; a value without a distribution -> that fixed value."""
    if not isinstance(spec, str):
        return spec
    match = _CALL.match(spec)
    if not match:
        return _parse_scalar(spec)
    function, body = match.group(1), match.group(2)
    if function not in DISTRIBUTIONS:
        raise SearchSpaceError(f"{name}: unknown distribution {function!r} in {spec!r}; valid: {', '.join(DISTRIBUTIONS)}")
    args = [_parse_scalar(a) for a in body.split(",")] if body.strip() else []
    arity, build = DISTRIBUTIONS[function]
    if (arity is not None and len(args) != arity) or not args:
        raise SearchSpaceError(f"{name}: {function} takes {arity or 'one or more'} arguments, got {len(args)} in {spec!r}")
    if function != "choice" and not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise SearchSpaceError(f"{name}: {function} needs numbers, got {spec!r}")
    integer = (function in ("quniform", "qloguniform", "qnormal") and all(_is_int(a) for a in args)) or function == "randint"
    return Parameter(name, build(name, args), integer)


def parse_override(override: Override) -> Parameter | Any:
    """Hydra's sweep syntax on the command line: a,b,c / choice(...) / range(...) / interval(...) /
    tag(log, interval(...)) for log scale / tag(int, interval(...)) for whole numbers (Hydra's interval is
    always float)."""
    name = override.get_key_element()
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    if override.is_choice_sweep() or override.is_range_sweep():
        return Parameter(name, hp.choice(name, list(override.sweep_iterator(transformer=Transformer.encode))))
    value = override.value()
    assert isinstance(value, IntervalSweep)
    low, high = value.start, value.end
    if "log" in value.tags:
        return Parameter(name, hp.loguniform(name, *_log_bounds(name, low, high)))
    if "int" in value.tags:
        return Parameter(name, hp.quniform(name, *_bounds(name, low, high), 1), integer=True)
    return Parameter(name, hp.uniform(name, *_bounds(name, low, high)))


def flatten_params(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": ...}} -> {"train.lr": ...} (command-line additions arrive nested)."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_params(value, full + "."))
        else:
            flat[full] = value
    return flat


def build_space(params: dict[str, Any], arguments: list[str]) -> tuple[dict[str, Parameter], dict[str, Any]]:
    """(searched parameters, fixed overrides) from config lines, then command-line overrides on top."""
    entries: dict[str, Any] = {k: parse_line(k, v) for k, v in flatten_params(params).items()}
    for override in OverridesParser.create().parse_overrides(arguments):
        entries[override.get_key_element()] = parse_override(override)
    searched = {k: v for k, v in entries.items() if isinstance(v, Parameter)}
    fixed = {k: v for k, v in entries.items() if not isinstance(v, Parameter)}
    return searched, fixed


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if value is None:
        return "null"
    return str(value)


# --- devices ------------------------------------------------------------------------------------------

def assign_devices(batch_size: int, device_count: int) -> list[str | None]:
    """One GPU per trial of a batch, round-robin: no two trials share a GPU while batch_size <= device_count."""
    if device_count < 2:
        return [None] * batch_size
    return [f"cuda:{i % device_count}" for i in range(batch_size)]


def visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # no usable CUDA runtime
        return 0


# --- state --------------------------------------------------------------------------------------------

@dataclass
class Trial:
    number: int
    params: dict[str, Any]
    status: str = "running"
    value: float | None = None
    run_id: Any = None
    error: str | None = None


@dataclass
class SweepState:
    sweep_id: str
    trials: base.Trials
    rng_state: dict
    records: list[Trial] = field(default_factory=list)

    @property
    def finished(self) -> list[Trial]:
        return [t for t in self.records if t.status in ("ok", "failed")]

    @property
    def failed(self) -> list[Trial]:
        return [t for t in self.records if t.status == "failed"]


def sweep_direction(direction: str | None, objective: str | None) -> str:
    """The direction the objective is better in; a direction given that contradicts it is refused."""
    natural = OBJECTIVE_DIRECTIONS.get(str(objective))
    if direction is None:
        return natural or "minimize"
    if direction not in DIRECTIONS:
        raise SearchSpaceError(f"hydra.sweeper.direction={direction!r} is invalid: expected one of {', '.join(DIRECTIONS)}",
                               "leave it out: it follows the objective")
    if natural is not None and direction != natural:
        raise SearchSpaceError(f"hydra.sweeper.direction={direction} contradicts objective={objective}, which is better when "
                               f"{natural}d: the sweep would report the worst trial as the best",
                               f"leave hydra.sweeper.direction out (it follows the objective) or set it to {natural}")
    return direction


class SweepStopped(SystemExit):
    """The failure-rate bound was crossed: stop the sweep with a clear message and a non-zero exit."""


class HyperoptSweeperImpl(Sweeper):
    def __init__(self, direction: str | None = None, n_trials: int = 20, n_jobs: int = 1, n_startup_jobs: int = 10,
                 seed: int = 0, max_failure_rate: float = 0.5, resume: bool = True, params: dict | None = None) -> None:
        self.direction, self.n_trials, self.n_jobs = direction, n_trials, n_jobs
        self.n_startup_jobs, self.seed = n_startup_jobs, seed
        self.max_failure_rate, self.resume = max_failure_rate, resume
        self.params = OmegaConf.to_container(params, resolve=True) if isinstance(params, DictConfig) else dict(params or {})

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.direction = sweep_direction(self.direction, config.get("objective"))
        if self.n_trials < 1 or self.n_jobs < 1:
            raise SearchSpaceError("hydra.sweeper.n_trials and hydra.sweeper.n_jobs must be >= 1")
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise SearchSpaceError(f"hydra.sweeper.max_failure_rate={self.max_failure_rate}: expected a fraction in [0, 1]")
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(config=config, hydra_context=hydra_context, task_function=task_function)
        self.sweep_dir = Path(config.hydra.sweep.dir)

    # -- persistence --
    def _state_path(self) -> Path:
        return self.sweep_dir / STATE_FILE

    def _load_or_start(self) -> SweepState:
        path = self._state_path()
        if self.resume and path.exists():
            with path.open("rb") as f:
                state = pickle.load(f)
            print(f"[hyperopt] resuming sweep {state.sweep_id}: {len(state.finished)} trials done in {self.sweep_dir}", flush=True)
            return state
        rng = np.random.default_rng(self.seed)
        return SweepState(f"{self.sweep_dir.name}-{uuid.uuid4().hex[:8]}", base.Trials(), rng.bit_generator.state)

    def _save(self, state: SweepState) -> None:
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._state_path().with_suffix(".tmp")
        with tmp.open("wb") as f:
            pickle.dump(state, f)
        tmp.replace(self._state_path())  # atomic: a crash mid-write keeps the previous state

    # -- the loop --
    def sweep(self, arguments: list[str]) -> None:
        searched, fixed = build_space(self.params, arguments)
        if not searched:
            raise SearchSpaceError("no parameter to search: set hydra.sweeper.params (e.g. search=quickstart) "
                                   "or pass a sweep override such as train.lr=tag(log,interval(1e-4,1e-2))")
        space = {name: p.expression for name, p in searched.items()}
        domain = base.Domain(lambda _: 0.0, space)  # trials run through the launcher, not through fn
        state = self._load_or_start()
        rng = np.random.default_rng()
        rng.bit_generator.state = state.rng_state
        suggest = functools.partial(tpe.suggest, n_startup_jobs=self.n_startup_jobs)
        gpus = visible_gpus()
        if gpus > 1 and self.n_jobs > gpus:
            print(f"[hyperopt] n_jobs={self.n_jobs} > {gpus} GPUs: some trials of a batch will share a GPU", flush=True)
        print(f"[hyperopt] sweep {state.sweep_id}: {self.direction} over {', '.join(searched)}; "
              f"{self.n_trials} trials, {self.n_jobs} per batch; state in {self._state_path()}", flush=True)
        while len(state.records) < self.n_trials:
            self._check_failure_rate(state)
            batch_size = min(self.n_jobs, self.n_trials - len(state.records))
            ids = state.trials.new_trial_ids(batch_size)
            state.trials.refresh()
            docs = suggest(ids, domain, state.trials, int(rng.integers(2**31 - 1)))
            state.trials.insert_trial_docs(docs)
            state.trials.refresh()
            first = len(state.records)
            batch, new_trials = [], []
            for position, (doc, device) in enumerate(zip(docs, assign_devices(batch_size, gpus))):
                vals = {k: v[0] for k, v in doc["misc"]["vals"].items() if v}
                sampled = space_eval(space, vals)
                params = {name: searched[name].value(sampled[name]) for name in searched}
                trial = Trial(first + position, params)
                overrides = [f"{k}={format_value(v)}" for k, v in {**fixed, **params}.items()]
                overrides.append(f"sweep_id={state.sweep_id}")
                if device is not None and "train.device" not in fixed:
                    overrides.append(f"train.device={device}")
                batch.append(tuple(overrides))
                new_trials.append(trial)
            returns = self.launcher.launch(batch, initial_job_idx=first)
            for doc, trial, ret in zip(docs, new_trials, returns):
                self._record(doc, trial, ret)
                state.records.append(trial)
            state.trials.refresh()
            state.rng_state = rng.bit_generator.state
            self._save(state)
        self._check_failure_rate(state)
        self._finish(state, searched)

    def _record(self, doc: dict, trial: Trial, ret: Any) -> None:
        if ret.status == JobStatus.COMPLETED:
            value = ret.return_value
            try:
                value = float(value)
            except (TypeError, ValueError):
                value = math.nan
            if math.isfinite(value):
                trial.status, trial.value = "ok", value
                doc["result"] = {"loss": value if self.direction == "minimize" else -value, "status": base.STATUS_OK}
            else:
                trial.status, trial.error = "failed", f"returned {ret.return_value!r}, not a finite float"
        else:
            error = ret._return_value
            trial.status = "failed"
            trial.error = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        if trial.status == "failed":
            doc["result"] = {"status": base.STATUS_FAIL}
            print(f"[hyperopt] trial {trial.number} failed ({trial.error}); the sweep goes on", flush=True)
        doc["state"] = base.JOB_STATE_DONE
        trial.run_id = _run_id(ret)
        shown = f"{trial.value:.6g}" if trial.value is not None else "failed"
        print(f"[hyperopt] trial {trial.number}: {shown}  {trial.params}", flush=True)

    def _check_failure_rate(self, state: SweepState) -> None:
        finished = state.finished
        if finished and len(state.failed) / len(finished) > self.max_failure_rate:
            self._write_results(state)
            message = (f"[hyperopt] stopping sweep {state.sweep_id}: {len(state.failed)} of {len(finished)} trials failed, "
                       f"more than hydra.sweeper.max_failure_rate={self.max_failure_rate}. Last failure: {state.failed[-1].error}. "
                       f"Results so far: {self.sweep_dir / RESULTS_FILE}")
            print(message, file=sys.stderr, flush=True)
            raise SweepStopped(3)

    def _best(self, state: SweepState) -> Trial | None:
        ok = [t for t in state.records if t.status == "ok"]
        if not ok:
            return None
        return (min if self.direction == "minimize" else max)(ok, key=lambda t: t.value)

    def _write_results(self, state: SweepState) -> Path:
        best = self._best(state)
        results = {
            "sweep_id": state.sweep_id,
            "direction": self.direction,
            "n_trials": len(state.records),
            "n_failed": len(state.failed),
            "best_value": best.value if best else None,
            "best_params": best.params if best else None,
            "best_run_id": best.run_id if best else None,
            "best_trial": best.number if best else None,
            "trials": [{"number": t.number, "status": t.status, "value": t.value, "run_id": t.run_id,
                        "params": t.params, **({"error": t.error} if t.error else {})} for t in state.records],
        }
        path = self.sweep_dir / RESULTS_FILE
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(_plain(results), sort_keys=False))
        return path

    def _finish(self, state: SweepState, searched: dict[str, Parameter]) -> None:
        path = self._write_results(state)
        best = self._best(state)
        rows = [{"trial": t.number, "status": t.status, "value": t.value, "run": t.run_id,
                 **{n: format_value(t.params.get(n)) for n in searched}} for t in state.records]
        print(f"\n[hyperopt] sweep {state.sweep_id}: {len(state.records)} trials, {len(state.failed)} failed", flush=True)
        print(text_table(rows, {"value": "{:.6g}"}), flush=True)
        if best:
            print(f"best: trial {best.number}, value {best.value:.6g}, run {best.run_id}, params {best.params}", flush=True)
        print(f"results: {path}", flush=True)


def _run_id(ret: Any) -> Any:
    """The tracked run id the task wrote to result.json in its output directory (None if it never got there)."""
    try:
        result = Path(ret.hydra_cfg.hydra.runtime.output_dir) / "result.json"
        return json.loads(result.read_text()).get("run_id")
    except Exception:  # failed trials have no result.json
        return None


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
