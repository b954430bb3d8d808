"""rtc_segment: an asyncio client for the Volcengine RTC ``GetSegmentTask`` API.

One call -- ``await client.get_segment_task(app_id, room_id, task_id)`` -- signed with
Volcengine's V4 signature, paced under the 60 QPS ceiling, retried when that is safe,
and answered with a frozen, typed :class:`SegmentTask`. Fan-out and watching build on it.
``rtc_segment.testing`` holds a local emulator of the service for tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._auth import UnsafeRedirectError, VolcengineAuth
from ._caller import Backoff
from ._chain import CliConfigCredentialsProvider, DefaultCredentialsChain
from ._client import SegmentClient
from ._credentials import Credentials
from ._endpoints import DEFAULT_ENDPOINT, SINGAPORE_ENDPOINT
from ._errors import (
    ApiError,
    AuthenticationError,
    ClientClosedError,
    ClientTimeoutError,
    CredentialsError,
    CredentialsUnavailableError,
    DeadlineExceededError,
    InvalidParameterError,
    RateLimiterUnavailableError,
    ResponseFormatError,
    RtcSegmentError,
    ServerError,
    TaskNotFoundError,
    ThrottledError,
    TransportError,
    WaitTimeoutError,
    deprecated_name,
)
from ._fanout import OutcomeStream
from ._host_limiter import HostRateLimiter
from ._instrumentation import (
    CallDetails,
    CallHook,
    CallObserver,
    CallRecorder,
    CallResult,
    RetryDetails,
    RunDetails,
    RunObserver,
    get_call_hooks,
    register_default_hook,
    set_call_hooks,
    set_default_telemetry,
)
from ._limiting import LocalRateLimiter, RateLimiter
from ._models import (
    ActionResult,
    Control,
    CustomConfig,
    SegmentTask,
    StartOutcome,
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
from ._providers import (
    CredentialsProvider,
    EnvironmentCredentialsProvider,
    IssuedCredentials,
    RefreshingCredentialsProvider,
    StaticCredentialsProvider,
)
from ._remote_credentials import (
    AssumeRoleCredentialsProvider,
    EcsRoleCredentialsProvider,
    OidcCredentialsProvider,
    role_trn,
)
from ._stats import ClientStats
from ._telemetry import default_hook
from ._version import __version__
from ._watch import TaskWatch, WatchEvent

# Telemetry on by default: every call is traced and measured on OpenTelemetry's global
# providers when opentelemetry-api is installed (looked up at the first call; see
# _telemetry.py). RTC_SEGMENT_TELEMETRY=off or set_default_telemetry(False) turns it off.
register_default_hook(default_hook)

# RedisRateLimiter, RedisLimiterStats and OpenTelemetryHook are public but resolved lazily
# (__getattr__ below) and left out of __all__: they need the optional `redis` /
# `opentelemetry-api` packages, and `from rtc_segment import *` must work without them.
# The redundant aliases re-export them for type checkers.
if TYPE_CHECKING:
    from ._otel import OpenTelemetryHook as OpenTelemetryHook
    from ._redis import RedisLimiterStats as RedisLimiterStats
    from ._redis import RedisRateLimiter as RedisRateLimiter

__all__ = [
    "DEFAULT_ENDPOINT",
    "SINGAPORE_ENDPOINT",
    "ActionResult",
    "ApiError",
    "AssumeRoleCredentialsProvider",
    "AuthenticationError",
    "Backoff",
    "CallDetails",
    "CallHook",
    "CallObserver",
    "CallRecorder",
    "CallResult",
    "CliConfigCredentialsProvider",
    "ClientClosedError",
    "ClientStats",
    "ClientTimeoutError",
    "Control",
    "Credentials",
    "CredentialsError",
    "CredentialsProvider",
    "CredentialsUnavailableError",
    "CustomConfig",
    "DeadlineExceededError",
    "DefaultCredentialsChain",
    "EcsRoleCredentialsProvider",
    "EnvironmentCredentialsProvider",
    "HostRateLimiter",
    "InvalidParameterError",
    "IssuedCredentials",
    "LocalRateLimiter",
    "OidcCredentialsProvider",
    "OutcomeStream",
    "RateLimiter",
    "RateLimiterUnavailableError",
    "RefreshingCredentialsProvider",
    "ResponseFormatError",
    "RetryDetails",
    "RtcSegmentError",
    "RunDetails",
    "RunObserver",
    "SegmentClient",
    "SegmentTask",
    "ServerError",
    "StartOutcome",
    "StaticCredentialsProvider",
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
    "UnsafeRedirectError",
    "VeImageXConfig",
    "Vendor",
    "VodConfig",
    "VolcengineAuth",
    "WaitTimeoutError",
    "WatchEvent",
    "__version__",
    "get_call_hooks",
    "role_trn",
    "set_call_hooks",
    "set_default_telemetry",
]


def __getattr__(name: str) -> Any:
    # RedisRateLimiter needs the optional `redis` package, OpenTelemetryHook the optional
    # `opentelemetry-api`: import them only when asked for.
    if name in ("RedisRateLimiter", "RedisLimiterStats"):
        from . import _redis

        return getattr(_redis, name)
    if name == "OpenTelemetryHook":
        from . import _otel

        return _otel.OpenTelemetryHook
    return deprecated_name(__name__, name)
