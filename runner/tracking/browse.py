"""The run browser: list, show, compare, export and plot logged runs from either backend."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from odeflow.errors import UserError
from runner.tracking.mongo_counts import Count
from runner.tracking.outcome import DEAD, LINKS, SUPERSEDED, advice, describe_links, links_of, shown_status
from runner.tracking.runstore import RunRecord, runs_frame, summary_row

FILTERS = ("status", "dataset", "model", "solver", "sweep", "experiment")


# Sacred's run statuses (QUEUED runs are never made here, but a shared database may hold them).
STATUSES = ("RUNNING", "COMPLETED", "FAILED", "INTERRUPTED", "TIMEOUT", "QUEUED")
SHOWN_STATUSES = (*STATUSES, DEAD, SUPERSEDED)  # what a listing's status column shows, and --status filters on


def filter_runs(records: list[RunRecord], **criteria: str | None) -> list[RunRecord]:
    """Runs whose summary column equals each given criterion (case-insensitive; None means any)."""
    wanted = {k: str(v).lower() for k, v in criteria.items() if v is not None}
    if "status" in wanted and wanted["status"].upper() not in STATUSES:
        raise UserError(f"--status {criteria['status']} is not a run status", "use one of " + ", ".join(STATUSES))
    return [r for r in records if all(str(summary_row(r).get(k)).lower() == v for k, v in wanted.items())]


def no_match_note(records: list[RunRecord], **criteria: str | None) -> str:
    """What a filter that matched nothing could have matched: the values of each filtered column in the store."""
    notes = []
    for key, value in criteria.items():
        if value is not None:
            present = sorted({str(summary_row(r).get(key)) for r in records} - {"None"})
            notes.append(
                f"--{key} {value}: this store has " + (", ".join(present) if present else f"no runs with a {key}")
            )
    return f"(no runs of {len(records)} match; " + "; ".join(notes) + ")"


def _whole_numbers(col: pd.Series) -> pd.Series:
    """A float column of whole numbers (counts that became floats because a row lacks a value) as integers:
    81780, not 8.178e+04; the missing ones as "-"."""
    values = col.dropna()
    if col.dtype.kind != "f" or values.empty or not (values == values.round()).all() or values.abs().max() >= 2**53:
        return col
    return col.map(lambda v: "-" if pd.isna(v) else str(int(v)))


def _table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "(no runs)"
    frame = frame.apply(lambda col: col.fillna("-") if col.dtype == object else _whole_numbers(col))
    return frame.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}")


LIST_COLUMNS = [
    "id",
    "experiment",
    "status",
    "dataset",
    "model",
    "solver",
    "sweep",
    "test_acc",
    "test_loss",
    "best_val_loss",
    "epochs",
    "fnfe",
    "train_rss_mb",
    "train_cuda_mb",
    "saved_mb",
    "adapted",
    "params",
    "start",
]


def list_runs(records: list[RunRecord]) -> str:
    rows = [summary_row(r) for r in records]
    return format_rows(rows, [r.id for r in records if r.liveness == "dead"])


def format_rows(
    rows: list[dict],
    dead: list,
    extra_columns: list[str] | None = None,
    ids_by_uid: dict[str, list[Any]] | None = None,
) -> str:
    """A run list: one line per row (summary_row's columns, then any extra ones), its status as the browser
    shows it (DEAD, SUPERSEDED); below it, one line per run that ended early: what became of it, what to do.
    `ids_by_uid`: the ids this store has of the runs the rows link to (a link names the run with its uid)."""
    frame = pd.DataFrame(rows, columns=[*LIST_COLUMNS, *(extra_columns or [])])
    notes = []
    for i, row in enumerate(rows):
        links = links_of(row, ids_by_uid)
        frame.loc[i, "status"] = shown_status(str(row.get("status")), links, row.get("id") in dead)
        note = run_note(row, row.get("id") in dead, ids_by_uid)
        if note:
            notes.append(note)
    return "\n".join([_table(frame), *notes])


def run_note(row: dict[str, Any], dead: bool, ids_by_uid: dict[str, list[Any]] | None = None) -> str | None:
    """ "run 2 FAILED (the disk was full), continued as run 3: nothing to do" for a run that did not complete
    (or that links to one); None for a run that completed on its own."""
    links = links_of(row, ids_by_uid)
    status = shown_status(str(row.get("status")), links, dead)
    todo = advice(row.get("id"), str(row.get("status")), links, row.get("cause"), dead)
    if todo is None and status == "COMPLETED":
        return None
    if todo is None and status == "RUNNING":
        return None
    said = f"run {row.get('id')} {status}" + (f" ({row['cause']})" if row.get("cause") else "")
    return f"{said}: {todo}" if todo else said


def footer(shown: int, total: Count, offset: int, store_size: Count, filtered: bool, token: str | None = None) -> str:
    """How many runs matched, and how to see the rest (`token`: the next page's, where more runs match)."""
    of_store = f" ({store_size} in the store)" if filtered else ""
    estimated = "" if total.exact else ESTIMATED
    if shown == total.n and total.exact and not offset:
        return f"{total} run{'s' * (total.n != 1)} matched{of_store}{estimated}"
    if shown == 0:
        return f"no runs after the first {offset:,}: {total} matched{of_store}{estimated}"
    more = f"; --limit 0 for all, --page-token {token} for the next page" if token else ""
    return f"runs {offset + 1:,}-{offset + shown:,} of {total} matched{of_store}{more}{estimated}"


# A footer's note on a count estimated from a sample of run ids (runner.tracking.mongo_counts)
ESTIMATED = (
    "\n(an estimate from a sample of the runs: counting them all would take the server longer; "
    "--exact-count waits for it)"
)


def no_match_note_of(source, size: Count, **criteria: str | None) -> str:
    """What a filter that matched nothing could have matched: the values of each filtered column in the store."""
    notes = []
    for key, value in criteria.items():
        if value is not None:
            present = [v for v in source.distinct(key) if v != "None"]
            notes.append(
                f"--{key} {value}: this store has " + (", ".join(present) if present else f"no runs with a {key}")
            )
    return f"(no runs of {size} match; " + "; ".join(notes) + ")"


def check_status(status: str | None) -> None:
    if status is not None and status.upper() not in SHOWN_STATUSES:
        raise UserError(f"--status {status} is not a run status", "use one of " + ", ".join(SHOWN_STATUSES))


def find_run(records: list[RunRecord], run_id: str) -> RunRecord:
    for r in records:
        if str(r.id) == str(run_id):
            return r
    raise UserError(
        f"no run with id {run_id} in this store ({len(records)} runs)", "list the ids with: python -m runner runs list"
    )


def show_run(r: RunRecord, ids_by_uid: dict[str, list[Any]] | None = None) -> str:
    """One run in full; `ids_by_uid`: the ids this store has of the runs it links to (found by their uids)."""
    row = summary_row(r)
    links = links_of(r.meta, ids_by_uid)
    summary = {k: v for k, v in row.items() if v is not None and k.removesuffix("_uid") not in LINKS}
    final = {name: m["values"][-1] for name, m in sorted(r.metrics.items()) if m["values"]}
    dead = r.liveness == "dead"
    summary["status"] = shown_status(r.status, links, dead)
    lines = [f"run {r.id} ({r.location})", "", "summary:"]
    lines += [f"  {k:<14} {v}" for k, v in summary.items()]
    if links:
        lines += ["", "links: " + describe_links(links)]
    if (note := run_note(row, dead, ids_by_uid)) is not None:
        lines += ["", note]
    lines += ["", "final metrics:"] + [f"  {k:<18} {v:.6g}" for k, v in final.items()]
    if r.info.get("adaptation"):
        lines += ["", "adaptation: " + ", ".join(f"{k} {v}" for k, v in r.info["adaptation"].items())]
    if r.info.get("slurm"):  # the Slurm job a sweep's trial ran in
        slurm = r.info["slurm"]
        lines += [
            "",
            f"slurm: job {slurm.get('job_id')} on node {slurm.get('node')}, partition {slurm.get('partition')}",
        ]
    lines += device_lines(r.info)
    if r.info.get("parameters"):
        lines += ["", "parameters: " + ", ".join(f"{k} {v:,}" for k, v in r.info["parameters"].items())]
    lines += ["", "artifacts: " + (", ".join(r.artifacts) or "-"), "", "config:"]
    lines += ["  " + line for line in json.dumps(r.config, indent=2, default=str).splitlines()]
    return "\n".join(lines)


def device_label(info: dict[str, Any]) -> str:
    """One line: `cuda:0 NVIDIA H100 80GB HBM3 (81559 MB), driver 535.104.05, CUDA 12.2, cuDNN 9.1.0, torch ...`
    (a run logged before the device was recorded: its device's name alone)."""
    if not info.get("gpu"):
        return f"{info.get('device', '?')}" + (f", torch {info['torch']}" if info.get("torch") else "")
    return (
        f"cuda:{info.get('gpu_index')} {info['gpu']} ({info.get('gpu_memory_mb')} MB), driver {info.get('driver')}, "
        f"CUDA runtime {info.get('cuda_runtime')}, cuDNN {info.get('cudnn')}, torch {info.get('torch')} "
        f"(CUDA {info.get('torch_cuda')})"
    )


def device_lines(info: dict[str, Any]) -> list[str]:
    """The device a run trained on (runs logged before it was recorded: the device name alone) and the operations
    that had no deterministic kernel there."""
    if not info.get("device"):
        return []
    lines = ["", "device: " + device_label(info.get("device_info") or {"device": info["device"]})]
    determinism = info.get("determinism") or {}
    if determinism.get("nondeterministic_ops"):
        lines.append("nondeterministic operations: " + ", ".join(determinism["nondeterministic_ops"]))
    elif "requested" in determinism:
        lines.append("kernels: " + ("deterministic" if determinism["requested"] else "fastest (cudnn.benchmark)"))
    return lines


def compare_runs(records: list[RunRecord]) -> str:
    """Side by side: the config keys that differ, then headline and final metrics."""
    if len(records) < 2:
        raise UserError("compare needs at least two run ids", "python -m runner runs compare 1 2 [3 ...]")
    frame = runs_frame(records, with_config=True).set_index("id")
    # A key set in one run and null or missing in another differs too (nunique drops nulls by default).
    config_cols = [c for c in frame.columns if c.startswith("config.") and frame[c].map(repr).nunique() > 1]
    metric_cols = [
        "status",
        "dataset",
        "model",
        "solver",
        "test_acc",
        "test_loss",
        "best_val_loss",
        "epochs",
        "fnfe",
        "bnfe",
        "gradient",
        "train_rss_mb",
        "train_cuda_mb",
        "saved_mb",
        "val_rss_mb",
        "val_cuda_mb",
        "params",
        "seconds",
    ]
    finals = pd.DataFrame(
        {r.id: {f"final {k}": m["values"][-1] for k, m in r.metrics.items() if m["values"]} for r in records}
    ).T
    table = pd.concat([frame[config_cols], frame[metric_cols], finals.reindex(frame.index)], axis=1).T
    table.columns = [f"run {c}" for c in table.columns]
    diff_note = "config differences:" if config_cols else "config: identical"
    return f"{diff_note}\n" + table.to_string(na_rep="-", float_format=lambda v: f"{v:.4g}")


def output_file(out: str, default_name: str) -> Path:
    """Where `--out` says to write: into it if it is a folder (or ends with /), with the default suffix added."""
    path = Path(out).expanduser()
    if out.endswith(("/", "\\")) or path.is_dir():
        path = path / default_name
    suffix = Path(default_name).suffix
    return path if path.suffix.lower() == suffix else path.with_name(path.name + suffix)


def export_runs(records: list[RunRecord], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    runs_frame(records, with_config=True).to_csv(path, index=False)
    return path


def export_rows(columns: list[str], rows, path: Path) -> tuple[Path, int]:
    """Rows streamed into a CSV file (or Parquet for a .parquet path, with pyarrow), written whole or not at all;
    returns (the file, how many rows)."""
    import csv

    from odeflow.files import replacing

    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    if path.suffix.lower() == ".parquet":
        return _export_parquet(columns, rows, path)
    with replacing(path) as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
            count += 1
    return path, count


def _export_parquet(columns: list[str], rows, path: Path) -> tuple[Path, int]:
    """Parquet in row groups of 5,000 runs, every value as text (runs may disagree on a config key's type)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError("Parquet export needs pyarrow", "pip install pyarrow, or export to a .csv file") from None
    schema = pa.schema([(c, pa.string()) for c in columns])
    count = 0
    with pq.ParquetWriter(path, schema) as writer:
        batch: list[dict] = []
        for row in rows:
            batch.append({c: None if row.get(c) is None else str(row.get(c)) for c in columns})
            count += 1
            if len(batch) == 5000:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                batch = []
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
    return path, count


def plot_metric(records: list[RunRecord], metric: str, path: Path) -> Path:
    from odeflow.plots import metric_across_runs_png
    from odeflow.plots.styles import run_outcome

    plotted = [r for r in records if metric in r.metrics]
    if not plotted:
        known = sorted({name for r in records for name in r.metrics})
        raise UserError(f"no run here logged the metric {metric!r}", "use one of: " + ", ".join(known))
    label = lambda r: f"run {r.id} {summary_row(r)['model']}"  # noqa: E731
    series = {label(r): (r.metrics[metric]["steps"], r.metrics[metric]["values"]) for r in plotted}
    outcomes = {label(r): run_outcome(r.status, pruned=bool(r.info.get("pruned"))) for r in plotted}
    datasets = sorted({str(summary_row(r)["dataset"]) for r in plotted})
    ids = ", ".join(str(r.id) for r in plotted)
    title = f"{metric} per epoch: run{'s' * (len(plotted) > 1)} {ids} on {', '.join(datasets)} (last point: outcome)"
    return metric_across_runs_png(series, metric, path, outcomes, title)
