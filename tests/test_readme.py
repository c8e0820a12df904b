"""README.md, followed as a new user would: every shell command of its code blocks runs (or its stand-in does),
and the names it promises (config groups and options, the files runs write, the columns of `runs list`, the
epoch line, `make help`'s time estimates) are what the code has.

Every command of the README is looked up in COMMANDS, in the README's order; a command the table does not know
fails its test with the line to add, and runs nothing. Runnable commands run in one child process
(`python -m tests.test_readme`, see `drive`), one after another on one runs folder in a temporary directory,
so the run ids the README uses (`runs show 3`, `resume 7`) name the runs its earlier commands made; each runs
in the smallest form the table gives (one epoch, a few samples). Commands this machine cannot run in a test
(a download, a GPU, Slurm, an SSH tunnel, the suite itself) are skipped with their reason, after a check of
what can be checked here (the make target's recipe, the config composes).
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import re
import runpy
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RUNNER = (".venv/bin/python", "-m", "runner")

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)


# --- the README's commands -------------------------------------------------------------------------------------


def strip_comment(line: str) -> str:
    """The line without its shell comment (a `#` that starts a word outside quotes)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def readme_items(text: str) -> list[tuple[str, str]]:
    """(kind, key) in the README's order: ("shell", command) for the commands of its bash/sh/console blocks, each
    once (continuation lines joined, comments dropped, whitespace collapsed; a console block's commands are its
    `$ ` lines), and ("python", first line) for its python blocks."""
    items: list[tuple[str, str]] = []
    for match in FENCE.finditer(text):
        language, body = match.group(1), match.group(2)
        if language == "python":
            items.append(("python", body.splitlines()[0]))
        if language not in ("bash", "sh", "shell", "console"):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            if language == "console":
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            command = " ".join(strip_comment(line).split())
            if command and ("shell", command) not in items:
                items.append(("shell", command))
    return items


def shell_commands(text: str) -> list[str]:
    return [key for kind, key in readme_items(text) if kind == "shell"]


def python_blocks(text: str) -> dict[str, str]:
    """The python blocks by their first line."""
    return {m.group(2).splitlines()[0]: m.group(2) for m in FENCE.finditer(text) if m.group(1) == "python"}


def runner_words(command: str) -> list[str]:
    """`python -m runner`'s arguments in a README command (the `.venv/bin/python -m runner` prefix dropped; the
    README also writes `runs list ...` and `report ...` alone in the query examples)."""
    words = shlex.split(command)
    return words[len(RUNNER) :] if tuple(words[: len(RUNNER)]) == RUNNER else words


# --- what each command becomes in the test -----------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """Run `python -m runner <words>`: the README's own words plus `extra` overrides, or `words` instead of them.
    `before` names a function of this module applied to the runs folder first; `{sweep}` in a word is the id of
    the newest sweep in the store."""

    extra: tuple[str, ...] = ()
    words: tuple[str, ...] | None = None
    reason: str = ""
    before: str | None = None
    refused_when_dirty: str = ""  # what it says when it refuses a checkout with uncommitted changes (exit 2)


@dataclass(frozen=True)
class Make:
    """Run the recipe of a make target (`make -n`: the commands it would run) with `extra` overrides appended."""

    extra: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Skip:
    """Not run here, for `reason`; `check` tests what can be tested without running it."""

    reason: str
    check: Callable[[], None]


@dataclass(frozen=True)
class Python:
    """A python block, run in the runs folder's parent with `replace` (old -> new) applied to its text."""

    replace: tuple[tuple[str, str], ...] = ()
    reason: str = ""


# The smallest forms: one epoch on a few samples, 4 channels (the commands' other settings kept).
TINY = ("train.max_epochs=1",)
TINY_DIGITS = (*TINY, "data.subset=40", "data.test_fraction=0.05", "model.channels=4")
TINY_SPHERES = (*TINY, "data.n_train=100", "data.n_test=40")
TINY_SWEEP = ("hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1", "hydra.sweeper.n_startup_jobs=2")
SMALL = "one epoch on a few samples: the command's path, not its result"


def make_recipe(target: str, *variables: str) -> list[list[str]]:
    """The commands `make <target>` runs, as runner argument lists (`INSTALLED=`: no venv step)."""
    out = subprocess.run(
        ["make", "-n", "-s", target, *variables, "INSTALLED="], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return [shlex.split(line) for line in out.splitlines() if line.strip()]


def runner_recipe(target: str, *variables: str) -> list[list[str]]:
    recipe = make_recipe(target, *variables)
    assert recipe and all(tuple(words[:3]) == RUNNER for words in recipe), recipe
    return [words[3:] for words in recipe]


def composes(*overrides: str, hydra: bool = False):
    """The config `python -m runner <overrides>` composes (Hydra's own keys with hydra=True)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def check_make_target(target: str, command: str, *variables: str) -> Callable[[], None]:
    def check() -> None:
        recipe = [" ".join(words) for words in make_recipe(target, *variables)]
        assert any(command in line for line in recipe), f"make {target} runs {recipe}, not {command}"

    return check


def check_study(name: str) -> Callable[[], None]:
    """make study STUDY=name: its two commands are a multirun of the preset and `study name` on its folder."""

    def check() -> None:
        first, second = runner_recipe("study", f"STUDY={name}")
        assert first == ["-m", f"experiment=study_{name}"] and second == ["study", name]
        cfg = composes(f"experiment=study_{name}", "paths.runs=runs", hydra=True)
        assert cfg.hydra.sweep.dir == f"runs/studies/{name}"  # where `python -m runner study <name>` looks
        assert cfg.hydra.sweeper.params, f"study_{name} sweeps nothing"

    return check


def check_composes(*overrides: str, sweep: tuple[str, ...] = ()) -> Callable[[], None]:
    """The overrides compose (with Hydra's own keys); `sweep`: overrides that must parse as sweeps."""

    def check() -> None:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        composes(*overrides, hydra=True)
        assert all(o.is_sweep_override() for o in OverridesParser.create().parse_overrides(list(sweep)))

    return check


def check_table_presets() -> None:
    """make table DATA=fmnist: the glob names the five table-8.1 presets, then the report."""
    first, second = runner_recipe("table", "DATA=fmnist")
    assert first == ["-m", "experiment=glob(thesis_fmnist_*)"] and second[0] == "report"
    presets = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("thesis_fmnist_*.yaml"))
    assert len(presets) == 5, presets
    for preset in presets:
        assert composes(f"experiment={preset}").data._target_.endswith("fashion_mnist")


def check_tunnel_ports() -> None:
    """The tunnel's ports are the dashboard's defaults."""
    example = (ROOT / ".env.example").read_text()
    assert "OMNIBOARD_PORT=9000" in example and "MONGO_PORT=27017" in example


COMMANDS: dict[str, Run | Make | Skip] = {
    "make run": Make(TINY_DIGITS, SMALL),
    "make test": Skip("the suite itself", check_make_target("test", "-m pytest")),
    ".venv/bin/python -m runner": Run(TINY_DIGITS, reason=SMALL),
    ".venv/bin/python -m runner model=resnet_simple_small solver=rk4 train.lr=1e-3": Run(TINY_DIGITS, reason=SMALL),
    ".venv/bin/python -m runner data=spheres data.dim=3 model.augment_dims=0": Run(
        (*TINY_SPHERES, "model.channels=4"), reason=SMALL
    ),
    ".venv/bin/python -m runner experiment=quickstart": Run(TINY_DIGITS, reason=SMALL),
    ".venv/bin/python -m runner -m model=odenet_simple,resnet_simple_small,resnet_simple_large": Run(
        TINY_DIGITS, reason=SMALL
    ),
    ".venv/bin/python -m runner --cfg job": Run(),
    ".venv/bin/python -m runner sync": Run(),
    "make dashboard": Skip(
        "a foreground server that installs Omniboard with npm; tests/test_dashboard.py runs python -m dashboard",
        check_make_target("dashboard", "-m dashboard"),
    ),
    ".venv/bin/python -m runner tracking=mongo experiment=quickstart": Run(TINY_DIGITS, reason=SMALL),
    "ssh -N -L 9000:127.0.0.1:9000 you@server": Skip("a tunnel from another machine", check_tunnel_ports),
    "ssh -N -L 9000:127.0.0.1:9000 -L 27017:127.0.0.1:27017 you@server": Skip(
        "a tunnel from another machine", check_tunnel_ports
    ),
    ".venv/bin/python -m runner runs list": Run(),
    ".venv/bin/python -m runner runs list --limit 0": Run(),
    ".venv/bin/python -m runner runs list --model odenet_simple --solver dopri5 --status completed": Run(),
    ".venv/bin/python -m runner runs list --where \"metrics.val.acc > 0.9 and config.solver.method = 'rk4'\" "
    "--sort -metrics.val.acc --limit 10": Run(),
    ".venv/bin/python -m runner runs list tracking=mongo --sweep <id>": Run(
        words=("runs", "list", "tracking=mongo", "--sweep", "{sweep}"), reason="<id>: the sweep of make run"
    ),
    ".venv/bin/python -m runner runs show 3": Run(),
    ".venv/bin/python -m runner runs compare 3 4 5": Run(),
    ".venv/bin/python -m runner runs export --out runs.csv": Run(),
    ".venv/bin/python -m runner runs plot val.acc --out val_acc.png 3 4": Run(),
    ".venv/bin/python -m runner runs reindex": Run(),
    "runs list --where \"metrics.val.acc > 0.9 and config.solver.method = 'rk4' and config.train.lr < 1e-3\"": Run(),
    "runs list --where \"min(metrics.val.loss) < 0.2 and not status in ('FAILED', 'INTERRUPTED')\" "
    "--sort min(metrics.val.loss)": Run(),
    "runs list --where \"experiment like 'thesis%' and start_time >= '2026-06-01'\" --sort -start_time,id": Run(),
    'runs list --where "info.parameters.total < 100000" '
    "--columns info.parameters.total,max(metrics.val.acc),config.train.lr": Run(),
    'runs export --where "config.model.channels = 64" --sort -metrics.val.acc --out best.csv': Run(),
    "report --where \"experiment = 'thesis_fmnist_odenet_simple'\"": Run(),
    ".venv/bin/python -m runner reproduce 3": Run(),
    ".venv/bin/python -m runner reproduce 3 --strict": Run(refused_when_dirty="the logged run had uncommitted changes"),
    ".venv/bin/python -m runner reevaluate 3": Run(),
    ".venv/bin/python -m runner reevaluate 3 --grid euler:1,0.5,0.25 rk4:1,0.25 dopri5:1e-1,1e-3": Run(),
    ".venv/bin/python -m runner resume 7": Run(
        before="kill_run_7", reason="run 7 made as if killed with kill -9 (RUNNING, its process gone)"
    ),
    ".venv/bin/python -m runner report": Run(),
    "make table DATA=fmnist": Skip("downloads FashionMNIST and trains for hours", check_table_presets),
    ".venv/bin/python -m runner data=spheres data.dim=2 model=odenet_state solver=euler solver.step_size=1 "
    "adaptation=step_size adaptation.initial=config adaptation.interval=10 train.max_epochs=20 train.lr=0.01": Run(
        (*TINY_SPHERES, "adaptation.interval=1"), reason=SMALL + "; a check every iteration, so some happen"
    ),
    ".venv/bin/python -m runner data=raa_spheres data.dim=3 model=raa_odenet solver=euler solver.step_size=0.25 "
    "train.evaluate=final objective=test_acc": Run(TINY_SPHERES, reason=SMALL),
    **{
        f"make study STUDY={name}": Skip(
            "dozens of runs; tests/test_research runs each study's command on a small multirun", check_study(name)
        )
        for name in ("raa_critical_step", "raa_adaptation", "critical_step", "adaptation", "deep_limit")
    },
    ".venv/bin/python -m runner data=digits model=odenet_simple model.time_dependence=basis model.basis=fourier "
    "model.basis_size=3": Run(TINY_DIGITS, reason=SMALL),
    ".venv/bin/python -m runner data=spheres model=odenet_state model.time_dependence=concat "
    "solver.backend=torchdiffeq": Run(TINY_SPHERES, reason=SMALL),
    ".venv/bin/python -m runner -m search=digits_odenet_time": Skip(
        "16 trials; make sweep ran the same sweeper above", check_composes("search=digits_odenet_time")
    ),
    ".venv/bin/python -m runner runs list --page-token <token>": Skip(
        "<token> is the footer's; tests/test_tracking/test_query_index.py walks the pages",
        check_composes(),
    ),
    "make study STUDY=param_efficiency": Skip(
        "72 runs; tests/test_research/test_param_efficiency.py runs the study small", check_study("param_efficiency")
    ),
    "make study STUDY=param_efficiency ARGS=data=fashion_mnist": Skip(
        "downloads FashionMNIST and trains for hours",
        check_composes("experiment=study_param_efficiency", "data=fashion_mnist"),
    ),
    "make study STUDY=deep_limit_digits": Skip(
        "14 runs; tests/test_research/test_deep_limit.py", check_study("deep_limit_digits")
    ),
    "make sweep": Make(
        (*TINY_SWEEP, *TINY_SPHERES, "model.channels=4"), "two trials of one epoch: the sweeper, its runs and report"
    ),
    ".venv/bin/python -m runner -m search=digits_odenet": Skip(
        "24 trials; make sweep ran the same sweeper above", check_composes("search=digits_odenet")
    ),
    ".venv/bin/python -m runner sweep-report runs/sweeps/quickstart": Run(),
    ".venv/bin/python -m runner -m search=thesis_odenet": Skip(
        "downloads FashionMNIST", check_composes("search=thesis_odenet")
    ),
    ".venv/bin/python -m runner -m search=thesis_resnet model=resnet_simple_large": Skip(
        "downloads FashionMNIST", check_composes("search=thesis_resnet", "model=resnet_simple_large")
    ),
    ".venv/bin/python -m runner -m search=thesis_odenet hydra.sweeper.n_trials=50 "
    "'train.lr=tag(log,interval(1e-4,1e-2))'": Skip(
        "downloads FashionMNIST",
        check_composes(
            "search=thesis_odenet", "hydra.sweeper.n_trials=50", sweep=("train.lr=tag(log,interval(1e-4,1e-2))",)
        ),
    ),
    ".venv/bin/python -m runner runs list --sweep <sweep id>": Run(
        words=("runs", "list", "--sweep", "{sweep}"), reason="<sweep id>: make sweep's"
    ),
    ".venv/bin/python -m runner -m search=quickstart hydra/launcher=slurm_cpu "
    "hydra.launcher.partition=<partition>": Skip(
        "needs a Slurm cluster; tests/test_sweeps/test_slurm.py starts one",
        check_composes("search=quickstart", "hydra/launcher=slurm_cpu", "hydra.launcher.partition=debug"),
    ),
    ".venv/bin/python -m runner -m search=thesis_odenet hydra/launcher=slurm "
    "hydra.launcher.partition=<gpu partition> hydra.sweeper.n_jobs=8": Skip(
        "needs a Slurm cluster with GPUs",
        check_composes(
            "search=thesis_odenet", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.sweeper.n_jobs=8"
        ),
    ),
    ".venv/bin/python -m runner data=fashion_mnist data.subset=10000": Skip(
        "downloads FashionMNIST", check_composes("data=fashion_mnist", "data.subset=10000")
    ),
    ".venv/bin/python -m runner data=cifar10 model=odenet_simple model.channels=256 data.download=false": Skip(
        "needs CIFAR10's files", check_composes("data=cifar10", "model=odenet_simple", "model.channels=256")
    ),
}

PYTHON_BLOCKS: dict[str, Python] = {
    "from runner.experiment.checkpoint import load_checkpoint": Python(),
    "from runner.api import runs, run": Python(
        (("metrics.val.acc > 0.9 and config.solver.method = 'rk4'", "status = 'COMPLETED'"),),
        reason="runs of one epoch do not reach 0.9, and the README's commands train no ODEnet with rk4",
    ),
}

TEXT = README.read_text()
PROSE = FENCE.sub("", TEXT)  # the text around the code blocks, where `names` are quoted
SHELL = shell_commands(TEXT)
PYTHON = python_blocks(TEXT)


def kill_run_7(runs: Path) -> None:
    """What kill -9 leaves of run 7: RUNNING in the store, its process gone."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    path = runs / "store" / "7" / "run.json"
    record = json.loads(path.read_text())
    record.update(status="RUNNING", stop_time=None, meta={**record["meta"], "pid": gone.pid})
    record["host"]["hostname"] = socket.gethostname()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)  # replaced, as the observer does: the store's index sees the change


def newest_sweep(runs: Path) -> str:
    records = sorted((runs / "store").glob("[0-9]*/run.json"), key=lambda p: int(p.parent.name))
    sweeps = [json.loads(p.read_text())["meta"].get("sweep_id") for p in records]
    return next(s for s in reversed(sweeps) if s)


# --- the child process that runs them --------------------------------------------------------------------------


def steps() -> list[dict]:
    """What the child runs, in the README's order: runner argument lists and python blocks."""
    todo: list[dict] = []
    for kind, key in readme_items(TEXT):
        plan = COMMANDS.get(key) if kind == "shell" else PYTHON_BLOCKS.get(key)
        if isinstance(plan, Run):
            words = list(plan.words) if plan.words is not None else [*runner_words(key), *plan.extra]
            todo.append({"key": key, "argv": words, "before": plan.before})
        elif isinstance(plan, Make):
            for words in runner_recipe(*shlex.split(key)[1:]):
                todo.append({"key": key, "argv": [*words, *plan.extra], "before": None})
        elif isinstance(plan, Python):
            code = PYTHON[key]
            for old, new in plan.replace:
                assert old in code, f"{old!r} is no longer in the README's block {key!r}"
                code = code.replace(old, new)
            todo.append({"key": key, "code": code, "before": None})
    return todo


def drive(todo: list[dict], runs: Path) -> list[dict]:
    """Run each step in this process (cwd: the runs folder's parent), as `python -m runner` would."""
    results = []
    for step in todo:
        started, cpu, out, code = time.perf_counter(), time.process_time(), io.StringIO(), 0
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                if step["before"]:
                    globals()[step["before"]](runs)
                if "code" in step:
                    exec(compile(step["code"], step["key"], "exec"), {"__name__": "readme"})
                else:
                    argv = [w.replace("{sweep}", newest_sweep(runs)) if "{sweep}" in w else w for w in step["argv"]]
                    sys.argv = [str(ROOT / "runner" / "__main__.py"), *argv]
                    runpy.run_module("runner", run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 - reported to the test with its traceback
            import traceback

            code, _ = 1, out.write(traceback.format_exc())
        results.append(
            {
                "key": step["key"],
                "exit": code,
                "output": out.getvalue(),
                "seconds": time.perf_counter() - started,
                "cpu_seconds": time.process_time() - cpu,
            }
        )
    return results


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory) -> dict:
    """The README's runnable commands run once, in order, in one child process; their results by command."""
    from dashboard.server import DatabaseServer

    home = tmp_path_factory.mktemp("readme")
    runs = home / "runs"
    server = DatabaseServer(home / "db").start()
    try:
        env = {
            **os.environ,
            "ODEFLOW_RUNS": str(runs),
            "MONGO_URL": server.url,
            "ODEFLOW_ENV_FILE": str(home / "no.env"),
            "PYTHONPATH": str(ROOT),
            "MPLBACKEND": "Agg",
        }
        proc = subprocess.run(
            [sys.executable, "-m", "tests.test_readme", str(runs)],
            input=json.dumps(steps()),
            cwd=home,
            env=env,
            capture_output=True,
            text=True,
            timeout=800,
        )
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stderr[-3000:]
    results: dict[str, list[dict]] = {}
    for result in json.loads((home / "results.json").read_text()):
        results.setdefault(result["key"], []).append(result)
    return {"home": home, "runs": runs, "results": results}


# --- the tests -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", SHELL)
def test_each_readme_command_runs_or_is_checked(command: str, readme_run_or_none) -> None:
    plan = COMMANDS.get(command)
    assert plan is not None, (
        f"README.md has a command tests/test_readme.py does not know: {command}\n"
        f"  fix: add it to COMMANDS in tests/test_readme.py: Run() to run it as written, Run(extra=..., reason=...) "
        f"for its smallest form, or Skip(reason, check) when a test cannot run it"
    )
    if isinstance(plan, Skip):
        plan.check()
        return
    dirty = isinstance(plan, Run) and plan.refused_when_dirty and git_dirty()
    for result in readme_run_or_none["results"][command]:
        if dirty:  # a development checkout, not CI's clean one
            assert result["exit"] == 2 and plan.refused_when_dirty in result["output"], result["output"][-4000:]
            continue
        assert result["exit"] == 0, f"{command} ended with {result['exit']}:\n{result['output'][-4000:]}"
        assert "Traceback" not in result["output"], result["output"][-4000:]


def git_dirty() -> bool:
    return bool(subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout)


@pytest.fixture
def readme_run_or_none(request) -> dict | None:
    """The README's run, for commands that run (a skipped or unknown command needs none)."""
    command = request.node.callspec.params["command"]
    return request.getfixturevalue("readme_run") if isinstance(COMMANDS.get(command), Run | Make) else None


@pytest.mark.parametrize("first_line", list(PYTHON))
def test_each_python_block_runs(first_line: str, readme_run) -> None:
    assert first_line in PYTHON_BLOCKS, (
        f"README.md has a python block tests/test_readme.py does not know: {first_line}\n"
        "  fix: add it to PYTHON_BLOCKS in tests/test_readme.py"
    )
    (result,) = readme_run["results"][first_line]
    assert result["exit"] == 0, result["output"][-4000:]


def test_the_table_names_only_commands_the_readme_has() -> None:
    stale = [c for c in COMMANDS if c not in SHELL] + [k for k in PYTHON_BLOCKS if k not in PYTHON]
    assert not stale, f"tests/test_readme.py lists commands README.md no longer has: {stale}"
    for key, plan in COMMANDS.items():
        if isinstance(plan, Run) and (plan.extra or plan.words is not None or plan.before):
            assert plan.reason, f"{key}: a command run in another form says why"


def test_the_shell_command_reader_joins_lines_and_drops_comments() -> None:
    text = "```bash\nmake run   # a comment\npython -m runner a=1 \\\n    b='x # y'  # c\nmake run\n```\n"
    assert shell_commands(text) == ["make run", "python -m runner a=1 b='x # y'"]
    assert shell_commands("```console\n$ make test\noutput\n```\n") == ["make test"]


# --- the names the README promises ------------------------------------------------------------------------------


def markdown_table(header: str) -> list[list[str]]:
    """The rows (cells) of the README's table whose header row starts with `header`."""
    lines = TEXT[TEXT.index(header) :].splitlines()[2:]
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in lines[: next(i for i, x in enumerate(lines) if not x.startswith("|"))]
    ]


def ticked(text: str) -> list[str]:
    """The `quoted` names of a piece of prose (a name wrapped over two lines joined by one space)."""
    return [" ".join(t.split()) for t in re.findall(r"`([^`]+)`", text)]


def test_the_config_table_has_every_group_and_option_and_only_real_keys() -> None:
    from fnmatch import fnmatch

    from omegaconf import OmegaConf

    conf = ROOT / "conf"
    groups = {str(p.parent.relative_to(conf)) for p in conf.rglob("*.yaml") if p.parent != conf}
    rows = {ticked(cells[0])[0]: cells for cells in markdown_table("| group | options | main keys |")}
    assert sorted(rows) == sorted(groups), (
        f"README's config table has groups {sorted(rows)}; conf/ has {sorted(groups)}"
    )
    for group, (_, options_cell, keys_cell) in rows.items():
        files = sorted(p.stem for p in (conf / group).glob("*.yaml"))
        listed = ticked(options_cell)
        missing = [f for f in files if not any(fnmatch(f, pattern) for pattern in listed)]
        assert not missing, f"README's config table lacks {group} options {missing}"
        for pattern in listed:
            if not any(fnmatch(f, pattern) for f in files):
                composes(f"{group}={pattern}")  # an option Hydra or a plugin brings (hydra/launcher=joblib)
        keys = {
            k
            for f in files
            for k in pd_flat(OmegaConf.to_container(OmegaConf.load(conf / group / f"{f}.yaml"), resolve=False))
        }
        named = [t.split(":")[0] for t in ticked(keys_cell) if re.fullmatch(r"\w+(: \w+)?", t)]
        unknown = [k for k in named if k not in keys]
        assert not unknown, f"README's config table names {group} keys that no {group} option has: {unknown}"


def pd_flat(tree: dict, prefix: str = "") -> list[str]:
    """Every key of a nested mapping, as its own name and its dotted path."""
    keys = []
    for key, value in tree.items():
        keys += [str(key), prefix + str(key)]
        if isinstance(value, dict):
            keys += pd_flat(value, prefix + str(key) + ".")
    return keys


FILE_NAME = re.compile(r"^[\w.*/-]+\.(png|json|jsonl|csv|md|pt|txt|yaml|sqlite|pkl|lock|py|js|toml)$")

# Files the README names that no command run here writes (their commands are skipped above, or need what the
# test's runs lack), with the module whose code writes them (None: the README's example of a name).
NOT_MADE_HERE: dict[str, str | None] = {
    "parameter_path.pt": "runner/experiment/app.py",  # train.record_parameters > 0
    "importance.png": "runner/sweeps/report.py",  # 5 trials with a value
    "hyperopt_state.pkl": "runner/sweeps/state.py",  # an old sweep's state, migrated
    "slurm_jobs.json": "runner/sweeps/slurm.py",
    "study.md": "runner/research/study.py",
    "bnfe_per_epoch.png": "runner/research/study.py",
    "critical_step.png": "runner/research/critical_step.py",
    "critical_step.md": "runner/research/critical_step.py",
    "adaptation.md": "runner/research/critical_step.py",
    "deep_limit.md": "runner/research/deep_limit.py",
    "deep_limit.png": "runner/research/deep_limit.py",
    "raa_critical_step.md": "runner/research/raa_critical_step.py",
    "param_efficiency.md": "runner/research/param_efficiency.py",
    "param_efficiency.png": "runner/research/param_efficiency.py",
    "raa_critical_step_*d_*.png": "runner/research/raa_critical_step.py",
    "plots/val.acc.png": None,
    "plots/runs.csv": None,
}


def string_constants(path: Path) -> str:
    """The module's string literals and f-string parts (not its docstrings), one per line."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
    }
    parts = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            parts.append("*".join(v.value if isinstance(v, ast.Constant) else "" for v in node.values))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            parts.append(node.value)
    return "\n".join(parts)


def test_every_file_the_readme_names_is_in_the_repository_or_made_by_its_commands(readme_run) -> None:
    from fnmatch import fnmatch

    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    made = [str(p.relative_to(readme_run["home"])) for p in readme_run["home"].rglob("*") if p.is_file()]
    names = {re.sub(r"<[^>]*>", "*", t) for t in ticked(PROSE)} | set(re.findall(r"\]\(([^)#:]+)\)", TEXT))
    unknown = []
    for name in sorted(n for n in names if FILE_NAME.match(n)):
        pattern = name.lstrip("./") if name.startswith("./") else name
        if any(fnmatch(path, pattern) or fnmatch(path, "*/" + pattern) for path in [*tracked, *made]):
            continue
        listed = name if name in NOT_MADE_HERE else name.split("/")[-1]
        if listed in NOT_MADE_HERE:
            writer = NOT_MADE_HERE[listed]
            if writer is not None:
                literals = string_constants(ROOT / writer)
                assert any(fnmatch(line, "*" + pattern.split("/")[-1]) for line in literals.splitlines()), (
                    f"README names {name}, but {writer} writes no such file"
                )
            continue
        unknown.append(name)
    assert not unknown, (
        f"README.md names files that neither the repository has nor its commands made: {unknown}\n"
        f"  (made here: {sorted({Path(m).name for m in made if FILE_NAME.match(Path(m).name)})})\n"
        "  fix: the README's name, or NOT_MADE_HERE in tests/test_readme.py with the module that writes it"
    )


def output_of(readme_run: dict, command: str, index: int = 0) -> str:
    return readme_run["results"][command][index]["output"]


def test_the_columns_the_readme_gives_runs_list_and_runs_show_are_theirs(readme_run) -> None:
    listing = output_of(readme_run, ".venv/bin/python -m runner runs list")
    header = next(line for line in listing.splitlines() if line.split()[:1] == ["id"]).split()
    from runner.tracking.listing import summary_columns

    shown = output_of(readme_run, ".venv/bin/python -m runner runs show 3")
    printed = [line.split()[0] for line in shown.split("summary:")[1].split("\n\n")[0].strip().splitlines()]
    summary = summary_columns()  # runs show prints those a run has a value for (this CPU run: no CUDA figures)
    assert set(printed) <= set(summary) and "val_rss_mb" in printed, printed
    claims = re.findall(r"`runs (list|show)`(/`show`)?\s*\(([^)]*)\)", PROSE)
    assert claims, "the README no longer says which columns runs list shows"
    for command, and_show, cell in claims:
        names = {n for n in ticked(cell) if re.fullmatch(r"[a-z_]+", n)}
        for columns, which in [(header, "list"), (summary, "show")]:
            if which == command or and_show:
                assert names <= set(columns), f"README: runs {which} shows {sorted(names)}; it shows {columns}"
    fields = next(cells for cells in markdown_table("| field | what |") if "run list's columns" in cells[1])
    assert set(ticked(fields[0])) <= set(header), f"README's query fields name list columns {fields[0]}; {header}"


def test_the_epoch_line_and_bnfe_look_as_the_readme_says(readme_run) -> None:
    output = output_of(readme_run, ".venv/bin/python -m runner")  # dopri5, direct backpropagation
    (example,) = [t for t in ticked(PROSE) if t.startswith("NFE fwd ")]
    pattern = re.sub(r"\d+\\\.\d+", r"\\d+\\.\\d+", re.escape(example))  # any numbers, in the same form
    assert re.search(pattern, output), f"README shows the epoch line's NFE as `{example}`; the run printed:\n{output}"
    (shown,) = re.findall(
        r"Direct backpropagation evaluates f\s+only forwards:.*? show its BNFE as `([^`]+)`", PROSE, re.S
    )
    lines = output.splitlines()
    at = next(i for i, line in enumerate(lines) if " BNFE " in line)
    end = lines[at].index(" BNFE ") + len(" BNFE")  # the summary's columns are right-aligned
    assert lines[at + 1][:end].split()[-1] == shown, (
        f"README: BNFE shown as {shown} for direct backpropagation\n{output}"
    )


ESTIMATE = re.compile(r"(?:~|about )(\d+(?:\.\d+)?|one|two|three|four|five|ten) ?(s\b|sec|min)|a few minutes")
WORDS = {"one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "ten": "10"}


def estimates(text: str) -> set[str]:
    """The time estimates in a piece of text, normalised: `~20 min`, `about 20 minutes` -> `20 min`."""
    found = set()
    for match in ESTIMATE.finditer(text):
        found.add(
            "a few min"
            if match.group(1) is None
            else f"{WORDS.get(match.group(1), match.group(1))} {match.group(2)[:1]}"
        )
    return found


def test_the_readmes_time_estimates_agree_with_make_help() -> None:
    out = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    helps = {line.split()[1]: estimates(line) for line in out.splitlines() if line.strip().startswith("make ")}
    said: dict[str, set[str]] = {}
    for language, body in readme_blocks(TEXT):
        for line in body.splitlines() if language in ("bash", "sh") else []:
            words = line.split("#", 1)
            if words[0].startswith("make ") and len(words) == 2 and estimates(words[1]):
                said.setdefault(words[0].split()[1], set()).update(estimates(words[1]))
    for target, note in re.findall(r"`make ([\w-]+)[^`]*` \(([^)]*)\)", PROSE):
        if estimates(note):
            said.setdefault(target, set()).update(estimates(note))
    assert said, "the README gives no time for any make target"
    wrong = {t: (s, helps.get(t)) for t, s in said.items() if s != helps.get(t)}
    assert not wrong, f"README's time estimates (README, make help) disagree: {wrong}"


def readme_blocks(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]


if __name__ == "__main__":  # the child process of readme_run: run the steps given on stdin
    runs_folder = Path(sys.argv[1])
    done = drive(json.loads(sys.stdin.read()), runs_folder)
    (runs_folder.parent / "results.json").write_text(json.dumps(done))
