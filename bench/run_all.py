"""`make bench`: every benchmark in one run, each printing ratios measured in that run; the reports are
also written to bench/RESULTS.md with the machine they ran on."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# script -> first line of its report (everything before it is the runs' own console output)
BENCHMARKS = {
    "ode_block.py": "ODE block,",
    "memory.py": "memory: one training step",
    "runner_overhead.py": "runner vs bare loop",
    "odenet_vs_resnet.py": "ODEnet vs ResNet epoch",
    "tracking_overhead.py": "tracking overhead",
    "dashboard.py": "dashboard start-up",
    "sweep_parallel.py": "sweep wall time",
    "sweep_pruning.py": "pruning: 24-trial",
    "trial_fixed_cost.py": "fixed cost per trial",
}


def machine() -> str:
    import torch

    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    memory = ""
    if Path("/proc/meminfo").exists():
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kb / 2**20:.0f} GiB RAM"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} CPU threads{memory}, {gpu}; Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads); {platform.platform()}"
    )


def main() -> None:
    sections, started = [], time.perf_counter()
    for script, title in BENCHMARKS.items():
        print(f"--- {script}", flush=True)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, str(HERE / script)], capture_output=True, text=True, cwd=HERE.parent)
        if proc.returncode != 0:
            sys.exit(f"{script} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        report = proc.stdout[proc.stdout.rfind(title) :].strip() if title in proc.stdout else proc.stdout.strip()
        print(report + f"\n({time.perf_counter() - start:.0f} s)\n", flush=True)
        sections.append((script, report))
    total = time.perf_counter() - started
    lines = [
        "# Benchmark results",
        "",
        f"Measured {dt.date.today()} by `make bench` ({total / 60:.1f} min in all) on: {machine()}.",
        "",
        "Each ratio below comes from one run; configurations of `ode_block.py` each ran in a fresh process.",
        "",
    ]
    for script, report in sections:
        lines += [f"## {script}", "", "```", report, "```", ""]
    (HERE / "RESULTS.md").write_text("\n".join(lines))
    print(f"all benchmarks: {total / 60:.1f} min; written to {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
