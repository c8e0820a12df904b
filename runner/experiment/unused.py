"""Settings the chosen model does not use: a ResNet (a model without an ODE block) solves no ODE, so the solver
group and the model's integration time do nothing for it. Such a setting given on purpose is named in one
warning line, and the run's record holds no solver (solver: null), never one that did not run. For an ODE
model, the solver settings its gradient method or its method ignores are named the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[2] / "conf"
ODE_ONLY_MODEL_KEYS = ("t_final",)  # a model option's keys that only an ODE block reads


def default_choice(group: str) -> str | None:
    """The option conf/config.yaml's defaults list picks for `group`."""
    for entry in OmegaConf.to_container(OmegaConf.load(CONF / "config.yaml")).get("defaults", []):
        if isinstance(entry, dict) and group in entry:
            return entry[group]
    return None


def _option(group: str, name: str | None) -> dict[str, Any] | None:
    path = CONF / group / f"{name}.yaml"
    if not name or not path.is_file():
        return None  # an option from a user's config folder: only its choice is compared
    return OmegaConf.to_container(OmegaConf.load(path))


def _changed(given: dict[str, Any], option: dict[str, Any] | None, group: str, keys: Any = None) -> list[str]:
    if option is None:
        return []
    return [
        f"{group}.{key}={value}"
        for key, value in given.items()
        if key != "_target_" and (keys is None or key in keys) and key in option and option[key] != value
    ]


def settings_unused_by_plain_model(config: dict[str, Any], choices: dict[str, str]) -> list[str]:
    """The solver and ODE-only model settings that differ from what the chosen options say by default (given on
    the command line or by a preset), for a model without an ODE block: `solver=rk4`, `solver.step_size=0.1` ..."""
    unused = []
    solver = choices.get("solver")
    if config.get("solver") is not None:
        if solver and solver != default_choice("solver"):
            unused.append(f"solver={solver}")
        unused += _changed(config["solver"], _option("solver", solver or default_choice("solver")), "solver")
    model = choices.get("model")
    unused += _changed(config.get("model") or {}, _option("model", model), "model", ODE_ONLY_MODEL_KEYS)
    return unused


ADAMS_CORRECTORS = ("fixed_adams", "implicit_adams")  # the fixed-step methods that read rtol and atol


def solver_settings_unused(
    config: dict[str, Any], choices: dict[str, str], solver: Any, adapting: bool = False
) -> list[str]:
    """The solver settings given (differing from the chosen option's file) that this solver ignores:
    `checkpoints` without gradient=checkpoint, `adjoint_norm` without the adjoint, tolerances of a fixed-step
    method that has no corrector (unless an adaptation reads them: step-size adaptation's Hairer start)."""
    tolerances_unused = solver.is_fixed_step and solver.method not in ADAMS_CORRECTORS and not adapting
    ignored = {
        "checkpoints": solver.gradient != "checkpoint",
        "adjoint_norm": solver.gradient != "adjoint",
        "rtol": tolerances_unused,
        "atol": tolerances_unused,
    }
    option = _option("solver", choices.get("solver") or default_choice("solver"))
    return _changed(config.get("solver") or {}, option, "solver", [key for key, yes in ignored.items() if yes])


def describe_ignored(unused: list[str], solver: Any) -> str:
    verb = "does" if len(unused) == 1 else "do"
    return (
        f"warning: {' '.join(unused)} {verb} nothing for {solver.method} with gradient={solver.gradient} "
        "(checkpoints: gradient=checkpoint only; adjoint_norm: gradient=adjoint only; rtol, atol: adaptive and Adams "
        "methods only); drop them"
    )


def describe_unused(unused: list[str], model: str) -> str:
    verb = "does" if len(unused) == 1 else "do"
    return (
        f"warning: {' '.join(unused)} {verb} nothing for model={model}: it has no ODE block (its record holds "
        "solver: null); drop them, or pick an ODE model (e.g. model=odenet_simple)"
    )
