"""The test Slurm (tests/slurm_cluster.py) listens on loopback only and ends with the process that started it."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT
from tests.slurm_cluster import missing_binaries

DAEMONS = ("slurmctld", "slurmd", "slurmdbd", "mariadb", "munge/munged")
OWNER = """
import sys, time
from pathlib import Path
from tests.slurm_cluster import Cluster, ClusterUnavailable
try:
    Cluster(Path(sys.argv[1])).start()
except ClusterUnavailable as exc:
    print("unavailable:", exc, flush=True)
    sys.exit(3)
print("up", flush=True)
time.sleep(600)
"""


def daemon_pids(root: Path) -> dict[str, int]:
    files = {name: root / (f"{name}.pid" if "/" in name else f"run/{name}.pid") for name in DAEMONS}
    return {name: int(path.read_text()) for name, path in files.items() if path.exists()}


@pytest.mark.skipif(bool(missing_binaries()) or sys.platform != "linux", reason="needs Slurm, munge and MariaDB")
def test_the_cluster_listens_on_loopback_only_and_stops_when_its_owner_is_killed():
    tmp_path = Path(tempfile.mkdtemp(prefix="odeflow-slurm-"))  # not under pytest's 0700 folders: munge enters it
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = owner.stdout.readline()
        if line.startswith("unavailable:") or owner.poll() == 3:
            pytest.skip(line.strip())
        assert line.strip() == "up", line
        daemons = {name: psutil.Process(pid) for name, pid in daemon_pids(tmp_path).items()}
        assert len(daemons) == len(DAEMONS), daemons
        listening = {
            name: [c.laddr.ip for c in process.net_connections("inet") if c.status == psutil.CONN_LISTEN]
            for name, process in daemons.items()
        }
        assert all(listening[name] for name in ("slurmctld", "slurmd", "slurmdbd", "mariadb")), listening
        if socket.gethostbyname(socket.gethostname()).startswith("127."):  # NoInAddrAny binds to the host's name
            assert all(ip == "127.0.0.1" for ips in listening.values() for ip in ips), listening
        owner.send_signal(signal.SIGKILL)  # no chance to stop anything itself
        owner.wait()
        started = time.monotonic()
        _, alive = psutil.wait_procs(list(daemons.values()), timeout=60)
        assert not alive, [p.name() for p in alive]
        print(f"cluster gone {time.monotonic() - started:.1f} s after its owner's death")
    finally:
        if owner.poll() is None:
            owner.kill()
        subprocess.run([sys.executable, "tests/slurm_cluster.py", "stop", str(tmp_path)], cwd=ROOT, timeout=120)
        shutil.rmtree(tmp_path, ignore_errors=True)
