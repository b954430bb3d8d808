"""A rate limiter shared through Redis by every process of one account.

The service's ceiling belongs to the Volcengine account, not to a process: every worker,
process and host that calls ``GetSegmentTask`` with the same access key draws on the same
60 requests per second. :class:`RedisRateLimiter` keeps that one budget in one Redis key.

How it paces
------------
The key holds one number: the *theoretical arrival time* (TAT) of the next free send slot,
in microseconds of the Redis server's clock. One Lua script (GCRA, virtual scheduling with a
burst of one) runs atomically per acquisition:

1. read the server's clock (``TIME``) -- client clocks never enter the calculation;
2. take ``slot = max(TAT, now)`` and store ``TAT = slot + T``, where the emission interval
   ``T = 1 / (utilization * qps)``; the key expires once idle;
3. return ``slot - now``: how long the caller waits before it sends.

Every reservation is a distinct slot at least ``T`` after the one before it, whichever
process made it, so the spacing that :class:`~rtc_segment.LocalRateLimiter` guarantees
inside one process holds across all of them: no sliding second holds more than ``qps``
sends, and the ``1 - utilization`` margin (about 10 ms at 0.99) absorbs the jitter between
when Redis hands out a slot and when the request reaches the service.

Bounded, fair, cancellable
--------------------------
Each limiter instance holds at most ``max_pending`` reservations at once, counting both
Redis calls in flight and reserved slots being waited out. Thousands of waiters in one
process therefore queue locally (in FIFO order) rather than opening thousands of Redis
connections, and no process can reserve far ahead of the others: when several processes
all have work, each re-reserves as soon as one of its slots is used, so slots go round
the processes in turn and each gets an equal share. Slots are not reserved in batches
for the same reasons -- a batch would let one busy process run ahead of the queue and
would lose every slot in it on cancellation.

A caller cancelled while it waits does not give its slot back: the slot is simply left
unused (the ceiling is never exceeded by this, the account merely sends one request
fewer). Nothing else is affected; the shared state is a single number that only the
atomic script changes.

When Redis fails
----------------
If Redis cannot be reached, times out (``redis_timeout``) or refuses the command, the
limiter raises :class:`~rtc_segment.RateLimiterUnavailable` and nothing is sent. For
``retry_interval`` seconds after a failure, further acquisitions fail at once rather
than each waiting out its own timeout; then Redis is tried again.

With ``fallback_fraction`` set, a failure instead switches this instance to local pacing
at ``fallback_fraction * qps`` (a :class:`~rtc_segment.LocalRateLimiter`), logs one
warning per outage, and tries Redis again every ``retry_interval`` seconds. Local pacing
cannot see the other processes: choose a fraction no larger than one over the number of
processes sharing the key, or the account can exceed its ceiling during an outage.

The key
-------
:meth:`RedisRateLimiter.key_for` derives the key from the account:
``rtc_segment:ratelimit:<account fingerprint>:<action>``, where the fingerprint is the
first 16 hex digits of the SHA-256 of the access key id. Only that hash and a timestamp
are stored in Redis -- never a key id, a secret or a token. Any other string may be used
as the key; every process that passes the same key shares one ceiling.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from typing import TYPE_CHECKING, Any, Protocol

import attrs

try:
    from redis.exceptions import RedisError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "RedisRateLimiter needs the 'redis' package: pip install 'rtc-segment[redis]'"
    ) from exc

from ._errors import RateLimiterUnavailable
from ._limiting import LocalRateLimiter

if TYPE_CHECKING:
    from redis.asyncio import Redis

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

#: What counts as "Redis is unavailable": the client's own errors (connection refused or
#: reset, timeouts, authentication, pool exhausted, READONLY, OOM, LOADING, ...), raw
#: socket errors, and our own deadline on the call.
_REDIS_FAILURES = (RedisError, OSError, asyncio.TimeoutError)


class _AccountCredentials(Protocol):
    @property
    def access_key_id(self) -> str: ...


class _Script(Protocol):
    async def __call__(self, keys: list[str], args: list[int]) -> Any: ...


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
    worker. See the module documentation for the algorithm and its guarantees.

    Args:
        redis: A ``redis.asyncio.Redis`` client (the ``redis`` extra). Its own timeouts
            and pool are used as they are; this limiter never closes it.
        key: The Redis key holding the shared budget. Every process passing the same key
            shares one ceiling; use :meth:`key_for` to derive it from the account.
        qps: The ceiling in requests per second (the service allows 60 per account).
        utilization: Fraction of ``qps`` actually used, in (0, 1); the rest absorbs the
            jitter between reserving a slot and the request's arrival.
        max_pending: The most reservations this instance holds at once (Redis calls in
            flight plus reserved slots being waited out); further callers queue locally.
            Capped at the client's connection pool size. The default keeps up with round
            trips of up to about ``(max_pending - 1) / (utilization * qps)`` seconds.
        redis_timeout: Deadline for one Redis round trip, in seconds, after which Redis
            counts as unavailable.
        retry_interval: After a failure, how long (seconds) to fail fast -- or pace
            locally -- before trying Redis again.
        fallback_fraction: ``None`` (the default) raises
            :class:`~rtc_segment.RateLimiterUnavailable` when Redis is unavailable, and
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
        utilization: float = 0.99,
        max_pending: int = 8,
        redis_timeout: float = 1.0,
        retry_interval: float = 1.0,
        fallback_fraction: float | None = None,
    ) -> None:
        if not isinstance(key, str) or not key:
            raise ValueError("key must be a non-empty string")
        _check_positive("qps", qps)
        _check_positive("redis_timeout", redis_timeout)
        _check_positive("retry_interval", retry_interval)
        if isinstance(utilization, bool) or not isinstance(utilization, (int, float)):
            raise TypeError(f"utilization must be a number, not {type(utilization).__name__}")
        if not 0 < utilization < 1:
            raise ValueError(f"utilization must be in (0, 1), got {utilization!r}")
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise ValueError(f"max_pending must be a positive integer, got {max_pending!r}")
        if fallback_fraction is not None:
            _check_positive("fallback_fraction", fallback_fraction)
            if fallback_fraction > 1:
                raise ValueError(f"fallback_fraction must be in (0, 1], got {fallback_fraction!r}")

        self._redis = redis
        self._key = key
        self._qps = float(qps)
        self._utilization = float(utilization)
        # Whole microseconds, rounded up: truncation in Lua must never shorten the spacing.
        self._interval_us = math.ceil(1_000_000 / (self._qps * self._utilization))
        self._redis_timeout = float(redis_timeout)
        self._retry_interval = float(retry_interval)
        self._fallback_fraction = fallback_fraction
        self._fallback = (
            None
            if fallback_fraction is None
            else LocalRateLimiter(self._qps * fallback_fraction, utilization=self._utilization)
        )
        # Never hold more Redis calls at once than the client's pool has connections:
        # beyond that redis-py fails the call ("Too many connections") instead of queueing.
        pool_size = getattr(getattr(redis, "connection_pool", None), "max_connections", None)
        if isinstance(pool_size, int) and pool_size > 0:
            max_pending = min(max_pending, pool_size)
        self._max_pending = max_pending
        self._pending = asyncio.Semaphore(max_pending)
        # register_script keeps the SHA, calls EVALSHA and re-loads the script on NOSCRIPT
        # (after a Redis restart or SCRIPT FLUSH).
        self._script: _Script = redis.register_script(_GCRA_SCRIPT)
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

    @property
    def qps(self) -> float:
        """The ceiling shared by every process using this key, in requests per second."""
        return self._qps

    @property
    def rate(self) -> float:
        """The sustained send rate of all processes together: ``utilization * qps``."""
        return self._qps * self._utilization

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
            RateLimiterUnavailable: Redis is unavailable and no fallback is configured.
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
                raise RateLimiterUnavailable(
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
        wait_us = await asyncio.wait_for(
            self._script([self._key], [self._interval_us]), self._redis_timeout
        )
        self._redis_seconds += time.perf_counter() - started
        self._reservations += 1
        return int(wait_us) / 1_000_000

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


def _describe(exc: BaseException) -> str:
    """Name a Redis failure for a message.

    redis-py's messages name the host and port, never the password; a URL is never
    formatted here, so nothing from the connection settings can leak.
    """
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
