"""SegmentClient: request shape, signing, classification, retries, limits, lifecycle.

HTTP is mocked with respx here; the emulator-driven scenarios live in the emulator's tests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import respx

from rtc_segment import Backoff, SegmentClient
from rtc_segment._credentials import Credentials
from rtc_segment._errors import (
    AuthenticationError,
    ClientClosedError,
    ClientTimeoutError,
    InvalidParameterError,
    ResponseFormatError,
    ServerError,
    TaskNotFoundError,
    ThrottledError,
    TransportError,
)
from rtc_segment._models import StopReason, TaskStatus
from rtc_segment._wire import MAX_RESPONSE_BYTES

CREDENTIALS = Credentials("AKLTtestAccessKey", "c2VjcmV0LWNhbmFyeS1zZWNyZXQ=")
ENDPOINT = "https://rtc.volcengineapi.com"
NOW = datetime(2024, 3, 5, 7, 8, 9, tzinfo=UTC)

TASK_JSON: dict[str, Any] = {
    "StartTime": 1677477732000,
    "EndTime": 0,
    "Status": 2,
    "StopReason": "",
    "TargetStreams": {"StreamList": [{"Index": 0, "UserId": "user0", "StreamType": 0}]},
    "Handle": True,
    "Identifier": "getsegmenttask",
    "MaxIdleTime": 600,
    "Duration": 40,
    "Control": {"Align": True, "Mixed": True, "RedundantDuration": 3, "IgnoreSilence": True},
    "StorageConfig": {"Type": 0, "TosConfig": {"AccountId": "acc", "Region": 0, "Bucket": "b"}},
}


def ok_body(task: dict[str, Any] | None = None, request_id: str = "req-1") -> dict[str, Any]:
    return {
        "ResponseMetadata": {
            "RequestId": request_id,
            "Action": "GetSegmentTask",
            "Version": "2022-06-01",
            "Service": "rtc",
            "Region": "cn-north-1",
        },
        "Result": {"SegmentTask": task if task is not None else TASK_JSON},
    }


def error_body(code: str, code_n: int | None = None, message: str = "m") -> dict[str, Any]:
    error: dict[str, Any] = {"Code": code, "Message": message}
    if code_n is not None:
        error["CodeN"] = code_n
    return {
        "ResponseMetadata": {
            "RequestId": "req-err",
            "Action": "GetSegmentTask",
            "Version": "2022-06-01",
            "Service": "rtc",
            "Region": "cn-north-1",
            "Error": error,
        },
        "Result": {},
    }


class TickingClock:
    """A wall clock that moves one second every time it is read."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=ENDPOINT, assert_all_called=False) as router:
        yield router


def make_client(**kwargs: Any) -> SegmentClient:
    kwargs.setdefault("credentials", CREDENTIALS)
    kwargs.setdefault("backoff", Backoff.disabled())
    kwargs.setdefault("qps", 1000.0)
    return SegmentClient(**kwargs)


async def test_returns_typed_task_and_sends_a_signed_get(mock: respx.MockRouter) -> None:
    route = mock.get("/").respond(200, json=ok_body())
    async with make_client(clock=lambda: NOW) as client:
        task = await client.get_segment_task("app1", "room1", "task1")
    assert task.status is TaskStatus.RUNNING
    assert task.stop_reason is None
    assert task.ended_at is None
    assert task.target_streams is not None
    assert task.target_streams.stream_list[0].user_id == "user0"

    request = route.calls.last.request
    assert request.method == "GET"
    # The wire query is exactly the canonical (sorted, RFC 3986) query that was signed.
    assert request.url.query == (
        b"Action=GetSegmentTask&AppId=app1&RoomId=room1&TaskId=task1&Version=2022-06-01"
    )
    assert request.headers["Host"] == "rtc.volcengineapi.com"
    assert request.headers["X-Date"] == "20240305T070809Z"
    assert request.headers["Authorization"].startswith(
        "HMAC-SHA256 Credential=AKLTtestAccessKey/20240305/cn-north-1/rtc/request, "
        "SignedHeaders=host;x-content-sha256;x-date, Signature="
    )


async def test_signature_matches_the_official_sdk(mock: respx.MockRouter) -> None:
    sdk = pytest.importorskip("volcengine.auth.SignerV4")
    from volcengine.base.Request import Request
    from volcengine.Credentials import Credentials as SdkCredentials

    route = mock.get("/").respond(200, json=ok_body())
    async with make_client(clock=lambda: NOW) as client:
        await client.get_segment_task("app.1", "room@x", "task-1_2")
    sent = route.calls.last.request

    request = Request()
    request.method = "GET"
    request.path = "/"
    request.body = ""
    request.headers = {"Host": "rtc.volcengineapi.com"}
    request.query = dict(httpx.QueryParams(sent.url.query.decode()))
    original = sdk.SignerV4.get_current_format_date
    sdk.SignerV4.get_current_format_date = staticmethod(lambda: "20240305T070809Z")
    try:
        sdk.SignerV4.sign(
            request,
            SdkCredentials(
                CREDENTIALS.access_key_id, CREDENTIALS.secret_access_key, "rtc", "cn-north-1"
            ),
        )
    finally:
        sdk.SignerV4.get_current_format_date = original
    assert sent.headers["Authorization"] == request.headers["Authorization"]


@pytest.mark.parametrize(
    ("args", "exc", "name"),
    [
        (("", "r", "t"), ValueError, "app_id"),
        (("a", "room 1", "t"), ValueError, "room_id"),
        (("a", "r", "x" * 129), ValueError, "task_id"),
        (("a", "r", "房间"), ValueError, "task_id"),
        (("a", "r", "t\n"), ValueError, "task_id"),
        ((None, "r", "t"), TypeError, "app_id"),
        (("a", 5, "t"), TypeError, "room_id"),
    ],
)
async def test_invalid_ids_fail_before_sending(
    mock: respx.MockRouter, args: tuple[Any, ...], exc: type[Exception], name: str
) -> None:
    route = mock.get("/").respond(200, json=ok_body())
    async with make_client() as client:
        with pytest.raises(exc, match=name):
            await client.get_segment_task(*args)
    assert route.call_count == 0


@pytest.mark.parametrize(
    ("status", "body", "error_class", "code"),
    [
        (401, error_body("SignatureDoesNotMatch", 100010), AuthenticationError, "SignatureDoesNotMatch"),
        (401, error_body("InvalidAccessKey", 100009), AuthenticationError, "InvalidAccessKey"),
        (403, error_body("AccessDenied", 100013), AuthenticationError, "AccessDenied"),
        (400, error_body("MissingParameter", 100002), InvalidParameterError, "MissingParameter"),
        (400, error_body("InvalidParameter.IllegalRoomID"), InvalidParameterError, "InvalidParameter.IllegalRoomID"),
        (400, error_body("InvalidParameter.ErrorActiveTaskNotFound"), TaskNotFoundError, "InvalidParameter.ErrorActiveTaskNotFound"),
        # A 200 that carries an Error is an error.
        (200, error_body("InvalidParameter.ErrorActiveTaskNotFound"), TaskNotFoundError, "InvalidParameter.ErrorActiveTaskNotFound"),
        (200, error_body("AccessDenied.NoPermissionForApp"), AuthenticationError, "AccessDenied.NoPermissionForApp"),
    ],
)  # fmt: skip
async def test_permanent_errors_are_typed_and_not_retried(
    mock: respx.MockRouter,
    status: int,
    body: dict[str, Any],
    error_class: type[Exception],
    code: str,
) -> None:
    route = mock.get("/").respond(status, json=body)
    async with make_client() as client:
        with pytest.raises(error_class) as info:
            await client.get_segment_task("a", "r", "t")
        assert client.stats.errors == {error_class.__name__: 1}
    assert route.call_count == 1
    error = info.value
    assert error.code == code  # type: ignore[attr-defined]
    assert error.http_status == status  # type: ignore[attr-defined]
    assert error.request_id == "req-err"  # type: ignore[attr-defined]
    assert error.key == ("a", "r", "t")  # type: ignore[attr-defined]
    text = str(error)
    assert code in text and "GetSegmentTask" in text and "room_id='r'" in text


async def test_success_without_segment_task_is_not_found(mock: respx.MockRouter) -> None:
    body = ok_body()
    body["Result"] = {}
    mock.get("/").respond(200, json=body)
    async with make_client() as client:
        with pytest.raises(TaskNotFoundError, match="72 hours"):
            await client.get_segment_task("a", "r", "t")
        assert client.stats.errors == {"TaskNotFoundError": 1}
        assert client.stats.succeeded == 0


async def test_transient_failures_are_retried_and_resigned(mock: respx.MockRouter) -> None:
    route = mock.get("/").mock(
        side_effect=[
            httpx.Response(503, text="<html>busy</html>"),
            httpx.Response(429, json=error_body("FlowLimitExceeded")),
            httpx.ConnectError("refused"),
            httpx.Response(200, json=ok_body()),
        ]
    )
    async with make_client(clock=TickingClock(), max_retries=3) as client:
        task = await client.get_segment_task("a", "r", "t")
        stats = client.stats
    assert task.status is TaskStatus.RUNNING
    assert route.call_count == 4
    dates = [call.request.headers["X-Date"] for call in route.calls]
    assert len(set(dates)) == 4, "every attempt carries a fresh X-Date"
    signatures = {call.request.headers["Authorization"] for call in route.calls}
    assert len(signatures) == 4
    assert (stats.requests_sent, stats.retries, stats.throttled, stats.succeeded) == (4, 3, 1, 1)


@pytest.mark.parametrize(
    ("response", "error_class"),
    [
        (httpx.Response(500, json=error_body("InternalError", 100014)), ServerError),
        (httpx.Response(502, text="bad gateway"), ServerError),
        (httpx.Response(504, json=error_body("InternalServiceTimeout", 100016)), ServerError),
        (httpx.Response(429, json=error_body("AccountFlowLimitExceeded")), ThrottledError),
        (httpx.ReadTimeout("slow"), ClientTimeoutError),
        (httpx.ConnectError("refused"), TransportError),
        (httpx.RemoteProtocolError("dropped"), TransportError),
    ],
)
async def test_retries_stop_after_max_retries(
    mock: respx.MockRouter, response: Any, error_class: type[Exception]
) -> None:
    route = mock.get("/").mock(side_effect=lambda request: _raise_or_return(response))
    async with make_client(max_retries=2) as client:
        with pytest.raises(error_class) as info:
            await client.get_segment_task("a", "r", "t")
        assert client.stats.retries == 2
    assert route.call_count == 3
    assert info.value.attempts == 3  # type: ignore[attr-defined]
    assert "after 3 attempts" in str(info.value)


def _raise_or_return(response: Any) -> httpx.Response:
    if isinstance(response, Exception):
        raise response
    assert isinstance(response, httpx.Response)
    return httpx.Response(response.status_code, content=response.content, headers=response.headers)


@pytest.mark.looptime
async def test_retry_after_is_honoured(mock: respx.MockRouter) -> None:
    mock.get("/").mock(
        side_effect=[
            httpx.Response(429, json=error_body("FlowLimitExceeded"), headers={"Retry-After": "3"}),
            httpx.Response(200, json=ok_body()),
        ]
    )
    loop = asyncio.get_running_loop()
    async with make_client(backoff=Backoff(initial=0.01)) as client:
        start = loop.time()
        await client.get_segment_task("a", "r", "t")
        assert loop.time() - start == pytest.approx(3.0, abs=0.05)


@pytest.mark.looptime
async def test_backoff_is_capped_exponential_with_jitter(mock: respx.MockRouter) -> None:
    mock.get("/").respond(503, text="busy")
    loop = asyncio.get_running_loop()
    async with make_client(backoff=Backoff(initial=1.0, maximum=2.0), max_retries=4) as client:
        start = loop.time()
        with pytest.raises(ServerError):
            await client.get_segment_task("a", "r", "t")
        # Waits are uniform in [0, 1], [0, 2], [0, 2], [0, 2]: at most 7 s in all.
        assert 0 < loop.time() - start <= 7.0


async def test_invalid_timestamp_is_resigned_once_then_explained(mock: respx.MockRouter) -> None:
    route = mock.get("/").respond(400, json=error_body("InvalidTimestamp", 100006))
    async with make_client(clock=TickingClock(), max_retries=3) as client:
        with pytest.raises(AuthenticationError, match="clock") as info:
            await client.get_segment_task("a", "r", "t")
    assert route.call_count == 2
    assert info.value.code == "InvalidTimestamp"


async def test_oversized_answers_are_refused(mock: respx.MockRouter) -> None:
    mock.get("/").respond(200, content=b"{" + b" " * MAX_RESPONSE_BYTES + b"}")
    async with make_client() as client:
        with pytest.raises(ResponseFormatError, match="limit"):
            await client.get_segment_task("a", "r", "t")


async def test_oversized_stream_without_length_is_cut_off(mock: respx.MockRouter) -> None:
    pulled = 0

    async def endless() -> Any:
        nonlocal pulled
        while True:
            pulled += 1
            yield b"x" * 65536

    mock.get("/").mock(return_value=httpx.Response(200, content=endless()))
    async with make_client() as client:
        with pytest.raises(ResponseFormatError, match="limit"):
            await client.get_segment_task("a", "r", "t")
    assert pulled * 65536 <= MAX_RESPONSE_BYTES + 2 * 65536


@pytest.mark.parametrize(
    ("status", "content", "error_class", "fragment"),
    [
        (200, b"<html>hello</html>", ResponseFormatError, "not valid JSON"),
        (200, b"", ResponseFormatError, "empty"),
        (200, b'{"ResponseMetadata": {"RequestId": "x"', ResponseFormatError, "not valid JSON"),
        (200, b"[1, 2]", ResponseFormatError, "not a JSON object"),
        (200, b'{"Result": {}}', ResponseFormatError, "ResponseMetadata"),
        (200, b'{"ResponseMetadata": [], "Result": {}}', ResponseFormatError, "ResponseMetadata"),
        (502, b"<html>bad gateway</html>", ServerError, "HTTP 502"),
    ],
)
async def test_malformed_answers(
    mock: respx.MockRouter,
    status: int,
    content: bytes,
    error_class: type[Exception],
    fragment: str,
) -> None:
    mock.get("/").respond(status, content=content)
    async with make_client(max_retries=0) as client:
        with pytest.raises(error_class, match=fragment):
            await client.get_segment_task("a", "r", "t")


async def test_malformed_task_fields_are_a_format_error(mock: respx.MockRouter) -> None:
    mock.get("/").respond(200, json=ok_body({**TASK_JSON, "Status": "running"}))
    async with make_client() as client:
        with pytest.raises(ResponseFormatError, match="Status"):
            await client.get_segment_task("a", "r", "t")


async def test_unknown_fields_and_values_do_not_break_parsing(mock: respx.MockRouter) -> None:
    task = {**TASK_JSON, "Status": 7, "StopReason": "QuotaExhausted", "NewField": {"x": 1}}
    mock.get("/").respond(200, json=ok_body(task))
    async with make_client() as client:
        result = await client.get_segment_task("a", "r", "t")
    assert result.status.value == 7 and not result.status.is_recognised
    assert result.stop_reason is not None and result.stop_reason.value == "QuotaExhausted"
    assert result.stop_reason is not StopReason.UNKNOWN_STOP_REASON


async def test_redirects_are_never_followed(mock: respx.MockRouter) -> None:
    route = mock.get("/").respond(302, headers={"Location": "https://evil.example/"})
    async with make_client() as client:
        with pytest.raises(ResponseFormatError, match="redirect"):
            await client.get_segment_task("a", "r", "t")
    assert route.call_count == 1


def test_endpoint_rules() -> None:
    with pytest.raises(ValueError, match="plain http"):
        make_client(endpoint="http://rtc.volcengineapi.com")
    insecure = make_client(endpoint="http://example.com:8080", allow_insecure_http=True)
    assert insecure.endpoint == "http://example.com:8080"
    for loopback in ("http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:9"):
        assert make_client(endpoint=loopback).endpoint == loopback
    for bad in ("ftp://x", "https://h/path", "https://u:p@h", "https://h/?a=1", "nonsense"):
        with pytest.raises(ValueError, match="endpoint"):
            make_client(endpoint=bad)
    for name, value in (("timeout", 0), ("max_retries", -1), ("region", "")):
        with pytest.raises(ValueError, match=name):
            make_client(**{name: value})


async def test_loopback_port_is_signed(mock: respx.MockRouter) -> None:
    with respx.mock(base_url="http://127.0.0.1:8080") as local:
        route = local.get("/").respond(200, json=ok_body())
        async with make_client(endpoint="http://127.0.0.1:8080") as client:
            await client.get_segment_task("a", "r", "t")
    assert route.calls.last.request.headers["Host"] == "127.0.0.1:8080"


async def test_closed_client_raises_a_clear_error(mock: respx.MockRouter) -> None:
    mock.get("/").respond(200, json=ok_body())
    client = make_client()
    await client.aclose()
    assert client.closed
    with pytest.raises(ClientClosedError, match="closed"):
        await client.get_segment_task("a", "r", "t")


async def test_secrets_never_appear_in_reprs_or_errors(mock: respx.MockRouter) -> None:
    token_credentials = Credentials("AKLTx", "canary-secret-value", "canary-token-value")
    mock.get("/").respond(401, json=error_body("SignatureDoesNotMatch", 100010))
    async with make_client(credentials=token_credentials) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.get_segment_task("a", "r", "t")
        texts = [repr(client), str(info.value), repr(info.value), repr(client.stats)]
    for text in texts:
        assert "canary" not in text


async def test_stats_snapshot_is_immutable_and_counts(mock: respx.MockRouter) -> None:
    mock.get("/").mock(
        side_effect=[httpx.Response(200, json=ok_body()), httpx.Response(500, text="x")]
    )
    async with make_client(max_retries=0) as client:
        await client.get_segment_task("a", "r", "t")
        before = client.stats
        with pytest.raises(ServerError):
            await client.get_segment_task("a", "r", "t")
        after = client.stats
    assert (before.requests_sent, before.succeeded, dict(before.errors)) == (1, 1, {})
    assert (after.requests_sent, after.succeeded, dict(after.errors)) == (2, 1, {"ServerError": 1})
    assert json.dumps(dict(after.errors))


async def test_a_non_ascii_digit_content_length_is_not_trusted() -> None:
    # "¹".isdigit() is True, but int("¹") fails: the header must not crash the client.
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers=[(b"content-length", b"\xb9")], stream=httpx.ByteStream(b"")
        )

    async with make_client(transport=httpx.MockTransport(answer)) as client:
        with pytest.raises(ResponseFormatError, match="empty"):
            await client.get_segment_task("a", "r", "t")


async def test_a_cancelled_call_leaves_its_exchange_to_finish_cleanly(
    mock: respx.MockRouter,
) -> None:
    # httpcore mishandles a cancellation that lands mid-exchange (the connection can stay
    # checked out for good), so the caller goes at once and the exchange ends on its own.
    entered = asyncio.Event()
    release = asyncio.Event()
    closed: list[bool] = []

    class Body(httpx.AsyncByteStream):
        async def __aiter__(self) -> Any:
            yield json.dumps(ok_body()).encode()

        async def aclose(self) -> None:
            closed.append(True)

    arrivals = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal arrivals
        arrivals += 1
        entered.set()
        await release.wait()
        return httpx.Response(200, stream=Body())

    mock.get("/").mock(side_effect=slow)
    async with make_client(max_connections=1) as client:
        call = asyncio.ensure_future(client.get_segment_task("a", "r", "t"))
        await entered.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call  # at once: the answer has not come yet
        assert closed == []
        assert client.stats.in_flight == 1  # still on the wire
        release.set()
        task = await asyncio.wait_for(client.get_segment_task("a", "r", "t"), timeout=5)
        assert task.status is TaskStatus.RUNNING
        assert closed == [True, True]
        assert client.stats.in_flight == 0
    assert arrivals == 2


async def test_aclose_abandons_exchanges_of_cancelled_calls(mock: respx.MockRouter) -> None:
    entered = asyncio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        entered.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    mock.get("/").mock(side_effect=hang)
    client = make_client()
    call = asyncio.ensure_future(client.get_segment_task("a", "r", "t"))
    await entered.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await asyncio.wait_for(client.aclose(), timeout=5)
    assert asyncio.all_tasks() == {asyncio.current_task()}
