"""Omniboard, pinned in omniboard/package-lock.json, installed with `npm ci` and run as a child process.

Omniboard reads its database from a JSON file named by OMNIBOARD_CONFIG (written with mode 0600), so the
password never appears on a command line. It moves to the next port by itself when its port is taken;
the URL printed is the one it reports listening on. Omniboard itself would listen on every interface:
omniboard_preload.js binds it to 127.0.0.1 (or the host the user chose to expose it on, with a login that
reaches Omniboard through the environment, never its command line).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from dashboard.server import private_files, stop_with_parent, terminate
from odeflow.errors import UserError
from runner.tracking.stores import PROJECT_ROOT

NPM_PROJECT = PROJECT_ROOT / "omniboard"
ENTRY = NPM_PROJECT / "node_modules" / "omniboard" / "dist" / "start.js"
PRELOAD = Path(__file__).with_name("omniboard_preload.js")
LOOPBACK = "127.0.0.1"
INSTALLED_MARKER = NPM_PROJECT / "node_modules" / ".odeflow-lock.sha256"
INSTALL_LOCK = NPM_PROJECT / ".npm-install.lock"
LISTENING = re.compile(r"Omniboard is listening on port (\d+)")
CONNECTED = "established successfully"
NODE_FIX = (
    "install Node.js 18 or newer with npm (Debian/Ubuntu: apt-get install nodejs npm; macOS: brew install node; "
    "or the installer from the Node.js website), then run make dashboard again"
)


def version() -> str:
    return json.loads((NPM_PROJECT / "package.json").read_text())["dependencies"]["omniboard"]


def ensure_installed() -> None:
    """`npm ci` from the lockfile when node_modules is missing or was installed from another lockfile."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        missing = " and ".join(tool for tool in ("node", "npm") if shutil.which(tool) is None)
        raise UserError(f"the dashboard runs Omniboard on Node.js, and {missing} is not on PATH", NODE_FIX)
    lock_hash = hashlib.sha256((NPM_PROJECT / "package-lock.json").read_bytes()).hexdigest()
    if ENTRY.exists() and INSTALLED_MARKER.exists() and INSTALLED_MARKER.read_text() == lock_hash:
        return
    # Two dashboards (or test workers) starting at once on a fresh clone: npm ci into one node_modules at
    # the same time fails (ENOTEMPTY), so one installs and the other waits, then finds it installed.
    with open(INSTALL_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ENTRY.exists() and INSTALLED_MARKER.exists() and INSTALLED_MARKER.read_text() == lock_hash:
            return
        print(
            f"installing Omniboard {version()} with npm ci into {NPM_PROJECT / 'node_modules'} (about a minute, once)",
            flush=True,
        )
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NPM_PROJECT,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0 or not ENTRY.exists():
            raise UserError(
                f"npm ci failed in {NPM_PROJECT} (exit code {done.returncode}): {done.stderr.strip()[-600:]}",
                "check that the npm registry is reachable (npm ping), then run make dashboard again",
            )
        INSTALLED_MARKER.write_text(lock_hash)


class Omniboard:
    """An Omniboard process serving database `db_name` at `url` on `host`:`port` (127.0.0.1 unless exposed:
    then `login` = (user, password) is required by Omniboard's basic authentication)."""

    def __init__(
        self,
        mongo_url: str,
        db_name: str,
        port: int,
        work_dir: Path,
        host: str = LOOPBACK,
        login: tuple[str, str] | None = None,
    ) -> None:
        self.mongo_url, self.db_name, self.requested_port = mongo_url, db_name, port
        self.host, self.login = host, login
        self.work_dir = Path(work_dir).resolve()  # Omniboard require()s its config: a relative path would be its own
        self.log_file = self.work_dir / "omniboard.log"
        self.port: int | None = None
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        host = socket.gethostname() if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/{self.db_name}"

    def start(self, timeout: float = 60) -> Omniboard:
        with private_files():
            return self._start(timeout)

    def _start(self, timeout: float) -> Omniboard:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config = self.work_dir / "omniboard-config.json"
        config.touch(mode=0o600)
        config.chmod(0o600)
        config.write_text(
            json.dumps(
                {self.db_name: {"mongodbURI": _with_database(self.mongo_url, self.db_name), "path": f"/{self.db_name}"}}
            )
        )
        env = {
            **os.environ,
            "OMNIBOARD_CONFIG": str(config),
            "PORT": str(self.requested_port),
            "NODE_ENV": "production",
            "ODEFLOW_OMNIBOARD_HOST": self.host,
        }
        env.pop("ODEFLOW_OMNIBOARD_LOGIN", None)
        if self.login is not None:  # user:password:secret, Omniboard's format; the secret signs its sessions
            env["ODEFLOW_OMNIBOARD_LOGIN"] = ":".join([*self.login, secrets.token_urlsafe(32)])
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(
                ["node", "--require", str(PRELOAD), str(ENTRY)],
                cwd=self.work_dir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=stop_with_parent(owner=os.getpid()),
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            text = self.log_file.read_text(errors="replace")
            ports = LISTENING.findall(text)
            if ports and CONNECTED in text:
                self.port = int(ports[-1])
                return self
            time.sleep(0.1)
        self.stop()
        raise UserError(
            f"Omniboard did not come up: {self.log_file.read_text(errors='replace').strip()[-600:] or '(no output)'}",
            f"see {self.log_file}",
        )

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def request_stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 10) -> None:
        if self.process is not None:
            terminate(self.process, timeout)
            self.process = None


def _with_database(url: str, db_name: str) -> str:
    """mongodb://host:port/?opts -> mongodb://host:port/db?opts (Omniboard takes the database from the path)."""
    head, _, query = url.partition("?")
    head = head.rstrip("/")
    return f"{head}/{db_name}" + (f"?{query}" if query else "")
