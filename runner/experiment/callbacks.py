"""Hydra callbacks: a summary table over all jobs of a multirun (read from each job's result.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class MultirunSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from runner.experiment.summary import format_summary

        results = sorted(
            Path(config.hydra.sweep.dir).glob("*/result.json"),
            key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        )
        rows = []
        for path in results:
            try:
                rows.append(json.loads(path.read_text()))
            except (OSError, ValueError):  # a job killed while writing it: the table shows the others
                print(f"warning: {path} cannot be read; left out of the summary", flush=True)
        if rows:
            print(f"\nsummary of {len(rows)} runs ({config.hydra.sweep.dir}):\n{format_summary(rows)}", flush=True)
