"""Checkpointed gradients (solver.gradient=checkpoint) are direct backpropagation's, with a fraction of its memory."""

from __future__ import annotations

import copy

import pytest
import torch

from models import SimpleNet, SolverSpec
from models.checkpointed import Trajectory
from models.ode_block import ODEBlock
from models.simple import dynamics
from odeflow.errors import ConfigError
from runner.experiment.memory import SavedTensorBytes

SOLVERS = {
    "dopri5": {"method": "dopri5", "rtol": 1e-4, "atol": 1e-4},
    "bosh3": {"method": "bosh3", "rtol": 1e-4, "atol": 1e-4},
    "rk4": {"method": "rk4", "step_size": 0.1},
}


def block_input(dtype: torch.dtype) -> tuple[torch.nn.Module, torch.Tensor]:
    """f of an 8+2-channel simple ODEnet with batch norm (running statistics must not count the re-run) and
    a block input."""
    torch.manual_seed(0)
    model = SimpleNet((1, 8, 8), 10, "ode", 1, 8, 2, norm="batch", solver=SolverSpec("dopri5")).to(dtype)
    return model.body.func.net, torch.randn(4, 10, 4, 4, dtype=dtype)


def gradients(net: torch.nn.Module, z0: torch.Tensor, spec: SolverSpec) -> tuple[torch.Tensor, torch.Tensor, ODEBlock]:
    """(gradients of a fixed linear read-out of z(T) with respect to z0 and the parameters, the batch-norm
    buffers afterwards, the block)."""
    net = copy.deepcopy(net).train()
    block = ODEBlock(net, spec)
    z = z0.clone().requires_grad_()
    out = block(z)
    (out * torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).reshape(out.shape)).sum().backward()
    grads = torch.cat([z.grad.reshape(-1)] + [p.grad.reshape(-1) for p in net.parameters()])
    return grads, torch.cat([b.reshape(-1).to(out.dtype) for b in net.buffers()]), block


@pytest.mark.parametrize("checkpoints", [None, 2, 3])
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("dtype,bound", [(torch.float64, 1e-9), (torch.float32, 1e-5)], ids=["float64", "float32"])
def test_checkpointed_gradients_equal_direct_backpropagation(solver, checkpoints, dtype, bound):
    net, z0 = block_input(dtype)
    direct, direct_buffers, direct_block = gradients(net, z0, SolverSpec(**SOLVERS[solver]))
    spec = SolverSpec(**SOLVERS[solver], gradient="checkpoint", checkpoints=checkpoints)
    checkpointed, buffers, block = gradients(net, z0, spec)
    assert float((checkpointed - direct).norm() / direct.norm()) < bound
    assert torch.equal(buffers, direct_buffers)  # the re-run left batch norm's running statistics alone
    assert block.forward_nfe == direct_block.forward_nfe and direct_block.backward_nfe == 0
    if checkpoints is None:  # the backward pass re-runs the accepted steps only: no backward solve, no rejected step
        assert 0 < block.backward_nfe <= block.forward_nfe
    else:  # the states between the kept ones were recomputed too
        _, _, unbounded = gradients(net, z0, SolverSpec(**SOLVERS[solver], gradient="checkpoint"))
        assert block.backward_nfe > unbounded.backward_nfe


def test_a_bounded_trajectory_keeps_at_most_k_states_and_always_the_first():
    for limit in (2, 3, 5):
        trajectory = Trajectory(limit)
        for i in range(37):
            trajectory(i * 0.1, 0.1, torch.tensor(float(i)), None, None)
        assert 0 in trajectory.kept and 2 <= len(trajectory.kept) <= limit and len(trajectory.steps) == 37
        kept = sorted(trajectory.kept)
        gaps = [b - a for a, b in zip(kept, [*kept[1:], 37], strict=True)]
        assert max(gaps) <= 2 * 37 / limit + 1


def test_a_checkpoint_training_step_saves_at_most_a_third_of_directs_bytes():
    """The benchmark's block (66 channels, 14x14; batch 8 here: both figures grow linearly with the batch)."""
    torch.manual_seed(0)
    net, x = dynamics(66, True, "relu", "group"), torch.randn(8, 66, 14, 14)
    saved = {}
    for gradient in ("direct", "checkpoint"):
        block = ODEBlock(net, SolverSpec("dopri5", rtol=1e-3, atol=1e-3, gradient=gradient))
        with SavedTensorBytes() as counter:
            out = block(x)
        out.sum().backward()
        saved[gradient] = counter.bytes
    assert 0 < saved["checkpoint"] <= saved["direct"] / 3


def test_gradient_spellings_and_refusals():
    assert SolverSpec("dopri5", adjoint=True).gradient == "adjoint"
    assert SolverSpec("dopri5").gradient == "direct" and not SolverSpec("dopri5").adjoint
    assert SolverSpec("dopri5", gradient="adjoint").adjoint
    # a gradient that is set wins over a preset's adjoint: true
    spec = SolverSpec("dopri5", adjoint=True, gradient="checkpoint")
    assert spec.gradient == "checkpoint" and not spec.adjoint
    with pytest.raises(ConfigError, match="backend=torchdiffeq"):
        SolverSpec("dopri5", backend="torchdiffeq", gradient="checkpoint")
    with pytest.raises(ConfigError, match="fixed_adams"):
        SolverSpec("fixed_adams", step_size=0.25, gradient="checkpoint")
    with pytest.raises(ConfigError, match="checkpoints"):
        SolverSpec("dopri5", gradient="checkpoint", checkpoints=1)
    with pytest.raises(ConfigError, match="gradient"):
        SolverSpec("dopri5", gradient="exact")


def test_evaluating_a_checkpoint_block_is_the_plain_solve():
    net, z0 = block_input(torch.float64)
    net.eval()
    direct = ODEBlock(net, SolverSpec("dopri5"))
    checkpointed = ODEBlock(net, SolverSpec("dopri5", gradient="checkpoint"))
    with torch.no_grad():
        assert torch.equal(direct(z0), checkpointed(z0)) and direct.forward_nfe == checkpointed.forward_nfe
