"""SegmentClient: one signed, paced, retried call, and the bookkeeping around it.

Every request of the library goes through :meth:`SegmentClient._call` -- fan-out,
watching and the other actions add scheduling on top of it, never a second HTTP path.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import json
import logging
import math
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import httpx

from ._actions import (
    ACTIONS,
    GET_SEGMENT_TASK,
    START_SEGMENT,
    STOP_SEGMENT,
    UPDATE_SEGMENT,
    Action,
    start_segment_body,
    stop_segment_body,
    update_segment_body,
)
from ._converter import ShapeError, structure_metadata, structure_task
from ._credentials import Credentials
from ._errors import (
    ApiError,
    ClientClosedError,
    ResponseFormatError,
    RtcSegmentError,
    ServerError,
    TaskNotFoundError,
    ThrottledError,
    TransportError,
    error_from_service,
)
from ._limiting import LocalRateLimiter, RateLimiter
from ._models import (
    Control,
    ResponseMetadata,
    SegmentTask,
    StorageConfig,
    Stream,
    TargetStreams,
    TaskKey,
    TaskOutcome,
)
from ._signing import Signer
from ._transports import HTTP_BACKENDS, DirectSender, HttpBackend, aiohttp_transport
from ._version import __version__

if TYPE_CHECKING:
    from ._polling import OutcomeStream, TaskWatch

__all__ = [
    "DEFAULT_ENDPOINT",
    "MAX_RESPONSE_BYTES",
    "SINGAPORE_ENDPOINT",
    "Backoff",
    "ClientStats",
    "SegmentClient",
]

logger = logging.getLogger("rtc_segment")
_T = TypeVar("_T")

#: The mainland-China endpoint (signing region ``cn-north-1``).
DEFAULT_ENDPOINT = "https://rtc.volcengineapi.com"
#: The overseas endpoint. The docs sign it with region ``ap-southeast-1``, the official Go
#: SDK with ``ap-singapore-1``; pass the one your account uses as ``region``.
SINGAPORE_ENDPOINT = "https://open-ap-singapore-1.volcengineapi.com"
#: Answers larger than this are refused (``ResponseFormatError``) without being read further.
MAX_RESPONSE_BYTES = 1 << 20

_SERVICE = "rtc"
# The service's id rule (facts §1): 1-128 characters from [A-Za-z0-9_@.-].
_ID_PATTERN = re.compile(r"[A-Za-z0-9_@.\-]{1,128}")
# It is signed into the credential scope: lower-case words and digits joined by hyphens.
_REGION_PATTERN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_EXCERPT_BYTES = 200


def validate_id(name: str, value: object) -> str:
    """Check one id argument; raise ``TypeError``/``ValueError`` naming it."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must not be empty")
    if _ID_PATTERN.fullmatch(value) is None:
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise ValueError(
            f"{name}={shown!r} is not a valid id: use 1-128 characters from A-Z a-z 0-9 _ @ . -"
        )
    return value


def validate_key(key: object) -> TaskKey:
    """Turn a ``TaskKey`` or plain 3-tuple into a validated ``TaskKey``."""
    if not isinstance(key, tuple) or len(key) != 3:
        raise TypeError(
            f"a task key must be a TaskKey or a (app_id, room_id, task_id) tuple, "
            f"not {type(key).__name__}"
        )
    app_id, room_id, task_id = key
    return TaskKey(
        validate_id("app_id", app_id),
        validate_id("room_id", room_id),
        validate_id("task_id", task_id),
    )


@attrs.frozen
class Backoff:
    """How long to wait between attempts: capped exponential backoff with full jitter.

    The wait before retry ``n`` (1-based) is uniform in ``[0, min(maximum, initial * 2**(n-1))]``.
    When the service says how long to wait (``Retry-After`` / ``retry-after-ms``), that is
    used instead, capped at ``retry_after_cap``.

    ``Backoff.disabled()`` never waits: the switch for tests.
    """

    initial: float = 0.2
    maximum: float = 10.0
    retry_after_cap: float = 30.0
    enabled: bool = True

    @classmethod
    def disabled(cls) -> Backoff:
        """A backoff that never sleeps (for tests)."""
        return cls(enabled=False)

    def delay(self, retry: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        if not self.enabled:
            return 0.0
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.retry_after_cap)
        return rng.uniform(0.0, min(self.maximum, self.initial * (2 ** (retry - 1))))


@attrs.frozen
class ClientStats:
    """A snapshot of a client's counters (``client.stats``)."""

    requests_sent: int = 0
    """Attempts handed to the transport, retries included."""
    retries: int = 0
    """Attempts that were retries of an earlier one."""
    throttled: int = 0
    """Answers that said the quota was exceeded."""
    succeeded: int = 0
    """Calls that returned a result."""
    errors: Mapping[str, int] = attrs.field(factory=dict)
    """Calls that failed, by error class name."""


@attrs.define
class _Counters:
    requests_sent: int = 0
    retries: int = 0
    throttled: int = 0
    succeeded: int = 0
    errors: Counter[str] = attrs.field(factory=Counter)


def _parse_retry_after(headers: httpx.Headers) -> float | None:
    seconds = _retry_after_seconds(headers)
    # NaN or infinity would end up in asyncio timers (and ThrottledError.retry_after).
    if seconds is None or not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _retry_after_seconds(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return float(value) / 1000.0
        except ValueError:
            return None
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _warm_up_http_stack() -> None:
    # httpcore imports its async network backend on the first request (~20 ms). Paid then,
    # it delays that first request behind the ones after it, which squeezes arrivals together
    # at the server; pay it when the client opens instead.
    try:
        import anyio._backends._asyncio  # noqa: F401
        import httpcore._backends.anyio  # noqa: F401
    except ImportError:  # pragma: no cover - a different httpcore layout; only a latency cost
        pass


class _Attempt(Exception):
    """Internal: one attempt failed with ``error``; ``sent`` tells whether it may have arrived."""

    def __init__(self, error: RtcSegmentError, *, sent: bool, retry_after: float | None = None):
        super().__init__(error)
        self.error = error
        self.sent = sent
        self.retry_after = retry_after


class SegmentClient:
    """Asyncio client for the Volcengine RTC segment-task API.

    Use it as an async context manager (or call :meth:`aclose`), and share one client per
    process: it holds the connection pool and the rate limiter.

    Args:
        credentials: Access key id and secret. ``None`` resolves them from the environment
            (``VOLC_ACCESSKEY``, ``VOLC_SECRETKEY``, ``VOLC_SESSION_TOKEN``), then from
            ``~/.volc/credentials``.
        endpoint: Base URL of the OpenAPI gateway. ``http://`` is accepted only for loopback
            hosts (e.g. the emulator) unless ``allow_insecure_http`` is set.
        region: Signing region (``cn-north-1`` for the default endpoint).
        qps: Ceiling of this client's own GetSegmentTask limiter when ``limiter`` is not given.
        limiter: Any :class:`RateLimiter` for GetSegmentTask; pass one shared object (e.g. a
            ``RedisRateLimiter``) when several clients or processes share an account.
        action_limiters: Limiters for the other actions, by action name. By default each
            action is paced on its own at its documented ceiling (StartSegment 60,
            UpdateSegment and StopSegment 150): with ``limiter.for_action(name, qps)`` when
            ``limiter`` offers it (``RedisRateLimiter`` does, so every action is shared
            across processes), else with a ``LocalRateLimiter``.
        timeout: Seconds for each network operation of an attempt (connect, read, write, pool).
        max_retries: Retries after the first attempt, for transient failures only.
        backoff: Waits between attempts; ``Backoff.disabled()`` for tests.
        http_backend: What sends the requests under httpx: ``"httpcore"`` (httpx's own
            transport, the default) or ``"aiohttp"`` (extra ``aiohttp``; faster, and keeps
            its speed with many requests in flight). Errors, retries and timeouts behave the
            same on both. Ignored when ``transport`` is given.
        transport: An httpx transport, e.g. ``Emulator().transport()`` for tests; it wins
            over ``http_backend``.
        max_connections: Upper bound of concurrently open connections (and in-flight requests).
        allow_insecure_http: Permit ``http://`` to a non-loopback host.
        clock: Returns the current UTC time for ``X-Date``; injectable for tests.
    """

    def __init__(
        self,
        credentials: Credentials | None = None,
        *,
        endpoint: str = DEFAULT_ENDPOINT,
        region: str = "cn-north-1",
        qps: float = 60.0,
        limiter: RateLimiter | None = None,
        action_limiters: Mapping[str, RateLimiter] | None = None,
        timeout: float = 10.0,
        max_retries: int = 3,
        backoff: Backoff | None = None,
        http_backend: HttpBackend = "httpcore",
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 100,
        allow_insecure_http: bool = False,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._credentials = Credentials.resolve(credentials)
        if not isinstance(region, str) or _REGION_PATTERN.fullmatch(region) is None:
            raise ValueError(f"region must be a region name such as 'cn-north-1', got {region!r}")
        if backoff is not None and not isinstance(backoff, Backoff):
            raise TypeError(f"backoff must be a Backoff or None, not {type(backoff).__name__}")
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be a callable returning a datetime, not {clock!r}")
        self._base_url, self._host = _check_endpoint(endpoint, allow_insecure_http)
        self._region = region
        if limiter is None:
            limiter = LocalRateLimiter(qps)
        elif not isinstance(limiter, RateLimiter):
            raise TypeError("limiter must provide `qps` and `async acquire()` (see RateLimiter)")
        self._limiter = limiter
        self._limiters = _limiters_per_action(limiter, action_limiters)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise TypeError("max_connections must be an int")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections!r}")
        self._timeout = float(timeout)
        self._max_retries = max_retries
        self._backoff = backoff if backoff is not None else Backoff()
        self._clock = clock or _utc_now
        self._signer = Signer(self._credentials, region=region, service=_SERVICE)
        self._rng = random.Random()
        self._counters = _Counters()
        # Bounds in-flight requests to the pool size, *before* the limiter: a request that
        # got its limiter slot must never then wait for a connection, or sends would bunch up.
        self._slots = asyncio.Semaphore(max_connections)
        self._max_connections = max_connections
        if http_backend not in HTTP_BACKENDS:
            raise ValueError(
                f"http_backend must be one of {', '.join(map(repr, HTTP_BACKENDS))}, "
                f"got {http_backend!r}"
            )
        if transport is None and http_backend == "aiohttp":
            transport = aiohttp_transport(max_connections=max_connections)
        self._http = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(self._timeout),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            follow_redirects=False,
            headers={
                "Accept": "application/json",
                # Decompressing is where a tiny answer becomes gigabytes (the size cap
                # counts decoded bytes); the answers are small, so ask for them plain.
                "Accept-Encoding": "identity",
                "User-Agent": f"rtc-segment/{__version__} httpx/{httpx.__version__}",
            },
        )
        self._sender = DirectSender(self._http, self._base_url)
        # httpcore mishandles a cancellation that lands while a request is on the wire: the
        # connection can stay checked out of its pool for good (encode/httpcore#1093), and
        # every cancelled call would shrink the pool. On httpcore's transport the exchange
        # therefore runs in a task of its own that the caller's cancellation does not reach:
        # the caller goes at once, the exchange finishes (within the timeout) and then gives
        # back its connection and its slot. aclose() ends any still in flight.
        self._shelter_exchanges = isinstance(self._sender.transport, httpx.AsyncHTTPTransport)
        self._orphans: set[asyncio.Future[Any]] = set()
        self._closed = False
        _warm_up_http_stack()

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> SegmentClient:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool. Further calls raise :class:`ClientClosedError`.

        Requests of cancelled calls that are still on the wire are abandoned.
        """
        self._closed = True
        orphans = list(self._orphans)
        for exchange in orphans:
            exchange.cancel()
        if orphans:
            await asyncio.wait(orphans)
        await self._http.aclose()

    @property
    def closed(self) -> bool:
        """True after :meth:`aclose`."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError("this SegmentClient is closed")

    # -- introspection ---------------------------------------------------------------

    @property
    def stats(self) -> ClientStats:
        """A snapshot of the counters: requests sent, retries, throttled, errors by class."""
        c = self._counters
        return ClientStats(
            requests_sent=c.requests_sent,
            retries=c.retries,
            throttled=c.throttled,
            succeeded=c.succeeded,
            errors=dict(c.errors),
        )

    @property
    def limiter(self) -> RateLimiter:
        """The rate limiter every attempt of this client waits on."""
        return self._limiter

    @property
    def endpoint(self) -> str:
        """The base URL requests go to."""
        return self._base_url

    @property
    def max_connections(self) -> int:
        """Upper bound of in-flight requests."""
        return self._max_connections

    def __repr__(self) -> str:
        return (
            f"SegmentClient(endpoint={self._base_url!r}, region={self._region!r}, "
            f"access_key_id={self._credentials.access_key_id!r}, limiter={self._limiter!r})"
        )

    # -- the API ---------------------------------------------------------------------

    async def get_segment_task(self, app_id: str, room_id: str, task_id: str) -> SegmentTask:
        """Fetch the state of one segment task.

        Raises:
            TypeError, ValueError: an id is not a valid id (nothing is sent).
            TaskNotFoundError: no such task, or it started more than 72 hours ago.
            RtcSegmentError: any other failure, as its subclass (AuthenticationError,
                InvalidParameterError, ThrottledError, ServerError, TransportError,
                ResponseFormatError); transient ones were retried ``max_retries`` times first.
        """
        key = TaskKey(
            validate_id("app_id", app_id),
            validate_id("room_id", room_id),
            validate_id("task_id", task_id),
        )
        return await self._get(key)

    async def _get(self, key: TaskKey) -> SegmentTask:
        query = {
            "Action": GET_SEGMENT_TASK.name,
            "Version": GET_SEGMENT_TASK.version,
            "AppId": key.app_id,
            "RoomId": key.room_id,
            "TaskId": key.task_id,
        }
        return await self._call(GET_SEGMENT_TASK, query=query, key=key, parse=_parse_segment_task)

    async def start_segment(
        self,
        app_id: str,
        room_id: str,
        task_id: str,
        *,
        storage_config: StorageConfig,
        target_streams: TargetStreams | Sequence[Stream] | None = None,
        duration: int = 20,
        max_idle_time: int = 180,
        handle: bool = True,
        identifier: str | None = None,
        control: Control | None = None,
        business_id: str | None = None,
    ) -> None:
        """Start an audio-segment task (StartSegment, 2022-06-01).

        Arguments are checked against the documented ranges before anything is sent:
        ``duration`` 1-600 s, ``max_idle_time`` 1-86400 s, at most 17 target streams with
        unique indexes (none: every stream in the room), ids and ``identifier`` from
        ``[A-Za-z0-9_@.-]``, and the config object matching ``storage_config.type``.

        Starting is not idempotent, so it is never retried blindly. When an attempt fails
        in a way that leaves open whether it reached the service (timeout or dropped
        connection after sending, 5xx answer), the client asks GetSegmentTask: a task that
        exists and has not ended means the start landed, and the call returns; no such task
        means it did not, and the start is sent again (within ``max_retries``); otherwise
        the original error is raised with ``ambiguous=True``.

        Raises:
            InvalidParameterError: e.g. ``InvalidParameter.TaskAlreadyExists``.
        """
        key = TaskKey(
            validate_id("app_id", app_id),
            validate_id("room_id", room_id),
            validate_id("task_id", task_id),
        )
        body = start_segment_body(
            key,
            storage_config=storage_config,
            target_streams=target_streams,
            duration=duration,
            max_idle_time=max_idle_time,
            handle=handle,
            identifier=identifier,
            control=control,
            business_id=business_id,
        )
        budget = self._max_retries + 1
        while True:
            try:
                await self._post(START_SEGMENT, key, body, retry_if_maybe_sent=False)
                return
            except RtcSegmentError as error:
                if not (error.ambiguous and error.retryable):
                    raise
                budget -= error.attempts
                try:
                    task = await self._get(key)
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
                return

    async def update_segment(
        self,
        app_id: str,
        room_id: str,
        task_id: str,
        *,
        identifier: str | None = None,
        handle: bool | None = None,
        duration: int | None = None,
        business_id: str | None = None,
    ) -> None:
        """Change a running task (UpdateSegment, 2022-06-01); give at least one of
        ``identifier``, ``handle``, ``duration`` (1-600 s; changing it restarts the slice
        timer). Setting values is idempotent, so transient failures are retried."""
        key = TaskKey(
            validate_id("app_id", app_id),
            validate_id("room_id", room_id),
            validate_id("task_id", task_id),
        )
        body = update_segment_body(
            key, identifier=identifier, handle=handle, duration=duration, business_id=business_id
        )
        await self._post(UPDATE_SEGMENT, key, body)

    async def stop_segment(
        self,
        app_id: str,
        room_id: str,
        task_id: str,
        *,
        business_id: str | None = None,
    ) -> None:
        """Stop a task (StopSegment, 2022-06-01). Transient failures are retried; when a
        retry finds the task already gone after an earlier attempt may have stopped it,
        that counts as success (the task is stopped either way).

        Raises:
            TaskNotFoundError: no running task with these ids.
        """
        key = TaskKey(
            validate_id("app_id", app_id),
            validate_id("room_id", room_id),
            validate_id("task_id", task_id),
        )
        body = stop_segment_body(key, business_id=business_id)
        try:
            await self._post(STOP_SEGMENT, key, body)
        except TaskNotFoundError as error:
            if error.ambiguous:
                logger.debug("StopSegment %s: an earlier attempt stopped it", "/".join(key))
                return
            raise

    async def _post(
        self, action: Action, key: TaskKey, body: bytes, *, retry_if_maybe_sent: bool = True
    ) -> None:
        query = {"Action": action.name, "Version": action.version}
        await self._call(
            action,
            query=query,
            key=key,
            method=action.method,
            body=body,
            parse=_parse_ok,
            retry_if_maybe_sent=retry_if_maybe_sent,
        )

    def get_segment_tasks(
        self,
        keys: Iterable[TaskKey | tuple[str, str, str]]
        | AsyncIterator[TaskKey | tuple[str, str, str]],
        *,
        concurrency: int | None = None,
    ) -> OutcomeStream:
        """Fetch many tasks at the ceiling; yield one :class:`TaskOutcome` per key as each ends.

        Keys (``TaskKey`` or plain 3-tuples, from any iterable or async iterable) are pulled
        lazily; every key yields exactly one outcome, errors included. ``concurrency`` bounds
        the requests in flight (default: enough to keep the ceiling busy). Use ``async with``
        on the result to cancel the work in flight deterministically when leaving early.
        See :class:`rtc_segment.OutcomeStream`.
        """
        from ._polling import iter_outcomes

        self._check_open()
        return iter_outcomes(self, keys, concurrency=concurrency)

    async def gather_segment_tasks(
        self,
        keys: Iterable[TaskKey | tuple[str, str, str]]
        | AsyncIterator[TaskKey | tuple[str, str, str]],
        *,
        concurrency: int | None = None,
    ) -> list[TaskOutcome]:
        """Like :meth:`get_segment_tasks`, but return every outcome in input order."""
        from ._polling import gather_outcomes

        self._check_open()
        return await gather_outcomes(self, keys, concurrency=concurrency)

    async def wait_for_segment_task(
        self,
        app_id: str,
        room_id: str,
        task_id: str,
        *,
        poll_interval: float = 5.0,
        timeout: float | None = None,
    ) -> SegmentTask:
        """Poll one task until it has ended or failed, and return its final state.

        Raises:
            WaitTimeoutError: ``timeout`` seconds passed first (a ``TimeoutError``; its
                ``last_task`` attribute holds the last state seen).
        """
        from ._polling import wait_for

        key = TaskKey(
            validate_id("app_id", app_id),
            validate_id("room_id", room_id),
            validate_id("task_id", task_id),
        )
        return await wait_for(self, key, poll_interval=poll_interval, timeout=timeout)

    def watch_segment_task(
        self,
        app_id: str,
        room_id: str,
        task_id: str,
        *,
        poll_interval: float = 5.0,
    ) -> AsyncIterator[SegmentTask]:
        """Yield the task's state each time it changes (the first state included), until it
        has ended or failed."""
        from ._polling import watch_one

        key = TaskKey(
            validate_id("app_id", app_id),
            validate_id("room_id", room_id),
            validate_id("task_id", task_id),
        )
        return watch_one(self, key, poll_interval=poll_interval)

    def watch_segment_tasks(
        self,
        keys: Iterable[TaskKey | tuple[str, str, str]],
        *,
        poll_interval: float = 5.0,
        concurrency: int | None = None,
        stop_when_empty: bool = True,
    ) -> TaskWatch:
        """Watch many tasks at once, yielding a :class:`rtc_segment.WatchEvent` for each
        task's first state and every change; see :class:`rtc_segment.TaskWatch`."""
        from ._polling import TaskWatch

        self._check_open()
        return TaskWatch(
            self,
            keys,
            poll_interval=poll_interval,
            concurrency=concurrency,
            stop_when_empty=stop_when_empty,
        )

    # -- the one HTTP path -----------------------------------------------------------

    async def _call(
        self,
        action: Action,
        *,
        query: Mapping[str, str],
        key: TaskKey | None,
        method: str = "GET",
        body: bytes = b"",
        parse: Callable[[ResponseMetadata, Any, int, str, TaskKey | None], _T],
        retry_if_maybe_sent: bool = True,
    ) -> _T:
        """Send one API request with pacing, signing and retries.

        Returns ``parse(metadata, Result, http_status, action, key)`` of the successful answer,
        or raises the typed error of the last attempt (``parse`` raises an
        :class:`RtcSegmentError` for an answer whose content is wrong; that is not retried).
        ``retry_if_maybe_sent=False`` is for actions that are not idempotent: a failure after
        which the request may have reached the service is then raised at once, not retried.
        """
        self._check_open()
        limiter = self._limiters[action.name]
        counters = self._counters
        attempt = 0
        resigned_for_clock = False
        may_have_arrived = False
        while True:
            attempt += 1
            try:
                metadata, result, status = await self._attempt(
                    action.name, query=query, key=key, method=method, body=body, limiter=limiter
                )
            except _Attempt as failed:
                error = failed.error
                error.attempts = attempt
                may_have_arrived = may_have_arrived or (failed.sent and error.retryable)
                error.ambiguous = may_have_arrived
                if isinstance(error, ThrottledError):
                    counters.throttled += 1
                # A stale X-Date (e.g. a long wait between signing and arrival) is cured by
                # signing again; a skewed clock is not, and the second answer says so.
                clock_retry = (
                    isinstance(error, ApiError)
                    and error.code == "InvalidTimestamp"
                    and not resigned_for_clock
                )
                retry = clock_retry or (
                    error.retryable
                    and attempt <= self._max_retries
                    and (retry_if_maybe_sent or not failed.sent)
                )
                resigned_for_clock = resigned_for_clock or clock_retry
                if not retry:
                    counters.errors[type(error).__name__] += 1
                    raise error from None
                delay = self._backoff.delay(attempt, failed.retry_after, self._rng)
                logger.debug(
                    "%s attempt %d failed (%s); retrying in %.3f s",
                    action.name,
                    attempt,
                    type(error).__name__,
                    delay,
                )
                counters.retries += 1
                if delay > 0:
                    await asyncio.sleep(delay)
                continue
            try:
                value = parse(metadata, result, status, action.name, key)
            except RtcSegmentError as error:
                error.attempts = attempt
                error.ambiguous = may_have_arrived
                counters.errors[type(error).__name__] += 1
                raise
            counters.succeeded += 1
            return value

    async def _exchange(
        self, request: httpx.Request, action: str, key: TaskKey | None
    ) -> tuple[httpx.Response, bytes]:
        """Send one request, read its answer (capped) and close it."""
        try:
            response = await self._sender.send(request)
        except httpx.HTTPError as exc:
            raise _Attempt(
                _transport_error(exc, action, key),
                sent=not isinstance(exc, _NOT_SENT),
            ) from None
        try:
            payload = await _read_capped(response, action, key)
        finally:
            await response.aclose()
        return response, payload

    def _orphan_done(self, exchange: asyncio.Future[Any]) -> None:
        self._orphans.discard(exchange)
        self._slots.release()
        if not exchange.cancelled():
            exchange.exception()  # retrieved: its caller is gone, the outcome does not matter

    async def _attempt(
        self,
        action: str,
        *,
        query: Mapping[str, str],
        key: TaskKey | None,
        method: str,
        body: bytes,
        limiter: RateLimiter,
    ) -> tuple[ResponseMetadata, Any, int]:
        await self._slots.acquire()
        handed_off = False
        try:
            await limiter.acquire()
            self._check_open()
            # Signed after the wait, so X-Date is fresh on every attempt.
            signed = self._signer.sign(
                method=method,
                host=self._host,
                path="/",
                query=query,
                body=body,
                content_type="application/json" if method != "GET" else None,
                now=self._clock(),
            )
            request = self._sender.request(method, signed.query_string, signed.headers, body)
            self._counters.requests_sent += 1
            started = time.perf_counter()
            if not self._shelter_exchanges:
                response, payload = await self._exchange(request, action, key)
            else:
                exchange = asyncio.ensure_future(self._exchange(request, action, key))
                try:
                    response, payload = await asyncio.shield(exchange)
                except asyncio.CancelledError:
                    # See __init__: the exchange ends on its own (within the timeout) and
                    # gives its connection and slot back then; the caller goes at once.
                    handed_off = True
                    self._orphans.add(exchange)
                    exchange.add_done_callback(self._orphan_done)
                    raise
            elapsed = time.perf_counter() - started
        finally:
            if not handed_off:
                self._slots.release()
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "%s %s -> HTTP %d in %.1f ms",
                action,
                "" if key is None else "/".join(key),
                response.status_code,
                elapsed * 1000,
            )
        return _interpret(response, payload, action, key)


# Failures that prove the request never left: no connection was made or obtained.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _check_endpoint(endpoint: str, allow_insecure_http: bool) -> tuple[str, str]:
    if not isinstance(endpoint, str):
        raise TypeError(f"endpoint must be a str, not {type(endpoint).__name__}")
    try:
        url = httpx.URL(endpoint)
    except httpx.InvalidURL as exc:
        raise ValueError(f"endpoint {endpoint!r} is not a valid URL: {exc}") from None
    if url.scheme not in ("https", "http") or not url.host:
        raise ValueError(f"endpoint must be an http(s) URL with a host, got {endpoint!r}")
    if url.userinfo or url.query or url.fragment or url.path not in ("", "/"):
        raise ValueError(
            f"endpoint must be just scheme://host[:port], got {endpoint!r} "
            "(the API path is always /)"
        )
    if url.scheme == "http" and not allow_insecure_http and not _is_loopback(url.host):
        raise ValueError(
            f"endpoint: refusing plain http:// to non-loopback host {url.host!r}: requests carry "
            "signatures; use https:// or pass allow_insecure_http=True"
        )
    netloc = url.netloc.decode("ascii")
    return f"{url.scheme}://{netloc}", netloc


def _transport_error(exc: httpx.HTTPError, action: str, key: TaskKey | None) -> RtcSegmentError:
    name = type(exc).__name__
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, _NOT_SENT):
        return ServerError(
            f"no answer in time ({name})",
            code="ClientTimeout",
            action=action,
            key=key,
        )
    if isinstance(exc, httpx.DecodingError):
        return ResponseFormatError(
            f"the body could not be decoded ({name})", action=action, key=key
        )
    detail = str(exc)
    return TransportError(
        f"request failed: {name}" + (f": {detail}" if detail else ""),
        action=action,
        key=key,
    )


async def _read_capped(response: httpx.Response, action: str, key: TaskKey | None) -> bytes:
    encoding = response.headers.get("content-encoding")
    if encoding is not None and encoding.strip().lower() not in ("", "identity"):
        raise _Attempt(
            ResponseFormatError(
                f"the answer is compressed ({encoding[:40]!r}) although it was asked for "
                "uncompressed; it is not inflated, as it could be of any size",
                action=action,
                key=key,
                http_status=response.status_code,
            ),
            sent=True,
        )
    declared = response.headers.get("content-length")
    if (
        declared is not None
        and declared.isascii()
        and declared.isdigit()
        and int(declared) > MAX_RESPONSE_BYTES
    ):
        raise _Attempt(
            ResponseFormatError(
                f"answer of {int(declared)} bytes is over the {MAX_RESPONSE_BYTES}-byte limit",
                action=action,
                key=key,
                http_status=response.status_code,
            ),
            sent=True,
        )
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise _Attempt(
                    ResponseFormatError(
                        f"answer is over the {MAX_RESPONSE_BYTES}-byte limit",
                        action=action,
                        key=key,
                        http_status=response.status_code,
                    ),
                    sent=True,
                )
            chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise _Attempt(_transport_error(exc, action, key), sent=True) from None
    return b"".join(chunks)


def _excerpt(payload: bytes) -> str:
    return payload[:_EXCERPT_BYTES].decode("utf-8", "replace")


def _interpret(
    response: httpx.Response, payload: bytes, action: str, key: TaskKey | None
) -> tuple[ResponseMetadata, Any, int]:
    """Classify one answer: return ``(metadata, Result, status)`` or raise ``_Attempt``."""
    status = response.status_code
    retry_after = _parse_retry_after(response.headers) if status in (429, 503) else None

    def fail(error: RtcSegmentError) -> _Attempt:
        return _Attempt(error, sent=True, retry_after=retry_after)

    if 300 <= status < 400:
        target = response.headers.get("location", "")
        raise fail(
            ResponseFormatError(
                f"the endpoint answered with a redirect (to {target[:100]!r}), which is "
                "never followed",
                action=action,
                key=key,
                http_status=status,
            )
        )
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):
        document = None
    if not isinstance(document, dict):
        if status >= 400:
            # An error page from a proxy or load balancer: the status is all we know.
            raise fail(
                error_from_service(
                    http_status=status,
                    code="",
                    code_n=None,
                    service_message=f"HTTP {status} without an API error body",
                    action=action,
                    key=key,
                    request_id=None,
                    retry_after=retry_after,
                )
            )
        what = "not a JSON object" if document is not None or not payload else "not valid JSON"
        if not payload:
            what = "empty"
        raise fail(
            ResponseFormatError(
                f"the answer is {what}",
                excerpt=_excerpt(payload),
                action=action,
                key=key,
                http_status=status,
            )
        )
    raw_metadata = document.get("ResponseMetadata")
    try:
        metadata = structure_metadata(raw_metadata) if raw_metadata is not None else None
    except ShapeError as exc:
        metadata = None
        shape_problem: str | None = str(exc)
    else:
        shape_problem = None if metadata is not None else "no ResponseMetadata"
    error = metadata.error if metadata is not None else None
    if error is not None or status >= 400:
        raise fail(
            error_from_service(
                http_status=status,
                code=error.code if error else "",
                code_n=error.code_n if error else None,
                service_message=error.message if error else f"HTTP {status}",
                action=action,
                key=key,
                request_id=(metadata.request_id or None) if metadata else None,
                retry_after=retry_after,
            )
        )
    if metadata is None:
        raise fail(
            ResponseFormatError(
                f"the answer has {shape_problem}",
                excerpt=_excerpt(payload),
                action=action,
                key=key,
                http_status=status,
            )
        )
    return metadata, document.get("Result"), status


def _limiters_per_action(
    limiter: RateLimiter, overrides: Mapping[str, RateLimiter] | None
) -> dict[str, RateLimiter]:
    limiters: dict[str, RateLimiter] = {GET_SEGMENT_TASK.name: limiter}
    derive = getattr(limiter, "for_action", None)
    for action in ACTIONS[1:]:
        limiters[action.name] = (
            derive(action.name, action.qps) if callable(derive) else LocalRateLimiter(action.qps)
        )
    for name, given in (overrides or {}).items():
        if name not in limiters:
            names = ", ".join(a.name for a in ACTIONS)
            raise ValueError(f"action_limiters: unknown action {name!r}; use one of {names}")
        if not isinstance(given, RateLimiter):
            raise TypeError(f"action_limiters[{name!r}] must be a RateLimiter")
        limiters[name] = given
    return limiters


def _parse_ok(
    metadata: ResponseMetadata, result: Any, status: int, action: str, key: TaskKey | None
) -> None:
    # Start/Update/Stop answer Result "ok"; anything without an Error is success.
    return None


def _parse_segment_task(
    metadata: ResponseMetadata, result: Any, status: int, action: str, key: TaskKey | None
) -> SegmentTask:
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
