"""Guarantee 7: clock trouble.

A client clock 20 minutes off gets ``InvalidTimestamp``; the client signs once more with a
fresh ``X-Date`` and then raises an error telling the user to check the clock -- exactly two
requests. A stale signature (not a skewed clock) is cured by that one re-sign. And the
limiter neither hangs nor spins on a clock that only moves in ticks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest

from rtc_segment import AuthenticationError, LocalRateLimiter, TaskStatus
from rtc_segment.testing import Emulator

from ._support import emulator_client

KEY = ("app", "room", "task")


def skewed(emulator: Emulator, offset: timedelta) -> Callable[[], datetime]:
    return lambda: emulator.wall_clock() + offset


@pytest.mark.looptime
@pytest.mark.parametrize("minutes", [20, -20, 600])
@pytest.mark.parametrize("max_retries", [0, 3])
async def test_a_skewed_clock_is_resigned_once_then_explained(
    minutes: int, max_retries: int
) -> None:
    emulator = Emulator()
    emulator.add_task(*KEY)
    clock = skewed(emulator, timedelta(minutes=minutes))
    async with emulator_client(emulator, clock=clock, max_retries=max_retries) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.get_segment_task(*KEY)
    error = caught.value
    assert error.code == "InvalidTimestamp"
    assert "clock" in str(error)
    assert error.attempts == 2
    records = emulator.requests
    assert len(records) == 2
    assert [r.error_code for r in records] == ["InvalidTimestamp", "InvalidTimestamp"]


@pytest.mark.looptime
async def test_a_small_skew_within_the_tolerance_is_fine() -> None:
    emulator = Emulator()
    emulator.add_task(*KEY)
    clock = skewed(emulator, timedelta(minutes=10))
    async with emulator_client(emulator, clock=clock) as client:
        assert (await client.get_segment_task(*KEY)).status is TaskStatus.RUNNING
    assert emulator.count() == 1


@pytest.mark.looptime
async def test_a_stale_signature_is_cured_by_signing_again() -> None:
    # The clock is wrong once (e.g. a VM resumed from suspend), then right again.
    emulator = Emulator()
    emulator.add_task(*KEY)
    readings = iter([timedelta(minutes=-30)])

    def clock() -> datetime:
        return emulator.wall_clock() + next(readings, timedelta(0))

    async with emulator_client(emulator, clock=clock, max_retries=0) as client:
        assert (await client.get_segment_task(*KEY)).status is TaskStatus.RUNNING
    first, second = emulator.requests
    assert first.error_code == "InvalidTimestamp" and second.error_code is None
    assert first.x_date != second.x_date  # a fresh signature, not a resend


@pytest.mark.looptime
@pytest.mark.timeout(20)
@pytest.mark.parametrize("waiters", [150, 300, 1000])
async def test_the_limiter_does_not_spin_on_a_rounded_clock(waiters: int) -> None:
    # looptime rounds the loop's time to 1 us and only moves it when the loop is idle: a
    # limiter that re-arms a timer for a sub-tick remainder would spin here forever.
    limiter = LocalRateLimiter(60)
    loop = asyncio.get_running_loop()
    start = loop.time()
    times: list[float] = []

    async def one() -> None:
        await limiter.acquire()
        times.append(loop.time() - start)

    await asyncio.gather(*(one() for _ in range(waiters)))
    assert len(times) == waiters
    # Paced, not bursted: no sliding second holds more than the ceiling.
    assert max(sum(1 for t in times if s <= t < s + 1.0) for s in times) <= 60
