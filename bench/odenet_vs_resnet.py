"""ODEnet epoch vs small-ResNet epoch on FashionMNIST-shaped data, next to the ratio their NFE predicts.

Every evaluation of f in the ODEnet costs what the ResNet's one residual block costs, and the stem and
classifier are cheap, so the ODEnet should take about (mean FNFE per batch) times as long. The thesis
measured 14x on a K80 GPU (4 min vs 17 s per epoch). Random 28x28 images (no download), one run.
Usage: .venv/bin/python bench/odenet_vs_resnet.py
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from data.splits import make_bundle, scale_uint8  # noqa: E402
from models import SimpleNet, SolverSpec  # noqa: E402
from runner.experiment.settings import TrainSettings, seed_everything  # noqa: E402
from runner.experiment.training import fit  # noqa: E402

N_TRAIN, EPOCHS = 1280, 2


def main() -> None:
    rng = np.random.default_rng(0)
    images = scale_uint8(rng.integers(0, 256, (N_TRAIN + 128, 1, 28, 28), dtype=np.uint8))
    labels = rng.integers(0, 10, N_TRAIN + 128)
    data = make_bundle(
        "fashion_mnist_shaped",
        images[:N_TRAIN],
        labels[:N_TRAIN],
        images[N_TRAIN:],
        labels[N_TRAIN:],
        [str(i) for i in range(10)],
        0.2,
        None,
        0,
        128,
    )
    settings = TrainSettings(max_epochs=EPOCHS, patience=100, progress=False, device="cpu")
    results = {}
    for name, make in [
        (
            "odenet_simple (64+2 ch, dopri5)",
            lambda: SimpleNet((1, 28, 28), 10, "ode", 1, 64, 2, solver=SolverSpec("dopri5")),
        ),
        ("resnet_simple_small (66 ch)", lambda: SimpleNet((1, 28, 28), 10, "residual", 1, 66, 0)),
    ]:
        seed_everything(0, True)
        history = fit(make(), data, settings).history
        results[name] = (
            statistics.mean(h["epoch.time"] for h in history),
            statistics.mean(h["nfe.forward"] for h in history),
        )
    (ode_name, (ode_time, fnfe)), (res_name, (res_time, _)) = results.items()
    print(
        f"\nODEnet vs ResNet epoch, {N_TRAIN} FashionMNIST-shaped samples (80% train, 20% validation), mean of "
        f"{EPOCHS} epochs"
    )
    print(f"  {ode_name:<34} {ode_time:7.2f} s/epoch   mean FNFE {fnfe:.1f}")
    print(f"  {res_name:<34} {res_time:7.2f} s/epoch")
    print(f"  measured ratio {ode_time / res_time:.1f}x   predicted by NFE {fnfe:.1f}x   (thesis, K80 GPU: 14x)")


if __name__ == "__main__":
    main()
