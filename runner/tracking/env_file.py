"""The .env file (MONGO_URL, the dashboard's credentials), read strictly: a line that is not KEY=VALUE, a
misspelt setting (close to one of SETTINGS) or a file that cannot be read ends in one line naming it and the
fix, where python-dotenv would skip it with a warning (or a traceback) and the run would go on without it."""

from __future__ import annotations

import difflib
import io
import os
from pathlib import Path

from odeflow.errors import UserError

# The settings odeflow reads from .env (.env.example lists them); other keys are the user's own (docker compose's).
SETTINGS = (
    "MONGO_USER",
    "MONGO_PASSWORD",
    "MONGO_DB",
    "MONGO_PORT",
    "MONGO_URL",
    "OMNIBOARD_PORT",
    "OMNIBOARD_USER",
    "OMNIBOARD_PASSWORD",
    "OMNIBOARD_HOST",
    "DASHBOARD_DB_CACHE",
)
PREFIXES = ("MONGO_", "OMNIBOARD_", "DASHBOARD_")


def read_env_file(path: Path) -> dict[str, str]:
    """The KEY=VALUE settings of `path` ({} when it does not exist), as python-dotenv reads them."""
    from dotenv import dotenv_values
    from dotenv.parser import parse_stream

    if not path.exists():
        return {}
    if path.is_dir():
        raise UserError(
            f"{path} is a folder, not the .env file",
            "remove or rename it (make dashboard creates .env from .env.example), or set ODEFLOW_ENV_FILE to the file",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path} cannot be read: byte {exc.start} is not UTF-8 text",
            "save it as UTF-8 text (lines KEY=VALUE), or recreate it from .env.example",
        ) from None
    except OSError as exc:
        raise UserError(
            f"{path} cannot be read: {exc.strerror or exc}",
            f"make it readable by you (chmod 600 {path}), or set ODEFLOW_ENV_FILE to a .env you can read",
        ) from None
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:  # its text is not shown: it may hold a password
            raise UserError(
                f"line {binding.original.line} of {path} is not KEY=VALUE",
                "write it as KEY=VALUE (quote a value holding spaces or '#': KEY=\"a b\"), or start it with # "
                "to keep it as a comment",
            )
        key = binding.key
        close = difflib.get_close_matches(key, SETTINGS, n=1, cutoff=0.8) if key and key not in SETTINGS else []
        if close and key.startswith(PREFIXES):  # a misspelt setting; a key far from all of them is the user's own
            raise UserError(
                f"{key} (line {binding.original.line} of {path}) is not a setting odeflow reads",
                f"did you mean {close[0]}? the settings: {', '.join(SETTINGS)}",
            )
    return {key: value or "" for key, value in dotenv_values(stream=io.StringIO(text)).items()}


def load_env_file(path: Path) -> None:
    """Put the settings of `path` into the environment; a variable already exported wins."""
    for key, value in read_env_file(path).items():
        os.environ.setdefault(key, value)
