"""The lock files (requirements/*.lock): they hold pyproject.toml's pins, the venv holds exactly its lock, and
`make install` installs from them (TORCH_CUDA=<build>: torch from PyTorch's index, failing in one line when it
cannot be reached)."""

from __future__ import annotations

import http.server
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from importlib import metadata
from pathlib import Path

import pip
import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
LOCKS = {"default": ROOT / "requirements/default.lock", "ray": ROOT / "requirements/ray.lock"}


def load_lockfile():
    spec = importlib.util.spec_from_file_location("odeflow_lockfile", ROOT / "requirements/lockfile.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


lockfile = load_lockfile()


def pins(requirements: list[str]) -> dict[str, str]:
    found = {}
    for requirement in requirements:
        name, _, version = requirement.partition("==")
        found[lockfile.canonical(re.sub(r"\[.*\]", "", name))] = version
    return found


@pytest.mark.parametrize("name", sorted(LOCKS))
def test_each_lock_holds_every_pin_of_pyproject(name: str) -> None:
    """A pin changed or added in pyproject.toml without `make lock` fails here, before any install."""
    lock = lockfile.Lock.read(LOCKS[name])
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in lock.environment["extras"].split(","):
        requirements += project["optional-dependencies"][extra]
    locked = lock.versions()
    stale = {package: version for package, version in pins(requirements).items() if locked.get(package) != version}
    assert not stale, f"pyproject.toml pins {stale}, {LOCKS[name].name} has others: run make lock"
    assert lock.environment["python"] == "3.11" and lock.environment["platform"] == "linux x86_64"


def test_the_venv_holds_exactly_its_lock() -> None:
    """Done-when of the install: pip freeze equals the lock (ray's after make install-ray), the project aside."""
    name = "ray" if any(dist.metadata["Name"] == "ray" for dist in metadata.distributions()) else "default"
    torch_label = metadata.version("torch").partition("+")[2]
    command = [sys.executable, str(ROOT / "requirements/lockfile.py"), "check", str(LOCKS[name])]
    done = subprocess.run([*command, *([torch_label] if torch_label else [])], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"holds exactly requirements/{name}.lock" in done.stdout


def fake_lock(tmp_path: Path, lines: list[str]) -> object:
    path = tmp_path / "test.lock"
    path.write_text("# extras: dev\n# python: 3.11\n# platform: linux x86_64\n" + "\n".join(lines) + "\n")
    return lockfile.Lock.read(path)


def test_differences_name_each_missing_extra_and_other_version(tmp_path: Path) -> None:
    lock = fake_lock(tmp_path, ["PyYAML==6.0.3", "numpy==2.4.6", "torch==2.14.1", "nvidia-cublas==13.1.1.3"])
    same = {
        "pyyaml": ("PyYAML", "6.0.3"),
        "numpy": ("numpy", "2.4.6"),
        "torch": ("torch", "2.14.1"),
        "nvidia-cublas": ("nvidia-cublas", "13.1.1.3"),
    }
    assert lockfile.differences(lock, same, None) == []
    changed = {**same, "numpy": ("numpy", "2.5.0"), "requests": ("requests", "2.34.2")}
    del changed["pyyaml"]
    assert lockfile.differences(lock, changed, None) == [
        "numpy 2.5.0 installed, 2.4.6 locked",
        "PyYAML==6.0.3 missing",
        "requests==2.34.2 not in the lock",
    ]
    # pip sees 2.14.1+cu126 as satisfying ==2.14.1: the check must not
    other_build = {**same, "torch": ("torch", "2.14.1+cu126")}
    assert lockfile.differences(lock, other_build, None) == ["torch 2.14.1+cu126 installed, 2.14.1 locked"]


def test_a_torch_build_replaces_the_locked_torch_stack_only(tmp_path: Path) -> None:
    lock = fake_lock(tmp_path, ["numpy==2.4.6", "torch==2.14.1", "torchvision==0.29.1", "nvidia-cublas==13.1.1.3"])
    cu126 = {
        "numpy": ("numpy", "2.4.6"),
        "torch": ("torch", "2.14.1+cu126"),
        "torchvision": ("torchvision", "0.29.1+cu126"),
        "nvidia-cublas-cu12": ("nvidia-cublas-cu12", "12.6.4.1"),
    }
    assert lockfile.differences(lock, cu126, "cu126") == []
    locked_torch = {**cu126, "torch": ("torch", "2.14.1")}
    assert lockfile.differences(lock, locked_torch, "cu126") == ["torch 2.14.1 installed, 2.14.1+cu126 locked"]
    assert lockfile.differences(lock, {**cu126, "numpy": ("numpy", "2.5.0")}, "cu126") == [
        "numpy 2.5.0 installed, 2.4.6 locked"
    ]


def test_a_lock_for_another_python_is_refused_in_one_error(tmp_path: Path) -> None:
    lock = fake_lock(tmp_path, ["numpy==2.4.6"])
    lock.environment["python"] = "3.9"
    with pytest.raises(lockfile.LockError, match="resolved for Python 3.9") as error:
        lockfile.check_environment(lock)
    assert "PYTHON=python3.9" in error.value.fix
    with pytest.raises(lockfile.LockError, match="not a PyTorch build label"):
        lockfile.check_build("cuda12")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def torch_index(tmp_path: Path):
    """A PyTorch-style wheel index on loopback: whl/cu126 lists the locked torch and torchvision for this Python."""
    lock = lockfile.Lock.read(LOCKS["default"])
    python_tag, machine = lockfile.wheel_tags()
    for name, version in lockfile.build_pins(lock, "cu126").items():
        folder = tmp_path / "whl/cu126" / name
        folder.mkdir(parents=True)
        wheel = f"{name}-{version.replace('+', '%2B')}-{python_tag}-{python_tag}-manylinux_2_28_{machine}.whl"
        (folder / "index.html").write_text(f'<a href="/whl/cu126/{wheel}#sha256=00">{wheel}</a>\n')
    handler = lambda *args: http.server.SimpleHTTPRequestHandler(*args, directory=str(tmp_path))  # noqa: E731
    http.server.SimpleHTTPRequestHandler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield lock, f"http://127.0.0.1:{server.server_address[1]}/whl", tmp_path
    server.shutdown()
    server.server_close()


def test_the_torch_index_probe_finds_the_locked_versions_or_says_what_is_missing(torch_index) -> None:
    lock, index, root = torch_index
    lockfile.probe_index(index, lock, "cu126")  # both wheels listed: no error
    with pytest.raises(lockfile.LockError, match="has no torch for TORCH_CUDA=cu118") as error:
        lockfile.probe_index(index, lock, "cu118")
    assert "HTTP 404" in error.value.cause
    (root / "whl/cu126/torchvision/index.html").write_text('<a href="torchvision-0.1.0%2Bcu126-cp311.whl">x</a>')
    with pytest.raises(lockfile.LockError, match=r"has no torchvision==\S+\+cu126 wheel for CPython"):
        lockfile.probe_index(index, lock, "cu126")


def test_an_unreachable_torch_index_is_one_error_before_anything_changes(tmp_path: Path) -> None:
    """What `make install TORCH_CUDA=cu126` prints where download.pytorch.org cannot be reached (as here)."""
    index = f"http://127.0.0.1:{free_port()}/whl"  # nothing listens there
    command = [sys.executable, str(ROOT / "requirements/lockfile.py"), "prepare", str(LOCKS["default"]), "cu126"]
    done = subprocess.run([*command, "--index", index], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    cause, fix = done.stderr.strip().splitlines()
    assert cause.startswith(f"error: cannot reach PyTorch's wheel index {index}/cu126 (")
    assert fix.startswith("  fix: run make install TORCH_CUDA=cu126 where it is reachable, set TORCH_INDEX")


def make_dry_run(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(["make", "-n", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_install_takes_the_lock_and_a_torch_build_from_its_index(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    torch = lockfile.Lock.read(LOCKS["default"]).pins["torch"][1]
    vision = lockfile.Lock.read(LOCKS["default"]).pins["torchvision"][1]
    locked = make_dry_run("install", f"VENV={venv}")
    assert "prepare requirements/default.lock  --index https://download.pytorch.org/whl" in locked
    assert f"pip install --quiet --disable-pip-version-check --no-deps -r {venv}/lock-install.txt" in locked
    assert "--index-url" not in locked
    assert f"sync requirements/default.lock \ntouch {venv}/.installed-default\n" in locked
    build = make_dry_run("install", f"VENV={venv}", "TORCH_CUDA=cu126")
    assert "prepare requirements/default.lock cu126 --index https://download.pytorch.org/whl" in build
    assert (
        "pip install --quiet --disable-pip-version-check --index-url https://download.pytorch.org/whl/cu126 "
        f"torch=={torch}+cu126 torchvision=={vision}+cu126\n"
    ) in build
    assert f"touch {venv}/.installed-default-cu126" in build
    assert "requirements/ray.lock" in make_dry_run("install-ray", f"VENV={venv}")


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_test_reinstalls_when_a_lock_changes_and_keeps_the_venvs_build(tmp_path: Path) -> None:
    """make run/test/... keep what .venv holds (here the cu126 build) until pyproject.toml or a lock changes."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("Makefile", "pyproject.toml", "requirements"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, tree / name)
    stamp = tree / ".venv/.installed-default-cu126"
    stamp.parent.mkdir()
    stamp.touch()
    past = stamp.stat().st_mtime - 60
    for path in [tree / "Makefile", tree / "pyproject.toml", *(tree / "requirements").iterdir()]:
        os.utime(path, (past, past))
    assert "lockfile.py" not in make_dry_run("lint", cwd=tree)  # up to date: nothing installed
    os.utime(tree / "requirements/default.lock")  # a newer lock
    reinstall = make_dry_run("lint", cwd=tree)
    assert "lockfile.py prepare requirements/default.lock cu126" in reinstall
    assert "--index-url https://download.pytorch.org/whl/cu126" in reinstall


def fake_distribution(site_packages: Path, name: str, version: str, requires: str = "") -> None:
    """An installed distribution as pip sees it: a .dist-info folder, uninstallable through its RECORD."""
    info = site_packages / f"{name}-{version}.dist-info"
    info.mkdir()
    requirement = f"Requires-Dist: {requires}\n" if requires else ""
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{requirement}")
    (info / "INSTALLER").write_text("pip\n")
    (info / "RECORD").write_text("".join(f"{info.name}/{file},,\n" for file in ("METADATA", "INSTALLER", "RECORD")))


def test_sync_removes_what_the_lock_lacks_and_refuses_packages_that_do_not_fit(tmp_path: Path) -> None:
    """On a real venv: what a lock lacks is uninstalled, and a lock whose packages break each other's
    requirements (a --no-deps install would not notice) fails pip check in one error."""
    venv = tmp_path / "venv"
    # no pip of its own (ensurepip takes ~10 s): this pip, alone on PYTHONPATH, works on the venv's packages
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    pip_only = tmp_path / "pip_only"
    pip_only.mkdir()
    (pip_only / "pip").symlink_to(Path(pip.__file__).parent)
    env = {**os.environ, "PYTHONPATH": str(pip_only)}
    python = venv / "bin/python"
    site_packages = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    fake_distribution(site_packages, "needs_bar", "1.0", "bar-lib>=2")
    fake_distribution(site_packages, "bar_lib", "1.0")
    fake_distribution(site_packages, "left_over", "0.1")
    lock = tmp_path / "test.lock"
    header = f"# python: {sys.version_info.major}.{sys.version_info.minor}\n# platform: linux x86_64\n"
    lock.write_text(header + "bar_lib==1.0\nneeds_bar==1.0\n")
    sync = [python, str(ROOT / "requirements/lockfile.py"), "sync", str(lock)]
    done = subprocess.run(sync, capture_output=True, text=True, timeout=120, env=env)
    assert "removing what the lock does not hold: left_over" in done.stderr
    assert not (site_packages / "left_over-0.1.dist-info").exists()
    assert done.returncode == 2
    cause, fix = done.stderr.strip().splitlines()[-2:]
    assert cause.startswith(f"error: the packages of {lock} do not fit together: needs-bar 1.0 has requirement")
    assert fix == "  fix: make lock (it resolves them with pip), then make install"
    (site_packages / "bar_lib-1.0.dist-info").rename(site_packages / "bar_lib-2.0.dist-info")
    (site_packages / "bar_lib-2.0.dist-info/METADATA").write_text(
        "Metadata-Version: 2.1\nName: bar_lib\nVersion: 2.0\n"
    )
    lock.write_text(header + "bar_lib==2.0\nneeds_bar==1.0\n")
    done = subprocess.run(sync, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"the venv holds exactly {lock}"
