"""Keep database passwords out of logged configs, captured output, Hydra's files and the console."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_plus

from odeflow.errors import UserError

# scheme://user:password@hosts. The password runs to the last '@' of the URL, as pymongo reads it
# (rpartition), so a password with an unescaped '@', '/', ':', '?', '#' or spaces is masked whole: an '@'
# belongs to the password while another '@' follows before the next whitespace or quote.
_HEAD = r"(?P<head>[a-z][a-z0-9+.-]*://[^:/?#@\s'\"]+:)"
_URL_PASSWORD = re.compile(_HEAD + r"(?P<password>(?:[^@\r\n]|@(?=[^\s'\"]*@))*)(?P<tail>@)", re.IGNORECASE)
# In one value (a config entry, an override) the password runs to the value's last '@', spaces and all.
_VALUE_PASSWORD = re.compile(_HEAD + r"(?P<password>(?:[^@\r\n]|@(?=[^\r\n]*@))*)(?P<tail>@)", re.IGNORECASE)
# What pymongo reads as the end of the password ('@', ':') or of the hosts ('/', '?'), refuses ('%' not
# starting an escape) or reads as another character ('+', unquote_plus's space): unescaped, part of the password
# would be taken for a host, port or option, or the password used would not be the one typed.
_UNESCAPED = re.compile(r"[@/?:+]|%(?![0-9A-Fa-f]{2})")
# quote, not quote_plus: its escape of a space ('+') would be read back as a plus sign typed as is.
ESCAPE_FIX = (
    'escape the password in the URL (a plus sign is %2B, a space %20): python -c "import urllib.parse, getpass; '
    "print(urllib.parse.quote(getpass.getpass('password: '), safe=''))\""
)


def mask_url(text: str) -> str:
    """Replace the password of every user:password@ URL in `text` with ***."""
    return _URL_PASSWORD.sub(r"\g<head>***\g<tail>", text)


def mask_secrets(value: Any) -> Any:
    """A copy of a plain config (dicts, lists, scalars) with URL passwords masked."""
    if isinstance(value, dict):
        return {k: mask_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v) for v in value]
    if isinstance(value, str):
        return _VALUE_PASSWORD.sub(r"\g<head>***\g<tail>", value)
    return value


def url_password(url: str) -> str | None:
    """The password of a user:password@ URL, unescaped (None when the URL has none)."""
    found = _VALUE_PASSWORD.search(url)
    return unquote_plus(found["password"]) if found else None


def check_url_escaped(url: str, name: str) -> None:
    """Refuse a URL whose password has characters that must be escaped, before anything connects with it:
    pymongo would read part of the password as a host, port or option and name it in its error."""
    found = _VALUE_PASSWORD.search(url)
    if found and _UNESCAPED.search(found["password"]):
        raise UserError(
            f"the password in {name} ({mask_secrets(url)}) contains a character that must be escaped in a URL "
            "('@', '/', ':', '?' or '%'), or one pymongo reads as another ('+' reads as a space)",
            ESCAPE_FIX,
        )
