"""The emulator, driven through the real client, in process and over the loopback server."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from _emulator_support import DELIVERIES, ManualClock, client_for, raw_http_for

from rtc_segment import (
    AuthenticationError,
    Credentials,
    InvalidParameterError,
    StopReason,
    TaskNotFoundError,
    TaskStatus,
    ThrottledError,
)
from rtc_segment._signing import Signer
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator, Lifecycle

pytestmark = pytest.mark.parametrize("delivery", DELIVERIES)

KEY = ("app1", "room1", "task1")


def _utc_now() -> datetime:
    return datetime.now(UTC)


async def _signed_get(
    http: httpx.AsyncClient,
    query: dict[str, str],
    *,
    credentials: Credentials = DEFAULT_CREDENTIALS,
    now: datetime | None = None,
    edit: Any = None,
    method: str = "GET",
    body: bytes = b"",
) -> httpx.Response:
    """Sign like the client does, let the test tamper with the headers, send."""
    host = http.base_url.netloc.decode()
    signed = Signer(credentials, region="cn-north-1").sign(
        method=method,
        host=host,
        query=query,
        body=body,
        content_type="application/json" if method != "GET" else None,
        now=now or _utc_now(),
    )
    headers = dict(signed.headers)
    if edit is not None:
        edit(headers)
    return await http.request(
        method, f"/?{signed.query_string}", headers=headers, content=body or None
    )


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def _query(**extra: str) -> dict[str, str]:
    query = {
        "Action": "GetSegmentTask",
        "Version": "2022-06-01",
        "AppId": KEY[0],
        "RoomId": KEY[1],
        "TaskId": KEY[2],
    }
    query.update(extra)
    return query


def _error(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["ResponseMetadata"]["Error"]
    return error


# -- success and the envelope --------------------------------------------------------------


async def test_serves_a_registered_task_with_every_field(delivery: str) -> None:
    emulator = Emulator()
    started = _utc_now() - timedelta(minutes=5)
    emulator.add_task(*KEY, start_time=started, identifier="prefix", duration=40)
    async with client_for(emulator, delivery) as client:
        task = await client.get_segment_task(*KEY)
    assert task.status is TaskStatus.RUNNING
    assert task.start_time == int(started.timestamp() * 1000)
    assert task.end_time == 0
    assert task.stop_reason is None
    assert (task.identifier, task.duration, task.max_idle_time) == ("prefix", 40, 180)


async def test_success_envelope_matches_the_documented_shape(delivery: str) -> None:
    emulator = Emulator()
    emulator.add_task(*KEY)
    async with raw_http_for(emulator, delivery) as http:
        first = await _signed_get(http, _query())
        second = await _signed_get(http, _query())
    assert first.status_code == 200
    assert first.headers["content-type"].startswith("application/json")
    document = first.json()
    metadata = document["ResponseMetadata"]
    assert {k: metadata[k] for k in ("Action", "Version", "Service", "Region")} == {
        "Action": "GetSegmentTask",
        "Version": "2022-06-01",
        "Service": "rtc",
        "Region": "cn-north-1",
    }
    assert "Error" not in metadata
    assert metadata["RequestId"] != second.json()["ResponseMetadata"]["RequestId"]
    task = document["Result"]["SegmentTask"]
    # Like the documented example: StopReason "" while running, every storage object present.
    assert task["StopReason"] == ""
    assert set(task["StorageConfig"]) >= {
        "TosConfig",
        "VodConfig",
        "VeImageXConfig",
        "CustomConfig",
    }


async def test_unknown_task_is_the_documented_not_found_error(delivery: str) -> None:
    emulator = Emulator()
    async with client_for(emulator, delivery) as client:
        with pytest.raises(TaskNotFoundError) as caught:
            await client.get_segment_task(*KEY)
    assert caught.value.code == "InvalidParameter.ErrorActiveTaskNotFound"
    assert caught.value.http_status == 400
    assert caught.value.request_id == emulator.requests[-1].request_id


async def test_tasks_started_more_than_72_hours_ago_are_not_queryable(delivery: str) -> None:
    clock = ManualClock()
    emulator = Emulator(clock=clock)
    now = emulator.wall_clock()
    emulator.add_task("app1", "room1", "old", start_time=now - timedelta(hours=72, seconds=1))
    emulator.add_task(
        "app1", "room1", "edge", start_time=now - timedelta(hours=72) + timedelta(seconds=10)
    )
    async with client_for(emulator, delivery) as client:
        with pytest.raises(TaskNotFoundError):
            await client.get_segment_task("app1", "room1", "old")
        assert (await client.get_segment_task("app1", "room1", "edge")).status is TaskStatus.RUNNING
        clock.advance(11)  # "edge" now started 72 h 1 s ago
        with pytest.raises(TaskNotFoundError):
            await client.get_segment_task("app1", "room1", "edge")


# -- signature verification -------------------------------------------------------------


async def test_wrong_secret_is_authentication_error_naming_the_differing_part(
    delivery: str,
) -> None:
    emulator = Emulator()
    emulator.add_task(*KEY)
    wrong = Credentials(DEFAULT_CREDENTIALS.access_key_id, "not-the-secret")
    async with client_for(emulator, delivery, credentials=wrong) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.get_segment_task(*KEY)
    error = caught.value
    assert (error.code, error.code_n, error.http_status) == ("SignatureDoesNotMatch", 100010, 401)
    # Scope and signed headers agree, so the secret or the canonical request is to blame;
    # the server's canonical request is shown for diffing -- and no secret is.
    assert "secret access key" in error.service_message
    assert "host;x-content-sha256;x-date" in error.service_message
    assert "Action=GetSegmentTask&AppId=app1&RoomId=room1&TaskId=task1&Version=2022-06-01" in (
        error.service_message
    )
    assert DEFAULT_CREDENTIALS.secret_access_key not in str(error)
    assert "not-the-secret" not in str(error)


async def test_wrong_region_reports_the_credential_scope(delivery: str) -> None:
    emulator = Emulator()
    emulator.add_task(*KEY)
    async with client_for(emulator, delivery, region="ap-southeast-1") as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.get_segment_task(*KEY)
    assert caught.value.code == "SignatureDoesNotMatch"
    assert "credential scope differs" in caught.value.service_message
    assert "region is 'ap-southeast-1', expected 'cn-north-1'" in caught.value.service_message


async def test_unknown_access_key(delivery: str) -> None:
    emulator = Emulator()
    stranger = Credentials("AKLTstranger", "secret")
    async with client_for(emulator, delivery, credentials=stranger) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.get_segment_task(*KEY)
    assert (caught.value.code, caught.value.code_n, caught.value.http_status) == (
        "InvalidAccessKey",
        100009,
        401,
    )


@pytest.mark.parametrize("skew", [timedelta(minutes=16), -timedelta(minutes=16)])
async def test_x_date_more_than_15_minutes_off(delivery: str, skew: timedelta) -> None:
    emulator = Emulator()
    emulator.add_task(*KEY)
    async with client_for(emulator, delivery, clock=lambda: _utc_now() + skew) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.get_segment_task(*KEY)
    assert (caught.value.code, caught.value.code_n, caught.value.http_status) == (
        "InvalidTimestamp",
        100006,
        400,
    )
    # The client re-signs once for a clock problem: two attempts, both refused.
    assert emulator.count(error_code="InvalidTimestamp") == 2


async def test_x_date_within_15_minutes_is_accepted(delivery: str) -> None:
    emulator = Emulator()
    emulator.add_task(*KEY)
    skew = timedelta(minutes=14)
    async with client_for(emulator, delivery, clock=lambda: _utc_now() - skew) as client:
        assert (await client.get_segment_task(*KEY)).status is TaskStatus.RUNNING


async def test_session_token_is_verified(delivery: str) -> None:
    sts = Credentials("AKLTtemporary", "temporary-secret", "the-token")
    emulator = Emulator(sts)
    emulator.add_task(*KEY)
    async with client_for(emulator, delivery, credentials=sts) as client:
        assert (await client.get_segment_task(*KEY)).status is TaskStatus.RUNNING
    other_token = Credentials("AKLTtemporary", "temporary-secret", "another-token")
    no_token = Credentials("AKLTtemporary", "temporary-secret")
    for credentials in (other_token, no_token):
        async with client_for(emulator, delivery, credentials=credentials) as client:
            with pytest.raises(AuthenticationError) as caught:
                await client.get_segment_task(*KEY)
        assert (caught.value.code, caught.value.http_status) == ("InvalidSecurityToken", 401)
        assert "the-token" not in str(caught.value)
        assert "another-token" not in str(caught.value)


async def test_wrong_secret_with_a_token_masks_the_token(delivery: str) -> None:
    sts = Credentials("AKLTtemporary", "temporary-secret", "the-token")
    emulator = Emulator(sts)
    emulator.add_task(*KEY)
    wrong = Credentials("AKLTtemporary", "wrong-secret", "the-token")
    async with client_for(emulator, delivery, credentials=wrong) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.get_segment_task(*KEY)
    assert caught.value.code == "SignatureDoesNotMatch"
    assert "x-security-token:***" in caught.value.service_message
    assert "the-token" not in str(caught.value)


async def test_missing_authorization(delivery: str) -> None:
    emulator = Emulator()
    async with raw_http_for(emulator, delivery) as http:
        response = await _signed_get(http, _query(), edit=lambda h: h.pop("Authorization"))
    assert response.status_code == 401
    assert _error(response) == {
        "CodeN": 100003,
        "Code": "MissingAuthenticationToken",
        "Message": _error(response)["Message"],
    }


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer abc",
        "HMAC-SHA256 Credential=AK/20240101/cn-north-1/rtc/request",
        "HMAC-SHA256 Credential=AK, SignedHeaders=host, Signature=" + "0" * 64,
    ],
)
async def test_malformed_authorization(delivery: str, authorization: str) -> None:
    emulator = Emulator()

    def edit(headers: dict[str, str]) -> None:
        headers["Authorization"] = authorization

    async with raw_http_for(emulator, delivery) as http:
        response = await _signed_get(http, _query(), edit=edit)
    assert response.status_code == 400
    assert _error(response)["Code"] == "InvalidAuthorization"


async def test_missing_x_date(delivery: str) -> None:
    emulator = Emulator()

    def edit(headers: dict[str, str]) -> None:
        del headers["X-Date"]

    async with raw_http_for(emulator, delivery) as http:
        response = await _signed_get(http, _query(), edit=edit)
    assert response.status_code == 400
    assert (_error(response)["Code"], _error(response)["CodeN"]) == ("MissingRequestInfo", 100004)


async def test_host_must_be_signed(delivery: str) -> None:
    emulator = Emulator()

    def edit(headers: dict[str, str]) -> None:
        headers["Authorization"] = headers["Authorization"].replace(
            "SignedHeaders=host;", "SignedHeaders="
        )

    async with raw_http_for(emulator, delivery) as http:
        response = await _signed_get(http, _query(), edit=edit)
    assert response.status_code == 401
    error = _error(response)
    assert error["Code"] == "SignatureDoesNotMatch"
    assert "signed headers differ" in error["Message"]
    assert "leaves out host" in error["Message"]


async def test_body_hash_must_match_the_body(delivery: str) -> None:
    emulator = Emulator()

    def edit(headers: dict[str, str]) -> None:
        headers["X-Content-Sha256"] = "0" * 64

    async with raw_http_for(emulator, delivery) as http:
        response = await _signed_get(http, _query(), edit=edit)
    error = _error(response)
    assert (response.status_code, error["Code"]) == (401, "SignatureDoesNotMatch")
    assert "X-Content-Sha256 differs from the body" in error["Message"]


async def test_tampered_query_is_a_canonical_request_mismatch(delivery: str) -> None:
    emulator = Emulator()
    emulator.add_task("app1", "room1", "task2")
    async with raw_http_for(emulator, delivery) as http:
        host = http.base_url.netloc.decode()
        signed = Signer(DEFAULT_CREDENTIALS, region="cn-north-1").sign(
            method="GET", host=host, query=_query(), now=_utc_now()
        )
        tampered = signed.query_string.replace("TaskId=task1", "TaskId=task2")
        response = await http.get(f"/?{tampered}", headers=signed.headers)
    error = _error(response)
    assert (response.status_code, error["Code"]) == (401, "SignatureDoesNotMatch")
    assert "TaskId=task2" in error["Message"]  # the server's canonical request, to diff


# -- routing -------------------------------------------------------------------------------


async def test_unknown_action_or_version(delivery: str) -> None:
    emulator = Emulator()
    async with raw_http_for(emulator, delivery) as http:
        responses = [
            await _signed_get(http, _query(Action="GetSegmentTasks")),
            await _signed_get(http, _query(Version="2099-01-01")),
        ]
    for response in responses:
        assert response.status_code == 404
        assert (_error(response)["Code"], _error(response)["CodeN"]) == (
            "InvalidActionOrVersion",
            100008,
        )


async def test_wrong_method(delivery: str) -> None:
    emulator = Emulator()
    async with raw_http_for(emulator, delivery) as http:
        response = await _signed_get(http, _query(), method="POST", body=b"{}")
    assert response.status_code == 405
    assert _error(response)["Code"] == "MethodNotAllowed"


@pytest.mark.parametrize("missing", ["Action", "Version", "AppId", "RoomId", "TaskId"])
async def test_missing_parameter(delivery: str, missing: str) -> None:
    emulator = Emulator()
    query = _query()
    del query[missing]
    async with raw_http_for(emulator, delivery) as http:
        response = await _signed_get(http, query)
    assert response.status_code == 400
    assert (_error(response)["Code"], _error(response)["CodeN"]) == ("MissingParameter", 100002)
    assert missing in _error(response)["Message"]


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("AppId", "InvalidParameter.IllegalAppId"),
        ("RoomId", "InvalidParameter.IllegalRoomID"),
        ("TaskId", "InvalidParameter"),
    ],
)
async def test_invalid_id_characters(delivery: str, name: str, code: str) -> None:
    emulator = Emulator()
    async with raw_http_for(emulator, delivery) as http:
        response = await _signed_get(http, _query(**{name: "has space&amp"}))
    assert (response.status_code, _error(response)["Code"]) == (400, code)


# -- throttling ----------------------------------------------------------------------------


async def test_over_the_ceiling_is_throttled_and_recorded(delivery: str) -> None:
    clock = ManualClock()
    emulator = Emulator(qps=5, clock=clock)
    emulator.add_task(*KEY)
    async with client_for(emulator, delivery) as client:
        for _ in range(5):
            await client.get_segment_task(*KEY)
        with pytest.raises(ThrottledError) as caught:
            await client.get_segment_task(*KEY)
        assert (caught.value.code, caught.value.code_n, caught.value.http_status) == (
            "FlowLimitExceeded",
            100018,
            429,
        )
        clock.advance(0.999)  # still inside the window of the first five
        with pytest.raises(ThrottledError):
            await client.get_segment_task(*KEY)
        clock.advance(0.001)  # the first five leave the window; the refused ones never counted
        for _ in range(5):
            await client.get_segment_task(*KEY)
    assert emulator.throttled_count == 2
    assert emulator.count(throttled=True) == 2
    assert emulator.max_in_window(1.0) == 7
    assert emulator.max_in_window(1.0, admitted_only=True) == 5
    assert emulator.stats.admitted == 10


async def test_the_ceiling_is_per_account(delivery: str) -> None:
    clock = ManualClock()
    first, second = Credentials("AKLTfirst", "s1"), Credentials("AKLTsecond", "s2")
    sub_user = Credentials("AKLTsubuser", "s3")
    emulator = Emulator([first, second], qps=2, clock=clock)
    emulator.add_credentials(sub_user, account="AKLTfirst")  # same account as `first`
    emulator.add_task(*KEY)
    async with (
        client_for(emulator, delivery, credentials=first) as one,
        client_for(emulator, delivery, credentials=second) as two,
        client_for(emulator, delivery, credentials=sub_user) as three,
    ):
        await one.get_segment_task(*KEY)
        await two.get_segment_task(*KEY)
        await two.get_segment_task(*KEY)
        await three.get_segment_task(*KEY)  # the account's second request
        with pytest.raises(ThrottledError):
            await three.get_segment_task(*KEY)
        with pytest.raises(ThrottledError):
            await two.get_segment_task(*KEY)
    assert emulator.count(account="AKLTfirst", admitted=True) == 2
    assert emulator.count(account="AKLTsecond", admitted=True) == 2


# -- lifecycle -----------------------------------------------------------------------------


async def test_lifecycle_by_time(delivery: str) -> None:
    clock = ManualClock()
    emulator = Emulator(clock=clock)
    handle = emulator.add_task(
        *KEY,
        lifecycle=Lifecycle.after_seconds(running=5, ended=30, stop_reason=StopReason.IDLE_TIMEOUT),
    )
    registered = emulator.wall_clock()
    async with client_for(emulator, delivery) as client:
        task = await client.get_segment_task(*KEY)
        assert (task.status, task.start_time) == (TaskStatus.NOT_STARTED, 0)
        clock.advance(10)
        task = await client.get_segment_task(*KEY)
        assert task.status is TaskStatus.RUNNING
        # Stamped with the time the transition was due, not the time it was seen.
        assert task.start_time == _ms(registered + timedelta(seconds=5))
        clock.advance(25)
        task = await client.get_segment_task(*KEY)
    assert (task.status, task.stop_reason) == (TaskStatus.ENDED, StopReason.IDLE_TIMEOUT)
    assert task.end_time == _ms(registered + timedelta(seconds=30))
    assert handle.reads == 3


async def test_lifecycle_by_reads(delivery: str) -> None:
    emulator = Emulator()
    emulator.add_task(
        *KEY,
        lifecycle=Lifecycle.after_reads(
            running=2, ended=3, status=TaskStatus.FAILED, stop_reason=StopReason.START_TASK_FAILED
        ),
    )
    async with client_for(emulator, delivery) as client:
        seen = [(await client.get_segment_task(*KEY)).status for _ in range(5)]
    assert seen == [
        TaskStatus.NOT_STARTED,
        TaskStatus.NOT_STARTED,
        TaskStatus.RUNNING,
        TaskStatus.FAILED,
        TaskStatus.FAILED,
    ]


async def test_task_handle_changes_a_task_mid_test(delivery: str) -> None:
    emulator = Emulator()
    handle = emulator.add_task(*KEY)
    async with client_for(emulator, delivery) as client:
        assert (await client.get_segment_task(*KEY)).status is TaskStatus.RUNNING
        handle.update(identifier="renamed")
        assert (await client.get_segment_task(*KEY)).identifier == "renamed"
        handle.end(StopReason.USER_DISCONNECT)
        task = await client.get_segment_task(*KEY)
        assert (task.status, task.stop_reason) == (TaskStatus.ENDED, StopReason.USER_DISCONNECT)
        assert task.end_time > 0
        handle.remove()
        with pytest.raises(TaskNotFoundError):
            await client.get_segment_task(*KEY)
    assert handle.key == KEY


async def test_seed_rooms_gives_varied_reproducible_states(delivery: str) -> None:
    clock = ManualClock()
    emulator = Emulator(clock=clock)
    keys = emulator.seed_rooms(60, seed=3)
    again = Emulator(clock=ManualClock())
    assert again.seed_rooms(60, seed=3) == keys
    assert [again.task(*k).task.status for k in keys] == [
        emulator.task(*k).task.status for k in keys
    ]
    async with client_for(emulator, delivery) as client:
        before = {(await client.get_segment_task(*key)).status for key in keys}
        clock.advance(120)  # every short-lived task has ended by now
        after = [(await client.get_segment_task(*key)).status for key in keys]
    assert before >= {
        TaskStatus.NOT_STARTED,
        TaskStatus.RUNNING,
        TaskStatus.ENDED,
        TaskStatus.FAILED,
    }
    assert TaskStatus.NOT_STARTED not in after
    assert after.count(TaskStatus.ENDED) > len(keys) // 3


async def test_rejects_what_the_client_would_never_send_but_users_might(delivery: str) -> None:
    """InvalidParameterError surfaces through the real client for service-side validation."""
    emulator = Emulator()
    async with raw_http_for(emulator, delivery) as http:
        response = await _signed_get(http, _query(TaskId="x" * 129))
    assert (response.status_code, _error(response)["Code"]) == (400, "InvalidParameter")
    assert json.loads(response.content)["ResponseMetadata"]["Action"] == "GetSegmentTask"
    # And the client maps the code family onto InvalidParameterError.
    assert issubclass(TaskNotFoundError, InvalidParameterError)
