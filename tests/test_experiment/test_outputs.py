"""The per-run figures write_outputs draws: which ones, from which series of the history."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from runner.experiment.pipeline import run_title, write_outputs
from runner.experiment.training import FitResult

CONFIG = {
    "name": "quickstart",
    "model": {"_target_": "models.SimpleNet", "block": "ode"},
    "data": {"_target_": "data.load_digits"},
    "solver": {"method": "dopri5", "rtol": 1e-3},
}


def outputs(tmp_path: Path, history: list[dict[str, float]], is_ode: bool = True) -> dict[str, Path]:
    results = {
        "test.loss": 0.2,
        "test.acc": 0.9,
        "report": {"confusion_matrix": [[3, 1], [0, 4]], "per_class": [{"class": "a"}, {"class": "b"}]},
    }
    fit = FitResult(history, best_epoch=2, best_val_loss=history[1]["val.loss"])
    return write_outputs(tmp_path, nn.Linear(2, 2), {"_target_": "x"}, CONFIG, fit, results, ["a", "b"], is_ode)


def epochs(n: int, **extra) -> list[dict[str, float]]:
    return [
        {
            "epoch": e,
            "train.loss": 1 / e,
            "val.loss": 1.2 / e,
            "train.acc": 0.5,
            "val.acc": 0.5,
            "nfe.forward": 20.0,
            "nfe.backward": 0.0,
            **{k: f(e) for k, f in extra.items()},
        }
        for e in range(1, n + 1)
    ]


def test_extra_epoch_series_get_their_own_figures_beside_the_standard_ones(tmp_path: Path):
    plain = outputs(tmp_path / "plain", epochs(3))
    assert {n for n in plain if n.endswith(".png")} == {"confusion_matrix.png", "learning_curves.png", "nfe.png"}
    extra = outputs(
        tmp_path / "extra",
        epochs(3, **{"memory.train.peak_bytes": lambda e: 2.0**20 * e, "adaptation.step_size": lambda e: 0.1 / e}),
        is_ode=False,
    )
    pngs = {n for n in extra if n.endswith(".png")}
    assert pngs == {"confusion_matrix.png", "learning_curves.png", "memory.png", "adaptation.png"}
    assert all(extra[n].read_bytes()[:4] == b"\x89PNG" for n in pngs)


def test_run_title_says_what_ran():
    assert run_title(CONFIG) == "quickstart: SimpleNet (ode block) on digits, dopri5"
    resnet = {**CONFIG, "model": {"_target_": "models.SimpleNet", "block": "residual"}}
    assert run_title(resnet) == "quickstart: SimpleNet (residual block) on digits"
