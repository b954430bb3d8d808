"""Guarantee 6: cancellation storms.

1,000 concurrent calls, half of them cancelled at random moments -- while waiting for a
slot or the limiter, while on the wire, while backing off. The other half complete
correctly; the limiter's accounting is exact afterwards (the next second admits what a
fresh limiter admits, and no more than the ceiling); no task is left behind, no slot or
pooled connection stays checked out, and the client keeps working.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from rtc_segment import Backoff, LocalRateLimiter, RtcSegmentError, SegmentClient, SegmentTask
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator, Fault, RequestRecord

from ._support import emulator_client, records_by_key

QPS = 100
CALLS = 1000
MAX_CONNECTIONS = 100
LATENCY = 1.0


async def admitted_in_first_second(limiter: LocalRateLimiter) -> int:
    """How many of 3 x qps waiting callers one limiter lets through in its next second."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    times: list[float] = []

    async def one() -> None:
        await limiter.acquire()
        times.append(loop.time())

    waiters = [asyncio.create_task(one()) for _ in range(3 * int(limiter.qps))]
    await asyncio.sleep(1.0 - 1e-6)
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    return sum(1 for t in times if t - start < 1.0)


@pytest.mark.looptime
async def test_half_cancelled_storm_leaves_everything_exact() -> None:
    emulator = Emulator(qps=QPS, latency=LATENCY, seed=1)
    keys = [emulator.add_task("app", f"room{i}", f"task{i}").key for i in range(CALLS)]
    emulator.faults.set_mix({Fault.HTTP_503: 0.2, Fault.HTTP_429: 0.05}, seed=2)
    rng = random.Random(3)
    loop = asyncio.get_running_loop()
    async with emulator_client(
        emulator,
        # A fixed rate: the adaptive default slows down on the storm's 429s, and this test
        # compares the bucket's accounting with a fresh one's.
        limiter=LocalRateLimiter(QPS, utilization=0.99),
        max_retries=2,
        max_connections=MAX_CONNECTIONS,
        backoff=Backoff(initial=0.5, maximum=2.0),
    ) as client:
        start = loop.time()
        calls = {key: asyncio.create_task(client.get_segment_task(*key)) for key in keys}
        doomed = rng.sample(keys, CALLS // 2)
        # Over the time the storm takes at the ceiling (plus retries).
        cancel_at = {key: rng.uniform(0.0, 1.3 * CALLS / QPS) for key in doomed}
        for key, when in cancel_at.items():
            loop.call_at(start + when, calls[key].cancel)
        results = await asyncio.gather(*calls.values(), return_exceptions=True)

        # The calls that were not cancelled completed correctly.
        seen = records_by_key(emulator)
        by_kind: Counter[str] = Counter()
        for key, result in zip(keys, results, strict=True):
            if isinstance(result, asyncio.CancelledError):
                assert key in cancel_at
                by_kind[where_cancelled(seen.get(key, []), start + cancel_at[key])] += 1
            elif isinstance(result, SegmentTask):
                assert result.status == emulator.task(*key).task.status
                by_kind["ok"] += 1
            else:
                assert isinstance(result, RtcSegmentError), repr(result)
                assert result.retryable and result.attempts == 3
                by_kind["error"] += 1
        assert by_kind["ok"] + by_kind["error"] >= CALLS // 2
        # The storm hit every place a call can wait.
        assert by_kind["before sending"] >= 20, by_kind
        assert by_kind["on the wire"] >= 20, by_kind
        assert by_kind["backing off"] >= 20, by_kind

        # Nothing left behind: no task, no slot held.
        await asyncio.sleep(0)
        assert asyncio.all_tasks() == {asyncio.current_task()}
        assert client.stats.in_flight == 0
        assert emulator.max_in_window(1.0) <= QPS
        assert emulator.throttled_count == 0

        # The limiter's accounting is exact: after an idle pause, its next second admits
        # what a brand-new limiter admits -- the ceiling, and no more.
        await asyncio.sleep(5.0)
        assert isinstance(client.limiter, LocalRateLimiter)
        fresh = await admitted_in_first_second(LocalRateLimiter(QPS, utilization=0.99))
        assert await admitted_in_first_second(client.limiter) == fresh
        assert QPS - 2 <= fresh <= QPS

        # And the client keeps working.
        emulator.faults.clear()
        emulator.reset_record()
        outcomes = await client.gather_segment_tasks(keys[:200])
        assert all(outcome.ok for outcome in outcomes)
        assert emulator.max_in_window(1.0) <= QPS


async def exchanges_done(client: SegmentClient) -> None:
    await client._caller.exchanges_settled()


def where_cancelled(records: list[RequestRecord], when: float) -> str:
    """Where a call was when cancelled, from what the emulator saw of its key."""
    sent = [r for r in records if r.arrival <= when]
    if not sent:
        return "before sending"
    if when < sent[-1].arrival + LATENCY:
        return "on the wire"
    return "backing off" if sent[-1].fault is not None else "after the answer"


async def test_storm_over_real_sockets_leaves_the_pool_clean() -> None:
    emulator = Emulator(qps=None, latency=0.02, seed=4)
    keys = [emulator.add_task("app", f"room{i}", f"task{i}").key for i in range(200)]
    rng = random.Random(5)
    async with emulator.serve() as url:
        async with SegmentClient(
            DEFAULT_CREDENTIALS, endpoint=url, qps=1000.0, max_connections=20
        ) as client:
            calls = [asyncio.create_task(client.get_segment_task(*key)) for key in keys]
            loop = asyncio.get_running_loop()
            for call in rng.sample(calls, 100):
                loop.call_later(rng.uniform(0.0, 0.25), call.cancel)
            results = await asyncio.gather(*calls, return_exceptions=True)
            done = [r for r in results if isinstance(r, SegmentTask)]
            assert len(done) >= 100
            assert all(isinstance(r, (SegmentTask, asyncio.CancelledError)) for r in results), (
                Counter(type(r).__name__ for r in results)
            )
            # Requests of cancelled calls that were on the wire finish on their own (httpcore
            # must not see those cancellations, see SegmentClient.__init__); wait for them.
            await asyncio.wait_for(exchanges_done(client), timeout=5)
            pool = client._caller.transport._pool  # type: ignore[attr-defined]
            assert pool._requests == []
            # Every connection is idle or closed: none is stuck checked out.
            assert all(c.is_idle() or c.is_closed() for c in pool.connections), pool
            assert len(pool.connections) <= 20
            assert client.stats.in_flight == 0
            # Still works, on the same pool.
            task = await client.get_segment_task(*keys[0])
            assert task.status == emulator.task(*keys[0]).task.status
        assert pool.connections == []
    await asyncio.sleep(0)
    assert {t for t in asyncio.all_tasks() if not t.done()} == {asyncio.current_task()}
