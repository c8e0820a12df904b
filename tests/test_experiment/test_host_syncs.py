"""The host waits on the device only where it must: counted on CPU, where every read of a tensor's value
(`.item()`, `float(t)`, `bool(t)`) passes through `aten::_local_scalar_dense` and `.tolist()` is counted too.

The optimizer's own reads are left out: torch's Adam reads its step counters, which live on the CPU even when
the parameters are on a GPU, so they make no GPU wait.
"""

from __future__ import annotations

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode

from data import load_digits
from models import SimpleNet, SolverSpec
from runner.experiment.settings import TrainSettings, seed_everything
from runner.experiment.training import fit

BATCH = 32


class HostReads(TorchDispatchMode):
    """Counts the reads of tensor values on the host while active, outside optimizer steps."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.in_optimizer = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and not self.in_optimizer:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture
def host_reads(monkeypatch):
    reads = HostReads()
    hooks = [
        register_optimizer_step_pre_hook(lambda *_: setattr(reads, "in_optimizer", True)),
        register_optimizer_step_post_hook(lambda *_: setattr(reads, "in_optimizer", False)),
    ]
    tolist = torch.Tensor.tolist

    def counted_tolist(tensor):
        reads.count += 0 if reads.in_optimizer else 1
        return tolist(tensor)

    monkeypatch.setattr(torch.Tensor, "tolist", counted_tolist)  # a CPU tensor's tolist skips the dispatcher
    yield reads
    for hook in hooks:
        hook.remove()


def one_epoch(block: str, solver: SolverSpec | None, train_samples: int, reads: HostReads):
    """Host reads of one training epoch (with its validation), the epoch's metrics and its (train, val) batches."""
    seed_everything(0, True)
    data = load_digits(subset=train_samples * 10 // 8, batch_size=BATCH)  # 80% of the subset trains
    model = SimpleNet(data.input_shape, 10, block, 1, 8, 0, stride=1, **({"solver": solver} if solver else {}))
    settings = TrainSettings(max_epochs=1, progress=False, device="cpu")
    before = reads.count
    with reads:
        history = fit(model, data, settings).history
    return reads.count - before, history[0], (data.train.num_batches(BATCH), data.val.num_batches(BATCH))


@pytest.mark.parametrize(
    "block,solver", [("residual", None), ("ode", SolverSpec("rk4", step_size=0.25))], ids=["resnet", "rk4"]
)
def test_a_resnet_or_fixed_step_epoch_reads_the_device_a_constant_number_of_times(host_reads, block, solver):
    small, _, small_batches = one_epoch(block, solver, 160, host_reads)
    large, _, large_batches = one_epoch(block, solver, 480, host_reads)
    assert sum(large_batches) >= 2 * sum(small_batches)
    # training's loss, accuracy and finite-check in one read, validation's loss in one: none per batch
    assert small == large == 2


def test_an_adaptive_epoch_reads_the_device_once_per_solver_step(host_reads):
    solver = SolverSpec("dopri5", rtol=1e-3, atol=1e-3)
    reads, metrics, (train_batches, val_batches) = one_epoch("ode", solver, 320, host_reads)
    solves = train_batches + val_batches  # one ODE block: one forward solve per batch
    evaluations = metrics["nfe.forward"] * train_batches + metrics["val.nfe.forward"] * val_batches
    # dopri5 (FSAL): 6 evaluations per step, plus f(y0) and the initial step's trial evaluation per solve
    steps = (round(evaluations) - 2 * solves) / 6
    assert steps == int(steps) >= 2 * solves
    # one accept/reject read per step, one for the initial step size per solve, two per epoch
    assert reads == steps + solves + 2
