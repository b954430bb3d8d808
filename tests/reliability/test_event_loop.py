"""Guarantee 8: event-loop friendliness.

A probe task sleeps 1 ms over and over and measures how late it wakes, while the client
fans out over 1,000 keys at high QPS against the in-process emulator (which shares the
loop, so its work counts against the figure too). The target is 5 ms; this test asserts a
bound generous enough for a loaded CI machine and prints the real figures.
"""

from __future__ import annotations

import asyncio
import gc
import time

import pytest
from conftest import chosen_loop

from rtc_segment import Backoff, SegmentClient
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator

CI_BOUND_SECONDS = 0.050
KEYS = 1000
# Far above the service's 60, but below what saturates one core (~3,400 req/s with the
# emulator in the same loop): lag then measures how long single steps block, not a queue.
QPS = 1000.0


async def measure_lag(stop: asyncio.Event, lags: list[float]) -> None:
    while not stop.is_set():
        before = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append(time.perf_counter() - before - 0.001)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def test_fan_out_never_blocks_the_loop_for_long(capsys: object) -> None:
    emulator = Emulator(qps=None, latency=0.002)
    keys = emulator.seed_rooms(KEYS)
    async with SegmentClient(
        DEFAULT_CREDENTIALS,
        transport=emulator.transport(),
        qps=QPS,
        backoff=Backoff.disabled(),
    ) as client:
        await client.get_segment_task(*keys[0])  # one-time imports and converter set-up
        gc.collect()  # not the garbage of earlier tests: a full collection would count here
        stop = asyncio.Event()
        lags: list[float] = []
        probe = asyncio.create_task(measure_lag(stop, lags))
        started = time.perf_counter()
        outcomes = [outcome async for outcome in client.get_segment_tasks(keys)]
        elapsed = time.perf_counter() - started
        stop.set()
        await probe
    assert len(outcomes) == KEYS
    assert sum(outcome.ok for outcome in outcomes) >= 0.99 * KEYS
    assert len(lags) > 200, f"the probe ran only {len(lags)} times"
    worst, p99 = max(lags), percentile(lags, 0.99)
    print(
        f"\nloop lag during a {KEYS}-key fan-out ({KEYS / elapsed:.0f} req/s): "
        f"max {worst * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms, {len(lags)} samples"
    )
    assert worst < CI_BOUND_SECONDS, f"max lag {worst * 1000:.1f} ms"


async def test_the_async_tests_run_on_the_loop_chosen(pytestconfig: pytest.Config) -> None:
    """``--event-loop=uvloop`` (the ``uvloop`` nox session) really runs them on uvloop."""
    loop = asyncio.get_running_loop()
    if chosen_loop(pytestconfig) == "uvloop":
        import uvloop

        assert isinstance(loop, uvloop.Loop)
    else:
        assert isinstance(loop, asyncio.BaseEventLoop)  # asyncio's (looptime subclasses it)
