"""Reading task keys from a file: CSV with a header, or JSON lines.

The format is chosen from the first non-blank line: a JSON object means JSON lines, anything
else must be the CSV header naming the ``app_id``, ``room_id`` and ``task_id`` columns (in any
order, other columns ignored; ``AppId``-style names are accepted too). Reading is lazy, so a
file of a million keys is never held in memory. A line that cannot be read becomes a
:class:`BadLine` and the lines after it are still read: one bad line must not hide the rest.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from typing import TextIO

import attrs

from .._models import TaskKey

__all__ = ["BadLine", "InputFormatError", "KeyLine", "read_keys"]

_FIELDS = ("app_id", "room_id", "task_id")


class InputFormatError(ValueError):
    """The input as a whole is unusable (no header, unknown format); nothing was read."""


@attrs.frozen
class KeyLine:
    """A task key read from line ``line`` (1-based) of the input."""

    line: int
    key: TaskKey


@attrs.frozen
class BadLine:
    """Line ``line`` (1-based) could not be read; ``problem`` says why."""

    line: int
    problem: str


def _canonical(name: str) -> str:
    # "app_id", "AppId", "appid", " App-Id " all name the same column.
    return "".join(ch for ch in name.lower() if ch.isalnum())


_CANONICAL = {_canonical(field): field for field in _FIELDS}


def read_keys(stream: TextIO) -> Iterator[KeyLine | BadLine]:
    """Yield one :class:`KeyLine` or :class:`BadLine` per non-blank data line of ``stream``.

    Raises:
        InputFormatError: the first non-blank line is neither a JSON object nor a CSV header
            with the three key columns (raised when the iterator is first advanced).
    """
    lines = enumerate(stream, start=1)
    for number, text in lines:
        if not text.strip():
            continue
        if text.lstrip().startswith("{"):
            yield _json_line(number, text)
            yield from _json_lines(lines)
        else:
            yield from _csv_lines(number, text, lines)
        return


def _json_lines(lines: Iterator[tuple[int, str]]) -> Iterator[KeyLine | BadLine]:
    for number, text in lines:
        if text.strip():
            yield _json_line(number, text)


def _json_line(number: int, text: str) -> KeyLine | BadLine:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return BadLine(number, f"not valid JSON ({exc.msg} at column {exc.colno})")
    except RecursionError:
        return BadLine(number, "not valid JSON (nested too deeply)")
    if not isinstance(value, dict):
        return BadLine(number, f"expected a JSON object, got {type(value).__name__}")
    found: dict[str, object] = {}
    for name, item in value.items():
        field = _CANONICAL.get(_canonical(name)) if isinstance(name, str) else None
        if field is not None:
            found[field] = item
    missing = [field for field in _FIELDS if field not in found]
    if missing:
        return BadLine(number, f"missing {', '.join(missing)}")
    for field in _FIELDS:
        if not isinstance(found[field], str):
            kind = type(found[field]).__name__
            return BadLine(number, f"{field} must be a string, got {kind}")
    return _key_line(number, [str(found[field]) for field in _FIELDS])


def _csv_lines(
    header_number: int, header_text: str, lines: Iterator[tuple[int, str]]
) -> Iterator[KeyLine | BadLine]:
    header = next(csv.reader([header_text]))
    columns: dict[str, int] = {}
    for index, name in enumerate(header):
        field = _CANONICAL.get(_canonical(name))
        if field is not None and field not in columns:
            columns[field] = index
    missing = [field for field in _FIELDS if field not in columns]
    if missing:
        raise InputFormatError(
            f"line {header_number}: expected a CSV header with the columns "
            f"app_id,room_id,task_id (or JSON lines); missing {', '.join(missing)}"
        )
    positions = [columns[field] for field in _FIELDS]
    width = max(positions) + 1
    for number, text in lines:
        if not text.strip():
            continue
        # One line at a time, so line numbers stay exact: keys never contain newlines.
        try:
            row = next(csv.reader([text], strict=True))
        except csv.Error as exc:
            yield BadLine(number, f"not valid CSV ({exc})")
            continue
        if len(row) < width:
            yield BadLine(number, f"expected at least {width} fields, got {len(row)}")
            continue
        yield _key_line(number, [row[position].strip() for position in positions])


def _key_line(number: int, values: list[str]) -> KeyLine | BadLine:
    empty = [field for field, value in zip(_FIELDS, values, strict=True) if not value]
    if empty:
        return BadLine(number, f"empty {', '.join(empty)}")
    return KeyLine(number, TaskKey(*values))
