"""One sweep per sweep folder: a lock held for the sweep's lifetime, and no new sweep over another's trials.

The lock is `fcntl.flock` on `<sweep dir>/.sweep.lock`: the kernel releases it when the sweep's process
ends, however it ends (SIGKILL and power loss included), so a crashed sweep never leaves it stuck. The
file names its owner (pid, host, sweep id) for the message a second sweep gets.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import IO

from odeflow.errors import UserError

LOCK_FILE = ".sweep.lock"


class SweepFolderInUse(UserError):
    """Another sweep is running in this sweep folder."""


class SweepLock:
    """Held from `acquire` until the process ends (or `release`)."""

    def __init__(self, sweep_dir: Path, handle: IO[str]) -> None:
        self.sweep_dir, self._handle = Path(sweep_dir), handle

    @classmethod
    def acquire(cls, sweep_dir: Path) -> SweepLock:
        """The folder's lock, or SweepFolderInUse naming the sweep that holds it."""
        sweep_dir = Path(sweep_dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        handle = open(sweep_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held open for the sweep's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = _owner(handle.read())
            handle.close()
            raise SweepFolderInUse(
                f"{sweep_dir} is in use by {owner}: one sweep per folder",
                "wait for it to end (or stop it with kill -TERM <pid>: it can be resumed), or run this sweep in "
                f"another folder: hydra.sweep.dir={free_sibling(sweep_dir)}",
            ) from None
        lock = cls(sweep_dir, handle)
        lock.name_owner(None)
        return lock

    def name_owner(self, sweep_id: str | None) -> None:
        """Write who holds the lock (read only by a refused second sweep, for its message)."""
        self._handle.seek(0)
        self._handle.truncate()
        owner = {
            "sweep_id": sweep_id,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": dt.datetime.now().isoformat(timespec="seconds"),
        }
        self._handle.write(json.dumps(owner))
        self._handle.flush()

    def release(self) -> None:
        if not self._handle.closed:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()


def _owner(text: str) -> str:
    try:
        owner = json.loads(text)
        sweep = f"sweep {owner['sweep_id']}" if owner.get("sweep_id") else "a sweep starting up"
        return f"{sweep} (pid {owner['pid']} on {owner['host']}, since {owner['since']})"
    except (ValueError, KeyError, TypeError):
        return "another sweep"


def job_folders(sweep_dir: Path) -> list[Path]:
    """The trial folders (`<sweep dir>/<job number>`) already in a sweep folder."""
    if not Path(sweep_dir).is_dir():
        return []
    return sorted((p for p in Path(sweep_dir).iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def free_sibling(sweep_dir: Path) -> Path:
    """The first `<sweep dir>-2`, `-3`, ... that does not exist: a new sweep there touches nothing of this one."""
    sweep_dir = Path(sweep_dir)
    number = 2
    while (candidate := sweep_dir.with_name(f"{sweep_dir.name}-{number}")).exists():
        number += 1
    return candidate


def refuse_new_sweep_over(sweep_dir: Path, held_by: str | None) -> None:
    """A new sweep must not start in a folder holding another sweep's trials: their job folders, results and
    report would be overwritten. `held_by` names that sweep (its id) when its state is still there."""
    jobs = job_folders(sweep_dir)
    if held_by is None and not jobs:
        return
    what = f"the trials of sweep {held_by}" if held_by else f"{len(jobs)} trial folders of an earlier sweep"
    raise UserError(
        f"{sweep_dir} holds {what}: a new sweep there would overwrite their job folders, results and report",
        f"start the new sweep in another folder: hydra.sweep.dir={free_sibling(sweep_dir)}"
        + (" (or drop hydra.sweeper.resume=false to continue the earlier one)" if held_by else ""),
    )
