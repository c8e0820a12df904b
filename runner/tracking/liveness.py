"""Whether a run marked RUNNING is alive: a run killed with SIGKILL, or by a power loss, never records how
it ended, so its status stays RUNNING. Its process (pid and host, in the run's meta and host info) and its
heartbeat (Sacred writes one every 10 s while the run lives) tell the two apart."""

from __future__ import annotations

import datetime as dt
import os
import socket
from typing import Any

import pandas as pd

STALE_AFTER_S = 300  # no heartbeat for this long: the run is not alive (Sacred beats every 10 s)
DEAD = "DEAD"  # what the run browser shows in place of RUNNING for such a run


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def heartbeat_age(heartbeat: Any, now: dt.datetime | None = None) -> float | None:
    """Seconds since the run's last heartbeat (Sacred writes UTC times), None when it has none."""
    if not heartbeat:
        return None
    try:
        beat = pd.Timestamp(heartbeat)
    except (TypeError, ValueError):
        return None
    beat = beat.tz_convert(None) if beat.tzinfo is not None else beat
    now = now or dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    return (pd.Timestamp(now) - beat).total_seconds()


def owner(meta: dict[str, Any], host: dict[str, Any]) -> str:
    """ "pid 123 on host-a", as far as the run recorded it."""
    pid, hostname = meta.get("pid"), host.get("hostname")
    return " on ".join(x for x in (f"pid {pid}" if pid else None, hostname) if x) or "an unknown process"


def liveness(status: str, meta: dict[str, Any], host: dict[str, Any], heartbeat: Any) -> str | None:
    """For a RUNNING run: "dead" when its process is gone (this host) or its heartbeat stopped (any host),
    "alive" when its process is there or its heartbeat is recent, "unknown" otherwise; None for other runs."""
    if status != "RUNNING":
        return None
    pid, age = meta.get("pid"), heartbeat_age(heartbeat)
    if pid and host.get("hostname") == socket.gethostname():
        if not _pid_alive(int(pid)):
            return "dead"
        return "dead" if age is not None and age > STALE_AFTER_S else "alive"  # a stale beat: a reused pid
    if age is None:
        return "unknown"
    return "dead" if age > STALE_AFTER_S else "alive"
