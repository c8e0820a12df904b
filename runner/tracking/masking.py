"""Keep database passwords out of logged configs, captured output and the console."""

from __future__ import annotations

import re
from typing import Any

_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]+:)(?P<password>[^@\s]+)(?P<tail>@)", re.IGNORECASE)


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
        return mask_url(value)
    return value
