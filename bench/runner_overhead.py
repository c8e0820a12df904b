"""Runner overhead: the runner's epoch (tracking to the file store, per-epoch lines, NFE counting, per-epoch
training-state checkpoint, index batching) against a bare PyTorch loop doing the same training and
validation on the same model and tensors. One run; per-epoch wall times, medians over epochs 2..E.
Usage: .venv/bin/python bench/runner_overhead.py
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from data import load_digits  # noqa: E402
from models import SimpleNet, SolverSpec  # noqa: E402
from runner.experiment.app import run_experiment  # noqa: E402
from runner.experiment.settings import reuse_freed_host_memory, seed_everything  # noqa: E402

EPOCHS = 6
OVERRIDES = [
    "experiment=quickstart",
    "model.channels=32",
    f"train.max_epochs={EPOCHS}",
    "train.patience=100",
    "train.device=cpu",
    "tracking=file",
]


def runner_epoch_times(tmp: str) -> list[float]:
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*OVERRIDES, f"paths.runs={tmp}/runs"])
    summary = run_experiment(cfg, Path(tmp) / "out", {"model": "odenet_simple", "data": "digits"})
    metrics = json.loads((Path(tmp) / "runs" / "store" / str(summary["run_id"]) / "metrics.json").read_text())
    stamps = [datetime.fromisoformat(t) for t in metrics["val.loss"]["timestamps"]]
    return [(b - a).total_seconds() for a, b in itertools.pairwise(stamps)]


def bare_epoch_times() -> list[float]:
    seed_everything(0, True)
    data = load_digits(batch_size=128, seed=0)
    model = SimpleNet(data.input_shape, 10, "ode", 1, 32, 2, stride=1, solver=SolverSpec("dopri5"))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    x, y, n = data.train.x, data.train.y, len(data.train)
    stamps = []
    for _ in range(EPOCHS):
        model.train()
        for idx in torch.randperm(n, generator=generator).split(128):
            optimizer.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            for start in range(0, len(data.val), 128):
                F.cross_entropy(model(data.val.x[start : start + 128]), data.val.y[start : start + 128])
        stamps.append(time.perf_counter())
    return [b - a for a, b in itertools.pairwise(stamps)]


def main() -> None:
    runner, bare = [], []
    reuse_freed_host_memory(True)  # the runner's default, process-wide: the bare loop gets the same allocator
    for _ in range(3):  # interleaved, so drift of the machine hits both alike
        bare += bare_epoch_times()
        with tempfile.TemporaryDirectory() as tmp:
            runner += runner_epoch_times(tmp)
    print(
        f"\nrunner vs bare loop, quickstart ODEnet (32+2 ch, dopri5) on digits, 3 x {EPOCHS} epochs each (epochs "
        f"2-{EPOCHS})"
    )
    print(f"  {'':<18} {'median s/epoch':>15} {'fastest s/epoch':>16}")
    print(f"  {'bare PyTorch loop':<18} {statistics.median(bare):>15.3f} {min(bare):>16.3f}")
    print(f"  {'runner':<18} {statistics.median(runner):>15.3f} {min(runner):>16.3f}")
    print(
        f"  overhead: {100 * (statistics.median(runner) / statistics.median(bare) - 1):+.1f}% on medians, "
        f"{100 * (min(runner) / min(bare) - 1):+.1f}% on the fastest epochs (target <= 3%; epoch-to-epoch noise here "
        "is ~5%)"
    )


if __name__ == "__main__":
    main()
