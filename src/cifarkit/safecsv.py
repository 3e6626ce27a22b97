"""CSV cells a spreadsheet will not run: every CSV cifarkit writes goes through `csv_row`.

A cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return is a formula to Excel,
LibreOffice and Google Sheets (CSV injection): a class named `=HYPERLINK("http://x","click")`, or
a file named `=1+2.png`, would run when someone opens `predictions.csv` or `manifest.csv`. Such a
cell is written with a leading `'`, which spreadsheets show as text and never evaluate (the OWASP
recommendation). Plain numbers (`-0.5`, `+3`, `-inf`) are left alone: a number is no formula.

The mapping is injective, so our own files read back exactly: a cell that already starts with `'`
gets a second one, and `csv_uncell` strips exactly one. `data.folder.read_manifest` strips it for
manifests in the export's own layout (`data export`); a hand-written manifest is read as it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from cifarkit.saferead import printable

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def looks_numeric(text: str) -> bool:
    """Whether `text` reads as a number (float() takes it: "1e-3", "-2", "inf")."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def csv_cell(value: Any) -> Any:
    """`value` as it is safe to write into a CSV cell: a string a spreadsheet would run as a formula
    (or one starting with `'`) gets a leading `'`, the bytes of a non-UTF-8 file name are written as
    `\\xff` escapes (`saferead.printable`; a UTF-8 file cannot hold them); anything else is returned
    unchanged."""
    if not isinstance(value, str) or not value:
        return value
    value = printable(value)
    if value[0] == "'" or (value[0] in FORMULA_STARTS and not looks_numeric(value)):
        return "'" + value
    return value


def csv_row(values: Iterable[Any]) -> list[Any]:
    """`csv_cell` of every value of a row."""
    return [csv_cell(v) for v in values]


def csv_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    """`csv_cell` of every value of a DictWriter row."""
    return {k: csv_cell(v) for k, v in row.items()}


def csv_uncell(text: str) -> str:
    """The original of a cell written by `csv_cell` (one leading `'` removed)."""
    return text[1:] if text.startswith("'") else text
