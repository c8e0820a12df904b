"""Run again from a logged run: reproduce it exactly (and compare), or resume it after a crash."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from odeflow.errors import UserError
from odeflow.tables import text_table
from runner.experiment.checkpoint import read_torch_file
from runner.experiment.factories import current_targets
from runner.tracking.runstore import RunRecord

TIMING_METRICS = ("epoch.time", "adaptation.check_share")  # wall-clock metrics differ between any two runs
MEMORY_PREFIX = "mem."  # peak memory depends on the process and the allocator's history, not only on the run


def config_from_record(record: RunRecord, current: DictConfig, device: str | None = None) -> DictConfig:
    """The logged config, with where runs and data live taken from the current config (`current`), and the
    training device replaced by `device` (a `train.device=...` on the command line) when it is given."""
    if not record.config:
        raise UserError(f"run {record.id} has no logged config", "pick a run made by python -m runner (runs list)")
    config = current_targets(dict(record.config))
    config["tracking"] = OmegaConf.to_container(current.tracking, resolve=True)
    config["paths"] = OmegaConf.to_container(current.paths, resolve=True)
    if device is not None:
        config["train"] = {**(config.get("train") or {}), "device": device}
    return OmegaConf.create(config)


DEVICE_OVERRIDE = "train.device="


def device_override(overrides: list[str]) -> str | None:
    """The `train.device=...` among a rerun's command-line overrides (the one training key a rerun takes)."""
    values = [
        o.removeprefix("+").removeprefix(DEVICE_OVERRIDE)
        for o in overrides
        if o.lstrip("+").startswith(DEVICE_OVERRIDE)
    ]
    return values[-1] if values else None


def check_rerun_device(record: RunRecord, config: DictConfig, command: str) -> None:
    """Refuse before anything starts when the device the rerun would train on is not on this machine, naming the
    override that picks one that is; say so when it is another kind of device than the logged run's."""
    from runner.experiment.device import resolve_device

    name = str(config.train.device)
    try:
        device = resolve_device(name, warn=False)
    except UserError as exc:
        raise UserError(
            f"run {record.id} would train on train.device={name}, which this machine does not have: {exc.cause}",
            f"pick a device here: python -m runner {command} {record.id} train.device=cpu (or auto, or cuda:N)",
        ) from None
    logged = str(record.info.get("device") or "")
    if logged and torch_device_type(logged) != device.type:
        print(
            f"note: run {record.id} trained on {logged}, this one trains on {device}: floating-point results "
            "differ between devices, so metrics may not match to the last digit",
            flush=True,
        )


def torch_device_type(name: str) -> str:
    return name.split(":")[0]


def nondeterminism_note(original: RunRecord, reproduced: RunRecord) -> str | None:
    """Why a reproduction can differ by itself: the operations either run had no deterministic kernel for, or
    kernels that were not asked to be deterministic; None when both ran deterministic kernels throughout."""
    reasons = []
    for label, record in (("the original", original), ("the reproduction", reproduced)):
        determinism = record.info.get("determinism") or {}
        device = record.info.get("device", "?")
        if determinism.get("nondeterministic_ops"):
            reasons.append(
                f"{label} (on {device}) ran operations without a deterministic kernel: "
                + ", ".join(determinism["nondeterministic_ops"])
            )
        elif determinism.get("requested") is False or (record.config.get("train") or {}).get("deterministic") is False:
            reasons.append(f"{label} (on {device}) ran with train.deterministic=false")
    devices = {str(r.info.get("device")) for r in (original, reproduced) if r.info.get("device")}
    if len({torch_device_type(d) for d in devices}) > 1:
        reasons.append("they ran on different devices: " + " and ".join(sorted(devices)))
    return "; ".join(reasons) if reasons else None


def installed_versions() -> dict[str, str]:
    """name -> version of what is installed, found the way Sacred found a run's dependencies (pkg_resources'
    working set, which also lists packages vendored inside setuptools), so an unchanged environment shows
    no difference."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        from sacred.dependencies import get_dependencies_from_pkg

    return {dep.name.lower(): dep.version for dep in get_dependencies_from_pkg(None, None)}


def environment_differences(record: RunRecord) -> list[str]:
    """Package versions and git commit/dirty state that differ between the logged run and this checkout."""
    differences = []
    installed = installed_versions()
    for dep in record.experiment_info.get("dependencies", []):
        name, _, version = dep.partition("==")
        now = installed.get(name.lower())
        if now != version:
            differences.append(f"{name}: logged {version}, installed {now or 'not installed'}")
    logged_repos = record.experiment_info.get("repositories", [])
    if logged_repos:
        try:
            import git

            repo = git.Repo(Path(__file__).resolve().parents[2], search_parent_directories=True)
            commit, dirty = repo.head.commit.hexsha, repo.is_dirty()
        except Exception:  # not a git checkout any more
            commit, dirty = None, None
        logged = logged_repos[0]
        if logged.get("commit") != commit:
            differences.append(f"git commit: logged {str(logged.get('commit'))[:12]}, now {str(commit)[:12]}")
        if logged.get("dirty"):
            differences.append("git: the logged run had uncommitted changes (dirty); they may not be reproducible")
        elif dirty:
            differences.append("git: this checkout has uncommitted changes")
    return differences


def check_environment(record: RunRecord, strict: bool) -> list[str]:
    differences = environment_differences(record)
    if differences and strict:
        raise UserError(
            f"run {record.id} was made in another environment:\n  " + "\n  ".join(differences),
            "check out the logged commit and install the logged versions, or drop --strict to reproduce anyway",
        )
    for line in differences:
        print(f"warning: {line}", flush=True)
    return differences


def metric_comparison(original: RunRecord, reproduced: RunRecord) -> tuple[list[dict[str, Any]], float]:
    """Per metric: final values and the largest per-epoch difference; and the largest over all metrics."""
    rows, worst = [], 0.0
    for name in sorted(set(original.metrics) | set(reproduced.metrics)):
        a = original.metrics.get(name, {}).get("values", [])
        b = reproduced.metrics.get(name, {}).get("values", [])
        if name in TIMING_METRICS or name.startswith(MEMORY_PREFIX):
            rows.append(
                {
                    "metric": name,
                    "original": a[-1] if a else None,
                    "reproduced": b[-1] if b else None,
                    "max_epoch_diff": None,
                    "note": "wall time, not compared" if name in TIMING_METRICS else "memory, not compared",
                }
            )
            continue
        same_length = len(a) == len(b)
        diff = max((abs(x - y) for x, y in zip(a, b, strict=True)), default=0.0) if same_length else float("inf")
        worst = max(worst, diff)
        rows.append(
            {
                "metric": name,
                "original": a[-1] if a else None,
                "reproduced": b[-1] if b else None,
                "max_epoch_diff": diff,
                "note": "" if same_length else f"{len(a)} vs {len(b)} epochs",
            }
        )
    x, y = original.result, reproduced.result
    if isinstance(x, (int, float)) and isinstance(y, (int, float)):
        worst = max(worst, abs(x - y))
        rows.append(
            {"metric": "test.acc (result)", "original": x, "reproduced": y, "max_epoch_diff": abs(x - y), "note": ""}
        )
    return rows, worst


def format_comparison(rows: list[dict[str, Any]]) -> str:
    number = lambda v: f"{v:.8g}" if isinstance(v, float) else str(v)  # noqa: E731
    return text_table(
        rows,
        {"original": number, "reproduced": number, "max_epoch_diff": number},
        {"max_epoch_diff": "max |diff| per epoch"},
    )


def new_output_dir(runs_root: Path, kind: str) -> Path:
    path = runs_root / kind / dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_training_state(record: RunRecord) -> tuple[dict[str, Any], Path]:
    """The last per-epoch training state of a run, from the output folder its meta data names."""
    out_dir = record.meta.get("output_dir")
    path = Path(out_dir) / "last_checkpoint.pt" if out_dir else None
    if path is None or not path.exists():
        raise UserError(
            f"run {record.id} left no training state to resume from ({path or 'no output_dir logged'})",
            "runs save last_checkpoint.pt after every epoch; a run killed during its first epoch must start again",
        )
    return read_torch_file(path), Path(out_dir)
