"""A disk that fills up during a run: one message, the run's files keep their last complete state, the other
runs stay listed, and the run resumes once there is room (on a small tmpfs the test mounts; needs root)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.tracking.runstore import read_file_store
from tests.conftest import ROOT, run_cli
from tests.test_tracking.conftest import TINY

EPOCHS = 30
SLOW_ENOUGH = [  # 30 epochs of about 0.6 s on an idle machine: the run outlives Sacred's first heartbeat (10 s)
    *("experiment=quickstart", "model.channels=4", "data.subset=600", "solver=rk4", "solver.step_size=0.05"),
    *(f"train.max_epochs={EPOCHS}", f"train.patience={EPOCHS}", "train.progress=true"),
]


@pytest.fixture
def small_disk(tmp_path: Path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not permitted'})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError:
        while True:  # the last few bytes too
            try:
                os.write(fd, b"\0")
            except OSError:
                break
    finally:
        os.close(fd)
    return filler


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_disk_that_fills_up_mid_run_ends_in_one_message_and_loses_nothing(small_disk: Path):
    runs = small_disk
    first = run_cli([*TINY, "train.device=cpu"], runs)
    assert first.returncode == 0, first.stderr[-3000:]
    before = snapshot(runs / "store" / "1")

    env = {**os.environ, "ODEFLOW_RUNS": str(runs)}
    victim = subprocess.Popen(
        [sys.executable, "-m", "runner", *SLOW_ENOUGH], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert next(line for line in victim.stdout if line.startswith("epoch ")).startswith(f"epoch   1/{EPOCHS}")
        metrics = runs / "store" / "2" / "metrics.json"
        deadline = time.monotonic() + 60
        while not metrics.exists() and time.monotonic() < deadline:  # Sacred's heartbeat (every 10 s) wrote it
            time.sleep(0.2)
        filler = fill(runs)
        _, stderr = victim.communicate(timeout=300)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == 2 and "Traceback" not in stderr, stderr[-3000:]
    error = stderr[stderr.index("error: ") :].splitlines()
    assert len(error) == 2 and error[0].startswith("error: no space left on the disk of ")
    assert "run 2 stopped after" in error[0] and error[1].endswith("python -m runner resume 2")

    # Nothing earlier lost: the other run untouched, this run's record whole: every epoch that finished, and
    # how it ended (FAILED, the disk full), written into the room the run held back from its start.
    assert snapshot(runs / "store" / "1") == before
    finished = int(error[0].split("run 2 stopped after ")[1].split()[0])
    assert json.loads(metrics.read_text())["val.loss"]["steps"] == list(range(1, finished + 1))
    assert json.loads((runs / "store" / "2" / "run.json").read_text())["status"] == "FAILED"
    listing = run_cli(["runs", "list"], runs)
    assert listing.returncode == 0 and "skipping" not in listing.stderr
    rows = listing.stdout.splitlines()
    assert [line.split()[0] for line in rows[1:3]] == ["2", "1"]  # newest first
    assert rows[1].split()[2] == "FAILED" and f" {finished} " in rows[1]  # its status and its epochs
    assert "run 2 FAILED (the disk was full): free space on that disk, then continue it: python -m runner resume 2" in (
        listing.stdout
    )

    filler.unlink()
    resumed = run_cli(["resume", "2"], runs)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    continued = max(read_file_store(runs / "store"), key=lambda r: r.id)
    assert continued.meta["resumed_from"] == 2 and continued.metrics["val.loss"]["steps"] == list(range(1, EPOCHS + 1))
    # The run it continued points to it, and no longer advises a resume (it would train those epochs twice).
    original = next(r for r in read_file_store(runs / "store") if r.id == 2)
    assert original.meta["continued_as"] == continued.id
    assert original.meta["continued_as_uid"] == continued.meta["run_uid"]
    shown = run_cli(["runs", "show", "2"], runs).stdout  # the line `runs list` prints for it too
    assert f"run 2 FAILED (the disk was full): nothing to do: continued as run {continued.id}" in shown
    assert "resume 2" not in shown
    again = run_cli(["resume", "2"], runs)
    assert again.returncode == 2 and f"was continued as run {continued.id} already" in again.stderr


def test_a_disk_already_full_ends_in_one_message_before_the_run_starts(small_disk: Path):
    filler = fill(small_disk)
    proc = run_cli([*TINY, "train.device=cpu"], small_disk)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    cause, fix = proc.stderr.strip().splitlines()
    assert cause.startswith(f"error: no space left on the disk of {small_disk} before the run started")
    assert cause.endswith("nothing was recorded")
    assert fix.startswith(f"  fix: free space there (df -h {small_disk})") and fix.endswith("then run it again")
    filler.unlink()
    assert run_cli(["runs", "list"], small_disk).returncode == 0


def test_a_sweep_on_a_disk_already_full_ends_in_one_message(small_disk: Path):
    filler = fill(small_disk)
    proc = run_cli(["-m", *TINY, "train.device=cpu", "seed=1,2"], small_disk)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    cause, fix = proc.stderr.strip().splitlines()[-2:]
    assert cause.startswith(f"error: no space left on the disk of {small_disk}"), proc.stderr
    assert fix.startswith(f"  fix: free space there (df -h {small_disk})")
    filler.unlink()
