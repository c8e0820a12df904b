"""ODE block cost against the arithmetic limit, fused path vs plain torchdiffeq.odeint.

Setting: the simple FashionMNIST ODEnet's block (f = conv3x3 -> GroupNorm -> ReLU at
66 channels, 14x14), batch 128, random inputs. The arithmetic limit is NFE x the time of f alone:
direct training step  FNFE x (f forward with grad + f backward)
adjoint training step FNFE x f forward without grad + BNFE x (f forward with grad + f backward)
evaluation forward    FNFE x f forward without grad
Each configuration runs in a fresh process (allocator state changes CPU timings), all in one run, and
keeps freed host memory for reuse as the runner does (`train.reuse_host_memory`; BENCH_REUSE=0 measures
glibc's default, where every new state-sized tensor pays page faults, f alone included).
--time-dependence concat or basis (K = 4, piecewise) measures a time-dependent f instead (t as an extra input
channel, or theta(t) from 4 coefficient sets; the limit is then NFE x that f alone, called at one time), and
--short keeps dopri5 1e-3 direct and rk4 0.25 direct only.
Usage: .venv/bin/python bench/ode_block.py [--quick] [--short] [--time-dependence none|concat|basis]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = [  # (backend, method, value, adjoint, adjoint norm)
    (backend, method, value, adjoint, "mixed")
    for method, value in [("dopri5", 1e-3), ("rk4", 0.25), ("euler", 0.25)]
    for adjoint in (False, True)
    for backend in ("fused", "torchdiffeq")
] + [(backend, "dopri5", 1e-3, True, "seminorm") for backend in ("fused", "torchdiffeq")]
MEMORY_VS_NFE = [("fused", "dopri5", tol, adjoint, "mixed") for adjoint in (False, True) for tol in (1e-2, 1e-4)]


def fastest_time(fn, reps: int, warmup: int = 1) -> float:
    """The fastest of `reps` calls: on a shared machine noise only ever adds time, so the fastest call is the
    best estimate of what the work costs. The limit is built from f's fastest calls too: the ratio compares
    like with like (a median against a minimum would count the machine's noise as solver overhead)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


REFERENCE_FILE = Path(os.environ.get("TMPDIR", "/tmp")) / "odeflow-bench-reference-gradients.pt"


def block_setup(time_dependence: str = "none"):
    """The benchmark's f (seeded) and input."""
    import torch

    from models.simple import dynamics
    from models.time_dependent import TimeDependence

    torch.manual_seed(0)
    time = TimeDependence(time_dependence, "piecewise", 4)
    return dynamics(66, True, "relu", "group", time), torch.randn(128, 66, 14, 14)


def f_alone(net, time_dependence: str):
    """f as a function of the state: a time-dependent f at one fixed time (what one evaluation costs)."""
    import torch

    if time_dependence == "none":
        return net
    t = torch.tensor(0.3)
    return lambda z: net(t, z)


def reference_gradients() -> None:
    """Parameter gradients of sum(z(T)) by direct backpropagation through float64 dopri5 solves at 1e-8,
    saved to REFERENCE_FILE. The loss is a sum over samples, so the batch is solved in chunks of 8 (a
    solve this accurate is the same whichever samples share its steps) to keep the graph in memory small."""
    import torch

    from models.ode_block import ODEBlock
    from models.solvers import SolverSpec

    net, x = block_setup()
    net = net.double()
    block = ODEBlock(net, SolverSpec("dopri5", rtol=1e-8, atol=1e-8, max_steps=100_000))
    for chunk in x.double().split(8):
        out = block(chunk)
        out.backward(torch.ones_like(out))
    torch.save(torch.cat([p.grad.reshape(-1) for p in net.parameters()]), REFERENCE_FILE)


def measure_one(
    backend: str, method: str, value: float, adjoint: bool, norm: str, reps: int, time_dependence: str = "none"
) -> dict:
    import torch

    from models.ode_block import ODEBlock
    from models.solvers import SolverSpec
    from runner.experiment.settings import reuse_freed_host_memory

    reuse_freed_host_memory(os.environ.get("BENCH_REUSE", "1") == "1")  # as the runner does by default
    net, x = block_setup(time_dependence)
    f = f_alone(net, time_dependence)
    fixed = method in ("rk4", "euler")
    spec = SolverSpec(
        method,
        step_size=value if fixed else None,
        rtol=1e-3 if fixed else value,
        atol=1e-3 if fixed else value,
        adjoint=adjoint,
        backend=backend,
        adjoint_norm=norm,
    )
    block = ODEBlock(net, spec)

    def f_forward_backward():
        xi = x.clone().requires_grad_(True)
        start = time.perf_counter()
        y = f(xi)
        mid = time.perf_counter()
        y.backward(torch.ones_like(y))
        return mid - start, time.perf_counter() - mid

    def f_without_grad():
        with torch.no_grad():
            f(x)

    pairs, nograd = [], []

    def time_f_alone(samples: int) -> None:
        """f alone, interleaved so drift hits all three timings alike."""
        for _ in range(samples):
            pairs.append(f_forward_backward())
            nograd.append(fastest_time(f_without_grad, 1, 0))

    for _ in range(3):
        f_forward_backward()
        f_without_grad()
    time_f_alone(6)

    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    counts = {}

    def train_step():
        block.zero_grad(set_to_none=True)
        start = time.perf_counter()
        out = block(x)
        counts["fnfe"] = block.forward_nfe
        mid = time.perf_counter()
        out.backward(torch.ones_like(out))
        counts["bnfe"] = block.backward_nfe
        counts.setdefault("fwd", []).append(mid - start)
        counts.setdefault("bwd", []).append(time.perf_counter() - mid)

    train = fastest_time(train_step, reps)
    peak_rise_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kb) / 1024

    def evaluate():
        with torch.no_grad():
            block(x)
        counts["eval_fnfe"] = block.forward_nfe

    evaluation = fastest_time(evaluate, max(reps, 5))  # cheap: a few more calls
    # f alone again after the block, in the allocator state the block left: this VM's timings drift
    # within a process, so the limit uses the minimum over both rounds (f's cost in the best state).
    time_f_alone(6)
    f_fwd, f_bwd = min(p[0] for p in pairs), min(p[1] for p in pairs)
    f_nograd = min(nograd)
    fnfe, bnfe = counts["fnfe"], counts["bnfe"]
    limit_train = fnfe * f_nograd + bnfe * (f_fwd + f_bwd) if adjoint else fnfe * (f_fwd + f_bwd)
    limit_eval = counts["eval_fnfe"] * f_nograd
    grad_error = None
    if method == "dopri5" and value == 1e-3 and time_dependence == "none" and REFERENCE_FILE.exists():
        block.zero_grad(set_to_none=True)
        out = block(x)
        out.backward(torch.ones_like(out))
        grads = torch.cat([p.grad.reshape(-1) for p in net.parameters()]).double()
        reference = torch.load(REFERENCE_FILE)
        grad_error = float((grads - reference).norm() / reference.norm())
    return {
        "backend": backend,
        "method": method,
        "value": value,
        "adjoint": adjoint,
        "norm": norm,
        "fnfe": fnfe,
        "bnfe": bnfe,
        "grad_error": grad_error,
        "train_s": train,
        "fwd_s": min(counts["fwd"]),
        "bwd_s": min(counts["bwd"]),
        "eval_s": evaluation,
        "train_x_limit": train / limit_train,
        "eval_x_limit": evaluation / limit_eval,
        "peak_rise_mb": peak_rise_mb,
        "f_fwd_s": f_fwd,
        "f_bwd_s": f_bwd,
        "f_nograd_s": f_nograd,
        "time_dependence": time_dependence,
    }


def run_fresh(config: tuple, reps: int, time_dependence: str = "none") -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--one", json.dumps([*config, time_dependence]), "--reps", str(reps)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if proc.returncode != 0:
        sys.exit(f"configuration {config} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def label(r: dict) -> str:
    setting = f"h={r['value']:g}" if r["method"] in ("rk4", "euler") else f"tol={r['value']:g}"
    kind = ("adjoint" + (" semi" if r["norm"] == "seminorm" else "")) if r["adjoint"] else "direct"
    return f"{r['method']} {setting} {kind}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--one")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="dopri5 only, 2 repetitions")
    parser.add_argument("--short", action="store_true", help="dopri5 1e-3 and rk4 0.25, direct only")
    parser.add_argument("--time-dependence", default="none", choices=["none", "concat", "basis"])
    parser.add_argument("--reference", action="store_true", help="(internal) write the reference gradients")
    args = parser.parse_args()
    if args.reference:
        reference_gradients()
        return
    if args.one:
        config = json.loads(args.one)
        print(json.dumps(measure_one(*config[:5], args.reps, *config[5:])))
        return
    configs = [c for c in CONFIGS if c[1] == "dopri5" and c[4] == "mixed"] if args.quick else CONFIGS
    if args.short:
        configs = [c for c in CONFIGS if c[1] in ("dopri5", "rk4") and not c[3]]
    reps = 2 if args.quick or args.short else args.reps
    if args.time_dependence == "none" and not args.short:
        subprocess.run(
            [sys.executable, __file__, "--reference"], check=True, cwd=ROOT
        )  # in its own process: its memory goes with it
    rows = [run_fresh(c, reps, args.time_dependence) for c in configs]
    f = rows[0]
    print(
        f"\nODE block, f time dependence {args.time_dependence}, batch 128, 66 ch 14x14 (f alone, fastest of 12: "
        f"fwd {f['f_fwd_s']:.3f}s, bwd "
        f"{f['f_bwd_s']:.3f}s, "
        f"fwd without grad {f['f_nograd_s']:.3f}s), fastest of {reps} training steps and of {max(reps, 5)} "
        "evaluations, fresh process each"
    )
    header = (
        f"{'configuration':<30}{'backend':<13}{'FNFE':>5}{'BNFE':>6}{'train s':>9}{'x limit':>9}"
        f"{'eval s':>8}{'x limit':>9}{'peak MB':>9}"
    )
    print(header)
    for r in rows:
        print(
            f"{label(r):<30}{r['backend']:<13}{r['fnfe']:>5}{r['bnfe']:>6}{r['train_s']:>9.3f}{r['train_x_limit']:>9.2f}"
            f"{r['eval_s']:>8.3f}{r['eval_x_limit']:>9.2f}{r['peak_rise_mb']:>9.0f}"
        )
    print("\nfused vs torchdiffeq (same configuration): speed-up of the training step / evaluation forward")
    by_key = {(label(r), r["backend"]): r for r in rows}
    for name in dict.fromkeys(label(r) for r in rows):
        fused, ref = by_key.get((name, "fused")), by_key.get((name, "torchdiffeq"))
        if fused and ref:
            print(
                f"  {name:<28} train {ref['train_s'] / fused['train_s']:.2f}x   eval "
                f"{ref['eval_s'] / fused['eval_s']:.2f}x"
            )
    graded = [r for r in rows if r["grad_error"] is not None]
    if graded:
        print("\nadjoint norms (dopri5 1e-3): BNFE, backward time, and the parameter gradients' relative error against")
        print("direct backpropagation through a float64 dopri5 solve at 1e-8 (the mixed norm is torchdiffeq's default)")
        for r in graded:
            print(
                f"  {label(r):<28} {r['backend']:<12} BNFE {r['bnfe']:>4}  backward {r['bwd_s']:7.3f} s  gradient "
                f"error {r['grad_error']:.2e}"
            )
    if not args.quick and not args.short:
        print("\npeak memory against NFE (fused dopri5): direct backpropagation grows with NFE, the adjoint stays flat")
        for r in [run_fresh(c, 1) for c in MEMORY_VS_NFE]:
            print(f"  {label(r):<28} FNFE {r['fnfe']:>4} BNFE {r['bnfe']:>5}  peak rise {r['peak_rise_mb']:>7.0f} MB")


if __name__ == "__main__":
    main()
