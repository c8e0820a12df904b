"""Sacred's git record of a run's sources, asked once per repository and run: the same as asking per file."""

from __future__ import annotations

import subprocess
from pathlib import Path

from sacred import dependencies

from runner.tracking.stores import one_git_lookup_per_repository


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def sources_state(files: list[Path]) -> list[tuple]:
    with one_git_lookup_per_repository():
        return [dependencies.Source.create(str(f), True) for f in files]


def test_one_lookup_records_what_sacred_records_per_file_and_sees_changes_between_runs(tmp_path: Path):
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    files = [repo / "a.py", repo / "pkg" / "b.py"]
    for f in files:
        f.write_text("x = 1\n")
    git(repo, "init", "-q")
    git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", "one", "--allow-empty")
    git(repo, "add", ".")
    git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "two")
    head = git(repo, "rev-parse", "HEAD").strip()

    clean = sources_state(files)
    per_file = [dependencies.get_commit_if_possible(str(f), True) for f in files]  # Sacred's own lookup
    assert [(s.repo, s.commit, s.is_dirty) for s in clean] == per_file
    assert {s.commit for s in clean} == {head} and not any(s.is_dirty for s in clean)

    files[1].write_text("x = 2\n")  # edited between two runs of the same process
    assert all(s.is_dirty for s in sources_state(files))
    git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", "three")
    after = sources_state(files)
    assert {s.commit for s in after} == {git(repo, "rev-parse", "HEAD").strip()} != {head}
    assert not any(s.is_dirty for s in after)
    assert (
        dependencies.get_commit_if_possible is not None and "lookup" not in dependencies.get_commit_if_possible.__name__
    )


def test_files_outside_any_repository_keep_sacreds_answer(tmp_path: Path):
    loose = tmp_path / "loose.py"
    loose.write_text("x = 1\n")
    (source,) = sources_state([loose])
    assert (source.repo, source.commit, source.is_dirty) == (None, None, None)
