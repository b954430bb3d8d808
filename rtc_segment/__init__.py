"""rtc_segment: an asyncio client for the Volcengine RTC ``GetSegmentTask`` API.

One call -- ``await client.get_segment_task(app_id, room_id, task_id)`` -- signed with
Volcengine's V4 signature, paced under the 60 QPS ceiling, retried when that is safe,
and answered with a frozen, typed :class:`SegmentTask`. Fan-out and watching build on it.
``rtc_segment.testing`` holds a local emulator of the service for tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._client import DEFAULT_ENDPOINT, SINGAPORE_ENDPOINT, Backoff, ClientStats, SegmentClient
from ._credentials import Credentials
from ._errors import (
    ApiError,
    AuthenticationError,
    ClientClosedError,
    CredentialsError,
    InvalidParameterError,
    RateLimiterUnavailable,
    ResponseFormatError,
    RtcSegmentError,
    ServerError,
    TaskNotFoundError,
    ThrottledError,
    TransportError,
)
from ._limiting import LocalRateLimiter, RateLimiter
from ._models import (
    Control,
    CustomConfig,
    SegmentTask,
    StopReason,
    StorageConfig,
    StorageType,
    Stream,
    StreamType,
    TargetStreams,
    TaskKey,
    TaskOutcome,
    TaskStatus,
    TosConfig,
    VeImageXConfig,
    Vendor,
    VodConfig,
)
from ._polling import OutcomeStream, TaskWatch, WaitTimeoutError, WatchEvent
from ._version import __version__

# RedisRateLimiter and RedisLimiterStats are public but resolved lazily (__getattr__ below)
# and left out of __all__: they need the optional `redis` package, and
# `from rtc_segment import *` must work on an install without it. The redundant aliases
# re-export them for type checkers.
if TYPE_CHECKING:
    from ._redis import RedisLimiterStats as RedisLimiterStats
    from ._redis import RedisRateLimiter as RedisRateLimiter

__all__ = [
    "DEFAULT_ENDPOINT",
    "SINGAPORE_ENDPOINT",
    "ApiError",
    "AuthenticationError",
    "Backoff",
    "ClientClosedError",
    "ClientStats",
    "Control",
    "Credentials",
    "CredentialsError",
    "CustomConfig",
    "InvalidParameterError",
    "LocalRateLimiter",
    "OutcomeStream",
    "RateLimiter",
    "RateLimiterUnavailable",
    "ResponseFormatError",
    "RtcSegmentError",
    "SegmentClient",
    "SegmentTask",
    "ServerError",
    "StopReason",
    "StorageConfig",
    "StorageType",
    "Stream",
    "StreamType",
    "TargetStreams",
    "TaskKey",
    "TaskNotFoundError",
    "TaskOutcome",
    "TaskStatus",
    "TaskWatch",
    "ThrottledError",
    "TosConfig",
    "TransportError",
    "VeImageXConfig",
    "Vendor",
    "VodConfig",
    "WaitTimeoutError",
    "WatchEvent",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # RedisRateLimiter needs the optional `redis` package: import it only when asked for.
    if name in ("RedisRateLimiter", "RedisLimiterStats"):
        from . import _redis

        return getattr(_redis, name)
    raise AttributeError(f"module 'rtc_segment' has no attribute {name!r}")
