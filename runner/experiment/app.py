"""The entry point's body: turn the composed config into typed objects and wire the four stages."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Protocol

import torch
from omegaconf import DictConfig

from models.ode_block import ode_blocks
from models.parameters import count_parameters, residual_block_count
from odeflow.errors import ModelDataMismatch, check_choice, out_of_memory
from odeflow.files import disk_full_error, is_disk_full, write_atomic
from odeflow.interrupts import Interrupted, as_interrupted, sigterm_as_interrupt
from odeflow.objectives import OBJECTIVE_DIRECTIONS
from runner.experiment import figures, pipeline
from runner.experiment.adaptation import AdaptationSettings, SolverAdapter
from runner.experiment.adjoint_check import adjoint_gradient_check
from runner.experiment.adjoint_check import describe as describe_adjoint_check
from runner.experiment.checkpoint import model_recipe
from runner.experiment.device import device_recorded, resolve_device
from runner.experiment.factories import instantiate_group, to_plain
from runner.experiment.memory import describe_peak, named_phase
from runner.experiment.parameter_path import ParameterPath
from runner.experiment.precision import apply_precision
from runner.experiment.settings import (
    check_seed,
    check_validation_split,
    configure_threads,
    reuse_freed_host_memory,
    seed_everything,
)
from runner.experiment.slurm_job import slurm_job_info
from runner.experiment.trajectories import trace_trajectories
from runner.experiment.unused import (
    describe_ignored,
    describe_unused,
    settings_unused_by_plain_model,
    solver_settings_unused,
)
from runner.tracking.masking import mask_secrets
from runner.tracking.stores import FileStore, RunLog, run_tracked


class EpochPruner(Protocol):
    """What a run asks at the end of each epoch whether to stop (a sweep's pruner; see runner.sweeps.pruning)."""

    def after_epoch(self, epoch: int, metrics: dict[str, float]) -> str | None: ...

    def finished(self, pruned: bool) -> None: ...


def run_experiment(
    cfg: DictConfig,
    out_dir: Path,
    choices: dict[str, str] | None = None,
    meta: dict[str, Any] | None = None,
    resume: dict[str, Any] | None = None,
    pruner: EpochPruner | None = None,
) -> dict[str, Any]:
    """Validate everything, then load -> build -> train -> evaluate inside one tracked run. Returns the summary.

    `meta` (e.g. sweep_id, trial, links to other runs) is stored with the run so the run browser and the
    dashboard can filter on it. The training state is saved to `out_dir/last_checkpoint.pt` after every
    epoch; `resume` is such a state, and the run continues from it with its metric steps continuing.
    `pruner` (a sweep's trials) may stop training at the end of an epoch; the run then completes with what it
    reached, its info and summary saying `pruned` (the epoch and the reason).
    """
    check_choice("objective", cfg.objective, OBJECTIVE_DIRECTIONS)
    check_seed("seed", cfg.seed)  # before the groups that copy it (train.seed, data.seed) name it their way
    config = to_plain(cfg)
    logged_config = mask_secrets(config)
    # A ResNet's record holds solver: null (runner/experiment/unused.py); rerun from it, it has none.
    solver = instantiate_group("solver", cfg.solver) if cfg.get("solver") is not None else None
    # Runs logged before adaptation existed have no such group: they trained without it.
    adaptation = instantiate_group("adaptation", cfg.adaptation) if "adaptation" in cfg else AdaptationSettings()
    settings = instantiate_group("train", cfg.train)
    store = instantiate_group("tracking", cfg.tracking)
    device = resolve_device(settings.device)
    configure_threads(settings.num_threads)
    reuse_freed_host_memory(settings.reuse_host_memory)
    seed_everything(settings.seed, settings.deterministic)
    numerics = apply_precision(settings.precision)
    data = instantiate_group("data", cfg.data)
    try:
        data = pipeline.load(data, device)
        recipe = model_recipe(config["model"], config["solver"], data.input_shape, data.num_classes)
        model = pipeline.build(recipe, data, device)
    except torch.OutOfMemoryError:
        raise out_of_memory(
            str(device), "loading the data and building the model", data.batch_size, describe_peak(device)
        ) from None
    except ModelDataMismatch as exc:  # named as the user chose them, not by the shape the model was given
        names = choices or {}
        raise exc.naming(names.get("model", cfg.model.get("_target_")), names.get("data", data.name)) from None
    # A hyperopt sweep (it sets sweep_trial) reads the objective back; other runs only print it.
    searched = cfg.get("sweep_trial") is not None
    check_validation_split(
        data.has_validation, settings.evaluate, cfg.objective if searched else None, pruner is not None
    )
    is_ode = bool(ode_blocks(model))
    adaptation.check_solver(solver, is_ode)
    adapter = SolverAdapter(adaptation, ode_blocks(model)[0].t_final) if adaptation.enabled else None
    model_name = (choices or {}).get("model", recipe["_target_"])
    if not is_ode:  # no ODE is solved: the record claims no solver, and settings given for one are named
        if unused := settings_unused_by_plain_model(config, choices or {}):
            print(describe_unused(unused, model_name), file=sys.stderr, flush=True)
        logged_config = {**logged_config, "solver": None}
    elif ignored := solver_settings_unused(config, choices or {}, solver, adapting=adapter is not None):
        print(describe_ignored(ignored, solver), file=sys.stderr, flush=True)
    print(
        f"{cfg.name}: {model_name} on {data.name} {data.sizes()} | solver {solver.describe() if is_ode else '-'} | "
        f"{'adapting ' + adaptation.kind + ' | ' if adapter else ''}device {device} {settings.precision} | "
        f"runs in {store.describe()}",
        flush=True,
    )
    outcome: dict[str, Any] = {}
    # A sweep's trial records its result first and has its figures drawn after (runner.experiment.figures):
    # its cost is then its training. Only the file store takes artifacts after a run has completed.
    later_figures = bool((meta or {}).get("sweep_id")) and isinstance(store, FileStore)

    def body(run: RunLog) -> float:
        with device_recorded(run, device, settings.deterministic) as outcome["determinism"]:
            return train_and_test(run)

    def train_and_test(run: RunLog) -> float:
        run.set_info("precision", numerics)
        if (slurm := slurm_job_info()) is not None:
            run.set_info("slurm", slurm)  # the runs browser's and the dashboard's slurm job column
        run.set_info("choices", choices or {})
        run.set_info("model_family", "odenet" if is_ode else "resnet")
        run.set_info("dataset_sizes", data.sizes())
        run.set_info("parameters", count_parameters(model))
        run.set_info("residual_blocks", residual_block_count(model))

        epochs: list[dict[str, float]] = []

        outcome["run_id"] = run.id

        def log_epoch(m: dict[str, float]) -> None:
            run.log_metrics({k: v for k, v in m.items() if k != "epoch"}, int(m["epoch"]))
            epochs.append(m)
            outcome["epochs"] = len(epochs)
            outcome["cost"] = cost_summary(epochs, is_ode)
            run.set_info("cost", outcome["cost"])  # the dashboard's s/epoch, FNFE, BNFE and memory columns
            for check in adapter.checks if adapter else []:
                if check.epoch == int(m["epoch"]):  # per check, at the training iteration it ran
                    run.log_metrics(
                        {"adaptation.check.value": check.value, "adaptation.check.gap": check.gap}, check.iteration
                    )

        def after_epoch(m: dict[str, float]) -> str | None:
            log_epoch(m)
            return pruner.after_epoch(int(m["epoch"]), m) if pruner is not None else None

        if adapter is not None and (resume or {}).get("adaptation"):
            adapter.load_state_dict(resume["adaptation"], model)  # so the earlier epochs' checks are logged too
        for earlier in (resume or {}).get("history", []):
            log_epoch(earlier)  # a resumed run carries the epochs before the crash too
        parameter_path = ParameterPath(settings.record_parameters) if settings.record_parameters else None
        fit_result = pipeline.train(
            model, data, settings, after_epoch, out_dir / "last_checkpoint.pt", resume, adapter, parameter_path
        )
        if parameter_path is not None:
            run.set_info("parameter_path", parameter_path.save(out_dir / "parameter_path.pt"))
            run.add_artifact(out_dir / "parameter_path.pt", "parameter_path.pt")
        if fit_result.adaptation:
            run.set_info("adaptation", {k: v for k, v in fit_result.adaptation.items() if k != "log"})
            print(describe_adaptation(fit_result.adaptation), flush=True)
        if fit_result.pruned:
            run.set_info("pruned", fit_result.pruned)
        if pruner is not None:
            pruner.finished(pruned=fit_result.pruned is not None)
        with named_phase("the test evaluation"):
            results = pipeline.evaluate(model, data, settings.precision)
        run.set_info("test", {k: results[k] for k in ("test.loss", "test.acc", "test.nfe.forward", "test.time")})
        title = f"{cfg.name}: {model_name} on {data.name}" + (f", {solver.describe()}" if is_ode else "")
        if run.id is not None:
            title = f"run {run.id} {title}"
        outcome["title"] = title
        for name, path in pipeline.write_outputs(
            out_dir,
            model,
            recipe,
            logged_config,
            fit_result,
            results,
            data.class_names,
            is_ode,
            title,
            figures=not later_figures,
        ).items():
            run.add_artifact(path, name)
        traced = trace_trajectories(model, data) if is_ode else None
        if traced is not None:  # vector states: the flow of test points, crossing pairs for 2-D ones
            run.set_info("trajectories", traced[0])
            if later_figures:
                outcome["draw_trajectories"] = traced[1]
            else:
                traced[1](out_dir / "trajectories.png")
                run.add_artifact(out_dir / "trajectories.png", "trajectories.png")
        # Last: the check backpropagates directly, which a run may have avoided for memory; its outputs are
        # written by now, and the check bounds its samples and reports running out of memory instead of failing.
        with named_phase("the adjoint gradient check"):
            checked = data.val if data.has_validation else data.train
            check = adjoint_gradient_check(model, checked, data.batch_size, settings.adjoint_check_threshold)
        if check is not None:
            run.set_info("adjoint_gradient_check", check)
            print(describe_adjoint_check(check), flush=True)
            outcome["adjoint_check"] = check
        outcome.update(results, fit=fit_result)
        return results["test.acc"]

    out_dir.mkdir(parents=True, exist_ok=True)
    run_meta = {
        "output_dir": str(out_dir.resolve()),
        "choices": choices or {},
        "model_family": "odenet" if is_ode else "resnet",
        "pid": os.getpid(),  # with the host Sacred records: `runs list` tells a killed RUNNING run from a live one
        **(meta or {}),
    }
    with sigterm_as_interrupt():  # Slurm, systemd, docker stop: recorded as INTERRUPTED like Ctrl-C, resumable
        try:
            run_id, _ = run_tracked(cfg.name, logged_config, store, body, run_meta, command="train")
        except KeyboardInterrupt as exc:
            interrupted = as_interrupted(exc).signal_name
            raise Interrupted(interrupted, outcome.get("run_id"), outcome.get("epochs", 0)) from None
        except Exception as exc:  # a full disk: one message, what was kept, how to continue
            if is_disk_full(exc):
                raise disk_full_error(out_dir, outcome.get("run_id"), outcome.get("epochs", 0)) from None
            if isinstance(exc, torch.OutOfMemoryError):
                raise out_of_memory(
                    str(device),
                    getattr(exc, "phase", "the run"),
                    data.batch_size,
                    describe_peak(device),
                    outcome.get("run_id"),
                    outcome.get("epochs", 0),
                ) from None
            raise
    fit_result = outcome["fit"]
    last = fit_result.history[-1]
    summary = {
        "run_id": run_id,
        "name": cfg.name,
        "model": model_name,
        "dataset": data.name,
        "solver": solver.describe() if is_ode else None,
        "precision": settings.precision,
        "test_acc": outcome["test.acc"],
        "test_loss": outcome["test.loss"],
        "best_val_loss": fit_result.best_val_loss if data.has_validation else None,
        "best_val_acc": fit_result.history[fit_result.best_epoch - 1].get("val.acc"),
        "best_epoch": fit_result.best_epoch,
        "evaluated": settings.evaluate,
        "epochs": len(fit_result.history),
        "sweep_id": (meta or {}).get("sweep_id"),
        "params_total": outcome["parameters"]["total"],
        "params_not_in_fc": outcome["parameters"]["not_in_fc"],
        "fnfe": last["nfe.forward"] if is_ode else None,
        "bnfe": last["nfe.backward"] if is_ode and solver.gradient != "direct" else None,  # no backward pass
        "test_fnfe": outcome["test.nfe.forward"] if is_ode else None,
        "epoch_time": sum(h["epoch.time"] for h in fit_result.history) / len(fit_result.history),
        "adjoint_grad_err": outcome.get("adjoint_check", {}).get("relative_error"),
        **{name: outcome["cost"].get(name) for name in MEMORY_PEAKS},
        "pruned": fit_result.pruned,
        "adapted": (fit_result.adaptation or {}).get("at_best_epoch"),
        "adapt_changes": (fit_result.adaptation or {}).get("changes"),
        "adapt_check_share": (fit_result.adaptation or {}).get("check_share"),
        "device": str(device),
        "nondeterministic_ops": outcome["determinism"]["nondeterministic_ops"],
    }
    write_atomic(out_dir / "result.json", json.dumps(summary, indent=2))  # a sweep reads it: whole or absent
    if later_figures:

        def draw() -> dict[str, Path]:
            paths = pipeline.write_figures(out_dir, fit_result, outcome, data.class_names, is_ode, outcome["title"])
            if "draw_trajectories" in outcome:
                outcome["draw_trajectories"](out_dir / "trajectories.png")
                paths["trajectories.png"] = out_dir / "trajectories.png"
            return paths

        figures.draw_later(draw, lambda paths: store.attach_artifacts(run_id, paths))
    return summary


# info.cost's memory peaks (the largest over the epochs so far) and the epoch metric each is read from: the
# process's RSS and CUDA's figures under names of their own, since they measure different things
MEMORY_PEAKS = {
    "train_rss_mb": ("mem.train.rss_mb",),
    "train_cuda_mb": ("mem.train.cuda_alloc_mb",),
    "train_cuda_added_mb": ("mem.train.cuda_added_mb",),
    "train_live_mb": ("mem.train.live_mb",),
    "saved_mb": ("mem.train.saved_mb",),
    "val_rss_mb": ("mem.val.rss_mb",),
    "val_cuda_mb": ("mem.val.cuda_alloc_mb",),
    "val_cuda_added_mb": ("mem.val.cuda_added_mb",),
    "val_live_mb": ("mem.val.live_mb",),
}


def describe_adaptation(info: dict[str, Any]) -> str:
    name = "step size" if info["kind"] == "step_size" else "tolerance"
    return (
        f"{info['kind']} adaptation: {name} {info['initial']:.4g} -> {info['final']:.4g} "
        f"({info['changes']} changes in {info['checks']} checks; {100 * info['check_share']:.1f}% of training time); "
        f"the restored weights were trained with {info['at_best_epoch']:.4g}"
    )


def cost_summary(epochs: list[dict[str, float]], is_ode: bool) -> dict[str, float]:
    """Mean seconds per epoch and, for ODEnets, mean forward/backward NFE per batch over the epochs so far;
    the peak memory figures (MB, the largest over the epochs; MEMORY_PEAKS)."""
    keys = {"epoch_time": "epoch.time", **({"fnfe": "nfe.forward", "bnfe": "nfe.backward"} if is_ode else {})}
    cost = {name: round(sum(e[key] for e in epochs) / len(epochs), 3) for name, key in keys.items()}
    for name, candidates in MEMORY_PEAKS.items():
        key = next((k for k in candidates if any(k in e for e in epochs)), None)
        if key is not None:
            cost[name] = round(max(e[key] for e in epochs if key in e), 3)
    return cost
