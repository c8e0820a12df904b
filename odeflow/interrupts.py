"""SIGTERM handled like Ctrl-C, and an interrupted run ending in one line.

SIGTERM is what Slurm, systemd, Docker and `kill` send. Python's default ends the process at once, so a
run's tracker never records how it ended (it stays RUNNING) and the epochs since the last flush are lost.
Raised as KeyboardInterrupt instead, it ends the run the way Ctrl-C does: Sacred records it INTERRUPTED
with every finished epoch, and the per-epoch training state lets `python -m runner resume` continue it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, with the signal's name; `run_id` and `epochs` say what the interrupted run kept."""

    def __init__(self, signal_name: str = "SIGINT", run_id: Any = None, epochs: int = 0) -> None:
        super().__init__(signal_name)
        self.signal_name, self.run_id, self.epochs = signal_name, run_id, epochs

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process ended by that signal."""
        return 128 + int(getattr(signal, self.signal_name, signal.SIGINT))

    def describe(self) -> str:
        what = "Ctrl-C" if self.signal_name == "SIGINT" else self.signal_name
        if self.run_id is None:
            return f"interrupted ({what})"
        plural = "s" if self.epochs != 1 else ""
        kept = f"its {self.epochs} finished epoch{plural} recorded" if self.epochs else "no epoch had finished"
        return (
            f"interrupted ({what}): run {self.run_id} stopped, status INTERRUPTED, {kept}; "
            f"continue it with: python -m runner resume {self.run_id}"
        )


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT raise `Interrupted` (a KeyboardInterrupt) in the main thread.

    Outside the main thread (where Python delivers no signal) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    previous = {s: h for s, h in previous.items() if h is not signal.SIG_IGN}  # nohup's choice stands
    for s in previous:
        signal.signal(s, _raise_interrupted)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT wait until the block ends and are handled then.

    An epoch's bookkeeping (its training state, its metrics in the store, its console line) is then all
    done or not begun: a signal in between would leave an epoch in the training state that the run's
    record lacks. Handlers that are not Python functions (the default, ignore) are left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    handlers = {s: h for s, h in handlers.items() if callable(h)}
    pending: list[int] = []
    for s in handlers:
        signal.signal(s, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
        if pending:
            handlers[pending[0]](pending[0], None)


def as_interrupted(exc: KeyboardInterrupt) -> Interrupted:
    return exc if isinstance(exc, Interrupted) else Interrupted("SIGINT")
