"""Tests for rtc_segment._other_actions: any RTC action through the client's one paced path."""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import pytest
import respx

from rtc_segment import (
    ActionResult,
    Backoff,
    InvalidParameterError,
    SegmentClient,
    ServerError,
    TaskStatus,
)
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator, Fault

KEY = {"AppId": "app", "RoomId": "room", "TaskId": "task"}


def client_on(emulator: Emulator, **kwargs: Any) -> SegmentClient:
    kwargs.setdefault("backoff", Backoff.disabled())
    return SegmentClient(
        DEFAULT_CREDENTIALS, transport=emulator.transport(), clock=emulator.wall_clock, **kwargs
    )


async def test_a_known_action_through_call_answers_its_result_as_json() -> None:
    emulator = Emulator()
    emulator.add_task("app", "room", "task", status=TaskStatus.RUNNING)
    async with client_on(emulator) as client:
        answer = await client.call("GetSegmentTask", "2023-11-01", qps=60, query=KEY)
        # It waited on the same limiter as get_segment_task: one ceiling per action.
        assert dict(client._limiters.items())["GetSegmentTask"] is client.limiter
    assert isinstance(answer, ActionResult)
    assert answer.http_status == 200
    assert answer.request_id
    assert answer.result["SegmentTask"]["Status"] == int(TaskStatus.RUNNING)
    record = emulator.requests[-1]
    assert (record.action, record.version) == ("GetSegmentTask", "2023-11-01")


async def test_a_json_body_is_posted_and_signed() -> None:
    emulator = Emulator()
    body = {
        **KEY,
        "StorageConfig": {"Type": 0, "TosConfig": {"AccountId": "2100", "Bucket": "b"}},
    }
    async with client_on(emulator) as client:
        answer = await client.call("StartSegment", "2022-06-01", qps=60, json=body)
    assert answer.result == "ok"
    assert emulator.task("app", "room", "task").task.status is TaskStatus.RUNNING


async def test_an_unknown_action_is_the_services_invalid_action_or_version() -> None:
    emulator = Emulator()
    async with client_on(emulator) as client:
        with pytest.raises(InvalidParameterError) as caught:
            await client.call("StartRecord", "2023-11-01", qps=20, json={"AppId": "app"})
    assert caught.value.code == "InvalidActionOrVersion"
    assert caught.value.http_status == 404
    # It had a limiter of its own, at the ceiling given.
    assert dict(client._limiters.items())["StartRecord"].qps == 20


@pytest.mark.parametrize(("idempotent", "attempts"), [(False, 1), (True, 3)])
async def test_retrying_a_call_that_may_have_landed_is_opt_in(
    idempotent: bool, attempts: int
) -> None:
    emulator = Emulator()
    emulator.add_task("app", "room", "task")
    emulator.faults.next(5, Fault.HTTP_500)
    async with client_on(emulator, max_retries=2) as client:
        with pytest.raises(ServerError) as caught:
            await client.call(
                "UpdateSegment",
                "2022-06-01",
                qps=150,
                json={**KEY, "Duration": 30},
                idempotent=idempotent,
            )
    assert caught.value.attempts == attempts
    assert emulator.count() == attempts


@pytest.mark.parametrize(
    ("kwargs", "error", "names"),
    [
        ({"action": "get segment"}, ValueError, "action"),
        ({"action": 7}, ValueError, "action"),
        ({"version": "latest"}, ValueError, "version"),
        ({"qps": 0}, ValueError, "qps"),
        ({"qps": math.nan}, ValueError, "qps"),
        ({"qps": "60"}, TypeError, "qps"),
        ({"query": {"Action": "X"}}, ValueError, "Action"),
        ({"query": {"AppId": 1}}, TypeError, "query"),
        ({"query": ["AppId"]}, TypeError, "query"),
        ({"json": {"when": object()}}, TypeError, "json"),
        ({"json": {"x": math.inf}}, TypeError, "json"),
        ({"json": {}, "method": "GET"}, ValueError, "GET"),
        ({"method": "DELETE"}, ValueError, "method"),
        ({"idempotent": 1}, TypeError, "idempotent"),
        ({"deadline": -1}, ValueError, "deadline"),
    ],
)
async def test_bad_arguments_are_refused_before_anything_is_sent(
    kwargs: dict[str, Any], error: type[Exception], names: str
) -> None:
    emulator = Emulator()
    arguments: dict[str, Any] = {"action": "GetSegmentTask", "version": "2022-06-01", "qps": 60}
    arguments.update(kwargs)
    async with client_on(emulator) as client:
        with pytest.raises(error, match=names):
            await client.call(**arguments)
    assert emulator.count() == 0


async def test_query_values_reach_the_wire_signed_and_encoded() -> None:
    with respx.mock(base_url="https://rtc.volcengineapi.com") as mock:
        route = mock.get("/").respond(
            200, json={"ResponseMetadata": {"RequestId": "r1"}, "Result": {"Users": []}}
        )
        async with SegmentClient(DEFAULT_CREDENTIALS) as client:
            answer = await client.call(
                "GetRoomOnlineUsers", "2023-11-01", qps=20, query={"AppId": "a b", "RoomId": "r"}
            )
    assert answer == ActionResult(result={"Users": []}, request_id="r1", http_status=200)
    request: httpx.Request = route.calls.last.request
    assert request.url.params["Action"] == "GetRoomOnlineUsers"
    assert request.url.params["AppId"] == "a b"
    assert "Authorization" in request.headers
    assert json.loads(request.content or b"null") is None
