"""Both API versions of the segment actions, and every other Action/Version pair, by raw
signed requests in process and over the loopback server."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from _emulator_support import DELIVERIES, ManualClock, error_of, raw_http_for, send_signed

from rtc_segment import Credentials
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator

pytestmark = pytest.mark.parametrize("delivery", DELIVERIES)

OLD, NEW = "2022-06-01", "2023-11-01"
KEY = {"AppId": "app1", "RoomId": "room1", "TaskId": "task1"}
START_BODY: dict[str, Any] = {
    **KEY,
    "Identifier": "first",
    "StorageConfig": {"Type": 0, "TosConfig": {"AccountId": "2100000000", "Bucket": "b"}},
}
#: The Result the service documents for a repeated 2023-11-01 start.
ALREADY_STARTED = (
    "The task has been started. Please do not call the startup task interface repeatedly"
)


def query(action: str, version: str, **extra: str) -> dict[str, str]:
    return {"Action": action, "Version": version, **extra}


async def get_task(http: httpx.AsyncClient, version: str) -> httpx.Response:
    return await send_signed(http, query("GetSegmentTask", version, **KEY))


async def test_get_segment_task_answers_the_same_in_both_versions(delivery: str) -> None:
    emulator = Emulator()
    emulator.add_task(*KEY.values(), identifier="prefix", duration=40)
    async with raw_http_for(emulator, delivery) as http:
        old, new = await get_task(http, OLD), await get_task(http, NEW)
    assert (old.status_code, new.status_code) == (200, 200)
    assert new.json()["Result"] == old.json()["Result"]
    assert new.json()["Result"]["SegmentTask"]["Identifier"] == "prefix"
    assert [r.json()["ResponseMetadata"]["Version"] for r in (old, new)] == [OLD, NEW]
    assert [record.version for record in emulator.requests] == [OLD, NEW]
    assert emulator.count(version=NEW) == 1


async def test_start_update_stop_in_2023_11_01(delivery: str) -> None:
    emulator = Emulator()
    async with raw_http_for(emulator, delivery) as http:
        started = await send_signed(http, query("StartSegment", NEW), body=START_BODY)
        updated = await send_signed(
            http, query("UpdateSegment", NEW), body={**KEY, "Identifier": "second"}
        )
        renamed = emulator.task(*KEY.values()).task.identifier
        stopped = await send_signed(http, query("StopSegment", NEW), body=KEY)
        stopped_again = await send_signed(http, query("StopSegment", NEW), body=KEY)
    assert [r.json().get("Result") for r in (started, updated, stopped)] == ["ok"] * 3
    assert renamed == "second"
    assert emulator.task(*KEY.values()).task.status.is_terminal
    assert error_of(stopped_again)["Code"] == "InvalidParameter.ErrorActiveTaskNotFound"


async def test_starting_a_running_task_again_differs_by_version(delivery: str) -> None:
    emulator = Emulator()
    async with raw_http_for(emulator, delivery) as http:
        first = await send_signed(http, query("StartSegment", NEW), body=START_BODY)
        before = emulator.task(*KEY.values()).task
        again = {**START_BODY, "Identifier": "changed", "Duration": 60}
        repeated_new = await send_signed(http, query("StartSegment", NEW), body=again)
        repeated_old = await send_signed(http, query("StartSegment", OLD), body=again)
    assert first.json()["Result"] == "ok"
    # 2023-11-01: a success whose Result says the task was already started; nothing changes.
    assert repeated_new.status_code == 200
    assert "Error" not in repeated_new.json()["ResponseMetadata"]
    assert repeated_new.json()["Result"] == ALREADY_STARTED
    assert emulator.task(*KEY.values()).task == before
    # 2022-06-01: the documented error, as before.
    assert repeated_old.status_code == 400
    assert error_of(repeated_old)["Code"] == "InvalidParameter.TaskAlreadyExists"


async def test_a_repeated_start_still_checks_its_body_first(delivery: str) -> None:
    emulator = Emulator()
    emulator.add_task(*KEY.values())
    async with raw_http_for(emulator, delivery) as http:
        response = await send_signed(
            http, query("StartSegment", NEW), body={**START_BODY, "Duration": 0}
        )
    assert response.status_code == 400
    assert "Duration must be between 1 and 600" in error_of(response)["Message"]


async def test_a_task_that_ended_can_be_started_again_in_both_versions(delivery: str) -> None:
    emulator = Emulator()
    async with raw_http_for(emulator, delivery) as http:
        for version in (OLD, NEW):
            emulator.add_task(*KEY.values()).end()
            response = await send_signed(http, query("StartSegment", version), body=START_BODY)
            assert response.json()["Result"] == "ok"
            assert not emulator.task(*KEY.values()).task.status.is_terminal


@pytest.mark.parametrize(
    ("action", "version"),
    [
        ("GetSegmentTask", "2020-12-01"),  # a version the service has, but not for this action
        ("StartSegment", "2020-12-01"),
        ("GetSegmentTask", "2099-01-01"),
        ("StartRecord", OLD),  # another RTC action
        ("GetSegmentTasks", NEW),
        ("getsegmenttask", NEW),  # names are case-sensitive
        ("x" * 5000, NEW),
    ],
)
async def test_other_action_version_pairs_are_invalid_action_or_version(
    delivery: str, action: str, version: str
) -> None:
    emulator = Emulator()
    emulator.add_task(*KEY.values())
    async with raw_http_for(emulator, delivery) as http:
        response = await send_signed(http, query(action, version, **KEY))
    assert response.status_code == 404
    error = error_of(response)
    assert (error["Code"], error["CodeN"]) == ("InvalidActionOrVersion", 100008)
    assert len(error["Message"]) < 400  # a huge Action is not echoed back whole
    record = emulator.requests[-1]
    assert (record.action, record.version) == (action, version)
    assert (record.http_status, record.admitted) == (404, False)
    assert record.account == DEFAULT_CREDENTIALS.access_key_id  # the signature was checked


async def test_the_signature_is_checked_before_the_action(delivery: str) -> None:
    emulator = Emulator()
    wrong = Credentials(DEFAULT_CREDENTIALS.access_key_id, "not-the-secret")
    async with raw_http_for(emulator, delivery) as http:
        unsigned = await http.get("/", params=query("StartRecord", OLD))
        badly_signed = await send_signed(http, query("StartRecord", OLD), credentials=wrong)
    assert (unsigned.status_code, error_of(unsigned)["Code"]) == (
        401,
        "MissingAuthenticationToken",
    )
    assert (badly_signed.status_code, error_of(badly_signed)["Code"]) == (
        401,
        "SignatureDoesNotMatch",
    )


async def test_an_unknown_action_counts_against_no_ceiling(delivery: str) -> None:
    emulator = Emulator(qps=2, action_qps={"StartSegment": 1}, clock=ManualClock())
    emulator.add_task(*KEY.values())
    async with raw_http_for(emulator, delivery) as http:
        unknown = [await send_signed(http, query("StartRecord", OLD)) for _ in range(5)]
        reads = [await get_task(http, OLD) for _ in range(3)]
        start = await send_signed(http, query("StartSegment", OLD), body=START_BODY)
    assert {r.status_code for r in unknown} == {404}
    assert [r.status_code for r in reads] == [200, 200, 429]
    # StartSegment's window was not touched either: its one request per second is left.
    assert error_of(start)["Code"] == "InvalidParameter.TaskAlreadyExists"
    assert emulator.count(action="StartRecord", admitted=True) == 0
    assert emulator.throttled_count == 1


async def test_both_versions_of_an_action_share_one_window(delivery: str) -> None:
    clock = ManualClock()
    emulator = Emulator(qps=3, clock=clock)
    emulator.add_task(*KEY.values())
    async with raw_http_for(emulator, delivery) as http:
        statuses = [(await get_task(http, v)).status_code for v in (OLD, NEW, OLD, NEW, OLD)]
        clock.advance(1.0)
        later = [(await get_task(http, v)).status_code for v in (NEW, NEW, NEW)]
        # Another action has a window of its own, whatever the version.
        stop = await send_signed(http, query("StopSegment", NEW), body=KEY)
    assert statuses == [200, 200, 200, 429, 429]
    assert later == [200, 200, 200]
    assert stop.json()["Result"] == "ok"
    assert emulator.count(version=NEW, throttled=True) == 1
    assert emulator.max_in_window(1.0, admitted_only=True, action="GetSegmentTask") == 3
