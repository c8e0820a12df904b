"""Peak memory figures: exact live tensor bytes, saved bytes per gradient method, and growth with the batch."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from models import SolverSpec
from models.ode_block import ODEBlock
from models.simple import dynamics
from runner.experiment.memory import LiveTensorBytes, PhaseMemory, format_memory
from tests.conftest import ROOT

ONE_STEP = """
import json, sys, torch
from models import SolverSpec
from models.ode_block import ODEBlock
from models.simple import dynamics
from runner.experiment.memory import PhaseMemory
torch.manual_seed(0)
block = ODEBlock(dynamics(16, True, "relu", "group"), SolverSpec("rk4", step_size=0.25))
x = torch.randn(int(sys.argv[1]), 16, 32, 32)
memory = PhaseMemory("train")
with memory.phase():
    memory.batch_started()
    loss = block(x).square().mean()
    memory.forward_done()
    loss.backward()
    memory.batch_done()
print(json.dumps(memory.metrics()))
"""


def one_training_step(batch: int) -> dict[str, float]:
    """The figures of one training step of a block in a fresh process (RSS depends on what ran before)."""
    proc = subprocess.run(
        [sys.executable, "-c", ONE_STEP, str(batch)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_cpu_figures_grow_with_the_batch():
    small, large = one_training_step(8), one_training_step(64)
    # 16 x 16 x 32 x 32 float32 is 1 MB per state at batch 64; rk4 with 4 steps saves dozens of them
    assert large["mem.train.live_mb"] > 6 * small["mem.train.live_mb"] > 0
    assert large["mem.train.saved_mb"] > 6 * small["mem.train.saved_mb"] > 0
    grown = large["mem.train.live_mb"] - small["mem.train.live_mb"]
    assert large["mem.train.rss_mb"] > small["mem.train.rss_mb"] + grown / 2  # the process's peak moved too


def test_live_bytes_count_what_is_allocated_and_alive_not_views_or_in_place_results():
    before = torch.zeros(1000)
    with LiveTensorBytes() as live:
        a = torch.ones(1000)  # 4000 bytes
        view = a[:10]
        a.add_(1.0)
        before.add_(a)  # in place on a tensor from before: nothing new
        b = a * 2  # 4000 more
        del b
        c = torch.empty(250, dtype=torch.float64)  # 2000: the peak stays 8000
    assert live.peak == 8000 and live.live == 6000
    del view, c


def test_direct_backpropagation_saves_more_than_the_adjoint_on_the_same_block():
    torch.manual_seed(0)
    net, x = dynamics(16, True, "relu", "group"), torch.randn(8, 16, 8, 8)
    saved = {}
    for gradient in ("direct", "adjoint", "checkpoint"):
        block = ODEBlock(net, SolverSpec("dopri5", gradient=gradient))
        memory = PhaseMemory("train")
        with memory.phase():
            memory.batch_started()
            loss = block(x).sum()
            memory.forward_done()
            loss.backward()
            memory.batch_done()
        saved[gradient] = memory.metrics()["mem.train.saved_mb"]
    assert saved["direct"] > 3 * saved["checkpoint"] and saved["checkpoint"] > saved["adjoint"] > 0


def test_the_epoch_line_shows_the_figures_and_nothing_without_them():
    metrics = {"mem.train.rss_mb": 812.4, "mem.train.live_mb": 75.06, "mem.train.saved_mb": 65.1}
    metrics |= {"mem.val.rss_mb": 800.0, "mem.val.live_mb": 3.2}
    assert format_memory(metrics) == "  mem MB train 812/75 val 800/3 saved 65.1"
    assert format_memory({"train.loss": 1.0}) == ""


def test_rss_and_cuda_figures_keep_columns_of_their_own_and_old_runs_map_to_them():
    from runner.experiment.app import cost_summary
    from runner.tracking.runstore import memory_columns

    epochs = [
        {
            "epoch.time": 1.0,
            "mem.train.rss_mb": 900.0,
            "mem.train.cuda_alloc_mb": 3000.0,
            "mem.train.cuda_added_mb": 800.0,
        },
        {
            "epoch.time": 1.0,
            "mem.train.rss_mb": 950.0,
            "mem.train.cuda_alloc_mb": 2900.0,
            "mem.train.cuda_added_mb": 900.0,
        },
    ]
    cost = cost_summary(epochs, is_ode=False)
    assert (cost["train_rss_mb"], cost["train_cuda_mb"], cost["train_cuda_added_mb"]) == (950.0, 3000.0, 900.0)
    assert memory_columns(cost, "cuda:0")["train_rss_mb"] == 950.0
    # a run logged with one figure per phase: CUDA's on a GPU, else the RSS
    assert memory_columns({"train_mem_mb": 5.0}, "cuda:0") == {
        "train_rss_mb": None, "train_cuda_mb": 5.0, "val_rss_mb": None, "val_cuda_mb": None,
    }  # fmt: skip
    assert memory_columns({"train_mem_mb": 5.0}, "cpu")["train_rss_mb"] == 5.0
