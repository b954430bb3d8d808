"""The JSON lines the command writes: one object per input key, per watch event, per bad line.

Every record starts with the input ``line`` it answers and the key, so a consumer (``jq``, a
spreadsheet) can join output to input even though answers arrive out of order. Exactly one of
``task`` and ``error`` is present. ``status`` repeats the task's status by *name* (the task
itself carries the service's raw number) so that ``jq 'select(.status == "ENDED")'`` works.
"""

from __future__ import annotations

import json
from typing import Any

from .._converter import task_to_dict
from .._errors import ApiError, RtcSegmentError
from .._models import SegmentTask, TaskKey

__all__ = ["INPUT_ERROR", "action_record", "dumps", "error_dict", "key_record", "task_record"]

#: The error ``type`` of an input line that could not be read.
INPUT_ERROR = "InputError"


def dumps(record: dict[str, Any]) -> str:
    """One compact JSON line (no trailing newline); non-ASCII kept readable."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def key_record(line: int | None, key: TaskKey | None) -> dict[str, Any]:
    """The leading fields of a record: input line number and the key's three ids."""
    record: dict[str, Any] = {}
    if line is not None:
        record["line"] = line
    if key is not None:
        record["app_id"], record["room_id"], record["task_id"] = key
    return record


def task_record(line: int | None, key: TaskKey, task: SegmentTask) -> dict[str, Any]:
    """The record of a fetched task."""
    record = key_record(line, key)
    record["status"] = task.status.name
    record["task"] = task_to_dict(task)
    return record


def action_record(action: str, key: TaskKey, *, ok: bool) -> dict[str, Any]:
    """The record of ``start``/``update``/``stop``: the action, the key's ids and ``ok``."""
    record: dict[str, Any] = {"action": action}
    record.update(key_record(None, key))
    record["ok"] = ok
    return record


def error_dict(error: BaseException) -> dict[str, Any]:
    """``type``, ``message`` and, when known, ``code``, ``http_status``, ``request_id``,
    ``attempts`` of an error. The message is the library's own text: it never holds a secret."""
    result: dict[str, Any] = {"type": type(error).__name__}
    if isinstance(error, ApiError) and error.code:
        result["code"] = error.code
    if isinstance(error, RtcSegmentError):
        result["message"] = error.message
        if error.http_status is not None:
            result["http_status"] = error.http_status
        if error.request_id:
            result["request_id"] = error.request_id
        result["attempts"] = error.attempts
    else:
        result["message"] = str(error)
    return result
