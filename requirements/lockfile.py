"""The lock files: every package of each supported install, transitive ones included, written, installed and checked.

`make lock` writes requirements/<name>.lock from pyproject.toml; `make install` installs one with `--no-deps`
(the project itself after it) and ends by checking that the venv's `pip freeze` equals the lock. Standard
library only: it runs in a venv that has nothing installed yet.

    python requirements/lockfile.py write LOCK=EXTRAS... [--upgrade] # resolve .[EXTRAS] (pip --dry-run --report)
    python requirements/lockfile.py prepare LOCK [BUILD]            # print what pip installs with --no-deps
    python requirements/lockfile.py sync LOCK [BUILD]               # remove what LOCK lacks, then check
    python requirements/lockfile.py check LOCK [BUILD]              # pip freeze == LOCK, or one error

BUILD (make's TORCH_CUDA: cu126, cpu, ...) takes torch from PyTorch's own wheel index for that build: the lock's
torch and torchvision versions with the build's label (torch==2.14.1+cu126); the CUDA libraries that build
brings replace the lock's, and everything else stays as locked.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import ssl
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH_INDEX = "https://download.pytorch.org/whl"
# A torch build brings these (its CUDA libraries, its compiler); a build from PyTorch's index brings its own.
TORCH_STACK = re.compile(r"^(torch|torchvision|triton|nvidia-.*|cuda-.*)$")
BUILD_LABEL = re.compile(r"^(cpu|cu\d{3,}|rocm\d+(\.\d+)*)$")
# Not locked: the installer itself (a venv gets the Python's own) and the project.
UNLOCKED = {"pip"}


class LockError(Exception):
    """A problem the user can fix; printed as `error: <cause>` and `  fix: <fix>`, without a traceback."""

    def __init__(self, cause: str, fix: str) -> None:
        super().__init__(cause)
        self.cause, self.fix = cause, fix


def canonical(name: str) -> str:
    """PEP 503 name: what pip compares (PyYAML and pyyaml, typing_extensions and typing-extensions are one)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject() -> dict:
    import tomllib  # here, so that another Python reaches check_environment's one-line error first

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def project_name() -> str:
    return canonical(pyproject()["name"])


@dataclass
class Lock:
    """A lock file: the environment it was resolved for and name -> version, names spelled as pip freeze does."""

    path: Path
    environment: dict[str, str]
    pins: dict[str, tuple[str, str]]  # canonical name -> (name as written, version)

    @classmethod
    def read(cls, path: Path) -> Lock:
        environment, pins = {}, {}
        for line in path.read_text().splitlines():
            if line.startswith("# ") and ": " in line:
                key, _, value = line[2:].partition(": ")
                environment[key] = value
            elif line and not line.startswith("#"):
                name, _, version = line.partition("==")
                pins[canonical(name)] = (name, version)
        return cls(path, environment, pins)

    @property
    def name(self) -> str:
        """The lock's path as the user gives it: relative to the project when inside it."""
        return str(self.path.relative_to(ROOT)) if self.path.is_relative_to(ROOT) else str(self.path)

    def versions(self) -> dict[str, str]:
        return {key: version for key, (_, version) in self.pins.items()}


def this_environment() -> dict[str, str]:
    """What a lock is only valid for: wheels differ by Python version, OS and machine."""
    return {
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "platform": f"{sys.platform} {platform.machine()}",
    }


def check_environment(lock: Lock) -> None:
    here = this_environment()
    wanted = {key: lock.environment.get(key) for key in here}
    if wanted != here:
        raise LockError(
            f"{lock.path.name} was resolved for Python {wanted['python']} on {wanted['platform']}, "
            f"this venv has Python {here['python']} on {here['platform']}",
            f"rm -rf .venv && make install PYTHON=python{wanted['python']}, or resolve the locks for this Python: "
            f"make lock PYTHON=python{here['python']}",
        )


def check_build(build: str) -> None:
    if not BUILD_LABEL.fullmatch(build):
        raise LockError(
            f"TORCH_CUDA={build} is not a PyTorch build label",
            "use one like cu126 or cu130 (CUDA 12.6, 13.0) or cpu, as listed in README.md (Installation)",
        )


# ---------------------------------------------------------------------------------------------------- write


def requirements(extras: list[str]) -> list[str]:
    """What pyproject.toml asks for with these extras: what `pip install .[extras]` resolves besides the project."""
    project = pyproject()
    found = list(project["dependencies"])
    for extra in extras:
        found += project["optional-dependencies"][extra]
    return found


def direct_names(extras: list[str]) -> set[str]:
    """The packages pyproject.toml pins itself (for the lock's extras): a new pin there overrides the old lock."""
    return {canonical(re.split(r"[\s\[<>=!~;@]", line, maxsplit=1)[0]) for line in requirements(extras)}


def resolve(extras: list[str], constraints: list[str]) -> dict:
    """pip's own resolution of pyproject.toml's requirements with these extras, for this Python, installing
    nothing: the report of `pip install --dry-run`. The requirements are given as such, not as `.[extras]`, so
    that no build of the project writes into the tree while another lock resolves beside it."""
    with tempfile.TemporaryDirectory() as scratch:
        report, listed = Path(scratch, "report.json"), Path(scratch, "requirements.txt")
        constraint_file = Path(scratch, "constraints.txt")
        listed.write_text("".join(line + "\n" for line in requirements(extras)))
        constraint_file.write_text("".join(line + "\n" for line in constraints))
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
        command += ["--disable-pip-version-check", "--report", str(report), "-c", str(constraint_file)]
        done = subprocess.run([*command, "-r", str(listed)], cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise LockError(
                f"pip could not resolve pyproject.toml's requirements with extras {','.join(extras)}: "
                + " ".join(line for line in done.stderr.splitlines() if not line.startswith("WARNING"))[-600:],
                "change the pins in pyproject.toml that pip names, then make lock again",
            )
        return json.loads(report.read_text())


def write(lock_path: Path, extras: list[str], upgrade: bool) -> None:
    """Resolve and write the lock. Packages pyproject.toml does not pin keep the old lock's versions while they
    fit (as pip-compile does), so a new pin changes only what it must; `upgrade` re-resolves everything."""
    old = Lock.read(lock_path).versions() if lock_path.exists() and not upgrade else {}
    direct = direct_names(extras)
    kept = [f"{name}=={version}" for name, version in old.items() if name not in direct]
    try:
        report = resolve(extras, kept)
    except LockError:
        if not kept:
            raise
        print(f"{lock_path.name}: the old versions do not fit the new pins; resolving afresh", file=sys.stderr)
        report = resolve(extras, [])
    project = project_name()
    installs = sorted(
        (item["metadata"]["name"], item["metadata"]["version"])
        for item in report["install"]
        if canonical(item["metadata"]["name"]) != project
    )
    environment = this_environment()
    lines = [
        f"# {lock_path.name}: every package `make install` puts in .venv with the extras below, transitive ones",
        "# included, as `pip freeze --all` lists them (pip and the project itself aside). Written by `make lock`",
        "# from pyproject.toml; do not edit by hand.",
        f"# extras: {','.join(extras)}",
        f"# python: {environment['python']}",
        f"# platform: {environment['platform']}",
        *(f"{name}=={version}" for name, version in sorted(installs, key=lambda item: item[0].lower())),
    ]
    lock_path.write_text("\n".join(lines) + "\n")
    print(f"{lock_path.relative_to(ROOT)}: {len(installs)} packages")


# ---------------------------------------------------------------------------------------------------- install


def installed() -> dict[str, tuple[str, str]]:
    """canonical name -> (name, version) from `pip freeze --all`: what the done-when compares, editable project
    and pip left out. A package installed from a URL shows its URL as the version."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
    )
    packages = {}
    for line in done.stdout.splitlines():
        if not line or line.startswith(("#", "-")):
            continue
        name, separator, version = line.partition("==")
        if not separator:
            name, _, url = line.partition(" @ ")
            version = "@ " + url
        packages[canonical(name)] = (name.strip(), version.strip())
    for name in UNLOCKED | {project_name()}:
        packages.pop(name, None)
    return packages


def build_pins(lock: Lock, build: str) -> dict[str, str]:
    """torch and torchvision as locked, from PyTorch's index for `build`: 2.14.1 becomes 2.14.1+cu126."""
    return {name: lock.pins[name][1].split("+")[0] + "+" + build for name in ("torch", "torchvision")}


def wheel_tags() -> tuple[str, str]:
    return f"cp{sys.version_info.major}{sys.version_info.minor}", platform.machine()


def probe_index(index: str, lock: Lock, build: str) -> None:
    """Fail in one line before anything changes when PyTorch's index for `build` is out of reach or lacks the
    locked versions for this Python (pip would retry for minutes, then print a page)."""
    python_tag, machine = wheel_tags()
    base = f"{index.rstrip('/')}/{build}"
    context = ssl.create_default_context(cafile=os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE"))
    for name, version in build_pins(lock, build).items():
        url = f"{base}/{name}/"
        try:
            with urllib.request.urlopen(url, timeout=30, context=context) as response:
                page = urllib.parse.unquote(response.read().decode("utf-8", "replace"))
        except urllib.error.HTTPError as error:
            raise LockError(
                f"PyTorch's wheel index has no {name} for TORCH_CUDA={build} ({url}: HTTP {error.code})",
                "use a build that torch's locked version has (README.md, Installation lists them), "
                "or make install without TORCH_CUDA for the locked build",
            ) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise LockError(
                f"cannot reach PyTorch's wheel index {base} ({reason})",
                f"run make install TORCH_CUDA={build} where it is reachable, set TORCH_INDEX to a mirror of "
                f"{index}, or make install without TORCH_CUDA for the locked build",
            ) from None
        wheel = re.compile(rf"{re.escape(name)}-{re.escape(version)}-{python_tag}-{python_tag}-\S*{machine}\.whl")
        if not wheel.search(page):
            raise LockError(
                f"{base} has no {name}=={version} wheel for CPython {python_tag[2:3]}.{python_tag[3:]} on {machine}",
                "use a build that torch's locked version has (README.md, Installation lists them), "
                "or make install without TORCH_CUDA for the locked build",
            )


def uninstall(names: list[str], why: str = "what the lock does not hold") -> None:
    if names:
        print(f"removing {why}: {' '.join(sorted(names))}", file=sys.stderr)
        command = [sys.executable, "-m", "pip", "uninstall", "--yes", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*command, *names], check=True)


def prepare(lock: Lock, build: str | None, index: str) -> list[str]:
    """Check that the lock fits this venv (and, for a build, that PyTorch's index has it), take out a torch of
    another build (pip sees 2.14.1+cu126 as satisfying torch==2.14.1 and would keep it), and return the lines
    pip installs with --no-deps: the whole lock, or all of it but the torch stack for a build."""
    check_environment(lock)
    present = installed()
    if build is None:
        stale = [name for name in ("torch", "torchvision") if name in present and name in lock.pins]
        uninstall([present[name][0] for name in stale if present[name][1] != lock.pins[name][1]], "another torch build")
        return [f"{name}=={version}" for name, version in lock.pins.values()]
    check_build(build)
    probe_index(index, lock, build)
    if present.get("torch", ("", ""))[1] != build_pins(lock, build)["torch"]:
        uninstall([present[name][0] for name in present if TORCH_STACK.match(name)], "the torch build it replaces")
    return [f"{name}=={version}" for key, (name, version) in lock.pins.items() if not TORCH_STACK.match(key)]


def differences(lock: Lock, present: dict[str, tuple[str, str]], build: str | None) -> list[str]:
    """How the venv differs from the lock, one entry per package; a build's torch stack is checked by its pins."""
    wanted = lock.versions()
    have = {name: version for name, (_, version) in present.items()}
    if build is not None:
        wanted = {name: version for name, version in wanted.items() if not TORCH_STACK.match(name)}
        wanted.update(build_pins(lock, build))
        have = {name: version for name, version in have.items() if not TORCH_STACK.match(name) or name in wanted}
    found = []
    for name in sorted(wanted.keys() | have.keys()):
        if name not in have:
            found.append(f"{lock.pins.get(name, (name,))[0]}=={wanted[name]} missing")
        elif name not in wanted:
            found.append(f"{present[name][0]}=={have[name]} not in the lock")
        elif have[name] != wanted[name]:
            found.append(f"{present[name][0]} {have[name]} installed, {wanted[name]} locked")
    return found


def check(lock: Lock, build: str | None) -> None:
    found = differences(lock, installed(), build)
    if found:
        shown = "; ".join(found[:10]) + (f"; and {len(found) - 10} more" if len(found) > 10 else "")
        raise LockError(
            f"the venv differs from {lock.name}: {shown}",
            "make install (make lock first if pyproject.toml changed, and commit the lock)",
        )
    # --no-deps installs trust the lock to be whole: pip check confirms every installed requirement is met
    done = subprocess.run(
        [sys.executable, "-m", "pip", "check", "--disable-pip-version-check"], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise LockError(
            f"the packages of {lock.name} do not fit together: {'; '.join(done.stdout.splitlines())}",
            "make lock (it resolves them with pip), then make install",
        )
    label = f" (torch's {build} build from PyTorch's index, with the libraries it brings)" if build else ""
    print(f"the venv holds exactly {lock.name}{label}")


def sync(lock: Lock, build: str | None) -> None:
    """Remove what the lock does not hold (left from another lock or a pip install by hand), then check."""
    present = installed()
    keep = set(lock.pins)
    if build is not None:
        keep |= {name for name in present if TORCH_STACK.match(name)}
    uninstall([present[name][0] for name in present if name not in keep])
    check(lock, build)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    writer = commands.add_parser("write")
    writer.add_argument("locks", nargs="+", metavar="LOCK=EXTRAS", help="e.g. requirements/ray.lock=dev,ray")
    writer.add_argument("--upgrade", action="store_true", help="re-resolve every package, not only the new pins")
    for name in ("prepare", "sync", "check"):
        command = commands.add_parser(name)
        command.add_argument("lock", type=Path)
        command.add_argument("build", nargs="?", default=None, help="a PyTorch build label (TORCH_CUDA)")
        command.add_argument("--index", default=TORCH_INDEX, help="PyTorch's wheel index (make's TORCH_INDEX)")
    args = parser.parse_args(argv)
    build = getattr(args, "build", None) or None
    try:
        if args.command == "write":
            # one pip resolution per lock, side by side: most of their time is spent waiting on the index
            with ThreadPoolExecutor() as pool:
                jobs = []
                for item in args.locks:
                    path, _, extras = item.partition("=")
                    jobs.append(pool.submit(write, Path(path).resolve(), extras.split(","), args.upgrade))
                for job in jobs:
                    job.result()
            return 0
        lock = Lock.read(args.lock.resolve())
        if args.command == "prepare":
            print("\n".join(prepare(lock, build, args.index)))
        elif args.command == "sync":
            sync(lock, build)
        else:
            check(lock, build)
    except LockError as error:
        print(f"error: {error.cause}\n  fix: {error.fix}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
