"""Subcommands next to the Hydra entry point: `sync` (journal -> MongoDB) and `runs` (the run browser).

Both read the store from the same config tree as training runs, so `tracking=mongo` or
`paths.runs=...` select it exactly as they do for `python -m runner`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runner.errors import UserError

SUBCOMMANDS = ("sync", "runs")


def _split(values: list[str]) -> tuple[list[str], list[str]]:
    """Positional words: (plain arguments, config overrides key=value)."""
    return [v for v in values if "=" not in v], [v for v in values if "=" in v]


def load_store(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from runner.factories import instantiate_group
    from runner.tracking import PROJECT_ROOT

    try:
        with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
    except HydraException as exc:
        raise UserError(f"bad config override: {exc}", "overrides look like tracking=mongo or paths.runs=/some/dir") from None
    return instantiate_group("tracking", cfg.tracking)


def read_records(store) -> list:
    from runner.runstore import read_file_store, read_mongo
    from runner.tracking import MongoStore

    if isinstance(store, MongoStore):
        try:
            client = store.client()
            client.admin.command("ping")
            return read_mongo(client, store.db_name)
        except Exception as exc:  # pymongo raises several types for "no server"
            from runner.masking import mask_url

            print(f"MongoDB at {mask_url(store.url)} is unreachable ({type(exc).__name__}); "
                  f"showing the local journal {store.local_dir} instead", file=sys.stderr)
    return read_file_store(store.local_dir)


def cmd_sync(args: argparse.Namespace) -> int:
    from runner.mongo import sync
    from runner.tracking import MongoStore

    _, overrides = _split(args.words)
    store = load_store(["tracking=mongo", *overrides])
    if not isinstance(store, MongoStore):
        raise UserError("sync needs the mongo tracking backend", "drop the tracking= override (sync uses tracking=mongo)")
    client = store.client()
    try:
        client.admin.command("ping")
    except Exception as exc:
        from runner.masking import mask_url

        raise UserError(f"MongoDB at {mask_url(store.url)} is unreachable ({type(exc).__name__}); nothing was pushed, "
                        f"the journal {store.local_dir} is unchanged",
                        "start it (make up) or point MONGO_URL at a running server, then sync again") from None
    counts = sync(store.local_dir, client, store.db_name, include_running=args.include_running)
    print(f"sync: {counts['pushed']} pushed, {counts['already_there']} already in MongoDB"
          + (f", {counts['running']} still running or killed (add --include-running to push them as they are)" if counts["running"] else ""))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from runner import browse

    words, overrides = _split(args.words)
    records = read_records(load_store(overrides))
    if args.action == "list":
        criteria = {f: getattr(args, f) for f in browse.FILTERS}
        print(browse.list_runs(browse.filter_runs(records, **criteria)))
    elif args.action == "show":
        if len(words) != 1:
            raise UserError("show takes one run id", "python -m runner runs show 3")
        print(browse.show_run(browse.find_run(records, words[0])))
    elif args.action == "compare":
        print(browse.compare_runs([browse.find_run(records, w) for w in words]))
    elif args.action == "export":
        chosen = [browse.find_run(records, w) for w in words] or records
        print(f"wrote {len(chosen)} runs to {browse.export_runs(chosen, Path(args.out))}")
    elif args.action == "plot":
        chosen = [browse.find_run(records, w) for w in words] or records
        print(f"wrote {browse.plot_metric(chosen, args.metric, Path(args.out))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m runner", description="odeflow subcommands (without one: run an experiment)")
    sub = parser.add_subparsers(dest="command", required=True)
    words_help = "run ids and/or config overrides such as tracking=mongo or paths.runs=DIR"
    sync = sub.add_parser("sync", help="push journalled runs into MongoDB (idempotent)")
    sync.add_argument("--include-running", action="store_true", help="also push runs still marked RUNNING (killed runs)")
    sync.add_argument("words", nargs="*", help="config overrides, e.g. tracking.db_name=thesis")
    sync.set_defaults(handler=cmd_sync)
    runs = sub.add_parser("runs", help="browse logged runs")
    actions = runs.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="one line per run, filtered")
    from runner.browse import FILTERS

    for name in FILTERS:
        listing.add_argument(f"--{name}", help=f"only runs whose {name} is this")
    actions.add_parser("show", help="one run: summary, final metrics, artifacts, config")
    actions.add_parser("compare", help="runs side by side: config differences and metrics")
    export = actions.add_parser("export", help="runs with their whole config to CSV")
    export.add_argument("--out", default="runs.csv")
    plot = actions.add_parser("plot", help="a metric across runs to a PNG")
    plot.add_argument("metric", help="e.g. val.loss, val.acc, nfe.forward")
    plot.add_argument("--out", default="metric.png")
    for action in actions.choices.values():
        action.add_argument("words", nargs="*", help=words_help)
    runs.set_defaults(handler=cmd_runs)
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    # Run ids may follow options (`plot val.acc --out f.png 1 2`); argparse leaves those over.
    args, extra = parser.parse_known_args(argv)
    unknown = [e for e in extra if e.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.words = [*getattr(args, "words", []), *extra]
    try:
        return args.handler(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
