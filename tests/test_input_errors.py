"""Inputs that fail in Hydra, before the runner's own checks (its flags, its override grammar, its config
folders, its files): one line naming the cause and one naming the fix, no traceback, nothing recorded."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli


def one_error(proc, runs_dir: Path) -> tuple[str, str]:
    """The (cause, fix) lines of a command that failed as a user error, after checking it recorded nothing."""
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("  fix: "), proc.stderr
    assert not (runs_dir / "store").exists() or not any((runs_dir / "store").iterdir())
    return lines[0], lines[1]


def users_config_folder(tmp_path: Path) -> Path:
    conf = tmp_path / "conf"
    (conf / "experiment").mkdir(parents=True)
    (conf / "experiment" / "mine.yaml").write_text("# @package _global_\ntrain:\n  lr: [0.1\n  max_epochs: 2\n")
    return conf


@pytest.mark.parametrize(
    "spelling",
    [["--config-dir", "{}"], ["-cd", "{}"], ["--config-dir={}"], ["hydra.searchpath=[file://{}]"]],
    ids=["--config-dir", "-cd", "--config-dir=", "hydra.searchpath"],
)
def test_a_yaml_error_in_a_users_config_folder_is_one_line_however_the_folder_is_added(runs_dir, tmp_path, spelling):
    conf = users_config_folder(tmp_path)
    proc = run_cli([*(word.format(conf) for word in spelling), "experiment=mine"], runs_dir)
    cause, fix = one_error(proc, runs_dir)
    assert cause.startswith(f"error: {conf / 'experiment' / 'mine.yaml'}, line 4, column 13 is not valid YAML")
    assert fix.startswith("  fix: correct the file there")


def test_a_config_folder_that_does_not_exist(runs_dir, tmp_path):
    cause, fix = one_error(run_cli(["--config-dir", str(tmp_path / "nope"), "experiment=mine"], runs_dir), runs_dir)
    assert str(tmp_path / "nope") in cause and "--config-dir" in fix


def test_config_path_replaces_the_projects_folder_and_says_how_to_add_one(runs_dir, tmp_path):
    conf = users_config_folder(tmp_path)
    cause, fix = one_error(run_cli(["--config-path", str(conf), "experiment=mine"], runs_dir), runs_dir)
    assert "'config'" in cause and "--config-dir" in fix and "replaces" in fix


@pytest.mark.parametrize(
    "overrides,cause_has,fix_has",
    [
        # Hydra's override grammar: what to quote, and how
        (["train.lr=1e-3,"], ["train.lr=1e-3,"], ["comma", "-m"]),
        (["name='abc"], ["name='abc", "quote"], ["quote"]),
        (["name=a=b"], ["name=a=b"], ["name='\"a=b\"'"]),
        (["train.lr=[1"], ["train.lr=[1"], ["bracket"]),
        # +/~ prefixes
        (["+train.lr=1"], ["train.lr", "already"], ["drop the +"]),
        (["~train.nope"], ["train.nope"], ["--cfg job"]),
        # an unknown option, however the command starts: the project's form, with the nearest option
        (["model=odenet_simplee"], ["model=odenet_simplee", "model/odenet_simplee"], ["did you mean odenet_simple?"]),
        (["-m", "model=odenet_simplee"], ["model=odenet_simplee"], ["did you mean odenet_simple?", "resnet_simple"]),
        (["--config-name", "nope"], ["'nope'"], ["--config-name"]),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) and value and "=" in value[0] else None,
)
def test_a_command_line_hydra_cannot_read_is_one_line(runs_dir, overrides, cause_has, fix_has):
    cause, fix = one_error(run_cli(overrides, runs_dir), runs_dir)
    for fragment in cause_has:
        assert fragment in cause, cause
    for fragment in fix_has:
        assert fragment in fix, fix
    assert "hydra.cc" not in cause + fix and "HYDRA_FULL_ERROR" not in cause + fix


@pytest.mark.parametrize(
    "content,cause_has,fix_has",
    [
        (b"MONGO_USER=odeflow\nMONGO_PASSWORD secret\n", ["line 2 of", "not KEY=VALUE"], ["KEY=VALUE", "#"]),
        (b"MONGO_ULR=mongodb://127.0.0.1:27017/\n", ["MONGO_ULR", "not a setting"], ["did you mean MONGO_URL?"]),
        (b"MONGO_URL=\xff\xfe\n", ["cannot be read", "UTF-8"], ["save it as UTF-8"]),
        (None, ["is a folder"], ["ODEFLOW_ENV_FILE"]),
    ],
    ids=["malformed line", "misspelt key", "not UTF-8", "a folder"],
)
@pytest.mark.parametrize("command", [["runs", "list"], ["train.max_epochs=0"]], ids=["runs list", "a run"])
def test_a_env_file_odeflow_cannot_use_is_one_line(runs_dir, tmp_path, content, cause_has, fix_has, command):
    env_file = tmp_path / "odeflow.env"
    env_file.mkdir() if content is None else env_file.write_bytes(content)
    cause, fix = one_error(run_cli(command, runs_dir, env={"ODEFLOW_ENV_FILE": str(env_file)}), runs_dir)
    assert str(env_file) in cause and "secret" not in cause + fix  # a line that is not KEY=VALUE is not shown
    for fragment in cause_has:
        assert fragment in cause, cause
    for fragment in fix_has:
        assert fragment in fix, fix


def test_a_env_file_with_settings_of_ones_own_is_read(runs_dir, tmp_path):
    env_file = tmp_path / "odeflow.env"
    env_file.write_text(
        "# a comment\n\nCUDA_LAUNCH_BLOCKING=1\nMONGO_INITDB_DATABASE=x\nexport MONGO_DB=odeflow\nMONGO_URL='mongodb://h:1/'\n"
    )
    proc = run_cli(["runs", "list"], runs_dir, env={"ODEFLOW_ENV_FILE": str(env_file)})
    assert proc.returncode == 0 and "error" not in proc.stderr, proc.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_leaves_the_env_file_to_the_programs_that_read_it(runs_dir, tmp_path):
    # make read .env as a makefile: a line that is not KEY=VALUE stopped every target ("missing separator"), and
    # a password with '$' or '#' reached the commands cut short, ahead of the .env the runner reads itself.
    (tmp_path / ".env").write_text("MONGO_PASSWORD=ab$cd#ef\nMONGO_USER odeflow\n")
    done = subprocess.run(
        ["make", "-C", str(tmp_path), "-f", str(ROOT / "Makefile"), "help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "make run" in done.stdout, done.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_up_refuses_a_password_docker_compose_would_put_into_a_url_unescaped(tmp_path):
    (tmp_path / ".env").write_text("MONGO_USER=odeflow\nMONGO_PASSWORD=p@ss/word\n")
    done = subprocess.run(
        ["make", "-s", "-C", str(tmp_path), "-f", str(ROOT / "Makefile"), "up"], capture_output=True, text=True
    )
    assert done.returncode == 2, done.stdout + done.stderr
    cause, fix = done.stdout.strip().splitlines()
    assert cause.startswith("error: MONGO_USER or MONGO_PASSWORD in .env") and "secrets.token_urlsafe" in fix


@pytest.mark.parametrize(
    "model,data,takes,fix_has",
    [
        ("odenet_state", "digits", "(features,) vectors", "data=spheres"),
        ("odenet_complex", "spheres", "(channels, height, width) images", "data=digits"),
        ("raa_odenet", "digits", "vector dataset", "data=raa_spheres"),
    ],
)
def test_a_model_and_a_dataset_that_do_not_fit_are_named_as_the_user_chose_them(runs_dir, model, data, takes, fix_has):
    cause, fix = one_error(run_cli([f"model={model}", f"data={data}"], runs_dir), runs_dir)
    assert cause.startswith(f"error: model={model} does not fit data={data}: the model takes ") and takes in cause
    assert "input_shape" not in cause + fix and "model.model" not in cause and fix_has in fix


@pytest.mark.parametrize(
    "command,cause_has,fix_has",
    [
        (["runs", "list", "--limit", "abc"], ["runs list", "--limit", "'abc'"], ["python -m runner runs list --help"]),
        (["report", "--out"], ["report", "--out", "expected one argument"], ["python -m runner report --help"]),
        (["runs", "list", "--bogus"], ["unrecognized arguments: --bogus"], ["python -m runner runs list --help"]),
        (["runs"], ["runs", "required"], ["python -m runner runs --help"]),
    ],
    ids=["bad value", "missing value", "unknown option", "missing action"],
)
def test_a_subcommand_argparse_refuses_is_one_line(runs_dir, command, cause_has, fix_has):
    cause, fix = one_error(run_cli(command, runs_dir), runs_dir)
    for fragment in cause_has:
        assert fragment in cause, cause
    for fragment in fix_has:
        assert fragment in fix, fix


def test_a_glob_that_matches_no_option_is_refused_not_an_empty_sweep(runs_dir):
    # `make table DATA=nope` runs experiment=glob(thesis_nope_*): Hydra launched 0 jobs and the command succeeded
    cause, fix = one_error(run_cli(["-m", "experiment=glob(thesis_nope_*)"], runs_dir), runs_dir)
    assert "experiment=glob(thesis_nope_*)" in cause and "matches no option" in cause
    assert "thesis_fmnist_odenet_simple" in fix


def test_a_dashboard_option_argparse_refuses_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dashboard", "--no-omniborad"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    cause, fix = one_error(proc, tmp_path)
    assert "--no-omniborad" in cause and "python -m dashboard --help" in fix


@pytest.mark.parametrize("form", ["file://{}", "{}"], ids=["file://", "plain path"])
def test_a_searchpath_folder_that_does_not_exist(runs_dir, tmp_path, form):
    missing = tmp_path / "nope"
    proc = run_cli([f"hydra.searchpath=[{form.format(missing)}]", "train.max_epochs=0"], runs_dir)  # fails fast
    cause, fix = one_error(proc, runs_dir)
    assert cause == f"error: hydra.searchpath names {missing}, which is not a folder" and "file:///" in fix
