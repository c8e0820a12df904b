"""The embedded file store holds the complete record of a run."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_tracking.conftest import tiny_run


def test_file_store_record_is_complete(runs_dir: Path, tmp_path: Path):
    summary = tiny_run(runs_dir, tmp_path / "out")
    run = runs_dir / "store" / str(summary["run_id"])
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "COMPLETED" and record["result"] == summary["test_acc"]
    assert record["meta"]["run_uid"]
    assert record["host"]["hostname"] and record["host"]["python_version"]
    deps = " ".join(record["experiment"]["dependencies"])
    assert "torch==" in deps and "torchdiffeq==" in deps
    sources = {name for name, _ in record["experiment"]["sources"]}
    assert {"runner/experiment/app.py", "models/ode_block.py", "data/offline.py"} <= sources
    assert set(record["artifacts"]) >= {
        "best_checkpoint.pt",
        "confusion_matrix.png",
        "learning_curves.png",
        "nfe.png",
        "evaluation_report.json",
        "classification_report.csv",
    }
    for name in record["artifacts"]:
        assert (run / name).stat().st_size > 0
    assert (run / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"

    config = json.loads((run / "config.json").read_text())
    assert config["solver"]["method"] == "euler" and config["model"]["channels"] == 4 and config["seed"] == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"train.loss", "train.acc", "val.loss", "val.acc", "nfe.forward", "nfe.backward", "epoch.time"} <= set(
        metrics
    )
    assert metrics["nfe.forward"]["values"] == [2.0, 2.0, 2.0]  # euler, h=0.5 over [0, 1]
    info = json.loads((run / "info.json").read_text())
    assert info["parameters"]["total"] > 0 and info["device"] == "cpu" and info["model_family"] == "odenet"
    captured = (run / "cout.txt").read_text()
    assert "epoch   3/3" not in captured or "\r" not in captured  # progress redraws filtered
    csv_header = (run / "classification_report.csv").read_text().splitlines()[0]
    assert csv_header == "class,precision,recall,f1,support,roc_auc,average_precision"
