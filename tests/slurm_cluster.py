"""A real single-node Slurm (slurmctld, slurmd, slurmdbd on MariaDB, munge) for the tests, started on loopback.

Everything lives under one temporary folder: its own munge key and socket, its own MariaDB data folder,
its own `slurm.conf` on free ports with its own cluster name, state and pid files. Commands reach it through
`SLURM_CONF` (see `Cluster.env`), so a Slurm the machine already has is neither read nor touched. The node
offers what `slurmd -C` finds plus one fake GPU (`gres.conf` File=/dev/null) for the GPU preset's checks.

    python tests/slurm_cluster.py install     # the Debian packages, when missing (root and apt-get only)
    python tests/slurm_cluster.py start DIR   # start a cluster in DIR, print `export SLURM_CONF=...`
    python tests/slurm_cluster.py stop DIR    # stop it by the pids in its pid files
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "slurmdbd", "munge", "mariadb-server"]
BINARIES = ["slurmctld", "slurmd", "slurmdbd", "sbatch", "sacct", "sacctmgr", "munged", "mariadbd"]
CLUSTER_NAME = "odeflowtest"
NODE_NAME = "odeflow-node"
PARTITION = "debug"
DEF_MEM_PER_CPU_MB = 1024  # without it each job takes the node's whole memory and jobs run one at a time
DB_USER, DB_PASSWORD = "slurm", "odeflow-test"


class ClusterUnavailable(RuntimeError):
    """This machine cannot run the test cluster (not root, no apt-get, a daemon that does not start)."""


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


def install_packages() -> None:
    """Install the Debian packages when a binary is missing; needs root and apt-get."""
    if not missing_binaries():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ClusterUnavailable(
            f"Slurm is not installed ({', '.join(missing_binaries())} missing) and this is not root with apt-get: "
            f"install {' '.join(PACKAGES)}"
        )
    print(f"installing {' '.join(PACKAGES)} for the test Slurm (about 20 s)", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise ClusterUnavailable(f"{' '.join(command)} failed: {done.stderr.strip()[-500:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chown(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def _run(command: list[str], timeout: float = 60, **kwargs) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if done.returncode != 0:
        raise ClusterUnavailable(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return done.stdout


def _wait(what: str, ready, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-1500:] if log is not None and log.exists() else ""
    raise ClusterUnavailable(f"{what} not ready after {timeout:.0f} s\n{tail}")


def node_hardware() -> str:
    """`slurmd -C`'s node line without its name: CPUs, sockets, cores, threads, memory."""
    line = _run(["slurmd", "-C"]).splitlines()[0]
    return " ".join(word for word in line.split() if not word.startswith("NodeName="))


@dataclass
class Cluster:
    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def command(self, *args: str, timeout: float = 30) -> str:
        """A Slurm client command (sinfo, scontrol, sacct, ...) against this cluster."""
        return _run(list(args), timeout=timeout, env={**os.environ, **self.env()})

    # -- start --
    def start(self, timeout: float = 60, with_owner: bool = True) -> Cluster:
        """Start the daemons; `with_owner`: they stop when this process ends, however it ends (kill -9 included)."""
        install_packages()
        if os.geteuid() != 0:
            raise ClusterUnavailable("the test cluster runs its daemons as root (munge, MariaDB and Slurm users)")
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # the munge and mysql users traverse it
        for name in ("etc", "state", "spool", "log", "run"):
            (self.root / name).mkdir(exist_ok=True)
        ports = {name: free_port() for name in ("ctld", "slurmd", "dbd", "mysql")}
        try:
            self._start_munge()
            self._start_mariadb(ports["mysql"])
            self._write_configs(ports)
            self._start_slurmdbd(ports["dbd"])
            self._daemon("slurmctld", "slurmctld.pid", ["slurmctld", "-f", str(self.conf)])
            self._daemon("slurmd", "slurmd.pid", ["slurmd", "-f", str(self.conf), "-N", NODE_NAME])
            _wait("the Slurm node", self._node_idle, timeout, self.root / "log" / "slurmctld.log")
            if with_owner:
                self._guard()
        except BaseException:
            self.stop()
            raise
        return self

    def _guard(self) -> None:
        """A process that stops the cluster when this one dies: the daemons fork away from their starter, so no
        parent-death signal of theirs can be tied to it; the guard's is (see guard())."""
        owner = os.getpid()
        with (self.root / "log" / "guard.log").open("ab") as log:
            subprocess.Popen(
                [sys.executable, __file__, "guard", str(self.root), str(owner)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=lambda: _signal_when_parent_dies(owner),
            )
        _wait("the cluster's guard", (self.root / "run" / "guard.pid").exists, 30)

    def _start_munge(self) -> None:
        munge = self.root / "munge"
        munge.mkdir(exist_ok=True)
        munge.chmod(0o755)  # clients need to reach the socket; the key stays 0400
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        for path in (munge, key):
            _chown(path, "munge")
        self._daemon(
            "munged",
            "munge/munged.pid",
            [
                "munged",
                f"--socket={munge / 'munge.socket'}",
                f"--key-file={key}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--log-file={munge / 'munged.log'}",
                f"--seed-file={munge / 'munged.seed'}",
            ],
            user="munge",
        )

    def _start_mariadb(self, port: int) -> None:
        data = self.root / "mysql"
        data.mkdir(exist_ok=True)
        _chown(data, "mysql")
        _run(["mariadb-install-db", "--user=mysql", f"--datadir={data}", "--skip-test-db"], timeout=120)
        sock = data / "mysqld.sock"
        log = self.root / "log" / "mariadb.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                [
                    "mariadbd",
                    "--no-defaults",
                    "--user=mysql",
                    f"--datadir={data}",
                    f"--socket={sock}",
                    f"--port={port}",
                    "--bind-address=127.0.0.1",
                    f"--pid-file={data / 'mariadb.pid'}",
                    "--innodb-buffer-pool-size=64M",
                    "--skip-log-bin",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (self.root / "run" / "mariadb.pid").write_text(str(process.pid))
        _wait("MariaDB", sock.exists, 60, log)
        sql = (
            f"CREATE USER IF NOT EXISTS '{DB_USER}'@'127.0.0.1' IDENTIFIED BY '{DB_PASSWORD}';"
            f"GRANT ALL ON *.* TO '{DB_USER}'@'127.0.0.1';"
        )
        _run(["mariadb", f"--socket={sock}", "-uroot", "-e", sql])

    def _write_configs(self, ports: dict[str, int]) -> None:
        etc, munge_socket = self.root / "etc", self.root / "munge" / "munge.socket"
        host = socket.gethostname().split(".")[0]
        auth = f"AuthInfo=socket={munge_socket}"
        self.conf.write_text(
            "\n".join(
                [
                    f"ClusterName={CLUSTER_NAME}",
                    f"SlurmctldHost={host}(127.0.0.1)",
                    f"SlurmctldPort={ports['ctld']}",
                    f"SlurmdPort={ports['slurmd']}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    auth,
                    f"StateSaveLocation={self.root / 'state'}",
                    f"SlurmdSpoolDir={self.root / 'spool'}",
                    f"SlurmctldPidFile={self.root / 'run' / 'slurmctld.pid'}",
                    f"SlurmdPidFile={self.root / 'run' / 'slurmd.pid'}",
                    f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={self.root / 'log' / 'slurmd.log'}",
                    "ProctrackType=proctrack/linuxproc",  # no cgroups needed
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core_Memory",
                    f"DefMemPerCPU={DEF_MEM_PER_CPU_MB}",
                    "SchedulerType=sched/backfill",
                    "SchedulerParameters=sched_interval=2",
                    "ReturnToService=2",
                    "MpiDefault=none",
                    "JobAcctGatherType=jobacct_gather/none",
                    # Each daemon binds to the address the host name resolves to, not to every interface: on a
                    # machine whose name resolves to 127.0.0.1 (see loopback_host) that is loopback only.
                    "CommunicationParameters=NoInAddrAny,NoCtldInAddrAny",
                    "AccountingStorageType=accounting_storage/slurmdbd",
                    "AccountingStorageHost=127.0.0.1",
                    f"AccountingStoragePort={ports['dbd']}",
                    f"AccountingStoragePass={munge_socket}",  # the munge socket for slurmdbd connections
                    "GresTypes=gpu",
                    "KillWait=2",  # SIGTERM to SIGKILL on scancel and time limits (default 30 s)
                    "OverTimeLimit=0",
                    "InactiveLimit=0",
                    "MinJobAge=600",
                    "SlurmctldTimeout=30",
                    "SlurmdTimeout=30",
                    f"NodeName={NODE_NAME} NodeHostname={host} NodeAddr=127.0.0.1 {node_hardware()} "
                    "Gres=gpu:1 State=UNKNOWN",
                    f"PartitionName={PARTITION} Nodes={NODE_NAME} Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        (etc / "gres.conf").write_text(f"NodeName={NODE_NAME} Name=gpu File=/dev/null\n")
        dbd = etc / "slurmdbd.conf"
        dbd.write_text(
            "\n".join(
                [
                    "AuthType=auth/munge",
                    auth,
                    "DbdHost=localhost",
                    "DbdAddr=127.0.0.1",
                    "CommunicationParameters=NoInAddrAny",
                    f"DbdPort={ports['dbd']}",
                    "SlurmUser=root",
                    f"PidFile={self.root / 'run' / 'slurmdbd.pid'}",
                    f"LogFile={self.root / 'log' / 'slurmdbd.log'}",
                    "StorageType=accounting_storage/mysql",
                    "StorageHost=127.0.0.1",
                    f"StoragePort={ports['mysql']}",
                    f"StorageUser={DB_USER}",
                    f"StoragePass={DB_PASSWORD}",
                    "StorageLoc=slurm_acct_db",
                    "",
                ]
            )
        )
        dbd.chmod(0o600)

    def _start_slurmdbd(self, port: int) -> None:
        # slurmdbd reads slurmdbd.conf from the folder of SLURM_CONF
        self._daemon("slurmdbd", "slurmdbd.pid", ["slurmdbd"])

        def registered() -> bool:
            done = subprocess.run(
                ["sacctmgr", "-i", "add", "cluster", CLUSTER_NAME],
                capture_output=True,
                text=True,
                timeout=30,
                env={**os.environ, **self.env()},
            )
            return done.returncode == 0 or "already exists" in (done.stdout + done.stderr)

        _wait("slurmdbd", registered, 60, self.root / "log" / "slurmdbd.log")

    def restart_controller(self, timeout: float = 60) -> None:
        """Stop slurmctld by its pid and start it again: it reads the nodes afresh from slurm.conf (after
        `scontrol update NodeName=... Gres=gpu:0`, `scontrol reconfigure` shows the GPU back in sinfo, yet
        refuses every job asking for it: "Requested node configuration is not available")."""
        pid_file = self.root / "run" / "slurmctld.pid"
        pid = int(pid_file.read_text().strip())
        if pid > 1:  # 0 and -1 would signal a whole process group, or every process
            os.kill(pid, signal.SIGTERM)
            _wait("slurmctld to stop", lambda: not Path(f"/proc/{pid}").exists(), 30)
        pid_file.unlink(missing_ok=True)
        self._daemon("slurmctld", "slurmctld.pid", ["slurmctld", "-f", str(self.conf)])
        _wait("the Slurm node", self._node_idle, timeout, self.root / "log" / "slurmctld.log")

    def _daemon(self, name: str, pid_file: str, command: list[str], user: str | None = None) -> None:
        """Start a daemon that forks into the background and writes its pid file; wait for the pid file."""
        path = pid_file if "/" in pid_file else f"run/{pid_file}"
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **self.env()},
            user=user,
            start_new_session=True,
        )
        if done.returncode != 0:
            raise ClusterUnavailable(f"{name} did not start: {(done.stderr or done.stdout).strip()[-800:]}")
        _wait(name, lambda: (self.root / path).exists() and (self.root / path).read_text().strip() != "", 30)

    def _node_idle(self) -> bool:
        try:
            state = self.command("sinfo", "-h", "-n", NODE_NAME, "-o", "%T", timeout=10).strip()
        except (ClusterUnavailable, subprocess.TimeoutExpired):
            return False
        return state == "idle"

    # -- stop --
    def stop(self) -> None:
        """Stop every daemon by the pid in its pid file (Slurm first, then its database and munge)."""
        for pid_file in (
            "run/guard.pid",  # first: stopped by its owner, it leaves the rest to this
            "run/slurmd.pid",
            "run/slurmctld.pid",
            "run/slurmdbd.pid",
            "run/mariadb.pid",
            "munge/munged.pid",
        ):
            path = self.root / pid_file
            try:
                pid = int(path.read_text().strip())
            except (OSError, ValueError):
                continue
            if pid <= 1:  # 0 and -1 would signal a whole process group, or every process
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                path.unlink(missing_ok=True)
                continue
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # reap it if it is our child (MariaDB)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and " Z " not in Path(f"/proc/{pid}/stat").read_text()


def _signal_when_parent_dies(owner: int) -> None:
    """In a child between fork and exec: SIGTERM when `owner` dies (now, if it died before this)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != owner:
        os.kill(os.getpid(), signal.SIGTERM)


def guard(root: Path, owner: int) -> None:
    """Wait; on SIGTERM, stop the cluster if its owner is gone (the parent-death signal), else just exit."""

    def on_sigterm(*_) -> None:
        if os.getppid() != owner:
            print(f"owner {owner} gone: stopping the cluster in {root}", flush=True)
            (root / "run" / "guard.pid").unlink(missing_ok=True)  # stop() signals the guard: not itself
            Cluster(root).stop()
        os._exit(0)

    signal.signal(signal.SIGTERM, on_sigterm)
    (root / "run" / "guard.pid").write_text(str(os.getpid()))
    while True:
        signal.pause()


def main(argv: list[str]) -> int:
    if argv[:1] == ["install"]:
        install_packages()
        return 0
    if len(argv) == 3 and argv[0] == "guard":
        guard(Path(argv[1]), int(argv[2]))
    if len(argv) == 2 and argv[0] in ("start", "stop"):
        cluster = Cluster(Path(argv[1]).resolve())
        if argv[0] == "start":
            cluster.start(with_owner=False)  # it outlives this command, until `stop`
            print(f"export SLURM_CONF={cluster.conf}")
        else:
            cluster.stop()
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
