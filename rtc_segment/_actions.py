"""The segment family's actions: names, ceilings, request bodies, and per-action rules.

The bodies are pure: validation (``TypeError``/``ValueError`` naming the argument, before
anything is sent) and the JSON of each POST action, built with the package's converter so
that requests and answers share one set of models. :class:`SegmentActions` sends them
through the one HTTP path (any :class:`~rtc_segment._caller.Calls`) and holds the rules
that belong to an action rather than to HTTP: StartSegment's read-back after an ambiguous
failure, StopSegment's "already stopped counts as success", GetSegmentTask's parsing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import attrs

from ._caller import Action, Calls, Parse
from ._converter import ShapeError, structure_task, unstructure
from ._errors import ResponseFormatError, RtcSegmentError, TaskNotFoundError
from ._models import (
    Control,
    ResponseMetadata,
    SegmentTask,
    StartOutcome,
    StorageConfig,
    StorageType,
    Stream,
    TargetStreams,
    TaskKey,
)
from ._validation import check_bool, check_int, validate_id

__all__ = [
    "API_VERSIONS",
    "DEFAULT_API_VERSION",
    "GET_SEGMENT_TASK",
    "START_SEGMENT",
    "STOP_SEGMENT",
    "UPDATE_SEGMENT",
    "SegmentActions",
    "check_api_version",
    "parse_ok",
    "parse_segment_task",
    "start_segment_body",
    "stop_segment_body",
    "update_segment_body",
]

logger = logging.getLogger("rtc_segment")
_T = TypeVar("_T")

# The service's limits (StartSegment: https://www.volcengine.com/docs/6348/1188212).
MAX_TARGET_STREAMS = 17
DURATION_RANGE = (1, 600)
MAX_IDLE_TIME_RANGE = (1, 86400)

#: The API versions the client speaks. The four actions have the same request and answer
#: shapes and ceilings in both; StartSegment for a task that is already running is an error
#: in 2022-06-01 and a success with a notice in 2023-11-01.
API_VERSIONS = ("2022-06-01", "2023-11-01")
DEFAULT_API_VERSION = "2022-06-01"

#: The actions, at version 2022-06-01, with their documented per-account ceilings (the
#: ceilings are per action, whichever version is called).
GET_SEGMENT_TASK = Action("GetSegmentTask", "2022-06-01", "GET", 60.0)
START_SEGMENT = Action("StartSegment", "2022-06-01", "POST", 60.0)
UPDATE_SEGMENT = Action("UpdateSegment", "2022-06-01", "POST", 150.0)
STOP_SEGMENT = Action("StopSegment", "2022-06-01", "POST", 150.0)
ACTIONS = (GET_SEGMENT_TASK, START_SEGMENT, UPDATE_SEGMENT, STOP_SEGMENT)


def _encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def _int_in(name: str, value: object, bounds: tuple[int, int]) -> int:
    return check_int(name, value, minimum=bounds[0], maximum=bounds[1])


def _optional_id(name: str, value: object) -> str | None:
    return None if value is None else validate_id(name, value)


def _key_fields(key: TaskKey, business_id: object) -> dict[str, Any]:
    fields: dict[str, Any] = {"AppId": key.app_id, "RoomId": key.room_id, "TaskId": key.task_id}
    business = _optional_id("business_id", business_id)
    if business is not None:
        fields["BusinessId"] = business
    return fields


def _target_streams(value: object) -> TargetStreams | None:
    if value is None:
        return None
    if isinstance(value, TargetStreams):
        streams = value.stream_list
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        streams = tuple(value)
    else:
        raise TypeError(
            "target_streams must be TargetStreams or a sequence of Stream, "
            f"not {type(value).__name__}"
        )
    for stream in streams:
        if not isinstance(stream, Stream):
            raise TypeError(f"target_streams items must be Stream, not {type(stream).__name__}")
    if len(streams) > MAX_TARGET_STREAMS:
        raise ValueError(
            f"target_streams holds {len(streams)} streams; the service allows at most "
            f"{MAX_TARGET_STREAMS} (an empty list means every stream in the room)"
        )
    indexes = [stream.index for stream in streams]
    duplicates = sorted({i for i in indexes if indexes.count(i) > 1})
    if duplicates:
        raise ValueError(f"target_streams has duplicate Index values: {duplicates}")
    for stream in streams:
        validate_id("target_streams user_id", stream.user_id)
    return TargetStreams(stream_list=streams)


# For each storage type: the config object it needs, and the fields that object must set
# (the docs: "当 Type = 0 时，需正确设置 TosConfig 的值，否则请求会报错", and alike).
_CONFIG_FOR_TYPE = {
    StorageType.TOS: ("tos_config", ("account_id", "bucket")),
    StorageType.VOD: ("vod_config", ("account_id", "space")),
    StorageType.CUSTOM: ("custom_config", ("bucket", "access_key", "secret_key")),
    StorageType.VEIMAGEX: ("veimagex_config", ("account_id", "service_id")),
}


def _storage_config(value: object) -> StorageConfig:
    if not isinstance(value, StorageConfig):
        raise TypeError(f"storage_config must be StorageConfig, not {type(value).__name__}")
    spec = _CONFIG_FOR_TYPE.get(value.type)
    if spec is None:
        raise ValueError(f"storage_config.type {value.type!r} is not a storage type we know")
    needed, fields = spec
    config = getattr(value, needed)
    if config is None:
        raise ValueError(
            f"storage_config.type is {value.type.name}, so storage_config.{needed} must be set"
        )
    for field in fields:
        if not getattr(config, field):
            raise ValueError(f"storage_config.{needed}.{field} must be set")
    return value


def start_segment_body(
    key: TaskKey,
    *,
    storage_config: object,
    target_streams: object,
    duration: object,
    max_idle_time: object,
    handle: object,
    identifier: object,
    control: object,
    business_id: object,
) -> bytes:
    """Validate StartSegment's arguments and return its JSON body."""
    document = _key_fields(key, business_id)
    document["MaxIdleTime"] = _int_in("max_idle_time", max_idle_time, MAX_IDLE_TIME_RANGE)
    document["Duration"] = _int_in("duration", duration, DURATION_RANGE)
    document["Handle"] = check_bool("handle", handle)
    streams = _target_streams(target_streams)
    if streams is not None:
        document["TargetStreams"] = unstructure(streams)
    prefix = _optional_id("identifier", identifier)
    if prefix is not None:
        document["Identifier"] = prefix
    if control is not None:
        if not isinstance(control, Control):
            raise TypeError(f"control must be Control, not {type(control).__name__}")
        # Milliseconds, unlike the other durations.
        check_int("control.redundant_duration", control.redundant_duration, minimum=0)
        document["Control"] = unstructure(control)
    document["StorageConfig"] = unstructure(_storage_config(storage_config))
    return _encode(document)


def update_segment_body(
    key: TaskKey,
    *,
    identifier: object,
    handle: object,
    duration: object,
    business_id: object,
) -> bytes:
    """Validate UpdateSegment's arguments and return its JSON body."""
    document = _key_fields(key, business_id)
    prefix = _optional_id("identifier", identifier)
    if prefix is not None:
        document["Identifier"] = prefix
    if handle is not None:
        document["Handle"] = check_bool("handle", handle)
    if duration is not None:
        document["Duration"] = _int_in("duration", duration, DURATION_RANGE)
    if len(document) == len(_key_fields(key, business_id)):
        raise ValueError("update_segment needs at least one of identifier, handle, duration")
    return _encode(document)


def stop_segment_body(key: TaskKey, *, business_id: object) -> bytes:
    """Validate StopSegment's arguments and return its JSON body."""
    return _encode(_key_fields(key, business_id))


def check_api_version(api_version: object) -> str:
    """``api_version`` if the client speaks it; else ``TypeError``/``ValueError`` naming it."""
    if not isinstance(api_version, str):
        raise TypeError(f"api_version must be a str, not {type(api_version).__name__}")
    if api_version not in API_VERSIONS:
        raise ValueError(
            f"api_version must be one of {', '.join(map(repr, API_VERSIONS))}, got {api_version!r}"
        )
    return api_version


def parse_start(
    metadata: ResponseMetadata, result: Any, status: int, action: str, key: TaskKey | None
) -> StartOutcome:
    """StartSegment answers ``Result: "ok"`` when it started the task. In 2023-11-01 a task
    already running is answered with a notice in ``Result`` instead of an error."""
    if isinstance(result, str) and result.strip().lower() not in ("", "ok", "success"):
        logger.debug("StartSegment %s: %s", "/".join(key or ()), result[:200])
        return StartOutcome.ALREADY_RUNNING
    return StartOutcome.STARTED


def parse_ok(
    metadata: ResponseMetadata, result: Any, status: int, action: str, key: TaskKey | None
) -> None:
    """Start/Update/Stop answer ``Result: "ok"``; anything without an Error is success."""
    return None


def parse_segment_task(
    metadata: ResponseMetadata, result: Any, status: int, action: str, key: TaskKey | None
) -> SegmentTask:
    """The :class:`SegmentTask` of a GetSegmentTask answer."""
    raw_task = result.get("SegmentTask") if isinstance(result, dict) else None
    if raw_task is None:
        raise TaskNotFoundError(
            "the service answered without a SegmentTask",
            action=action,
            key=key,
            request_id=metadata.request_id or None,
            http_status=status,
        )
    try:
        return structure_task(raw_task)
    except ShapeError as exc:
        raise ResponseFormatError(
            f"malformed SegmentTask: {exc}",
            action=action,
            key=key,
            request_id=metadata.request_id or None,
            http_status=status,
        ) from None


def _time_left(seconds: float | None) -> Callable[[], float | None]:
    """A function telling how much of ``seconds`` from now is left (``None``: unbounded)."""
    if seconds is None:
        return lambda: None
    clock = asyncio.get_running_loop().time
    ends = clock() + seconds
    return lambda: max(0.0, ends - clock())


class SegmentActions:
    """The four actions of the segment family, sent through one :class:`Calls`.

    Also what fan-out and watching poll with (:meth:`fetch_task`, :attr:`qps`,
    :attr:`max_connections`).
    """

    def __init__(
        self,
        calls: Calls,
        *,
        max_retries: int,
        deadline: float | None,
        api_version: str = DEFAULT_API_VERSION,
    ) -> None:
        self._calls = calls
        self.api_version = api_version
        self._get, self._start, self._update, self._stop = (
            attrs.evolve(action, version=api_version) for action in ACTIONS
        )
        self._max_retries = max_retries
        self._deadline = deadline
        """The default budget of each call (``None``: unbounded)."""

    @property
    def qps(self) -> float:
        """The GetSegmentTask ceiling the polls are paced at."""
        return float(self._calls.limiter_for(self._get).qps)

    @property
    def max_connections(self) -> int:
        """Upper bound of requests in flight."""
        return self._calls.max_connections

    async def fetch_task(
        self, key: TaskKey, *, bulk: bool = False, deadline: float | None = None
    ) -> SegmentTask:
        """GetSegmentTask for a validated key (``bulk``: part of a fan-out or watch)."""
        query = {
            "Action": self._get.name,
            "Version": self._get.version,
            "AppId": key.app_id,
            "RoomId": key.room_id,
            "TaskId": key.task_id,
        }
        return await self._calls.call(
            self._get,
            query=query,
            key=key,
            parse=parse_segment_task,
            bulk=bulk,
            deadline=self._deadline if deadline is None else deadline,
        )

    async def _post(
        self,
        action: Action,
        key: TaskKey,
        body: bytes,
        *,
        deadline: float | None,
        retry_if_maybe_sent: bool = True,
        parse: Parse[_T] = parse_ok,  # type: ignore[assignment]
    ) -> _T:
        query = {"Action": action.name, "Version": action.version}
        return await self._calls.call(
            action,
            query=query,
            key=key,
            body=body,
            parse=parse,
            retry_if_maybe_sent=retry_if_maybe_sent,
            deadline=self._deadline if deadline is None else deadline,
        )

    async def start(
        self, key: TaskKey, body: bytes, *, deadline: float | None = None
    ) -> StartOutcome:
        """StartSegment, never retried blindly: an ambiguous failure is resolved by reading
        the task back (running: it landed; not found: send again; else raise). The deadline
        bounds the whole, read-backs included."""
        budget = self._max_retries + 1
        left = _time_left(self._deadline if deadline is None else deadline)
        while True:
            try:
                return await self._post(
                    self._start,
                    key,
                    body,
                    deadline=left(),
                    retry_if_maybe_sent=False,
                    parse=parse_start,
                )
            except RtcSegmentError as error:
                if not (error.ambiguous and error.retryable):
                    raise
                budget -= error.attempts
                try:
                    task = await self.fetch_task(key, deadline=left())
                except TaskNotFoundError:
                    if budget <= 0:
                        raise error from None
                    logger.debug("StartSegment %s did not land; sending it again", "/".join(key))
                    continue
                except RtcSegmentError:
                    raise error from None
                if task.is_terminal:
                    raise error from None
                logger.debug("StartSegment %s landed although its answer was lost", "/".join(key))
                return StartOutcome.STARTED

    async def update(self, key: TaskKey, body: bytes, *, deadline: float | None = None) -> None:
        """UpdateSegment; setting values is idempotent, so transient failures are retried."""
        await self._post(self._update, key, body, deadline=deadline)

    async def stop(self, key: TaskKey, body: bytes, *, deadline: float | None = None) -> None:
        """StopSegment; "not found" after an attempt that may have stopped it is success."""
        try:
            await self._post(self._stop, key, body, deadline=deadline)
        except TaskNotFoundError as error:
            if error.ambiguous:
                logger.debug("StopSegment %s: an earlier attempt stopped it", "/".join(key))
                return
            raise
