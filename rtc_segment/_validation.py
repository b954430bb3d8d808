"""Argument checks shared by every entry point; each error names the argument.

Everything a caller passes is checked here before anything is sent, so that a mistake
surfaces as a ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind, wrong
value) at the call site, never as a service error after a round trip.
"""

from __future__ import annotations

import math
import re

from ._models import TaskKey

__all__ = [
    "check_bool",
    "check_int",
    "check_number",
    "task_key",
    "validate_id",
    "validate_key",
]

# The service's id rule for BusinessId, TaskId, RoomId and UserId: 1-128 characters from
# [A-Za-z0-9_@.-] (https://www.volcengine.com/docs/6348/69828).
_ID_PATTERN = re.compile(r"[A-Za-z0-9_@.\-]{1,128}")
_SHOWN_CHARACTERS = 40


def validate_id(name: str, value: object) -> str:
    """Return ``value`` if it is a valid service id; else raise ``TypeError``/``ValueError``."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must not be empty")
    if _ID_PATTERN.fullmatch(value) is None:
        shown = value if len(value) <= _SHOWN_CHARACTERS else value[:_SHOWN_CHARACTERS] + "..."
        raise ValueError(
            f"{name}={shown!r} is not a valid id: use 1-128 characters from A-Z a-z 0-9 _ @ . -"
        )
    return value


def task_key(app_id: object, room_id: object, task_id: object) -> TaskKey:
    """The validated :class:`TaskKey` of three id arguments."""
    return TaskKey(
        validate_id("app_id", app_id),
        validate_id("room_id", room_id),
        validate_id("task_id", task_id),
    )


def validate_key(key: object) -> TaskKey:
    """Turn a ``TaskKey`` or plain ``(app_id, room_id, task_id)`` tuple into a valid ``TaskKey``."""
    if not isinstance(key, tuple) or len(key) != 3:
        raise TypeError(
            f"a task key must be a TaskKey or a (app_id, room_id, task_id) tuple, "
            f"not {type(key).__name__}"
        )
    return task_key(*key)


def _is_number(value: object) -> bool:
    # bool is an int subclass, but True seconds or True retries is always a mistake.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_number(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    positive: bool = False,
    maximum: float | None = None,
    type_error: type[Exception] = TypeError,
) -> float:
    """Return ``value`` as a finite float, or raise naming ``name``.

    ``positive`` requires ``value > 0``; ``minimum``/``maximum`` are inclusive bounds.
    NaN and infinities are always refused: they would end up in timers. A value that is not
    a number raises ``type_error`` (``ValueError`` where 0.1 did, so that callers' handlers
    keep working).
    """
    if not _is_number(value):
        raise type_error(f"{name} must be a number, not {type(value).__name__}")
    number = float(value)  # type: ignore[arg-type]  # _is_number checked it
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and not number > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be >= {minimum:g}, got {value!r}")
    if maximum is not None and number > maximum:
        raise ValueError(f"{name} must be <= {maximum:g}, got {value!r}")
    return number


def check_int(
    name: str,
    value: object,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    type_error: type[Exception] = TypeError,
) -> int:
    """Return ``value`` if it is an int (not a bool) within the inclusive bounds given;
    else raise ``type_error`` (not an int) or ``ValueError`` (out of bounds)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise type_error(f"{name} must be an int, not {type(value).__name__}")
    if minimum is not None and maximum is not None and not minimum <= value <= maximum:
        raise ValueError(f"{name} must be between {minimum} and {maximum}, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` if it is a bool (``0``/``1`` are refused: they are usually a mistake)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
    return value
