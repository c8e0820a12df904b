"""The device a run gets and records: a GPU torch cannot use is named (a fake nvidia-smi on PATH stands in for the
driver), CUDA asked for where there is none is one error, and the kernels' determinism is recorded as it was."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from odeflow.errors import UserError
from runner.experiment import device as device_module
from runner.experiment.device import (
    configure_kernels,
    describe_device,
    device_recorded,
    nondeterministic_ops,
    resolve_device,
    visible_gpus,
)
from runner.tracking import browse
from runner.tracking.mongo import table_fields
from runner.tracking.runstore import read_file_store
from tests.conftest import run_cli
from tests.test_tracking.conftest import TINY, tiny_run

H100_OLD_DRIVER = "NVIDIA H100 80GB HBM3, 535.104.05"


def fake_nvidia_smi(folder: Path, reply: str, status: int = 0) -> Path:
    """A `nvidia-smi` in `folder` that answers the device query (`reply`: name, driver per line) and the XML
    report Sacred reads at every run's start (`-q -x`) the way the real one does."""
    folder.mkdir(parents=True, exist_ok=True)
    name, driver = reply.splitlines()[0].rsplit(", ", 1) if ", " in reply else ("?", "?")
    xml = (
        f'<?xml version="1.0" ?><nvidia_smi_log><driver_version>{driver}</driver_version><gpu id="00000000:00:04.0">'
        f"<product_name>{name}</product_name><persistence_mode>Enabled</persistence_mode>"
        "<fb_memory_usage><total>81559 MiB</total></fb_memory_usage></gpu></nvidia_smi_log>"
    )
    script = folder / "nvidia-smi"
    script.write_text(
        f"#!/bin/sh\nif [ \"$1\" = -q ]; then printf '%s\\n' '{xml}'; else printf '%s\\n' '{reply}'; fi\n"
        f"exit {status}\n"
    )
    script.chmod(0o755)
    return folder


@pytest.fixture
def driver_with_h100(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process sees an H100 with an older driver through nvidia-smi, and torch sees no usable CUDA (as
    torch's CUDA 13 build does on driver 535); the suite's CPU pin is lifted so the GPU is not hidden."""
    folder = fake_nvidia_smi(tmp_path / "bin", H100_OLD_DRIVER)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return folder


def test_visible_gpus_reads_nvidia_smi_and_survives_its_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    folder = fake_nvidia_smi(tmp_path / "ok", f"{H100_OLD_DRIVER}\nNVIDIA A100-SXM4-40GB, 535.104.05")
    monkeypatch.setenv("PATH", str(folder))
    assert [(g.name, g.driver) for g in visible_gpus()] == [
        ("NVIDIA H100 80GB HBM3", "535.104.05"),
        ("NVIDIA A100-SXM4-40GB", "535.104.05"),
    ]
    broken = fake_nvidia_smi(tmp_path / "broken", "NVIDIA-SMI has failed", status=9)
    monkeypatch.setenv("PATH", str(broken))
    assert visible_gpus() == []
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert visible_gpus() == []


@pytest.mark.skipif(torch.version.cuda is None, reason="a CPU-only torch build has no CUDA version to be too new")
def test_auto_says_in_one_line_which_gpu_it_cannot_use_and_how_to_fix_it(driver_with_h100, capsys):
    assert resolve_device("auto") == torch.device("cpu")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: train.device=auto trains on the CPU")
    assert "NVIDIA H100 80GB HBM3" in err[0] and "driver 535.104.05" in err[0]
    assert f"CUDA {torch.version.cuda}" in err[0] and "make install TORCH_CUDA=cu126" in err[0]


def test_auto_is_quiet_where_the_gpus_are_hidden_on_purpose(driver_with_h100, monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert resolve_device("auto") == torch.device("cpu") and capsys.readouterr().err == ""


def test_the_fix_follows_the_driver_and_the_build(driver_with_h100, monkeypatch):
    gpu = device_module.VisibleGpu("NVIDIA H100 80GB HBM3", "470.256.02")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    cause, fix = device_module.why_unusable(gpu)
    assert "older than CUDA 13.0 needs (>= 580)" in cause and "TORCH_CUDA" not in fix and "580 or newer" in fix
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    cause, fix = device_module.why_unusable(device_module.VisibleGpu("H100", "580.65.06"))
    assert "CUDA does not initialise" in cause  # the driver is new enough: something else is wrong
    monkeypatch.setattr(torch.version, "cuda", None)
    cause, fix = device_module.why_unusable(gpu)
    assert "CPU-only build" in cause and "make install TORCH_CUDA=cu126" in fix


def test_cuda_without_usable_cuda_is_one_user_error_naming_why(driver_with_h100, monkeypatch):
    with pytest.raises(UserError) as raised:
        resolve_device("cuda:1")
    message = str(raised.value).splitlines()
    assert len(message) == 2 and message[0].startswith("train.device=cuda:1, but torch ")
    assert "NVIDIA H100 80GB HBM3: driver 535.104.05 is older than CUDA" in message[0] or torch.version.cuda is None
    monkeypatch.setenv("PATH", str(driver_with_h100.parent / "nowhere"))
    with pytest.raises(UserError, match="no NVIDIA GPU is visible"):
        resolve_device("cuda")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(UserError, match="CUDA_VISIBLE_DEVICES='' hides every GPU"):
        resolve_device("cuda")


def test_the_command_line_warns_on_auto_records_the_build_and_refuses_cuda(tmp_path: Path, runs_dir: Path):
    if shutil.which("nvidia-smi") is not None:
        pytest.skip("this machine has an NVIDIA driver of its own: unhidden, auto could pick its real GPU")
    folder = fake_nvidia_smi(tmp_path / "bin", H100_OLD_DRIVER)
    env = {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}", "CUDA_VISIBLE_DEVICES": None}
    auto = run_cli([*TINY, "train.device=auto"], runs_dir, env=env)
    assert auto.returncode == 0, auto.stderr[-2000:]
    warned = [line for line in auto.stderr.splitlines() if line.startswith("warning: train.device=auto")]
    assert len(warned) == 1 and "NVIDIA H100 80GB HBM3" in warned[0] and "535.104.05" in warned[0]
    run = read_file_store(runs_dir / "store")[0]
    assert run.info["device"] == "cpu"
    assert run.info["device_info"] == {"device": "cpu", "torch": torch.__version__, "torch_cuda": torch.version.cuda}
    assert run.info["determinism"]["requested"] is True and run.info["determinism"]["nondeterministic_ops"] == []
    assert f"device: cpu, torch {torch.__version__}" in run_cli(["runs", "show", "1"], runs_dir).stdout
    refused = run_cli([*TINY, "train.device=cuda"], runs_dir, env=env)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 2, refused.stderr[-2000:]
    assert lines[0].startswith("error: train.device=cuda, but torch") and lines[1].startswith("  fix: ")
    assert len(read_file_store(runs_dir / "store")) == 1  # nothing was recorded for the refused run


def test_a_run_records_its_device_and_kernels_in_info_summary_and_dashboard(tmp_path: Path, runs_dir: Path):
    summary = tiny_run(runs_dir, tmp_path / "out")
    assert summary["device"] == "cpu" and summary["nondeterministic_ops"] == []
    run = read_file_store(runs_dir / "store")[0]
    assert run.info["device_info"]["torch"] == torch.__version__
    assert run.info["device_info"]["torch_cuda"] == torch.version.cuda
    assert run.info["determinism"] == {
        "deterministic": True,
        "requested": True,
        "nondeterministic_ops": [],
        "cudnn_benchmark": False,
    }
    assert table_fields({"info": run.info}, {})["device"] == "cpu"
    shown = browse.show_run(run)
    assert f"device: cpu, torch {torch.__version__}" in shown and "kernels: deterministic" in shown


def test_a_cuda_record_is_shown_with_its_gpu_driver_and_versions():
    info = {
        "device": "cuda",
        "device_info": {
            "device": "cuda",
            "torch": "2.9.0+cu126",
            "torch_cuda": "12.6",
            "gpu": "NVIDIA H100 80GB HBM3",
            "gpu_index": 0,
            "gpu_memory_mb": 81559,
            "driver": "535.104.05",
            "cuda_runtime": "12.6",
            "cudnn": "9.1.0",
        },
        "determinism": {"requested": True, "nondeterministic_ops": ["adaptive_avg_pool2d_backward_cuda"]},
    }
    lines = browse.device_lines(info)
    assert lines[1] == (
        "device: cuda:0 NVIDIA H100 80GB HBM3 (81559 MB), driver 535.104.05, CUDA runtime 12.6, cuDNN 9.1.0, "
        "torch 2.9.0+cu126 (CUDA 12.6)"
    )
    assert lines[2] == "nondeterministic operations: adaptive_avg_pool2d_backward_cuda"
    assert table_fields({"info": info}, {})["device"] == "cuda NVIDIA H100 80GB HBM3"
    assert browse.device_lines({"device": "cuda:1"}) == ["", "device: cuda:1"]  # logged before device_info


@pytest.fixture
def deterministic_kernels():
    configure_kernels(True)
    yield
    configure_kernels(True)


def unpool() -> None:
    """max_unpool2d: an operation torch flags, even on the CPU, as having no deterministic implementation."""
    pooled, indices = F.max_pool2d(torch.randn(1, 1, 4, 4), 2, return_indices=True)
    F.max_unpool2d(pooled, indices, 2)


def test_operations_without_a_deterministic_kernel_are_collected_and_other_warnings_pass(deterministic_kernels):
    # "ignore": a user's PYTHONWARNINGS=ignore (or -W ignore) must not hide them from the run's record
    for user_filter, others_shown in (("default", ["something else"]), ("ignore", [])):
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter(user_filter)
            with nondeterministic_ops() as ops:
                unpool()
                unpool()
                warnings.warn("something else", UserWarning, stacklevel=1)
        assert ops == ["max_unpooling2d_forward_out"]
        assert [str(w.message) for w in shown] == others_shown


def test_the_run_log_gets_device_and_determinism_and_a_line_names_the_operations(deterministic_kernels, capsys):
    class Log:
        info: dict = {}

        def set_info(self, key, value):
            self.info[key] = value

    log = Log()
    with pytest.raises(RuntimeError, match="crashed"), device_recorded(log, torch.device("cpu"), True) as record:
        unpool()
        raise RuntimeError("crashed")  # a failed run still records what it ran
    assert log.info["device"] == "cpu" and log.info["device_info"] == describe_device(torch.device("cpu"))
    assert log.info["determinism"] is record and record["nondeterministic_ops"] == ["max_unpooling2d_forward_out"]
    assert record["deterministic"] is False and record["requested"] is True
    assert "1 operation(s) had no deterministic kernel on cpu" in capsys.readouterr().out


def test_deterministic_false_turns_on_the_cudnn_autotuner_and_off_deterministic_kernels(deterministic_kernels):
    configure_kernels(False)
    assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
    configure_kernels(True)
    assert not torch.backends.cudnn.benchmark and torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()
