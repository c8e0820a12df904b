"""Checkpoints that carry everything needed to rebuild and evaluate the model (nanoGPT style)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from odeflow.errors import UserError
from odeflow.files import save_atomic
from runner.experiment.factories import instantiate_group


def model_recipe(
    model_cfg: dict[str, Any], solver_cfg: dict[str, Any] | None, input_shape: tuple[int, ...], num_classes: int
) -> dict[str, Any]:
    """A plain, Hydra-instantiable description of a model: its config plus the data-derived arguments."""
    solver = dict(solver_cfg) if solver_cfg is not None else None  # None: a ResNet's record (no solver ran)
    return {**model_cfg, "input_shape": list(input_shape), "num_classes": int(num_classes), "solver": solver}


def build_model(recipe: dict[str, Any]) -> nn.Module:
    return instantiate_group("model", recipe)


def save_checkpoint(
    path: Path, model: nn.Module, recipe: dict[str, Any], config: dict[str, Any], extra: dict[str, Any] | None = None
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {"recipe": recipe, "config": config, "state_dict": model.state_dict(), **(extra or {})}
    return save_atomic(path, lambda f: torch.save(checkpoint, f))


def load_checkpoint(path: Path | str, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The rebuilt model with its best weights, and the whole checkpoint dict."""
    checkpoint = read_torch_file(path, device)
    model = build_model(checkpoint["recipe"]).to(device)
    model.load_state_dict(checkpoint["state_dict"])
    return model, checkpoint


def read_torch_file(path: Path | str, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint or training state written by this project; a missing, empty or truncated one is a UserError."""
    try:
        content = torch.load(path, map_location=device, weights_only=False)
    except FileNotFoundError:
        raise UserError(f"{path} does not exist", "the run's output folder was moved or deleted; restore it") from None
    except (OSError, RuntimeError, EOFError, ValueError) as exc:  # torch reports a damaged zip in several ways
        raise UserError(
            f"{path} is damaged ({str(exc).splitlines()[0][:120] or type(exc).__name__}): it is empty or truncated",
            "restore it from a backup, or train the run again (python -m runner reproduce <run id>)",
        ) from None
    if not isinstance(content, dict):
        raise UserError(
            f"{path} is not a checkpoint written by odeflow (it holds a {type(content).__name__})",
            "pick a best_checkpoint.pt or last_checkpoint.pt from a run's output folder",
        )
    return content
