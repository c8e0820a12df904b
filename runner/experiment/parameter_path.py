"""The path a training run's parameters take: every parameter, flattened, every K optimiser steps.

It is what the deep-limit study compares between a weight-tied ResNet of N layers (an ODEnet trained with
euler at step 1/N) and its ODE limit trained from the same initialisation on the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from odeflow.files import save_atomic


def flat_parameters(model: nn.Module) -> torch.Tensor:
    """Every trainable parameter of `model` in one float64 vector on the CPU (the order of model.parameters())."""
    return torch.cat([p.detach().reshape(-1).to("cpu", torch.float64) for p in model.parameters() if p.requires_grad])


@dataclass
class ParameterPath:
    """The parameters at step 0, after every `every`-th optimiser step, and after the last step."""

    every: int
    steps: list[int] = field(default_factory=list)
    vectors: list[torch.Tensor] = field(default_factory=list)
    step: int = 0

    def start(self, model: nn.Module) -> None:
        self.steps, self.vectors, self.step = [0], [flat_parameters(model)], 0

    def after_step(self, model: nn.Module) -> None:
        self.step += 1
        if self.step % self.every == 0:
            self.steps.append(self.step)
            self.vectors.append(flat_parameters(model))

    def finish(self, model: nn.Module) -> None:
        """Record the final iterate (before any best-epoch weights are restored)."""
        if self.steps and self.steps[-1] != self.step:
            self.steps.append(self.step)
            self.vectors.append(flat_parameters(model))

    def save(self, path: Path, **extra: float) -> dict[str, float]:
        """Write `steps` and the (records x parameters) matrix to `path`; returns what the run's info keeps."""
        record = {"steps": list(self.steps), "vectors": torch.stack(self.vectors), **extra}
        save_atomic(path, lambda f: torch.save(record, f))
        return {"records": len(self.steps), "every": self.every, "parameters": int(self.vectors[0].numel()), **extra}
