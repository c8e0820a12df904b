"""Links written onto an earlier run once a later one takes its place: `continued_as` (a resume) and `superseded_by`
(a sweep's trial that ran again), each with the later run's uid beside its id (see runner.tracking.outcome)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from odeflow.files import write_atomic
from runner.tracking.runstore import RunRecord


def _set_in_folder(run_dir: Path, fields: dict[str, Any]) -> bool:
    path = run_dir / "run.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    record.setdefault("meta", {}).update(fields)
    write_atomic(path, json.dumps(record, sort_keys=True, indent=2))
    return True


def _uid_in(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "run.json").read_text()).get("meta", {}).get("run_uid")
    except (OSError, ValueError):
        return None


def _folder_of(root: Path, run_id: Any, run_uid: str | None) -> Path | None:
    """The folder of a run in a file store or journal: by id when its uid agrees, else found by uid in the store's
    index (the same rule as a link's: outcome.link_target)."""
    from runner.tracking.index import using_index
    from runner.tracking.outcome import link_target

    direct = root / str(run_id)
    if run_uid is None or _uid_in(direct) == run_uid:
        return direct if direct.is_dir() else None
    if not root.is_dir():
        return None
    found = link_target(run_id, run_uid, using_index(root, lambda index: index.ids_by_uid([run_uid])))
    return None if found is None else root / str(found)


def link_run(store: Any, run: RunRecord, key: str, other_id: Any, other_uid: str | None) -> None:
    """Record on `run` its link `key` to run `other_id` (continued_as, superseded_by, supersedes), in the
    store's folder (the file store, or MongoDB's journal) and in MongoDB when the store is one."""
    fields = {key: other_id, f"{key}_uid": other_uid}
    uid = run.meta.get("run_uid")
    run_dir = _folder_of(Path(store.local_dir), run.id, uid)
    if run_dir is not None:
        _set_in_folder(run_dir, fields)
    if hasattr(store, "client") and uid is not None:
        try:
            store.client()[store.db_name]["runs"].update_one(
                {"meta.run_uid": uid}, {"$set": {f"meta.{k}": v for k, v in fields.items()}}
            )
        except Exception as exc:  # the database down: the journal has it, and sync pushes it
            print(
                f"warning: MongoDB did not take the link {key} of run {run.id} ({type(exc).__name__}); "
                "python -m runner sync pushes it later",
                file=sys.stderr,
            )


def supersede_lost_attempts(store: Any, source: Any, sweep_id: str, trial: int, rerun_id: Any) -> list[Any]:
    """A sweep's trial that ran again (its first attempt lost to a kill or an interruption) marks the attempts it
    replaced `superseded_by` itself, and itself `supersedes` them: resuming those would train the trial twice.
    Returns the ids of the attempts it marked."""
    from runner.tracking.listing import Query

    runs = source.records(Query.parse(limit=0, shorthands={"sweep": sweep_id}))
    rerun = next((r for r in runs if str(r.id) == str(rerun_id)), None)
    if rerun is None:
        return []
    lost = [
        r
        for r in runs
        if r.meta.get("trial") == trial
        and r.id != rerun.id
        and r.meta.get("superseded_by") is None
        and r.meta.get("continued_as") is None
        and (r.status == "INTERRUPTED" or r.liveness == "dead")
    ]
    for attempt in lost:
        link_run(store, attempt, "superseded_by", rerun.id, rerun.meta.get("run_uid"))
    if lost:
        link_run(store, rerun, "supersedes", lost[-1].id, lost[-1].meta.get("run_uid"))
    return [r.id for r in lost]
