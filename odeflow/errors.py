"""Errors a user can cause. Each names the cause and the fix; the CLI prints them without a traceback.

Models, datasets and solvers raise these too (they validate their own typed arguments), so this module
has no dependencies on the rest of the project.
"""

from __future__ import annotations

from collections.abc import Iterable


class UserError(Exception):
    """An error caused by input the user controls (config, files, environment)."""

    def __init__(self, cause: str, fix: str = "") -> None:
        super().__init__(cause)
        self.cause = cause
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.cause}\n  fix: {self.fix}" if self.fix else self.cause

    def __reduce__(self) -> tuple:
        # A sweep's trial in a joblib worker process raises these back to the sweeper through pickle, which by
        # default calls the class with `args` alone: ConfigError's signature does not take them, and the whole
        # sweep died of a trial's bad config. Rebuilt here from their attributes, without __init__.
        return (_rebuilt, (type(self), self.args, self.__dict__))


def _rebuilt(cls: type[UserError], args: tuple, attributes: dict) -> UserError:
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(attributes)
    return error


class ConfigError(UserError, ValueError):
    """A config value is invalid. `key` is a dotted config key; `within` adds the group prefix."""

    def __init__(self, key: str, value: object, expected: str, fix: str = "") -> None:
        self.key, self.value, self.expected = key, value, expected
        super().__init__(f"{key}={value!r} is invalid: expected {expected}", fix or f"set {key} to {expected}")

    def within(self, group: str) -> ConfigError:
        """The same error with its key prefixed by the config group it came from."""
        if self.key.startswith(group + "."):
            return self
        default_fix = f"set {self.key} to {self.expected}"
        fix = "" if self.fix == default_fix else self.fix
        return ConfigError(f"{group}.{self.key}", self.value, self.expected, fix)


class ModelDataMismatch(UserError, ValueError):
    """A model that does not take the dataset's inputs. Models know neither the config options the user chose
    nor their names: the runner names them (`naming`), so the message speaks of model=... and data=..., the keys
    the user sets, not of the input_shape the model was given."""

    def __init__(self, takes: str, shape: Iterable[int], fix: str) -> None:
        self.takes, self.shape = takes, tuple(shape)
        super().__init__(f"the model takes {takes}; the dataset gives inputs of shape {self.shape}", fix)

    def naming(self, model: str, data: str) -> UserError:
        return UserError(
            f"model={model} does not fit data={data}: the model takes {self.takes}, the dataset gives inputs of "
            f"shape {self.shape}",
            self.fix,
        )


class DatasetNotFoundError(UserError):
    """Dataset files are missing and could not be downloaded."""


class SolverError(UserError, RuntimeError):
    """The ODE solver failed (step size underflow, too many steps, non-finite state)."""


class TrainingDivergedError(UserError, RuntimeError):
    """The loss became NaN or infinite."""


def check_choice(key: str, value: str, choices: Iterable[str]) -> str:
    """Return `value` if it is one of `choices`, else raise a ConfigError listing them."""
    options = sorted(choices)
    if value not in options:
        raise ConfigError(key, value, "one of " + ", ".join(options))
    return value


def check_positive(key: str, value: float | int | None, allow_zero: bool = False) -> float | int:
    """Return `value` if it is > 0 (or >= 0 with allow_zero), else raise a ConfigError."""
    ok = value is not None and not isinstance(value, bool) and (value > 0 or (allow_zero and value == 0))
    if not ok:
        raise ConfigError(key, value, "a number >= 0" if allow_zero else "a number > 0")
    return value


def check_fraction(key: str, value: float | None) -> float:
    """Return `value` if it lies strictly between 0 and 1, else raise a ConfigError."""
    if value is None or not 0.0 < value < 1.0:
        raise ConfigError(key, value, "a fraction strictly between 0 and 1")
    return value


# Fixes that name config keys. Models and datasets take plain arguments and do not know the config tree;
# their messages name keys only through these, so renaming a key changes this module alone.
SOLVER_FAILURE_FIX = (
    "loosen solver.rtol/solver.atol, raise solver.max_steps, set solver.min_step > 0, lower train.lr, "
    "use model.norm=group instead of batch (thesis 7.1.3), or train with a fixed-step solver (e.g. solver=rk4)"
)
NONFINITE_FIX = (
    "a NaN or infinity came out of the network, not a stiff solve: lower train.lr, add weight decay "
    "(train.weight_decay), or check the inputs for NaN"
)
EXTRA_OPTIONS_FIX = (
    "drop them from solver.extra_options, or set solver.backend=torchdiffeq to use torchdiffeq's own "
    "solver, which takes all of its options"
)
MAX_STEPS_CAUSE = "the solver needed more steps than solver.max_steps allows"
DOWNLOAD_OFF = "data.download=false"


def dataset_files_fix(folder: str, subfolder: str) -> str:
    return (
        f"put the standard files there (expected layout: {folder}/<file>), point data.root at the folder "
        f"that holds {subfolder}/, or run once with internet access and data.download=true"
    )


CHECKSUM_FIX = "replace them with the official files, or set data.verify_checksums=false to read them as they are"
DAMAGED_DATASET_FIX = (
    "replace it with the official file (delete it and run once with internet access and data.download=true)"
)


def step_longer_than_interval(step_size: float, t_final: float) -> UserError:
    return UserError(
        f"solver.step_size={step_size:g} is longer than the integration interval [0, {t_final:g}] (model.t_final): "
        f"a fixed-step solver would take one step of h={t_final:g} instead",
        f"set solver.step_size to at most {t_final:g} (e.g. {t_final / 4:g} for 4 steps), or raise model.t_final",
    )


def unsupported_fused_options(names: list[str]) -> str:
    return (
        f"the fused solver does not implement torchdiffeq's option(s) {', '.join(names)}; "
        "set solver.backend=torchdiffeq to use them"
    )


# The settings that lower a run's memory, as the out-of-memory message names them.
LOWER_MEMORY_FIX = (
    "lower data.batch_size (e.g. {half}), train an ODEnet with solver.gradient=checkpoint or solver.gradient=adjoint "
    "(memory that does not grow with the solver's steps), or use train.precision=bf16; then run it again"
)


def out_of_memory(
    device: str, phase: str, batch_size: int, peak: str, run_id: object = None, epochs: int = 0
) -> UserError:
    """A run that ran out of memory: where, at which batch size and peak, what it kept and what lowers it."""
    kept = (
        f"run {run_id} FAILED after {epochs} finished epochs, which it keeps"
        if run_id is not None
        else "the run stopped"
    )
    return UserError(
        f"out of memory on {device} during {phase} at batch size {batch_size} (peak {peak}): {kept}",
        LOWER_MEMORY_FIX.format(half=max(1, batch_size // 2)),
    )
