"""The emulator under looptime's virtual time (in process): its default clock follows the loop."""

from __future__ import annotations

import asyncio

import pytest

from rtc_segment import LocalRateLimiter, SegmentClient, StopReason, TaskStatus
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator, Lifecycle

KEY = ("app1", "room1", "task1")

pytestmark = pytest.mark.looptime


async def test_default_clock_follows_virtual_time() -> None:
    emulator = Emulator()
    emulator.add_task(*KEY, lifecycle=Lifecycle.after_seconds(running=60, ended=3600))
    # Under virtual time the emulator's wall clock runs ahead of the real one: sign with it.
    async with SegmentClient(
        DEFAULT_CREDENTIALS, transport=emulator.transport(), clock=emulator.wall_clock
    ) as client:
        assert (await client.get_segment_task(*KEY)).status is TaskStatus.NOT_STARTED
        await asyncio.sleep(61)
        assert (await client.get_segment_task(*KEY)).status is TaskStatus.RUNNING
        await asyncio.sleep(3600)
        task = await client.get_segment_task(*KEY)
    assert (task.status, task.stop_reason) == (TaskStatus.ENDED, StopReason.IDLE_TIMEOUT)
    assert task.end_time - task.start_time == 3540_000


async def test_72_hour_window_in_virtual_time() -> None:
    emulator = Emulator()
    emulator.add_task(*KEY)
    async with SegmentClient(
        DEFAULT_CREDENTIALS, transport=emulator.transport(), clock=emulator.wall_clock
    ) as client:
        await asyncio.sleep(72 * 3600 - 1)
        assert (await client.get_segment_task(*KEY)).status is TaskStatus.RUNNING
        await asyncio.sleep(2)
        with pytest.raises(Exception, match="ErrorActiveTaskNotFound"):
            await client.get_segment_task(*KEY)


async def test_paced_client_never_trips_the_ceiling() -> None:
    emulator = Emulator()
    emulator.add_task(*KEY)
    loop = asyncio.get_running_loop()
    async with SegmentClient(DEFAULT_CREDENTIALS, transport=emulator.transport()) as client:
        started = loop.time()
        await asyncio.gather(*(client.get_segment_task(*KEY) for _ in range(180)))
        elapsed = loop.time() - started
    assert emulator.throttled_count == 0
    assert emulator.max_in_window(1.0) == 60
    assert 2.9 < elapsed < 3.2  # 180 requests at (just under) 60 per second


async def test_an_unpaced_burst_is_throttled_and_the_window_shows_it() -> None:
    emulator = Emulator(qps=60)
    emulator.add_task(*KEY)
    # 1,000 QPS at a fixed pace: an adaptive limiter would back off at the first throttle.
    unpaced = LocalRateLimiter(1000, utilization=0.99)
    async with SegmentClient(
        DEFAULT_CREDENTIALS, transport=emulator.transport(), limiter=unpaced, max_retries=0
    ) as client:
        results = await asyncio.gather(
            *(client.get_segment_task(*KEY) for _ in range(100)), return_exceptions=True
        )
    refused = [r for r in results if isinstance(r, Exception)]
    assert emulator.max_in_window(1.0) == 100
    assert emulator.max_in_window(1.0, admitted_only=True) == 60
    assert len(refused) == emulator.throttled_count == 40


async def test_latency_is_slept_on_the_loop() -> None:
    emulator = Emulator(latency=0.25)
    emulator.add_task(*KEY)
    loop = asyncio.get_running_loop()
    async with SegmentClient(DEFAULT_CREDENTIALS, transport=emulator.transport()) as client:
        started = loop.time()
        await client.get_segment_task(*KEY)
        assert loop.time() - started == pytest.approx(0.25, abs=0.01)
