"""StartSegment / UpdateSegment / StopSegment through the real client against the emulator.

Success and the state GetSegmentTask then shows, the client's checks (nothing sent), the
service's errors (also for bodies only a raw request can send), the retry policy of each
action under injected faults, and each action's own ceiling. Time is virtual (looptime).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from rtc_segment import (
    Backoff,
    Control,
    CustomConfig,
    InvalidParameterError,
    LocalRateLimiter,
    SegmentClient,
    StopReason,
    StorageConfig,
    StorageType,
    Stream,
    StreamType,
    TargetStreams,
    TaskNotFoundError,
    TaskStatus,
    TosConfig,
    TransportError,
    Vendor,
    VodConfig,
)
from rtc_segment._signing import Signer
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator, Fault, Lifecycle

pytestmark = pytest.mark.looptime

KEY = ("app", "room", "task")
TOS = StorageConfig(type=StorageType.TOS, tos_config=TosConfig(account_id="2100", bucket="b"))
STORAGE_SECRET = "storage-secret-never-shown"


@contextlib.asynccontextmanager
async def client_for(emulator: Emulator, **kwargs: Any) -> AsyncIterator[SegmentClient]:
    """A real client on the emulator's in-process transport, signing with its wall clock."""
    kwargs.setdefault("max_retries", 3)
    kwargs.setdefault("backoff", Backoff.disabled())
    async with SegmentClient(
        DEFAULT_CREDENTIALS,
        transport=emulator.transport(),
        clock=emulator.wall_clock,
        **kwargs,
    ) as client:
        yield client


def actions(emulator: Emulator) -> list[tuple[str | None, int | None]]:
    """``(action, HTTP status)`` of every request the emulator saw, in order."""
    return [(record.action, record.http_status) for record in emulator.requests]


# -- success, and what GetSegmentTask shows afterwards ------------------------------------


async def test_start_creates_a_running_task_with_every_field() -> None:
    emulator = Emulator()
    streams = [Stream(index=0, user_id="alice"), Stream(2, "bob", StreamType.SCREEN)]
    control = Control(align=True, mixed=True, ignore_silence=True, redundant_duration=3000)
    storage = StorageConfig(
        type=StorageType.CUSTOM,
        custom_config=CustomConfig(
            vendor=Vendor(1), region=3, bucket="slices", access_key="AKX", secret_key="SKX"
        ),
    )
    async with client_for(emulator) as client:
        await client.start_segment(
            *KEY,
            storage_config=storage,
            target_streams=streams,
            duration=30,
            max_idle_time=600,
            handle=False,
            identifier="prefix-1",
            control=control,
            business_id="biz",
        )
        started_ms = int(emulator.wall_clock().timestamp() * 1000)
        task = await client.get_segment_task(*KEY)
    assert task.status is TaskStatus.RUNNING
    assert task.start_time == started_ms and task.end_time == 0
    assert task.stop_reason is None
    assert task.target_streams == TargetStreams(tuple(streams))
    assert (task.duration, task.max_idle_time, task.handle) == (30, 600, False)
    assert task.identifier == "prefix-1"
    assert task.control == control
    assert task.storage_config is not None
    custom = task.storage_config.custom_config
    assert task.storage_config.type is StorageType.CUSTOM
    assert custom == CustomConfig(vendor=Vendor(1), region=3, bucket="slices")  # no AK/SK back
    assert actions(emulator) == [("StartSegment", 200), ("GetSegmentTask", 200)]


async def test_start_applies_the_documented_defaults() -> None:
    emulator = Emulator()
    async with client_for(emulator) as client:
        await client.start_segment(*KEY, storage_config=TOS)
        task = await client.get_segment_task(*KEY)
    assert (task.duration, task.max_idle_time, task.handle) == (20, 180, True)
    assert task.target_streams == TargetStreams()  # every stream in the room
    assert task.storage_config is not None and task.storage_config.tos_config == TosConfig(
        account_id="2100", bucket="b", region=0
    )


async def test_update_changes_only_the_given_fields() -> None:
    emulator = Emulator()
    async with client_for(emulator) as client:
        await client.start_segment(*KEY, storage_config=TOS, identifier="old", duration=20)
        before = await client.get_segment_task(*KEY)
        await client.update_segment(*KEY, duration=45)
        after_duration = await client.get_segment_task(*KEY)
        await client.update_segment(*KEY, identifier="new", handle=False)
        after_all = await client.get_segment_task(*KEY)
    assert (after_duration.duration, after_duration.identifier, after_duration.handle) == (
        45,
        "old",
        True,
    )
    assert (after_all.duration, after_all.identifier, after_all.handle) == (45, "new", False)
    assert after_all.start_time == before.start_time
    assert after_all.status is TaskStatus.RUNNING


async def test_stop_ends_the_task_by_api_at_the_current_time() -> None:
    emulator = Emulator()
    async with client_for(emulator) as client:
        await client.start_segment(*KEY, storage_config=TOS)
        await asyncio.sleep(42)
        await client.stop_segment(*KEY)
        task = await client.get_segment_task(*KEY)
    assert (task.status, task.stop_reason) == (TaskStatus.ENDED, StopReason.STOP_BY_API)
    assert task.end_time - task.start_time == 42_000


async def test_stop_of_a_task_that_has_not_started_ends_it_and_cancels_its_lifecycle() -> None:
    emulator = Emulator()
    emulator.add_task(*KEY, lifecycle=Lifecycle.after_seconds(running=10, ended=20))
    async with client_for(emulator) as client:
        await client.stop_segment(*KEY)
        await asyncio.sleep(30)
        task = await client.get_segment_task(*KEY)
    assert (task.status, task.stop_reason) == (TaskStatus.ENDED, StopReason.STOP_BY_API)
    assert task.start_time == task.end_time > 0


async def test_starting_the_id_of_an_ended_task_starts_a_new_run() -> None:
    emulator = Emulator()
    emulator.add_task(*KEY, status=TaskStatus.ENDED, identifier="first-run")
    async with client_for(emulator) as client:
        await asyncio.sleep(5)
        await client.start_segment(*KEY, storage_config=TOS, identifier="second-run")
        task = await client.get_segment_task(*KEY)
    assert task.status is TaskStatus.RUNNING
    assert (task.identifier, task.end_time, task.stop_reason) == ("second-run", 0, None)
    assert emulator.task_keys == [KEY]


# -- the client's checks: nothing is sent -----------------------------------------------


START_REJECTED: list[Any] = [
    pytest.param({"duration": 0}, "duration", id="duration-0"),
    pytest.param({"duration": 601}, "duration", id="duration-601"),
    pytest.param({"max_idle_time": 0}, "max_idle_time", id="max-idle-0"),
    pytest.param({"max_idle_time": 86401}, "max_idle_time", id="max-idle-86401"),
    pytest.param(
        {"target_streams": [Stream(i, f"u{i}") for i in range(18)]}, "at most 17", id="18-streams"
    ),
    pytest.param(
        {"target_streams": [Stream(1, "a"), Stream(1, "b")]}, "duplicate Index", id="dup-index"
    ),
    pytest.param({"target_streams": [Stream(0, "a b")]}, "user_id", id="bad-user-id"),
    pytest.param({"identifier": "bad/prefix"}, "identifier", id="bad-identifier"),
    pytest.param({"business_id": "x" * 129}, "business_id", id="long-business-id"),
    pytest.param(
        {"storage_config": StorageConfig(type=StorageType.VOD, tos_config=TosConfig())},
        "vod_config",
        id="storage-type-mismatch",
    ),
    pytest.param({"storage_config": None}, "storage_config", id="no-storage"),
]


@pytest.mark.parametrize(("changes", "named"), START_REJECTED)
async def test_start_arguments_are_checked_before_sending(
    changes: dict[str, Any], named: str
) -> None:
    emulator = Emulator()
    arguments: dict[str, Any] = {"storage_config": TOS, **changes}
    async with client_for(emulator) as client:
        with pytest.raises((TypeError, ValueError), match=named):
            await client.start_segment(*KEY, **arguments)
    assert emulator.count() == 0


@pytest.mark.parametrize(
    ("call", "named"),
    [
        pytest.param(("start", ("app", "bad room", "t"), {"storage_config": TOS}), "room_id"),
        pytest.param(("update", KEY, {}), "at least one"),
        pytest.param(("update", KEY, {"duration": 601}), "duration"),
        pytest.param(("update", KEY, {"handle": "yes"}), "handle"),
        pytest.param(("update", ("app", "room", "t&x"), {"duration": 5}), "task_id"),
        pytest.param(("stop", ("", "room", "task"), {}), "app_id"),
        pytest.param(("stop", KEY, {"business_id": "b i z"}), "business_id"),
    ],
    ids=[
        "start-id",
        "update-empty",
        "update-duration",
        "update-handle",
        "update-id",
        "stop-id",
        "stop-business-id",
    ],
)
async def test_update_and_stop_arguments_are_checked_before_sending(
    call: tuple[str, tuple[str, str, str], dict[str, Any]], named: str
) -> None:
    emulator = Emulator()
    name, key, kwargs = call
    async with client_for(emulator) as client:
        method = getattr(client, f"{name}_segment")
        with pytest.raises((TypeError, ValueError), match=named):
            await method(*key, **kwargs)
    assert emulator.count() == 0


# -- the service's errors -------------------------------------------------------------------


async def test_start_of_a_task_that_has_not_ended_is_task_already_exists() -> None:
    emulator = Emulator()
    emulator.add_task("app", "room", "waiting", lifecycle=Lifecycle.after_seconds(running=60))
    async with client_for(emulator) as client:
        await client.start_segment(*KEY, storage_config=TOS, identifier="kept")
        with pytest.raises(InvalidParameterError) as running:
            await client.start_segment(*KEY, storage_config=TOS, identifier="replaced")
        with pytest.raises(InvalidParameterError) as not_started:
            await client.start_segment("app", "room", "waiting", storage_config=TOS)
        task = await client.get_segment_task(*KEY)
    for error in (running.value, not_started.value):
        assert error.code == "InvalidParameter.TaskAlreadyExists"
        assert error.http_status == 400 and error.attempts == 1 and not error.ambiguous
    assert task.identifier == "kept"


@pytest.mark.parametrize("name", ["update", "stop"])
async def test_update_and_stop_of_a_missing_or_ended_task_are_not_found(name: str) -> None:
    emulator = Emulator()
    emulator.add_task("app", "room", "ended", status=TaskStatus.FAILED)
    kwargs = {"duration": 30} if name == "update" else {}
    async with client_for(emulator) as client:
        method = getattr(client, f"{name}_segment")
        for task_id in ("missing", "ended"):
            with pytest.raises(TaskNotFoundError) as caught:
                await method("app", "room", task_id, **kwargs)
            assert caught.value.code == "InvalidParameter.ErrorActiveTaskNotFound"
            assert caught.value.attempts == 1  # a definite answer: not retried
    assert emulator.task("app", "room", "ended").task.status is TaskStatus.FAILED


def _storage(**override: Any) -> dict[str, Any]:
    return {"Type": 0, "TosConfig": {"AccountId": "2100", "Bucket": "b", "Region": 0}, **override}


def _start_body(**override: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"AppId": "app", "RoomId": "room", "TaskId": "task"}
    body["StorageConfig"] = _storage()
    body.update(override)
    return {name: value for name, value in body.items() if value is not None}


async def raw_post(emulator: Emulator, action: str, body: bytes) -> httpx.Response:
    """A correctly signed POST with any body: what the real client would never send."""
    signer = Signer(DEFAULT_CREDENTIALS, region="cn-north-1", service="rtc")
    query = {"Action": action, "Version": "2022-06-01"}
    signed = signer.sign(
        method="POST",
        host="rtc.volcengineapi.com",
        query=query,
        body=body,
        content_type="application/json",
        now=emulator.wall_clock(),
    )
    async with httpx.AsyncClient(
        transport=emulator.transport(), base_url="https://rtc.volcengineapi.com"
    ) as http:
        return await http.post(f"/?{signed.query_string}", headers=signed.headers, content=body)


def _error(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["ResponseMetadata"]["Error"]
    return error


SERVICE_REJECTED: list[Any] = [
    pytest.param(_start_body(Duration=0), "Duration", id="duration-0"),
    pytest.param(_start_body(Duration=20.5), "Duration", id="duration-fraction"),
    pytest.param(_start_body(MaxIdleTime=86401), "MaxIdleTime", id="max-idle"),
    pytest.param(_start_body(Handle="yes"), "Handle", id="handle-str"),
    pytest.param(
        _start_body(TargetStreams={"StreamList": [{"Index": i, "UserId": "u"} for i in range(18)]}),
        "TargetStreams.StreamList",
        id="18-streams",
    ),
    pytest.param(
        _start_body(
            TargetStreams={"StreamList": [{"Index": 1, "UserId": "a"}, {"Index": 1, "UserId": "b"}]}
        ),
        "TargetStreams.StreamList[1].Index",
        id="dup-index",
    ),
    pytest.param(
        _start_body(TargetStreams={"StreamList": [{"Index": 0}]}),
        "TargetStreams.StreamList[0].UserId",
        id="no-user-id",
    ),
    pytest.param(_start_body(Identifier="a b"), "Identifier", id="bad-identifier"),
    pytest.param(_start_body(BusinessId="x" * 129), "BusinessId", id="bad-business-id"),
    pytest.param(_start_body(TaskId="a&b"), "TaskId", id="bad-task-id"),
    pytest.param(_start_body(StorageConfig=None), "StorageConfig", id="no-storage"),
    pytest.param(
        _start_body(StorageConfig=_storage(Type=1)), "StorageConfig.VodConfig", id="type-mismatch"
    ),
    pytest.param(_start_body(StorageConfig=_storage(Type=7)), "StorageConfig.Type", id="type-7"),
    pytest.param(
        _start_body(StorageConfig=_storage(TosConfig={"AccountId": "2100"})),
        "StorageConfig.TosConfig.Bucket",
        id="no-bucket",
    ),
    pytest.param(
        _start_body(StorageConfig={"Type": 2, "CustomConfig": {"Bucket": "b", "AccessKey": "AKX"}}),
        "StorageConfig.CustomConfig.SecretKey",
        id="no-secret-key",
    ),
]


@pytest.mark.parametrize(("body", "named"), SERVICE_REJECTED)
async def test_the_emulator_rejects_invalid_start_bodies_naming_the_field(
    body: dict[str, Any], named: str
) -> None:
    emulator = Emulator()
    response = await raw_post(emulator, "StartSegment", json.dumps(body).encode())
    assert response.status_code == 400
    error = _error(response)
    assert error["Code"].startswith("InvalidParameter")
    assert named in error["Message"]
    assert emulator.task_keys == []
    assert emulator.count(action="StartSegment", error_code=error["Code"]) == 1


@pytest.mark.parametrize("task_id", ["task", "missing"])
async def test_the_emulator_rejects_invalid_update_bodies_before_looking_for_the_task(
    task_id: str,
) -> None:
    emulator = Emulator()
    emulator.add_task(*KEY)
    body = {"AppId": "app", "RoomId": "room", "TaskId": task_id, "Duration": 0, "Handle": True}
    response = await raw_post(emulator, "UpdateSegment", json.dumps(body).encode())
    assert response.status_code == 400
    assert _error(response)["Code"] == "InvalidParameter"
    assert "Duration" in _error(response)["Message"]
    assert emulator.task(*KEY).task.duration == 20  # nothing changed, not even Handle


@pytest.mark.parametrize(
    ("body", "code"),
    [(b"", "InvalidParameter.BodyIsEmpty"), (b"[1, 2]", "InvalidParameter.Unmarshal")],
)
async def test_a_post_without_a_json_object_is_refused(body: bytes, code: str) -> None:
    emulator = Emulator()
    response = await raw_post(emulator, "StopSegment", body)
    assert (response.status_code, _error(response)["Code"]) == (400, code)


async def test_storage_secrets_are_never_answered_recorded_or_quoted() -> None:
    emulator = Emulator()
    # A SecretKey of the wrong type: the message must not quote it.
    config = {"Bucket": "b", "AccessKey": STORAGE_SECRET, "SecretKey": 12345}
    custom = {"Type": 2, "CustomConfig": config}
    refused = await raw_post(
        emulator, "StartSegment", json.dumps(_start_body(StorageConfig=custom)).encode()
    )
    # The request id carries the time of day (at 23:45 on 1 December it holds "12345"):
    # everything else in the answer is checked.
    request_id = refused.json()["ResponseMetadata"]["RequestId"]
    assert "SecretKey" in _error(refused)["Message"]
    assert "12345" not in refused.text.replace(request_id, "")
    storage = StorageConfig(
        type=StorageType.CUSTOM,
        custom_config=CustomConfig(bucket="b", access_key="AKX", secret_key=STORAGE_SECRET),
    )
    async with client_for(emulator) as client:
        await client.start_segment(*KEY, storage_config=storage)
        answer = await raw_get_task(emulator)
    assert emulator.task(*KEY).task.storage_config == storage  # kept with the task...
    assert STORAGE_SECRET not in answer  # ...but never answered
    assert "AccessKey" not in answer and "SecretKey" not in answer
    assert STORAGE_SECRET not in repr(emulator.requests) + repr(emulator.stats)


async def raw_get_task(emulator: Emulator) -> str:
    signer = Signer(DEFAULT_CREDENTIALS, region="cn-north-1", service="rtc")
    query = {"Action": "GetSegmentTask", "Version": "2022-06-01"}
    query.update(zip(("AppId", "RoomId", "TaskId"), KEY, strict=True))
    signed = signer.sign(
        method="GET", host="rtc.volcengineapi.com", query=query, now=emulator.wall_clock()
    )
    async with httpx.AsyncClient(
        transport=emulator.transport(), base_url="https://rtc.volcengineapi.com"
    ) as http:
        response = await http.get(f"/?{signed.query_string}", headers=signed.headers)
    assert response.status_code == 200
    return response.text


# -- retry policy: start is never sent twice blindly -------------------------------------


async def test_start_whose_connection_dropped_is_checked_then_sent_again() -> None:
    emulator = Emulator()
    emulator.faults.next(1, Fault.DROP, action="StartSegment")  # never reached the service
    async with client_for(emulator) as client:
        await client.start_segment(*KEY, storage_config=TOS)
        task = await client.get_segment_task(*KEY)
    assert task.status is TaskStatus.RUNNING
    assert emulator.task_keys == [KEY]
    assert actions(emulator)[:3] == [
        ("StartSegment", None),  # dropped
        ("GetSegmentTask", 400),  # not found: the start did not land
        ("StartSegment", 200),
    ]


async def test_start_whose_answer_was_late_is_checked_and_not_sent_again() -> None:
    emulator = Emulator()
    emulator.faults.next(1, Fault.SLOW, action="StartSegment", slow_seconds=60)  # served, late
    loop = asyncio.get_running_loop()
    async with client_for(emulator, timeout=2.0) as client:
        began = loop.time()
        await client.start_segment(*KEY, storage_config=TOS, identifier="once")
        waited = loop.time() - began
    assert waited == pytest.approx(2.0, abs=0.1)  # one read timeout, then the check
    assert actions(emulator) == [("StartSegment", 200), ("GetSegmentTask", 200)]
    assert emulator.count(action="StartSegment") == 1
    assert emulator.task(*KEY).task.identifier == "once"


async def test_start_on_503_is_checked_before_it_is_sent_again() -> None:
    emulator = Emulator()
    emulator.faults.next(1, Fault.HTTP_503, action="StartSegment")
    async with client_for(emulator) as client:
        await client.start_segment(*KEY, storage_config=TOS)
    assert actions(emulator) == [
        ("StartSegment", 503),
        ("GetSegmentTask", 400),
        ("StartSegment", 200),
    ]


async def test_an_ambiguous_start_without_retries_left_is_raised_as_ambiguous() -> None:
    emulator = Emulator()
    emulator.faults.next(1, Fault.DROP, action="StartSegment")
    async with client_for(emulator, max_retries=0) as client:
        with pytest.raises(TransportError) as caught:
            await client.start_segment(*KEY, storage_config=TOS)
    assert caught.value.ambiguous
    assert emulator.task_keys == []
    assert actions(emulator) == [("StartSegment", None), ("GetSegmentTask", 400)]


@pytest.mark.parametrize("name", ["update", "stop"])
async def test_update_and_stop_are_retried_on_503_without_a_check(name: str) -> None:
    emulator = Emulator()
    emulator.add_task(*KEY)
    action = f"{name.capitalize()}Segment"
    emulator.faults.next(2, Fault.HTTP_503, action=action)
    kwargs = {"duration": 50} if name == "update" else {}
    async with client_for(emulator) as client:
        await getattr(client, f"{name}_segment")(*KEY, **kwargs)
    assert actions(emulator) == [(action, 503), (action, 503), (action, 200)]
    task = emulator.task(*KEY).task
    if name == "update":
        assert task.duration == 50
    else:
        assert (task.status, task.stop_reason) == (TaskStatus.ENDED, StopReason.STOP_BY_API)


async def test_stop_whose_answer_was_late_succeeds_when_the_retry_finds_it_stopped() -> None:
    emulator = Emulator()
    emulator.add_task(*KEY)
    emulator.faults.next(1, Fault.SLOW, action="StopSegment", slow_seconds=60)
    async with client_for(emulator, timeout=2.0) as client:
        await client.stop_segment(*KEY)
    # The first stop was served (its answer came too late); the retry finds nothing to stop.
    assert actions(emulator) == [("StopSegment", 200), ("StopSegment", 400)]
    assert emulator.task(*KEY).task.status is TaskStatus.ENDED


# -- each action has its own ceiling ------------------------------------------------------


async def test_each_action_is_paced_at_its_own_ceiling_and_never_throttled() -> None:
    emulator = Emulator()
    keys = [("app", "room", f"t{i}") for i in range(300)]
    for key in keys:
        emulator.add_task(*key)
    fresh = [("app", "room", f"new{i}") for i in range(120)]
    async with client_for(emulator, max_retries=0) as client:
        await asyncio.gather(
            *(client.stop_segment(*key) for key in keys),
            *(client.start_segment(*key, storage_config=TOS) for key in fresh),
            *(client.get_segment_task(*keys[0]) for _ in range(120)),
        )
    assert emulator.throttled_count == 0
    # Each close to (the limiter sends at 99 %) but never over its own ceiling.
    assert 145 <= emulator.max_in_window(1.0, action="StopSegment") <= 150
    assert 57 <= emulator.max_in_window(1.0, action="StartSegment") <= 60
    assert 57 <= emulator.max_in_window(1.0, action="GetSegmentTask") <= 60
    # 300 stops at 150 QPS take two seconds, not the five they would take at 60.
    stops = [r.arrival for r in emulator.requests if r.action == "StopSegment"]
    assert 1.9 < max(stops) - min(stops) < 2.1


async def test_the_emulator_throttles_each_action_at_its_own_ceiling() -> None:
    emulator = Emulator()
    keys = [("app", "room", f"t{i}") for i in range(200)]
    for key in keys:
        emulator.add_task(*key)
    # A fixed pace far above the ceiling: an adaptive one would back off at the first
    # throttle (it sends well under its own 1000 QPS: someone else must use the quota).
    unpaced = {
        name: LocalRateLimiter(1000, utilization=0.99) for name in ("StopSegment", "UpdateSegment")
    }
    async with client_for(emulator, max_retries=0, action_limiters=unpaced) as client:
        results = await asyncio.gather(
            *(client.stop_segment(*key) for key in keys), return_exceptions=True
        )
    refused = [r for r in results if isinstance(r, Exception)]
    assert len(refused) == emulator.throttled_count == 50
    assert emulator.max_in_window(1.0, action="StopSegment") == 200
    assert emulator.max_in_window(1.0, action="StopSegment", admitted_only=True) == 150
    assert emulator.count(action="StopSegment", error_code="FlowLimitExceeded") == 50


async def test_the_start_ceiling_can_be_configured() -> None:
    emulator = Emulator(action_qps={"StartSegment": 5})
    vod = StorageConfig(type=StorageType.VOD, vod_config=VodConfig(account_id="2100", space="s"))
    unpaced = {"StartSegment": LocalRateLimiter(1000)}
    async with client_for(emulator, max_retries=0, action_limiters=unpaced) as client:
        results = await asyncio.gather(
            *(client.start_segment("a", "r", f"t{i}", storage_config=vod) for i in range(8)),
            return_exceptions=True,
        )
    assert sum(isinstance(r, Exception) for r in results) == 3
    assert len(emulator.task_keys) == 5
