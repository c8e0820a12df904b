"""The parameter-efficiency study: architectures at several widths and seeds, the table, thresholds and figure."""

from __future__ import annotations

import math
from pathlib import Path
from statistics import mean, stdev

import pytest
import torch

from runner.experiment.checkpoint import build_model, model_recipe
from runner.experiment.factories import to_plain
from runner.research.param_efficiency import params_to_reach
from runner.tracking.runstore import read_file_store, summary_row
from tests.conftest import CONF, compose_config, run_cli


def test_the_parameters_to_reach_a_target_are_interpolated_on_log_params():
    curve = [(10_000, 0.9), (100, 0.5), (1_000_000, 0.95)]  # any order: sorted by parameters
    assert params_to_reach(curve, 0.7) == pytest.approx(1_000)  # halfway in accuracy: halfway in log10(params)
    assert params_to_reach(curve, 0.6) == pytest.approx(10**2.5)  # a quarter of the way
    assert params_to_reach(curve, 0.925) == pytest.approx(100_000)
    assert params_to_reach(curve, 0.4) == 100  # the smallest width already reaches it
    assert params_to_reach(curve, 0.99) is None
    # the first crossing counts: a later dip below the target does not move it
    assert params_to_reach([(100, 0.5), (1_000, 0.8), (10_000, 0.7)], 0.75) == pytest.approx(10 ** (2 + 25 / 30))


@pytest.mark.parametrize("arch", sorted(p.stem for p in (CONF / "arch").glob("*.yaml")))
def test_every_architecture_of_the_study_builds_under_its_preset(arch: str, runs_dir: Path):
    cfg = compose_config(["experiment=study_param_efficiency", f"arch={arch}", "model.channels=4"], runs_dir)
    assert cfg.model.block == ("residual" if arch.startswith("resnet") else "ode") and cfg.model.stride == 1
    model = build_model(model_recipe(to_plain(cfg.model), to_plain(cfg.solver), (1, 8, 8), 10))
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def table_rows(text: str, heading: str) -> list[list[str]]:
    """The body rows of the first Markdown table after `heading` (the start of the text for '')."""
    section = text.split(heading, 1)[1] if heading else text
    lines = [line for line in section.splitlines() if line.startswith("|")]
    body = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines[2:]]
    return body[: next((i for i, r in enumerate(body) if r[0] == "architecture"), len(body))]


def test_the_study_trains_each_architecture_per_width_and_seed_and_reports_it(tmp_path: Path, runs_dir: Path):
    study = tmp_path / "param_efficiency"
    proc = run_cli(
        ["-m", "experiment=study_param_efficiency", "arch=resnet_small,odenet", "model.channels=4,8", "seed=0,1"]
        + ["train.max_epochs=1", "data.subset=300", f"hydra.sweep.dir={study}"],
        runs_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = read_file_store(runs_dir / "store")
    assert len(runs) == 8
    report = run_cli(["study", str(study)], runs_dir)
    assert report.returncode == 0, report.stderr
    text = (study / "param_efficiency.md").read_text()

    # per architecture and width: the runs' parameters, mean and spread of test accuracy over the two seeds
    expected = {}
    for run in runs:
        arch = "ResNet small" if run.config["model"]["block"] == "residual" else "ODEnet"
        expected.setdefault((arch, run.config["model"]["channels"]), []).append(run)
    rows = {(r[0], int(r[1])): r for r in table_rows(text, "")}
    assert set(rows) == set(expected)
    for key, mine in expected.items():
        row = rows[key]
        accuracies = [summary_row(r)["test_acc"] for r in mine]
        assert {r.config["seed"] for r in mine} == {0, 1}
        assert int(row[2].replace(",", "")) == mine[0].info["parameters"]["total"]
        assert int(row[3]) == 2
        assert float(row[4]) == pytest.approx(mean(accuracies), abs=5e-5)
        assert float(row[5]) == pytest.approx(stdev(accuracies), abs=5e-5)
        epoch_time = mean(mean(r.metrics["epoch.time"]["values"]) for r in mine)
        assert float(row[8]) == pytest.approx(epoch_time, abs=5e-3)
        if key[0] == "ODEnet":
            assert float(row[6]) == pytest.approx(mean(r.final("nfe.forward") for r in mine), abs=0.05)
            assert row[7] == "-"  # direct backpropagation: no BNFE
            baseline = mean(mean(r.metrics["epoch.time"]["values"]) for r in expected["ResNet small", key[1]])
            assert float(row[9].rstrip("x")) == pytest.approx(epoch_time / baseline, rel=0.05)
        else:
            assert row[6] == "-" and row[9] == "1.0x"  # the baseline of the time ratio
    # the threshold table: targets below the best mean, each architecture's first crossing on log params
    curves = {
        arch: sorted(
            (mine[0].info["parameters"]["total"], width, mean(summary_row(r)["test_acc"] for r in mine))
            for (a, width), mine in expected.items()
            if a == arch
        )
        for arch in ("ResNet small", "ODEnet")
    }
    best = max(acc for curve in curves.values() for _, _, acc in curve)
    thresholds = table_rows(text, "## Parameters needed")
    assert len(thresholds) == 6
    assert [float(r[1]) for r in thresholds[:3]] == [math.floor((best - g) * 1000) / 1000 for g in (0.01, 0.02, 0.05)]
    for arch, target, interpolated, smallest in thresholds:
        curve = curves[arch]
        reaching = [point for point in curve if point[2] >= float(target)]
        if not reaching:
            assert interpolated.startswith("not reached") and smallest == "-"
            continue
        params, width, acc = reaching[0]
        assert smallest == f"{width} ({params:,})"
        if reaching[0] == curve[0]:
            assert interpolated == f"<= {params:,} (reached at the smallest width)"
        else:
            below_params, _, below_acc = curve[curve.index(reaching[0]) - 1]
            share = (float(target) - below_acc) / (acc - below_acc)
            assert int(interpolated.replace(",", "")) == pytest.approx(
                below_params * (params / below_params) ** share, abs=1
            )
    assert (study / "param_efficiency.png").read_bytes()[:4] == b"\x89PNG"
