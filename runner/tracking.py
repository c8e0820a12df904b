"""Sacred tracking: every run is a Sacred run with the config Hydra composed, stored by an observer.

Sacred is used the "less magic" way (plain-dict config, explicit main, ex.run()), so the logged config
is exactly the one Hydra resolved.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class FileStore:
    """Sacred's file storage: one folder per run under `dir`, no server needed."""

    dir: str = "runs/store"

    def observers(self) -> list:
        from sacred.observers import FileStorageObserver

        return [FileStorageObserver(str(Path(self.dir).expanduser()))]

    def describe(self) -> str:
        return f"file store {Path(self.dir).expanduser().resolve()}"


class RunLog:
    """What the pipeline may write to the current run: metrics, info and artifacts."""

    def __init__(self, sacred_run: Any) -> None:
        self._run = sacred_run

    @property
    def id(self) -> Any:
        return self._run._id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self._run.log_scalar(name, float(value), step)

    def set_info(self, key: str, value: Any) -> None:
        self._run.info[key] = value

    def add_artifact(self, path: Path, name: str | None = None) -> None:
        self._run.add_artifact(str(path), name=name or Path(path).name)


def run_tracked(name: str, config: dict[str, Any], store: FileStore, body: Callable[[RunLog], Any]) -> tuple[Any, Any]:
    """Run `body` as a Sacred run of experiment `name` with `config`; returns (run id, result)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        from sacred import Experiment
        from sacred.utils import apply_backspaces_and_linefeeds

    ex = Experiment(name, base_dir=str(PROJECT_ROOT), save_git_info=_has_git_commit(PROJECT_ROOT))
    ex.captured_out_filter = apply_backspaces_and_linefeeds
    ex.add_config(config)
    ex.observers.extend(store.observers())

    def sacred_main(_run):  # Sacred injects the run by parameter name
        return body(RunLog(_run))

    ex.main(sacred_main)
    run = ex.run(options={"--capture": "sys"})
    return run._id, run.result


def _has_git_commit(path: Path) -> bool:
    """Sacred's git capture fails outside a repository and in one with no commit yet; skip it there."""
    try:
        import git

        git.Repo(path, search_parent_directories=True).head.commit
        return True
    except Exception:  # GitPython raises several unrelated types for "no usable repository"
        return False
