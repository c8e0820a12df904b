"""Hydra callbacks: passwords masked in Hydra's own files; a summary table over all jobs of a multirun."""

from __future__ import annotations

import json
import logging
import uuid
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


HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")


class MaskSecrets(Callback):
    """Masks database passwords (tracking.url=mongodb://user:password@...) in the files Hydra writes before a
    job starts: the job's .hydra/config.yaml, hydra.yaml and overrides.yaml, and a multirun's multirun.yaml;
    and in Hydra's log lines (a launcher logs every job's overrides: on a cluster that output is a file)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        mask_log_records()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        mask_log_records()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        mask_log_records()  # in the job's process (joblib, Slurm: not the one that started the sweep)

        hydra = HydraConfig.get()
        if hydra.output_subdir is not None:
            for name in HYDRA_FILES:
                mask_yaml_file(Path(hydra.runtime.output_dir) / hydra.output_subdir / name)
        if hydra.mode == RunMode.MULTIRUN:
            mask_yaml_file(Path(hydra.sweep.dir) / "multirun.yaml")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        mask_yaml_file(Path(config.hydra.sweep.dir) / "multirun.yaml")


def mask_log_records() -> None:
    """Every log record of this process has URL passwords masked, whichever handlers Hydra configures later
    (its launchers reconfigure logging before they log the jobs)."""
    make_record = logging.getLogRecordFactory()
    if getattr(make_record, "masks_secrets", False):
        return

    def masked_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        from runner.tracking.masking import mask_url

        record = make_record(*args, **kwargs)
        message = record.getMessage()
        masked = mask_url(message)
        if masked != message:
            record.msg, record.args = masked, ()
        return record

    masked_record.masks_secrets = True
    logging.setLogRecordFactory(masked_record)


def mask_yaml_file(path: Path) -> None:
    """Rewrite a YAML file of Hydra's with URL passwords masked (atomically; untouched when there is none)."""
    from omegaconf import OmegaConf

    from runner.tracking.masking import mask_secrets

    if not path.is_file():
        return
    plain = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    masked = mask_secrets(plain)
    if masked == plain:
        return
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")  # jobs in parallel (joblib) mask multirun.yaml at once
    tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(masked)), encoding="utf-8")
    tmp.replace(path)
