"""Hyperopt TPE sweeps over Hydra's launchers: batches, failures, pruning, resume, warm start.

Hyperopt has no ask/tell API, so the sweep drives `tpe.suggest` itself: rebuild TPE's history from the
sweep's JSON record (runner/sweeps/state.py), suggest a batch, record it as running, run it through the
configured launcher, record each outcome, repeat. The search space is parsed by runner/sweeps/search_space.py;
which GPU a trial trains on is settled by runner/sweeps/devices.py (the sweeper hands out no device).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hyperopt import base, space_eval, tpe
from omegaconf import DictConfig, ListConfig, OmegaConf

from odeflow.files import write_atomic
from odeflow.objectives import OBJECTIVE_DIRECTIONS
from odeflow.tables import text_table
from runner.sweeps import state as sweep_state
from runner.sweeps.devices import bind_workers_to_gpus
from runner.sweeps.folder import SweepLock, free_sibling, refuse_new_sweep_over
from runner.sweeps.pruning import EPOCH_METRIC, EVIDENCE_FILE, PrunerSettings
from runner.sweeps.search_space import Parameter, SearchSpaceError, build_space, format_value
from runner.sweeps.state import SweepRecord, TrialRecord

logging.getLogger("hyperopt").setLevel(logging.WARNING)  # it logs every TPE step at INFO

RESULTS_FILE = "optimization_results.yaml"
DIRECTIONS = ("minimize", "maximize")


def suggest_batch(
    ids: list[int], domain: base.Domain, history: base.Trials, sweep_seed: int, n_startup_jobs: int
) -> list[dict[str, Any]]:
    """TPE's suggestions for the new trials `ids`, one each, seeded by the trial number (the same on resume).

    Past its start-up trials tpe.suggest answers only the first of several ids, so a batch for parallel
    workers asks for the others one at a time (like hyperopt's own parallel workers, none sees the others'
    pending results)."""

    def seed(number: int) -> int:
        return int(np.random.default_rng([sweep_seed, number]).integers(2**31 - 1))

    docs = tpe.suggest(ids, domain, history, seed(ids[0]), n_startup_jobs=n_startup_jobs)
    for number in ids[len(docs) :]:
        docs += tpe.suggest([number], domain, history, seed(number), n_startup_jobs=n_startup_jobs)
    return docs


# --- the sweep -------------------------------------------------------------------------------------


def sweep_direction(direction: str | None, objective: str | None) -> str:
    """The direction the objective is better in; a direction given that contradicts it is refused."""
    natural = OBJECTIVE_DIRECTIONS.get(str(objective))
    if direction is None:
        return natural or "minimize"
    if direction not in DIRECTIONS:
        raise SearchSpaceError(
            f"hydra.sweeper.direction={direction!r} is invalid: expected one of {', '.join(DIRECTIONS)}",
            "leave it out: it follows the objective",
        )
    if natural is not None and direction != natural:
        raise SearchSpaceError(
            f"hydra.sweeper.direction={direction} contradicts objective={objective}, which is better when "
            f"{natural}d: the sweep would report the worst trial as the best",
            f"leave hydra.sweeper.direction out (it follows the objective) or set it to {natural}",
        )
    return direction


class SweepStopped(SystemExit):
    """The failure-rate bound was crossed: stop the sweep with a clear message and a non-zero exit."""


def failure_rate_exceeded(finished: int, failed: int, max_rate: float, min_finished: int) -> bool:
    """Whether the sweep should stop: more than `max_rate` of the finished trials failed, counted only once
    `min_finished` trials have finished (one early failure of a sequential sweep is no evidence)."""
    return finished >= max(1, min_finished) and failed / finished > max_rate


def tpe_history(
    trials: list[TrialRecord], searched: dict[str, Parameter], direction: str, domain: base.Domain
) -> base.Trials:
    """hyperopt's Trials rebuilt from trial records: a value (finished or pruned) is a result TPE models,
    a failure is a failed result, a trial still running is left out."""
    history = base.Trials()
    done = [t for t in trials if t.has_value or t.status == "failed"]
    tids = history.new_trial_ids(len(done))
    results, miscs = [], []
    for tid, trial in zip(tids, done, strict=True):
        vals = {name: [p.to_hyperopt(trial.params[name])] for name, p in searched.items()}
        miscs.append(
            {
                "tid": tid,
                "cmd": domain.cmd,
                "workdir": domain.workdir,
                "vals": vals,
                "idxs": {name: [tid] for name in vals},
            }
        )
        if trial.has_value:
            results.append({"loss": trial.value if direction == "minimize" else -trial.value, "status": base.STATUS_OK})
        else:
            results.append({"status": base.STATUS_FAIL})
    docs = history.new_trial_docs(tids, [None] * len(done), results, miscs)
    for doc in docs:
        doc["state"] = base.JOB_STATE_DONE
    history.insert_trial_docs(docs)
    history.refresh()
    return history


class HyperoptSweeperImpl(Sweeper):
    def __init__(
        self,
        direction: str | None = None,
        n_trials: int = 20,
        n_jobs: int = 1,
        n_startup_jobs: int = 10,
        seed: int = 0,
        max_failure_rate: float = 0.5,
        failure_rate_min_finished: int = 4,
        resume: bool = True,
        pruner: dict | None = None,
        warm_start: list | None = None,
        report: bool = True,
        params: dict | None = None,
    ) -> None:
        self.direction, self.n_trials, self.n_jobs = direction, n_trials, n_jobs
        self.n_startup_jobs, self.seed = n_startup_jobs, seed
        self.max_failure_rate, self.failure_rate_min_finished, self.resume = (
            max_failure_rate,
            failure_rate_min_finished,
            resume,
        )
        self.pruner = PrunerSettings(**_container(pruner or {}))
        self.warm_start = [str(w) for w in _container(warm_start or [])]
        self.report = report
        self.params = _container(params or {})

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.objective = str(config.get("objective"))
        self.direction = sweep_direction(self.direction, self.objective)
        if self.n_trials < 1 or self.n_jobs < 1:
            raise SearchSpaceError("hydra.sweeper.n_trials and hydra.sweeper.n_jobs must be >= 1")
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise SearchSpaceError(
                f"hydra.sweeper.max_failure_rate={self.max_failure_rate}: expected a fraction in [0, 1]"
            )
        if self.pruner.active and self.objective not in EPOCH_METRIC:
            raise SearchSpaceError(
                f"hydra.sweeper.pruner.kind={self.pruner.kind} needs an objective with a per-epoch value "
                f"({', '.join(EPOCH_METRIC)}), not objective={self.objective}",
                "set hydra.sweeper.pruner.kind=none",
            )
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )
        self.sweep_dir = Path(config.hydra.sweep.dir)

    # -- state --
    def _load_or_start(self, specs: dict[str, str]) -> SweepRecord:
        record = sweep_state.load(self.sweep_dir) if self.resume else None
        if record is None and self.resume:
            record = sweep_state.migrate_pickle(self.sweep_dir, self.objective, specs)
            if record is not None:
                print(
                    f"[hyperopt] migrated the sweep state of an older odeflow ({sweep_state.OLD_STATE_FILE}, kept) to "
                    f"{sweep_state.STATE_FILE}: {len(record.trials)} trials",
                    flush=True,
                )
        if record is None:
            refuse_new_sweep_over(self.sweep_dir, sweep_state.recorded_id(self.sweep_dir))
            (self.sweep_dir / EVIDENCE_FILE).unlink(missing_ok=True)  # no trial of its own: left by no sweep
            return SweepRecord(
                f"{self.sweep_dir.name}-{uuid.uuid4().hex[:8]}",
                self.objective,
                self.direction,
                specs,
                warm_start=list(self.warm_start),
            )
        changes = sweep_state.describe_change(record, specs, self.objective, self.direction)
        if changes:
            raise SearchSpaceError(
                f"sweep {record.sweep_id} in {self.sweep_dir} was started with another search: {'; '.join(changes)}",
                "resume it as it was started, or start the new search in another folder: "
                f"hydra.sweep.dir={free_sibling(self.sweep_dir)}",
            )
        print(
            f"[hyperopt] resuming sweep {record.sweep_id}: {record.count('ok', 'pruned', 'failed')} trials done in "
            f"{self.sweep_dir}",
            flush=True,
        )
        return record

    def _warm_start_trials(self, record: SweepRecord, specs: dict[str, str]) -> list[TrialRecord]:
        runs_root = Path(str(self.config.paths.runs))
        seeded = []
        for reference in dict.fromkeys([*record.warm_start, *self.warm_start]):
            directory = sweep_state.find_sweep(reference, runs_root)
            earlier = sweep_state.load(directory)
            changes = sweep_state.describe_change(earlier, specs, self.objective, self.direction)
            if changes:
                raise SearchSpaceError(
                    f"cannot warm-start from sweep {earlier.sweep_id} ({directory}): {'; '.join(changes)}",
                    "warm-start only from sweeps with the same search space and objective",
                )
            if earlier.sweep_id == record.sweep_id:
                continue
            seeded += [t for t in earlier.trials if t.has_value or t.status == "failed"]
            print(
                f"[hyperopt] warm start: {earlier.count('ok', 'pruned')} trials of sweep {earlier.sweep_id} "
                f"({directory})",
                flush=True,
            )
            if reference not in record.warm_start:
                record.warm_start.append(reference)
        return seeded

    def _settle_lost(self, record: SweepRecord) -> None:
        """Trials a crash left 'running': recorded if they finished (result.json in their folder), else re-run."""
        for trial in record.trials:
            if trial.status != "running":
                continue
            summary = _result_json(self.sweep_dir / str(trial.job))
            if summary is not None and summary.get("sweep_id") == record.sweep_id:
                self._record_value(trial, summary.get(self.objective), summary)
                print(
                    f"[hyperopt] trial {trial.number} (job {trial.job}) had finished before the interruption: recorded",
                    flush=True,
                )
            else:
                print(
                    f"[hyperopt] trial {trial.number} (job {trial.job}) was lost in an interruption: it runs again "
                    f"under a new job number",
                    flush=True,
                )

    # -- the loop --
    def sweep(self, arguments: list[str]) -> None:
        searched, fixed = build_space(self.params, arguments)
        if not searched:
            raise SearchSpaceError(
                "no parameter to search: set hydra.sweeper.params (e.g. search=quickstart) "
                "or pass a sweep override such as train.lr=tag(log,interval(1e-4,1e-2))"
            )
        space = {name: p.expression for name, p in searched.items()}
        specs = {name: p.spec for name, p in searched.items()}
        domain = base.Domain(lambda _: 0.0, space)  # trials run through the launcher, not through fn
        self.lock = SweepLock.acquire(self.sweep_dir)  # held until this process ends
        record = self.record = self._load_or_start(specs)
        self.lock.name_owner(record.sweep_id)
        seeded = self._warm_start_trials(record, specs)
        self._settle_lost(record)
        trial_device = str(fixed.get("train.device", self.config.train.device))
        gpus = bind_workers_to_gpus(str(self.config.hydra.launcher._target_), trial_device, self.sweep_dir, self.n_jobs)
        if gpus:
            print(f"[hyperopt] {gpus}", flush=True)
        pruning = f"; pruner {self.pruner.kind}" if self.pruner.active else ""
        print(
            f"[hyperopt] sweep {record.sweep_id}: {self.direction} {self.objective} over {', '.join(searched)}; "
            f"{self.n_trials} trials, {self.n_jobs} per batch{pruning}; state in "
            f"{self.sweep_dir / sweep_state.STATE_FILE}",
            flush=True,
        )
        record.save(self.sweep_dir)
        while True:
            lost = [t for t in record.trials if t.status == "running"]
            wanted = self.n_trials - len(record.trials)
            if not lost and wanted <= 0:
                break
            self._check_failure_rate(record)
            batch = lost[: self.n_jobs]
            new = min(self.n_jobs - len(batch), max(wanted, 0))
            if new:
                ids = list(range(len(record.trials), len(record.trials) + new))
                history = tpe_history([*seeded, *record.trials], searched, self.direction, domain)
                docs = suggest_batch(ids, domain, history, self.seed, self.n_startup_jobs)
                for number, doc in zip(ids, docs, strict=True):
                    vals = {k: v[0] for k, v in doc["misc"]["vals"].items() if v}
                    sampled = space_eval(space, vals)
                    trial = TrialRecord(
                        number, -1, {name: _plain(searched[name].value(sampled[name])) for name in searched}
                    )
                    record.trials.append(trial)
                    batch.append(trial)
            first_job = record.next_job
            for job, trial in enumerate(batch, start=first_job):
                if trial.job >= 0:
                    trial.lost_jobs.append(trial.job)
                trial.job = job
            record.next_job = first_job + len(batch)
            record.save(self.sweep_dir)  # before launching: a crash now leaves these trials 'running'
            overrides = []
            for trial in batch:
                line = [f"{k}={format_value(v)}" for k, v in {**fixed, **trial.params}.items()]
                line += [f"sweep_id={record.sweep_id}", f"sweep_trial={trial.number}"]
                overrides.append(tuple(line))
            returns = self.launcher.launch(overrides, initial_job_idx=first_job)
            for trial, ret in zip(batch, returns, strict=True):
                self._record(trial, ret)
                if trial in lost and trial.run_id is not None:
                    self._supersede_lost_attempts(record, trial)
            record.save(self.sweep_dir)
        self._check_failure_rate(record)
        self._finish(record, searched)

    def describe_interruption(self, interrupted: Any) -> str:
        """One line for a sweep stopped by Ctrl-C or SIGTERM: what its running trial kept, how to resume."""
        record = getattr(self, "record", None)
        if record is None:
            return f"{interrupted.describe()}; no trial had started"
        running = [t for t in record.trials if t.status == "running"]
        trial = (
            f"run {interrupted.run_id} (trial {', '.join(str(t.number) for t in running)}) recorded as INTERRUPTED; "
            if interrupted.run_id is not None
            else ""
        )
        return (
            f"[hyperopt] sweep {record.sweep_id} interrupted ({interrupted.signal_name}): {trial}its state is saved "
            f"in {self.sweep_dir / sweep_state.STATE_FILE}; resume it by running the same command again "
            "(trials that were running start again under new job numbers)"
        )

    def _record(self, trial: TrialRecord, ret: Any) -> None:
        try:
            summary = _result_json(Path(ret.hydra_cfg.hydra.runtime.output_dir))
            ran_as = int(ret.hydra_cfg.hydra.job.num)
        except AttributeError:  # a job that failed before Hydra set up its config
            summary, ran_as = None, trial.job
        if ran_as in trial.lost_jobs:  # a launcher (Slurm) waited for the job an interrupted sweep had started
            trial.lost_jobs.remove(ran_as)
            trial.job = ran_as
        try:
            value = ret.return_value  # Hydra re-raises the trial's exception here when it failed
        except Exception as error:  # noqa: BLE001 - any failure of a trial is recorded, and the sweep goes on
            trial.status, trial.error = (
                "failed",
                f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
            )
            trial.run_id = (summary or {}).get("run_id")
        else:
            self._record_value(trial, value, summary)
        if trial.status == "failed":
            print(f"[hyperopt] trial {trial.number} failed ({trial.error}); the sweep goes on", flush=True)
        shown = {
            "ok": lambda: f"{trial.value:.6g}",
            "failed": lambda: "failed",
            "pruned": lambda: f"{trial.value:.6g} (pruned after epoch {trial.pruned['epoch']})",
        }[trial.status]()
        print(f"[hyperopt] trial {trial.number}: {shown}  {trial.params}", flush=True)

    def _supersede_lost_attempts(self, record: SweepRecord, trial: TrialRecord) -> None:
        """The attempts a kill or an interruption lost point to the run that replaced them (never resumed)."""
        from runner.cli import source_of, store_of
        from runner.tracking.links import supersede_lost_attempts

        store = store_of(self.config)
        if not hasattr(store, "local_dir"):  # tracking=none: no runs to mark
            return
        replaced = supersede_lost_attempts(store, source_of(store), record.sweep_id, trial.number, trial.run_id)
        if replaced:
            print(
                f"[hyperopt] trial {trial.number}: run {trial.run_id} replaces the lost attempt (run "
                f"{', '.join(map(str, replaced))}), now marked superseded",
                flush=True,
            )

    def _record_value(self, trial: TrialRecord, value: Any, summary: dict | None) -> None:
        try:
            value = float(value)
        except (TypeError, ValueError):
            value = math.nan
        trial.run_id = (summary or {}).get("run_id")
        if not math.isfinite(value):
            trial.status, trial.error = "failed", f"returned {value!r}, not a finite float"
            return
        # A pruned trial is reported to TPE with the objective it reached when stopped: a pessimistic value for
        # a trial that was on a worse path than its peers, which is what TPE should learn about that region.
        pruned = (summary or {}).get("pruned")
        trial.status, trial.value, trial.pruned = ("pruned" if pruned else "ok"), value, pruned

    def _check_failure_rate(self, record: SweepRecord) -> None:
        finished, failed = record.count("ok", "pruned", "failed"), record.count("failed")
        if failure_rate_exceeded(finished, failed, self.max_failure_rate, self.failure_rate_min_finished):
            self._write_results(record)
            last = [t for t in record.trials if t.status == "failed"][-1]
            message = (
                f"[hyperopt] stopping sweep {record.sweep_id}: {failed} of {finished} trials failed, "
                f"more than hydra.sweeper.max_failure_rate={self.max_failure_rate}. Last failure: {last.error}. "
                f"Results so far: {self.sweep_dir / RESULTS_FILE}"
            )
            print(message, file=sys.stderr, flush=True)
            raise SweepStopped(3)

    def _write_results(self, record: SweepRecord) -> Path:
        best = record.best()
        results = {
            "sweep_id": record.sweep_id,
            "objective": record.objective,
            "direction": record.direction,
            "n_trials": len(record.trials),
            "n_failed": record.count("failed"),
            "n_pruned": record.count("pruned"),
            "best_value": best.value if best else None,
            "best_params": best.params if best else None,
            "best_run_id": best.run_id if best else None,
            "best_trial": best.number if best else None,
            "trials": [
                {
                    "number": t.number,
                    "status": t.status,
                    "value": t.value,
                    "run_id": t.run_id,
                    "job": t.job,
                    "params": t.params,
                    **({"error": t.error} if t.error else {}),
                    **({"pruned": t.pruned} if t.pruned else {}),
                }
                for t in record.trials
            ],
        }
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        return write_atomic(self.sweep_dir / RESULTS_FILE, yaml.safe_dump(_plain(results), sort_keys=False))

    def _finish(self, record: SweepRecord, searched: dict[str, Parameter]) -> None:
        path = self._write_results(record)
        best = record.best()
        rows = [
            {
                "trial": t.number,
                "status": t.status,
                "value": t.value,
                "run": t.run_id,
                **{n: format_value(t.params.get(n)) for n in searched},
            }
            for t in record.trials
        ]
        print(
            f"\n[hyperopt] sweep {record.sweep_id}: {len(record.trials)} trials, {record.count('pruned')} pruned, "
            f"{record.count('failed')} failed",
            flush=True,
        )
        print(text_table(rows, {"value": "{:.6g}"}), flush=True)
        if best:
            print(
                f"best: trial {best.number}, value {best.value:.6g}, run {best.run_id}, params {best.params}",
                flush=True,
            )
        print(f"results: {path}", flush=True)
        if self.report:
            from runner.sweeps.report import write_and_log_report

            write_and_log_report(self.sweep_dir, self.config)


def _result_json(output_dir: Path) -> dict | None:
    """The summary a trial wrote to result.json in its output folder (None if it never got there)."""
    try:
        return json.loads((output_dir / "result.json").read_text())
    except (OSError, ValueError):
        return None


def _container(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
