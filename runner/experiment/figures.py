"""A sweep trial's figures, drawn after its result is recorded, by a worker thread of the trial's process.

Drawing the three PNGs takes about half a second, as long as the rest of a small trial's fixed cost. A trial
of a sweep records its run (result, metrics, checkpoint, reports) first, so the sweep has its value; a
worker then draws the figures into the run's folder and attaches them to the run record. Workers are not
daemons: the process (a Slurm job, a joblib worker, the sweep itself) exits only once the figures are
written. One figure set is drawn at a time (pyplot is not thread-safe).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path

_drawing = threading.Lock()  # pyplot's global state: one drawer at a time, the main thread included
_workers: list[threading.Thread] = []


def draw_later(draw: Callable[[], dict[str, Path]], attach: Callable[[dict[str, Path]], None]) -> None:
    """Run `draw` (it writes the figures and returns them by artifact name), then `attach` them to the run."""

    def work() -> None:
        try:
            with _drawing:
                paths = draw()
            attach(paths)
        except Exception as error:  # noqa: BLE001 - said, and the process goes on (its run is recorded)
            print(f"figures: could not write a run's figures: {type(error).__name__}: {error}", file=sys.stderr)

    worker = threading.Thread(target=work, name="odeflow-figures", daemon=False)
    _workers[:] = [w for w in _workers if w.is_alive()] + [worker]
    worker.start()


def wait_for_figures() -> None:
    """Block until every figure queued by this process is written and attached."""
    for worker in list(_workers):
        worker.join()


def drawing_lock() -> threading.Lock:
    """Hold it while drawing with pyplot elsewhere in a process that may have figures being drawn."""
    return _drawing
