"""`make gpu-check` (bench/gpu_check.py) on a machine without a usable GPU: one line saying why, and its exit status."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_experiment.test_device import H100_OLD_DRIVER, fake_nvidia_smi


def gpu_check(env: dict[str, str | None]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    return subprocess.run(
        [sys.executable, "bench/gpu_check.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_with_the_gpus_hidden_it_says_so_in_one_line_and_passes():
    done = gpu_check({"CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0 and done.stdout.splitlines() == [
        "gpu-check: CUDA_VISIBLE_DEVICES='' hides every GPU: nothing to check"
    ], done.stdout + done.stderr[-2000:]


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has an NVIDIA driver of its own")
def test_without_a_gpu_it_says_so_in_one_line_and_passes_and_fails_on_a_gpu_torch_cannot_use(tmp_path: Path):
    nothing = gpu_check({"CUDA_VISIBLE_DEVICES": None})
    lines = nothing.stdout.splitlines()
    assert nothing.returncode == 0 and len(lines) == 1 and lines[0].startswith("gpu-check: no GPU here"), nothing.stderr
    folder = fake_nvidia_smi(tmp_path / "bin", H100_OLD_DRIVER)
    unusable = gpu_check({"CUDA_VISIBLE_DEVICES": None, "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"})
    lines = unusable.stdout.splitlines()
    assert unusable.returncode == 1 and len(lines) == 1 and "NVIDIA H100 80GB HBM3" in lines[0] and "fix:" in lines[0]


def test_the_cpu_suite_pins_the_cpu_for_itself_and_every_process_it_starts():
    # tests/conftest.py: on a GPU machine the command-line tests must still train on the CPU they test
    seen = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, torch; print(repr(os.environ['CUDA_VISIBLE_DEVICES']), torch.cuda.is_available())",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == "" and seen.stdout.split() == ["''", "False"], seen.stderr
