"""RedisRateLimiter against a real redis-server.

These run in real time (Redis's clock cannot be virtualised), so each uses a high ``qps``
to fit a few hundred acquisitions into about a second. Without redis-server installed
they skip -- except in CI (``CI=true``), where a missing server is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import multiprocessing
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import port_for
import pytest
import redis as redis_py
from _loop_lag import LoopLag
from _short_paths import short_directory
from pytest_redis.executor import RedisExecutor
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ConstantBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from rtc_segment._backoff import KEEP, PLATEAU
from rtc_segment._credentials import Credentials
from rtc_segment._errors import RateLimiterUnavailableError
from rtc_segment._limiting import CATCH_UP, RateLimiter
from rtc_segment._redis import RedisRateLimiter
from rtc_segment.testing import max_in_window

REDIS_SERVER = shutil.which("redis-server")
MISSING_SERVER = (
    "redis-server is not installed (e.g. `apt-get install redis-server`); "
    "the RedisRateLimiter tests need a real server"
)


def require_redis_server() -> str:
    """The redis-server path; skip without one, but fail in CI where it must exist."""
    if REDIS_SERVER is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{MISSING_SERVER}, and CI=true: in CI this is a failure", pytrace=False)
        pytest.skip(MISSING_SERVER)
    return REDIS_SERVER


PRIVATE_PASSWORD = "hunter2-not-for-logs"


def start_redis_server(datadir: Path, password: str | None = None) -> RedisExecutor:
    """A redis-server (the one on PATH) on a free loopback port, started."""
    server = RedisExecutor(
        executable=require_redis_server(),
        databases=1,
        redis_timeout=15,
        loglevel="warning",
        host="127.0.0.1",
        port=port_for.select_random(),
        password=password,
        datadir=datadir,
    )
    server.start()
    return server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisExecutor]:
    """The session's redis-server, shared by the tests that do not stop it."""
    # Its unix socket lives in its data directory: a short path, wherever the clone is.
    with short_directory("rtcs-redis-") as datadir:
        server = start_redis_server(datadir)
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
async def redis(redis_server: RedisExecutor) -> AsyncIterator[Redis]:
    """A client of the session's server, with an empty database."""
    client = Redis(host=redis_server.host, port=redis_server.port)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
def private_server() -> Iterator[RedisExecutor]:
    """A redis-server of this test alone, which the test may stop, pause or restart."""
    with short_directory("rtcs-redis-") as datadir:
        server = start_redis_server(datadir, password=PRIVATE_PASSWORD)
        try:
            yield server
        finally:
            if server.process is not None:
                # A paused server cannot stop; let it run again first.
                os.kill(server.process.pid, signal.SIGCONT)
            server.stop()


def private_client(server: RedisExecutor, **kwargs: Any) -> Redis:
    return Redis(host=server.host, port=server.port, password=PRIVATE_PASSWORD, **kwargs)


# Release times are read off this process's event loop right after acquire() returns, with
# nothing in between: they are the send times the limiter itself measures and reports to
# Redis. A stall of the test process the limiter has not heard of yet (a busy machine, a
# collection of the test session's heap) can still squeeze releases a second apart closer
# than the limiter allowed for: the ceiling is checked over windows shortened by how late
# the loop ran (tests/_loop_lag.py), which only a stalled machine makes more lenient.
def assert_uses_most_of(
    times: list[float],
    qps: float,
    lag: LoopLag,
    fraction: float = 0.4,
    *,
    limiters: Sequence[RedisRateLimiter] = (),
) -> None:
    """At least 40 % of what the limiter could send was sent while this process could run.

    A floor for what real time can show on a loaded machine: a limiter that stops, or
    leaks the permits of its pending reservations until it crawls, fails it. The pace
    itself is checked exactly in virtual time (``tests/test_redis_virtual.py``: the
    interval each reservation asks for, when each send goes); these real-time tests are
    for the bound, where requests arrive. (Beside two CPU hogs and five other busy
    processes, a correct limiter measured 0.85-1.2 of this "could" and one 30 % too slow
    0.75-1.1; with two hogs in the tests' own scheduling group, a correct one measured
    0.58 once: the test process itself gets too little CPU to reserve 200 slots a second.)

    What it could send is ``qps``, or less when Redis answered too slowly for it: each
    limiter has at most ``max_pending`` reservations in flight, so it cannot reserve more
    than ``max_pending / mean round trip`` slots a second (a redis-server starved of CPU
    beside two hogs answered in 100 ms: 100 a second for 10 in flight). The time the event
    loop was stalled (a busy machine descheduling the test) is not counted against the
    limiter either. Both are one-sided: a slower machine only makes the check more lenient.
    """
    ordered = sorted(times)
    span = ordered[-1] - ordered[0]
    running = max(span - lag.lost, 1e-9)
    could = qps
    if limiters:
        could = min(qps, sum(_redis_bound_rate(limiter) for limiter in limiters))
    sent = (len(ordered) - 1) / running
    assert sent >= fraction * could, (len(ordered), span, lag.lost, could)


def _redis_bound_rate(limiter: RedisRateLimiter) -> float:
    """How many slots a second ``limiter`` can reserve, given how fast Redis answered."""
    round_trip = limiter.stats.mean_round_trip
    return math.inf if round_trip <= 0 else limiter._max_pending / round_trip


def max_in_second(times: list[float], lag: LoopLag) -> int:
    """The most releases in any sliding second, allowing for how late the loop ran."""
    return max_in_window(times, seconds=lag.window())


async def acquire_all(limiter: RedisRateLimiter, count: int) -> list[float]:
    """Start ``count`` concurrent acquirers; return each one's release time (monotonic)."""
    released: list[float] = []

    async def one() -> None:
        await limiter.acquire()
        released.append(time.monotonic())

    await asyncio.gather(*(one() for _ in range(count)))
    return released


def rate(times: list[float]) -> float:
    times = sorted(times)
    return (len(times) - 1) / (times[-1] - times[0])


# --- construction and the key ------------------------------------------------------


async def test_is_a_rate_limiter_with_the_given_ceiling(redis: Redis) -> None:
    limiter = RedisRateLimiter(redis, key="k", qps=60.0)
    assert isinstance(limiter, RateLimiter)
    assert limiter.qps == 60.0
    assert limiter.adaptive
    # Before any round trip is known: 8 ms of margin, about 0.1's 1 %.
    assert limiter.rate == pytest.approx(60 / 1.008, rel=1e-5)
    assert limiter.key == "k"
    fixed = RedisRateLimiter(redis, key="k", qps=60.0, utilization=0.99)
    assert fixed.rate == pytest.approx(59.4)
    assert not fixed.adaptive


async def test_the_spacing_follows_this_processs_round_trips_and_throttles(
    redis: Redis,
) -> None:
    limiter = RedisRateLimiter(redis, key="adaptive", qps=100.0)
    for i in range(32):  # round trips spread over 20 ms
        limiter.observe_round_trip(0.05 + 0.02 * (i % 11) / 10)
    # The spacing allows for a typical request (the mean round trip above the fastest,
    # plus 2 ms); the send log in Redis gives each late one its own window.
    samples = [0.05 + 0.02 * (i % 11) / 10 for i in range(32)]
    typical = sum(samples) / len(samples) - min(samples) + 0.002
    assert limiter.rate == pytest.approx(100 / (1 + typical), rel=1e-4)
    # A throttle while this process sends at full pace (two thirds of the ceiling or more
    # in the last second) may be its own margin proving thin: the margin widens.
    loop = asyncio.get_running_loop()
    started = loop.time()
    sent: list[float] = []
    while loop.time() - started < 0.8:
        await limiter.acquire()
        sent.append(loop.time())
    limiter.observe_throttle()
    widened = limiter.rate
    if sum(1 for t in sent if t > loop.time() - 1.0) >= 2 / 3 * 100:
        assert 0.9 * 100 / (1 + typical) < widened < 100 / (1 + typical)
    else:
        # A machine too busy to send at full pace: the same throttle, below two thirds of
        # the ceiling, says someone else uses the quota, and the rate is cut instead.
        assert widened < 2 / 3 * 100
    # The spacing Redis applies is the process's own: two back-to-back reservations are
    # one interval of the widened rate apart on Redis's clock.
    await limiter.acquire()
    first = await next_slot(redis, limiter.key)
    await limiter.acquire()
    second = await next_slot(redis, limiter.key)
    # (At least: a reservation that reaches Redis after its slot, on a busy machine,
    # starts the schedule from then.)
    assert second - first >= math.ceil(1_000_000 / widened)
    # A fixed utilization ignores feedback.
    fixed = RedisRateLimiter(redis, key="fixed", qps=100.0, utilization=0.99)
    fixed.observe_throttle()
    fixed.observe_round_trip(0.5)
    assert fixed.rate == pytest.approx(99.0)


async def test_throttles_while_sending_well_below_the_ceiling_lower_the_rate(
    redis: Redis,
) -> None:
    # Ten sends, then a throttle: this process cannot have overfilled a second on its own,
    # so someone the shared key does not pace uses the quota (_backoff).
    limiter = RedisRateLimiter(redis, key="backoff", qps=100.0)
    for _ in range(10):
        await limiter.acquire()
    limiter.observe_throttle()
    assert limiter.rate == pytest.approx(KEEP * 10, rel=1e-3)  # (already climbing)
    loop = asyncio.get_running_loop()
    cut_at = loop.time()
    sends = []
    while (now := loop.time()) - cut_at < 1.0:
        await limiter.acquire()
        sends.append(now)
    # The lowered rate holds in every second of this process's sends (the ten before the
    # cut count too), however fast Redis hands out slots: a limiter that ignored the
    # backoff would send about 99 here.
    assert len(sends) <= PLATEAU * 10
    # It climbs back towards the ceiling with time alone.
    assert limiter.rate > KEEP * 10


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"qps": 0}, ValueError),
        ({"qps": float("inf")}, ValueError),
        ({"qps": "60"}, TypeError),
        ({"utilization": 1.0}, ValueError),
        ({"max_pending": 0}, ValueError),
        ({"redis_timeout": -1}, ValueError),
        ({"fallback_fraction": 1.5}, ValueError),
        ({"fallback_fraction": 0}, ValueError),
        ({"key": ""}, ValueError),
    ],
)
async def test_rejects_invalid_settings(
    redis: Redis, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    settings: dict[str, Any] = {"key": "k", **kwargs}
    with pytest.raises(error):
        RedisRateLimiter(redis, **settings)


@pytest.mark.parametrize("client", [redis_py.Redis(), object(), None])
def test_rejects_a_client_that_is_not_an_asyncio_redis_client(client: object) -> None:
    with pytest.raises(TypeError, match=r"redis must be a redis\.asyncio\.Redis client"):
        RedisRateLimiter(client, key="k")  # type: ignore[arg-type]


def test_key_identifies_the_account_and_action_without_revealing_credentials() -> None:
    credentials = Credentials("AKLTexampleaccesskeyid", "c2VjcmV0LXNlY3JldC1zZWNyZXQ=", "tok")
    key = RedisRateLimiter.key_for(credentials)
    assert key == f"rtc_segment:ratelimit:{{{credentials.account_fingerprint}}}:GetSegmentTask"
    for secret_part in ("AKLTexampleaccesskeyid", "c2VjcmV0", "tok"):
        assert secret_part not in key
    # Same account, other secret (a rotated key): same budget; other account: another.
    assert RedisRateLimiter.key_for(Credentials("AKLTexampleaccesskeyid", "other")) == key
    assert RedisRateLimiter.key_for(Credentials("AKLTanotheraccount", "s")) != key
    assert RedisRateLimiter.key_for(credentials, "StartSegment").endswith(":StartSegment")


async def test_other_actions_share_the_account_key_scheme(redis: Redis) -> None:
    from rtc_segment import SegmentClient

    credentials = Credentials("AKLTexampleaccesskeyid", "secret")
    limiter = RedisRateLimiter(redis, key=RedisRateLimiter.key_for(credentials), qps=60)
    stop = limiter.for_action("StopSegment", 150.0)
    assert stop.key == RedisRateLimiter.key_for(credentials, "StopSegment")
    assert stop.qps == 150.0
    custom = RedisRateLimiter(redis, key="team-a", qps=60).for_action("StartSegment", 60.0)
    assert custom.key == "team-a:StartSegment"
    client = SegmentClient(credentials, limiter=limiter)
    keys = {name: lim.key for name, lim in client._limiters.items()}  # type: ignore[attr-defined]
    assert keys == {
        name: RedisRateLimiter.key_for(credentials, name)
        for name in ("GetSegmentTask", "StartSegment", "UpdateSegment", "StopSegment")
    }
    await client.aclose()


def test_key_is_derived_from_the_access_key_id_for_any_credentials_object() -> None:
    class KeyIdOnly:
        access_key_id = "AKLTexampleaccesskeyid"

    real = Credentials("AKLTexampleaccesskeyid", "secret")
    assert RedisRateLimiter.key_for(KeyIdOnly()) == RedisRateLimiter.key_for(real)


async def test_redis_holds_nothing_but_times(redis: Redis) -> None:
    credentials = Credentials("AKLTexampleaccesskeyid", "the-secret-key", "the-token")
    limiter = RedisRateLimiter(redis, key=RedisRateLimiter.key_for(credentials), qps=500)
    await acquire_all(limiter, 5)
    keys = await redis.keys("*")
    assert keys == [limiter.key.encode()]
    state = await redis.hgetall(limiter.key)
    assert set(state) == {b"tat", b"last", b"floor", b"log"}
    for field in (b"tat", b"last", b"floor"):
        assert state[field].isdigit()
    assert all(ch in b"0123456789,;-" for ch in state[b"log"])
    assert 0 < await redis.pttl(limiter.key) <= 3100  # idle keys expire


# --- the ceiling, utilisation, sharing, fairness -----------------------------------


async def test_no_sliding_second_exceeds_the_ceiling_and_most_is_used(
    redis: Redis, loop_lag: LoopLag
) -> None:
    qps = 200.0
    # A generous redis_timeout: a redis-server starved of CPU may answer a reservation
    # after the default second, which counts as a failure (an outage) -- not this test's.
    limiter = RedisRateLimiter(redis, key="ceiling", qps=qps, redis_timeout=30.0)
    released = await acquire_all(limiter, 360)
    assert max_in_second(released, loop_lag) <= qps
    assert_uses_most_of(released, qps, loop_lag, limiters=[limiter])
    assert limiter.stats.reservations == 360
    assert limiter.stats.failures == 0


async def test_limiters_on_one_key_share_one_ceiling_fairly(
    redis_server: RedisExecutor, loop_lag: LoopLag
) -> None:
    qps = 300.0
    clients = [Redis(host=redis_server.host, port=redis_server.port) for _ in range(2)]
    try:
        first, second = (RedisRateLimiter(c, key="shared", qps=qps) for c in clients)
        first_times, second_times = await asyncio.gather(
            acquire_all(first, 300), acquire_all(second, 300)
        )
    finally:
        for client in clients:
            await client.aclose()
    everything = first_times + second_times
    assert max_in_second(everything, loop_lag) <= qps
    assert_uses_most_of(everything, qps, loop_lag, limiters=[first, second])
    # Fair: while both had work, each got about half of the slots.
    both_busy_until = min(max(first_times), max(second_times))
    first_share = sum(t <= both_busy_until for t in first_times)
    second_share = sum(t <= both_busy_until for t in second_times)
    assert 0.45 <= first_share / (first_share + second_share) <= 0.55


async def test_limiters_on_other_keys_do_not_share(redis: Redis, loop_lag: LoopLag) -> None:
    qps = 200.0
    first = RedisRateLimiter(redis, key="account-a", qps=qps)
    second = RedisRateLimiter(redis, key="account-b", qps=qps)
    first_times, second_times = await asyncio.gather(
        acquire_all(first, 150), acquire_all(second, 150)
    )
    assert_uses_most_of(first_times, qps, loop_lag, limiters=[first])
    assert_uses_most_of(second_times, qps, loop_lag, limiters=[second])


async def test_more_waiters_than_the_connection_pool_all_succeed(
    redis_server: RedisExecutor, loop_lag: LoopLag
) -> None:
    qps = 500.0
    # (redis-py 8 times a read out after 5 s by default; beside two CPU hogs all ten
    # reservations in flight once did, which is an outage the limiter rides out, not the
    # pool running out, which this test is about.)
    client = Redis(
        host=redis_server.host, port=redis_server.port, max_connections=10, socket_timeout=30
    )
    try:
        # max_pending above the pool size is capped to it; 500 waiters queue locally.
        # (A generous redis_timeout: a starved redis-server's slow answer is no failure
        # here; the pool running out would be one at once.)
        limiter = RedisRateLimiter(client, key="crowd", qps=qps, max_pending=64, redis_timeout=30.0)
        released = await acquire_all(limiter, 500)
    finally:
        await client.aclose()
    assert len(released) == 500
    assert limiter.stats.failures == 0, limiter._last_failure
    assert max_in_second(released, loop_lag) <= qps
    assert "max_pending=10" in repr(limiter)


async def test_cancelled_waiters_lose_at_most_their_own_slots(
    redis: Redis, loop_lag: LoopLag
) -> None:
    qps = 100.0
    limiter = RedisRateLimiter(redis, key="cancel", qps=qps, max_pending=8)
    released: list[float] = []
    first_release = asyncio.Event()

    async def one() -> None:
        await limiter.acquire()
        released.append(time.monotonic())
        first_release.set()

    tasks = [asyncio.create_task(one()) for _ in range(40)]
    await first_release.wait()
    waiting = [task for task in tasks if not task.done()]
    for task in waiting:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    cancelled_at = time.monotonic()
    assert waiting and all(task.cancelled() for task in waiting)

    # The shared schedule is intact: the next slot is no further away than the slots
    # that were held when the waiters were cancelled (at most max_pending of them).
    redis_now_s, redis_now_us = await redis.time()
    next_slot_us = await next_slot(redis, "cancel")
    backlog = (next_slot_us - (redis_now_s * 1_000_000 + redis_now_us)) / 1_000_000
    assert backlog <= 8 / limiter.rate + 0.05

    # Nothing leaked locally: the limiter keeps its full pace for new callers.
    later = await acquire_all(limiter, 60)
    assert len(later) == 60
    assert min(later) - cancelled_at <= backlog + 0.1
    # A leaked permit would slow the pace to a crawl or stop it; 60 sends are a short
    # sample, so the floor here is lower.
    assert_uses_most_of(later, qps, loop_lag, fraction=0.3, limiters=[limiter])
    assert max_in_second(released + later, loop_lag) <= qps


# --- scripts and failures --------------------------------------------------------------


async def test_script_is_reloaded_after_script_flush(redis: Redis) -> None:
    limiter = RedisRateLimiter(redis, key="flush", qps=500)
    await limiter.acquire()
    await redis.script_flush()
    await limiter.acquire()
    assert limiter.stats.reservations == 2
    assert limiter.stats.failures == 0


#: Client retry settings the limiter must not depend on: none at all (redis-py 5.0's
#: default), redis-py's default of the installed version, and a retry so slow that
#: relying on it would outlast redis_timeout.
CLIENT_RETRIES: dict[str, dict[str, Any]] = {
    "no-client-retry": {"retry": Retry(NoBackoff(), 0)},
    "client-default": {},
    "slow-client-retry": {
        "retry": Retry(ConstantBackoff(30), 3),
        "retry_on_error": [RedisConnectionError],
    },
}


@pytest.mark.parametrize("client_retry", CLIENT_RETRIES.values(), ids=CLIENT_RETRIES.keys())
async def test_survives_a_redis_restart(
    private_server: RedisExecutor, client_retry: dict[str, Any]
) -> None:
    client = private_client(private_server, **client_retry)
    try:
        limiter = RedisRateLimiter(client, key="restart", qps=500)
        await limiter.acquire()
        private_server.stop()
        private_server.start()  # same port, empty: no script, no key
        await limiter.acquire()
    finally:
        await client.aclose()
    assert limiter.stats.reservations == 2


@pytest.mark.parametrize("client_retry", CLIENT_RETRIES.values(), ids=CLIENT_RETRIES.keys())
async def test_every_dead_pooled_connection_is_replaced_after_a_restart(
    private_server: RedisExecutor, client_retry: dict[str, Any]
) -> None:
    client = private_client(private_server, **client_retry)
    try:
        limiter = RedisRateLimiter(client, key="restart-crowd", qps=1000, max_pending=8)
        await acquire_all(limiter, 16)  # fills the pool with up to 8 connections
        private_server.stop()
        private_server.start()  # every pooled connection is now dead
        released = await acquire_all(limiter, 40)
    finally:
        await client.aclose()
    assert len(released) == 40
    assert limiter.stats.failures == 0
    assert limiter.stats.reservations == 56


class AnswerDroppingProxy:
    """A TCP proxy in front of Redis that can lose the answers to the next scripts.

    With ``drop`` set to n, each of the next n script commands (EVALSHA/EVAL) reaches Redis
    and runs, and then the proxy closes that connection instead of passing the answer on:
    what a client sees when Redis restarts or the network fails between the two. When a
    client leaves, Redis still gets what it was sent, and an answer that comes after the
    client left sets ``late_answer``.
    """

    def __init__(self, upstream: RedisExecutor) -> None:
        self.upstream = upstream
        self.drop = 0
        self.connections = 0
        self.client_left = asyncio.Event()
        self.late_answer = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self.port = 0

    async def __aenter__(self) -> AnswerDroppingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        # Before Python 3.12 wait_closed() does not wait for the connections' handlers.
        # Each ends once Redis closes its side, right after the test's clients closed.
        if self._handlers:
            done, pending = await asyncio.wait(self._handlers, timeout=10)
            for handler in pending:
                handler.cancel()
            await asyncio.gather(*done, *pending, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection(self.upstream.host, self.upstream.port)
        script_sent = client_gone = False

        async def to_redis() -> None:
            nonlocal script_sent, client_gone
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    if self.drop and (b"EVALSHA" in data or b"\r\nEVAL\r\n" in data):
                        self.drop -= 1
                        script_sent = True
                    up_writer.write(data)
                    await up_writer.drain()
            client_gone = True
            self.client_left.set()
            up_writer.write_eof()  # Redis still answers what it was sent, then closes

        async def to_client() -> None:
            while answer := await up_reader.read(65536):
                if client_gone:
                    self.late_answer.set()
                elif script_sent:
                    return  # the script ran; its answer is lost with the connection
                else:
                    writer.write(answer)
                    await writer.drain()

        sending = asyncio.create_task(to_redis())
        try:
            await to_client()
        finally:
            sending.cancel()
            for stream in (writer, up_writer):
                stream.close()
                with contextlib.suppress(OSError):
                    await stream.wait_closed()


async def next_slot(redis: Redis, key: str) -> int:
    """The key's next free slot (its theoretical arrival time), in Redis microseconds."""
    return int(await redis.hget(key, "tat") or 0)


async def schedule_next_slot(redis: Redis, key: str, ahead: float) -> int:
    """Put the key's next free slot ``ahead`` seconds from Redis's now; return it."""
    seconds, micros = await redis.time()
    slot = seconds * 1_000_000 + micros + int(ahead * 1_000_000)
    await redis.hset(key, "tat", slot)
    await redis.pexpire(key, 10_000)
    return slot


async def test_a_lost_answer_costs_one_slot_and_is_retried_on_a_new_connection(
    private_server: RedisExecutor,
) -> None:
    direct = private_client(private_server)
    async with AnswerDroppingProxy(private_server) as proxy:
        client = Redis(host="127.0.0.1", port=proxy.port, password=PRIVATE_PASSWORD)
        try:
            limiter = RedisRateLimiter(client, key="lost", qps=100)
            interval_us = math.ceil(1_000_000 / limiter.rate)
            await limiter.acquire()  # loads the script, opens the first connection
            first = await schedule_next_slot(direct, "lost", ahead=0.2)
            proxy.drop = 1
            await limiter.acquire()
            after = await next_slot(direct, "lost")
        finally:
            await client.aclose()
            await direct.aclose()
    # The lost answer's slot (first) stays unused; the retry got the one after it, and
    # the acquisition returned once: one request sent, on a slot of its own.
    assert after == first + 2 * interval_us
    assert proxy.drop == 0
    assert proxy.connections == 2  # the retry ran on a new connection
    assert limiter.stats.reservations == 2
    assert limiter.stats.failures == 0


async def test_a_connection_lost_twice_is_an_outage_and_nothing_is_sent(
    private_server: RedisExecutor,
) -> None:
    direct = private_client(private_server)
    async with AnswerDroppingProxy(private_server) as proxy:
        client = Redis(host="127.0.0.1", port=proxy.port, password=PRIVATE_PASSWORD)
        try:
            limiter = RedisRateLimiter(client, key="lost-twice", qps=100, wait_for_redis=0)
            interval_us = math.ceil(1_000_000 / limiter.rate)
            await limiter.acquire()
            first = await schedule_next_slot(direct, "lost-twice", ahead=0.2)
            proxy.drop = 2
            with pytest.raises(RateLimiterUnavailableError, match="not sent"):
                await limiter.acquire()
            after = await next_slot(direct, "lost-twice")
        finally:
            await client.aclose()
            await direct.aclose()
    # One retry only: two slots reserved and lost, none used, no third attempt.
    assert after == first + 2 * interval_us
    assert proxy.drop == 0
    assert proxy.connections == 2
    assert limiter.stats.failures == 1
    assert limiter.stats.reservations == 1


async def test_a_late_answer_is_never_read_by_the_next_reservation(
    private_server: RedisExecutor,
) -> None:
    assert private_server.process is not None
    direct = private_client(private_server)
    async with AnswerDroppingProxy(private_server) as proxy:
        client = Redis(host="127.0.0.1", port=proxy.port, password=PRIVATE_PASSWORD)
        try:
            limiter = RedisRateLimiter(
                client,
                key="late",
                qps=100,
                redis_timeout=0.3,
                retry_interval=0.001,
                wait_for_redis=0,
            )
            interval_us = math.ceil(1_000_000 / limiter.rate)
            await limiter.acquire()
            os.kill(private_server.process.pid, signal.SIGSTOP)
            try:
                with pytest.raises(RateLimiterUnavailableError, match="timed out"):
                    await limiter.acquire()  # its script waits in Redis's socket buffer
                await proxy.client_left.wait()
            finally:
                os.kill(private_server.process.pid, signal.SIGCONT)
            # Redis, running again, runs that script and answers it, too late.
            await proxy.late_answer.wait()
            first = await schedule_next_slot(direct, "late", ahead=0.2)
            await limiter.acquire()
            after = await next_slot(direct, "late")
        finally:
            await client.aclose()
            await direct.aclose()
    # The timed-out exchange's connection was dropped, not handed to the next caller
    # (which would have read the late answer as its own): a new connection, whose
    # reservation took the slot after the one scheduled.
    assert proxy.connections == 2
    assert after == first + interval_us
    assert limiter.stats.failures == 1
    assert limiter.stats.reservations == 2


async def test_redis_stopped_mid_run_raises_and_sends_nothing(
    private_server: RedisExecutor,
) -> None:
    client = private_client(private_server, socket_connect_timeout=0.5)
    limiter = RedisRateLimiter(client, key="down", qps=500, retry_interval=60, wait_for_redis=0)
    released: list[float] = []
    try:
        for _ in range(20):
            await limiter.acquire()
            released.append(time.monotonic())
        private_server.stop()
        with pytest.raises(RateLimiterUnavailableError) as raised:
            await limiter.acquire()
        failures = limiter.stats.failures
        # Within retry_interval further callers fail at once, without asking Redis.
        with pytest.raises(RateLimiterUnavailableError):
            await limiter.acquire()
    finally:
        await client.aclose()
    assert len(released) == 20
    assert failures == 1
    assert limiter.stats.failures == 1
    message = str(raised.value)
    assert "not sent" in message
    assert "fallback_fraction" in message  # the hint says how to keep going
    assert PRIVATE_PASSWORD not in message
    assert PRIVATE_PASSWORD not in repr(raised.value)


async def test_a_hung_redis_times_out(private_server: RedisExecutor) -> None:
    assert private_server.process is not None
    client = private_client(private_server)
    limiter = RedisRateLimiter(client, key="hung", qps=500, redis_timeout=0.3, wait_for_redis=0)
    try:
        await limiter.acquire()
        os.kill(private_server.process.pid, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(RateLimiterUnavailableError, match="timed out"):
            await limiter.acquire()
        waited = time.monotonic() - started
    finally:
        os.kill(private_server.process.pid, signal.SIGCONT)
        await client.aclose()
    assert 0.3 <= waited < 1.0


async def test_fallback_paces_locally_warns_once_and_returns_to_redis(
    private_server: RedisExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    qps, fraction = 200.0, 0.5
    client = private_client(private_server, socket_connect_timeout=0.5)
    limiter = RedisRateLimiter(
        client, key="fallback", qps=qps, retry_interval=0.2, fallback_fraction=fraction
    )
    caplog.set_level(logging.INFO, logger="rtc_segment.redis")
    try:
        await acquire_all(limiter, 10)
        private_server.stop()
        outage_started = time.monotonic()
        local = await acquire_all(limiter, 60)
        outage_seconds = time.monotonic() - outage_started
        assert limiter.stats.fallback_acquisitions == 60
        # The callers already queued for Redis fail once each; after that one caller
        # at a time probes, once per retry_interval.
        assert limiter.stats.failures <= 8 + outage_seconds / 0.2 + 1
        private_server.start()
        # Local pacing goes on until the next retry finds Redis again.
        after = await acquire_all(limiter, 60)
    finally:
        await client.aclose()
    # Paced at fraction * qps, never faster.
    assert max_in_window(local, 0.25) <= fraction * qps * 0.25 + 1
    assert rate(local) <= fraction * qps
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "pacing this process locally" in warnings[0].getMessage()
    assert PRIVATE_PASSWORD not in caplog.text
    assert limiter.stats.reservations > 10  # back on Redis
    assert any("reachable again" in r.getMessage() for r in caplog.records)
    assert len(after) == 60


# --- with the client and the emulator ------------------------------------------------

EMULATED = Credentials("AKLTsharedquotaaccount", "shared-quota-secret")
TASK = ("app", "room", "task")


def _process_worker(
    base_url: str, redis_port: int, qps: float, seconds: float, start: Any, results: Any
) -> None:
    """One OS process: as many calls as the shared limiter allows, for ``seconds``."""
    results.put(asyncio.run(_calls_until_deadline(base_url, redis_port, qps, seconds, start)))


async def _calls_until_deadline(
    base_url: str, redis_port: int, qps: float, seconds: float, start: Any
) -> tuple[int, list[str]]:
    from rtc_segment import SegmentClient

    redis = Redis(host="127.0.0.1", port=redis_port)
    # The default, adaptive limiter: the one whose bound this checks.
    limiter = RedisRateLimiter(redis, key=RedisRateLimiter.key_for(EMULATED), qps=qps)
    sent, errors = 0, []
    async with SegmentClient(EMULATED, endpoint=base_url, limiter=limiter, max_retries=0) as client:
        await asyncio.to_thread(start.wait)
        deadline = time.monotonic() + seconds

        async def caller() -> None:
            nonlocal sent
            while time.monotonic() < deadline:
                try:
                    await client.get_segment_task(*TASK)
                except Exception as exc:
                    errors.append(repr(exc))
                sent += 1

        await asyncio.gather(*(caller() for _ in range(24)))
    await redis.aclose()
    return sent, errors


async def test_os_processes_sharing_one_key_stay_under_the_ceiling(
    redis_server: RedisExecutor, loop_lag: LoopLag
) -> None:
    from rtc_segment.testing import Emulator

    qps, processes = 60.0, 3
    # The server runs on this process's loop, which stamps the arrivals: a stall of this
    # process squeezes them together. It only records (a ceiling it could not enforce
    # fairly); the ceiling is checked on its stamps below, allowing for how late it ran.
    emulator = Emulator(EMULATED, qps=2 * qps)
    emulator.add_task(*TASK)
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(processes), context.Queue()
    async with emulator.serve(port=0) as base_url:
        workers = [
            context.Process(
                target=_process_worker,
                args=(base_url, redis_server.port, qps, 3.0, start, results),
            )
            for _ in range(processes)
        ]
        for process in workers:
            process.start()
        reports = [await asyncio.to_thread(results.get, True, 60) for _ in workers]
        for process in workers:
            await asyncio.to_thread(process.join, 10)
    assert [process.exitcode for process in workers] == [0] * processes
    assert [errors for _, errors in reports] == [[]] * processes
    arrivals = [record.arrival for record in emulator.requests]
    assert len(arrivals) == sum(sent for sent, _ in reports)
    # The ceiling where the service judges it, per sliding second of arrivals.
    assert emulator.max_in_window(loop_lag.window()) <= qps
    # One-sided floors with room for a busy machine (quiet, this uses about 0.99 of the
    # ceiling; benchmarks/shared_limiter.py measures it).
    assert rate(arrivals) >= 0.9 * qps
    for sent, _ in reports:  # every process got a fair part
        assert sent >= 0.7 * len(arrivals) / processes


async def run_until_redis_stops(
    server: RedisExecutor, *, qps: float, fallback_fraction: float | None
) -> tuple[Any, RedisRateLimiter, float, list[BaseException]]:
    """Callers through a client until Redis is stopped after 40 sends; then 1.5 s more.

    Returns the emulator, the limiter, when Redis was stopped (emulator clock) and the
    callers' RateLimiterUnavailableError errors.
    """
    from rtc_segment import SegmentClient
    from rtc_segment.testing import Emulator

    emulator = Emulator(EMULATED, qps=qps)
    emulator.add_task(*TASK)
    redis = private_client(server, socket_connect_timeout=0.5)
    limiter = RedisRateLimiter(
        redis,
        key="outage",
        qps=qps,
        redis_timeout=0.3,
        retry_interval=60,
        fallback_fraction=fallback_fraction,
        wait_for_redis=0,
    )
    failures: list[BaseException] = []
    stopped_at = 0.0
    stopped_on_emulator = 0.0  # the same instant on the emulator's clock (its record's)
    loop = asyncio.get_running_loop()
    async with SegmentClient(
        EMULATED, transport=emulator.transport(), limiter=limiter, max_retries=0
    ) as client:

        async def caller() -> None:
            nonlocal stopped_at, stopped_on_emulator
            while not stopped_at or loop.time() < stopped_at + 1.5:
                try:
                    await client.get_segment_task(*TASK)
                except RateLimiterUnavailableError as exc:
                    failures.append(exc)
                    return
                if not stopped_at and emulator.count() >= 40:
                    server.stop()
                    stopped_at = loop.time()
                    stopped_on_emulator = emulator.clock()

        await asyncio.gather(*(caller() for _ in range(16)))
    await redis.aclose()
    return emulator, limiter, stopped_on_emulator, failures


async def test_redis_stopped_under_a_client_fails_calls_and_sends_nothing_unpaced(
    private_server: RedisExecutor,
) -> None:
    qps = 200.0
    emulator, limiter, _, failures = await run_until_redis_stops(
        private_server, qps=qps, fallback_fraction=None
    )
    # Every caller ended with the documented error; every request sent had a Redis slot.
    assert len(failures) == 16
    assert emulator.count() == limiter.stats.reservations
    assert emulator.count() <= 40 + 16  # at most those already paced when Redis stopped
    assert emulator.stats.throttled == 0
    assert emulator.max_in_window(1.0) <= qps


async def test_redis_stopped_under_a_client_with_fallback_paces_locally(
    private_server: RedisExecutor,
) -> None:
    qps, fraction = 200.0, 0.25
    emulator, limiter, stopped_at, failures = await run_until_redis_stops(
        private_server, qps=qps, fallback_fraction=fraction
    )
    assert failures == []
    # After the slots reserved before the outage, sends go at fraction * qps at most.
    later = [r.arrival for r in emulator.requests if r.arrival > stopped_at + 0.1]
    assert len(later) >= 20
    # (Plus what the local bucket lets a stalled loop catch up: CATCH_UP intervals.)
    assert max_in_window(later, 0.5) <= fraction * qps * 0.5 + 1 + CATCH_UP
    assert emulator.stats.throttled == 0
    assert (
        limiter.stats.fallback_acquisitions == len(later) or limiter.stats.fallback_acquisitions > 0
    )


# --- the send log in Redis: the bound at arrival ---------------------------------------

#: A tiny log for the script tests: 3 sends per second, 100 ms apart (wide enough that a
#: slow machine's reservations are never late for their slots), 2 ms assumed late.
TINY = {"interval": 100_000, "limit": 3, "window": 1_000_000, "unreported": 2_000}


async def reserve(
    redis: Redis, key: str, *reports: tuple[int, int], seen: int = 0, **settings: int
) -> int:
    """Run the limiter's script once, as a reservation would; return the slot."""
    from rtc_segment._redis import _GCRA_SCRIPT

    args = {**TINY, **settings}
    flat = [value for report in reports for value in report]
    slot, _ = await redis.eval(  # type: ignore[misc]
        _GCRA_SCRIPT,
        1,
        key,
        args["interval"],
        args["limit"],
        args["window"],
        args["unreported"],
        seen,
        *flat,
    )
    return int(slot)


async def test_a_slot_waits_for_its_partner_a_second_back_plus_how_late_it_went(
    redis: Redis,
) -> None:
    first, second, third = [await reserve(redis, "log") for _ in range(3)]
    assert second - first == third - second == 100_000  # spaced by the interval
    # The first send went 50 ms after its slot (reported on the next reservation): the
    # fourth, its partner, goes a second after it went -- not a second after its slot.
    fourth = await reserve(redis, "log", (first, 50_000), (third, 60_000))
    assert fourth == first + 1_000_000 + 50_000
    # The second is not reported yet: it is assumed as late as the latest send reported
    # in the log (the third, 60 ms).
    fifth = await reserve(redis, "log")
    assert fifth == second + 1_000_000 + 60_000
    # Reported on time, a send holds its partner back by the second alone -- and slots
    # never go backwards.
    sixth = await reserve(redis, "log", (third, 0))
    assert sixth == max(third + 1_000_000, fifth)
    seventh = await reserve(redis, "log", (fourth, 0))
    assert seventh == max(fourth + 1_000_000, sixth)


async def test_a_late_report_of_a_send_that_left_the_log_still_holds_the_window(
    redis: Redis,
) -> None:
    slots = [await reserve(redis, "evicted", unreported=0) for _ in range(4)]
    # slots[0] left the log when slots[3] was reserved; its report (150 ms late, later
    # than its successor's slot) arrives only now. Every later slot keeps a second after
    # it went.
    fifth = await reserve(redis, "evicted", (slots[0], 150_000), unreported=0)
    assert fifth == slots[0] + 1_000_000 + 150_000


async def test_a_copy_of_the_key_that_missed_writes_hands_out_no_earlier_slot(
    redis: Redis,
) -> None:
    # A replica promoted before it had the last writes (here: the key is simply gone).
    slots = [await reserve(redis, "failover", unreported=30_000) for _ in range(3)]
    await redis.delete("failover")
    # A client that saw the newest slot says so: the last `limit` sends may all have gone
    # at that slot, late by as much as assumed for any unreported send, so the next slot
    # is a second after that.
    after = await reserve(redis, "failover", seen=slots[-1], unreported=30_000)
    assert after >= slots[-1] + 1_000_000 + 30_000
    # Without a client that saw anything, a missing key is an idle one: no wait.
    await redis.delete("idle")
    seconds, micros = await redis.time()
    fresh = await reserve(redis, "idle")
    assert fresh - (seconds * 1_000_000 + micros) < 500_000


class Stalls:
    """Blocks this event loop for ``stall`` seconds every ``every`` seconds: a busy host
    (CPU-bound neighbours, a garbage collection) that makes sends go late after their
    slots -- lateness that no HTTP round trip shows to the other processes."""

    def __init__(self, stall: float, every: float) -> None:
        self.stall, self.every = stall, every
        self.count = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            time.sleep(self.stall)  # noqa: ASYNC251 - the stall is the point
            self.count += 1


async def test_sends_gone_late_do_not_crowd_their_partners_second(
    redis_server: RedisExecutor, loop_lag: LoopLag
) -> None:
    qps = 50.0
    clients = [Redis(host=redis_server.host, port=redis_server.port) for _ in range(2)]
    stalls = Stalls(stall=0.04, every=0.13)
    staller = asyncio.create_task(stalls.run())
    went: list[float] = []

    async def worker(limiter: RedisRateLimiter, count: int) -> None:
        async def one() -> None:
            await limiter.acquire()
            # The moment the send goes, on the clock the limiter reads (no await between).
            went.append(arrived := asyncio.get_running_loop().time())
            # The send "arrives" as it goes: its round trip is the time since then.
            limiter.observe_round_trip(asyncio.get_running_loop().time() - arrived)

        await asyncio.gather(*(one() for _ in range(count)))

    try:
        limiters = [RedisRateLimiter(c, key="stalled", qps=qps) for c in clients]
        await asyncio.gather(*(worker(limiter, 125) for limiter in limiters))
    finally:
        staller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await staller
        for client in clients:
            await client.aclose()
    assert stalls.count >= 10
    # The bound on the send times, over windows shortened only by the stalls the test did
    # not make itself (a quiet machine: a few ms; the code before the send log in Redis
    # put 52 of 50 in a second, three times out of three).
    assert max_in_window(went, loop_lag.window(deliberate=stalls.stall)) <= qps
    assert_uses_most_of(went, qps, loop_lag, limiters=limiters)


async def test_a_call_waits_for_redis_within_its_deadline_and_sends_nothing(
    private_server: RedisExecutor,
) -> None:
    from rtc_segment import DeadlineExceededError, SegmentClient
    from rtc_segment.testing import Emulator

    emulator = Emulator(EMULATED, qps=100)
    emulator.add_task(*TASK)
    client = private_client(private_server, socket_connect_timeout=0.5)
    # The default: wait for Redis (up to wait_for_redis, 10 s) rather than fail at once.
    limiter = RedisRateLimiter(client, key="deadline", qps=100)
    try:
        async with SegmentClient(
            EMULATED, transport=emulator.transport(), limiter=limiter, max_retries=0
        ) as segment:
            await segment.get_segment_task(*TASK)
            private_server.stop()
            started = time.monotonic()
            with pytest.raises(DeadlineExceededError):
                await segment.get_segment_task(*TASK, deadline=0.8)
            waited = time.monotonic() - started
            # Redis back within the wait: the next call goes through.
            private_server.start()
            await segment.get_segment_task(*TASK, deadline=5)
    finally:
        await client.aclose()
    assert 0.8 <= waited < 3.0  # the deadline, not wait_for_redis, ended the wait
    assert emulator.count() == 2  # nothing was sent without a slot
    assert limiter.stats.failures >= 1
