"""Typed settings built from the `train` config group, and the seeding they imply (the device: device.py)."""

from __future__ import annotations

import ctypes
import platform
import random
import re
from dataclasses import dataclass

import numpy as np
import torch

from odeflow.errors import ConfigError, check_choice, check_positive
from runner.experiment.device import configure_kernels
from runner.experiment.precision import PRECISIONS

OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd")
EVALUATED_WEIGHTS = ("best", "final")


@dataclass(frozen=True)
class TrainSettings:
    """Optimizer, schedule, early stopping and execution settings of one training run."""

    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    max_epochs: int = 30
    max_iterations: int | None = None  # optimiser steps in all; when set, it replaces max_epochs as the limit
    patience: int = 5
    min_delta: float = 0.0
    seed: int = 0
    device: str = "auto"
    deterministic: bool = True
    progress: bool = True
    num_threads: int | None = None
    reuse_host_memory: bool = True
    adjoint_check_threshold: float = 0.2
    evaluate: str = "best"  # best: restore the best validation epoch's weights; final: keep the last iterate
    record_parameters: int = 0  # > 0: record every parameter every this many optimiser steps (parameter_path.pt)
    precision: str = "fp32"

    def __post_init__(self) -> None:
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_positive("lr", self.lr)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        check_positive("momentum", self.momentum, allow_zero=True)
        check_positive("max_epochs", self.max_epochs)
        if self.max_iterations is not None and (not isinstance(self.max_iterations, int) or self.max_iterations < 1):
            raise ConfigError("max_iterations", self.max_iterations, "an integer >= 1 (optimiser steps), or null")
        check_choice("evaluate", self.evaluate, EVALUATED_WEIGHTS)
        if not isinstance(self.record_parameters, int) or self.record_parameters < 0:
            raise ConfigError("record_parameters", self.record_parameters, "an integer >= 0 (0: off)")
        check_seed("seed", self.seed)
        if not isinstance(self.patience, int) or self.patience < 1:
            raise ConfigError(
                "patience",
                self.patience,
                "an integer >= 1 (epochs without validation-loss improvement before stopping)",
            )
        check_positive("min_delta", self.min_delta, allow_zero=True)
        check_positive("adjoint_check_threshold", self.adjoint_check_threshold)
        check_choice("precision", self.precision, PRECISIONS)
        if self.num_threads is not None:
            check_positive("num_threads", self.num_threads)
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(self.device)):
            raise ConfigError("device", self.device, "auto, cpu, cuda or cuda:N")


def check_seed(key: str, value: object) -> int:
    """Seeds are what NumPy accepts: integers from 0 to 2**32 - 1."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**32:
        raise ConfigError(key, value, "an integer from 0 to 4294967295 (2**32 - 1)")
    return value


def make_optimizer(settings: TrainSettings, params) -> torch.optim.Optimizer:
    """The optimizer named in the settings (thesis HPO searched over these)."""
    name, lr, wd = settings.optimizer, settings.lr, settings.weight_decay
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=wd, momentum=settings.momentum)
    return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=settings.momentum)


def configure_threads(num_threads: int | None) -> None:
    """CPU threads for torch; parallel trials on one machine should split the cores between them."""
    if num_threads is not None:
        torch.set_num_threads(num_threads)


# glibc's mallopt parameters (malloc.h) and limits (mallopt(3): 32 MiB is the largest mmap threshold on 64-bit)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_LARGEST_MMAP_THRESHOLD, _TRIM_THRESHOLD = 32 * 2**20, 2**30


def reuse_freed_host_memory(enabled: bool) -> bool:
    """Keep freed CPU memory in the process for the next tensor instead of handing it back to the OS.

    Why: glibc serves a block above its mmap threshold (128 KiB at start, adjusted as blocks are freed)
    with fresh pages and returns them when it is freed, so each new state-sized tensor pays a page fault
    per 4 KiB: on the benchmark's ODE block (6.6 MB states) f alone took 19-25 ms with 3,900-4,800 page
    faults per call and 13-17 ms with none; a whole evaluation solve went from 380-420 ms to 300-350 ms.
    jemalloc or tcmalloc would also fix it but must be preloaded before the process starts; glibc's
    `mallopt` takes effect at any time. The price: the process keeps its peak host memory until it exits
    (blocks up to 32 MiB come from the reusable heap; larger ones are still mapped and unmapped).
    Process-wide; does nothing outside glibc (macOS, musl). Returns whether it took effect.
    """
    if not enabled or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _LARGEST_MMAP_THRESHOLD)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; with `deterministic`, make torch pick deterministic kernels, without it
    the fastest ones (cuDNN's autotuner): see runner.experiment.device.configure_kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    configure_kernels(deterministic)


def check_validation_split(has_validation: bool, evaluate: str, objective: str | None, pruned: bool) -> None:
    """Without a validation split (data.val_fraction=0) nothing may depend on validation metrics: restoring the
    best validation epoch, a searched objective read from them, or pruning by them."""
    if has_validation:
        return
    needs = []
    if evaluate == "best":
        needs.append("train.evaluate=best (it restores the best validation epoch)")
    if objective is not None and objective.startswith("best_val"):
        needs.append(f"objective={objective}")
    if pruned:
        needs.append("the sweep's pruner (it compares validation metrics)")
    if needs:
        raise ConfigError(
            "data.val_fraction",
            0,
            "a validation split for " + " and ".join(needs),
            fix='train.evaluate=final objective=test_acc (evaluate the last iterate, as "ResNet After All" did), '
            "or data.val_fraction=0.2 to hold out a validation split",
        )
