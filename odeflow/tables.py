"""The one way tables are printed and written: pandas, as plain text for consoles and as Markdown for reports."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

Cell = Callable[[Any], str]


def _cells(rows: Sequence[dict[str, Any]] | pd.DataFrame, formats: dict[str, Cell | str] | None) -> pd.DataFrame:
    """Every value as its display string: `formats` maps a column to a format string or a function; None is '-'."""
    frame = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    for column in frame.columns:
        spec = (formats or {}).get(column, "{}")
        show = spec.format if isinstance(spec, str) else spec
        frame[column] = [
            ("-" if value is None or (isinstance(value, float) and pd.isna(value)) else show(value))
            for value in frame[column]
        ]
    return frame.astype(str)


def text_table(
    rows: Sequence[dict[str, Any]] | pd.DataFrame,
    formats: dict[str, Cell | str] | None = None,
    headers: dict[str, str] | None = None,
) -> str:
    """A fixed-width console table (right-aligned), one row per entry; `headers` renames columns."""
    frame = _cells(rows, formats).rename(columns=headers or {})
    # pandas separates columns by one space; a leading space on every column after the first makes it two
    frame = frame.rename(columns={c: " " + c for c in frame.columns[1:]})
    for column in frame.columns[1:]:
        frame[column] = " " + frame[column]
    return frame.to_string(index=False) if len(frame) else "  ".join(c.strip() for c in frame.columns)


def markdown_table(
    rows: Sequence[dict[str, Any]] | pd.DataFrame,
    formats: dict[str, Cell | str] | None = None,
    headers: dict[str, str] | None = None,
) -> str:
    """A GitHub Markdown table."""
    return _cells(rows, formats).rename(columns=headers or {}).to_markdown(index=False, disable_numparse=True)
