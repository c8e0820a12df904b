"""The four stages of an experiment: load -> build -> train -> evaluate. Each takes plain arguments."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from data.tensors import DataBundle
from models.parameters import count_parameters
from odeflow.errors import ConfigError, UserError
from odeflow.files import write_atomic
from odeflow.ode_figures import adaptation_png
from runner.experiment.adaptation import SolverAdapter
from runner.experiment.checkpoint import build_model as build_from_recipe
from runner.experiment.checkpoint import save_checkpoint
from runner.experiment.evaluation import classification_report, predict
from runner.experiment.parameter_path import ParameterPath
from runner.experiment.settings import TrainSettings
from runner.experiment.training import EpochCallback, FitResult, fit


def load(data: DataBundle, device: torch.device) -> DataBundle:
    """Move the whole dataset onto the training device once."""
    return data.to(device)


def build(recipe: dict[str, Any], data: DataBundle, device: torch.device) -> nn.Module:
    """Build the model and check it fits the data with one evaluation-mode forward pass on two samples."""
    model = build_from_recipe(recipe).to(device)
    model.eval()
    try:
        with torch.no_grad():
            out = model(data.train.x[:2])
    except (UserError, torch.OutOfMemoryError):
        raise  # e.g. the solver failed: its own message says why; out of memory: the run's message says where
    except RuntimeError as exc:
        raise ConfigError(
            "model",
            recipe.get("_target_"),
            f"a model that fits inputs of shape {data.input_shape}: " + str(exc).splitlines()[0][:200],
        ) from exc
    finally:
        model.train()
    if tuple(out.shape) != (min(2, len(data.train)), data.num_classes):
        raise ConfigError(
            "model", recipe.get("_target_"), f"{data.num_classes} outputs per sample, got shape {tuple(out.shape)}"
        )
    return model


def train(
    model: nn.Module,
    data: DataBundle,
    settings: TrainSettings,
    on_epoch: EpochCallback | None = None,
    checkpoint_path: Path | None = None,
    resume: dict[str, Any] | None = None,
    adapter: SolverAdapter | None = None,
    parameter_path: ParameterPath | None = None,
) -> FitResult:
    return fit(model, data, settings, on_epoch, checkpoint_path, resume, adapter, parameter_path)


def evaluate(model: nn.Module, data: DataBundle, precision: str = "fp32") -> dict[str, Any]:
    """Test loss/accuracy, mean FNFE, classification report, parameter counts and evaluation time, computed in
    the run's `precision`."""
    start = time.perf_counter()
    test = predict(model, data.test, data.batch_size, precision=precision)
    return {
        "test.loss": test.loss,
        "test.acc": test.accuracy,
        "test.nfe.forward": test.mean_fnfe,
        "test.time": time.perf_counter() - start,
        "report": classification_report(test.labels, test.probabilities, data.class_names),
        "parameters": count_parameters(model),
    }


def run_title(config: dict[str, Any]) -> str:
    """What ran, for figure titles, from the logged config: name, model, data and solver."""
    model, data, solver = config.get("model", {}), config.get("data", {}), config.get("solver", {})
    model_name = str(model.get("_target_", "model")).rsplit(".", 1)[-1] + f" ({model.get('block', '?')} block)"
    data_name = str(data.get("_target_", "data")).rsplit(".", 1)[-1].removeprefix("load_")
    text = f"{config.get('name', 'run')}: {model_name} on {data_name}"
    if model.get("block") == "ode" and solver.get("method"):
        text += f", {solver['method']}"
    return text


def write_outputs(
    out_dir: Path,
    model: nn.Module,
    recipe: dict[str, Any],
    config: dict[str, Any],
    fit_result: FitResult,
    results: dict[str, Any],
    class_names: list[str],
    is_ode: bool,
    title: str | None = None,
    figures: bool = True,
) -> dict[str, Path]:
    """Best checkpoint, evaluation report (JSON and per-class CSV) and, with `figures`, the figures (see
    write_figures) in `out_dir`, by artifact name. `title` says what ran (default: from the config)."""
    report = results["report"]
    paths = {
        "best_checkpoint.pt": save_checkpoint(
            out_dir / "best_checkpoint.pt",
            model,
            recipe,
            config,
            {"best_epoch": fit_result.best_epoch, "history": fit_result.history, "adaptation": fit_result.adaptation},
        ),
    }
    if figures:
        paths.update(write_figures(out_dir, fit_result, results, class_names, is_ode, title or run_title(config)))
    paths["evaluation_report.json"] = out_dir / "evaluation_report.json"
    write_atomic(
        paths["evaluation_report.json"], json.dumps({**results, "fit": asdict(fit_result)}, indent=2, default=float)
    )
    paths["classification_report.csv"] = out_dir / "classification_report.csv"
    write_atomic(paths["classification_report.csv"], pd.DataFrame(report["per_class"]).to_csv(index=False))
    return paths


def write_figures(
    out_dir: Path, fit_result: FitResult, results: dict[str, Any], class_names: list[str], is_ode: bool, title: str
) -> dict[str, Path]:
    """The run's figures in `out_dir`, by artifact name: confusion matrix, learning curves with the best
    (restored, tested) epoch marked, NFE per epoch (ODEnets), and `<family>.png` for any other family of
    per-epoch series in the history (memory.*, adaptation.*, ...)."""
    from odeflow import plots

    history, best = fit_result.history, fit_result.best_epoch
    paths = {
        "confusion_matrix.png": plots.confusion_matrix_png(
            results["report"]["confusion_matrix"], class_names, out_dir / "confusion_matrix.png", title
        ),
        "learning_curves.png": plots.learning_curves_png(
            history, out_dir / "learning_curves.png", best, title, results
        ),
    }
    if is_ode:
        paths["nfe.png"] = plots.nfe_png(history, out_dir / "nfe.png", best, title)
    if fit_result.adaptation:  # per check, finer than the per-epoch series
        paths["adaptation.png"] = adaptation_png(fit_result.adaptation, out_dir / "adaptation.png")
    skip = frozenset({"adaptation"} if fit_result.adaptation else ())
    paths.update(plots.extra_epoch_figures(history, out_dir, best, title, skip))
    return paths
