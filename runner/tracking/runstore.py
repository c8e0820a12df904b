"""Read logged runs from either backend (Sacred file store or MongoDB) into one shape and into pandas."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd


@dataclass
class RunRecord:
    id: Any
    experiment: str
    status: str
    config: dict[str, Any]
    info: dict[str, Any]
    meta: dict[str, Any]
    result: Any
    start_time: Any
    stop_time: Any
    metrics: dict[str, dict[str, list]] = field(default_factory=dict)  # name -> {"steps": [...], "values": [...]}
    artifacts: list[str] = field(default_factory=list)
    host: dict[str, Any] = field(default_factory=dict)
    location: str = ""
    experiment_info: dict[str, Any] = field(default_factory=dict)  # Sacred's: sources, dependencies, repositories
    artifact_refs: dict[str, Any] = field(default_factory=dict)  # name -> file path (file store) or GridFS id
    heartbeat: Any = None  # Sacred's last sign of life of the run (every 10 s while it runs)

    @property
    def liveness(self) -> str | None:
        """For a RUNNING run: "dead" (killed by SIGKILL or a power loss before it could say so), "alive" or
        "unknown" (see runner.tracking.liveness); None for a run that ended."""
        from runner.tracking.liveness import liveness

        return liveness(self.status, self.meta, self.host, self.heartbeat)

    @property
    def choices(self) -> dict[str, str]:
        """The config options the run was composed from (model=..., data=...); in meta from the start."""
        return self.info.get("choices") or self.meta.get("choices") or {}

    def final(self, metric: str) -> float | None:
        values = self.metrics.get(metric, {}).get("values")
        return values[-1] if values else None

    def best(self, metric: str) -> float | None:
        values = self.metrics.get(metric, {}).get("values")
        return min(values) if values else None


def _read_json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text()) if path.exists() else default


def read_file_store(directory: Path | str, warn: Callable[[str], None] | None = None) -> list[RunRecord]:
    """Every run folder of a Sacred file store (or journal), ordered by id.

    A run whose files are damaged (truncated or not JSON) is left out with one warning naming the file,
    so one broken folder does not hide the others.
    """
    warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
    root = Path(directory).expanduser()
    if not root.is_dir():
        return []
    records = []
    for run_dir in sorted((p for p in root.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        try:
            record = _read_run_folder(run_dir)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            damaged = getattr(exc, "damaged_file", run_dir)
            warn(
                f"warning: skipping run {run_dir.name}: {damaged} is damaged "
                f"({str(exc).splitlines()[0][:120] or type(exc).__name__}); "
                f"restore or delete that run folder"
            )
            continue
        if record is not None:
            records.append(record)
    return records


def _read_run_folder(run_dir: Path) -> RunRecord | None:
    files = {}
    for name, default in (("run.json", None), ("config.json", {}), ("info.json", {}), ("metrics.json", {})):
        try:
            files[name] = _read_json(run_dir / name, default)
        except (OSError, ValueError) as exc:
            exc.damaged_file = run_dir / name
            raise
    run = files["run.json"]
    if run is None:
        return None
    try:
        metrics = {
            k: {"steps": list(v["steps"]), "values": list(v["values"])} for k, v in files["metrics.json"].items()
        }
    except (KeyError, TypeError, AttributeError) as exc:
        exc.damaged_file = run_dir / "metrics.json"
        raise
    return RunRecord(
        id=int(run_dir.name),
        experiment=run.get("experiment", {}).get("name", ""),
        status=run.get("status", ""),
        config=files["config.json"],
        info=files["info.json"],
        meta=run.get("meta", {}),
        result=run.get("result"),
        start_time=run.get("start_time"),
        stop_time=run.get("stop_time"),
        metrics=metrics,
        artifacts=list(run.get("artifacts", [])),
        host=run.get("host", {}),
        location=str(run_dir),
        experiment_info=run.get("experiment", {}),
        artifact_refs={name: run_dir / name for name in run.get("artifacts", [])},
        heartbeat=run.get("heartbeat"),
    )


def read_mongo(client: Any, db_name: str) -> list[RunRecord]:
    """Every run document of a Sacred MongoDB database with its metrics, ordered by id."""
    from runner.tracking.mongo import COST_METRICS_COLLECTION

    db = client[db_name]
    metrics: dict[Any, dict[str, dict[str, list]]] = {}
    for collection in ("metrics", COST_METRICS_COLLECTION):
        for m in db[collection].find({}, {"run_id": 1, "name": 1, "steps": 1, "values": 1}):
            metrics.setdefault(m["run_id"], {})[m["name"]] = {"steps": list(m["steps"]), "values": list(m["values"])}
    records = []
    for doc in db["runs"].find({}, {"captured_out": 0}).sort("_id", 1):
        records.append(
            RunRecord(
                id=doc["_id"],
                experiment=doc.get("experiment", {}).get("name", ""),
                status=doc.get("status", ""),
                config=doc.get("config", {}),
                info=doc.get("info", {}),
                meta=doc.get("meta", {}),
                result=doc.get("result"),
                start_time=doc.get("start_time"),
                stop_time=doc.get("stop_time"),
                metrics=metrics.get(doc["_id"], {}),
                artifacts=[a["name"] for a in doc.get("artifacts", [])],
                host=doc.get("host", {}),
                location=f"mongodb {db_name}.runs/{doc['_id']}",
                experiment_info=doc.get("experiment", {}),
                artifact_refs={a["name"]: a["file_id"] for a in doc.get("artifacts", [])},
                heartbeat=doc.get("heartbeat"),
            )
        )
    return records


def _duration(start: Any, stop: Any) -> float | None:
    try:
        return (pd.Timestamp(stop) - pd.Timestamp(start)).total_seconds()
    except (TypeError, ValueError):
        return None


def gradient_method(solver: dict[str, Any]) -> str | None:
    """A logged solver config's gradient method; configs from before `gradient` existed say it with `adjoint`."""
    if not solver:
        return None
    return solver.get("gradient") or ("adjoint" if solver.get("adjoint") else "direct")


def memory_columns(cost: dict[str, Any], device: str) -> dict[str, Any]:
    """train/val peak RSS and CUDA allocated (MB) in columns of their own. Runs logged before they were
    separate have one figure per phase (`<phase>_mem_mb`): CUDA's on a CUDA device, else the RSS."""
    columns = {}
    for phase in ("train", "val"):
        legacy = cost.get(f"{phase}_mem_mb")
        on_cuda = device.startswith("cuda")
        columns[f"{phase}_rss_mb"] = cost.get(f"{phase}_rss_mb", None if on_cuda else legacy)
        columns[f"{phase}_cuda_mb"] = cost.get(f"{phase}_cuda_mb", legacy if on_cuda else None)
    return columns


def summary_row(r: RunRecord) -> dict[str, Any]:
    """The columns a run list shows: what ran, how it ended, and its headline numbers."""
    choices = r.choices
    is_ode = (r.info.get("model_family") or r.meta.get("model_family")) == "odenet"
    test = r.info.get("test", {})
    gradient = gradient_method(r.config.get("solver") or {}) if is_ode else None
    cost = r.info.get("cost") or {}
    return {
        "id": r.id,
        "experiment": r.experiment,
        "status": r.status,
        "dataset": choices.get("data", str(r.config.get("data", {}).get("_target_", ""))),
        "model": choices.get("model", str(r.config.get("model", {}).get("_target_", ""))),
        "solver": r.config.get("solver", {}).get("method") if is_ode else None,
        "sweep": r.meta.get("sweep_id"),
        "test_acc": test.get("test.acc"),
        "test_loss": test.get("test.loss"),
        "best_val_loss": r.best("val.loss"),
        "epochs": len(r.metrics.get("val.loss", {}).get("values", [])),
        "pruned_at": (r.info.get("pruned") or {}).get("epoch"),  # the epoch a sweep's pruner stopped it
        "fnfe": r.final("nfe.forward") if is_ode else None,
        "bnfe": r.final("nfe.backward") if gradient not in (None, "direct") else None,  # no backward pass
        "gradient": gradient,
        **memory_columns(cost, str(r.info.get("device", ""))),  # peak RSS and CUDA memory per phase, MB
        "saved_mb": cost.get("saved_mb"),  # bytes autograd saved in one training step, MB
        "adapted": (r.info.get("adaptation") or {}).get("at_best_epoch"),  # the adapted step size or tolerance
        "params": r.info.get("parameters", {}).get("total"),
        "start": str(r.start_time)[:19] if r.start_time else None,
        "seconds": _duration(r.start_time, r.stop_time),
    }


def runs_frame(records: list[RunRecord], with_config: bool = False) -> pd.DataFrame:
    """One row per run; with_config adds every config key as a `config.<key>` column."""
    rows = []
    for r in records:
        row = summary_row(r)
        if with_config:
            row.update({f"config.{k}": v for k, v in pd.json_normalize(r.config, sep=".").iloc[0].to_dict().items()})
        rows.append(row)
    return pd.DataFrame(rows)


def artifact_ref(record: RunRecord, name: str) -> Any:
    """Where one artifact of a run is (a file path or a GridFS id); a UserError if the run has none of that name."""
    from odeflow.errors import UserError

    ref = record.artifact_refs.get(name)
    if ref is None:
        raise UserError(
            f"run {record.id} has no artifact {name!r} (it has: {', '.join(record.artifacts) or 'none'})",
            "re-evaluation and reproduction need a run that finished training",
        )
    return ref


def fetch_artifact(
    record: RunRecord, name: str, dest_dir: Path, client: Any = None, db_name: str | None = None
) -> Path:
    """A local path to one artifact of a run: the file itself for the file store, a copy out of GridFS for MongoDB."""
    ref = artifact_ref(record, name)
    if isinstance(ref, Path):
        return ref
    import gridfs

    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / name
    path.write_bytes(gridfs.GridFS(client[db_name]).get(ref).read())
    return path
