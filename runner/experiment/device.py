"""The training device: which one a run gets, why a GPU the machine has is not used, what a run records about
its device, and the kernel choices (deterministic kernels or cuDNN's autotuner) that decide whether a rerun
matches it."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from odeflow.errors import ConfigError, UserError

# The oldest Linux driver branch each major CUDA version runs on (CUDA's minor-version compatibility: a
# 12.x build runs on any driver >= 525). NVIDIA's CUDA compatibility tables; torch's wheels follow them.
OLDEST_DRIVER = {11: 450, 12: 525, 13: 580}
# The torch build to install for a driver too old for this one's CUDA (the Makefile's TORCH_CUDA option).
OLDER_DRIVER_BUILD = {525: "cu126"}


@dataclass(frozen=True)
class VisibleGpu:
    """A GPU as the NVIDIA driver reports it (nvidia-smi), whether or not torch can use it."""

    name: str
    driver: str


def visible_gpus(timeout: float = 10.0) -> list[VisibleGpu]:
    """The GPUs `nvidia-smi` (on PATH) reports; none when it is missing, fails or takes too long."""
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return []
    try:
        done = subprocess.run(
            [executable, "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    if done.returncode != 0:
        return []
    gpus = []
    for line in done.stdout.splitlines():
        name, _, driver = line.rpartition(",")
        if name.strip() and driver.strip():
            gpus.append(VisibleGpu(name.strip(), driver.strip()))
    return gpus


def gpus_hidden() -> bool:
    """CUDA_VISIBLE_DEVICES hides every GPU from CUDA (the test suite's CPU pin, or a user's choice)."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    return value is not None and value.strip().split(",")[0].strip() in ("", "-1", "NoDevFiles")


def torch_build() -> str:
    """torch's version and the CUDA it was built for, e.g. `torch 2.9.0+cu130 (CUDA 13.0)`."""
    return f"torch {torch.__version__} ({'CUDA ' + torch.version.cuda if torch.version.cuda else 'CPU-only build'})"


def _driver_major(driver: str) -> int | None:
    head = driver.split(".")[0]
    return int(head) if head.isdigit() else None


def why_unusable(gpu: VisibleGpu) -> tuple[str, str]:
    """(cause, fix) for a GPU the driver reports and torch cannot use."""
    build = torch.version.cuda
    if build is None:
        return (
            f"{torch_build()} has no CUDA support",
            "install a CUDA build of torch: make install TORCH_CUDA=cu126 (any driver >= 525), or set train.device=cpu",
        )
    needed = OLDEST_DRIVER.get(int(build.split(".")[0]))
    driver = _driver_major(gpu.driver)
    if needed is not None and driver is not None and driver < needed:
        older = [f"make install TORCH_CUDA={b}" for oldest, b in OLDER_DRIVER_BUILD.items() if driver >= oldest]
        fix = (older[0] + " (a torch build for this driver), or update" if older else "update") + (
            f" the NVIDIA driver to {needed} or newer"
        )
        return f"driver {gpu.driver} is older than CUDA {build} needs (>= {needed})", fix
    return (
        f"CUDA does not initialise (driver {gpu.driver}, {torch_build()})",
        "python -c 'import torch; torch.cuda.init()' says why (a busy or exclusive-mode GPU, /dev/nvidia* not "
        "readable, a mismatched driver library), or set train.device=cpu",
    )


def resolve_device(name: str, warn: bool = True) -> torch.device:
    """`auto` is CUDA when torch can use it, else CPU (with one warning line when the machine has a GPU torch
    cannot use); asking for CUDA without it, or for a GPU index that does not exist, is a UserError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if warn and not gpus_hidden() and (gpus := visible_gpus()):
            cause, fix = why_unusable(gpus[0])
            print(
                f"warning: train.device=auto trains on the CPU: nvidia-smi sees {len(gpus)} GPU(s) ({gpus[0].name}, "
                f"driver {gpus[0].driver}) that {torch_build()} cannot use: {cause}; fix: {fix}",
                file=sys.stderr,
                flush=True,
            )
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise no_cuda_error(name)
        count = torch.cuda.device_count()
        index = torch.device(name).index or 0
        if index >= count:
            raise ConfigError(
                "train.device",
                name,
                f"cuda:0 .. cuda:{count - 1}",
                f"this machine has {count} usable GPU(s): set train.device=cuda:0 .. cuda:{count - 1} or auto",
            )
    return torch.device(name)


def no_cuda_error(name: str) -> UserError:
    """`train.device=cuda` where torch has no usable CUDA, with the reason the machine gives."""
    if gpus_hidden():
        cause = f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r} hides every GPU"
        fix = "unset CUDA_VISIBLE_DEVICES (or list a GPU in it), or set train.device=cpu"
    elif gpus := visible_gpus():
        cause, fix = why_unusable(gpus[0])
        cause = f"{gpus[0].name}: {cause}"
    else:
        cause = "no NVIDIA GPU is visible (nvidia-smi is not on PATH or reports none)"
        fix = "run on a machine with a GPU, or set train.device=auto or cpu"
    return UserError(f"train.device={name}, but {torch_build()} cannot use a GPU here: {cause}", fix)


def cudnn_version() -> str | None:
    """cuDNN's version as x.y.z (torch reports 90100 for 9.1.0, 8902 for 8.9.2)."""
    number = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if not number:
        return None
    major, rest = (number // 10000, number % 10000) if number >= 10000 else (number // 1000, number % 1000)
    return f"{major}.{rest // 100}.{rest % 100}"


def _cuda_version_text(number: int) -> str:
    return f"{number // 1000}.{number % 1000 // 10}"


def cuda_runtime_versions() -> dict[str, str | None]:
    """The CUDA runtime this process loaded and the newest CUDA its driver supports, read from the loaded
    libcudart (torch only reports the version it was built for)."""
    versions: dict[str, str | None] = {"cuda_runtime": None, "cuda_driver_api": None}
    try:
        with open("/proc/self/maps") as maps:
            path = next((line.split()[-1] for line in maps if re.search(r"/libcudart[^/]*\.so", line)), None)
        if path is None:
            return versions
        cudart = ctypes.CDLL(path)
        for key, function in (("cuda_runtime", "cudaRuntimeGetVersion"), ("cuda_driver_api", "cudaDriverGetVersion")):
            number = ctypes.c_int(0)
            if getattr(cudart, function)(ctypes.byref(number)) == 0 and number.value:
                versions[key] = _cuda_version_text(number.value)
    except (OSError, AttributeError):
        pass
    return versions


def describe_device(device: torch.device) -> dict[str, Any]:
    """What a run records about its device: torch's version and CUDA build; on CUDA the GPU (name, index as
    this process sees it, total memory, compute capability), the driver, CUDA runtime and cuDNN versions."""
    info: dict[str, Any] = {"device": str(device), "torch": str(torch.__version__), "torch_cuda": torch.version.cuda}
    if device.type != "cuda":
        return info
    index = device.index if device.index is not None else torch.cuda.current_device()
    properties = torch.cuda.get_device_properties(index)
    gpus = visible_gpus()
    info.update(
        gpu=properties.name,
        gpu_index=index,
        gpu_memory_mb=round(properties.total_memory / 2**20),
        compute_capability=f"{properties.major}.{properties.minor}",
        driver=gpus[0].driver if gpus else None,
        **cuda_runtime_versions(),
        cudnn=cudnn_version(),
    )
    if (visible := os.environ.get("CUDA_VISIBLE_DEVICES")) is not None:
        info["cuda_visible_devices"] = visible  # which physical GPU index 0.. is (Slurm, sweeps)
    return info


# torch's message when an operation without a deterministic kernel runs under
# use_deterministic_algorithms(True, warn_only=True) (ATen's alertNotDeterministic; torch._prims_common too)
NONDETERMINISTIC_WARNING = re.compile(r"(?s)^(?P<op>.+?) does not have a deterministic implementation, but you set")


def configure_kernels(deterministic: bool) -> None:
    """Deterministic kernels (warning, not failing, where an operation has none: those are recorded), or the
    fastest ones: cuDNN's autotuner, which picks per input shape and may pick differently from run to run."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    _set_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = not deterministic


def _set_deterministic_algorithms(enabled: bool) -> None:
    """`torch.use_deterministic_algorithms(enabled, warn_only=True)` without its import of torch._inductor's config.

    That import costs about 1.8 s of every run's start (a third of a short trial's); the config's flag only
    matters to code compiled with inductor, which no run compiles. Where inductor is already loaded, or torch
    lacks the kernel-flag call, the public function is used as it is.
    """
    set_flag = getattr(torch._C, "_set_deterministic_algorithms", None)
    if set_flag is None or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(enabled, warn_only=True)
    else:
        set_flag(enabled, warn_only=True)


@contextmanager
def nondeterministic_ops() -> Iterator[list[str]]:
    """Collect, in order of first use, the operations torch warned have no deterministic kernel while the block
    ran; those warnings are not printed (the run prints one line naming them), every other warning is."""
    found: list[str] = []
    with warnings.catch_warnings():
        # shown to `capture` every time, even where the user ignores warnings (PYTHONWARNINGS=ignore)
        warnings.filterwarnings("always", message=NONDETERMINISTIC_WARNING.pattern, category=UserWarning)
        show = warnings.showwarning

        def capture(message, category, filename, lineno, file=None, line=None) -> None:
            match = NONDETERMINISTIC_WARNING.match(str(message))
            if match is None or not issubclass(category, UserWarning):
                show(message, category, filename, lineno, file, line)
            elif match["op"] not in found:
                found.append(match["op"])

        warnings.showwarning = capture
        yield found


def describe_determinism(deterministic: bool, ops: list[str], device: torch.device) -> dict[str, Any]:
    """What a run records about its kernels: whether they were asked to be deterministic, which operations had
    no deterministic kernel (so a rerun on this device may differ), and whether cuDNN's autotuner chose."""
    return {
        "deterministic": deterministic and not ops,
        "requested": deterministic,
        "nondeterministic_ops": list(ops),
        "cudnn_benchmark": device.type == "cuda" and not deterministic,
    }


def describe_nondeterministic(ops: list[str], device: torch.device) -> str:
    return (
        f"determinism: {len(ops)} operation(s) had no deterministic kernel on {device}, so a rerun may differ: "
        + ", ".join(ops)
    )


@contextmanager
def device_recorded(run: Any, device: torch.device, deterministic: bool) -> Iterator[dict[str, Any]]:
    """Around a run's body: its device in the run's info at the start (`device`, `device_info`); its kernels'
    determinism at the end, failed or not (`determinism`, also yielded for the summary), and one line naming the
    operations that had no deterministic kernel. `run` takes `set_info(key, value)`."""
    run.set_info("device", str(device))
    run.set_info("device_info", describe_device(device))
    record: dict[str, Any] = {}
    with nondeterministic_ops() as ops:
        try:
            yield record
        finally:
            record.update(describe_determinism(deterministic, ops, device))
            run.set_info("determinism", record)
            if ops:
                print(describe_nondeterministic(ops, device), flush=True)
