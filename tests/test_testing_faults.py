"""Injected faults, through the real client, in process and over the loopback server."""

from __future__ import annotations

import contextlib

import httpx
import pytest
from _emulator_support import DELIVERIES, IN_PROCESS, client_for, raw_http_for

from rtc_segment import (
    ClientTimeoutError,
    ResponseFormatError,
    RtcSegmentError,
    SegmentClient,
    ServerError,
    TaskStatus,
    ThrottledError,
    TransportError,
)
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator, Fault

KEY = ("app1", "room1", "task1")

GATEWAY_ANSWERS = [
    (Fault.HTTP_500, 500, "InternalError", 100014),
    (Fault.HTTP_502, 502, "InternalServiceError", None),
    (Fault.HTTP_503, 503, "ServiceUnavailableTemp", None),
    (Fault.HTTP_504, 504, "InternalServiceTimeout", 100016),
]


@pytest.mark.parametrize("delivery", DELIVERIES)
@pytest.mark.parametrize(("fault", "status", "code", "code_n"), GATEWAY_ANSWERS)
async def test_server_errors_carry_gateway_bodies(
    delivery: str, fault: Fault, status: int, code: str, code_n: int | None
) -> None:
    emulator = Emulator()
    emulator.add_task(*KEY)
    emulator.faults.next(1, fault)
    async with client_for(emulator, delivery) as client:
        with pytest.raises(ServerError) as caught:
            await client.get_segment_task(*KEY)
        # The script is used up: the next request is served.
        assert (await client.get_segment_task(*KEY)).status is TaskStatus.RUNNING
    assert (caught.value.http_status, caught.value.code, caught.value.code_n) == (
        status,
        code,
        code_n,
    )
    assert caught.value.request_id == emulator.requests[0].request_id
    assert emulator.requests[0].fault is fault
    assert not emulator.requests[0].admitted  # a faulted request never reached the service


@pytest.mark.parametrize("delivery", DELIVERIES)
async def test_429_fault_sends_retry_after(delivery: str) -> None:
    emulator = Emulator()
    emulator.add_task(*KEY)
    emulator.faults.next(1, Fault.HTTP_429, retry_after=7)
    async with client_for(emulator, delivery) as client:
        with pytest.raises(ThrottledError) as caught:
            await client.get_segment_task(*KEY)
    assert (caught.value.http_status, caught.value.code) == (429, "FlowLimitExceeded")
    assert caught.value.retry_after == 7
    # An injected 429 is not the emulator's own ceiling.
    assert emulator.throttled_count == 0
    assert emulator.count(fault=Fault.HTTP_429) == 1


@pytest.mark.parametrize("delivery", DELIVERIES)
async def test_dropped_connection_is_a_transport_error(delivery: str) -> None:
    emulator = Emulator()
    emulator.add_task(*KEY)
    emulator.faults.next(1, Fault.DROP)
    async with client_for(emulator, delivery) as client:
        with pytest.raises(TransportError):
            await client.get_segment_task(*KEY)
        assert (await client.get_segment_task(*KEY)).status is TaskStatus.RUNNING
    assert emulator.requests[0].http_status is None
    assert emulator.task(*KEY).reads == 1  # the dropped request was not served


@pytest.mark.parametrize("delivery", DELIVERIES)
@pytest.mark.parametrize("fault", [Fault.TRUNCATED_BODY, Fault.HTML_BODY, Fault.EMPTY_BODY])
async def test_malformed_bodies_are_format_errors(delivery: str, fault: Fault) -> None:
    emulator = Emulator()
    emulator.add_task(*KEY)
    emulator.faults.next(1, fault)
    async with client_for(emulator, delivery) as client:
        with pytest.raises(ResponseFormatError):
            await client.get_segment_task(*KEY)
    assert emulator.task(*KEY).reads == 0


@pytest.mark.parametrize("delivery", DELIVERIES)
async def test_truncated_body_is_the_real_answer_cut_short(delivery: str) -> None:
    emulator = Emulator()
    emulator.add_task(*KEY)
    emulator.faults.next(1, Fault.TRUNCATED_BODY)
    async with raw_http_for(emulator, delivery) as http:
        response = await http.get("/?Action=GetSegmentTask&Version=2022-06-01")
    whole = b'{"ResponseMetadata":'
    assert response.status_code == 200
    assert response.content.startswith(whole)
    assert int(response.headers["content-length"]) == len(response.content)
    with pytest.raises(ValueError, match=r"Expecting|Unterminated"):
        response.json()


@pytest.mark.parametrize("delivery", DELIVERIES)
async def test_scripts_target_one_room(delivery: str) -> None:
    emulator = Emulator()
    emulator.add_task("app1", "room1", "t")
    emulator.add_task("app1", "room2", "t")
    emulator.faults.next(3, Fault.HTTP_503, room_id="room2")
    async with client_for(emulator, delivery) as client:
        outcomes = []
        for room in ("room1", "room2", "room1", "room2", "room2", "room2", "room1"):
            try:
                await client.get_segment_task("app1", room, "t")
                outcomes.append("ok")
            except ServerError:
                outcomes.append("503")
    assert outcomes == ["ok", "503", "ok", "503", "503", "ok", "ok"]
    assert emulator.faults.pending == 0


@pytest.mark.parametrize("delivery", DELIVERIES)
async def test_retries_recover_from_a_scripted_fault(delivery: str) -> None:
    emulator = Emulator()
    emulator.add_task(*KEY)
    emulator.faults.next(2, Fault.HTTP_502)
    async with client_for(emulator, delivery, max_retries=2) as client:
        assert (await client.get_segment_task(*KEY)).status is TaskStatus.RUNNING
    assert [r.http_status for r in emulator.requests] == [502, 502, 200]


async def _run_mix(seed: int) -> list[Fault | None]:
    emulator = Emulator()
    emulator.add_task(*KEY)
    emulator.faults.set_mix(
        {
            Fault.HTTP_500: 0.1,
            Fault.HTTP_503: 0.1,
            Fault.DROP: 0.1,
            Fault.HTML_BODY: 0.1,
            Fault.HTTP_429: 0.1,
        },
        seed=seed,
    )
    async with SegmentClient(
        DEFAULT_CREDENTIALS, transport=emulator.transport(), max_retries=0, qps=10_000
    ) as client:
        for _ in range(200):
            with contextlib.suppress(RtcSegmentError):
                await client.get_segment_task(*KEY)
    return [record.fault for record in emulator.requests]


async def test_a_seeded_mix_is_reproducible_and_near_its_rates() -> None:
    first, again, other = await _run_mix(7), await _run_mix(7), await _run_mix(8)
    assert first == again
    assert first != other
    faulted = sum(1 for fault in first if fault is not None)
    assert 70 <= faulted <= 130  # 50 % of 200, loosely
    assert {fault for fault in first if fault is not None} == {
        Fault.HTTP_500,
        Fault.HTTP_503,
        Fault.DROP,
        Fault.HTML_BODY,
        Fault.HTTP_429,
    }


def test_mix_and_script_arguments_are_checked() -> None:
    emulator = Emulator()
    with pytest.raises(ValueError, match="sum to at most 1"):
        emulator.faults.set_mix({Fault.HTTP_500: 0.7, Fault.DROP: 0.4})
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        emulator.faults.set_mix({Fault.HTTP_500: -0.1})
    with pytest.raises(ValueError, match="count"):
        emulator.faults.next(0, Fault.HTTP_500)
    with pytest.raises(TypeError):
        emulator.faults.next(1, "http_500")  # type: ignore[arg-type]


@pytest.mark.looptime
async def test_slow_answer_times_the_client_out_in_virtual_time() -> None:
    emulator = Emulator()
    emulator.add_task(*KEY)
    emulator.faults.next(1, Fault.SLOW, slow_seconds=30)
    async with client_for(emulator, IN_PROCESS, timeout=2.0) as client:
        with pytest.raises(ClientTimeoutError, match=r"within the .* timeout"):
            await client.get_segment_task(*KEY)
    # A slow answer was still served: the request counted and was a read.
    assert emulator.requests[0].fault is Fault.SLOW
    assert emulator.requests[0].admitted


@pytest.mark.looptime
async def test_slow_answer_within_the_timeout_arrives_late() -> None:
    emulator = Emulator()
    emulator.add_task(*KEY)
    emulator.faults.next(1, Fault.SLOW, slow_seconds=3)
    async with client_for(emulator, IN_PROCESS, timeout=10.0) as client:
        assert (await client.get_segment_task(*KEY)).status is TaskStatus.RUNNING


async def test_slow_answer_times_out_over_the_loopback_server() -> None:
    emulator = Emulator()
    emulator.add_task(*KEY)
    emulator.faults.next(1, Fault.SLOW, slow_seconds=5)
    async with client_for(emulator, "loopback", timeout=0.2) as client:
        with pytest.raises(ClientTimeoutError, match=r"within the .* timeout"):
            await client.get_segment_task(*KEY)


async def test_in_process_drop_raises_the_httpx_error() -> None:
    emulator = Emulator()
    emulator.faults.next(1, Fault.DROP)
    async with httpx.AsyncClient(transport=emulator.transport()) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get("https://rtc.volcengineapi.com/?Action=GetSegmentTask")
