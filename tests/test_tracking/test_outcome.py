"""What a run list says of each run that did not complete: its status, why, and the one action to take (or none)."""

from __future__ import annotations

import pytest

from runner.tracking.browse import format_rows, run_note
from runner.tracking.outcome import failure_cause

DISK_FULL = "the disk was full"


@pytest.mark.parametrize(
    ("row", "dead", "note"),
    [
        ({"id": 1, "status": "COMPLETED"}, False, None),
        ({"id": 1, "status": "RUNNING"}, False, None),
        (
            {"id": 2, "status": "RUNNING"},
            True,
            "run 2 DEAD: its process is gone (killed, or the machine went down); continue it: "
            "python -m runner resume 2",
        ),
        ({"id": 3, "status": "INTERRUPTED"}, False, "run 3 INTERRUPTED: continue it: python -m runner resume 3"),
        (
            {"id": 4, "status": "FAILED", "cause": DISK_FULL},
            False,
            "run 4 FAILED (the disk was full): free space on that disk, then continue it: python -m runner resume 4",
        ),
        (
            {"id": 4, "status": "FAILED", "cause": DISK_FULL, "continued_as": 6},
            False,
            "run 4 FAILED (the disk was full): nothing to do: continued as run 6",
        ),
        ({"id": 5, "status": "RUNNING", "continued_as": 7}, True, "run 5 DEAD: nothing to do: continued as run 7"),
        (
            {"id": 8, "status": "RUNNING", "superseded_by": 9},
            True,
            "run 8 SUPERSEDED: nothing to do: its sweep trial ran again as run 9",
        ),
    ],
)
def test_each_status_advises_an_action_that_loses_nothing_and_repeats_nothing(row, dead, note):
    assert run_note(row, dead) == note
    assert (note or "") in format_rows([row], [row["id"]] if dead else [])


def test_a_full_disk_is_read_from_the_traceback():
    assert failure_cause(["Traceback ...\n", "OSError: [Errno 28] No space left on device\n"]) == DISK_FULL
    assert failure_cause(["ValueError: bad\n"]) is None
