"""Sacred tracking: every run is a Sacred run with the config Hydra composed, stored by observers.

Sacred is used the "less magic" way (plain-dict config, explicit main, ex.run()), so the logged config
is exactly the one Hydra resolved (with database passwords masked). Two backends, one per file in
conf/tracking: the embedded file store, and MongoDB (for Omniboard) with a local journal that always
holds the whole run, so a run is never lost when the database is down or goes away.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from odeflow.errors import UserError, check_positive
from odeflow.files import is_disk_full, replacing
from runner.tracking.masking import check_url_escaped, mask_url, url_password

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDER_PASSWORD = "change-me"  # .env.example's: a .env copied from it and never edited
NEW_PASSWORD_COMMAND = 'python -c "import secrets; print(secrets.token_urlsafe(24))"'


def check_not_placeholder(password: str | None, where: str) -> None:
    """Refuse the password .env.example ships with: everyone who read the example knows it."""
    if password == PLACEHOLDER_PASSWORD:
        raise UserError(
            f"{where} still has the example password {PLACEHOLDER_PASSWORD!r} from .env.example",
            f"generate a real one with {NEW_PASSWORD_COMMAND} and put it in {env_file()} "
            "(MONGO_PASSWORD and the password in MONGO_URL)",
        )


def env_file() -> Path:
    """The .env file with MONGO_URL and the dashboard's credentials (`ODEFLOW_ENV_FILE` names another)."""
    return Path(os.environ.get("ODEFLOW_ENV_FILE") or PROJECT_ROOT / ".env")


FILE_STORE_PRIORITY = 40  # Sacred calls observers by priority; the first to return an id names the run
RESERVE_FILE = ".odeflow-reserve"  # in a running run's folder; readers look at run.json, metrics.json, info.json
PATIENT_CONNECT_MS = 300_000  # how long a reachable server may be busy before a reading command gives up
RESERVE_BYTES = 512 * 1024  # a run's status, its unsaved epochs and its index entry fit in this


def _file_observer(directory: str):
    from sacred.observers import FileStorageObserver

    class LocalRunFolder(FileStorageObserver):
        """Sacred's file store, numbering its folders itself: as a journal behind MongoDB it gets the
        database's id, which may already name one of its folders (runs journalled while the database
        was down, or another machine's runs in a shared database)."""

        def started_event(self, ex_info, command, host_info, start_time, config, meta_info, _id):
            run_id = super().started_event(ex_info, command, host_info, start_time, config, meta_info, None)
            self._reserve()
            self._note_in_index()
            return run_id

        # A full disk must not keep the run from saying how it ended: room for its last writes (its status, the
        # epochs not yet written, the index) is held from its start, and given back for those writes.
        def _reserve(self) -> None:
            try:
                with open(os.path.join(self.dir, RESERVE_FILE), "wb") as f:  # written, the blocks are taken
                    f.write(bytes(RESERVE_BYTES))  # (no fsync: a run's start waits on no disk)
            except OSError:  # the disk already full: the run will say so when it writes
                self._release_reserve()

        def _release_reserve(self) -> None:
            try:
                os.unlink(os.path.join(self.dir, RESERVE_FILE))
            except OSError:
                pass

        def _final(self, event) -> None:
            """The run's last write (its status); on a full disk, with the reserved room and what earlier writes
            could not save (the epochs since, the last heartbeat) written first."""
            if not self._unless_disk_full(event):
                self._release_reserve()
                if getattr(self, "_unsaved_metrics", None) and self._unless_disk_full(
                    super().log_metrics, self._unsaved_metrics, {}
                ):
                    self._unsaved_metrics = {}
                self._unless_disk_full(event)
                if getattr(self, "_unsaved_beat", None):
                    self._unless_disk_full(lambda: super(LocalRunFolder, self).heartbeat_event(*self._unsaved_beat))
            self._release_reserve()
            self._note_in_index()

        def _note_in_index(self) -> None:
            """The store's index (runner.tracking.index) learns of the run as it starts and ends."""
            from runner.tracking.index import note_run

            note_run(self.basedir, os.path.basename(self.dir))

        # Sacred rewrites run.json, info.json and metrics.json in place at every heartbeat: a kill or a full
        # disk mid-write left them empty. Written whole or not at all, they keep their last complete content.
        def save_json(self, obj, filename):
            from sacred.serializer import flatten

            with replacing(os.path.join(self.dir, filename)) as f:
                json.dump(flatten(obj), f, sort_keys=True, indent=2)

        def log_metrics(self, metrics_by_name, info):
            pending = getattr(self, "_unsaved_metrics", {})  # what a full disk kept from being written
            for name, new in metrics_by_name.items():
                old = pending.setdefault(name, {"values": [], "steps": [], "timestamps": []})
                for key in old:
                    old[key] = [*old[key], *new[key]]
            self._unsaved_metrics = pending
            if self._unless_disk_full(super().log_metrics, pending, info):
                self._unsaved_metrics = {}

        def _unless_disk_full(self, event, *args) -> bool:
            """Run an event; a full disk is said once (the files keep their last complete state), not raised:
            raised, Sacred would drop this store for the rest of the run, or print a traceback at its end."""
            try:
                event(*args)
                return True
            except Exception as exc:
                if not is_disk_full(exc):
                    raise
                if not getattr(self, "_said_disk_full", False):
                    self._said_disk_full = True
                    print(
                        f"warning: no space left on the disk of {self.dir}: the run's record there keeps its last "
                        "complete state until space is freed",
                        file=sys.stderr,
                        flush=True,
                    )
                return False

        def heartbeat_event(self, info, captured_out, beat_time, result):
            beat = (info, captured_out, beat_time, result)
            saved = self._unless_disk_full(lambda: super(LocalRunFolder, self).heartbeat_event(*beat))
            self._unsaved_beat = None if saved else beat

        def completed_event(self, *args, **kwargs):
            self._final(lambda: super(LocalRunFolder, self).completed_event(*args, **kwargs))

        def interrupted_event(self, *args, **kwargs):
            self._final(lambda: super(LocalRunFolder, self).interrupted_event(*args, **kwargs))

        def failed_event(self, *args, **kwargs):
            self._final(lambda: super(LocalRunFolder, self).failed_event(*args, **kwargs))

        def artifact_event(self, *args, **kwargs):
            self._unless_disk_full(lambda: super(LocalRunFolder, self).artifact_event(*args, **kwargs))

    return LocalRunFolder(str(Path(directory).expanduser()), priority=FILE_STORE_PRIORITY)


@dataclass(frozen=True)
class FileStore:
    """Sacred's file storage: one folder per run under `dir`, no server needed."""

    dir: str = "runs/store"

    def observers(self) -> list:
        return [_file_observer(self.dir)]

    def describe(self) -> str:
        return f"file store {Path(self.dir).expanduser().resolve()}"

    @property
    def local_dir(self) -> Path:
        return Path(self.dir).expanduser()

    def attach_artifacts(self, run_id: Any, paths: dict[str, Path]) -> None:
        """Add files to a run that has completed, as Sacred's file observer adds artifacts during a run: a copy
        in the run's folder and its name in run.json's artifact list."""
        run_dir = self.local_dir / str(run_id)
        for name, path in paths.items():
            shutil.copyfile(path, run_dir / name)
        record = json.loads((run_dir / "run.json").read_text())
        record["artifacts"] = [
            *record.get("artifacts", []),
            *(n for n in paths if n not in record.get("artifacts", [])),
        ]
        temporary = run_dir / "run.json.tmp"
        temporary.write_text(json.dumps(record, indent=2, sort_keys=True))
        os.replace(temporary, run_dir / "run.json")


@dataclass(frozen=True)
class MongoStore:
    """MongoDB (browsed in Omniboard), mirrored from a local journal in Sacred's file format.

    The journal records every run in full. The Mongo mirror writes the same events to the database; when
    the database is unreachable or fails mid-run it stops trying, says so once, and the run goes on.
    `python -m runner sync` pushes journalled runs that did not reach the database completely.
    """

    url: str = "mongodb://127.0.0.1:27017"
    db_name: str = "odeflow"
    journal_dir: str = "runs/journal"
    timeout_ms: int = 3000

    def __post_init__(self) -> None:
        check_positive("timeout_ms", self.timeout_ms)
        check_url_escaped(self.url, "tracking.url (MONGO_URL)")
        check_not_placeholder(url_password(self.url), "tracking.url (MONGO_URL)")

    def observers(self) -> list:
        from runner.tracking.mongo import MongoMirror

        journal = _file_observer(self.journal_dir)
        return [journal, MongoMirror(self, journal)]

    def describe(self) -> str:
        return (
            f"MongoDB {mask_url(self.url)} db {self.db_name} (journal {Path(self.journal_dir).expanduser().resolve()})"
        )

    @property
    def local_dir(self) -> Path:
        return Path(self.journal_dir).expanduser()

    def client(self, patient: bool = False):
        """A client that gives up on an unreachable server after `timeout_ms`. A patient one (the commands that
        read runs) lets a reachable server take longer over a query: the client's monitor times its heartbeat
        with the connect timeout, and a server busy with one long query (SecantusDB counting 100,000 runs) misses
        a 3 s heartbeat, which cancels the query under way ("operation cancelled")."""
        import pymongo

        connect_ms = max(self.timeout_ms, PATIENT_CONNECT_MS) if patient else self.timeout_ms
        return pymongo.MongoClient(self.url, serverSelectionTimeoutMS=self.timeout_ms, connectTimeoutMS=connect_ms)


@dataclass(frozen=True)
class NoStore:
    """Tracking switched off: no Sacred run, nothing stored (quick checks and overhead measurements)."""

    def describe(self) -> str:
        return "nowhere (tracking=none)"


class RunLog:
    """What the pipeline may write to the current run: metrics, info and artifacts."""

    def __init__(self, sacred_run: Any) -> None:
        self._run = sacred_run

    @property
    def id(self) -> Any:
        return self._run._id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self._run.log_scalar(name, float(value), step)

    def set_info(self, key: str, value: Any) -> None:
        self._run.info[key] = value

    def add_artifact(self, path: Path, name: str | None = None) -> None:
        self._run.add_artifact(str(path), name=name or Path(path).name)


class _UntrackedRun:
    """Stands in for a Sacred run when tracking is off."""

    _id = None

    def __init__(self) -> None:
        self.info: dict[str, Any] = {}

    def log_scalar(self, name: str, value: float, step: int) -> None:
        pass

    def add_artifact(self, filename: str, name: str | None = None) -> None:
        pass


def request_digest(request: Any) -> str:
    """A fingerprint of what a derived record (a sweep's report, a re-evaluation) is made from: the same inputs give
    the same digest, so a command repeated with them finds the record it made before and logs no second one."""
    return hashlib.sha1(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()


def run_tracked(
    name: str,
    config: dict[str, Any],
    store: FileStore | MongoStore | NoStore,
    body: Callable[[RunLog], Any],
    meta: dict[str, Any] | None = None,
    *,
    command: str,
) -> tuple[Any, Any]:
    """Run `body` as a Sacred run of experiment `name` with `config`; returns (run id, result).

    `command` is what the run does (train, reevaluate, ...): Sacred records it, Omniboard's Command column
    shows it. Every run gets a `run_uid` in its meta data: the key that keeps `sync` idempotent.
    """
    if isinstance(store, NoStore):
        return None, body(RunLog(_UntrackedRun()))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        from sacred import SETTINGS, Experiment
        from sacred.utils import apply_backspaces_and_linefeeds

    # Sources: every project module loaded (not only those the experiment file imports; see project_sources);
    # dependencies: every installed distribution, so a run can be checked against the environment that reproduces it.
    SETTINGS.DISCOVER_SOURCES = "none"
    SETTINGS.DISCOVER_DEPENDENCIES = "pkg"

    with one_git_lookup_per_repository():
        ex = Experiment(name, base_dir=str(PROJECT_ROOT), save_git_info=_has_git_commit(PROJECT_ROOT))
        for source in project_sources():
            ex.add_source_file(source)
    ex.captured_out_filter = apply_backspaces_and_linefeeds
    ex.add_config(config)
    ex.observers.extend(store.observers())

    def main(_run):  # Sacred injects the run by parameter name
        return body(RunLog(_run))

    main.__name__ = command  # Sacred names the run's command after its main function
    ex.main(main)
    run = ex.run(options={"--capture": "sys"}, meta_info={"run_uid": uuid.uuid4().hex, **(meta or {})})
    # The file store names run folders by number but reports the id as a string; ids are numbers everywhere else.
    return (int(run._id) if str(run._id).isdigit() else run._id), run.result


_IS_PROJECT_MODULE: dict[tuple[str, str], bool] = {}
_SOURCES_FOR: list[Any] = [None, []]  # (the loaded modules' count and last name, the project files among them)


def project_sources() -> list[str]:
    """The loaded modules' files that belong to the project: what Sacred's DISCOVER_SOURCES="sys" records, by
    Sacred's own test, remembered per module. Sacred repeats that test (path resolution) for every loaded module
    at every run: with torch loaded, some 4000 modules and about 0.2 s per run, every trial of a sweep."""
    from sacred.dependencies import MODULE_BLACKLIST, is_local_source

    modules_now = (len(sys.modules), next(reversed(sys.modules)))  # modules are added, rarely ever replaced
    if _SOURCES_FOR[0] == modules_now:
        return list(_SOURCES_FOR[1])
    files = set()
    for name, module in list(sys.modules.items()):
        filename = getattr(module, "__file__", None) if module is not None and name not in MODULE_BLACKLIST else None
        if not filename:
            continue
        key = (name, filename)
        if key not in _IS_PROJECT_MODULE:
            _IS_PROJECT_MODULE[key] = is_local_source(os.path.abspath(filename), name, str(PROJECT_ROOT))
        if _IS_PROJECT_MODULE[key]:
            files.add(os.path.abspath(filename))
    _SOURCES_FOR[:] = [modules_now, sorted(files)]
    return sorted(files)


_REPOSITORIES: dict[str, tuple[str, Any]] = {}  # work tree -> (repository url, git.Repo), for the process
_WORK_TREES: dict[str, str | None] = {}  # a source's folder -> the work tree it is in (None: none)


def _work_tree(directory: str) -> str | None:
    if directory not in _WORK_TREES:
        parent = os.path.dirname(directory)
        if os.path.exists(os.path.join(directory, ".git")):
            _WORK_TREES[directory] = directory
        else:
            _WORK_TREES[directory] = None if parent == directory else _work_tree(parent)
    return _WORK_TREES[directory]


@contextmanager
def one_git_lookup_per_repository() -> Iterator[None]:
    """Sacred records each source file's repository, commit and dirty flag, asking git for every file: some 40
    project files, two `git diff` processes each, about 0.45 s per run. Within this block each repository is
    asked once: its commit and dirty state afresh (they can change between runs of a process, e.g. the trials
    of a joblib worker), its location and remote URL remembered for the process. What is recorded is the same."""
    from sacred import dependencies

    original = dependencies.get_commit_if_possible
    states: dict[str, tuple[str, str, bool]] = {}

    def lookup(filename: str, save_git_info: bool):
        tree = _work_tree(os.path.dirname(os.path.abspath(filename))) if save_git_info else None
        if tree is None:
            return original(filename, save_git_info)
        if tree not in states:
            if tree not in _REPOSITORIES:
                from git import Repo

                repo = Repo(tree)
                try:
                    url = repo.remote().url
                except ValueError:  # no remote: Sacred's own fallback
                    url = "git:/" + repo.working_dir
                _REPOSITORIES[tree] = (url, repo)
            url, repo = _REPOSITORIES[tree]
            states[tree] = (url, repo.head.commit.hexsha, repo.is_dirty())
        return states[tree]

    dependencies.get_commit_if_possible = lookup
    try:
        yield
    finally:
        dependencies.get_commit_if_possible = original


_HAS_COMMIT: set[Path] = set()  # once a repository has a commit it keeps one


def _has_git_commit(path: Path) -> bool:
    """Sacred's git capture fails outside a repository and in one with no commit yet; skip it there."""
    if path in _HAS_COMMIT:
        return True
    try:
        import git

        if git.Repo(path, search_parent_directories=True).head.commit is None:
            return False
        _HAS_COMMIT.add(path)
        return True
    except Exception:  # GitPython raises several unrelated types for "no usable repository"
        return False
