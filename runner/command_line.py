"""Checks on `python -m runner ...` that Hydra would answer with a traceback or the wrong advice.

Hydra reports a mistyped key as "Key 'lrr' is not in struct" and suggests `+train.lrr` (adding a new key,
the wrong fix for a typo), reads a mistyped subcommand as a malformed override ("missing EQUAL"), and
fails with an OSError traceback when the runs folder cannot be created. These checks run first and
end in one line naming the cause and the fix.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from odeflow.errors import UserError

HYDRA_FLAGS_WITHOUT_VALUE = {
    "-m",
    "--multirun",
    "--help",
    "-h",
    "--hydra-help",
    "--info",
    "-i",
    "--resolve",
    "--version",
}


def check_command(word: str, commands: tuple[str, ...]) -> None:
    """`word` came first and is neither an override nor an option: it must be a subcommand."""
    if "=" in word or word.startswith(("-", "+", "~")) or word in commands:
        return
    close = difflib.get_close_matches(word, commands, n=1)
    raise UserError(
        f"'{word}' is not a command or a config override",
        (f"did you mean '{close[0]}'? " if close else "")
        + f"commands: {', '.join(commands)} (python -m runner <command> --help); "
        "without a command, give overrides like model=resnet_simple_small train.lr=0.01",
    )


def check_overrides(argv: list[str]) -> str | None:
    """Every dotted key the overrides change exists in the config they compose; the runs folder can be made.
    Returns that folder (None where Hydra's flags or a malformed override leave it to Hydra)."""
    if any(a.startswith("-") and a not in HYDRA_FLAGS_WITHOUT_VALUE for a in argv) or any(
        a in ("--help", "-h", "--hydra-help") for a in argv
    ):
        return None  # --cfg, --config-name, ...: Hydra's own business
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    words = [a for a in argv if not a.startswith("-")]
    try:
        overrides = OverridesParser.create().parse_overrides(words)
    except Exception:  # a malformed override: Hydra's message is precise, except for hyperopt's names
        check_distribution_syntax(words)
        return None
    changed = [o for o in overrides if o.type == OverrideType.CHANGE and not o.key_or_group.startswith("hydra")]
    search_path = [o for o in overrides if o.key_or_group == "hydra.searchpath"]
    folders = search_path[-1].value() if search_path else []
    for folder in folders:  # Hydra warns (two lines) and goes on without it
        path = Path(str(folder).removeprefix("file://"))
        if ("://" not in str(folder) or str(folder).startswith("file://")) and not path.is_dir():
            raise UserError(
                f"hydra.searchpath names {path}, which is not a folder",
                "give the folder that holds your config groups, as hydra.searchpath=[file:///abs/path/conf]",
            )
    check_globs(changed, folders)
    top_level = [o for o in changed if "." not in o.key_or_group and o.package is None]
    groups = [o.input_line for o in top_level if not o.is_sweep_override()]
    groups += [o.input_line for o in overrides if o.key_or_group == "hydra.searchpath"]  # the user's config folders
    cfg = _compose(groups)
    if cfg is None:
        return None  # an unknown group option, say: Hydra raises it again (as_user_error)
    if not any(o.is_sweep_override() for o in top_level):  # a group swept over may add keys its default lacks
        keys = leaf_keys(cfg)
        for o in changed:
            key = o.key_or_group
            if "." in key and not _has_key(cfg, key):
                close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
                raise UserError(
                    f"{key} is not a config key",
                    (f"did you mean {close[0]}? " if close else "")
                    + f"python -m runner --cfg job lists every key; to add a key of your own write +{key}=...",
                )
    runs = [o for o in changed if o.key_or_group == "paths.runs"]
    if runs and runs[-1].is_sweep_override():
        return None
    folder = str(runs[-1].value()) if runs else cfg.paths.runs
    _check_writable_folder("paths.runs", folder)
    return folder


def check_globs(overrides: list[Any], search_path: list[str]) -> None:
    """A group's glob(...) that matches none of its options (`make table DATA=nope`): Hydra launches no job and
    the command succeeds, having done nothing."""
    from hydra.core.override_parser.types import ValueType

    from runner.tracking.stores import PROJECT_ROOT

    folders = [
        PROJECT_ROOT / "conf",
        *(Path(p.removeprefix("file://")) for p in search_path if "://" not in p or p.startswith("file://")),
    ]
    for o in overrides:
        if o.value_type != ValueType.GLOB_CHOICE_SWEEP or "." in o.key_or_group:
            continue
        group = o.key_or_group
        options = sorted({f.stem for folder in folders for f in (folder / group).glob("*.yaml")})
        if options and not o.value().filter(options):
            raise UserError(
                f"{o.input_line} matches no option of {group}: it would launch no run",
                f"the options of {group}: {', '.join(options)}",
            )


def check_distribution_syntax(words: list[str]) -> None:
    """hyperopt's distribution names (loguniform(...)) belong in search configs; Hydra says only "Unknown function"."""
    from runner.sweeps.search_space import DISTRIBUTIONS

    for word in words:
        key, _, value = word.partition("=")
        function = value.split("(", 1)[0].strip()
        if "(" in value and function in DISTRIBUTIONS and function not in ("choice",):
            raise UserError(
                f"{word}: {function}(...) is hyperopt's syntax, for search configs (conf/search/*.yaml, "
                "hydra.sweeper.params); the command line takes Hydra's sweep syntax",
                f"write {key}='tag(log, interval(a, b))' for a log scale, {key}='interval(a, b)', "
                f"{key}='tag(int, interval(a, b))' for whole numbers, or {key}=a,b,c",
            )


def _compose(group_overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir

    from runner.tracking.stores import PROJECT_ROOT

    try:
        with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
            return compose("config", overrides=group_overrides)
    except Exception as exc:  # Hydra explains bad group options itself, with the list of options
        raise_if_yaml_error(exc)
        return None


def raise_if_yaml_error(exc: BaseException) -> None:
    """A config file that is not valid YAML (Hydra shows PyYAML's traceback): one line naming file, line and column."""
    error = yaml_error(exc)
    if error is not None:
        raise error from None


def yaml_error(exc: BaseException) -> UserError | None:
    """The YAML error `exc` was raised from, as one line naming file, line and column (None if there is none)."""
    import yaml

    for cause in _chain(exc):
        if isinstance(cause, yaml.MarkedYAMLError):
            mark = cause.problem_mark or cause.context_mark
            where = f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}" if mark else "a config file"
            problem = " ".join(str(p) for p in (cause.context, cause.problem) if p)
            return UserError(
                f"{where} is not valid YAML: {problem}",
                "correct the file there (a mapping is `key: value` indented by spaces, a list `[a, b]`; quote "
                "values holding ':' or '#'); python -m runner --cfg job shows the composed config once it loads",
            )
        if isinstance(cause, yaml.YAMLError):
            return UserError(f"a config file is not valid YAML: {cause}", "correct the file it names")
    return None


def _chain(exc: BaseException | None) -> list[BaseException]:
    """`exc` and the exceptions it was raised from or during, outermost first."""
    chain: list[BaseException] = []
    while exc is not None and all(exc is not seen for seen in chain):
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


# How a value reaches Hydra intact: the shell removes the outer quotes, Hydra the inner ones.
QUOTING_FIX = (
    "write key=value with no space around '='; quote a value holding ',', '=', quotes, brackets or parentheses "
    "for Hydra inside the shell's quotes, e.g. {example}"
)


def as_user_error(
    exc: BaseException, argv: list[str], runs_folder: str | None = None, runs_started: int = 0
) -> UserError | None:
    """What Hydra raises for the command line `argv` (its grammar, its flags, the config folders, a full disk
    while it writes its own files), as one line naming the cause and the fix; None for anything else (a bug
    shows its traceback). `runs_started`: how many runs this process began before Hydra raised."""
    from hydra.errors import (
        ConfigCompositionException,
        HydraException,
        MissingConfigException,
        OverrideParseException,
        SearchPathException,
    )

    from odeflow.files import is_disk_full

    if isinstance(exc, UserError):
        return exc
    error = yaml_error(exc)
    if error is not None:
        return error
    if is_disk_full(exc):
        folder = runs_folder or "the runs folder"
        before_the_run = not runs_started and _raised_in(exc, "_save_config")  # Hydra writing a job's .hydra/
        when = (
            "before the run started (writing its first files): nothing was recorded"
            if before_the_run
            else "while Hydra wrote its own files: every run keeps what it recorded"
        )
        return UserError(
            f"no space left on the disk of {folder} {when}",
            f"free space there (df -h {folder}), or move the runs to a disk with room (ODEFLOW_RUNS or "
            "paths.runs); then run it again" + ("" if before_the_run else " (a sweep goes on from its saved state)"),
        )
    if isinstance(exc, OverrideParseException):
        return override_parse_error(exc.override, exc.message)
    if isinstance(exc, MissingConfigException):
        return missing_config_error(exc.missing_cfg_file, exc.options, argv)
    if isinstance(exc, SearchPathException):
        return UserError(
            str(exc), "give --config-dir (-cd) a folder that exists (absolute, or relative to where you run)"
        )
    if isinstance(exc, ConfigCompositionException) or type(exc) is HydraException:
        return composition_error(str(exc))
    return None


def _raised_in(exc: BaseException, function: str) -> bool:
    """Whether `exc`, or an exception it was raised from, passed through a function of that name."""
    import traceback

    return any(frame.f_code.co_name == function for e in _chain(exc) for frame, _ in traceback.walk_tb(e.__traceback__))


def override_parse_error(override: str, message: str) -> UserError:
    """An override Hydra's grammar cannot read: which, and how to write or quote it."""
    key, _, value = override.partition("=")
    problem = re.sub(r" expecting \{.*\}| expecting <EOF>", "", message.splitlines()[0])
    problem = problem.replace("mismatched input '<EOF>'", "it ends too early").replace("mismatched input", "unexpected")
    quoted = f"{key}='\"{value}\"'"
    if value.count("'") % 2 or value.count('"') % 2:
        problem = "a quote is not closed"
        fix = f"close the quote, or quote the whole value for Hydra inside the shell's quotes: {key}='\"...\"'"
    elif value.endswith(",") or value.startswith(",") or ",," in value:
        fix = f"a comma separates values to sweep (with -m: {key}=a,b); drop the stray comma, or quote: {quoted}"
    elif value.count("[") != value.count("]") or value.count("(") != value.count(")"):
        fix = f"close the bracket (a list is {key}=[a,b]), or quote the value: {quoted}"
    elif "=" in override and not value:
        fix = f"give a value ({key}=VALUE), or delete the key with ~{key}"
    else:
        fix = QUOTING_FIX.format(example=quoted)
    return UserError(f"Hydra cannot read the override {override}: {problem}", fix)


def missing_config_error(missing: str | None, options: list[str] | None, argv: list[str]) -> UserError:
    """A config option or file that is not there: the option, the nearest ones, and where the files live."""
    if options:  # an option of a group: model=odenet_simplee
        group, _, name = (missing or "").rpartition("/")
        close = difflib.get_close_matches(name, options, n=1)
        return UserError(
            f"{group}={name} is not an option (there is no {missing}.yaml in the config folders)",
            (f"did you mean {close[0]}? " if close else "") + f"the options of {group}: {', '.join(options)}",
        )
    if any(word in ("--config-path", "-cp") or word.startswith("--config-path=") for word in argv):
        return UserError(
            f"the config folder given with --config-path has no primary config {missing or 'config'!r}",
            "--config-path (-cp) replaces the project's config folder (conf/); to add a folder of your own, give "
            "it with --config-dir DIR (-cd DIR) or hydra.searchpath=[file:///abs/DIR]",
        )
    if missing is None or "/" not in missing:
        return UserError(
            f"there is no primary config {missing or 'config'!r} in the config folders",
            "drop --config-name (-cn) to use the project's config.yaml, or give it a file of a folder added with "
            "--config-dir (its name without .yaml)",
        )
    return UserError(
        f"the config {missing!r} is not in the config folders",
        "python -m runner --help lists the options of each group; add a folder of your own with --config-dir DIR",
    )


def composition_error(message: str) -> UserError:
    """Hydra's other refusals (an override's +/~ prefix, a sweep without -m): its first line and its advice."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    cause, advice = lines[0], lines[1:]
    if cause.startswith("Could not append to config"):
        key = cause.split("'")[1]
        advice = [f"drop the + to change it ({key}=...); + adds a key the config lacks, ++ adds or changes one"]
    elif cause.startswith("Could not delete from config"):
        advice = ["python -m runner --cfg job lists every key"]
    elif cause.startswith("Could not override"):
        advice = ["python -m runner --cfg job lists every key; to add a key of your own write +key=..."]
    return UserError(cause, "; ".join(advice) or "python -m runner --help shows the options and the syntax")


def leaf_keys(node: Any, prefix: str = "") -> list[str]:
    from omegaconf import DictConfig

    keys = []
    for key in node.keys():
        path = f"{prefix}{key}"
        child = node._get_node(key)
        keys += leaf_keys(child, path + ".") if isinstance(child, DictConfig) else [path]
    return keys


def _has_key(cfg: Any, dotted: str) -> bool:
    from omegaconf import DictConfig

    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return False
        node = node._get_node(part)
    return True


def _check_writable_folder(key: str, folder: str) -> None:
    path = Path(folder).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".odeflow-write-check"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise UserError(
            f"{key}={folder} cannot be used: {exc.strerror or exc} ({exc.filename or path})",
            f"set {key} (or the ODEFLOW_RUNS environment variable) to a folder you can write",
        ) from None
