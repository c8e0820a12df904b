"""`python -m dashboard [overrides]` (`make dashboard`): the runs in a local MongoDB-compatible server and Omniboard.

Runs in the foreground like `mlflow ui`; Ctrl-C or SIGTERM stops Omniboard, then the database (cleanly:
nothing is lost), and the next start shows the same runs. Overrides such as `paths.runs=DIR` or
`tracking.db_name=NAME` select the runs exactly as they do for `python -m runner`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import signal
import sys
import threading
import time
from pathlib import Path

from odeflow.errors import UserError
from runner.tracking.masking import mask_url
from runner.tracking.stores import (
    NEW_PASSWORD_COMMAND,
    PLACEHOLDER_PASSWORD,
    PROJECT_ROOT,
    check_not_placeholder,
    env_file,
)

ENV_EXAMPLE = PROJECT_ROOT / ".env.example"
EXAMPLE_PASSWORD = PLACEHOLDER_PASSWORD
STOP_GRACE = 0.5  # seconds the copy gets to finish its batch when the dashboard stops
SERVER_STOP_GRACE = 1.2  # seconds the database server gets to close cleanly when the dashboard stops
DEFAULT_DB_CACHE = "256M"  # the database server's cache (WiredTiger's cache_size): its memory beyond Python's
TUNNEL_FIX = (
    "or keep the default (127.0.0.1) and reach it through an SSH tunnel: ssh -L 9000:127.0.0.1:9000 <this host>"
)


def credentials() -> dict[str, str]:
    """MONGO_USER, MONGO_PASSWORD, MONGO_PORT, OMNIBOARD_PORT from the environment, else .env (created from
    .env.example with a random password when there is none)."""
    from runner.tracking.env_file import read_env_file

    path = env_file()
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(ENV_EXAMPLE.read_text().replace(EXAMPLE_PASSWORD, secrets.token_urlsafe(24)))
        print(f"created {path} with a random MongoDB password (the runner and make read it from there)")
    elif path.stat().st_mode & 0o077:
        path.chmod(0o600)
        print(f"made {path} readable by you only (mode 0600): it holds the database password")
    values = {
        **read_env_file(path),
        **{k: v for k, v in os.environ.items() if k.startswith(("MONGO_", "OMNIBOARD_", "DASHBOARD_"))},
    }
    missing = [k for k in ("MONGO_USER", "MONGO_PASSWORD") if not values.get(k)]
    if missing:
        raise UserError(
            f"{' and '.join(missing)} not set in {path}", f"copy the lines from {ENV_EXAMPLE.name} and set them"
        )
    check_not_placeholder(values["MONGO_PASSWORD"], f"MONGO_PASSWORD in {path}")
    for key, default in (("MONGO_PORT", "27017"), ("OMNIBOARD_PORT", "9000")):
        value = values.get(key) or default
        if not value.isdigit() or not 0 < int(value) < 65536:
            raise UserError(
                f"{key}={value!r} in {path} is not a port number", f"set {key} to a free port, e.g. {default}"
            )
        values[key] = value
    values["OMNIBOARD_HOST"] = values.get("OMNIBOARD_HOST") or "127.0.0.1"
    values["DASHBOARD_DB_CACHE"] = cache = (values.get("DASHBOARD_DB_CACHE") or DEFAULT_DB_CACHE).upper()
    if not re.fullmatch(r"[1-9][0-9]*[MG]", cache):
        raise UserError(
            f"DASHBOARD_DB_CACHE={cache!r} in {path} is not a size", "set it to megabytes or gigabytes, e.g. 256M or 1G"
        )
    omniboard_login(values, path)
    return values


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def omniboard_login(values: dict[str, str], path: Path) -> tuple[str, str] | None:
    """(user, password) for Omniboard's login: used when set (other users of this machine reach 127.0.0.1 too),
    required when OMNIBOARD_HOST exposes Omniboard beyond this machine."""
    host = values["OMNIBOARD_HOST"]
    user, password = values.get("OMNIBOARD_USER"), values.get("OMNIBOARD_PASSWORD")
    if not user and not password and is_loopback(host):
        return None
    if not user or not password:
        raise UserError(
            f"OMNIBOARD_HOST={host} exposes Omniboard (every run's config and output) beyond this machine, "
            "and no login is set"
            if not is_loopback(host)
            else f"only one of OMNIBOARD_USER and OMNIBOARD_PASSWORD is set in {path}",
            f"set OMNIBOARD_USER and OMNIBOARD_PASSWORD in {path} (a password: {NEW_PASSWORD_COMMAND}), " + TUNNEL_FIX,
        )
    if ":" in user or ":" in password:
        raise UserError(
            "OMNIBOARD_USER and OMNIBOARD_PASSWORD may not contain ':' (Omniboard's login splits on it)",
            f"choose others in {path}, e.g. a password from {NEW_PASSWORD_COMMAND}",
        )
    check_not_placeholder(password, f"OMNIBOARD_PASSWORD in {path}")
    return user, password


def say(line: str) -> None:
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    from runner.cli import CommandParser  # argparse's refusals in one line with the fix

    parser = CommandParser(prog="python -m dashboard", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. paths.runs=DIR tracking.db_name=NAME")
    parser.add_argument("--no-omniboard", action="store_true", help="only the database (runs copied), no Omniboard")
    try:
        args = parser.parse_args(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop, starting = threading.Event(), threading.Event()
    starting.set()

    def on_signal(*_) -> None:
        stop.set()
        if starting.is_set():  # still starting up (waiting on the database or Omniboard): cut it short
            starting.clear()
            raise Stopped

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        return serve(args.overrides, stop, with_omniboard=not args.no_omniboard, starting=starting)
    except Stopped:
        print("dashboard stopped while starting", flush=True)
        return 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


class Stopped(Exception):
    """SIGINT or SIGTERM while the dashboard starts."""


def serve(
    overrides: list[str], stop: threading.Event, with_omniboard: bool = True, starting: threading.Event | None = None
) -> int:
    """Start the database and Omniboard, copy the runs in the background, and wait until `stop` is set.

    `starting` is cleared once the dashboard serves (a signal then only sets `stop`)."""
    import pymongo

    from dashboard.columns import seed_omniboard
    from dashboard.copy import Copier
    from dashboard.omniboard import Omniboard, ensure_installed, version
    from dashboard.server import DatabaseServer, make_private, mongo_url
    from runner.cli import load_store

    started = time.monotonic()
    if with_omniboard:
        ensure_installed()  # before the database starts: a missing Node.js is the commonest first error
    env = credentials()
    mongo = load_store(["tracking=mongo", *overrides])
    files = load_store(["tracking=file", *[o for o in overrides if not o.startswith("tracking")]])
    runs_root = files.local_dir.parent.resolve()
    opened = make_private(runs_root / "dashboard")
    if opened:
        print(
            f"made {runs_root / 'dashboard'} private to you (folders 0700, files 0600): {opened} of its files and "
            "folders were readable by other users (an older odeflow created them so)"
        )
    server = DatabaseServer(
        runs_root / "dashboard" / "db",
        int(env["MONGO_PORT"]),
        env["MONGO_USER"],
        env["MONGO_PASSWORD"],
        cache_size=env["DASHBOARD_DB_CACHE"],
    )
    omniboard = copier = copying = client = None
    try:
        server.start()
        client = pymongo.MongoClient(server.url, serverSelectionTimeoutMS=5000)
        db = client[mongo.db_name]
        seed_omniboard(db)
        copier = Copier(db, [files.local_dir, mongo.local_dir], stop, journal=mongo.local_dir, log=say)
        copier.repair()  # before anything shows the database: a batch a kill cut short goes
        copying = threading.Thread(target=copier.run, name="copy runs", daemon=True)
        copying.start()
        print(
            f"database: {mongo_url(server.port)} db {mongo.db_name} (data in {server.data_dir}, cache "
            f"{server.cache_size}); copying new and changed runs from {files.local_dir} and {mongo.local_dir} "
            "in the background: Omniboard shows them as they arrive"
        )
        if with_omniboard:
            login = omniboard_login(env, env_file())
            omniboard = Omniboard(
                server.url,
                mongo.db_name,
                int(env["OMNIBOARD_PORT"]),
                runs_root / "dashboard",
                host=env["OMNIBOARD_HOST"],
                login=login,
            ).start()
            print(f"Omniboard {version()}: {omniboard.url}   (ready in {time.monotonic() - started:.1f} s)")
            if login is not None:
                print(f"Omniboard asks for a login: user {login[0]}, password OMNIBOARD_PASSWORD in {env_file()}")
            if not is_loopback(env["OMNIBOARD_HOST"]):
                print(
                    f"Omniboard listens on {env['OMNIBOARD_HOST']} (OMNIBOARD_HOST), in plain HTTP: on a network "
                    "you do not trust, keep the default and use an SSH tunnel (see README)"
                )
        print("log runs here live:  .venv/bin/python -m runner tracking=mongo   (MONGO_URL from .env)")
        if env.get("MONGO_URL") and env["MONGO_URL"].split("?")[0] != server.url.split("?")[0]:
            print(
                "warning: MONGO_URL in .env does not point at this database; runs with tracking=mongo will go "
                f"elsewhere (set it to {mask_url(server.url)})"
            )
        if starting is not None:
            starting.clear()
        print("Ctrl-C stops the dashboard", flush=True)
        while not stop.wait(0.5):
            if copier.error is not None and not copier.error_reported:
                say(
                    f"error: copying the runs into the database failed ({type(copier.error).__name__}: "
                    f"{str(copier.error).splitlines()[0][:300] if str(copier.error) else ''}); fix: see "
                    f"{server.log_file}, then start make dashboard again (it copies what is missing)"
                )
                copier.error_reported = True
            if server.process is None or server.process.poll() is not None:
                raise UserError(
                    f"the database server stopped unexpectedly (see {server.log_file})",
                    "start make dashboard again; it copies what the database is missing at start",
                )
            if omniboard is not None and not omniboard.running():
                raise UserError(
                    f"Omniboard stopped unexpectedly (see {omniboard.log_file})", "start make dashboard again"
                )
    finally:
        stop.set()  # the copy ends its batch (a fraction of a second); one cut short is redone at the next start
        if copying is not None:
            copying.join(STOP_GRACE)
            if not copier.finished:
                say(f"copy stopped after {copier.counts['copied']} runs; the next start copies the rest")
        if client is not None:
            client.close()  # before the server goes: pymongo's exit handlers would wait on a gone server
        for process in (omniboard, server):  # both told at once, then waited for
            if process is not None:
                process.request_stop()
        if omniboard is not None:
            omniboard.stop(STOP_GRACE)
        # A server still closing after that is killed: it loses nothing (it fsyncs every commit, and a batch
        # the kill cuts short is redone at the next start)
        server.stop(SERVER_STOP_GRACE)
    print("dashboard stopped; the runs stay in the database for the next make dashboard")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is stopped and closed; the interpreter's own teardown of its ~900 modules takes over a
    # second on a busy machine, which a user who pressed Ctrl-C would wait for.
    os._exit(code)
