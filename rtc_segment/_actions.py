"""The segment family's actions: their names, versions, ceilings, and request bodies.

Everything here is pure: validation (``TypeError``/``ValueError`` naming the argument,
before anything is sent) and the JSON body of each POST action, built with the package's
converter so that requests and answers share one set of models.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs

from ._converter import unstructure
from ._models import Control, StorageConfig, StorageType, Stream, TargetStreams, TaskKey

__all__ = [
    "GET_SEGMENT_TASK",
    "START_SEGMENT",
    "STOP_SEGMENT",
    "UPDATE_SEGMENT",
    "Action",
    "start_segment_body",
    "stop_segment_body",
    "update_segment_body",
]

#: The service's limits (facts §5).
MAX_TARGET_STREAMS = 17
DURATION_RANGE = (1, 600)
MAX_IDLE_TIME_RANGE = (1, 86400)


@attrs.frozen
class Action:
    """One OpenAPI action of the segment family."""

    name: str
    version: str
    method: str
    qps: float
    """The documented ceiling, per account."""


GET_SEGMENT_TASK = Action("GetSegmentTask", "2022-06-01", "GET", 60.0)
START_SEGMENT = Action("StartSegment", "2022-06-01", "POST", 60.0)
UPDATE_SEGMENT = Action("UpdateSegment", "2022-06-01", "POST", 150.0)
STOP_SEGMENT = Action("StopSegment", "2022-06-01", "POST", 150.0)
ACTIONS = (GET_SEGMENT_TASK, START_SEGMENT, UPDATE_SEGMENT, STOP_SEGMENT)


def _encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def _int_in(name: str, value: object, bounds: tuple[int, int]) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    low, high = bounds
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
    return value


def _optional_id(name: str, value: object) -> str | None:
    from ._client import validate_id

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
        from ._client import validate_id

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
    document["Handle"] = _bool("handle", handle)
    streams = _target_streams(target_streams)
    if streams is not None:
        document["TargetStreams"] = unstructure(streams)
    prefix = _optional_id("identifier", identifier)
    if prefix is not None:
        document["Identifier"] = prefix
    if control is not None:
        if not isinstance(control, Control):
            raise TypeError(f"control must be Control, not {type(control).__name__}")
        if isinstance(control.redundant_duration, bool) or not isinstance(
            control.redundant_duration, int
        ):
            raise TypeError("control.redundant_duration must be an int (milliseconds)")
        if control.redundant_duration < 0:
            raise ValueError("control.redundant_duration must be >= 0 milliseconds")
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
        document["Handle"] = _bool("handle", handle)
    if duration is not None:
        document["Duration"] = _int_in("duration", duration, DURATION_RANGE)
    if len(document) == len(_key_fields(key, business_id)):
        raise ValueError("update_segment needs at least one of identifier, handle, duration")
    return _encode(document)


def stop_segment_body(key: TaskKey, *, business_id: object) -> bytes:
    """Validate StopSegment's arguments and return its JSON body."""
    return _encode(_key_fields(key, business_id))
