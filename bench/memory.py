"""Memory and exactness of the three gradient methods on one training step of the simple FashionMNIST block.

Setting: f = conv3x3 -> GroupNorm -> ReLU at 66 channels, 14x14, random inputs (batch 128 by default),
loss sum(z(T)). For direct backpropagation, the adjoint (mixed norm and seminorm) and the checkpointed
gradient, at dopri5 rtol = atol = 1e-3, 1e-5, 1e-7 and rk4 with 4, 16, 64 steps:
- FNFE and BNFE of the step;
- saved MB: the distinct storages autograd saved for backward during the forward pass (saved-tensor hooks);
- peak MB: the peak of live tensor bytes the step allocated on top of the parameters and input (forward
  and backward, counted by a dispatch mode: CPU's counterpart of CUDA's max_memory_allocated);
- time as a ratio to direct's at the same setting: the fastest of `--reps` untraced steps, settings
  interleaved, all in this one process (the machine is shared: only ratios from one run mean anything);
- time as a ratio to the step's arithmetic limit, from f alone timed in this process (fastest of 12):
  FNFE x (f forward + backward) for direct; FNFE x f without grad + BNFE x (f forward + backward) for the
  adjoint and the checkpointed gradient (whose backward pass re-runs f with autograd);
- gradient error: relative error of the parameter gradient against a float64 reference, the checkpointed
  gradient through dopri5 at rtol = atol = 1e-8 (memory-light, and exact for that solve).
The thesis's table 4.1 for our models: tensors saved for backward per method (column `tensors`) next to the
ResNets' (printed first).
Freed host memory is kept for reuse as the runner does by default (`train.reuse_host_memory`; BENCH_REUSE=0
measures glibc's default instead).
Usage: .venv/bin/python bench/memory.py [--batch 128] [--reps 2] [--adjoint-max-steps 400]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from ode_block import fastest_time  # noqa: E402

from models.ode_block import ODEBlock  # noqa: E402
from models.simple import ResidualBlock, dynamics  # noqa: E402
from models.solvers import SolverSpec  # noqa: E402
from odeflow.errors import SolverError  # noqa: E402
from runner.experiment.memory import MB, LiveTensorBytes, SavedTensorBytes  # noqa: E402
from runner.experiment.settings import reuse_freed_host_memory  # noqa: E402

# cheapest first, so that an interrupted run has printed the most settings
SETTINGS = [("dopri5", 1e-3), ("rk4", 4), ("rk4", 16), ("dopri5", 1e-5), ("rk4", 64), ("dopri5", 1e-7)]
METHODS = [("direct", "mixed"), ("adjoint", "mixed"), ("adjoint", "seminorm"), ("checkpoint", "mixed")]


def spec(method: str, value: float, gradient: str, norm: str, max_steps: int) -> SolverSpec:
    if method == "rk4":
        return SolverSpec("rk4", step_size=1.0 / value, gradient=gradient, adjoint_norm=norm)
    return SolverSpec(method, rtol=value, atol=value, gradient=gradient, adjoint_norm=norm, max_steps=max_steps)


def parameter_gradient(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in net.parameters()])


def training_step(net, x, solver: SolverSpec, traced: bool) -> dict:
    net.zero_grad(set_to_none=True)
    block = ODEBlock(net, solver)
    live, saved = LiveTensorBytes(), SavedTensorBytes()
    start = time.perf_counter()
    if traced:
        with live, saved:
            out = block(x)
        with live:
            out.sum().backward()
    else:
        block(x).sum().backward()
    return {
        "time": time.perf_counter() - start,
        "fnfe": block.forward_nfe,
        "bnfe": block.backward_nfe,
        "saved_mb": saved.bytes / MB,
        "saved_tensors": saved.tensors,
        "peak_mb": live.peak / MB,
        "grad": parameter_gradient(net),
    }


def reference_gradient(net, x) -> torch.Tensor:
    net64 = dynamics(66, True, "relu", "group").double()
    net64.load_state_dict(net.state_dict())
    ODEBlock(net64, SolverSpec("dopri5", rtol=1e-8, atol=1e-8, gradient="checkpoint", max_steps=100_000))(
        x.double()
    ).sum().backward()
    return parameter_gradient(net64).float()


def f_alone(net, x, samples: int = 12) -> dict[str, float]:
    """Fastest seconds of f's forward with autograd, its backward, and its forward without autograd."""
    forward, backward, no_grad = [], [], []

    def with_grad() -> None:
        xi = x.clone().requires_grad_(True)
        start = time.perf_counter()
        y = net(xi)
        mid = time.perf_counter()
        y.backward(torch.ones_like(y))
        forward.append(mid - start)
        backward.append(time.perf_counter() - mid)

    def without_grad() -> None:
        with torch.no_grad():
            net(x)

    for _ in range(samples):  # interleaved: drift hits the three alike
        with_grad()
        no_grad.append(fastest_time(without_grad, 1, 0))
    return {"forward": min(forward[1:]), "backward": min(backward[1:]), "no_grad": min(no_grad[1:])}


def limit(row: dict, f: dict[str, float], gradient: str) -> float:
    """The step's arithmetic limit: its evaluations of f at f's own fastest cost."""
    with_backward = f["forward"] + f["backward"]
    if gradient == "direct":
        return row["fnfe"] * with_backward
    return row["fnfe"] * f["no_grad"] + row["bnfe"] * with_backward


def resnet_saved(net, x, blocks: int) -> tuple[int, float]:
    body = torch.nn.Sequential(*(ResidualBlock(net) for _ in range(blocks)))
    with SavedTensorBytes() as saved:
        out = body(x)
    out.sum().backward()
    return saved.tensors, saved.bytes / MB


def print_row(method: str, value: float, gradient: str, norm: str, rows: dict, f: dict[str, float]) -> None:
    row = rows[(method, value, gradient, norm)]
    setting = f"{method} {value:g}" + (" steps" if method == "rk4" else "")
    name = gradient + (f" ({norm})" if gradient == "adjoint" else "")
    if "failed" in row:
        print(f"  {setting:<14}{name:<20} {row['failed']}", flush=True)
        return
    ratio = min(row["times"]) / min(rows[(method, value, "direct", "mixed")]["times"])
    print(
        f"  {setting:<14}{name:<20}{row['fnfe']:>6}{row['bnfe']:>6}{row['saved_tensors']:>8}{row['saved_mb']:>10.1f}"
        f"{row['peak_mb']:>9.1f}"
        f"{ratio:>9.2f}x{min(row['times']) / limit(row, f, gradient):>9.2f}x{row['error']:>12.2e}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--adjoint-max-steps", type=int, default=400, help="bound on the adjoint's steps per solve")
    parser.add_argument("--settings", nargs="*", help="a subset, e.g. dopri5:0.001 rk4:16")
    args = parser.parse_args()
    reuse = reuse_freed_host_memory(os.environ.get("BENCH_REUSE", "1") == "1")  # as the runner does by default
    torch.manual_seed(0)
    net, x = dynamics(66, True, "relu", "group"), torch.randn(args.batch, 66, 14, 14)
    started = time.perf_counter()
    reference = reference_gradient(net, x)
    print(f"float64 reference: {time.perf_counter() - started:.0f} s", flush=True)
    settings = SETTINGS if not args.settings else [s for s in SETTINGS if f"{s[0]}:{s[1]:g}" in args.settings]
    rows = {}
    print(
        f"\nmemory: one training step of the simple FashionMNIST block (66 ch 14x14, batch {args.batch}, "
        f"float32), fastest of {args.reps} steps, each setting's methods interleaved, one process; freed host "
        f"memory {'reused' if reuse else 'handed back (glibc default)'}"
    )
    print("saved for backward (thesis table 4.1: saved tensors of a ResNet; the ODE block's are in the table below)")
    for name, count in {"ResNet small (1 block)": 1, "ResNet large (3 blocks)": 3}.items():
        tensors, mb = resnet_saved(net, x, count)
        print(f"  {name:<24}{tensors:>6} tensors {mb:>8.1f} MB")
    header = f"  {'setting':<14}{'gradient':<20}{'FNFE':>6}{'BNFE':>6}{'tensors':>8}{'saved MB':>10}{'peak MB':>9}"
    f = f_alone(net, x)
    print(
        f"  f alone, fastest of 12: forward {f['forward']:.4f} s, backward {f['backward']:.4f} s, "
        f"forward without grad {f['no_grad']:.4f} s ('x f' = step time / its NFE at these costs)"
    )
    print(header + f"{'x direct':>10}{'x f':>10}{'grad error':>12}", flush=True)
    for method, value in settings:
        for gradient, norm in METHODS:
            solver = spec(method, value, gradient, norm, args.adjoint_max_steps)
            try:
                row = training_step(net, x, solver, traced=True)  # also the warm-up
            except (SolverError, AssertionError) as exc:  # the adjoint's backward solve fails inside autograd
                rows[(method, value, gradient, norm)] = {"failed": str(exc).splitlines()[0][:70]}
                continue
            row["error"] = float((row.pop("grad") - reference).norm() / reference.norm())
            row["times"] = []
            rows[(method, value, gradient, norm)] = row
        for _ in range(args.reps):  # interleaved: drift on a shared machine hits every method alike
            for gradient, norm in METHODS:
                row = rows[(method, value, gradient, norm)]
                if "failed" not in row:
                    solver = spec(method, value, gradient, norm, args.adjoint_max_steps)
                    row["times"].append(training_step(net, x, solver, False)["time"])
        for gradient, norm in METHODS:
            print_row(method, value, gradient, norm, rows, f)
    print(f"  ({(time.perf_counter() - started) / 60:.1f} min in all, the reference included)")


if __name__ == "__main__":
    main()
