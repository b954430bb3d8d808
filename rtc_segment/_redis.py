"""A rate limiter shared through Redis by every process of one account.

:class:`RedisRateLimiter` keeps the account's one budget in one Redis key: an atomic Lua
script (GCRA on the Redis server's clock) hands out send slots at least ``1 / rate`` apart
to every process that shares the key. How it paces, why it is fair and bounded, what it does
when a connection breaks or Redis is down, and how the key is derived are explained in
``docs/design/redis-limiter.md``.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

import attrs

try:
    from redis.asyncio.connection import ConnectionPool
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import NoScriptError, RedisError, ResponseError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "RedisRateLimiter needs the 'redis' package: pip install 'rtc-segment[redis]'"
    ) from exc

from ._errors import RateLimiterUnavailableError
from ._limiting import LocalRateLimiter
from ._pacing import STARTING_MARGIN, JitterMargin, paced_rate
from ._validation import check_int, check_number

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.connection import AbstractConnection

__all__ = ["RedisLimiterStats", "RedisRateLimiter"]

_KEY_PREFIX = "rtc_segment:ratelimit:"

logger = logging.getLogger("rtc_segment.redis")

#: GCRA with a burst of one. KEYS[1]: the key; ARGV[1]: the emission interval in whole
#: microseconds. Returns the wait before the reserved slot, in microseconds.
#:
#: Times are integers of microseconds (about 1.7e15 today: exact in Lua's doubles until
#: the year 2255) and are stored with %d, because Lua's own number formatting (%.14g)
#: would round them.
_GCRA_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval = tonumber(ARGV[1])
local slot = tonumber(redis.call('GET', KEYS[1]))
if slot == nil or slot < now then slot = now end
local next_slot = slot + interval
local ttl_ms = math.ceil((next_slot - now) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%d', next_slot), 'PX', ttl_ms)
return slot - now
"""

#: The name EVALSHA knows the script by: Redis computes the same SHA-1 of its text.
_GCRA_SHA = hashlib.sha1(_GCRA_SCRIPT.encode("utf-8"), usedforsecurity=False).hexdigest()

#: What counts as "Redis is unavailable": the client's own errors (connection refused or
#: reset, timeouts, authentication, pool exhausted, READONLY, OOM, LOADING, ...), raw
#: socket errors, and our own deadline on the call.
_REDIS_FAILURES = (RedisError, OSError, asyncio.TimeoutError)

#: A connection that broke under a reservation (a Redis restart, a connection closed while
#: idle, a reset): worth one retry on a new connection. redis-py reports these as its own
#: ConnectionError; a raw socket error may still surface from the transport.
_CONNECTION_LOST = (RedisConnectionError, ConnectionError)


class _AccountCredentials(Protocol):
    @property
    def access_key_id(self) -> str: ...


@attrs.frozen
class RedisLimiterStats:
    """A snapshot of what one :class:`RedisRateLimiter` instance has done.

    Attributes:
        reservations: Slots reserved in Redis (one round trip each).
        redis_seconds: Total time spent in those round trips, in seconds.
        failures: Redis calls that failed (unreachable, timed out, refused).
        fallback_acquisitions: Acquisitions paced locally during an outage.
    """

    reservations: int
    redis_seconds: float
    failures: int
    fallback_acquisitions: int

    @property
    def mean_round_trip(self) -> float:
        """Mean Redis round trip per reservation, in seconds (0.0 before the first)."""
        return self.redis_seconds / self.reservations if self.reservations else 0.0


class RedisRateLimiter:
    """Paces every process that shares ``key`` so that together they stay under ``qps``.

    A :class:`~rtc_segment.RateLimiter`: pass it as ``SegmentClient(limiter=...)`` in each
    worker. ``docs/design/redis-limiter.md`` explains the algorithm and its guarantees.

    Args:
        redis: A ``redis.asyncio.Redis`` client (the ``redis`` extra). Its connection pool,
            connection settings and timeouts are used as they are, not its retry settings:
            a connection that breaks under a reservation is retried once, at once, on a new
            connection, on every redis-py version. This limiter never closes the client.
        key: The Redis key holding the shared budget. Every process passing the same key
            shares one ceiling; use :meth:`key_for` to derive it from the account.
        qps: The ceiling in requests per second (the service allows 60 per account).
        utilization: ``None`` (the default) adapts, like :class:`LocalRateLimiter`: the
            slots stay shared, and each process spaces the slots it reserves by a margin
            learnt from its own round trips (:meth:`observe_round_trip`) and widened at
            once by a throttled answer (:meth:`observe_throttle`). A fraction in (0, 1)
            fixes the spacing at ``1 / (utilization * qps)`` instead (0.1's behaviour, at
            0.99).
        max_pending: The most reservations this instance holds at once (Redis calls in
            flight plus reserved slots being waited out); further callers queue locally.
            Capped at the client's connection pool size. The default keeps up with round
            trips of up to about ``(max_pending - 1) / rate`` seconds.
        redis_timeout: Deadline for one Redis round trip, in seconds, after which Redis
            counts as unavailable.
        retry_interval: After a failure, how long (seconds) to fail fast -- or pace
            locally -- before trying Redis again.
        fallback_fraction: ``None`` (the default) raises
            :class:`~rtc_segment.RateLimiterUnavailableError` when Redis is unavailable, and
            nothing is sent. A fraction in (0, 1] paces this instance locally at
            ``fallback_fraction * qps`` during the outage instead, with one warning per
            outage. Keep it at or below one over the number of processes sharing the key.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        key: str,
        qps: float = 60.0,
        utilization: float | None = None,
        max_pending: int = 8,
        redis_timeout: float = 1.0,
        retry_interval: float = 1.0,
        fallback_fraction: float | None = None,
    ) -> None:
        pool = _connection_pool(redis)
        if not isinstance(key, str) or not key:
            raise ValueError("key must be a non-empty string")
        check_number("qps", qps, positive=True)
        check_number("redis_timeout", redis_timeout, positive=True)
        check_number("retry_interval", retry_interval, positive=True)
        if utilization is not None:
            check_number("utilization", utilization)
            if not 0 < utilization < 1:
                raise ValueError(f"utilization must be in (0, 1), got {utilization!r}")
        check_int("max_pending", max_pending, minimum=1, type_error=ValueError)
        if fallback_fraction is not None:
            check_number("fallback_fraction", fallback_fraction, positive=True)
            if fallback_fraction > 1:
                raise ValueError(f"fallback_fraction must be in (0, 1], got {fallback_fraction!r}")

        self._redis = redis
        self._key = key
        self._qps = float(qps)
        self._utilization = None if utilization is None else float(utilization)
        # The margin is this process's; the slots are everyone's. GCRA with a burst of one
        # needs no slack: 1 + (1 + margin) * rate < qps + 1.
        self._margin = JitterMargin()
        self._rate = (
            self._qps * self._utilization
            if self._utilization is not None
            else paced_rate(self._qps, STARTING_MARGIN)
        )
        self._interval_us = _interval_us(self._rate)
        self._redis_timeout = float(redis_timeout)
        self._retry_interval = float(retry_interval)
        self._fallback_fraction = fallback_fraction
        self._fallback = (
            None
            if fallback_fraction is None
            else LocalRateLimiter(
                self._qps * fallback_fraction, utilization=self._utilization or 0.99
            )
        )
        # Never hold more Redis calls at once than the client's pool has connections:
        # beyond that redis-py fails the call ("Too many connections") instead of queueing.
        pool_size = getattr(pool, "max_connections", None)
        if isinstance(pool_size, int) and pool_size > 0:
            max_pending = min(max_pending, pool_size)
        self._max_pending = max_pending
        self._pending = asyncio.Semaphore(max_pending)
        self._pool = pool
        # Typed here: redis-py leaves get_connection unannotated.
        self._get_connection: Callable[..., Awaitable[AbstractConnection]] = pool.get_connection
        self._checkout_args = _checkout_args(pool)
        # Monotonic time before which Redis is not tried again; 0.0: no outage.
        self._retry_at = 0.0
        self._outage_warned = False
        self._probing = False
        self._last_failure = ""
        self._reservations = 0
        self._redis_seconds = 0.0
        self._failures = 0
        self._fallback_acquisitions = 0

    @staticmethod
    def key_for(credentials: _AccountCredentials, action: str = "GetSegmentTask") -> str:
        """The Redis key for ``action`` of the account that ``credentials`` belong to.

        ``rtc_segment:ratelimit:<fingerprint>:<action>``: the fingerprint is the first
        16 hex digits of the SHA-256 of the access key id, so the key identifies the
        account without revealing anything about its credentials.
        """
        fingerprint = getattr(credentials, "account_fingerprint", None)
        if not isinstance(fingerprint, str):
            digest = hashlib.sha256(credentials.access_key_id.encode("utf-8")).hexdigest()
            fingerprint = digest[:16]
        return f"{_KEY_PREFIX}{fingerprint}:{action}"

    def for_action(self, action: str, qps: float) -> RedisRateLimiter:
        """A limiter for another action of the same account: same Redis, same settings.

        :class:`~rtc_segment.SegmentClient` calls this to pace StartSegment, UpdateSegment
        and StopSegment at their own ceilings. A key made by :meth:`key_for` gets the other
        action's name in place of its own; any other key gets ``:<action>`` appended. Either
        way every process derives the same key, so each action is shared across processes.
        """
        base, _, last = self._key.rpartition(":")
        key = (
            f"{base}:{action}" if base.startswith(_KEY_PREFIX) and last else f"{self._key}:{action}"
        )
        return RedisRateLimiter(
            self._redis,
            key=key,
            qps=qps,
            utilization=self._utilization,
            max_pending=self._max_pending,
            redis_timeout=self._redis_timeout,
            retry_interval=self._retry_interval,
            fallback_fraction=self._fallback_fraction,
        )

    #: Who shares this limiter's ceiling: every process using its Redis key.
    scope = "redis"

    @property
    def qps(self) -> float:
        """The ceiling shared by every process using this key, in requests per second."""
        return self._qps

    @property
    def rate(self) -> float:
        """The rate this process spaces its reservations at, in requests per second
        (``utilization * qps`` when fixed; below ``qps`` by the learnt margin otherwise)."""
        return self._rate

    @property
    def adaptive(self) -> bool:
        """Whether the spacing follows the observed path (``utilization=None``)."""
        return self._utilization is None

    def observe_round_trip(self, seconds: float) -> None:
        """Feedback from a client: one request took ``seconds`` from its turn to its answer."""
        if self._utilization is None and self._margin.record(seconds):
            self._repace()

    def observe_throttle(self) -> None:
        """Feedback from a client: the service said the quota was exceeded."""
        if self._utilization is None:
            self._margin.throttled(time.monotonic())
            self._repace()

    def _repace(self) -> None:
        margin = self._margin.margin(time.monotonic())
        self._rate = paced_rate(self._qps, margin)
        self._interval_us = _interval_us(self._rate)

    @property
    def key(self) -> str:
        """The Redis key that holds the shared budget."""
        return self._key

    @property
    def stats(self) -> RedisLimiterStats:
        """Counters of this instance (not of the other processes sharing the key)."""
        return RedisLimiterStats(
            reservations=self._reservations,
            redis_seconds=self._redis_seconds,
            failures=self._failures,
            fallback_acquisitions=self._fallback_acquisitions,
        )

    async def acquire(self) -> None:
        """Wait until one more request may be sent without exceeding the shared ceiling.

        Raises:
            RateLimiterUnavailableError: Redis is unavailable and no fallback is configured.
                Nothing may be sent.
        """
        while True:
            if self._redis_usable():
                async with self._pending:
                    # Re-checked: the state may have changed while this caller was queued.
                    probe = self._retry_at != 0.0
                    if not probe or self._redis_usable():
                        # During an outage one caller at a time probes Redis; the others
                        # fail fast or pace locally instead of each waiting out a timeout.
                        self._probing = probe
                        try:
                            wait = await self._reserve()
                        except _REDIS_FAILURES as exc:
                            self._enter_outage(exc)
                        else:
                            self._leave_outage()
                            if wait > 0:
                                # Waiting while holding the semaphore bounds how far ahead
                                # this instance reserves: fairness, and at most one slot
                                # lost per cancelled caller.
                                await asyncio.sleep(wait)
                            return
                        finally:
                            if probe:
                                self._probing = False
            if self._fallback is None:
                raise RateLimiterUnavailableError(
                    f"the shared rate limiter could not reach Redis ({self._last_failure}); "
                    "the request was not sent"
                )
            await self._fallback.acquire()
            if not self._redis_usable():
                self._fallback_acquisitions += 1
                return
            # Redis is back, or due to be probed: use it rather than send beside callers
            # that it may already be pacing again.

    def _redis_usable(self) -> bool:
        """Healthy, or in an outage whose retry time has come and nobody is probing."""
        if self._retry_at == 0.0:
            return True
        return not self._probing and time.monotonic() >= self._retry_at

    async def _reserve(self) -> float:
        """Reserve the next slot: one atomic round trip. Returns the wait in seconds."""
        started = time.perf_counter()
        wait_us = await asyncio.wait_for(self._reserve_slot(), self._redis_timeout)
        self._redis_seconds += time.perf_counter() - started
        self._reservations += 1
        return wait_us / 1_000_000

    async def _reserve_slot(self) -> int:
        """Run the script; if the connection broke, once more on a new connection.

        The retry is ours, whatever the client's retry settings (see the design notes):
        a Redis restart leaves every pooled connection dead, and the first command on one
        fails. The retry reuses the same, now disconnected, connection object, so it always
        runs on a new connection, never on another dead one from the pool. If the script
        ran before the answer was lost, that slot stays unused and the retry reserves
        another: at most one slot lost, never a send without a slot.
        """
        connection = await self._get_connection(*self._checkout_args)
        try:
            try:
                return await _run_script(connection, self._key, self._interval_us)
            except _CONNECTION_LOST:
                return await _run_script(connection, self._key, self._interval_us)
        finally:
            await self._pool.release(connection)

    def _enter_outage(self, exc: BaseException) -> None:
        self._failures += 1
        self._last_failure = _describe(exc)
        self._retry_at = time.monotonic() + self._retry_interval
        if self._fallback is not None and not self._outage_warned:
            self._outage_warned = True
            logger.warning(
                "Redis is unavailable for the shared rate limit (%s); pacing this process "
                "locally at %.3g requests/s (%g of %g) and retrying Redis every %gs",
                self._last_failure,
                self._fallback.rate,
                self._fallback_fraction,
                self._qps,
                self._retry_interval,
            )

    def _leave_outage(self) -> None:
        if self._retry_at != 0.0:
            self._retry_at = 0.0
            if self._outage_warned:
                self._outage_warned = False
                logger.info("Redis is reachable again; shared rate limiting resumed")

    def __repr__(self) -> str:
        return (
            f"RedisRateLimiter(key={self._key!r}, qps={self._qps!r}, "
            f"utilization={self._utilization!r}, max_pending={self._max_pending!r}, "
            f"fallback_fraction={self._fallback_fraction!r})"
        )


async def _run_script(connection: AbstractConnection, key: str, interval_us: int) -> int:
    """One reservation on ``connection``: EVALSHA, or EVAL if Redis lacks the script.

    The command goes to the connection directly, not through ``Redis.evalsha``, so that
    redis-py's own retries (none in 5.0; three after random sleeps of up to seconds from
    6.0 on) never decide how a broken connection is handled. A connection that is not
    connected connects when the command is sent.
    """
    try:
        try:
            await connection.send_command("EVALSHA", _GCRA_SHA, 1, key, interval_us)
            return int(await connection.read_response())
        except NoScriptError:
            # After a restart or SCRIPT FLUSH. EVAL runs the script and caches it again.
            await connection.send_command("EVAL", _GCRA_SCRIPT, 1, key, interval_us)
            return int(await connection.read_response())
    except ResponseError:
        raise  # an error answer was read in full: the connection is still in step
    except BaseException:
        # Interrupted mid-exchange (a broken connection, our deadline, a cancellation): an
        # answer may still be on its way, and the next command must never read it.
        await connection.disconnect(nowait=True)
        raise


def _connection_pool(redis: object) -> ConnectionPool:
    """The asyncio connection pool of ``redis``, or a TypeError naming the argument."""
    pool = getattr(redis, "connection_pool", None)
    if not isinstance(pool, ConnectionPool):
        raise TypeError(
            "redis must be a redis.asyncio.Redis client (with a connection pool), "
            f"not {type(redis).__module__}.{type(redis).__qualname__}"
        )
    return pool


def _checkout_args(pool: ConnectionPool) -> tuple[str, ...]:
    """The arguments ``pool.get_connection`` takes: a command name before redis-py 5.3,
    which requires one, and nothing from 5.3 on, which deprecates it."""
    parameter = inspect.signature(pool.get_connection).parameters.get("command_name")
    required = parameter is not None and parameter.default is inspect.Parameter.empty
    return ("EVALSHA",) if required else ()


def _interval_us(rate: float) -> int:
    """Whole microseconds between slots, rounded up: truncation in Lua must never shorten
    the spacing."""
    return math.ceil(1_000_000 / rate)


def _describe(exc: BaseException) -> str:
    """Name a Redis failure for a message.

    redis-py's messages name the host and port, never the password; a URL is never
    formatted here, so nothing from the connection settings can leak.
    """
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
