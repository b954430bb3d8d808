"""The forward delay: when a request is *counted* differs from when it was sent.

In process under looptime's virtual time (sends are paced exactly on the loop's clock), and
once over the loopback server.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from _emulator_support import send_signed

from rtc_segment.testing import Emulator, EmulatorRequest, Latency, RequestRecord, max_in_window

KEY = {"AppId": "app1", "RoomId": "room1", "TaskId": "task1"}
GET = {"Action": "GetSegmentTask", "Version": "2022-06-01", **KEY}
RATE = 60.0  # the client's pace, exactly the ceiling
GAP = 1 / RATE


def make_emulator(**kwargs: Any) -> Emulator:
    emulator = Emulator(**kwargs)
    emulator.add_task(*KEY.values())
    return emulator


async def send_paced(emulator: Emulator, count: int, *, timeout: float = 30.0) -> list[float]:
    """Send ``count`` GetSegmentTask exactly ``GAP`` apart, each without waiting for the
    answers before it; return the send times (loop clock), once every answer is in."""
    loop = asyncio.get_running_loop()
    sent: list[float] = []
    async with httpx.AsyncClient(
        transport=emulator.transport(), base_url="https://rtc.volcengineapi.com", timeout=timeout
    ) as http:
        started = loop.time()
        in_flight = []
        for k in range(count):
            await asyncio.sleep(max(0.0, started + k * GAP - loop.time()))
            sent.append(loop.time())
            in_flight.append(asyncio.ensure_future(send_signed(http, GET)))
        await asyncio.gather(*in_flight)
    return sent


def handed_over(records: list[RequestRecord]) -> list[float]:
    """When each request was handed to the emulator, from its record."""
    return [record.arrival - record.forward_delay for record in records]


@pytest.mark.looptime
async def test_without_a_forward_delay_an_exactly_paced_client_is_never_throttled() -> None:
    emulator = make_emulator(qps=RATE)
    sent = await send_paced(emulator, 600)
    assert max_in_window(sent) == 60
    assert emulator.throttled_count == 0
    assert emulator.max_in_window(1.0) == 60
    assert all(record.forward_delay == 0.0 for record in emulator.requests)
    assert [record.arrival for record in emulator.requests] == pytest.approx(
        [t - sent[0] + emulator.requests[0].arrival for t in sent], abs=1e-6
    )


@pytest.mark.looptime
async def test_a_forward_delay_wider_than_the_gap_bunches_arrivals_and_is_throttled() -> None:
    spread = 3 * GAP  # jitter over 0-50 ms; the client sends every 16.7 ms
    emulator = make_emulator(qps=RATE, forward_delay=Latency.uniform(0.0, spread), seed=7)
    sent = await send_paced(emulator, 600)
    records = emulator.requests
    # The client was paced evenly; the server saw more than 60 in some second.
    assert max_in_window(sent) == 60
    # Each record still tells when its request was handed over (to the loop's microsecond).
    offset = sent[0] - min(handed_over(records))
    assert sorted(t + offset for t in handed_over(records)) == pytest.approx(sent, abs=1e-6)
    assert emulator.max_in_window(1.0) > 60
    assert emulator.throttled_count > 0
    assert emulator.max_in_window(1.0, admitted_only=True) == 60
    delays = [record.forward_delay for record in records]
    assert 0.0 <= min(delays) < GAP < 2 * GAP < max(delays) <= spread
    # Overtaking: the order of arrival is not the order of sending.
    assert handed_over(records) != sorted(handed_over(records))


@pytest.mark.looptime
async def test_a_constant_forward_delay_shifts_arrivals_without_bunching_them() -> None:
    emulator = make_emulator(qps=RATE, forward_delay=0.25)
    sent = await send_paced(emulator, 300)
    arrivals = [record.arrival for record in emulator.requests]
    assert emulator.throttled_count == 0
    assert max_in_window(arrivals) == 60
    offsets = [arrival - t for arrival, t in zip(arrivals, sent, strict=True)]
    assert max(offsets) - min(offsets) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.looptime
async def test_a_lognormal_forward_delay_is_reproducible_for_a_seed() -> None:
    def run_delays(seed: int) -> list[float]:
        return [record.forward_delay for record in emulators[seed].requests]

    emulators = {
        seed: make_emulator(qps=None, forward_delay=Latency.lognormal(0.005, 0.8), seed=seed)
        for seed in (1, 2)
    }
    again = make_emulator(qps=None, forward_delay=Latency.lognormal(0.005, 0.8), seed=1)
    for emulator in (*emulators.values(), again):
        await send_paced(emulator, 50)
    assert run_delays(1) == [record.forward_delay for record in again.requests]
    assert run_delays(1) != run_delays(2)
    assert all(delay > 0 for delay in run_delays(1))


@pytest.mark.looptime
async def test_the_forward_delay_draws_leave_the_latency_draws_alone() -> None:
    async def answer_delays(emulator: Emulator) -> list[float]:
        request = EmulatorRequest("GET", "/", "Action=GetSegmentTask", {})
        return [(await emulator.handle(request)).delay for _ in range(20)]

    latency = Latency.uniform(0.01, 0.2)
    plain = await answer_delays(Emulator(latency=latency, seed=3))
    delayed = await answer_delays(
        Emulator(latency=latency, forward_delay=Latency.uniform(0, 0.1), seed=3)
    )
    assert delayed == plain
    assert len(set(plain)) == 20


@pytest.mark.looptime
async def test_forward_delay_and_latency_add_up_for_the_client() -> None:
    emulator = make_emulator(forward_delay=0.1, latency=0.25)
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(
        transport=emulator.transport(), base_url="https://rtc.volcengineapi.com"
    ) as http:
        started, clock_at_start = loop.time(), emulator.clock()
        response = await send_signed(http, GET)
        elapsed = loop.time() - started
    assert response.status_code == 200
    assert elapsed == pytest.approx(0.35, abs=1e-6)
    (record,) = emulator.requests
    assert record.forward_delay == 0.1
    assert record.arrival - clock_at_start == pytest.approx(0.1, abs=1e-6)


@pytest.mark.looptime
async def test_a_request_arrives_even_when_its_sender_stops_waiting() -> None:
    emulator = make_emulator(forward_delay=2.0)
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(
        transport=emulator.transport(), base_url="https://rtc.volcengineapi.com", timeout=0.5
    ) as http:
        started = loop.time()
        with pytest.raises(httpx.ReadTimeout):
            await send_signed(http, GET)
        # The read timeout covers the way in: it fires on time, not after the delay.
        assert loop.time() - started == pytest.approx(0.5, abs=1e-6)
    assert emulator.count() == 0  # still on its way
    await asyncio.sleep(2.0)
    (record,) = emulator.requests
    assert (record.http_status, record.admitted) == (200, True)
    assert record.forward_delay == 2.0


def test_bad_forward_delays_are_refused_naming_the_argument() -> None:
    with pytest.raises(ValueError, match="forward_delay"):
        Emulator(forward_delay=-0.01)
    emulator = Emulator()
    with pytest.raises(ValueError, match="forward_delay"):
        emulator.forward_delay = "soon"  # type: ignore[assignment]
    emulator.forward_delay = 0.02
    assert emulator.forward_delay is not None
    emulator.forward_delay = 0
    assert emulator.forward_delay is None


async def test_the_served_emulator_delays_requests_too() -> None:
    emulator = make_emulator(forward_delay=0.05)
    async with emulator.serve() as url, httpx.AsyncClient(base_url=url) as http:
        before = emulator.clock()
        response = await send_signed(http, GET)
    assert response.status_code == 200
    (record,) = emulator.requests
    assert record.forward_delay == 0.05
    assert record.arrival - before >= 0.05
