"""Guarantee 13: the ceiling holds on whichever event loop runs the client, in real time.

Every other test of the ceiling runs in virtual time (looptime), which only asyncio's own
loop can have. These run in real time: on asyncio's loop by default, and on uvloop -- the
loop ``uvicorn[standard]`` runs applications on -- in the ``uvloop`` nox session
(``--event-loop=uvloop``). uvloop keeps its own clock (libuv's, in whole milliseconds) and
its timers have millisecond resolution, where asyncio's loop reads ``time.monotonic()``;
the limiter's bound must hold by the true clock either way.

The checks are one-sided: a slow or busy machine only spaces sends further apart. Each
test takes about 1.5 s of real time (a little more than one second of sends at 60 QPS).
"""

from __future__ import annotations

import asyncio
import time

from rtc_segment import Backoff, LocalRateLimiter, SegmentClient, TaskStatus
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator, Lifecycle, max_in_window

QPS = 60
# A quarter more than one second's worth: at least one sliding second is full.
SENDS = QPS + QPS // 4


async def test_a_limiter_lets_no_more_than_its_ceiling_through_in_any_real_second() -> None:
    limiter = LocalRateLimiter(QPS)
    loop = asyncio.get_running_loop()
    by_true_clock: list[float] = []
    by_loop_clock: list[float] = []
    for _ in range(SENDS):
        await limiter.acquire()
        by_true_clock.append(time.monotonic())
        by_loop_clock.append(loop.time())
    assert max_in_window(by_loop_clock, 1.0) <= QPS
    assert max_in_window(by_true_clock, 1.0) <= QPS


async def test_a_fan_out_over_real_sockets_is_never_throttled() -> None:
    emulator = Emulator(qps=QPS)
    keys = emulator.seed_rooms(SENDS)
    async with (
        emulator.serve() as base_url,
        SegmentClient(DEFAULT_CREDENTIALS, endpoint=base_url, backoff=Backoff.disabled()) as client,
    ):
        outcomes = await client.gather_segment_tasks(keys)
    assert [outcome.key for outcome in outcomes if not outcome.ok] == []
    assert emulator.throttled_count == 0
    assert emulator.max_in_window(1.0) <= QPS
    assert len(emulator.requests) == SENDS


async def test_waiting_for_a_task_sees_it_end_in_real_time() -> None:
    emulator = Emulator()
    emulator.add_task("app", "room", "task", lifecycle=Lifecycle.after_seconds(ended=0.3))
    async with SegmentClient(
        DEFAULT_CREDENTIALS, transport=emulator.transport(), clock=emulator.wall_clock
    ) as client:
        task = await client.wait_for_segment_task(
            "app", "room", "task", poll_interval=0.1, timeout=10
        )
    assert task.status is TaskStatus.ENDED
    # Polled before the end and after it; every 0.1 s, not in a busy loop.
    assert 2 <= len(emulator.requests) < 30
