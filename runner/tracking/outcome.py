"""What became of a run and what to do about it: the status a listing shows, why it ended, and the one action that
loses nothing and repeats nothing (or none).

Sacred records RUNNING, COMPLETED, FAILED or INTERRUPTED. A run killed outright stays RUNNING (shown DEAD once its
process is gone); a run whose trial a sweep ran again is SUPERSEDED; a run continued by `resume` keeps its
status and points to its continuation. The links between runs (LINKS) are stored in each run's meta data as
`<link>` (the other run's id in the store it was written in) and `<link>_uid` (its `run_uid`, the same in every
store): in a copy under other ids the uid finds the run (link_target; MongoDB's relink sets the ids right, the
run browser looks them up in a file store's index).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DEAD = "DEAD"  # what the run browser shows in place of RUNNING for a run whose process is gone
SUPERSEDED = "SUPERSEDED"  # what it shows for a run a later run replaced (a sweep's trial that ran again)

# Links from a run to another: (meta key, what it says). The first two are set on the earlier run afterwards.
LINKS = {
    "continued_as": "continued as {}",
    "superseded_by": "replaced by {}",
    "resumed_from": "resumed from {}",
    "supersedes": "ran again in place of {}",
    "reproduces": "reproduces {}",
    "reevaluates": "re-evaluates {}",
}
DISK_FULL_SIGNS = ("No space left on device", "[Errno 28]", "Disk quota exceeded", "[Errno 122]")


def failure_cause(fail_trace: Any) -> str | None:
    """A short cause read from a FAILED run's traceback, where it is one the user can act on."""
    text = "".join(fail_trace) if isinstance(fail_trace, list) else str(fail_trace or "")
    if any(sign in text for sign in DISK_FULL_SIGNS):
        return "the disk was full"
    return None


@dataclass(frozen=True)
class Elsewhere:
    """A linked run that is not in this store: no run here has its uid (copied without it, or not pushed yet)."""

    uid: str

    def __str__(self) -> str:
        return f"a run not in this store (run_uid {self.uid})"


def link_target(linked_id: Any, linked_uid: str | None, ids_by_uid: Mapping[str, Sequence[Any]]) -> Any:
    """The id in this store of the run a link names (None: no run here). The link carries that run's id in the store
    it was written in and its uid; copied into another store (pushed to MongoDB, copied by cp or rsync under other
    numbers) the id may name another run, so the uid decides: the run here with that uid (the id carried, when that
    one has it). A link written without a uid keeps its id. MongoDB's `relink` and the run browser both use this."""
    if linked_uid is None:
        return linked_id
    here = list(ids_by_uid.get(linked_uid) or ())
    if not here:
        return None
    return next((i for i in here if str(i) == str(linked_id)), here[0])


def link_uids(meta: dict[str, Any]) -> list[str]:
    """The uids of the runs a run's links name (a run's meta data, or a listing's row)."""
    return sorted({meta[f"{key}_uid"] for key in LINKS if meta.get(f"{key}_uid") is not None})


def links_of(meta: dict[str, Any], ids_by_uid: Mapping[str, Sequence[Any]] | None = None) -> dict[str, Any]:
    """The run's links: key -> the other run's id in this store, found by its uid where `ids_by_uid` (the ids this
    store has of those uids) is given; an Elsewhere when no run here has that uid, or the id is unknown."""
    links = {}
    for key in LINKS:
        linked_id, linked_uid = meta.get(key), meta.get(f"{key}_uid")
        if linked_id is None and linked_uid is None:
            continue
        if ids_by_uid is not None:
            linked_id = link_target(linked_id, linked_uid, ids_by_uid)
        links[key] = Elsewhere(linked_uid) if linked_id is None else linked_id
    return links


def named(linked: Any) -> str:
    """ "run 4", or "a run not in this store (run_uid ...)" """
    return str(linked) if isinstance(linked, Elsewhere) else f"run {linked}"


def shown_status(status: str, links: dict[str, Any], dead: bool) -> str:
    if links.get("superseded_by") is not None:
        return SUPERSEDED
    return DEAD if dead and status == "RUNNING" else status


def advice(run_id: Any, status: str, links: dict[str, Any], cause: str | None, dead: bool) -> str | None:
    """The one thing to do about a run (None: nothing). Never `resume` for a run that was continued or
    replaced: that would train its epochs a second time."""
    if links.get("continued_as") is not None:
        return f"nothing to do: continued as {named(links['continued_as'])}"
    if links.get("superseded_by") is not None:
        return f"nothing to do: its sweep trial ran again as {named(links['superseded_by'])}"
    resume = f"python -m runner resume {run_id}"
    if status == "RUNNING":
        return f"its process is gone (killed, or the machine went down); continue it: {resume}" if dead else None
    if status == "INTERRUPTED":
        return f"continue it: {resume}"
    if status == "FAILED" and cause == "the disk was full":
        return f"free space on that disk, then continue it: {resume}"
    if status == "FAILED":
        return f"read why with: python -m runner runs show {run_id}; once fixed, continue it: {resume}"
    if status == "TIMEOUT":
        return f"continue it: {resume}"
    return None


def describe_links(links: dict[str, Any]) -> str:
    """ "resumed from run 2, continued as run 4" """
    return ", ".join(LINKS[key].format(named(value)) for key, value in links.items())
