"""What became of a run and what to do about it: the status a listing shows, why it ended, and the one action that
loses nothing and repeats nothing (or none).

Sacred records RUNNING, COMPLETED, FAILED or INTERRUPTED. A run killed outright stays RUNNING (shown DEAD once its
process is gone); a run whose trial a sweep ran again is SUPERSEDED; a run continued by `resume` keeps its
status and points to its continuation. The links between runs (LINKS) are stored in each run's meta data as
`<link>` (the other run's id in this store) and `<link>_uid` (its `run_uid`, the same in every store), so a
copy under other ids can set the ids right again (runner.tracking.mongo.relink).
"""

from __future__ import annotations

from typing import Any

DEAD = "DEAD"  # what the run browser shows in place of RUNNING for a run whose process is gone
SUPERSEDED = "SUPERSEDED"  # what it shows for a run a later run replaced (a sweep's trial that ran again)

# Links from a run to another: (meta key, what it says). The first two are set on the earlier run afterwards.
LINKS = {
    "continued_as": "continued as run {}",
    "superseded_by": "replaced by run {}",
    "resumed_from": "resumed from run {}",
    "supersedes": "ran again in place of run {}",
    "reproduces": "reproduces run {}",
    "reevaluates": "re-evaluates run {}",
}
DISK_FULL_SIGNS = ("No space left on device", "[Errno 28]", "Disk quota exceeded", "[Errno 122]")


def failure_cause(fail_trace: Any) -> str | None:
    """A short cause read from a FAILED run's traceback, where it is one the user can act on."""
    text = "".join(fail_trace) if isinstance(fail_trace, list) else str(fail_trace or "")
    if any(sign in text for sign in DISK_FULL_SIGNS):
        return "the disk was full"
    return None


def links_of(meta: dict[str, Any]) -> dict[str, Any]:
    """The run's links that name a run in this store: key -> the other run's id."""
    return {key: meta[key] for key in LINKS if meta.get(key) is not None}


def shown_status(status: str, links: dict[str, Any], dead: bool) -> str:
    if links.get("superseded_by") is not None:
        return SUPERSEDED
    return DEAD if dead and status == "RUNNING" else status


def advice(run_id: Any, status: str, links: dict[str, Any], cause: str | None, dead: bool) -> str | None:
    """The one thing to do about a run (None: nothing). Never `resume` for a run that was continued or
    replaced: that would train its epochs a second time."""
    if links.get("continued_as") is not None:
        return f"nothing to do: continued as run {links['continued_as']}"
    if links.get("superseded_by") is not None:
        return f"nothing to do: its sweep trial ran again as run {links['superseded_by']}"
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
    return ", ".join(LINKS[key].format(value) for key, value in links.items())
