"""The dashboard keeps the runs to their owner: loopback sockets only, a login when exposed, private files."""

from __future__ import annotations

import base64
import ipaddress
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from tests.conftest import ROOT

# dashboard_env is a fixture: the tests' parameters of that name shadow it on purpose (F811)
from tests.test_dashboard import dashboard_env, start_dashboard, stop_dashboard  # noqa: F401


def add_to_env_file(env: dict[str, str], text: str) -> Path:
    path = Path(env["ODEFLOW_ENV_FILE"])
    path.write_text(path.read_text() + text)
    return path


def env_values(env: dict[str, str]) -> dict[str, str]:
    return dict(line.split("=", 1) for line in Path(env["ODEFLOW_ENV_FILE"]).read_text().split())


def listening(pid: int) -> list[tuple[str, int, str]]:
    """(bound address, port, process name) of every listening TCP socket of `pid` and its descendants."""
    root = psutil.Process(pid)
    return [
        (sock.laddr.ip, sock.laddr.port, proc.name())
        for proc in [root, *root.children(recursive=True)]
        for sock in proc.net_connections(kind="tcp")
        if sock.status == psutil.CONN_LISTEN
    ]


def status(url: str, login: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(url)
    if login:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(login).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def run_dashboard(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dashboard", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_every_socket_of_the_dashboard_is_bound_to_loopback_and_omniboard_asks_for_its_login(dashboard_env):  # noqa: F811
    login = ("researcher", "omni-Pw-7xQ")
    add_to_env_file(dashboard_env, f"OMNIBOARD_USER={login[0]}\nOMNIBOARD_PASSWORD={login[1]}\n")
    proc, out = start_dashboard(dashboard_env)
    try:
        url = next(word for word in out.split() if word.startswith("http://127.0.0.1:"))
        sockets = listening(proc.pid)
        ports = {port for _, port, _ in sockets}
        assert int(env_values(dashboard_env)["MONGO_PORT"]) in ports and int(url.split(":")[2].split("/")[0]) in ports
        beyond = [s for s in sockets if not ipaddress.ip_address(s[0]).is_loopback]
        assert not beyond, f"bound beyond loopback: {beyond}"
        assert status(f"{url}/api/v1/Runs") == 401  # loopback traffic only
        assert status(f"{url}/api/v1/Runs", ("researcher", "wrong")) == 401
        assert status(f"{url}/api/v1/Runs", login) == 200
        secrets = (login[1], env_values(dashboard_env)["MONGO_PASSWORD"])
        for child in psutil.Process(proc.pid).children(recursive=True):  # what every local user can read
            assert not any(secret in " ".join(child.cmdline()) for secret in secrets), child.cmdline()
    finally:
        stop_dashboard(proc)
    created = [
        Path(dashboard_env["ODEFLOW_RUNS"], "dashboard"),
        *Path(dashboard_env["ODEFLOW_RUNS"], "dashboard").rglob("*"),
    ]
    assert len(created) > 5 and not [p for p in created if p.stat().st_mode & 0o077]  # created private


def test_exposing_omniboard_without_a_login_is_refused_with_the_ssh_tunnel(dashboard_env):  # noqa: F811
    add_to_env_file(dashboard_env, "OMNIBOARD_HOST=0.0.0.0\n")
    done = run_dashboard(dashboard_env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert (
        "OMNIBOARD_HOST=0.0.0.0 exposes Omniboard" in done.stderr
        and "set OMNIBOARD_USER and OMNIBOARD_PASSWORD" in done.stderr
    )
    assert "ssh -L 9000:127.0.0.1:9000" in done.stderr
    assert not Path(dashboard_env["ODEFLOW_RUNS"], "dashboard", "db").exists()  # refused before anything started


def test_the_placeholder_password_of_env_example_is_refused_with_the_command_for_a_real_one(dashboard_env):  # noqa: F811
    env_file = Path(dashboard_env["ODEFLOW_ENV_FILE"])
    env_file.write_text(
        env_file.read_text().replace(
            f"MONGO_PASSWORD={env_values(dashboard_env)['MONGO_PASSWORD']}", "MONGO_PASSWORD=change-me"
        )
    )
    done = run_dashboard(dashboard_env, "--no-omniboard")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "example password 'change-me'" in done.stderr
    assert 'python -c "import secrets; print(secrets.token_urlsafe(24))"' in done.stderr


def test_the_data_folder_and_the_env_file_are_made_private_also_when_an_older_version_made_them(dashboard_env):  # noqa: F811
    folder = Path(dashboard_env["ODEFLOW_RUNS"], "dashboard")
    folder.mkdir(mode=0o755)
    (folder / "omniboard.log").write_text("an older dashboard's log\n")
    for path in (folder, folder / "omniboard.log", Path(dashboard_env["ODEFLOW_ENV_FILE"])):
        path.chmod(0o755 if path.is_dir() else 0o644)
    proc, out = start_dashboard(dashboard_env, "--no-omniboard")
    stop_dashboard(proc)
    assert f"made {folder} private to you" in out and "readable by you only (mode 0600)" in out
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    paths = [folder, *folder.rglob("*")]
    assert len(paths) > 5 and any(p.name == "db.dashboard-user.json" for p in paths)  # the database's files too
    assert not [p for p in paths if p.stat().st_mode & 0o077], "readable by other users"
    assert stat.S_IMODE(Path(dashboard_env["ODEFLOW_ENV_FILE"]).stat().st_mode) == 0o600
