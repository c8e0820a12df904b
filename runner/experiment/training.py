"""The training loop: per-epoch metrics, NFE counts, early stopping that restores the best weights."""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from data.tensors import DataBundle
from models.ode_block import backward_nfe, forward_nfe, ode_blocks, translate_solver_failure
from odeflow.errors import TrainingDivergedError, UserError
from odeflow.files import save_atomic
from odeflow.interrupts import interrupts_deferred
from runner.experiment.adaptation import SolverAdapter
from runner.experiment.evaluation import predict
from runner.experiment.memory import PhaseMemory, format_memory, named_phase
from runner.experiment.parameter_path import ParameterPath
from runner.experiment.precision import autocast
from runner.experiment.settings import TrainSettings, make_optimizer

# Receives each epoch's metrics; a returned string stops training there (a sweep pruned the run) and says why.
EpochCallback = Callable[[dict[str, float]], "str | None"]


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf
    stopped_early: bool = False
    pruned: dict[str, Any] | None = None  # {"epoch": e, "reason": ...} when a sweep's pruner stopped the run
    adaptation: dict[str, Any] | None = None  # the adapted step size or tolerance and its checks (adaptation.py)


class _EpochTally:
    """The epoch's loss sum, correct predictions and first non-finite loss, accumulated on the training device.

    Reading a device value (`.item()`, `bool(tensor)`) makes the host wait for the GPU; adding into tensors
    does not. They are read once per epoch, and when the progress bar is refreshed (at most once a second).
    """

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.first_bad = torch.full((), -1.0, dtype=torch.float64, device=device)  # batch index, -1: none
        self.bad_loss = torch.zeros((), dtype=torch.float64, device=device)
        self.seen = self.batches = 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        loss = loss.detach().to(torch.float64)
        newly_bad = torch.isfinite(loss).logical_not_().logical_and_(self.first_bad < 0)
        self.first_bad = torch.where(newly_bad, float(self.batches), self.first_bad)
        self.bad_loss = torch.where(newly_bad, loss, self.bad_loss)
        self.loss_sum += loss * len(y)
        self.correct += (logits.detach().argmax(1) == y).sum()
        self.seen += len(y)
        self.batches += 1

    def read(self) -> tuple[float, int, int | None, float]:
        """(loss sum, correct, the 0-based batch of the first non-finite loss or None, that loss): one read."""
        loss_sum, correct, first_bad, bad_loss = torch.stack(
            [self.loss_sum, self.correct.to(torch.float64), self.first_bad, self.bad_loss]
        ).tolist()
        return loss_sum, int(correct), (int(first_bad) if first_bad >= 0 else None), bad_loss

    def checked(self, epoch: int) -> tuple[float, int]:
        """(loss sum, correct) so far, in one read; TrainingDivergedError if any loss was NaN or infinite."""
        loss_sum, correct, first_bad, bad_loss = self.read()
        if first_bad is not None:
            raise TrainingDivergedError(
                f"training loss became {bad_loss} in epoch {epoch}, batch {first_bad + 1}",
                "lower train.lr, add train.weight_decay, or use model.norm=group",
            )
        return loss_sum, correct


BAR_REFRESH_SECONDS = 1.0


def _train_one_epoch(
    model: nn.Module,
    data: DataBundle,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    bar: tqdm | None,
    epoch: int,
    memory: PhaseMemory,
    adapter: SolverAdapter | None = None,
    precision: str = "fp32",
    max_batches: int | None = None,
    parameter_path: ParameterPath | None = None,
) -> dict[str, float]:
    model.train()
    has_ode = bool(ode_blocks(model))
    device = next(model.parameters()).device
    tally = _EpochTally(device)
    fnfe, bnfe, shown = 0, 0, time.perf_counter()
    for x, y in data.train.batches(data.batch_size, generator):
        if tally.batches == max_batches:  # max_iterations reached inside this epoch
            break
        with named_phase(f"training (epoch {epoch}, batch {tally.batches + 1})"):
            optimizer.zero_grad(set_to_none=True)
            memory.batch_started()
            try:
                with autocast(precision, device):  # backward runs outside it, as torch.autocast asks
                    logits = model(x)
                    loss = F.cross_entropy(logits, y)
                memory.forward_done()
                batch_fnfe = forward_nfe(model)
                tally.add(loss, logits, y)
                try:
                    loss.backward()
                except AssertionError as exc:  # torchdiffeq's adjoint solve fails inside autograd
                    solver = ode_blocks(model)[0].solver if has_ode else None
                    raise (translate_solver_failure(exc, solver) if solver else exc) from exc
            except UserError:  # a solver that failed on weights an earlier non-finite loss had ruined
                tally.checked(epoch)
                raise
            if adapter is not None:  # between backward and step, as in "ResNet After All"
                validation = (data.val.x[: data.batch_size], data.val.y[: data.batch_size])
                adapter.after_backward(model, x, y, epoch, validation if data.has_validation else None)
            optimizer.step()
            if parameter_path is not None:
                parameter_path.after_step(model)
            memory.batch_done()
        fnfe += batch_fnfe
        bnfe += backward_nfe(model)
        if bar is not None:
            bar.update(1)
            if time.perf_counter() - shown >= BAR_REFRESH_SECONDS:
                shown = time.perf_counter()
                bar.set_postfix(
                    loss=f"{tally.checked(epoch)[0] / tally.seen:.4f}",
                    nfe=f"{batch_fnfe}/{backward_nfe(model)}" if has_ode else "-",
                )
    loss_sum, correct = tally.checked(epoch)
    return {
        "train.loss": loss_sum / tally.seen,
        "train.acc": correct / tally.seen,
        "nfe.forward": fnfe / tally.batches,
        "nfe.backward": bnfe / tally.batches,
    }


def fit(
    model: nn.Module,
    data: DataBundle,
    settings: TrainSettings,
    on_epoch: EpochCallback | None = None,
    checkpoint_path: Path | None = None,
    resume: dict[str, Any] | None = None,
    adapter: SolverAdapter | None = None,
    parameter_path: ParameterPath | None = None,
) -> FitResult:
    """Train until max_epochs (or max_iterations optimiser steps, the last epoch then possibly partial) or until
    validation loss has not improved for `patience` epochs (thesis 6.2.2).

    The best epoch's weights are restored before returning (`settings.evaluate == "final"`: the last iterate
    is kept, and `best_epoch` names the last epoch, whose weights they are). `on_epoch` receives each epoch's metrics:
    train.loss, train.acc, val.loss, val.acc, val.nfe.forward, nfe.forward, nfe.backward (mean per batch),
    epoch.time (seconds), peak memory mem.train.* and mem.val.* (runner.experiment.memory). With
    `checkpoint_path`, everything needed to continue (weights, optimizer, batch order, early-stopping state,
    history) is saved there after every epoch; `resume` is such a saved state, and training continues with
    the next epoch exactly as it would have. `adapter` adapts the solver's step size or tolerance during
    training; its value and checks are part of the saved state. `parameter_path` records the parameters
    along the way (from the start of this call: a resumed run records from where it resumed).
    """
    optimizer = make_optimizer(settings, model.parameters())
    generator = torch.Generator().manual_seed(settings.seed)
    result = FitResult()
    best_state = copy.deepcopy(model.state_dict())
    waited, first_epoch = 0, 1
    per_epoch = data.train.num_batches(data.batch_size)
    max_epochs = settings.max_epochs
    if settings.max_iterations is not None:
        max_epochs = math.ceil(settings.max_iterations / per_epoch)
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        generator.set_state(resume["generator"])
        torch.set_rng_state(resume["torch_rng"])
        best_state, waited = resume["best_state"], resume["waited"]
        result = FitResult(list(resume["history"]), resume["best_epoch"], resume["best_val_loss"])
        first_epoch = resume["epoch"] + 1
        if waited >= settings.patience:
            first_epoch = max_epochs + 1  # it had already stopped early
        if adapter is not None and resume.get("adaptation"):
            adapter.load_state_dict(resume["adaptation"], model)
    if adapter is not None:
        adapter.start(model, data.train.x[: data.batch_size], ode_blocks(model)[0].solver)
    if parameter_path is not None:
        parameter_path.start(model)
    show_bar = settings.progress and sys.stderr.isatty()
    device = next(model.parameters()).device
    for epoch in range(first_epoch, max_epochs + 1):
        left = None if settings.max_iterations is None else settings.max_iterations - (epoch - 1) * per_epoch
        start = time.perf_counter()
        train_memory, val_memory = PhaseMemory("train", device), PhaseMemory("val", device)
        with (
            train_memory.phase(),
            tqdm(
                total=per_epoch if left is None else min(per_epoch, left),
                desc=f"epoch {epoch}/{max_epochs}",
                leave=False,
                disable=not show_bar,
                file=sys.stderr,
            ) as bar,
        ):
            metrics = _train_one_epoch(
                model,
                data,
                optimizer,
                generator,
                bar if show_bar else None,
                epoch,
                train_memory,
                adapter,
                settings.precision,
                max_batches=left,
                parameter_path=parameter_path,
            )
        metrics.update(train_memory.metrics())
        val = None
        if data.has_validation:  # data.val_fraction=0: no validation split, no val.* metrics, no early stopping
            with val_memory.phase(), named_phase(f"validation (epoch {epoch})"):
                val = predict(model, data.val, data.batch_size, val_memory, settings.precision)
            metrics.update(
                {
                    **val_memory.metrics(),
                    "val.loss": val.loss,
                    "val.acc": val.accuracy,
                    "val.nfe.forward": val.mean_fnfe,
                }
            )
        metrics.update({"epoch.time": time.perf_counter() - start, "epoch": epoch})
        if adapter is not None:
            metrics.update(adapter.epoch_metrics(epoch, metrics["epoch.time"]))
        result.history.append(metrics)
        improved = val is not None and val.loss < result.best_val_loss - settings.min_delta
        if improved:
            result.best_val_loss, result.best_epoch, waited = val.loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        elif val is not None:
            waited += 1
        with interrupts_deferred():  # the epoch is in its training state and its record, or in neither
            if checkpoint_path is not None:
                _save_training_state(
                    checkpoint_path, epoch, model, optimizer, generator, best_state, waited, result, adapter
                )
            if settings.progress:
                print(format_epoch(metrics, max_epochs, improved), flush=True)
            stop_reason = on_epoch(metrics) if on_epoch is not None else None
        kept = f"restoring epoch {result.best_epoch}" if settings.evaluate == "best" else "keeping the last iterate"
        if stop_reason:
            result.pruned = {"epoch": epoch, "reason": stop_reason}
            print(f"pruned after epoch {epoch}: {stop_reason}; {kept}", flush=True)
            break
        if waited >= settings.patience:
            result.stopped_early = epoch < max_epochs
            if settings.progress:
                print(
                    f"early stopping: validation loss has not improved for {settings.patience} epochs; {kept}",
                    flush=True,
                )
            break
    if parameter_path is not None:
        parameter_path.finish(model)
    if settings.evaluate == "best":
        model.load_state_dict(best_state)
    else:
        result.best_epoch = len(result.history)
    if adapter is not None:
        result.adaptation = adapter.finish(model, result.history, result.best_epoch)
    return result


def _save_training_state(
    path: Path,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    best_state: dict,
    waited: int,
    result: FitResult,
    adapter: SolverAdapter | None = None,
) -> None:
    state = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "best_state": best_state,
        "waited": waited,
        "history": result.history,
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val_loss,
        "adaptation": adapter.state_dict() if adapter is not None else None,
    }
    save_atomic(path, lambda f: torch.save(state, f))  # a kill or a full disk mid-write keeps the previous epoch's


def format_epoch(m: dict[str, float], max_epochs: int, improved: bool) -> str:
    validation = f"val loss {m['val.loss']:.4f} acc {m['val.acc']:.4f}  " if "val.loss" in m else ""
    return (
        f"epoch {int(m['epoch']):>3}/{max_epochs}  train loss {m['train.loss']:.4f} acc {m['train.acc']:.4f}  "
        f"{validation}"
        f"NFE fwd {m['nfe.forward']:.1f} bwd {m['nfe.backward']:.1f}  "
        f"{m['epoch.time']:.1f}s{format_memory(m)}{'  *' if improved else ''}" + adaptation_note(m)
    )


def adaptation_note(m: dict[str, float]) -> str:
    """The epoch line's adapted value: h (step size) or tol, the changes so far and the epoch's mean gap."""
    if "adaptation.value" not in m:
        return ""
    gap = f" gap {m['adaptation.gap']:.3f}" if "adaptation.gap" in m else ""
    return f"  adapted {m['adaptation.value']:.4g} ({int(m['adaptation.changes'])} changes){gap}"
