"""The emulator's default clock (``StitchedClock``): loop time, continuous and monotonic."""

from __future__ import annotations

import asyncio

import pytest

from rtc_segment import SegmentClient
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator
from rtc_segment.testing._clock import StitchedClock

KEY = ("app", "room", "task")


@pytest.fixture
async def emulator_from_async_fixture() -> Emulator:
    """Made while the loop still runs on real time: looptime switches to virtual time (which
    starts at 0) only for the test body, so the loop's clock goes backwards in between."""
    emulator = Emulator()
    emulator.add_task(*KEY)
    return emulator


@pytest.mark.looptime
async def test_arrivals_advance_when_the_emulator_comes_from_an_async_fixture(
    emulator_from_async_fixture: Emulator,
) -> None:
    emulator = emulator_from_async_fixture
    async with SegmentClient(
        DEFAULT_CREDENTIALS, transport=emulator.transport(), clock=emulator.wall_clock
    ) as client:
        for _ in range(3):
            await client.get_segment_task(*KEY)
            await asyncio.sleep(10)
        # 120 requests at the 60 QPS pace: spread over two seconds, so never throttled.
        await asyncio.gather(*(client.get_segment_task(*KEY) for _ in range(120)))
    arrivals = [record.arrival for record in emulator.requests]
    assert arrivals[1] - arrivals[0] == pytest.approx(10)
    assert arrivals[2] - arrivals[1] == pytest.approx(10)
    assert arrivals == sorted(arrivals)
    assert emulator.throttled_count == 0
    assert emulator.max_in_window(1.0) == 60


class _FakeLoopTime:
    """Stands in for ``asyncio.get_running_loop`` with a loop whose time the test sets."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


def test_time_going_backwards_on_the_same_loop_rebases_instead_of_freezing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = _FakeLoopTime(1126.0)
    monkeypatch.setattr(asyncio, "get_running_loop", lambda: loop)
    clock = StitchedClock()
    first = clock()
    loop.now = 1130.0
    assert clock() == pytest.approx(first + 4)
    loop.now = 0.0  # the same loop, now on virtual time starting at 0
    assert clock() == pytest.approx(first + 4)  # never backwards
    loop.now = 2.5
    assert clock() == pytest.approx(first + 6.5)  # and it moves on at once


def test_a_new_loop_continues_from_the_last_value(monkeypatch: pytest.MonkeyPatch) -> None:
    loops = [_FakeLoopTime(500.0), _FakeLoopTime(3.0)]
    current = loops[0]
    monkeypatch.setattr(asyncio, "get_running_loop", lambda: current)
    clock = StitchedClock()
    start = clock()
    current.now = 510.0
    assert clock() == pytest.approx(start + 10)
    current = loops[1]
    assert clock() == pytest.approx(start + 10)
    current.now = 4.0
    assert clock() == pytest.approx(start + 11)
