"""A SecantusDB server (MongoDB wire protocol over WiredTiger) in a process of its own, on 127.0.0.1.

The parent starts it with `DatabaseServer(...).start()` and stops it with `.stop()` (SIGTERM: WiredTiger
closes cleanly, nothing is lost). Its own process, not threads of the caller, so that a test can kill it
with SIGKILL as a crash would, and so that training runs and Omniboard never wait on the caller's GIL.
A parent killed with SIGKILL gets its server stopped by the kernel's parent-death signal (Linux); the next
start finds a server still closing, or one left serving elsewhere, through a pid file beside the data folder.

Authentication: SecantusDB has no localhost exception, so the first start of a new data folder runs
once without authentication on a free port to create the user, stops, and then starts with
`require_auth` on the real port.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from odeflow.errors import UserError

READY = "secantus-ready"
CHECKPOINT_SECONDS = 5
USER_MARKER = "dashboard-user.json"  # beside the data folder: the user it was provisioned with (no password)


@contextlib.contextmanager
def private_files():
    """New files and folders (and those of child processes started meanwhile) readable by the user only."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def make_private(root: Path) -> int:
    """Take group and other permissions off `root` and everything in it (folders 0700, files 0600, as
    created now); returns how many needed it (made by an older version, or by hand)."""
    if not root.exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        root.mkdir(mode=0o700)
        return 0
    changed = 0
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode & 0o7777
        if mode & 0o077:
            path.chmod(mode & ~0o077)
            changed += 1
    return changed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether the server could listen on `port` (with SO_REUSEADDR, as it does: closed connections don't count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def mongo_url(port: int, user: str | None = None, password: str | None = None) -> str:
    if user is None:
        return f"mongodb://127.0.0.1:{port}/"
    quoted = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password or '', safe='')}"  # no '+': see masking
    return f"mongodb://{quoted}@127.0.0.1:{port}/?authSource=admin"


class DatabaseServer:
    """SecantusDB over `data_dir`, listening on 127.0.0.1:`port` (0: a free one), with SCRAM when `user` is set."""

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        user: str | None = None,
        password: str | None = None,
        sync_on_commit: bool = True,
        log_file: Path | None = None,
        cache_size: str = "256M",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.user, self.password = user, password
        self.sync_on_commit = sync_on_commit
        self.cache_size = cache_size  # WiredTiger's cache: what bounds the server's memory beyond Python's own
        self.log_file = Path(log_file) if log_file else self.data_dir.parent / f"{self.data_dir.name}.log"
        self.process: subprocess.Popen | None = None
        self.leftover_grace = 60.0  # seconds a leftover server gets to close WiredTiger before SIGKILL

    @property
    def url(self) -> str:
        return mongo_url(self.port, self.user, self.password)

    @property
    def pid_file(self) -> Path:
        """Beside the data folder: the server process that has it open, so that the next start can find a
        server a killed dashboard left behind (still closing, or still serving where no parent-death signal exists)."""
        return self.data_dir.parent / f"{self.data_dir.name}.pid"

    def _stop_leftover(self) -> None:
        """Stop the server a killed dashboard left on this data folder: SIGTERM, then SIGKILL after
        `leftover_grace` seconds. A kill loses nothing committed: the server fsyncs every commit."""
        found = leftover_server(self.pid_file, self.data_dir)
        if found is None:
            self.pid_file.unlink(missing_ok=True)
            return
        pid, owner = found
        if alive(owner):
            raise UserError(
                f"another process (pid {owner}, a dashboard or a test) serves {self.data_dir} with its "
                f"database server (pid {pid})",
                f"use that dashboard, or stop it first (Ctrl-C in its terminal, or kill {owner})",
            )
        print(
            f"stopping the database server a killed dashboard left on {self.data_dir} (pid {pid}; "
            f"up to {self.leftover_grace:.0f} s)...",
            file=sys.stderr,
            flush=True,
        )
        os.kill(pid, signal.SIGTERM)  # already stopping after its parent died: a second SIGTERM changes nothing
        deadline = time.monotonic() + self.leftover_grace
        while leftover_server(self.pid_file, self.data_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        if leftover_server(self.pid_file, self.data_dir):
            os.kill(pid, signal.SIGKILL)
            print(
                f"it did not stop within {self.leftover_grace:.0f} s: killed (every committed run is on disk: "
                "the server fsyncs each commit)",
                file=sys.stderr,
                flush=True,
            )
            while leftover_server(self.pid_file, self.data_dir):
                time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)

    def start(self, timeout: float = 60) -> DatabaseServer:
        with private_files():  # the data holds every run and the users (their password hashes)
            return self._start(timeout)

    def _start(self, timeout: float) -> DatabaseServer:
        self._stop_leftover()
        started = time.monotonic()
        while not port_is_free(self.port) and time.monotonic() < started + 5:  # a socket of ours still closing
            time.sleep(0.1)
        if not port_is_free(self.port):
            raise UserError(
                f"port {self.port} on 127.0.0.1 is taken (another MongoDB, `make up`, or a dashboard already running?)",
                "stop that server, or set MONGO_PORT (and the port in MONGO_URL) in .env to a free port",
            )
        marker = self.data_dir.parent / f"{self.data_dir.name}.{USER_MARKER}"
        if self.user is not None and not marker.exists():
            self._provision(marker, timeout)
        self.process = self._spawn(self.port, auth=self.user is not None, timeout=timeout)
        self._check_credentials()
        return self

    def request_stop(self) -> None:
        """SIGTERM now, without waiting: `stop` then waits (stopping several processes at once)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM: the server closes WiredTiger (a checkpoint) and exits."""
        if self.process is None:
            return
        terminate(self.process, timeout)
        self.process = None
        self.pid_file.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL, as a crash or power cut of the database host would (for tests)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
            self.pid_file.unlink(missing_ok=True)

    def __enter__(self) -> DatabaseServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self, port: int, auth: bool, timeout: float) -> subprocess.Popen:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "dashboard.server",
            "--port",
            str(port),
            "--data-dir",
            str(self.data_dir.resolve()),
            "--cache-size",
            self.cache_size,
        ]
        command += ["--auth"] * auth + ["--sync-on-commit"] * self.sync_on_commit
        log = self.log_file.open("ab")
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal reaches the parent only; it stops us in order
            preexec_fn=stop_with_parent(owner=os.getpid()),
            # WiredTiger checkpoints this often (SecantusDB's default: 60 s), so that a stop writes at most a
            # few seconds of changes, and the log a restart after a kill replays is as short
            env={**os.environ, "SECANTUS_CHECKPOINT_SECONDS": str(CHECKPOINT_SECONDS)},
        )
        log.close()
        self.pid_file.write_text(json.dumps({"pid": process.pid, "owner": os.getpid()}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 0.2)
            if ready and process.stdout.readline().decode().strip() == READY:
                return process
            if process.poll() is not None:
                raise UserError(
                    f"the database server did not start (exit code {process.returncode}): {_tail(self.log_file)}",
                    f"see {self.log_file}; if another process holds {self.data_dir}, stop it first",
                )
        terminate(process, 5)
        raise UserError(f"the database server did not answer within {timeout:.0f} s", f"see {self.log_file}")

    def _provision(self, marker: Path, timeout: float) -> None:
        import pymongo

        port = free_port()
        process = self._spawn(port, auth=False, timeout=timeout)
        try:
            client = pymongo.MongoClient(mongo_url(port), serverSelectionTimeoutMS=5000)
            if not client.admin.command("usersInfo", self.user)["users"]:
                client.admin.command(
                    "createUser", self.user, pwd=self.password, roles=[{"role": "root", "db": "admin"}]
                )
            client.close()
        finally:
            terminate(process, timeout)
            self.pid_file.unlink(missing_ok=True)
        marker.write_text(json.dumps({"user": self.user}))

    def _check_credentials(self) -> None:
        import pymongo
        import pymongo.errors

        client = pymongo.MongoClient(self.url, serverSelectionTimeoutMS=5000)
        try:
            client.admin.command("ping")
            client.list_database_names()  # needs authentication: ping does not
        except pymongo.errors.OperationFailure as exc:
            self.stop()
            raise UserError(
                f"the dashboard database {self.data_dir} refuses user {self.user!r} "
                f"({exc.details.get('errmsg', exc)}): it was created with other credentials",
                "put the earlier MONGO_USER/MONGO_PASSWORD back in .env, or delete that folder "
                "(make dashboard pushes every run again from runs/store and runs/journal)",
            ) from None
        finally:
            client.close()


def leftover_server(pid_file: Path, data_dir: Path) -> tuple[int, int] | None:
    """(server pid, owner pid) from `pid_file` if that server is alive and is ours on `data_dir` (not a reused pid)."""
    try:
        record = json.loads(pid_file.read_text())
        pid, owner = int(record["pid"]), int(record["owner"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (pid, owner) if alive(pid, ["dashboard.server", str(data_dir.resolve())]) else None


def alive(pid: int, command_words: list[str] = ()) -> bool:
    """Whether process `pid` runs (a zombie nobody reaped does not) with each of `command_words` in its command line
    (checked on Linux only: elsewhere a live pid is enough)."""
    proc = Path(f"/proc/{pid}")
    if proc.parent.exists():
        try:
            command = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state != "Z" and all(word in command for word in command_words)
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def stop_with_parent(owner: int) -> Callable[[], None]:
    """For Popen's preexec_fn, in the child between fork and exec: SIGTERM when `owner` (the process starting it)
    dies, however it dies (kill -9 included), so the database closes cleanly and frees its port. An owner that
    died before the child asked (a signal that ended it in that moment) leaves the child to init: it stops at
    once. Linux only; elsewhere children outlive a killed owner."""

    def in_child() -> None:
        if sys.platform.startswith("linux"):
            import ctypes

            PR_SET_PDEATHSIG = 1
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != owner:
                os.kill(os.getpid(), signal.SIGTERM)

    return in_child


def terminate(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within `timeout` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout:
        process.stdout.close()


def _tail(path: Path, lines: int = 5) -> str:
    text = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return " | ".join(text[-lines:]) or "(no output)"


def serve(port: int, data_dir: Path, auth: bool, sync_on_commit: bool, cache_size: str = "256M") -> None:
    """The server process: start, say READY on stdout, stop cleanly on SIGTERM or SIGINT."""
    from secantus import SecantusDBServer

    server = SecantusDBServer(
        host="127.0.0.1",
        port=port,
        storage_path=str(data_dir),
        require_auth=auth,
        replica_set_name=None,  # a plain standalone server: what Omniboard's driver expects
        enable_test_commands=False,
        sync_on_commit=sync_on_commit,
        cache_size=cache_size,
    )
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    server.start()
    print(READY, flush=True)
    while not stopping.wait(0.1):  # a timeout: a signal that reached another thread is still seen
        pass
    server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dashboard.server", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--auth", action="store_true")
    parser.add_argument("--sync-on-commit", action="store_true")
    parser.add_argument("--cache-size", default="256M")
    args = parser.parse_args(argv)
    serve(args.port, args.data_dir, args.auth, args.sync_on_commit, args.cache_size)


if __name__ == "__main__":
    main()
