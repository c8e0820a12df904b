"""The command line's dispatch: the Hydra task (one run or a sweep's trial) and the subcommands next to it
(`sync`, `runs`, `reproduce`, `resume`, `reevaluate`, `report`, `study`, `sweep-report`).

The subcommands read the store from the same config tree as training runs, so `tracking=mongo` or
`paths.runs=...` select it exactly as they do for `python -m runner`.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path
from typing import NoReturn

from odeflow.errors import UserError

SUBCOMMANDS = ("sync", "runs", "reproduce", "resume", "reevaluate", "report", "study", "sweep-report")


def run_from_hydra(cfg) -> float:
    """The Hydra task: one run (a sweep's trial with its pruner), its summary printed, its objective returned."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from runner.experiment.app import run_experiment
    from runner.experiment.summary import format_summary
    from runner.sweeps.devices import bind_trial_gpu, release_cuda_memory
    from runner.sweeps.pruning import trial_pruner

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    trial = (hydra_cfg.job.num if cfg.get("sweep_trial") is None else cfg.sweep_trial) if multirun else None
    meta = {"sweep_id": cfg.sweep_id or Path(hydra_cfg.sweep.dir).name, "trial": trial} if multirun else {}
    if multirun:  # before CUDA starts in this process: a joblib worker takes its GPU here (runner/sweeps/devices.py)
        meta.update(bind_trial_gpu())
    choices = {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra/")}
    try:
        pruner = (
            trial_pruner(
                hydra_cfg.sweeper,
                Path(hydra_cfg.sweep.dir),
                hydra_cfg.job.num,
                trial,
                cfg.objective,
                int(cfg.train.max_epochs),
            )
            if multirun
            else None
        )
        summary = run_experiment(cfg, Path(hydra_cfg.runtime.output_dir), choices, meta, pruner=pruner)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        if multirun and "hyperopt" in str(hydra_cfg.sweeper.get("_target_", "")).lower():
            raise  # the hyperopt sweeper records the failure and goes on
        raise SystemExit(2) from None  # Hydra's basic sweeper would stop with a traceback; stop cleanly
    finally:
        if multirun:
            release_cuda_memory()  # the worker's next trial starts with the GPU's memory free
    print(format_summary([summary]), flush=True)
    value = summary[cfg.objective]  # None: a validation objective of a run without a validation split (not searched)
    return float("nan") if value is None else float(value)


def _split(values: list[str]) -> tuple[list[str], list[str]]:
    """Positional words: (plain arguments, config overrides key=value)."""
    return [v for v in values if "=" not in v], [v for v in values if "=" in v]


def current_config(overrides: list[str]):
    """The config tree composed with `overrides` (it says where runs and datasets live now)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from runner.tracking.stores import PROJECT_ROOT

    try:
        with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
            return compose("config", overrides=overrides)
    except Exception as exc:
        from runner.command_line import raise_if_yaml_error

        raise_if_yaml_error(exc)
        if not isinstance(exc, HydraException):
            raise
        raise UserError(
            f"bad config override: {exc}", "overrides look like tracking=mongo or paths.runs=/some/dir"
        ) from None


def load_store(overrides: list[str]):
    return store_of(current_config(overrides))


def store_of(cfg):
    """The run store (file store or MongoDB with its journal) a composed config names."""
    from runner.experiment.factories import instantiate_group

    return instantiate_group("tracking", cfg.tracking)


def answering_client(store):
    """A client of the store's MongoDB that has answered and accepted its credentials (raises otherwise)."""
    client = store.client(patient=True)
    client[store.db_name].list_collection_names()  # unlike ping, needs authentication
    return client


def cmd_sync(args: argparse.Namespace) -> int:
    from runner.tracking.mongo import sync
    from runner.tracking.stores import MongoStore

    _, overrides = _split(args.words)
    store = load_store(["tracking=mongo", *overrides])
    if not isinstance(store, MongoStore):
        raise UserError(
            "sync needs the mongo tracking backend", "drop the tracking= override (sync uses tracking=mongo)"
        )
    try:
        client = answering_client(store)
    except Exception as exc:  # pymongo raises several types for "no server"
        from runner.tracking.mongo import describe_failure

        raise UserError(
            f"{describe_failure(store.url, exc)}; nothing was pushed, the journal {store.local_dir} is unchanged",
            "start it (make dashboard or make up) or correct MONGO_URL (in .env), then sync again",
        ) from None
    counts = sync(store.local_dir, client, store.db_name, include_running=args.include_running)
    print(
        f"sync: {counts['pushed']} pushed, {counts['already_there']} already in MongoDB"
        + (
            f", {counts['running']} still running or killed (add --include-running to push them as they are)"
            if counts["running"]
            else ""
        )
    )
    return 0


def source_of(store):
    """Where `runs` commands read: the MongoDB database when it answers, else the file store or the journal."""
    from runner.tracking.listing import FileSource, MongoSource
    from runner.tracking.stores import MongoStore

    if isinstance(store, MongoStore):
        try:
            return MongoSource(answering_client(store), store.db_name)
        except Exception as exc:  # pymongo raises several types for "no server"
            from runner.tracking.mongo import describe_failure

            print(
                f"{describe_failure(store.url, exc)}; showing the local journal {store.local_dir} instead",
                file=sys.stderr,
            )
    return FileSource(store.local_dir)


def _query_of(args: argparse.Namespace, words: list[str], source):
    """The query a `runs` command's options and run ids ask for (ids: exactly those runs, in the order given)."""
    from runner.tracking import query as q
    from runner.tracking.browse import FILTERS, check_status
    from runner.tracking.listing import DEFAULT_LIMIT, Query, status_condition

    shorthands = {f: getattr(args, f, None) for f in FILTERS}
    status = shorthands.get("status")
    check_status(status)
    default_limit = DEFAULT_LIMIT if args.action == "list" else 0
    query = Query.parse(
        getattr(args, "where", None),
        getattr(args, "sort", None),
        default_limit if getattr(args, "limit", None) is None else args.limit,
        getattr(args, "offset", 0) or 0,
        getattr(args, "columns", None),
        {**shorthands, "status": None},
    )
    chosen = [q.Compare(q.Field("column", "id"), "in", tuple(int(w) if w.isdigit() else w for w in words))]
    for part in [*(chosen if words else []), *([status_condition(source, status)] if status else [])]:
        where = part if query.where is None else q.Logical("and", (part, query.where))
        query = Query(where, query.sort, query.limit, query.offset, query.columns)
    token = getattr(args, "page_token", None)
    return (query.continued(token) if token else query), shorthands


def cmd_runs(args: argparse.Namespace) -> int:
    from runner.tracking import browse
    from runner.tracking.mongo_counts import Count
    from runner.tracking.outcome import link_uids

    words, overrides = _split(args.words)
    store = load_store(overrides)
    if args.action == "reindex":
        return _reindex(store)
    source = source_of(store)
    if args.action == "show":
        if len(words) != 1:
            raise UserError("show takes one run id", "python -m runner runs show 3")
        record = source.run(words[0])
        print(browse.show_run(record, source.ids_by_uid(link_uids(record.meta))))
        return 0
    if args.action in ("compare", "plot") and words:
        records = [source.run(w) for w in words]  # in the order given
    elif args.action in ("compare", "plot"):
        records = source.records(_query_of(args, words, source)[0])
    if args.action == "list":
        query, shorthands = _query_of(args, words, source)
        page = source.page(query, exact_count=args.exact_count)
        total, size = Count(page.total, page.total_exact), Count(page.store_size, page.store_size_exact)
        if not page.rows and page.total == 0 and any(v is not None for v in shorthands.values()) and not args.where:
            print(browse.no_match_note_of(source, size, **shorthands))
            return 0
        print(browse.format_rows(page.rows, page.dead, [f.name for f in query.columns], page.ids_by_uid))
        filtered = query.where is not None
        print(browse.footer(len(page.rows), total, query.offset, size, filtered, query.next_page_token(page)))
    elif args.action == "compare":
        print(browse.compare_runs(records))
    elif args.action == "export":
        query, _ = _query_of(args, words, source)
        columns, rows = source.rows(query)
        path, count = browse.export_rows(columns, rows, browse.output_file(args.out, "runs.csv"))
        print(f"wrote {count} runs to {path}")
    elif args.action == "plot":
        print(f"wrote {browse.plot_metric(records, args.metric, browse.output_file(args.out, args.metric + '.png'))}")
    return 0


def _reindex(store) -> int:
    from runner.tracking.index import INDEX_FILE, using_index

    started = time.perf_counter()
    count = using_index(store.local_dir, lambda index: index.count(), rebuild=True)
    print(
        f"indexed {count:,} runs of {store.local_dir} in {time.perf_counter() - started:.1f} s "
        f"(into {store.local_dir / INDEX_FILE})"
    )
    return 0


def _one_run(args: argparse.Namespace):
    """(the run named by the one id among the words, the current config, the store, where it was read from)."""

    words, overrides = _split(args.words)
    if len(words) != 1:
        raise UserError(f"{args.command} takes one run id", f"python -m runner {args.command} 3 [tracking=mongo ...]")
    cfg = current_config(overrides)
    store = store_of(cfg)
    source = source_of(store)
    return source.run(words[0]), cfg, store, source


def cmd_reproduce(args: argparse.Namespace) -> int:
    from runner.experiment.app import run_experiment
    from runner.research.rerun import (
        check_environment,
        check_rerun_device,
        config_from_record,
        device_override,
        format_comparison,
        metric_comparison,
        new_output_dir,
        nondeterminism_note,
    )

    record, cfg, store, _ = _one_run(args)
    config = config_from_record(record, cfg, device_override(_split(args.words)[1]))
    check_rerun_device(record, config, "reproduce")
    differences = check_environment(record, args.strict)
    out_dir = new_output_dir(Path(cfg.paths.runs), "reproduce")
    meta = {
        "reproduces": record.id,
        "reproduces_uid": record.meta.get("run_uid"),
        "environment_differences": differences,
    }
    summary = run_experiment(config, out_dir, record.choices, meta)
    reproduced = source_of(store).run(str(summary["run_id"]))
    rows, worst = metric_comparison(record, reproduced)
    print(f"\nrun {record.id} reproduced as run {summary['run_id']}:\n{format_comparison(rows)}")
    matches = worst <= args.tolerance
    print(
        f"{'MATCH' if matches else 'MISMATCH'}: largest per-epoch difference {worst:.3g} (tolerance {args.tolerance:g})"
    )
    if not matches and (note := nondeterminism_note(record, reproduced)):
        print(f"  why it can differ: {note}")
    return 0 if matches else 1


def cmd_resume(args: argparse.Namespace) -> int:
    from runner.experiment.app import run_experiment
    from runner.research.rerun import check_rerun_device, config_from_record, device_override, load_training_state
    from runner.tracking.links import link_run
    from runner.tracking.outcome import Elsewhere, link_uids, links_of, named

    record, cfg, store, source = _one_run(args)
    if record.status == "COMPLETED":
        raise UserError(
            f"run {record.id} is COMPLETED: it trained to the end (or stopped early), so there is nothing to resume",
            f"resume continues crashed or killed runs (status RUNNING, FAILED or INTERRUPTED); "
            f"to train it again use: python -m runner reproduce {record.id}",
        )
    links = links_of(record.meta, source.ids_by_uid(link_uids(record.meta)))
    for key, what in (("continued_as", "was continued as"), ("superseded_by", "was replaced by")):
        if links.get(key) is not None:
            raise UserError(
                f"run {record.id} {what} {named(links[key])} already: resuming it again would train its epochs twice",
                f"see that run: python -m runner runs show {links[key]}"
                if not isinstance(links[key], Elsewhere)
                else "resume that run where it is (it has the later epochs)",
            )
    describe_unfinished(record)
    config = config_from_record(record, cfg, device_override(_split(args.words)[1]))
    check_rerun_device(record, config, "resume")
    state, out_dir = load_training_state(record)
    print(f"resuming run {record.id} after epoch {state['epoch']} (from {out_dir / 'last_checkpoint.pt'})", flush=True)
    meta = {
        "run_uid": uuid.uuid4().hex,
        "resumed_from": record.id,
        "resumed_from_uid": record.meta.get("run_uid"),
        "resumed_after_epoch": state["epoch"],
        **{k: v for k, v in record.meta.items() if k in ("sweep_id", "trial")},
    }
    try:
        summary = run_experiment(config, out_dir, record.choices, meta, resume=state)
    except BaseException as exc:  # stopped too (Ctrl-C, a full disk): its continuation is where to go on from
        if getattr(exc, "run_id", None) is not None:
            link_run(store, record, "continued_as", exc.run_id, meta["run_uid"])
        raise
    if summary["run_id"] is not None:  # the run it continues points to it, so it is never resumed twice
        link_run(store, record, "continued_as", summary["run_id"], meta["run_uid"])
    print(
        f"run {record.id} continued as run {summary['run_id']}: epochs 1-{summary['epochs']}, "
        f"test acc {summary['test_acc']:.4f}"
    )
    return 0


def describe_unfinished(record) -> None:
    """A RUNNING run may still be alive (refused: two processes would train it) or killed (said so)."""
    from runner.tracking.liveness import heartbeat_age, owner

    if record.status != "RUNNING" or record.liveness == "unknown":
        return
    if record.liveness == "alive":
        age = heartbeat_age(record.heartbeat)
        beat = f", last heartbeat {age:.0f} s ago" if age is not None else ""
        raise UserError(
            f"run {record.id} is still running ({owner(record.meta, record.host)}{beat})",
            f"wait for it to end, or stop it (kill -TERM {record.meta.get('pid', '<pid>')}: it ends INTERRUPTED) "
            f"and then: python -m runner resume {record.id}",
        )
    print(
        f"run {record.id} was killed (status RUNNING, but {owner(record.meta, record.host)} is gone): "
        "continuing it from its last finished epoch",
        flush=True,
    )


def cmd_reevaluate(args: argparse.Namespace) -> int:
    from runner.research.reevaluate import reevaluate_run

    record, cfg, store, source = _one_run(args)
    run_id, out_dir, new = reevaluate_run(record, cfg, store, source, args.grid, args.collapse_threshold, args.device)
    where = f"; table and figure (reevaluation.png) in {out_dir}" if out_dir else ""
    print(f"re-evaluation {'logged' if new else 'logged before'} as run {run_id}{where}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from runner.research.report import write_report
    from runner.tracking.listing import Query

    _, overrides = _split(args.words)
    cfg = current_config(overrides)
    records = source_of(store_of(cfg)).records(Query.parse(args.where, args.sort, args.limit or 0))
    paths = write_report(records, Path(args.out) if args.out else Path(cfg.paths.runs) / "report")
    _show_written(paths, paths["comparison.md"].read_text())
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from runner.research.study import write_study

    words, overrides = _split(args.words)
    if len(words) != 1:
        raise UserError("study takes one study name or folder", "python -m runner study t_final (or a multirun folder)")
    folder = Path(words[0])
    if not folder.is_dir():
        folder = Path(current_config(overrides).paths.runs) / "studies" / words[0]
    paths = write_study(folder)
    _show_written(paths, next(path for name, path in paths.items() if name.endswith(".md")).read_text())
    return 0


def cmd_sweep_report(args: argparse.Namespace) -> int:
    from runner.sweeps.report import write_and_log_report
    from runner.sweeps.state import find_sweep

    words, overrides = _split(args.words)
    if len(words) != 1:
        raise UserError(
            "sweep-report takes one sweep directory or sweep id", "python -m runner sweep-report runs/sweeps/quickstart"
        )
    cfg = current_config(overrides)
    _, paths = write_and_log_report(
        find_sweep(words[0], Path(cfg.paths.runs)), cfg, Path(args.out) if args.out else None
    )
    _show_written(paths, paths["report.md"].read_text().split("## Convergence")[0].rstrip())
    return 0


def _show_written(paths: dict[str, Path], text: str) -> None:
    """What a report command wrote: its text on the console, then every file."""
    print(text)
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def add_query_options(parser: argparse.ArgumentParser, default_limit: int, page: bool = True) -> None:
    """--where, --sort, --limit (and --offset, --columns): the query language of README's Querying runs."""
    parser.add_argument(
        "--where", help="e.g. \"metrics.val.acc > 0.9 and config.solver.method = 'rk4'\" (README: Querying runs)"
    )
    parser.add_argument("--sort", help="KEY[,KEY], - for descending, e.g. -metrics.val.acc (default: newest first)")
    parser.add_argument(
        "--limit", type=int, default=None, help=f"at most this many runs (default {default_limit or 'all'}; 0: all)"
    )
    if page:
        parser.add_argument("--offset", type=int, default=0, help="skip this many matching runs")
        parser.add_argument("--page-token", help="the next page: the token the previous page's footer printed")
        parser.add_argument("--columns", help="more columns, e.g. metrics.val.acc,config.train.lr,max(metrics.val.acc)")


class CommandParser(argparse.ArgumentParser):
    """argparse's refusals (an option's value missing or malformed, an unknown option, a missing action) as one
    line with the fix, where argparse printed its usage and a line without one. Subparsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog}: {message}", f"{self.prog} --help lists its options and arguments")


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="python -m runner", description="odeflow subcommands (without one: run an experiment)")
    sub = parser.add_subparsers(dest="command", required=True)
    words_help = "run ids and/or config overrides such as tracking=mongo or paths.runs=DIR"
    sync = sub.add_parser("sync", help="push journalled runs into MongoDB (idempotent)")
    sync.add_argument(
        "--include-running", action="store_true", help="also push runs still marked RUNNING (killed runs)"
    )
    sync.add_argument("words", nargs="*", help="config overrides, e.g. tracking.db_name=thesis")
    sync.set_defaults(handler=cmd_sync)
    runs = sub.add_parser("runs", help="browse logged runs")
    actions = runs.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="one line per run: the newest 50, or those a query picks")
    from runner.tracking.browse import FILTERS

    for name in FILTERS:
        listing.add_argument(f"--{name}", help=f"only runs whose {name} is this (any case)")
    actions.add_parser("show", help="one run: summary, final metrics, artifacts, config")
    compare = actions.add_parser("compare", help="runs side by side: config differences and metrics")
    export = actions.add_parser("export", help="runs with their whole config to CSV (or .parquet, with pyarrow)")
    export.add_argument("--out", default="runs.csv", help="a .csv file, or a folder to write runs.csv into")
    plot = actions.add_parser("plot", help="a metric across runs to a PNG")
    plot.add_argument("metric", help="e.g. val.loss, val.acc, nfe.forward")
    plot.add_argument("--out", default="metric.png", help="a .png file, or a folder to write <metric>.png into")
    actions.add_parser("reindex", help="rebuild the file store's index from its run folders")
    for action in (listing, compare, export, plot):
        add_query_options(action, default_limit=50 if action is listing else 0)
    listing.add_argument(
        "--exact-count",
        action="store_true",
        help="count every matching run however long the database takes (MongoDB on SecantusDB estimates large "
        "counts from a sample of runs)",
    )
    for action in actions.choices.values():
        action.add_argument("words", nargs="*", help=words_help)
    runs.set_defaults(handler=cmd_runs)

    reproduce = sub.add_parser("reproduce", help="re-run a logged run exactly and compare its metrics")
    reproduce.add_argument(
        "--strict", action="store_true", help="refuse when package versions or the git commit differ"
    )
    reproduce.add_argument(
        "--tolerance", type=float, default=1e-6, help="largest per-epoch difference that counts as a match"
    )
    reproduce.set_defaults(handler=cmd_reproduce)
    resume = sub.add_parser("resume", help="continue a crashed run from its last per-epoch checkpoint")
    resume.set_defaults(handler=cmd_resume)
    reevaluate = sub.add_parser("reevaluate", help="evaluate a trained ODEnet with other solvers and tolerances")
    reevaluate.add_argument(
        "--grid",
        nargs="*",
        metavar="METHOD:VALUES",
        help="e.g. euler:1,0.5,0.25 rk4:1,0.25 dopri5:1e-1,1e-3 (dopri5 at 1e-6, the reference, is always added)",
    )
    reevaluate.add_argument("--collapse-threshold", type=float, default=0.05, help="ODE-ness gap that flags a collapse")
    reevaluate.add_argument("--device", default="auto")
    reevaluate.set_defaults(handler=cmd_reevaluate)
    report = sub.add_parser("report", help="parameter-matched comparison report (thesis table 8.1) of the stored runs")
    report.add_argument("--out", help="folder for comparison.md/.csv and the PNGs (default: <paths.runs>/report)")
    add_query_options(report, default_limit=0, page=False)
    report.set_defaults(handler=cmd_report)
    study = sub.add_parser(
        "study", help="table and figure of a study (make study STUDY=t_final, critical_step, adaptation, ...)"
    )
    study.set_defaults(handler=cmd_study)
    sweep_report = sub.add_parser("sweep-report", help="plots, parameter importance and top trials of a hyperopt sweep")
    sweep_report.add_argument("--out", help="folder for report.md and the PNGs (default: <sweep dir>/report)")
    sweep_report.set_defaults(handler=cmd_sweep_report)
    for command in (reproduce, resume, reevaluate, report, study, sweep_report):
        command.add_argument("words", nargs="*", help=words_help)
    return parser


def _glued_values(argv: list[str]) -> list[str]:
    """`--sort -metrics.val.acc`: a value starting with '-' that argparse would take for an option, glued on."""
    glued: list[str] = []
    for word in argv:
        if glued and glued[-1] in ("--sort", "--columns", "--where") and word.startswith("-"):
            glued[-1] = f"{glued[-1]}={word}"
        else:
            glued.append(word)
    return glued


def main(argv: list[str]) -> int:
    parser = build_parser()
    argv = _glued_values(argv)
    try:
        # Run ids may follow options (`plot val.acc --out f.png 1 2`); argparse leaves those over.
        args, extra = parser.parse_known_args(argv)
        unknown = [e for e in extra if e.startswith("-")]
        if unknown:
            command = " ".join(w for w in (args.command, getattr(args, "action", None)) if w)
            raise UserError(
                f"python -m runner {command}: unrecognized arguments: {' '.join(unknown)}",
                f"python -m runner {command} --help lists its options and arguments",
            )
        args.words = [*getattr(args, "words", []), *extra]
        if getattr(args, "grid", None):
            # `--grid` takes every word after it; run ids and key=value overrides are not grid settings.
            args.words += [w for w in args.grid if ":" not in w or "=" in w]
            args.grid = [w for w in args.grid if ":" in w and "=" not in w]
        return args.handler(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM during resume, reproduce, ...: one line
        from odeflow.interrupts import as_interrupted

        interrupted = as_interrupted(exc)
        print(interrupted.describe(), file=sys.stderr, flush=True)
        return interrupted.exit_code
    except OSError as exc:  # a path the user gave (--out, paths.runs) that cannot be written or read
        if exc.filename is None:
            raise
        print(
            f"error: cannot use {exc.filename}: {exc.strerror or exc}\n  fix: give a path in a folder that exists and "
            f"that you can write (--out, paths.runs or ODEFLOW_RUNS)",
            file=sys.stderr,
        )
        return 2
    except Exception as exc:
        if not type(exc).__module__.startswith("pymongo"):
            raise
        print(  # the database answered when the command began (source_of checked), then failed under it
            f"error: MongoDB stopped answering during this command ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160] if str(exc) else 'no reason given'})\n"
            "  fix: check that the server still runs (make dashboard starts one); a query that makes it read every "
            "run (a count, or a sort on an unindexed key: see README, MongoDB listings) answers sooner narrowed "
            "with --where or sorted on an indexed metric",
            file=sys.stderr,
        )
        return 2
