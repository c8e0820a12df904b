"""What a run list says of each run that did not complete: its status, why, and the one action to take (or none);
and the runs its links name, wherever the runs were copied."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

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


def _run_folder(store: Path, folder: int, uid: str, status: str, **links: tuple) -> None:
    """A finished run's folder as the file observer writes it, its meta holding `links` (key: (id, uid))."""
    run_dir = store / str(folder)
    run_dir.mkdir(parents=True)
    meta = {"run_uid": uid, **{k: v[0] for k, v in links.items()}, **{f"{k}_uid": v[1] for k, v in links.items()}}
    trace = ["OSError: [Errno 28] No space left on device\n"] if status == "FAILED" else None
    record = {"experiment": {"name": "odeflow"}, "status": status, "meta": meta, "host": {}, "fail_trace": trace}
    (run_dir / "run.json").write_text(json.dumps(record))


def test_links_name_the_right_run_in_a_store_the_runs_were_copied_into_under_other_ids(tmp_path: Path, capsys):
    from runner.cli import main

    # Store A: run 1 filled the disk and was resumed as run 2, which run 3 re-evaluated.
    a = tmp_path / "a" / "store"
    _run_folder(a, 1, "uid-a", "FAILED", continued_as=(2, "uid-b"))
    _run_folder(a, 2, "uid-b", "COMPLETED", resumed_from=(1, "uid-a"))
    _run_folder(a, 3, "uid-c", "COMPLETED", reevaluates=(2, "uid-b"))
    # Store B holds runs of its own as 1-6; runs 1 and 2 of A are copied in (cp -a) as 7 and 8, run 3 is not.
    b = tmp_path / "b" / "store"
    for own in range(1, 7):
        _run_folder(b, own, f"own-{own}", "FAILED" if own == 2 else "COMPLETED")
    shutil.copytree(a / "1", b / "7")
    shutil.copytree(a / "2", b / "8")
    _run_folder(b, 9, "uid-d", "COMPLETED", reproduces=(3, "uid-c"))  # links to a run that B does not hold

    def cli(*words: str) -> str:
        assert main([*words, f"paths.runs={b.parent}"]) == 0
        return capsys.readouterr().out

    listing = cli("runs", "list")
    assert "run 7 FAILED (the disk was full): nothing to do: continued as run 8" in listing, listing
    assert "links: resumed from run 7" in cli("runs", "show", "8")
    assert "links: continued as run 8" in cli("runs", "show", "7")
    cli("runs", "export", "--out", str(tmp_path / "runs.csv"))  # its link columns name the runs here too
    exported = {row["id"]: row for row in csv.DictReader((tmp_path / "runs.csv").open())}
    assert (exported["7"]["continued_as"], exported["8"]["resumed_from"]) == ("8", "7")
    assert "links: reproduces a run not in this store (run_uid uid-c)" in cli("runs", "show", "9")
    assert main(["resume", "7", f"paths.runs={b.parent}"]) == 2  # it would train run 8's epochs again
    assert "run 7 was continued as run 8 already" in capsys.readouterr().err
    # A link written onto a run known by the id it had elsewhere (a journal's run under its MongoDB id) lands on the
    # folder with its uid.
    from runner.tracking.links import link_run
    from runner.tracking.runstore import RunRecord
    from runner.tracking.stores import FileStore

    link_run(
        FileStore(str(b)), RunRecord(2, "", "", {}, {}, {"run_uid": "uid-b"}, None, None, None), "supersedes", 3, "c"
    )
    assert json.loads((b / "8" / "run.json").read_text())["meta"]["supersedes_uid"] == "c"
    assert "supersedes" not in json.loads((b / "2" / "run.json").read_text())["meta"]
    # In store A, where the ids were written, they name the same runs.
    assert main(["runs", "show", "3", f"paths.runs={a.parent}"]) == 0
    assert "links: re-evaluates run 2" in capsys.readouterr().out


def test_status_filters_on_the_status_the_listing_shows(tmp_path: Path, capsys):
    import socket
    import subprocess
    import sys

    from runner.cli import main

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    store = tmp_path / "store"
    _run_folder(store, 1, "uid-1", "INTERRUPTED", superseded_by=(2, "uid-2"))  # a sweep's trial ran again as run 2
    _run_folder(store, 2, "uid-2", "COMPLETED", supersedes=(1, "uid-1"))
    _run_folder(store, 3, "uid-3", "RUNNING")  # killed: its process is gone
    _run_folder(store, 4, "uid-4", "RUNNING")  # alive: this process
    _run_folder(store, 5, "uid-5", "INTERRUPTED")
    for run_id, pid in ((3, gone.pid), (4, os.getpid())):
        run_json = store / str(run_id) / "run.json"
        record = json.loads(run_json.read_text())
        record["meta"]["pid"], record["host"]["hostname"] = pid, socket.gethostname()
        run_json.write_text(json.dumps(record))

    def listed(status: str) -> list[tuple[str, str]]:
        assert main(["runs", "list", "--status", status, f"paths.runs={tmp_path}"]) == 0
        rows = capsys.readouterr().out.splitlines()[1:]
        return [tuple(row.split()[:3:2]) for row in rows if row.split()[1:2] == ["odeflow"]]

    assert listed("SUPERSEDED") == [("1", "SUPERSEDED")]
    assert listed("dead") == [("3", "DEAD")]
    assert listed("RUNNING") == [("4", "RUNNING")]
    assert listed("interrupted") == [("5", "INTERRUPTED")]  # run 1 is shown SUPERSEDED, not INTERRUPTED
    assert listed("COMPLETED") == [("2", "COMPLETED")]
    assert main(["runs", "list", "--status", "gone", f"paths.runs={tmp_path}"]) == 2
    assert "DEAD, SUPERSEDED" in capsys.readouterr().err
