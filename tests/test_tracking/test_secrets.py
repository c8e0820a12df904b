"""Database passwords: masked wherever they could be shown or stored, refused when unescaped or the placeholder."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, quote_plus

import pymongo.uri_parser
import pytest

from odeflow.errors import UserError
from runner.tracking.masking import check_url_escaped, mask_secrets, mask_url, url_password
from tests.conftest import run_cli
from tests.test_tracking.conftest import TINY

# Passwords a user may have: plain, with every character a URL reserves, spaces, quotes and percent signs.
PASSWORDS = ["s3cret-pw", "p@ss", "pa/ss", "p@s/s:x?y#z", "a b [c]", "100%sure", "@lead", "tail@", "q'u\"ote", "+plus+"]
HOSTS = "127.0.0.1:9,db2.example.org:27018/odeflow?authSource=admin"
FAST = [*TINY, "train.max_epochs=1", "train.progress=false", "tracking=mongo", "tracking.timeout_ms=300"]


def leaked(password: str, text: str) -> bool:
    """Whether `text` shows the password or any 4-character piece of it (escaped or not)."""
    pieces = {form[i : i + 4] for form in (password, quote_plus(password)) for i in range(max(len(form) - 3, 1))}
    return any(piece in text for piece in pieces)


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize("escaped", [True, False], ids=["escaped", "unescaped"])
def test_masking_hides_any_password_in_text_and_in_config_values(password, escaped):
    url = f"mongodb://alice:{quote_plus(password) if escaped else password}@{HOSTS}"
    line = f"logging to {url} as run 3 (ask admin@example.org); url: '{url}'"
    masked = mask_url(line)
    assert not leaked(password, masked), masked
    assert masked.count(f"mongodb://alice:***@{HOSTS}") == 2 and "admin@example.org" in masked
    value = mask_secrets({"tracking": {"url": url}, "overrides": [f"tracking.url={url}"]})
    assert value == {
        "tracking": {"url": f"mongodb://alice:***@{HOSTS}"},
        "overrides": [f"tracking.url=mongodb://alice:***@{HOSTS}"],
    }


def escaped(password: str) -> str:
    """What the fix's command prints (urllib.parse.quote with safe=''): every reserved character, '+' and space
    included, as %XX."""
    return quote(password, safe="")


@pytest.mark.parametrize("password", PASSWORDS)
def test_an_escaped_password_is_accepted_and_reaches_pymongo_whole(password):
    url = f"mongodb://alice:{escaped(password)}@{HOSTS}"
    check_url_escaped(url, "MONGO_URL")
    assert url_password(url) == password == pymongo.uri_parser.parse_uri(url)["password"]


# '+' too: pymongo reads it as a space (quote_plus's escape of one), so "pa+ss" typed as is would be "pa ss".
@pytest.mark.parametrize("password", ["p@ss", "pa/ss", "pa?ss", "pa:ss", "100%sure", "pa+ss", "a+b c"])
def test_an_unescaped_password_is_refused_with_the_fix_and_not_shown(password):
    with pytest.raises(UserError) as refused:
        check_url_escaped(f"mongodb://alice:{password}@{HOSTS}", "MONGO_URL")
    assert "must be escaped" in str(refused.value) and "quote(" in refused.value.fix
    assert "\n" not in refused.value.fix and not leaked(password, str(refused.value).replace("quote(", ""))


def all_text(folder: Path) -> str:
    return "\n".join(p.read_bytes().decode(errors="replace") for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("mode", ["run", "multirun"])
def test_a_password_on_the_command_line_never_reaches_disk(runs_dir, mode):
    url = "mongodb://alice:s3cret-pw@127.0.0.1:9/?authSource=admin"  # nothing listens on port 9
    proc = run_cli(["-m"] * (mode == "multirun") + [*FAST, f"tracking.url='{url}'"], runs_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "s3cret" not in proc.stdout + proc.stderr + all_text(runs_dir)
    hydra_dirs = list(runs_dir.rglob(".hydra"))
    assert len(hydra_dirs) == 1
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):  # masked, still there and still YAML
        assert "mongodb://alice:***@127.0.0.1:9/?authSource=admin" in (hydra_dirs[0] / name).read_text(), name
    if mode == "multirun":
        assert "alice:***@" in (hydra_dirs[0].parent.parent / "multirun.yaml").read_text()


def test_an_unescaped_password_on_the_command_line_is_refused_before_use(runs_dir):
    proc = run_cli([*FAST, "tracking.url='mongodb://alice:pa/ss@w0rd@127.0.0.1:9/'"], runs_dir)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "must be escaped" in proc.stderr and "quote(" in proc.stderr
    assert not leaked("pa/ss@w0rd", proc.stdout + proc.stderr.replace("quote(", "") + all_text(runs_dir))
    assert not list((runs_dir / "journal").glob("*/run.json"))  # no run started with it


def test_the_placeholder_password_of_env_example_is_refused_with_the_command_for_a_real_one(runs_dir):
    proc = run_cli(FAST, runs_dir, env={"MONGO_URL": "mongodb://odeflow:change-me@127.0.0.1:9/?authSource=admin"})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "example password 'change-me'" in proc.stderr
    assert 'python -c "import secrets; print(secrets.token_urlsafe(24))"' in proc.stderr
