"""A smoke check of the GPU path, as a user meets it (`make gpu-check`; about five minutes on one GPU).

Runs the command line on CUDA and prints one table: each model trains; each gradient method with each solver
backend; `reproduce` MATCHes; a run killed mid-training `resume`s with continuous epochs; re-evaluation on CUDA
against the same on the CPU; an out-of-memory case (caught and reported); an epoch of the thesis's simple
ODEnet block with the fused solver against torchdiffeq. Runs go to a temporary store, deleted afterwards
(`--keep DIR` keeps them in DIR). Exit status 1 if a check failed or the machine has a GPU torch cannot use; on
a machine without a GPU it says so in one line and exits 0.
Usage: .venv/bin/python bench/gpu_check.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from runner.experiment.device import gpus_hidden, torch_build, visible_gpus, why_unusable  # noqa: E402
from runner.tracking.runstore import read_file_store  # noqa: E402

DEVICE = "cuda"  # what is checked (a dry run of the script itself on a machine without a GPU can set "cpu")
# digits (offline) with the quickstart's learning rate; the simple models keep the 8x8 images whole (stride 1)
QUICK = [
    "data=digits",
    "solver=dopri5",
    "train.lr=3e-3",
    "train.max_epochs=2",
    f"train.device={DEVICE}",
    "train.progress=false",
]
SIMPLE = ["model=odenet_simple", "model.stride=1"]
MODELS = {  # model -> its overrides (odenet_state takes vectors: the spheres)
    "odenet_simple": SIMPLE,
    "odenet_complex": ["model=odenet_complex"],
    "resnet_simple_small": ["model=resnet_simple_small", "model.stride=1"],
    "resnet_simple_large": ["model=resnet_simple_large", "model.stride=1"],
    "resnet_complex": ["model=resnet_complex"],
    "odenet_state": ["model=odenet_state", "data=spheres"],
}
GRADIENTS = [("direct", "fused"), ("direct", "torchdiffeq"), ("adjoint", "fused"), ("adjoint", "torchdiffeq")]
GRADIENTS += [("checkpoint", "fused")]  # checkpointing is the fused solver's alone


class Check:
    """Runs the command line against one store and collects a table row per check."""

    def __init__(self, runs: Path) -> None:
        self.runs, self.rows = runs, []
        self.env = {**os.environ, "ODEFLOW_RUNS": str(runs)}

    def cli(self, args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "runner", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def records(self) -> dict:
        return {r.id: r for r in read_file_store(self.runs / "store")} if (self.runs / "store").exists() else {}

    def train(self, args: list[str]):
        """One run on the command line; (its record, the process) or (None, the process)."""
        before = set(self.records())
        done = self.cli(args)
        new = [r for i, r in self.records().items() if i not in before]
        return (new[-1] if new else None), done

    def row(self, check: str, what: str, run: Callable[[], tuple[bool, str]]) -> bool:
        start = time.perf_counter()
        try:
            ok, detail = run()
        except Exception as exc:  # a check that crashes is a failed row, not the end of the table
            ok, detail = False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:150] if str(exc) else ''}"
        self.rows.append(
            {"check": check, "what": what, "result": "ok" if ok else "FAIL", "detail": detail,
             "s": round(time.perf_counter() - start, 1)}
        )  # fmt: skip
        print(f"  {check:<12} {what:<28} {'ok' if ok else 'FAIL'}  {detail}", flush=True)
        return ok


def format_rows(rows: list[dict]) -> str:
    """Left-aligned columns: check, what, result, seconds, then the detail (the long one) last."""
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in ("check", "what", "result", "s")}
    lines = ["  ".join(k.ljust(widths[k]) for k in widths) + "  detail"]
    lines += ["  ".join(str(r[k]).ljust(widths[k]) for k in widths) + "  " + r["detail"] for r in rows]
    return "\n".join(lines)


def last_line(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
    return lines[-1][:160] if lines else f"exit status {done.returncode}"


def finished(record, done: subprocess.CompletedProcess) -> tuple[bool, str]:
    if record is None or record.status != "COMPLETED" or done.returncode != 0:
        return False, last_line(done)
    cost, test = record.info.get("cost") or {}, record.info.get("test") or {}
    on = (record.info.get("device_info") or {}).get("gpu") or record.info.get("device")
    return record.info.get("device", "").startswith(DEVICE), (
        f"run {record.id} on {on}: test acc {test.get('test.acc', float('nan')):.3f}, "
        f"{cost.get('epoch_time', float('nan')):.2f} s/epoch"
    )


def check_models(check: Check) -> dict[str, int]:
    ids = {}
    for model, extra in MODELS.items():

        def run(model=model, extra=extra) -> tuple[bool, str]:
            record, done = check.train([*QUICK, *extra])
            if record is not None:
                ids[model] = record.id
            return finished(record, done)

        check.row("model", model, run)
    return ids


def check_gradients(check: Check) -> None:
    for gradient, backend in GRADIENTS:

        def run(gradient=gradient, backend=backend) -> tuple[bool, str]:
            record, done = check.train([*QUICK, *SIMPLE, f"solver.gradient={gradient}", f"solver.backend={backend}"])
            ok, detail = finished(record, done)
            if ok and gradient != "direct":
                detail += f", BNFE {(record.info.get('cost') or {}).get('bnfe')}"
            return ok, detail

        check.row("gradient", f"{gradient} / {backend}", run)


def check_reproduce(check: Check, run_id: int) -> None:
    def run() -> tuple[bool, str]:
        done = check.cli(["reproduce", str(run_id)])
        verdict = [line for line in done.stdout.splitlines() if line.startswith(("MATCH", "MISMATCH", "  why"))]
        return done.returncode == 0 and bool(verdict), " ".join(verdict)[:200] or last_line(done)

    check.row("reproduce", f"run {run_id} on {DEVICE}", run)


def check_resume(check: Check) -> None:
    def run() -> tuple[bool, str]:
        quick = [a for a in QUICK if not a.startswith(("train.progress=", "train.max_epochs="))]
        args = [*quick, *SIMPLE, "train.max_epochs=6", "train.patience=10", "train.progress=true"]  # epoch lines
        victim = subprocess.Popen(
            [sys.executable, "-m", "runner", *args],
            cwd=ROOT, env=check.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        try:
            seen = 0
            for line in victim.stdout:
                seen += line.startswith("epoch ")
                if seen == 2:  # printed after the epoch's training state was saved
                    break
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=60)
        finally:
            if victim.poll() is None:
                victim.kill()
        killed = max(check.records().values(), key=lambda r: r.id)
        done = check.cli(["resume", str(killed.id)])
        resumed = max(check.records().values(), key=lambda r: r.id)
        steps = resumed.metrics.get("val.loss", {}).get("steps", [])
        ok = done.returncode == 0 and resumed.status == "COMPLETED" and steps == [1, 2, 3, 4, 5, 6]
        return ok, f"run {killed.id} killed after epoch 2, resumed as run {resumed.id}: epochs {steps}"

    check.row("resume", "SIGKILL after epoch 2", run)


def check_reevaluation(check: Check, run_id: int) -> None:
    def run() -> tuple[bool, str]:
        results = []
        for device in (DEVICE, "cpu"):
            done = check.cli(["reevaluate", str(run_id), "--device", device, "--grid", "rk4:0.25", "dopri5:1e-3"])
            if done.returncode != 0:
                return False, f"{device}: {last_line(done)}"
            record = max(check.records().values(), key=lambda r: r.id)
            results.append(record.info["reevaluation"])
        pairs = list(zip(*results, strict=True))
        loss = max(abs(a["loss"] - b["loss"]) for a, b in pairs)
        accuracy = max(abs(a["accuracy"] - b["accuracy"]) for a, b in pairs)
        ok = loss < 1e-3 and accuracy <= 0.01
        return ok, f"{len(pairs)} solver settings: max |loss {DEVICE} - cpu| {loss:.2e}, max |acc diff| {accuracy:.4f}"

    check.row("reevaluate", f"run {run_id}: {DEVICE} vs cpu", run)


def check_out_of_memory(check: Check) -> None:
    def run() -> tuple[bool, str]:
        total_gb = torch.cuda.get_device_properties(0).total_memory / 2**30
        record, done = check.train(
            [*QUICK, *SIMPLE, "model.channels=8192", "data.batch_size=1024", "train.max_epochs=1"]
        )
        status = record.status if record is not None else "not recorded"
        said = last_line(done)
        traceback = "Traceback" in done.stderr
        ok = done.returncode != 0 and not traceback and status == "FAILED"
        return ok, f"{total_gb:.0f} GB GPU: exit {done.returncode}, run {status}, says: {said}" + (
            " (with a traceback)" if traceback else ""
        )

    check.row("memory", "out of memory", run)


def check_epoch_time(check: Check) -> None:
    from data.splits import make_bundle, scale_uint8
    from models import SimpleNet, SolverSpec
    from runner.experiment.settings import TrainSettings, seed_everything
    from runner.experiment.training import fit

    rng = np.random.default_rng(0)
    n_train = 5120
    images = scale_uint8(rng.integers(0, 256, (n_train + 512, 1, 28, 28), dtype=np.uint8))
    labels = rng.integers(0, 10, n_train + 512)
    data = make_bundle(
        "fashion_mnist_shaped", images[:n_train], labels[:n_train], images[n_train:], labels[n_train:],
        [str(i) for i in range(10)], 0.2, None, 0, 128,
    ).to(torch.device("cuda"))  # fmt: skip
    settings = TrainSettings(max_epochs=3, patience=100, progress=False, device="cuda")
    times = {}
    for backend in ("fused", "torchdiffeq"):

        def run(backend=backend) -> tuple[bool, str]:
            seed_everything(0, True)
            model = SimpleNet((1, 28, 28), 10, "ode", 1, 64, 2, solver=SolverSpec("dopri5", backend=backend))
            history = fit(model.cuda(), data, settings).history
            times[backend] = statistics.mean(h["epoch.time"] for h in history[1:])  # the first warms up
            fnfe = statistics.mean(h["nfe.forward"] for h in history[1:])
            return True, f"{times[backend]:.2f} s/epoch ({n_train} samples, batch 128), mean FNFE {fnfe:.1f}"

        check.row("epoch time", f"simple ODEnet / {backend}", run)
    if len(times) == 2:
        check.row("epoch time", "fused vs torchdiffeq", lambda: (True, f"{times['torchdiffeq'] / times['fused']:.2f}x"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="keep the runs in this folder instead of a temporary one")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        if gpus_hidden():
            hidden = os.environ["CUDA_VISIBLE_DEVICES"]
            print(f"gpu-check: CUDA_VISIBLE_DEVICES={hidden!r} hides every GPU: nothing to check")
            return 0
        if gpus := visible_gpus():
            cause, fix = why_unusable(gpus[0])
            print(f"gpu-check: nvidia-smi sees {gpus[0].name} but {torch_build()} cannot use it: {cause}; fix: {fix}")
            return 1
        print(
            f"gpu-check: no GPU here (torch sees no CUDA device, nvidia-smi none): nothing to check ({torch_build()})"
        )
        return 0
    runs = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    runs.mkdir(parents=True, exist_ok=True)
    check = Check(runs)
    started = time.perf_counter()
    print(f"gpu-check on {torch.cuda.get_device_name(0)}, {torch_build()}; runs in {runs}", flush=True)
    try:
        ids = check_models(check)
        check_gradients(check)
        if "odenet_simple" in ids:
            check_reproduce(check, ids["odenet_simple"])
            check_reevaluation(check, ids["odenet_simple"])
        check_resume(check)
        check_out_of_memory(check)
        check_epoch_time(check)
    finally:
        if not args.keep:
            shutil.rmtree(runs, ignore_errors=True)
    print(f"\ngpu-check: {len(check.rows)} checks in {time.perf_counter() - started:.0f} s on "
          f"{torch.cuda.get_device_name(0)}")  # fmt: skip
    print(format_rows(check.rows))
    failed = [r for r in check.rows if r["result"] != "ok"]
    print(json.dumps({"failed": [f"{r['check']}: {r['what']}" for r in failed]}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
