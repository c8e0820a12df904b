"""train.precision: bf16 autocast trains with the ODE state in float32, checkpointed gradients re-run under the
forward's autocast, and reference solves compute in float32 without TF32 whatever the run uses. bf16 autocast
works on CPU, so all of this runs here for real; TF32 only changes CUDA arithmetic (its flags are checked)."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

from data import load_digits
from data.tensors import Split
from models import SimpleNet, SolverSpec
from models.ode_block import ODEBlock, ode_blocks
from odeflow.errors import ConfigError
from runner.experiment.adjoint_check import adjoint_gradient_check
from runner.experiment.precision import apply_precision, autocast, reference_numerics
from runner.experiment.settings import TrainSettings, seed_everything
from runner.experiment.training import fit
from tests.conftest import ROOT

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def tf32_flags_restored():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_a_bf16_epoch_trains_with_the_ode_state_and_its_stages_in_float32():
    seed_everything(0, True)
    data = load_digits(subset=120, batch_size=32)
    model = SimpleNet(data.input_shape, 10, "ode", 1, 8, 0, stride=1, solver=SolverSpec("dopri5"))
    block = ode_blocks(model)[0]
    seen: dict[str, set] = {"state": set(), "slope": set(), "inside f": set(), "out": set()}

    def state_and_slope(_module, args, out) -> None:  # a hook that returns something replaces the output
        seen["state"].add(args[1].dtype)
        seen["slope"].add(out.dtype)

    block.func.register_forward_hook(state_and_slope)
    block.func.net[0].register_forward_hook(lambda _m, _args, out: seen["inside f"].add(out.dtype))
    block.register_forward_hook(lambda _m, _args, out: seen["out"].add(out.dtype))
    before = copy.deepcopy(model.state_dict())
    history = fit(model, data, TrainSettings(max_epochs=1, progress=False, device="cpu", precision="bf16")).history
    assert seen["inside f"] == {torch.bfloat16}  # f computes in bfloat16 ...
    assert seen["state"] == seen["slope"] == seen["out"] == {torch.float32}  # ... the solver in float32
    assert torch.isfinite(torch.tensor(history[0]["train.loss"]))
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # it trained


STATE = (4, 10, 4, 4)


def block_gradients(spec: SolverSpec, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of z0 and of f's parameters, forward under `precision`'s autocast, backward outside it."""
    torch.manual_seed(0)
    block = ODEBlock(SimpleNet((1, 8, 8), 10, "ode", 1, 8, 2, solver=spec).body.func.net, spec)
    z0 = torch.randn(STATE).requires_grad_()
    with autocast(precision, CPU):
        out = block(z0)
    (out * torch.linspace(-1.0, 1.0, out.numel()).reshape(out.shape)).sum().backward()
    return z0.grad.reshape(-1), torch.cat([p.grad.reshape(-1) for p in block.parameters()])


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(
    "solver", [{"method": "rk4", "step_size": 0.25}, {"method": "dopri5", "rtol": 1e-3, "atol": 1e-3}]
)
@pytest.mark.parametrize("checkpoints", [None, 2])
def test_checkpointed_gradients_under_bf16_autocast_equal_direct_backpropagation_under_it(solver, checkpoints):
    direct_z0, direct_params = block_gradients(SolverSpec(**solver), "bf16")
    spec = SolverSpec(**solver, gradient="checkpoint", checkpoints=checkpoints)
    checkpointed_z0, checkpointed_params = block_gradients(spec, "bf16")
    fp32_z0, fp32_params = block_gradients(SolverSpec(**solver), "fp32")
    assert relative(fp32_z0, direct_z0) > 1e-2 and relative(fp32_params, direct_params) > 5e-2  # bf16 matters
    # the same bf16 arithmetic step by step: the same gradient of the state
    assert relative(checkpointed_z0, direct_z0) < 1e-6
    # direct backpropagation sums a weight's gradient over all steps in bfloat16 (autocast casts the weight once
    # and caches it), the checkpointed pass in float32 per step: they differ by bfloat16's rounding of that sum
    assert relative(checkpointed_params, direct_params) < 1e-2


def test_reference_numerics_turn_off_autocast_and_tf32_and_restore_them():
    apply_precision("tf32")
    conv = torch.nn.Conv2d(2, 2, 3)
    with autocast("bf16", CPU):
        assert conv(torch.randn(1, 2, 5, 5)).dtype == torch.bfloat16
        with reference_numerics(CPU):
            assert conv(torch.randn(1, 2, 5, 5)).dtype == torch.float32
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32


def test_fp32_turns_tf32_off_and_the_record_says_so():
    torch.backends.cudnn.allow_tf32 = True  # cuDNN's default
    assert apply_precision("fp32") == {
        "precision": "fp32",
        "autocast": None,
        "tf32_matmul": False,
        "tf32_cudnn": False,
    }
    assert apply_precision("bf16")["autocast"] == "bfloat16"


def test_the_adjoint_check_computes_in_float32_under_a_bf16_run():
    torch.manual_seed(0)
    spec = SolverSpec("rk4", step_size=0.25, gradient="checkpoint")
    model = SimpleNet((1, 8, 8), 10, "ode", 1, 8, 2, solver=spec)
    split = Split(torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,)))
    seen = set()
    model.body.func.net[0].register_forward_hook(lambda _m, _args, out: seen.add(out.dtype))
    with autocast("bf16", CPU):
        check = adjoint_gradient_check(model, split, 16, threshold=0.2)
    assert seen == {torch.float32}
    assert check["relative_error"] < 1e-5  # the checkpointed gradient is direct's to float32 round-off


def test_a_bad_precision_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        TrainSettings(precision="fp16")
    assert info.value.key == "precision" and "bf16" in str(info.value)


def test_cfg_job_shows_train_precision():
    out = subprocess.run(
        [sys.executable, "-m", "runner", "--cfg", "job"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "precision: fp32" in out.stdout
