"""A rate limiter shared through Redis by every process of one account.

:class:`RedisRateLimiter` keeps the account's one budget in one Redis key: an atomic Lua
script (GCRA on the Redis server's clock) hands out send slots at least ``1 / rate`` apart
to every process that shares the key. How it paces, why it is fair and bounded, what it does
when a connection breaks or Redis is down, and how the key is derived are explained in
``docs/design/redis-limiter.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

import attrs

try:
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.connection import ConnectionPool
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import NoScriptError, RedisError, ResponseError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "RedisRateLimiter needs the 'redis' package: pip install 'rtc-segment[redis]'"
    ) from exc

from ._backoff import SendCounter, ThrottleBackoff, ThrottleCause
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

#: The shared schedule and send log. KEYS[1]: the key (a hash). ARGV: the emission
#: interval, the sends allowed per window, the window, the lateness assumed for a send not
#: reported yet, and the newest slot this client has seen -- each in whole microseconds or
#: a count -- then pairs of (slot, lateness) reports for earlier sends. Returns the
#: reserved slot and the server's now, in microseconds of the Redis server's clock.
#:
#: Fields: ``tat`` the nominal next slot (GCRA), ``last`` the newest slot handed out,
#: ``floor`` the latest effective time among sends that left the log, ``log`` the last
#: ``limit`` slots with their lateness (-1: not reported yet) as "slot,late;...".
#: ``docs/design/redis-limiter.md`` gives the argument for the bound.
#:
#: Times are integers of microseconds (about 1.7e15 today: exact in Lua's doubles until
#: the year 2255) and are stored with %d, because Lua's own number formatting (%.14g)
#: would round them.
_GCRA_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local unreported = tonumber(ARGV[4])
local seen = tonumber(ARGV[5])
local state = redis.call('HMGET', KEYS[1], 'tat', 'last', 'floor', 'log')
local tat = tonumber(state[1]) or 0
local last = tonumber(state[2]) or 0
local floor = tonumber(state[3]) or 0
local slots, lates = {}, {}
if state[4] then
  for s, l in string.gmatch(state[4], '(%-?%d+),(%-?%d+)') do
    slots[#slots + 1] = tonumber(s)
    lates[#lates + 1] = tonumber(l)
  end
end
for k = 6, #ARGV - 1, 2 do
  local s, l = tonumber(ARGV[k]), tonumber(ARGV[k + 1])
  local found = false
  for i = #slots, 1, -1 do
    if slots[i] == s then lates[i] = l; found = true; break end
  end
  if not found and s <= last and (#slots == 0 or s < slots[1]) then
    floor = math.max(floor, s + l)
  end
end
local guess = unreported
for i = 1, #lates do guess = math.max(guess, lates[i]) end
if seen > last then
  -- This copy of the key missed writes (a replica promoted before it had them, a lost
  -- key): the last `limit` sends may all have gone at `seen`, `guess` late.
  floor = math.max(floor, seen + guess)
  last = seen
end
local bound = floor
if #slots >= limit then
  local late = lates[#slots - limit + 1]
  if late < 0 then late = guess end
  bound = math.max(bound, slots[#slots - limit + 1] + late)
end
local slot = math.max(tat, now, last)
if bound > 0 then slot = math.max(slot, bound + window) end
tat = math.max(tat, now, slot - 3 * interval) + interval
slots[#slots + 1] = slot
lates[#lates + 1] = -1
local first = #slots - limit + 1
if first < 1 then first = 1 end
for i = 1, first - 1 do
  local late = lates[i]
  if late < 0 then late = guess end
  floor = math.max(floor, slots[i] + late)
end
local parts = {}
for i = first, #slots do
  parts[#parts + 1] = string.format('%d,%d', slots[i], lates[i])
end
redis.call('HSET', KEYS[1], 'tat', string.format('%d', tat), 'last', string.format('%d', slot),
  'floor', string.format('%d', floor), 'log', table.concat(parts, ';'))
local ttl_ms = math.ceil((math.max(tat, slot) - now + window) / 1000) + 2000
redis.call('PEXPIRE', KEYS[1], ttl_ms)
return {slot, now}
"""

#: The name EVALSHA knows the script by: Redis computes the same SHA-1 of its text.
_GCRA_SHA = hashlib.sha1(_GCRA_SCRIPT.encode("utf-8"), usedforsecurity=False).hexdigest()

#: Reports of earlier sends carried by one reservation, at most (older ones wait for the
#: next; under load every reservation carries the one or two sends since the last).
_REPORTS_PER_RESERVATION = 16
#: Reports kept while no reservation carries them (a process that stopped sending).
_REPORTS_KEPT = 64
#: Reservations whose (ask, server clock) pairs bound this process's clock offset.
_OFFSET_SAMPLES = 64
#: Sends remembered for matching their round trips (observe_round_trip).
_GOES_KEPT = 256
#: How close (seconds) a round trip's start must be to a send's go to be that send's.
_ON_TIME = 1e-6
# A throttle reported within this many seconds of a round trip is that round trip's answer.
_SAME_STEP = 0.001

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
        fallback_fraction: ``None`` (the default): when Redis is unavailable, callers
            wait for it (see ``wait_for_redis``) and nothing is sent meanwhile. A fraction
            in (0, 1] paces this instance locally at ``fallback_fraction * qps`` during the
            outage instead, with one warning per outage. Keep it at or below one over the
            number of processes sharing the key.
        wait_for_redis: How long (seconds) one acquisition waits for an unavailable Redis
            to come back -- a failover, a restart -- before it raises
            :class:`~rtc_segment.RateLimiterUnavailableError`. A call's own deadline cuts
            the wait shorter. ``0`` raises at once (before 0.3, the only behaviour).
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
        retry_interval: float = 0.25,
        fallback_fraction: float | None = None,
        wait_for_redis: float = 10.0,
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
        check_number("wait_for_redis", wait_for_redis)
        if wait_for_redis < 0:
            raise ValueError(f"wait_for_redis must be at least 0, got {wait_for_redis!r}")
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
        # Lowers this process's rate while throttles show that someone the limiter cannot
        # see uses the quota (_backoff; adaptive limiters only, as LocalRateLimiter's).
        self._backoff = ThrottleBackoff(self._qps)
        self._recent = SendCounter()
        self._backing_off = False
        # (when the request went, when its answer came) of the latest round trip reported:
        # the caller reports a throttled answer's round trip just before the throttle.
        self._answered: tuple[float, float] | None = None
        # The send log in Redis allows `limit` sends per `unit` second plus lateness: qps
        # per second, or one per 1 / qps seconds below 1 QPS (as LocalRateLimiter's).
        self._limit = max(1, math.floor(self._qps))
        self._unit = max(1.0, 1.0 / self._qps)
        # This process's sends: when each went (loop clock), its slot, how late after it.
        self._goes: deque[_Go] = deque(maxlen=_GOES_KEPT)
        # (slot, lateness) reports waiting for the next reservation to carry them.
        self._reports: deque[tuple[int, int]] = deque(maxlen=_REPORTS_KEPT)
        # Lower and upper bounds of (this loop's clock - Redis's clock), one per
        # reservation: the script ran after it was asked and before its answer came.
        self._offsets: deque[float] = deque(maxlen=_OFFSET_SAMPLES)
        self._offsets_above: deque[float] = deque(maxlen=_OFFSET_SAMPLES)
        # The newest slot this instance was handed (Redis microseconds; 0: none yet).
        self._newest_seen = 0
        self._wait_for_redis = float(wait_for_redis)
        self._outage_changed: asyncio.Event | None = None
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
        pool_size = None if pool is None else getattr(pool, "max_connections", None)
        if isinstance(pool_size, int) and pool_size > 0:
            max_pending = min(max_pending, pool_size)
        self._max_pending = max_pending
        self._pending = asyncio.Semaphore(max_pending)
        self._pool = pool
        # Typed here: redis-py leaves get_connection unannotated.
        self._get_connection: Callable[..., Awaitable[AbstractConnection]] | None = (
            None if pool is None else pool.get_connection
        )
        self._checkout_args = () if pool is None else _checkout_args(pool)
        # A cluster client's first reservation goes alone (see _reserve_slot).
        self._cluster_ready = False
        self._cluster_first = asyncio.Lock()
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

        ``rtc_segment:ratelimit:{<fingerprint>}:<action>``: the fingerprint is the first
        16 hex digits of the SHA-256 of the access key id, so the key identifies the
        account without revealing anything about its credentials. The braces make it a
        Redis Cluster hash tag: every action key of one account hashes to one slot.
        """
        fingerprint = getattr(credentials, "account_fingerprint", None)
        if not isinstance(fingerprint, str):
            digest = hashlib.sha256(credentials.access_key_id.encode("utf-8")).hexdigest()
            fingerprint = digest[:16]
        # The fingerprint is a hash tag: on a Redis Cluster every action key of an account
        # lives on one node (its slot is the tag's).
        return f"{_KEY_PREFIX}{{{fingerprint}}}:{action}"

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
            wait_for_redis=self._wait_for_redis,
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
        (``utilization * qps`` when fixed; below ``qps`` by the learnt margin otherwise,
        and lower still while throttles show that someone else uses the quota)."""
        if self._backing_off:
            self._repace()
        return self._rate

    @property
    def adaptive(self) -> bool:
        """Whether the spacing follows the observed path (``utilization=None``)."""
        return self._utilization is None

    def observe_round_trip(self, seconds: float) -> None:
        """Feedback from a client: one request took ``seconds`` from its turn to its answer.

        The send it belongs to (matched by when it went) is reported to Redis again with
        the lateness its round trip proves, in place of the spread assumed until now.
        """
        if self._utilization is None:
            now = _loop_time()
            started = now - seconds
            self._answered = (started, now)
            for go in reversed(self._goes):
                if go.at <= started + _ON_TIME and not go.answered:
                    go.answered = True
                    # From the limiter's own go, not the client's turn: a process
                    # descheduled between the two delays the send unseen otherwise.
                    from_go = max(seconds, now - go.at)
                    jitter = self._margin.margin_for(from_go, time.monotonic())
                    if self._margin.spread is None:
                        # The fastest round trip is not known yet (the first 16, which open
                        # connections and are the slowest): the whole round trip bounds
                        # how much later than the fastest this one can have arrived.
                        jitter = max(jitter, from_go)
                    late = go.late + jitter * self._unit
                    self._reports.append((go.slot, _whole_us(late)))
                    break
            if self._margin.record(seconds):
                self._repace()

    def observe_throttle(self) -> None:
        """Feedback from a client: the service said the quota was exceeded.

        A stray throttle while this process sends at full pace widens its margin; throttles
        that persist, or come while it sends well below the ceiling, show that someone the
        shared key does not pace uses the quota, and lower this process's rate until they
        stop (``_backoff.ThrottleBackoff``, as :class:`LocalRateLimiter` does).
        """
        if self._utilization is None:
            now = _loop_time()
            answered, self._answered = self._answered, None
            sent = answered[0] if answered is not None and now - answered[1] < _SAME_STEP else None
            verdict = self._backoff.on_throttle(now, self._recent.count(now), sent)
            if verdict is ThrottleCause.OWN_PACING:
                self._margin.throttled(time.monotonic())
            self._repace()

    def _repace(self) -> None:
        margin = self._margin.pace(time.monotonic())
        rate = paced_rate(self._qps, margin)
        cap = self._backoff.rate(_loop_time()) if self._utilization is None else None
        self._backing_off = cap is not None
        self._rate = rate if cap is None else min(rate, cap)
        self._interval_us = _interval_us(self._rate)

    async def _hold_backed_off_rate(self) -> None:
        """While backing off: keep this process's sends to the lowered rate in every
        sliding second, not only on average (right after a cut, the server's window still
        holds the old rate's arrivals)."""
        while self._backing_off:
            self._repace()  # the rate climbs with time alone
            cap = self._backoff.rate(_loop_time())
            if cap is None:
                return
            wait = self._recent.wait(_loop_time(), cap)
            if wait <= 0:
                return
            await asyncio.sleep(wait)

    def _arrival_margin(self) -> float:
        """The jitter allowed for a send whose round trip is not known (seconds)."""
        if self._utilization is None:
            return self._margin.margin(time.monotonic()) * self._unit
        return self._unit * (1 / self._utilization - 1)

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

        While Redis is unavailable (and no ``fallback_fraction`` is set) this waits for it,
        up to ``wait_for_redis`` seconds; a call's deadline may cancel the wait sooner.

        Raises:
            RateLimiterUnavailableError: Redis stayed unavailable for ``wait_for_redis``
                seconds and no fallback is configured. Nothing may be sent.
        """
        gave_up_at: float | None = None
        await self._hold_backed_off_rate()
        while True:
            if self._redis_usable():
                async with self._pending:
                    # Re-checked: the state may have changed while this caller was queued.
                    probe = self._retry_at != 0.0
                    if not probe or self._redis_usable():
                        # During an outage one caller at a time probes Redis; the others
                        # wait, fail fast or pace locally instead of each waiting out a
                        # timeout.
                        self._probing = probe
                        try:
                            slot, wait = await self._reserve()
                        except _REDIS_FAILURES as exc:
                            self._enter_outage(exc)
                        else:
                            self._leave_outage()
                            if wait > 0:
                                # Waiting while holding the semaphore bounds how far ahead
                                # this instance reserves: fairness, and at most one slot
                                # lost per cancelled caller.
                                await asyncio.sleep(wait)
                            self._went(slot)
                            return
                        finally:
                            if probe:
                                self._probing = False
                                self._outage_news()
            if self._fallback is None:
                now = time.monotonic()
                if gave_up_at is None:
                    gave_up_at = now + self._wait_for_redis
                if now >= gave_up_at:
                    raise RateLimiterUnavailableError(
                        f"the shared rate limiter could not reach Redis ({self._last_failure}) "
                        f"within wait_for_redis={self._wait_for_redis:g} s; "
                        "the request was not sent"
                    )
                await self._await_outage_news(min(gave_up_at, self._next_probe(now)) - now)
                continue
            await self._fallback.acquire()
            if not self._redis_usable():
                self._fallback_acquisitions += 1
                return
            # Redis is back, or due to be probed: use it rather than send beside callers
            # that it may already be pacing again.

    def _next_probe(self, now: float) -> float:
        """When a waiter should look at Redis again (monotonic seconds)."""
        if self._retry_at == 0.0:
            return now
        if self._probing:  # its end is news (see _outage_news); this is a backstop
            return now + self._redis_timeout
        return max(now, self._retry_at)

    async def _await_outage_news(self, timeout: float) -> None:
        """Wait until a probe ends or ``timeout`` seconds pass."""
        if timeout <= 0:
            await asyncio.sleep(0)
            return
        if self._outage_changed is None:
            self._outage_changed = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._outage_changed.wait(), timeout)

    def _outage_news(self) -> None:
        """A probe ended (Redis back, or still away): wake the waiters to look again."""
        if self._outage_changed is not None:
            self._outage_changed.set()
            self._outage_changed = None

    def _went(self, slot_us: int) -> None:
        """A send goes now, for ``slot_us``: note how late after its slot, for Redis.

        On the Redis server's clock it goes at the latest at ``now - offset``, ``offset``
        being the largest lower bound of (this clock - Redis's) seen lately: a script ran
        after its reservation was asked. The report (slot, lateness plus the arrival jitter
        allowed until the round trip is known) rides on this process's next reservation.
        """
        now = _loop_time()
        self._recent.record(now)
        offset = max(self._offsets) if self._offsets else now - slot_us / 1_000_000
        late = max(0.0, now - offset - slot_us / 1_000_000)
        self._goes.append(_Go(now, slot_us, late))
        self._reports.append((slot_us, _whole_us(late + self._arrival_margin())))

    def _redis_usable(self) -> bool:
        """Healthy, or in an outage whose retry time has come and nobody is probing."""
        if self._retry_at == 0.0:
            return True
        return not self._probing and time.monotonic() >= self._retry_at

    async def _reserve(self) -> tuple[int, float]:
        """Reserve the next slot: one atomic round trip. Returns the slot (Redis
        microseconds) and the wait before it (seconds)."""
        started = time.perf_counter()
        reports = [
            self._reports.popleft()
            for _ in range(min(len(self._reports), _REPORTS_PER_RESERVATION))
        ]
        arguments: list[int] = [
            self._interval_us,
            self._limit,
            _whole_us(self._unit),
            _whole_us(self._arrival_margin()),
            self._newest_seen,
        ]
        for slot, late in reports:
            arguments += (slot, late)
        asked = _loop_time()
        try:
            slot_us, now_us = await asyncio.wait_for(
                self._reserve_slot(arguments), self._redis_timeout
            )
        except BaseException:
            # Not known to have reached Redis: the next reservation carries them again
            # (a report applied twice changes nothing).
            self._reports.extendleft(reversed(reports))
            raise
        self._redis_seconds += time.perf_counter() - started
        self._reservations += 1
        answered = _loop_time()
        self._offsets.append(asked - now_us / 1_000_000)
        self._offsets_above.append(answered - now_us / 1_000_000)
        self._newest_seen = max(self._newest_seen, slot_us)
        # The send goes when the slot comes on this clock, by the least upper bound of
        # the offset: never before the slot, and without the answer's way back (waiting
        # `slot - now` from the answer would add it to every send's lateness).
        due = slot_us / 1_000_000 + min(self._offsets_above)
        return slot_us, due - answered

    async def _reserve_slot(self, arguments: list[int]) -> tuple[int, int]:
        """Run the script; if the connection broke, once more on a new connection.

        The retry is ours, whatever the client's retry settings (see the design notes):
        a Redis restart leaves every pooled connection dead, and the first command on one
        fails. The retry reuses the same, now disconnected, connection object, so it always
        runs on a new connection, never on another dead one from the pool. If the script
        ran before the answer was lost, that slot stays unused and the retry reserves
        another: at most one slot lost, never a send without a slot.

        A cluster client has no one pool: the command goes through its command API, which
        routes it to the node holding the key's slot and follows MOVED/ASK redirections.
        """
        if self._get_connection is None:
            return await self._reserve_on_cluster(cast("RedisCluster", self._redis), arguments)
        connection = await self._get_connection(*self._checkout_args)
        try:
            try:
                return await _run_script(connection, self._key, arguments)
            except _CONNECTION_LOST:
                return await _run_script(connection, self._key, arguments)
        finally:
            assert self._pool is not None
            await self._pool.release(connection)

    async def _reserve_on_cluster(
        self, cluster: RedisCluster, arguments: list[int]
    ) -> tuple[int, int]:
        """Run the script through a cluster client; if the client broke, once more.

        The first reservation goes alone, the others wait for it: it settles the client's
        view of which node holds the key. redis-py's cluster client closes *every*
        connection after a few MOVED answers (``reinitialize_steps``) -- under the
        commands other callers have in flight, which then fail inside redis-py -- and a
        burst of first reservations routed by a stale view met exactly that (1 key in 600
        lost in 2 of 3 runs of ``benchmarks/shared_limiter.py --scenarios cluster``).
        Such a failure, or a broken connection, is retried once, as on a single server.
        """
        if not self._cluster_ready:
            async with self._cluster_first:
                if not self._cluster_ready:
                    answer = await _retried_once(cluster, self._key, arguments)
                    self._cluster_ready = True
                    return answer
        return await _retried_once(cluster, self._key, arguments)

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


async def _run_script(
    connection: AbstractConnection, key: str, arguments: list[int]
) -> tuple[int, int]:
    """One reservation on ``connection``: EVALSHA, or EVAL if Redis lacks the script.

    The command goes to the connection directly, not through ``Redis.evalsha``, so that
    redis-py's own retries (none in 5.0; three after random sleeps of up to seconds from
    6.0 on) never decide how a broken connection is handled. A connection that is not
    connected connects when the command is sent.
    """
    try:
        try:
            await connection.send_command("EVALSHA", _GCRA_SHA, 1, key, *arguments)
            answer = await connection.read_response()
        except NoScriptError:
            # After a restart or SCRIPT FLUSH. EVAL runs the script and caches it again.
            await connection.send_command("EVAL", _GCRA_SCRIPT, 1, key, *arguments)
            answer = await connection.read_response()
    except ResponseError:
        raise  # an error answer was read in full: the connection is still in step
    except BaseException:
        # Interrupted mid-exchange (a broken connection, our deadline, a cancellation): an
        # answer may still be on its way, and the next command must never read it.
        await connection.disconnect(nowait=True)
        raise
    return _slot_and_now(answer)


async def _retried_once(cluster: RedisCluster, key: str, arguments: list[int]) -> tuple[int, int]:
    """:func:`_run_script_on_cluster`, once more if the connection or the client broke.

    If the script ran before the answer was lost, that slot stays unused: at most one slot
    lost, never a send without a slot (as on a single server).
    """
    try:
        return await _run_script_on_cluster(cluster, key, arguments)
    except _CONNECTION_LOST:
        return await _run_script_on_cluster(cluster, key, arguments)


async def _run_script_on_cluster(
    cluster: RedisCluster, key: str, arguments: list[int]
) -> tuple[int, int]:
    """One reservation through a cluster client's command API (it routes the key to its
    node and follows MOVED/ASK redirections; its own retry settings apply here).

    An ``AttributeError`` or ``TypeError`` raised inside redis-py is the client breaking
    under a command in flight (a connection it closed for a topology refresh: its
    ``_writer`` is gone); it is reported as a lost connection, not as a caller's bug.
    """
    try:
        run = cast("Callable[..., Awaitable[Any]]", cluster.evalsha)
        try:
            answer = await run(_GCRA_SHA, 1, key, *arguments)
        except NoScriptError:
            # A node that never ran it (new, restarted, or just handed the key).
            answer = await cast("Callable[..., Awaitable[Any]]", cluster.eval)(
                _GCRA_SCRIPT, 1, key, *arguments
            )
    except (AttributeError, TypeError) as exc:
        if not _raised_inside_redis(exc):
            raise
        raise RedisConnectionError(
            f"the cluster client broke under the command ({type(exc).__name__}: {exc})"
        ) from exc
    return _slot_and_now(answer)


def _raised_inside_redis(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by redis-py's code or by the asyncio transport under it
    (its innermost frame): e.g. ``'NoneType' object has no attribute 'writelines'`` from a
    connection closed under a command, or ``'NoneType' object is not callable`` from its
    transport (redis/redis-py#3546)."""
    traceback = exc.__traceback__
    if traceback is None:
        return False
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    module = traceback.tb_frame.f_globals.get("__name__", "")
    return isinstance(module, str) and module.partition(".")[0] in ("redis", "asyncio")


def _slot_and_now(answer: Any) -> tuple[int, int]:
    slot_us, now_us = answer
    return int(slot_us), int(now_us)


def _connection_pool(redis: object) -> ConnectionPool | None:
    """The asyncio connection pool of ``redis`` (``None`` for a cluster client), or a
    TypeError naming the argument."""
    if isinstance(redis, RedisCluster):
        return None
    pool = getattr(redis, "connection_pool", None)
    if not isinstance(pool, ConnectionPool):
        raise TypeError(
            "redis must be a redis.asyncio.Redis client (with a connection pool; "
            "Sentinel.master_for gives one) or a redis.asyncio.RedisCluster, "
            f"not {type(redis).__module__}.{type(redis).__qualname__}"
        )
    return pool


def _checkout_args(pool: ConnectionPool) -> tuple[str, ...]:
    """The arguments ``pool.get_connection`` takes: a command name before redis-py 5.3,
    which requires one, and nothing from 5.3 on, which deprecates it."""
    parameter = inspect.signature(pool.get_connection).parameters.get("command_name")
    required = parameter is not None and parameter.default is inspect.Parameter.empty
    return ("EVALSHA",) if required else ()


@attrs.define
class _Go:
    """One send of this process: when it went (loop clock), its slot, how late after it."""

    at: float
    slot: int
    late: float
    answered: bool = False


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


def _whole_us(seconds: float) -> int:
    """Seconds as whole microseconds, rounded up: a lateness is never understated."""
    return math.ceil(seconds * 1_000_000)


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
