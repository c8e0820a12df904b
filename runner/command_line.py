"""Checks on `python -m runner ...` that Hydra would answer with a traceback or the wrong advice.

Hydra reports a mistyped key as "Key 'lrr' is not in struct" and suggests `+train.lrr` (adding a new key,
the wrong fix for a typo), reads a mistyped subcommand as a malformed override ("missing EQUAL"), and
fails with an OSError traceback when the runs folder cannot be created. These checks run first and
end in one line naming the cause and the fix.
"""

from __future__ import annotations

import difflib
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


def check_overrides(argv: list[str]) -> None:
    """Every dotted key the overrides change exists in the config they compose; the runs folder can be made."""
    if any(a.startswith("-") and a not in HYDRA_FLAGS_WITHOUT_VALUE for a in argv) or any(
        a in ("--help", "-h", "--hydra-help") for a in argv
    ):
        return  # --cfg, --config-name, ...: Hydra's own business
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    words = [a for a in argv if not a.startswith("-")]
    try:
        overrides = OverridesParser.create().parse_overrides(words)
    except Exception:  # a malformed override: Hydra's message is precise, except for hyperopt's names
        check_distribution_syntax(words)
        return
    changed = [o for o in overrides if o.type == OverrideType.CHANGE and not o.key_or_group.startswith("hydra")]
    groups = [o.input_line for o in changed if "." not in o.key_or_group and o.package is None]
    groups += [o.input_line for o in overrides if o.key_or_group == "hydra.searchpath"]  # the user's config folders
    cfg = _compose(groups)
    if cfg is None:
        return  # an unknown group option, say: Hydra lists the options
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
    if not runs:
        _check_writable_folder("paths.runs", cfg.paths.runs)
    elif not runs[-1].is_sweep_override():
        _check_writable_folder("paths.runs", str(runs[-1].value()))


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
    import yaml

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, yaml.MarkedYAMLError):
            mark = exc.problem_mark or exc.context_mark
            where = f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}" if mark else "a config file"
            problem = " ".join(str(p) for p in (exc.context, exc.problem) if p)
            raise UserError(
                f"{where} is not valid YAML: {problem}",
                "correct the file there (a mapping is `key: value` indented by spaces, a list `[a, b]`; quote "
                "values holding ':' or '#'); python -m runner --cfg job shows the composed config once it loads",
            ) from None
        if isinstance(exc, yaml.YAMLError):
            raise UserError(f"a config file is not valid YAML: {exc}", "correct the file it names") from None
        exc = exc.__cause__ or exc.__context__


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
