"""`python -m runner [overrides]`: run one experiment (or a sweep with -m) from the Hydra config tree.

`python -m runner runs ...` browses logged runs and `python -m runner sync` pushes the local journal to
MongoDB (see runner/cli.py).
"""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig

RUNS_STARTED = [0]  # jobs this process began: an error Hydra raises after one is not "before the run started"


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def hydra_main(cfg: DictConfig) -> float:
    from runner.cli import run_from_hydra  # torch loads only when a job runs, not for --help

    RUNS_STARTED[0] += 1
    return run_from_hydra(cfg)


def main() -> None:
    from odeflow.errors import UserError
    from runner.cli import SUBCOMMANDS
    from runner.command_line import as_user_error, check_command, check_overrides
    from runner.tracking.env_file import load_env_file
    from runner.tracking.stores import env_file

    try:  # MONGO_URL for tracking=mongo, as docker compose reads it; the environment wins
        load_env_file(env_file())
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        from runner.cli import main as cli_main

        raise SystemExit(cli_main(sys.argv[1:]))
    runs_folder = None
    try:
        if len(sys.argv) > 1:
            check_command(sys.argv[1], SUBCOMMANDS)
        runs_folder = check_overrides(sys.argv[1:])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    # Hydra prints what it raises as a traceback (some of it, e.g. a YAML error of a --config-dir folder, not
    # even shortened) and exits; with this it raises instead, and the lines below say the cause and the fix.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        hydra_main()
    except Exception as exc:
        error = as_user_error(exc, sys.argv[1:], runs_folder, RUNS_STARTED[0])
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: one line (what was kept, how to continue), no traceback
        from odeflow.interrupts import as_interrupted

        interrupted = as_interrupted(exc)
        print(interrupted.describe(), file=sys.stderr, flush=True)
        raise SystemExit(interrupted.exit_code) from None


if __name__ == "__main__":
    main()
