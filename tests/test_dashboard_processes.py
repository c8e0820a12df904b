"""What the dashboard starts (its database server, Omniboard) listens on 127.0.0.1 only and ends with its owner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from dashboard.server import stop_with_parent
from tests.conftest import ROOT
from tests.test_dashboard import dashboard_env, start_dashboard  # noqa: F401 (a fixture)


def test_everything_the_dashboard_starts_listens_on_loopback_and_ends_within_2_s_of_its_sigterm(dashboard_env):  # noqa: F811
    proc, _ = start_dashboard(dashboard_env, "--no-omniboard")
    children = psutil.Process(proc.pid).children(recursive=True)
    assert any("dashboard.server" in " ".join(child.cmdline()) for child in children)
    listening = [c.laddr for child in children for c in child.net_connections("inet") if c.status == "LISTEN"]
    assert listening and all(address.ip == "127.0.0.1" for address in listening), listening
    proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(children, timeout=2)
    assert not alive, [child.cmdline() for child in alive]
    assert proc.wait(10) == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_child_whose_owner_died_before_it_could_ask_for_the_parent_death_signal_stops_at_once():
    # The moment between fork and prctl: the owner (here, a pid that is not the child's parent) is already gone.
    child = subprocess.Popen(["sleep", "30"], preexec_fn=stop_with_parent(owner=os.getpid() + 10**6))
    started = time.monotonic()
    assert child.wait(5) == -signal.SIGTERM and time.monotonic() - started < 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_child_stops_when_its_owner_is_killed():
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, subprocess, sys, time; from dashboard.server import stop_with_parent; "
            "child = subprocess.Popen(['sleep', '30'], preexec_fn=stop_with_parent(owner=os.getpid())); "
            "print(child.pid, flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    child = psutil.Process(int(owner.stdout.readline()))
    owner.kill()
    owner.wait()
    _, alive = psutil.wait_procs([child], timeout=2)
    assert not alive
