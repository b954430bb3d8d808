"""The emulator's record: frozen per-request records, exact counters, bounded memory."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import attrs
import httpx
import pytest
from _emulator_support import ManualClock, client_for

from rtc_segment import RtcSegmentError, TaskKey, TaskNotFoundError
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator, Fault, RequestRecord, max_in_window

KEY = ("app1", "room1", "task1")


async def test_records_are_frozen_and_describe_each_request() -> None:
    clock = ManualClock(50.0)
    emulator = Emulator(clock=clock)
    emulator.add_task(*KEY)
    async with client_for(emulator, "in_process") as client:
        await client.get_segment_task(*KEY)
        clock.advance(0.5)
        with pytest.raises(TaskNotFoundError):
            await client.get_segment_task("app1", "room1", "other")
    first, second = emulator.requests
    assert isinstance(first, RequestRecord)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        first.http_status = 500  # type: ignore[misc]
    assert (first.arrival, second.arrival) == (50.0, 50.5)
    assert first.key == TaskKey(*KEY)
    assert (first.method, first.action, first.version) == ("GET", "GetSegmentTask", "2022-06-01")
    assert first.account == first.access_key_id == DEFAULT_CREDENTIALS.access_key_id
    assert first.x_date is not None and first.x_date.endswith("Z")
    assert (first.http_status, first.error_code, first.ok) == (200, None, True)
    assert (second.http_status, second.error_code, second.ok) == (
        400,
        "InvalidParameter.ErrorActiveTaskNotFound",
        False,
    )
    assert first.request_id != second.request_id


async def test_count_filters() -> None:
    emulator = Emulator()
    emulator.add_task("a", "r1", "t")
    emulator.add_task("a", "r2", "t")
    emulator.faults.next(1, Fault.HTTP_500, room_id="r2")
    async with client_for(emulator, "in_process") as client:
        for room in ("r1", "r2", "r2", "r1"):
            with contextlib.suppress(RtcSegmentError):
                await client.get_segment_task("a", room, "t")
    assert emulator.count() == 4
    assert emulator.count(room_id="r2") == 2
    assert emulator.count(key=("a", "r1", "t")) == 2
    assert emulator.count(http_status=200) == 3
    assert emulator.count(fault=Fault.HTTP_500, room_id="r2") == 1
    assert emulator.count(ok=True, room_id="r2") == 1
    assert emulator.stats.by_status == {200: 3, 500: 1}
    assert emulator.stats.by_error == {"InternalError": 1}


async def test_record_limit_bounds_memory_but_counters_stay_exact() -> None:
    clock = ManualClock()
    emulator = Emulator(record_limit=10, qps=5, clock=clock)
    emulator.add_task(*KEY)
    async with client_for(emulator, "in_process") as client:
        for _ in range(8):  # 5 admitted, 3 throttled in the first second
            with contextlib.suppress(RtcSegmentError):
                await client.get_segment_task(*KEY)
        for _ in range(20):
            clock.advance(1.0)
            await client.get_segment_task(*KEY)
    assert len(emulator.requests) == 10
    assert emulator.count() == 28
    assert emulator.throttled_count == 3
    assert emulator.max_in_window(1.0) == 8  # exact, though those records were evicted
    assert emulator.max_in_window(1.0, admitted_only=True) == 5
    stats = emulator.stats
    assert (stats.requests, stats.admitted, stats.throttled) == (28, 25, 3)


async def test_max_in_window_other_widths_use_the_kept_records() -> None:
    clock = ManualClock()
    emulator = Emulator(clock=clock, qps=None)
    emulator.add_task(*KEY)
    async with client_for(emulator, "in_process") as client:
        for step in (0.0, 0.4, 0.4, 0.4, 0.4):  # arrivals at 0, .4, .8, 1.2, 1.6
            clock.advance(step)
            await client.get_segment_task(*KEY)
    assert emulator.max_in_window(1.0) == 3
    assert emulator.max_in_window(0.5) == 2
    assert emulator.max_in_window(2.0) == 5
    assert emulator.max_in_window(0.5, room_id="elsewhere") == 0


def test_max_in_window_counts_half_open_windows_in_any_order() -> None:
    assert max_in_window([]) == 0
    assert max_in_window([1.0, 0.0, 0.5, 0.999]) == 3  # unsorted is fine
    assert max_in_window([0.0, 0.5, 1.0, 1.5]) == 2  # exactly a second apart: two windows
    assert max_in_window([0.0, 0.1, 0.2, 0.3], 0.25) == 3
    assert max_in_window([0.0, 0.1, 0.2, 0.3], seconds=0.2) == 2


def test_max_in_window_does_not_count_float_noise_as_an_extra_event() -> None:
    # 60 per second, exactly, as a microsecond clock gives them (looptime's): the k-th send
    # of the next second can come out a hair under a second later (1.016667 - 1.0 < 0.016667).
    sends = [k * 16_667 / 1e6 for k in range(60)] + [(k * 16_667 + 10**6) / 1e6 for k in range(60)]
    assert any(b - a < 1.0 for a, b in zip(sends, sends[60:], strict=False))
    assert max_in_window(sends) == 60
    assert max_in_window([0.0, 1.0 - 2e-9]) == 2  # a real gap short of a second still counts


@pytest.mark.parametrize("seconds", [0, -1.0, float("nan"), True])
def test_max_in_window_refuses_a_bad_width(seconds: float) -> None:
    with pytest.raises(ValueError, match="seconds"):
        max_in_window([0.0], seconds)


async def test_reset_record_keeps_tasks_and_the_window() -> None:
    clock = ManualClock()
    emulator = Emulator(qps=2, clock=clock)
    emulator.add_task(*KEY)
    async with client_for(emulator, "in_process") as client:
        await client.get_segment_task(*KEY)
        await client.get_segment_task(*KEY)
        emulator.reset_record()
        assert emulator.count() == emulator.throttled_count == emulator.max_in_window() == 0
        with pytest.raises(Exception, match="FlowLimitExceeded"):
            await client.get_segment_task(*KEY)  # the window was not reset
    assert emulator.count() == emulator.throttled_count == 1
    assert emulator.task(*KEY).reads == 2


def test_run_emulator_serves_until_interrupted() -> None:
    script = (
        "from rtc_segment.testing import Emulator, run_emulator\n"
        "emulator = Emulator()\n"
        "emulator.seed_rooms(3)\n"
        "run_emulator(emulator, port=0, on_ready=lambda url: print(url, flush=True))\n"
        "print('stopped', emulator.count(), flush=True)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        response = httpx.get(f"{url}/?Action=GetSegmentTask&Version=2022-06-01", timeout=5)
        assert response.json()["ResponseMetadata"]["Error"]["Code"] == "MissingAuthenticationToken"
        process.send_signal(2)  # SIGINT, as Ctrl-C
        out, err = process.communicate(timeout=10)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert out.strip() == "stopped 1"


async def test_serve_picks_a_free_port_and_stops() -> None:
    emulator = Emulator()
    async with emulator.serve() as first, emulator.serve() as second:
        assert first != second
        async with httpx.AsyncClient() as http:
            response = await http.get(f"{first}/")
            assert response.status_code == 400  # MissingParameter: no Action
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"{first}/")
