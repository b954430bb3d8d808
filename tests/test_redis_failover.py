"""RedisRateLimiter through a Sentinel failover: a real master, replica and Sentinel on
loopback (started by the test); the master is killed mid-run and the replica promoted.

Callers wait for the new master within ``wait_for_redis`` instead of failing, no
acquisition is lost, and the ceiling holds across the switch, checked on the exact send
times (each taken on the clock the limiter reads, with nothing in between).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from _loop_lag import LoopLag
from _redis_servers import SERVICE, Failover, cli, redis_with_sentinel
from redis.asyncio.sentinel import Sentinel

from rtc_segment._errors import RateLimiterUnavailableError
from rtc_segment._redis import RedisRateLimiter
from rtc_segment.testing import max_in_window


@pytest.fixture
def failover() -> Iterator[Failover]:
    with redis_with_sentinel() as deployment:
        yield deployment


async def test_a_failover_loses_no_acquisition_and_keeps_the_ceiling(
    failover: Failover, loop_lag: LoopLag
) -> None:
    qps, processes, per_process = 100.0, 3, 150
    sentinel = Sentinel([("127.0.0.1", failover.sentinel)], socket_timeout=0.5)
    masters = [
        sentinel.master_for(SERVICE, socket_timeout=0.5, socket_connect_timeout=0.5)
        for _ in range(processes)
    ]
    went: list[float] = []
    errors: list[BaseException] = []
    killed_at = 0.0
    enough_sent = asyncio.Event()

    async def worker(limiter: RedisRateLimiter) -> None:
        async def one() -> None:
            try:
                await limiter.acquire()
            except RateLimiterUnavailableError as exc:
                errors.append(exc)
                return
            went.append(arrived := asyncio.get_running_loop().time())
            # The send "arrives" as it goes: its round trip is the time since then.
            limiter.observe_round_trip(asyncio.get_running_loop().time() - arrived)
            if len(went) >= 100:
                enough_sent.set()

        await asyncio.gather(*(one() for _ in range(per_process)))

    async def kill_master_after_100_sends() -> None:
        nonlocal killed_at
        await enough_sent.wait()
        await asyncio.to_thread(failover.kill_master)
        killed_at = asyncio.get_running_loop().time()

    try:
        limiters = [RedisRateLimiter(m, key="{failover}:GetSegmentTask", qps=qps) for m in masters]
        killer = asyncio.create_task(kill_master_after_100_sends())
        await asyncio.gather(*(worker(limiter) for limiter in limiters))
        await killer
    finally:
        for master in masters:
            await master.aclose()
    assert errors == []  # every caller waited for the new master
    promoted = cli(failover.sentinel, "sentinel", "get-master-addr-by-name", SERVICE)
    assert str(failover.replica) in promoted  # the replica took over
    assert len(went) == processes * per_process  # no acquisition lost
    assert sum(limiter.stats.failures for limiter in limiters) >= 1  # it did see the outage
    assert any(t > killed_at for t in went)
    assert max_in_window(went, loop_lag.window()) <= qps  # (tests/_loop_lag.py)


async def test_waiting_for_redis_ends_with_the_documented_error(failover: Failover) -> None:
    sentinel = Sentinel([("127.0.0.1", failover.sentinel)], socket_timeout=0.5)
    master = sentinel.master_for(SERVICE, socket_timeout=0.5, socket_connect_timeout=0.5)
    limiter = RedisRateLimiter(master, key="gone", qps=100, wait_for_redis=0.6)
    try:
        await limiter.acquire()
        # Both servers gone: no failover can help.
        await asyncio.to_thread(failover.kill_master)
        await asyncio.to_thread(failover.servers.kill, failover.replica)
        started = time.monotonic()
        with pytest.raises(RateLimiterUnavailableError, match="not sent"):
            await limiter.acquire()
        waited = time.monotonic() - started
    finally:
        await master.aclose()
    assert waited >= 0.6  # it waited, then gave up
    assert waited < 5.0
