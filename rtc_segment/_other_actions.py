"""Any other RTC OpenAPI action, through the same paced, signed, retried path.

``SegmentClient.call(action, version, ...)`` is the escape hatch for the dozens of RTC
actions this library has no typed method for (recording, streaming, room management). The
request goes through the one HTTP path (:class:`~rtc_segment._caller.Calls`), so it waits
on a limiter of its own action at the ceiling the caller names, is signed, timed out,
retried and classified like every other; the answer's ``Result`` comes back as JSON.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from ._caller import Action, Calls
from ._models import ActionResult, ResponseMetadata, TaskKey
from ._validation import check_number

__all__ = ["call_action"]

# Action names are CamelCase words; versions are dates (https://www.volcengine.com/docs/6348/69828).
_ACTION_PATTERN = re.compile(r"[A-Z][A-Za-z0-9]{0,127}")
_VERSION_PATTERN = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_METHODS = ("GET", "POST")
_RESERVED = frozenset({"Action", "Version"})


def _parse_result(
    metadata: ResponseMetadata, result: Any, status: int, action: str, key: TaskKey | None
) -> ActionResult:
    return ActionResult(result=result, request_id=metadata.request_id, http_status=status)


def _check_query(query: object) -> dict[str, str]:
    if query is None:
        return {}
    if not isinstance(query, Mapping):
        raise TypeError(f"query must be a mapping of str to str, not {type(query).__name__}")
    checked: dict[str, str] = {}
    for name, value in query.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"query must map str to str; got {name!r}: {type(value).__name__}")
        if name in _RESERVED:
            raise ValueError(f"query must not set {name!r}: pass it as the {name.lower()} argument")
        checked[name] = value
    return checked


def _encode_body(body: object) -> bytes:
    try:
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise TypeError(f"json must be JSON-serialisable: {exc}") from None


async def call_action(
    calls: Calls,
    action: object,
    version: object,
    *,
    qps: object,
    query: object = None,
    json_body: object = None,
    method: object = None,
    idempotent: object = False,
    deadline: float | None = None,
) -> ActionResult:
    """Send ``action`` at ``version``; see ``SegmentClient.call``. Checks every argument
    before anything is sent."""
    if not isinstance(action, str) or _ACTION_PATTERN.fullmatch(action) is None:
        raise ValueError(
            f"action must be an OpenAPI action name such as 'GetRoomInfo', got {action!r}"
        )
    if not isinstance(version, str) or _VERSION_PATTERN.fullmatch(version) is None:
        raise ValueError(f"version must be an API version such as '2023-11-01', got {version!r}")
    ceiling = check_number("qps", qps, positive=True)
    if math.isinf(ceiling):  # pragma: no cover - check_number refuses it already
        raise ValueError("qps must be finite")
    if not isinstance(idempotent, bool):
        raise TypeError(f"idempotent must be a bool, not {type(idempotent).__name__}")
    if method is None:
        method = "GET" if json_body is None else "POST"
    if method not in _METHODS:
        raise ValueError(f"method must be 'GET' or 'POST', got {method!r}")
    if method == "GET" and json_body is not None:
        raise ValueError("a GET request carries no json body; pass query=... or method='POST'")
    params = {"Action": action, "Version": version, **_check_query(query)}
    body = b"" if json_body is None else _encode_body(json_body)
    return await calls.call(
        Action(action, version, method, ceiling),
        query=params,
        key=None,
        body=body,
        parse=_parse_result,
        retry_if_maybe_sent=idempotent,
        deadline=deadline,
    )
