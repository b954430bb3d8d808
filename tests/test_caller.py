"""Tests for rtc_segment._caller: deadlines and interactive-before-bulk, in virtual time,
and the round trip fed back to the limiter (in real time: it times a blocking stall).

The rest of the HTTP path (retries, classification, cancellation) is tested through the
client in tests/test_client.py, tests/test_transports.py and tests/reliability/.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import pytest

from rtc_segment import (
    DeadlineExceededError,
    SegmentClient,
    ServerError,
    TaskOutcome,
)
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator, Fault

KEY = ("app", "room", "task")


def client_on(emulator: Emulator, **kwargs: Any) -> SegmentClient:
    kwargs.setdefault("credentials", DEFAULT_CREDENTIALS)
    kwargs.setdefault("clock", emulator.wall_clock)
    return SegmentClient(transport=emulator.transport(), **kwargs)


# -- deadlines ----------------------------------------------------------------------------------


@pytest.mark.looptime
async def test_a_deadline_spent_queued_for_the_limiter_sends_nothing() -> None:
    emulator = Emulator(qps=None, latency=0.01)
    emulator.add_task(*KEY)
    async with client_on(emulator, qps=2.0) as client:
        # Sent at 0, 1.0 (the first after a pause is charged one interval more) and 1.5 s.
        calls = [asyncio.create_task(client.get_segment_task(*KEY, deadline=1.2)) for _ in range(3)]
        results = await asyncio.gather(*calls, return_exceptions=True)
    late = [r for r in results if isinstance(r, DeadlineExceededError)]
    assert len(late) == 1
    error = late[0]
    assert isinstance(error, TimeoutError)
    assert error.attempts == 0 and not error.ambiguous
    assert error.queued == pytest.approx(1.2, abs=0.01)
    assert "queued for the limiter" in str(error)
    assert emulator.count() == 2  # the third was never sent
    assert client.stats.errors == {"DeadlineExceededError": 1}


@pytest.mark.looptime
async def test_no_retry_starts_that_cannot_finish_in_the_deadline() -> None:
    emulator = Emulator(qps=None, latency=0.5)
    emulator.add_task(*KEY)
    emulator.faults.next(5, Fault.HTTP_500)
    async with client_on(emulator, max_retries=5) as client:
        # The first attempt takes 0.5 s; another could not finish in the 0.4 s left.
        with pytest.raises(DeadlineExceededError) as caught:
            await client.get_segment_task(*KEY, deadline=0.9)
    error = caught.value
    # It gave up at once rather than sleeping into a retry that could not finish.
    assert error.backing_off == 0.0
    assert isinstance(error.last_error, ServerError)
    assert error.attempts == 1 and error.ambiguous
    assert emulator.count() == 1


@pytest.mark.looptime
async def test_a_deadline_cuts_a_slow_attempt_short() -> None:
    emulator = Emulator(qps=None)
    emulator.add_task(*KEY)
    emulator.faults.next(1, Fault.SLOW, slow_seconds=30)
    async with client_on(emulator, timeout=10.0, deadline=2.0) as client:
        with pytest.raises(DeadlineExceededError) as caught:
            await client.get_segment_task(*KEY)  # the client's default deadline
    assert caught.value.in_attempts == pytest.approx(2.0, abs=0.01)
    assert caught.value.ambiguous  # it was sent


@pytest.mark.looptime
async def test_fan_out_honours_the_deadline_per_key() -> None:
    emulator = Emulator(qps=None, latency=0.01)
    keys = [emulator.add_task("app", f"room{i}", "task").key for i in range(5)]
    async with client_on(emulator, qps=2.0) as client:
        outcomes: list[TaskOutcome] = await client.gather_segment_tasks(keys, deadline=1.2)
    late = [o for o in outcomes if isinstance(o.error, DeadlineExceededError)]
    # At 2 per second, keys queued more than 1.2 s behind the first run out of time.
    assert 1 <= len(late) <= 3
    assert all(o.ok for o in outcomes if o not in late)
    assert emulator.count() == 5 - len(late)


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (-1, ValueError),
        (0, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        ("1", TypeError),
        (True, TypeError),
    ],
)
async def test_bad_deadlines_are_refused_before_anything_is_sent(
    bad: object, error: type[Exception]
) -> None:
    emulator = Emulator(qps=None)
    emulator.add_task(*KEY)
    with pytest.raises(error, match="deadline"):
        client_on(emulator, deadline=bad)
    async with client_on(emulator) as client:
        with pytest.raises(error, match="deadline"):
            await client.get_segment_task(*KEY, deadline=bad)  # type: ignore[arg-type]
        with pytest.raises(error, match="deadline"):
            client.get_segment_tasks([KEY], deadline=bad)  # type: ignore[arg-type]
        with pytest.raises(error, match="deadline"):
            await client.stop_segment(*KEY, deadline=bad)  # type: ignore[arg-type]
    assert emulator.count() == 0


# -- the round trip the limiter learns from ---------------------------------------------------


class FeedbackRecorder:
    """A limiter that never waits and keeps the feedback a client gives it."""

    qps = 60.0

    def __init__(self) -> None:
        self.round_trips: list[float] = []

    async def acquire(self) -> None:
        return None

    def observe_round_trip(self, seconds: float) -> None:
        self.round_trips.append(seconds)

    def observe_throttle(self) -> None:
        return None


async def test_the_round_trip_counts_from_when_the_limiter_let_the_request_go() -> None:
    # A stall after the limiter's go and before the request leaves (a descheduled process,
    # a slow hook; here the signing clock) delays its arrival just as a slow network would:
    # the limiter's margins must see it. In real time: the stall is a blocking sleep, and
    # the round trip can only come out longer than it, never shorter, however busy the
    # machine.
    stall = 0.03
    emulator = Emulator(qps=None)
    emulator.add_task(*KEY)
    limiter = FeedbackRecorder()

    def stalling_clock() -> Any:
        time.sleep(stall)
        return emulator.wall_clock()

    async with client_on(emulator, limiter=limiter, clock=stalling_clock) as client:
        await client.get_segment_task(*KEY)
    assert len(limiter.round_trips) == 1
    assert limiter.round_trips[0] >= stall


# -- interactive before bulk --------------------------------------------------------------------


@pytest.mark.looptime
async def test_single_calls_go_ahead_of_a_running_fan_out() -> None:
    emulator = Emulator(qps=60, latency=0.05)
    keys = [emulator.add_task("app", f"room{i}", "task").key for i in range(900)]
    emulator.add_task(*KEY)
    loop = asyncio.get_running_loop()
    async with client_on(emulator) as client:
        start = loop.time()
        fan_out = asyncio.create_task(client.gather_segment_tasks(keys))
        latencies = []
        for _ in range(20):
            await asyncio.sleep(0.5)
            sent = loop.time()
            await client.get_segment_task(*KEY)
            latencies.append(loop.time() - sent)
        outcomes = await fan_out
        wall = loop.time() - start
    assert all(outcome.ok for outcome in outcomes)
    # Each single call waited behind at most one bulk request, not behind the queue.
    assert max(latencies) <= 0.25, latencies
    # The fan-out still used what the single calls left.
    assert wall <= 1.05 * (900 + 20) / 60
    assert emulator.stats.throttled == 0
    assert emulator.max_in_window(1.0) <= 60


# -- the limiter wait in client.stats -----------------------------------------------------------


@pytest.mark.looptime
async def test_stats_give_the_limiter_wait_percentiles_and_who_is_waiting() -> None:
    emulator = Emulator(qps=None)
    emulator.add_task(*KEY)
    async with client_on(emulator, qps=2.0) as client:
        assert (client.stats.limiter_wait_p50, client.stats.limiter_wait_p99) == (None, None)
        calls = [asyncio.create_task(client.get_segment_task(*KEY)) for _ in range(5)]
        await asyncio.sleep(0.1)
        assert client.stats.waiting_for_limiter == 4  # the first has gone, four wait
        await asyncio.gather(*calls)
        stats = client.stats
    assert stats.waiting_for_limiter == 0
    # All five asked at once; each waited until the limiter let it go, when it arrived.
    arrivals = sorted(record.arrival for record in emulator.requests)
    waits = [at - arrivals[0] for at in arrivals]
    assert waits[-1] >= 2.0  # at 2 per second the last waited at least 2 s
    assert stats.limiter_wait_p50 == pytest.approx(waits[2], abs=1e-3)  # nearest rank
    assert stats.limiter_wait_p99 == pytest.approx(waits[4], abs=1e-3)


@pytest.mark.looptime
async def test_the_limiter_wait_percentiles_cover_the_last_minute() -> None:
    emulator = Emulator(qps=None)
    emulator.add_task(*KEY)
    async with client_on(emulator, qps=1.0) as client:
        await asyncio.gather(*(client.get_segment_task(*KEY) for _ in range(3)))
        slow = client.stats.limiter_wait_p99
        assert slow is not None and slow >= 2.0
        await asyncio.sleep(30)
        await client.get_segment_task(*KEY)  # no wait: the limiter has long been idle
        assert client.stats.limiter_wait_p99 == slow  # the slow ones are still in the window
        await asyncio.sleep(45)  # now only the quick one is
        stats = client.stats
        assert stats.limiter_wait_p50 == stats.limiter_wait_p99 == pytest.approx(0.0, abs=1e-3)
        await asyncio.sleep(60)
        assert client.stats.limiter_wait_p50 is None
