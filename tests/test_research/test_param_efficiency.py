"""The parameter-efficiency study: architectures at several widths and seeds, the table, thresholds and figure."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from statistics import mean, stdev
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir

from odeflow.errors import UserError
from runner.experiment.checkpoint import build_model, model_recipe
from runner.experiment.factories import to_plain
from runner.research.param_efficiency import architecture, params_to_reach, threshold_rows, write_param_efficiency
from runner.tracking.runstore import RunRecord, read_file_store, summary_row
from tests.conftest import CONF, compose_config, run_cli

ARCHITECTURES = sorted(p.stem for p in (CONF / "arch").glob("*.yaml"))


def test_the_parameters_to_reach_a_target_are_interpolated_on_log_params():
    curve = [(10_000, 0.9), (100, 0.5), (1_000_000, 0.95)]  # any order: sorted by parameters
    assert params_to_reach(curve, 0.7) == pytest.approx(1_000)  # halfway in accuracy: halfway in log10(params)
    assert params_to_reach(curve, 0.6) == pytest.approx(10**2.5)  # a quarter of the way
    assert params_to_reach(curve, 0.925) == pytest.approx(100_000)
    assert params_to_reach(curve, 0.4) == 100  # the smallest width already reaches it
    assert params_to_reach(curve, 0.99) is None
    # the first crossing counts: a later dip below the target does not move it
    assert params_to_reach([(100, 0.5), (1_000, 0.8), (10_000, 0.7)], 0.75) == pytest.approx(10 ** (2 + 25 / 30))


def test_each_architecture_needs_the_parameters_of_its_first_width_reaching_each_target():
    def curve(arch: str, params: list[int], accuracies: list[float]) -> list[dict[str, Any]]:
        return [
            {"architecture": arch, "width": w, "params": p, "acc_mean": a}
            for w, p, a in zip((4, 8, 16), params, accuracies, strict=True)
        ]

    rows = curve("A", [100, 1_000, 10_000], [0.5, 0.95, 0.91]) + curve("B", [200, 2_000, 20_000], [0.92, 0.6, 0.93])
    table = [(r["architecture"], r["target"], r["interpolated"], r["smallest"]) for r in threshold_rows(rows)]
    assert table == [  # targets 0.01, 0.02 and 0.05 below the best mean accuracy (0.95)
        ("A", 0.94, f"{10 ** (2 + 0.44 / 0.45):,.0f}", "8 (1,000)"),  # between 100 and 1,000 on log params
        ("A", 0.93, f"{10 ** (2 + 0.43 / 0.45):,.0f}", "8 (1,000)"),
        ("A", 0.9, f"{10 ** (2 + 0.40 / 0.45):,.0f}", "8 (1,000)"),  # not the widest, which also reaches it
        ("B", 0.94, "not reached (best 0.9300)", "-"),
        ("B", 0.93, "20,000", "16 (20,000)"),  # the dip at 2,000 parameters: reached only at the widest
        ("B", 0.9, "<= 200 (reached at the smallest width)", "4 (200)"),
    ]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_of_the_study_builds_under_its_preset_and_has_its_own_name(arch: str, runs_dir: Path):
    cfg = compose_config(["experiment=study_param_efficiency", f"arch={arch}", "model.channels=4"], runs_dir)
    assert cfg.model.block == ("residual" if arch.startswith("resnet") else "ode") and cfg.model.stride == 1
    model = build_model(model_recipe(to_plain(cfg.model), to_plain(cfg.solver), (1, 8, 8), 10))
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def name_of(arch: str, runs_dir: Path) -> str:
    """The name the report gives a run of `arch` (its summary names the model by its config file)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"arch={arch}", f"paths.runs={runs_dir}"], return_hydra_config=True)
    return architecture({"model": cfg.hydra.runtime.choices.model}, to_plain(cfg.model))


def test_the_architectures_are_named_apart(runs_dir: Path):
    names = {arch: name_of(arch, runs_dir) for arch in ARCHITECTURES}
    assert names["odenet_basis5"] == "ODEnet basis (fourier, K=5)" and names["odenet_concat"] == "ODEnet concat"
    assert names["odenet"] == "ODEnet" and names["resnet_small"] == "ResNet small"
    assert len(set(names.values())) == len(names)


def test_a_folder_without_finished_jobs_is_one_clear_error(tmp_path: Path):
    with pytest.raises(UserError, match="make study STUDY=param_efficiency"):
        write_param_efficiency(tmp_path)


def table_rows(text: str, heading: str) -> list[list[str]]:
    """The body rows of the first Markdown table after `heading` (the start of the text for '')."""
    section = text.split(heading, 1)[1] if heading else text
    lines = [line for line in section.splitlines() if line.startswith("|")]
    body = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines[2:]]
    return body[: next((i for i, r in enumerate(body) if r[0] == "architecture"), len(body))]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict[str, Any]:
    """A tiny run of the study (ResNet small and the Fourier-basis ODEnet, 4 and 8 channels, 2 seeds, one
    epoch) and its report: the folder, the runs by (architecture, width), and param_efficiency.md."""
    root = tmp_path_factory.mktemp("param_efficiency")
    runs_dir, folder = root / "runs", root / "study"
    runs_dir.mkdir()
    proc = run_cli(
        ["-m", "experiment=study_param_efficiency", "arch=resnet_small,odenet_basis3", "model.channels=4,8"]
        + ["seed=0,1", "train.max_epochs=1", "data.subset=300", f"hydra.sweep.dir={folder}"],
        runs_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = run_cli(["study", str(folder)], runs_dir)
    assert report.returncode == 0, report.stderr
    runs: dict[tuple[str, int], list[RunRecord]] = {}
    for run in read_file_store(runs_dir / "store"):
        model = run.config["model"]
        arch = "ResNet small" if model["block"] == "residual" else f"ODEnet basis (fourier, K={model['basis_size']})"
        runs.setdefault((arch, model["channels"]), []).append(run)
    return {"folder": folder, "runs": runs, "text": (folder / "param_efficiency.md").read_text()}


def epoch_time(run: RunRecord) -> float:
    return mean(run.metrics["epoch.time"]["values"])


def test_the_table_gives_each_architecture_and_width_its_runs_parameters_accuracy_and_cost(study: dict[str, Any]):
    runs = study["runs"]
    rows = {(r[0], int(r[1])): r for r in table_rows(study["text"], "")}
    assert set(rows) == set(runs) and len(runs) == 4
    for key, mine in runs.items():
        row = rows[key]
        accuracies = [summary_row(r)["test_acc"] for r in mine]
        assert sorted(r.config["seed"] for r in mine) == [0, 1] and int(row[3]) == 2
        assert int(row[2].replace(",", "")) == mine[0].info["parameters"]["total"]
        assert float(row[4]) == pytest.approx(mean(accuracies), abs=5e-5)
        assert float(row[5]) == pytest.approx(stdev(accuracies), abs=5e-5)
        assert float(row[8]) == pytest.approx(mean(epoch_time(r) for r in mine), abs=5e-3)
        if key[0] == "ResNet small":
            assert row[6] == "-" and row[9] == "1.0x"  # no FNFE; the baseline of the time ratio
        else:
            assert float(row[6]) == pytest.approx(mean(r.final("nfe.forward") for r in mine), abs=0.05)
            assert row[7] == "-"  # direct backpropagation: no BNFE
            baseline = mean(epoch_time(r) for r in runs["ResNet small", key[1]])
            assert float(row[9].rstrip("x")) == pytest.approx(mean(epoch_time(r) for r in mine) / baseline, rel=0.05)


def test_the_threshold_table_gives_each_architectures_first_crossing_on_log_params(study: dict[str, Any]):
    curves = {
        arch: sorted(
            (mine[0].info["parameters"]["total"], width, mean(summary_row(r)["test_acc"] for r in mine))
            for (a, width), mine in study["runs"].items()
            if a == arch
        )
        for arch in dict.fromkeys(a for a, _ in study["runs"])
    }
    best = max(acc for curve in curves.values() for _, _, acc in curve)
    thresholds = table_rows(study["text"], "### Parameters needed")
    assert len(thresholds) == 6  # three targets per architecture
    assert [float(r[1]) for r in thresholds[:3]] == [math.floor((best - g) * 1000) / 1000 for g in (0.01, 0.02, 0.05)]
    for arch, target, interpolated, smallest in thresholds:
        curve = curves[arch]
        reaching = [point for point in curve if point[2] >= float(target)]
        if not reaching:
            assert interpolated == f"not reached (best {max(p[2] for p in curve):.4f})" and smallest == "-"
            continue
        params, width, acc = reaching[0]
        assert smallest == f"{width} ({params:,})"
        if reaching[0] == curve[0]:
            assert interpolated == f"<= {params:,} (reached at the smallest width)"
        else:
            below_params, _, below_acc = curve[curve.index(reaching[0]) - 1]
            share = (float(target) - below_acc) / (acc - below_acc)
            expected = below_params * (params / below_params) ** share
            assert int(interpolated.replace(",", "")) == pytest.approx(expected, abs=1)


def test_the_figure_is_written(study: dict[str, Any]):
    assert (study["folder"] / "param_efficiency.png").read_bytes()[:4] == b"\x89PNG"


def test_each_dataset_has_its_own_section_in_one_folder(study: dict[str, Any], tmp_path: Path):
    jobs = sorted(p.parent.name for p in study["folder"].glob("*/result.json"))
    assert jobs == sorted(f"digits_{n}" for n in range(8))  # the preset names job folders by dataset
    folder = tmp_path / "both"
    for job in jobs:  # the same runs again, as if on another dataset
        shutil.copytree(study["folder"] / job, folder / job)
        other = shutil.copytree(study["folder"] / job, folder / job.replace("digits", "other"))
        summary = json.loads((other / "result.json").read_text())
        (other / "result.json").write_text(json.dumps(summary | {"dataset": "other"}))
    text = write_param_efficiency(folder)["param_efficiency.md"].read_text()
    digits, other = text.split("## digits", 1)[1].split("## other")
    assert table_rows(digits, "") == table_rows(other, "") == table_rows(study["text"], "")
    assert table_rows(digits, "### Parameters needed") == table_rows(study["text"], "### Parameters needed")
