"""Reading the JSON bodies of StartSegment and UpdateSegment the way the service does.

Every check raises ``InvalidParameter`` with a message that names the offending field by
its JSON path (``StorageConfig.TosConfig.Bucket``), so a test can tell which rule fired.
The ranges are the documented ones (StartSegment,
https://www.volcengine.com/docs/6348/1188212): ``Duration`` 1-600 s, ``MaxIdleTime``
1-86400 s, at most 17 target streams with unique ``Index`` values, ids from
``[a-zA-Z0-9_@.-]{1,128}``. The storage object that matches ``StorageConfig.Type`` must be
present with its identifying fields (the account and bucket/space/service; for third-party
storage the bucket and the key pair).

Messages never quote a value of ``AccessKey`` or ``SecretKey``: the emulator's errors end up
in logs and test reports, and a misplaced secret is still a secret.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .._models import (
    Control,
    CustomConfig,
    StorageConfig,
    StorageType,
    Stream,
    StreamType,
    TargetStreams,
    TosConfig,
    VeImageXConfig,
    Vendor,
    VodConfig,
)
from ._envelope import ServiceFailure, invalid_parameter

__all__ = [
    "DURATION_RANGE",
    "MAX_IDLE_TIME_RANGE",
    "MAX_TARGET_STREAMS",
    "optional_bool",
    "optional_id",
    "optional_int",
    "parse_control",
    "parse_storage_config",
    "parse_target_streams",
]

MAX_TARGET_STREAMS = 17
DURATION_RANGE = (1, 600)
MAX_IDLE_TIME_RANGE = (1, 86400)

_ID_PATTERN = re.compile(r"[a-zA-Z0-9_@.\-]{1,128}")
_ID_RULE = "1-128 characters from a-z A-Z 0-9 _ @ . -"
_SECRET_FIELDS = frozenset({"AccessKey", "SecretKey"})
_NO_LIMIT = (0, 2**63 - 1)


def _bad(path: str, problem: str) -> ServiceFailure:
    return invalid_parameter(f"{path} {problem}")


def _shown(path: str, value: object) -> str:
    if path.rsplit(".", 1)[-1] in _SECRET_FIELDS:
        return f"a {type(value).__name__}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def optional_int(
    params: Mapping[str, Any], name: str, bounds: tuple[int, int] = _NO_LIMIT, *, path: str = ""
) -> int | None:
    """An integer field within ``bounds`` (inclusive), or ``None`` when absent/null."""
    value = params.get(name)
    where = path + name
    if value is None:
        return None
    # JSON has one number type: 20.0 is the integer 20, 20.5 is not an integer.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(where, f"must be an integer, got {_shown(where, value)}")
    low, high = bounds
    if not low <= value <= high:
        if high == _NO_LIMIT[1]:
            raise _bad(where, f"must be >= {low}, got {value}")
        raise _bad(where, f"must be between {low} and {high}, got {value}")
    return value


def optional_bool(params: Mapping[str, Any], name: str, *, path: str = "") -> bool | None:
    """A boolean field, or ``None`` when absent/null."""
    value = params.get(name)
    if value is None or isinstance(value, bool):
        return value
    raise _bad(path + name, f"must be a boolean, got {_shown(path + name, value)}")


def _optional_str(params: Mapping[str, Any], name: str, *, path: str = "") -> str | None:
    value = params.get(name)
    if value is None or isinstance(value, str):
        return value or None
    raise _bad(path + name, f"must be a string, got {_shown(path + name, value)}")


def _required_str(params: Mapping[str, Any], name: str, *, path: str) -> str:
    value = _optional_str(params, name, path=path)
    if value is None:
        raise _bad(path + name, "is required")
    return value


def optional_id(params: Mapping[str, Any], name: str, *, path: str = "") -> str | None:
    """An id-shaped string field (``[a-zA-Z0-9_@.-]{1,128}``), or ``None`` when absent/empty."""
    value = _optional_str(params, name, path=path)
    if value is not None and not _ID_PATTERN.fullmatch(value):
        raise _bad(path + name, f"is invalid: it must be {_ID_RULE}")
    return value


def _object(params: Mapping[str, Any], name: str, *, path: str = "") -> Mapping[str, Any] | None:
    value = params.get(name)
    if value is None or isinstance(value, dict):
        return value
    raise _bad(path + name, f"must be an object, got {type(value).__name__}")


def parse_target_streams(params: Mapping[str, Any]) -> TargetStreams:
    """``TargetStreams``: absent or an empty ``StreamList`` means every stream in the room."""
    target = _object(params, "TargetStreams")
    if target is None:
        return TargetStreams()
    items = target.get("StreamList")
    if items is None:
        return TargetStreams()
    if not isinstance(items, list):
        raise _bad("TargetStreams.StreamList", f"must be a list, got {type(items).__name__}")
    if len(items) > MAX_TARGET_STREAMS:
        raise _bad(
            "TargetStreams.StreamList",
            f"holds {len(items)} streams; at most {MAX_TARGET_STREAMS} are allowed",
        )
    streams: list[Stream] = []
    seen: set[int] = set()
    for position, item in enumerate(items):
        path = f"TargetStreams.StreamList[{position}]."
        if not isinstance(item, dict):
            raise _bad(path[:-1], f"must be an object, got {type(item).__name__}")
        index = optional_int(item, "Index", _NO_LIMIT, path=path) or 0
        if index in seen:
            raise _bad(path + "Index", f"{index} is used by more than one stream")
        seen.add(index)
        user_id = optional_id(item, "UserId", path=path)
        if user_id is None:
            raise _bad(path + "UserId", "is required")
        kind = optional_int(item, "StreamType", (0, 1), path=path) or 0
        streams.append(Stream(index=index, user_id=user_id, stream_type=StreamType(kind)))
    return TargetStreams(stream_list=tuple(streams))


def parse_control(params: Mapping[str, Any]) -> Control:
    """``Control``: every option off unless given; ``RedundantDuration`` in ms, >= 0."""
    control = _object(params, "Control")
    if control is None:
        return Control()
    path = "Control."
    return Control(
        align=bool(optional_bool(control, "Align", path=path)),
        mixed=bool(optional_bool(control, "Mixed", path=path)),
        ignore_silence=bool(optional_bool(control, "IgnoreSilence", path=path)),
        redundant_duration=optional_int(control, "RedundantDuration", path=path) or 0,
    )


def _region(config: Mapping[str, Any], path: str) -> int:
    return optional_int(config, "Region", path=path) or 0


def _tos(config: Mapping[str, Any], path: str) -> StorageConfig:
    return StorageConfig(
        type=StorageType.TOS,
        tos_config=TosConfig(
            account_id=_required_str(config, "AccountId", path=path),
            bucket=_required_str(config, "Bucket", path=path),
            region=_region(config, path),
        ),
    )


def _vod(config: Mapping[str, Any], path: str) -> StorageConfig:
    return StorageConfig(
        type=StorageType.VOD,
        vod_config=VodConfig(
            account_id=_required_str(config, "AccountId", path=path),
            space=_required_str(config, "Space", path=path),
            region=_region(config, path),
        ),
    )


def _custom(config: Mapping[str, Any], path: str) -> StorageConfig:
    vendor = optional_int(config, "Vendor", path=path) or 0
    return StorageConfig(
        type=StorageType.CUSTOM,
        custom_config=CustomConfig(
            vendor=Vendor(vendor),
            region=_region(config, path),
            bucket=_required_str(config, "Bucket", path=path),
            access_key=_required_str(config, "AccessKey", path=path),
            secret_key=_required_str(config, "SecretKey", path=path),
        ),
    )


def _veimagex(config: Mapping[str, Any], path: str) -> StorageConfig:
    return StorageConfig(
        type=StorageType.VEIMAGEX,
        veimagex_config=VeImageXConfig(
            account_id=_required_str(config, "AccountId", path=path),
            service_id=_required_str(config, "ServiceId", path=path),
            region=_region(config, path),
        ),
    )


_STORAGE_KINDS = {
    0: ("TosConfig", _tos),
    1: ("VodConfig", _vod),
    2: ("CustomConfig", _custom),
    3: ("VeImageXConfig", _veimagex),
}


def parse_storage_config(params: Mapping[str, Any]) -> StorageConfig:
    """``StorageConfig`` (required): its ``Type`` (default 0, TOS) and the matching object.

    Only the object that ``Type`` selects is read and kept; the others are ignored, as the
    service ignores them.
    """
    storage = _object(params, "StorageConfig")
    if storage is None:
        raise _bad("StorageConfig", "is required")
    kind = optional_int(storage, "Type", (0, 3), path="StorageConfig.") or 0
    name, build = _STORAGE_KINDS[kind]
    path = f"StorageConfig.{name}"
    config = _object(storage, name, path="StorageConfig.")
    if config is None:
        raise _bad(path, f"is required when StorageConfig.Type is {kind}")
    return build(config, path + ".")
