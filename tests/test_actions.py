"""StartSegment / UpdateSegment / StopSegment: validation, bodies, signing, retry policy.

HTTP is mocked with respx; emulator-driven scenarios live in tests/test_actions_emulator.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx

from rtc_segment import (
    Backoff,
    ClientTimeoutError,
    Control,
    Credentials,
    CustomConfig,
    InvalidParameterError,
    LocalRateLimiter,
    SegmentClient,
    StorageConfig,
    StorageType,
    Stream,
    TargetStreams,
    TaskNotFoundError,
    TosConfig,
    TransportError,
)

CREDENTIALS = Credentials("AKLTtestAccessKey", "c2VjcmV0")
ENDPOINT = "https://rtc.volcengineapi.com"
NOW = datetime(2024, 3, 5, 7, 8, 9, tzinfo=UTC)
TOS = StorageConfig(type=StorageType.TOS, tos_config=TosConfig(account_id="2100", bucket="b"))


def envelope(action: str, error: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "RequestId": "req",
        "Action": action,
        "Version": "2022-06-01",
        "Service": "rtc",
        "Region": "cn-north-1",
    }
    if error:
        metadata["Error"] = {"Code": error, "Message": "m"}
        return {"ResponseMetadata": metadata}
    return {"ResponseMetadata": metadata, "Result": "ok"}


def task_envelope(status: int) -> dict[str, Any]:
    body = envelope("GetSegmentTask")
    body["Result"] = {"SegmentTask": {"Status": status, "StartTime": 1, "EndTime": 0}}
    return body


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=ENDPOINT, assert_all_called=False) as router:
        yield router


def client(**kwargs: Any) -> SegmentClient:
    kwargs.setdefault("credentials", CREDENTIALS)
    kwargs.setdefault("backoff", Backoff.disabled())
    kwargs.setdefault("clock", lambda: NOW)
    return SegmentClient(**kwargs)


async def test_start_sends_a_signed_json_post(mock: respx.MockRouter) -> None:
    route = mock.post("/").respond(200, json=envelope("StartSegment"))
    async with client() as c:
        await c.start_segment(
            "app",
            "room",
            "task",
            storage_config=TOS,
            target_streams=[Stream(index=0, user_id="u0"), Stream(index=1, user_id="u1")],
            duration=30,
            control=Control(align=True, redundant_duration=2000),
            identifier="prefix_1",
            business_id="biz",
        )
    request = route.calls.last.request
    assert request.url.query == b"Action=StartSegment&Version=2022-06-01"
    assert request.headers["Content-Type"] == "application/json"
    assert (
        "SignedHeaders=content-type;host;x-content-sha256;x-date,"
        in (request.headers["Authorization"])
    )
    import hashlib

    assert request.headers["X-Content-Sha256"] == hashlib.sha256(request.content).hexdigest()
    body = json.loads(request.content)
    assert body == {
        "AppId": "app",
        "RoomId": "room",
        "TaskId": "task",
        "BusinessId": "biz",
        "MaxIdleTime": 180,
        "Duration": 30,
        "Handle": True,
        "TargetStreams": {
            "StreamList": [
                {"Index": 0, "UserId": "u0", "StreamType": 0},
                {"Index": 1, "UserId": "u1", "StreamType": 0},
            ]
        },
        "Identifier": "prefix_1",
        "Control": {
            "Align": True,
            "Mixed": False,
            "IgnoreSilence": False,
            "RedundantDuration": 2000,
        },
        "StorageConfig": {
            "Type": 0,
            "TosConfig": {"AccountId": "2100", "Bucket": "b", "Region": 0},
        },
    }


async def test_custom_storage_credentials_are_sent_but_never_shown(mock: respx.MockRouter) -> None:
    route = mock.post("/").respond(400, json=envelope("StartSegment", "InvalidParameter"))
    storage = StorageConfig(
        type=StorageType.CUSTOM,
        custom_config=CustomConfig(bucket="b", access_key="canary-ak", secret_key="canary-sk"),
    )
    async with client() as c:
        with pytest.raises(InvalidParameterError) as info:
            await c.start_segment("a", "r", "t", storage_config=storage)
    body = json.loads(route.calls.last.request.content)
    assert body["StorageConfig"]["CustomConfig"]["SecretKey"] == "canary-sk"
    for text in (repr(storage), str(info.value), repr(info.value)):
        assert "canary" not in text


@pytest.mark.parametrize(
    ("kwargs", "exc", "fragment"),
    [
        ({"duration": 0}, ValueError, "duration"),
        ({"duration": 601}, ValueError, "duration"),
        ({"duration": 2.5}, TypeError, "duration"),
        ({"max_idle_time": 86401}, ValueError, "max_idle_time"),
        ({"max_idle_time": True}, TypeError, "max_idle_time"),
        ({"handle": "yes"}, TypeError, "handle"),
        ({"identifier": "bad id"}, ValueError, "identifier"),
        ({"business_id": ""}, ValueError, "business_id"),
        ({"target_streams": [Stream(index=i, user_id=f"u{i}") for i in range(18)]}, ValueError, "at most 17"),
        ({"target_streams": [Stream(index=1, user_id="a"), Stream(index=1, user_id="b")]}, ValueError, "duplicate"),
        ({"target_streams": ["u1"]}, TypeError, "Stream"),
        ({"target_streams": TargetStreams(stream_list=(Stream(user_id="bad user"),))}, ValueError, "user_id"),
        ({"storage_config": None}, TypeError, "storage_config"),
        ({"storage_config": StorageConfig(type=StorageType.VOD)}, ValueError, "vod_config"),
        ({"control": {"Align": True}}, TypeError, "control"),
        ({"control": Control(redundant_duration=-1)}, ValueError, "redundant_duration"),
        ({"storage_config": StorageConfig(tos_config=TosConfig(bucket="b"))}, ValueError, "account_id"),
        ({"storage_config": StorageConfig(type=StorageType.CUSTOM, custom_config=CustomConfig(bucket="b", access_key="a"))}, ValueError, "secret_key"),
    ],
)  # fmt: skip
async def test_start_validation_happens_before_sending(
    mock: respx.MockRouter, kwargs: dict[str, Any], exc: type[Exception], fragment: str
) -> None:
    route = mock.post("/").respond(200, json=envelope("StartSegment"))
    arguments: dict[str, Any] = {"storage_config": TOS, **kwargs}
    async with client() as c:
        with pytest.raises(exc, match=fragment):
            await c.start_segment("a", "r", "t", **arguments)
    assert route.call_count == 0


async def test_update_and_stop_bodies(mock: respx.MockRouter) -> None:
    route = mock.post("/").mock(
        side_effect=[
            httpx.Response(200, json=envelope("UpdateSegment")),
            httpx.Response(200, json=envelope("StopSegment")),
        ]
    )
    async with client() as c:
        await c.update_segment("a", "r", "t", duration=60, handle=False)
        await c.stop_segment("a", "r", "t", business_id="b1")
    update, stop = (json.loads(call.request.content) for call in route.calls)
    assert update == {"AppId": "a", "RoomId": "r", "TaskId": "t", "Handle": False, "Duration": 60}
    assert stop == {"AppId": "a", "RoomId": "r", "TaskId": "t", "BusinessId": "b1"}
    assert route.calls[0].request.url.params["Action"] == "UpdateSegment"
    assert route.calls[1].request.url.params["Action"] == "StopSegment"


async def test_update_needs_something_to_change(mock: respx.MockRouter) -> None:
    async with client() as c:
        with pytest.raises(ValueError, match="at least one"):
            await c.update_segment("a", "r", "t")
        with pytest.raises(ValueError, match="duration"):
            await c.update_segment("a", "r", "t", duration=700)


async def test_ambiguous_start_that_landed_is_not_sent_twice(mock: respx.MockRouter) -> None:
    start = mock.post("/").mock(side_effect=httpx.ReadTimeout("lost answer"))
    get = mock.get("/").respond(200, json=task_envelope(status=2))
    async with client() as c:
        await c.start_segment("a", "r", "t", storage_config=TOS)
    assert start.call_count == 1
    assert get.call_count == 1


async def test_ambiguous_start_that_did_not_land_is_sent_again(mock: respx.MockRouter) -> None:
    start = mock.post("/").mock(
        side_effect=[
            httpx.Response(502, text="bad gateway"),
            httpx.Response(200, json=envelope("StartSegment")),
        ]
    )
    get = mock.get("/").respond(
        400, json=envelope("GetSegmentTask", "InvalidParameter.ErrorActiveTaskNotFound")
    )
    async with client() as c:
        await c.start_segment("a", "r", "t", storage_config=TOS)
    assert (start.call_count, get.call_count) == (2, 1)


async def test_ambiguous_start_gives_up_within_the_retry_budget(mock: respx.MockRouter) -> None:
    start = mock.post("/").mock(side_effect=httpx.ReadTimeout("lost"))
    mock.get("/").respond(
        400, json=envelope("GetSegmentTask", "InvalidParameter.ErrorActiveTaskNotFound")
    )
    async with client(max_retries=2) as c:
        with pytest.raises(ClientTimeoutError) as info:
            await c.start_segment("a", "r", "t", storage_config=TOS)
    assert start.call_count == 3
    assert info.value.ambiguous


async def test_start_not_sent_is_retried_normally(mock: respx.MockRouter) -> None:
    start = mock.post("/").mock(
        side_effect=[
            httpx.ConnectError("refused"),
            httpx.Response(200, json=envelope("StartSegment")),
        ]
    )
    get = mock.get("/").respond(200, json=task_envelope(status=2))
    async with client() as c:
        await c.start_segment("a", "r", "t", storage_config=TOS)
    assert (start.call_count, get.call_count) == (2, 0)


async def test_ambiguous_start_of_an_ended_task_raises(mock: respx.MockRouter) -> None:
    mock.post("/").mock(side_effect=httpx.RemoteProtocolError("dropped"))
    mock.get("/").respond(200, json=task_envelope(status=3))
    async with client() as c:
        with pytest.raises(TransportError) as info:
            await c.start_segment("a", "r", "t", storage_config=TOS)
    assert info.value.ambiguous


async def test_stop_retried_after_it_landed_counts_as_success(mock: respx.MockRouter) -> None:
    route = mock.post("/").mock(
        side_effect=[
            httpx.ReadTimeout("lost answer"),
            httpx.Response(
                400, json=envelope("StopSegment", "InvalidParameter.ErrorActiveTaskNotFound")
            ),
        ]
    )
    async with client() as c:
        await c.stop_segment("a", "r", "t")
    assert route.call_count == 2


async def test_stop_of_a_missing_task_raises(mock: respx.MockRouter) -> None:
    mock.post("/").respond(
        400, json=envelope("StopSegment", "InvalidParameter.ErrorActiveTaskNotFound")
    )
    async with client() as c:
        with pytest.raises(TaskNotFoundError) as info:
            await c.stop_segment("a", "r", "t")
    assert not info.value.ambiguous
    assert "ended already" in str(info.value)
    assert "72 hours" not in str(info.value)


def test_each_action_has_its_own_limiter_at_its_ceiling() -> None:
    c = client()
    ceilings = {name: limiter.qps for name, limiter in c._limiters.items()}
    assert ceilings == {
        "GetSegmentTask": 60.0,
        "StartSegment": 60.0,
        "UpdateSegment": 150.0,
        "StopSegment": 150.0,
    }
    shared = LocalRateLimiter(10)
    custom = client(action_limiters={"StopSegment": shared})
    assert dict(custom._limiters.items())["StopSegment"] is shared
    with pytest.raises(ValueError, match="unknown action"):
        client(action_limiters={"Nope": shared})


def test_limiters_are_derived_with_for_action_when_offered() -> None:
    class Derivable:
        qps = 60.0
        made: list[tuple[str, float]] = []  # noqa: RUF012

        async def acquire(self) -> None:
            return None

        def for_action(self, action: str, qps: float) -> LocalRateLimiter:
            self.made.append((action, qps))
            return LocalRateLimiter(qps)

    limiter = Derivable()
    client(limiter=limiter)
    assert limiter.made == [
        ("StartSegment", 60.0),
        ("UpdateSegment", 150.0),
        ("StopSegment", 150.0),
    ]
