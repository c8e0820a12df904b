"""Files that survive a crash mid-write: whole or not at all (atomic replace), and appended lines whole or ignored.

A kill, a power loss or a full disk while a file is being rewritten in place leaves it empty or cut; the
readers then fail on every later use. Here a rewrite goes to a temporary file beside the target, is
flushed to disk, and replaces the target in one rename: readers see the old content or the new, never a
mix, and a write that fails (no space left) leaves the old content where it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from odeflow.errors import UserError


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a folder that cannot be opened (some network or Windows filesystems): the rename stands
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: Path | str, mode: str = "w") -> Iterator[IO[Any]]:
    """A file object whose content replaces `path` atomically when the block ends without an error.

    On an error (a full disk included) the temporary file is removed and `path` keeps its old content."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_folder(path.parent)


def write_atomic(path: Path | str, content: str | bytes) -> Path:
    """Write `content` to `path` all at once (see `replacing`)."""
    with replacing(path, "wb" if isinstance(content, bytes) else "w") as f:
        f.write(content)
    return Path(path)


def save_atomic(path: Path | str, save: Callable[[IO[bytes]], Any]) -> Path:
    """`save(file)` (torch.save, DataFrame.to_csv, savefig ...) into `path` atomically."""
    with replacing(path, "wb") as f:
        save(f)
    return Path(path)


def append_line(path: Path | str, line: str) -> None:
    """Append one line in a single write (atomic between processes for small lines, with O_APPEND).

    A file whose last line was cut by a crash gets a newline first, so the new line never glues onto the
    cut one (which readers then skip as damaged)."""
    data = (line.rstrip("\n") + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size:
            with open(path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    data = b"\n" + data
        os.write(fd, data)
    finally:
        os.close(fd)


def is_disk_full(exc: BaseException) -> bool:
    """Whether an error (or one it was raised from) is the disk or a quota running out of space."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full_error(folder: Path, run_id: Any, epochs: int) -> UserError:
    """A run stopped by a full disk: what it kept and how to continue it."""
    stopped = f"run {run_id} stopped after {epochs} finished epochs" if run_id is not None else "the run stopped"
    resume = f"continue it from its last saved epoch: python -m runner resume {run_id}" if run_id is not None else ""
    error = UserError(
        f"no space left on the disk of {folder}: {stopped}; its files keep their last complete state (the epochs "
        "saved before the disk filled)",
        f"free space there (df -h {folder}), or move the runs to a disk with room (ODEFLOW_RUNS or paths.runs); "
        f"then {resume or 'run it again'}",
    )
    error.run_id = run_id  # the run it stopped (a resume links the run it continued to it)
    return error
