"""Typed, immutable models of GetSegmentTask's answer.

Attribute names are the snake_case forms of the service's PascalCase fields; the
converter (``_converter.py``) maps between the two. Enumerations accept values that
this version of the library does not know yet: they become *unrecognised members*
whose ``value`` is what the service sent, so a newer service never breaks parsing and
the caller can still see the value.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, TypeVar

import attrs

__all__ = [
    "ActionResult",
    "Control",
    "CustomConfig",
    "ResponseError",
    "ResponseMetadata",
    "SegmentTask",
    "StartOutcome",
    "StopReason",
    "StorageConfig",
    "StorageType",
    "Stream",
    "StreamType",
    "TargetStreams",
    "TaskKey",
    "TaskOutcome",
    "TaskStatus",
    "TosConfig",
    "VeImageXConfig",
    "Vendor",
    "VodConfig",
]

_E = TypeVar("_E", bound=enum.Enum)


def _unrecognised(cls: type[_E], value: Any, base: type) -> _E | None:
    """Make (once) and return a pseudo-member of ``cls`` for an unknown ``value``.

    This is how ``enum.Flag`` represents combinations that have no name; we use it so
    that ``TaskStatus(9)`` is a ``TaskStatus`` whose ``value`` is 9, instead of a crash.
    """
    if not isinstance(value, base) or isinstance(value, bool):
        return None
    cache: dict[Any, _E] = cls.__dict__.get("_unrecognised_cache_") or {}
    if not cache:
        type.__setattr__(cls, "_unrecognised_cache_", cache)
    member = cache.get(value)
    if member is None:
        made: Any = base.__new__(cls, value)  # type: ignore[arg-type]
        made._name_ = f"UNRECOGNISED_{value}"
        made._value_ = value
        member = cache[value] = made
    return member


class _OpenIntEnum(enum.IntEnum):
    """An IntEnum that keeps unknown integer values as unrecognised members."""

    @classmethod
    def _missing_(cls, value: object) -> Any:
        return _unrecognised(cls, value, int)

    @property
    def is_recognised(self) -> bool:
        """False for a value this version of the library does not know."""
        return self._name_ in type(self).__members__


class TaskStatus(_OpenIntEnum):
    """State of a segment task (``SegmentTask.Status``)."""

    UNKNOWN = 0
    """Unknown or abnormal state."""
    NOT_STARTED = 1
    RUNNING = 2
    ENDED = 3
    FAILED = 4

    @property
    def is_terminal(self) -> bool:
        """True once the task can no longer change: ended or failed."""
        return self in (TaskStatus.ENDED, TaskStatus.FAILED)


class StreamType(_OpenIntEnum):
    """Kind of a stream in ``TargetStreams.StreamList``."""

    NORMAL = 0
    """An ordinary audio/video stream (the default)."""
    SCREEN = 1
    """A screen-sharing stream."""


class StorageType(_OpenIntEnum):
    """Where slices are stored (``StorageConfig.Type``)."""

    TOS = 0
    """Volcengine object storage (TOS)."""
    VOD = 1
    """Volcengine video on demand (VOD)."""
    CUSTOM = 2
    """A third-party S3-compatible store (``CustomConfig``)."""
    VEIMAGEX = 3
    """veImageX (snapshots only)."""


class Vendor(_OpenIntEnum):
    """Third-party storage vendor (``CustomConfig.Vendor``)."""

    AMAZON_S3 = 0
    ALIBABA_OSS = 1
    HUAWEI_OBS = 2
    TENCENT_COS = 3
    QINIU_KODO = 4


class StopReason(str, enum.Enum):
    """Why a task stopped (``SegmentTask.StopReason``); unknown strings are kept."""

    UNKNOWN_STOP_REASON = "UnknownStopReason"
    STOP_BY_API = "StopByAPI"
    START_TASK_FAILED = "StartTaskFailed"
    IDLE_TIMEOUT = "IdleTimeOut"
    USER_DISCONNECT = "UserDisconnect"
    """Auto-segment tasks: the user left the room."""

    @classmethod
    def _missing_(cls, value: object) -> Any:
        return _unrecognised(cls, value, str)

    @property
    def is_recognised(self) -> bool:
        """False for a value this version of the library does not know."""
        return self._name_ in type(self).__members__


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_MS = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // timedelta(milliseconds=1)


def _ms_to_datetime(ms: int) -> datetime | None:
    # Past year 9999 there is no datetime to give (the raw value stays in the field);
    # epoch + timedelta is exact to the millisecond, unlike a float timestamp.
    if ms <= 0 or ms > _MAX_MS:
        return None
    return _EPOCH + timedelta(milliseconds=ms)


@attrs.frozen
class Stream:
    """One stream of ``TargetStreams.StreamList``."""

    index: int = 0
    """Position of the stream; unique within the list."""
    user_id: str = ""
    """The user publishing the stream."""
    stream_type: StreamType = StreamType.NORMAL


@attrs.frozen
class TargetStreams:
    """The streams being sliced; an empty list means every stream in the room."""

    stream_list: tuple[Stream, ...] = ()


@attrs.frozen
class Control:
    """Advanced slicing options."""

    align: bool = False
    """Align slice boundaries across users."""
    mixed: bool = False
    """Also produce a mixed slice (user name ``mixed``)."""
    ignore_silence: bool = False
    """Skip silent slices."""
    redundant_duration: int = 0
    """Milliseconds of the previous slice repeated at the start of the next one."""


@attrs.frozen
class TosConfig:
    """Volcengine TOS storage (``StorageConfig.Type == 0``)."""

    account_id: str | None = None
    bucket: str | None = None
    region: int = 0
    """Region id from the service's region table (0 = cn-beijing)."""


@attrs.frozen
class VodConfig:
    """Volcengine VOD storage (``StorageConfig.Type == 1``)."""

    account_id: str | None = None
    space: str | None = None
    region: int = 0
    """Region id from the service's region table (0 = cn-north-1)."""


@attrs.frozen
class CustomConfig:
    """Third-party S3-compatible storage (``StorageConfig.Type == 2``).

    ``access_key`` and ``secret_key`` are not returned by GetSegmentTask; when present
    (requests you build yourself) they are redacted from ``repr``.
    """

    vendor: Vendor = Vendor.AMAZON_S3
    region: int = 0
    bucket: str | None = None
    access_key: str | None = attrs.field(default=None, repr=False)
    secret_key: str | None = attrs.field(default=None, repr=False)

    def __repr__(self) -> str:
        def redacted(value: str | None) -> str:
            return "None" if value is None else "'***'"

        return (
            f"CustomConfig(vendor={self.vendor!r}, region={self.region!r}, "
            f"bucket={self.bucket!r}, access_key={redacted(self.access_key)}, "
            f"secret_key={redacted(self.secret_key)})"
        )


@attrs.frozen
class VeImageXConfig:
    """veImageX storage (``StorageConfig.Type == 3``)."""

    account_id: str | None = None
    service_id: str | None = None
    region: int = 0


@attrs.frozen
class StorageConfig:
    """Where the slices go. Only the object matching ``type`` is meaningful."""

    type: StorageType = StorageType.TOS
    tos_config: TosConfig | None = None
    vod_config: VodConfig | None = None
    custom_config: CustomConfig | None = None
    veimagex_config: VeImageXConfig | None = None


@attrs.frozen
class SegmentTask:
    """The state of one audio-segment task, as GetSegmentTask reports it."""

    start_time: int = 0
    """Start, Unix time in milliseconds (see :attr:`started_at`)."""
    end_time: int = 0
    """End, Unix time in milliseconds; 0 while the task has not ended (see :attr:`ended_at`)."""
    status: TaskStatus = TaskStatus.UNKNOWN
    stop_reason: StopReason | None = None
    """Why the task stopped; ``None`` while it has not."""
    max_idle_time: int | None = None
    """Idle timeout in seconds."""
    target_streams: TargetStreams | None = None
    duration: int | None = None
    """Length of each slice in seconds."""
    identifier: str | None = None
    """Custom file-name prefix."""
    handle: bool | None = None
    """Whether slicing started immediately."""
    control: Control | None = None
    storage_config: StorageConfig | None = None

    @property
    def started_at(self) -> datetime | None:
        """:attr:`start_time` as an aware UTC datetime (``None`` if unset)."""
        return _ms_to_datetime(self.start_time)

    @property
    def ended_at(self) -> datetime | None:
        """:attr:`end_time` as an aware UTC datetime; ``None`` while not ended."""
        return _ms_to_datetime(self.end_time)

    @property
    def is_terminal(self) -> bool:
        """True once the task has ended or failed."""
        return self.status.is_terminal


@attrs.frozen
class ResponseError:
    """``ResponseMetadata.Error`` of a failed call."""

    code: str = ""
    code_n: int | None = None
    message: str = ""


@attrs.frozen
class ResponseMetadata:
    """``ResponseMetadata`` of every answer."""

    request_id: str = ""
    action: str = ""
    version: str = ""
    service: str = ""
    region: str = ""
    error: ResponseError | None = None


class TaskKey(NamedTuple):
    """Identifies one task: the arguments of GetSegmentTask. A plain 3-tuple works too."""

    app_id: str
    room_id: str
    task_id: str


@attrs.frozen
class TaskOutcome:
    """The result for one key of a fan-out: exactly one of ``task`` and ``error`` is set."""

    key: TaskKey
    task: SegmentTask | None = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        """True when the task was fetched."""
        return self.error is None


class StartOutcome(str, enum.Enum):
    """What ``SegmentClient.start_segment`` did.

    ``STARTED``: the task was started by this call. ``ALREADY_RUNNING``: API version
    2023-11-01 only -- a task with this TaskId was already running, and the service answered
    with a notice instead of an error (2022-06-01 raises ``InvalidParameterError`` with code
    ``InvalidParameter.TaskAlreadyExists`` instead).
    """

    STARTED = "started"
    ALREADY_RUNNING = "already_running"


@attrs.frozen
class ActionResult:
    """The answer of ``SegmentClient.call``: the ``Result`` of any OpenAPI action.

    Attributes:
        result: The answer's ``Result``, as decoded JSON (``None`` when it had none).
        request_id: ``ResponseMetadata.RequestId``, for support requests.
        http_status: The HTTP status of the answer.
    """

    result: Any
    request_id: str
    http_status: int
