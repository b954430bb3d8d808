"""Tests for rtc_segment._wire: which endpoints are allowed, how an answer's body is read,
and how each answer or httpx failure becomes a result or a typed error.

The client's tests exercise all of this through requests; these pin each rule at its
edges (what mutation testing found untested: docs/testing.md#mutation-testing).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from rtc_segment import (
    AuthenticationError,
    ClientTimeoutError,
    InvalidParameterError,
    ResponseFormatError,
    ServerError,
    TaskKey,
    ThrottledError,
    TransportError,
)
from rtc_segment._models import ResponseMetadata
from rtc_segment._wire import (
    MAX_RESPONSE_BYTES,
    AttemptFailed,
    DirectSender,
    check_endpoint,
    classify,
    is_loopback,
    read_capped,
    transport_error,
)

KEY = TaskKey("app", "room", "task")
ACTION = "GetSegmentTask"
METADATA = {
    "RequestId": "req-1",
    "Action": ACTION,
    "Version": "2022-06-01",
    "Service": "rtc",
    "Region": "cn-north-1",
}


# --- endpoints -----------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.8.9.10", "::1", "[::1]"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host", ["example.com", "10.0.0.1", "::2", "localhost.example", "", "X127.0.0.1X"]
)
def test_other_hosts_are_not_loopback(host: str) -> None:
    assert not is_loopback(host)


@pytest.mark.parametrize(
    ("endpoint", "base_url", "host"),
    [
        ("https://rtc.volcengineapi.com", "https://rtc.volcengineapi.com", "rtc.volcengineapi.com"),
        (
            "https://rtc.volcengineapi.com/",
            "https://rtc.volcengineapi.com",
            "rtc.volcengineapi.com",
        ),
        ("https://example.com:8443", "https://example.com:8443", "example.com:8443"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080", "127.0.0.1:8080"),
        ("http://localhost:9", "http://localhost:9", "localhost:9"),
        ("http://[::1]:8080", "http://[::1]:8080", "[::1]:8080"),
    ],
)
def test_allowed_endpoints_give_base_url_and_host(endpoint: str, base_url: str, host: str) -> None:
    assert check_endpoint(endpoint, allow_insecure_http=False) == (base_url, host)


def test_the_refusals_say_what_to_do() -> None:
    with pytest.raises(ValueError, match="refusing") as plain:
        check_endpoint("http://example.com", allow_insecure_http=False)
    assert str(plain.value) == (
        "endpoint: refusing plain http:// to non-loopback host 'example.com': requests carry "
        "signatures; use https:// or pass allow_insecure_http=True"
    )
    with pytest.raises(ValueError, match="API path") as path:
        check_endpoint("https://example.com/api", allow_insecure_http=False)
    assert str(path.value) == (
        "endpoint must be just scheme://host[:port], got 'https://example.com/api' "
        "(the API path is always /)"
    )


def test_plain_http_elsewhere_needs_the_explicit_opt_in() -> None:
    with pytest.raises(
        ValueError, match=r"refusing plain http:// to non-loopback host 'example\.com'"
    ):
        check_endpoint("http://example.com", allow_insecure_http=False)
    assert check_endpoint("http://example.com", allow_insecure_http=True) == (
        "http://example.com",
        "example.com",
    )


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("ftp://example.com", "must be an http(s) URL with a host, got 'ftp://example.com'"),
        ("https://", "must be an http(s) URL with a host"),
        ("https://u:p@example.com", "must be just scheme://host[:port]"),
        ("https://example.com/api", "must be just scheme://host[:port]"),
        ("https://example.com/?a=1", "the API path is always /"),
        ("https://example.com/#top", "must be just scheme://host[:port]"),
        ("https://exa mple.com:x", "is not a valid URL"),
    ],
)
def test_other_endpoints_are_refused_naming_them(endpoint: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"^endpoint") as caught:
        check_endpoint(endpoint, allow_insecure_http=True)
    assert message in str(caught.value)


def test_an_endpoint_must_be_a_string() -> None:
    with pytest.raises(TypeError, match=r"^endpoint must be a str, not bytes$"):
        check_endpoint(b"https://example.com", allow_insecure_http=False)  # type: ignore[arg-type]


# --- httpx failures ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (httpx.ConnectTimeout("t"), "no connection could be made in time (ConnectTimeout)"),
        (httpx.PoolTimeout("t"), "no connection of the pool became free in time (PoolTimeout)"),
        (httpx.WriteTimeout("t"), "the request could not be sent in time (WriteTimeout)"),
        (httpx.ReadTimeout("t"), "no answer came in time (ReadTimeout)"),
    ],
)
def test_timeouts_say_which_phase_ran_out(exc: httpx.HTTPError, message: str) -> None:
    error = transport_error(exc, ACTION, KEY)
    assert type(error) is ClientTimeoutError
    assert error.message == message
    assert (error.action, error.key) == (ACTION, KEY)


def test_an_undecodable_body_is_a_format_error() -> None:
    error = transport_error(httpx.DecodingError("bad gzip"), ACTION, KEY)
    assert type(error) is ResponseFormatError
    assert error.message == "the body could not be decoded (DecodingError)"
    assert (error.action, error.key) == (ACTION, KEY)


def test_other_failures_are_transport_errors_with_their_detail() -> None:
    error = transport_error(httpx.ConnectError("connection refused"), ACTION, KEY)
    assert type(error) is TransportError
    assert error.message == "request failed: ConnectError: connection refused"
    assert (error.action, error.key) == (ACTION, KEY)
    bare = transport_error(httpx.RemoteProtocolError(""), ACTION, None)
    assert bare.message == "request failed: RemoteProtocolError"


# --- reading the body ----------------------------------------------------------------------


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_a_body_is_read_whole_from_its_chunks() -> None:
    response = httpx.Response(200, content=_chunks(b"ab", b"", b"cd"))
    assert await read_capped(response, ACTION, KEY) == b"abcd"


@pytest.mark.parametrize("encoding", ["identity", " Identity ", ""])
async def test_an_uncompressed_encoding_is_read(encoding: str) -> None:
    response = httpx.Response(200, headers={"Content-Encoding": encoding}, content=b"{}")
    assert await read_capped(response, ACTION, KEY) == b"{}"


async def test_a_compressed_body_is_refused_unread() -> None:
    response = httpx.Response(
        200, headers={"Content-Encoding": "gzip"}, content=_chunks(b"\x1f\x8b")
    )
    with pytest.raises(AttemptFailed) as caught:
        await read_capped(response, ACTION, KEY)
    error = caught.value.error
    assert type(error) is ResponseFormatError
    assert error.message.startswith("the answer is compressed ('gzip')")
    assert (error.action, error.key, error.http_status) == (ACTION, KEY, 200)
    assert caught.value.sent


async def test_a_body_of_exactly_the_cap_is_read() -> None:
    body = b"x" * MAX_RESPONSE_BYTES
    response = httpx.Response(
        200, headers={"Content-Length": str(MAX_RESPONSE_BYTES)}, content=_chunks(body)
    )
    assert await read_capped(response, ACTION, KEY) == body


async def test_a_declared_length_over_the_cap_is_refused_unread() -> None:
    too_long = MAX_RESPONSE_BYTES + 1

    async def never() -> AsyncIterator[bytes]:
        raise AssertionError("the body was read")
        yield b""  # pragma: no cover

    response = httpx.Response(502, headers={"Content-Length": str(too_long)}, content=never())
    with pytest.raises(AttemptFailed) as caught:
        await read_capped(response, ACTION, KEY)
    error = caught.value.error
    assert (
        error.message == f"answer of {too_long} bytes is over the {MAX_RESPONSE_BYTES}-byte limit"
    )
    assert (error.action, error.key, error.http_status) == (ACTION, KEY, 502)


@pytest.mark.parametrize("declared", ["12x", "-5", " 9", None])
async def test_a_body_over_the_cap_is_refused_while_it_streams(declared: str | None) -> None:
    # a missing or malformed Content-Length is no reason to read without limit
    headers = {} if declared is None else {"Content-Length": declared}
    half = b"x" * (MAX_RESPONSE_BYTES // 2)
    response = httpx.Response(200, headers=headers, content=_chunks(half, half, b"x"))
    with pytest.raises(AttemptFailed) as caught:
        await read_capped(response, ACTION, KEY)
    error = caught.value.error
    assert type(error) is ResponseFormatError
    assert error.message == f"answer is over the {MAX_RESPONSE_BYTES}-byte limit"
    assert (error.action, error.key, error.http_status) == (ACTION, KEY, 200)


async def test_a_connection_lost_while_reading_is_a_sent_transport_error() -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"{"
        raise httpx.ReadError("peer closed")

    response = httpx.Response(200, content=broken())
    with pytest.raises(AttemptFailed) as caught:
        await read_capped(response, ACTION, KEY)
    assert type(caught.value.error) is TransportError
    assert caught.value.error.key == KEY
    assert caught.value.sent


# --- judging the answer --------------------------------------------------------------------


def _answer(status: int, body: Any, headers: dict[str, str] | None = None) -> tuple[Any, bytes]:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.Response(status, headers=headers or {}), payload


def _failed(status: int, body: Any, headers: dict[str, str] | None = None) -> AttemptFailed:
    response, payload = _answer(status, body, headers)
    with pytest.raises(AttemptFailed) as caught:
        classify(response, payload, ACTION, KEY)
    assert caught.value.sent
    assert (caught.value.error.action, caught.value.error.key) == (ACTION, KEY)
    return caught.value


def test_a_good_answer_gives_metadata_result_and_status() -> None:
    response, payload = _answer(200, {"ResponseMetadata": METADATA, "Result": {"Message": "ok"}})
    metadata, result, status = classify(response, payload, ACTION, KEY)
    assert metadata == ResponseMetadata("req-1", ACTION, "2022-06-01", "rtc", "cn-north-1")
    assert result == {"Message": "ok"}
    assert status == 200


def test_an_answer_without_result_gives_none() -> None:
    response, payload = _answer(200, {"ResponseMetadata": METADATA})
    assert classify(response, payload, ACTION, KEY)[1] is None


@pytest.mark.parametrize("status", [300, 302, 399])
def test_a_redirect_is_never_followed(status: int) -> None:
    target = "https://elsewhere.example/" + "x" * 200
    error = _failed(status, b"", {"Location": target}).error
    assert type(error) is ResponseFormatError
    shown = repr(target[:100])  # the target, cut short
    assert error.message == (
        f"the endpoint answered with a redirect (to {shown}), which is never followed"
    )
    assert error.http_status == status


def test_a_redirect_without_location_says_so() -> None:
    assert "(to '')" in _failed(301, b"").error.message


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, InvalidParameterError),
        (403, AuthenticationError),
        (502, ServerError),
        (429, ThrottledError),
    ],
)
def test_an_error_page_without_api_body_is_classified_by_status(
    status: int, expected: type[Exception]
) -> None:
    error = _failed(status, b"<html>Bad Gateway</html>").error
    assert type(error) is expected
    assert error.service_message == f"HTTP {status} without an API error body"  # type: ignore[attr-defined]
    assert error.code == ""  # type: ignore[attr-defined]
    assert error.http_status == status
    assert error.request_id is None


@pytest.mark.parametrize(
    ("payload", "what"),
    [
        (b"", "empty"),
        (b"<html>", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b"null", "not a JSON object"),
        (b"[" * 100_000, "not valid JSON"),  # too deep for the parser
    ],
)
def test_a_200_that_is_not_a_json_object_is_a_format_error(payload: bytes, what: str) -> None:
    error = _failed(200, payload).error
    assert type(error) is ResponseFormatError
    assert error.message == f"the answer is {what}"
    assert error.excerpt == payload[:200].decode()
    assert error.http_status == 200


def test_a_200_without_metadata_is_a_format_error() -> None:
    error = _failed(200, {"Result": {}}).error
    assert type(error) is ResponseFormatError
    assert error.message == "the answer has no ResponseMetadata"
    assert error.excerpt == '{"Result": {}}'


def test_malformed_metadata_is_a_format_error_naming_the_field() -> None:
    error = _failed(200, {"ResponseMetadata": {"RequestId": 7}}).error
    assert type(error) is ResponseFormatError
    assert error.message.startswith("the answer has ResponseMetadata.RequestId")


def test_an_error_in_the_metadata_is_the_services_error() -> None:
    metadata = {
        **METADATA,
        "Error": {"Code": "InvalidParameter.X", "CodeN": 10001, "Message": "bad"},
    }
    error = _failed(200, {"ResponseMetadata": metadata}).error
    assert type(error) is InvalidParameterError
    assert (error.code, error.code_n, error.service_message) == ("InvalidParameter.X", 10001, "bad")  # type: ignore[attr-defined]
    assert (error.request_id, error.http_status) == ("req-1", 200)


def test_an_error_status_with_good_metadata_and_no_error_says_the_status() -> None:
    error = _failed(500, {"ResponseMetadata": {**METADATA, "RequestId": ""}}).error
    assert type(error) is ServerError
    assert error.service_message == "HTTP 500"  # type: ignore[attr-defined]
    assert error.code == ""  # type: ignore[attr-defined]
    assert error.request_id is None  # an empty id is no id


def test_an_error_status_with_malformed_metadata_is_still_the_status_error() -> None:
    error = _failed(503, {"ResponseMetadata": "nope"}).error
    assert type(error) is ServerError
    assert error.request_id is None


# --- Retry-After ---------------------------------------------------------------------------


def _retry_after(headers: dict[str, str], status: int = 429) -> float | None:
    return _failed(status, b"", headers).retry_after


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"Retry-After": "0.5"}, 0.5),
        ({"Retry-After": "-4"}, 0.0),
        ({"Retry-After-Ms": "1500"}, 1.5),
        ({"Retry-After-Ms": "250", "Retry-After": "9"}, 0.25),  # the finer one wins
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "inf"}, None),
        ({"Retry-After-Ms": "soon", "Retry-After": "9"}, None),
        ({"Retry-After": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_in_seconds_or_milliseconds(
    headers: dict[str, str], seconds: float | None
) -> None:
    assert _retry_after(headers) == seconds


def test_retry_after_as_an_http_date() -> None:
    later = datetime.now(UTC) + timedelta(seconds=120)
    seconds = _retry_after({"Retry-After": format_datetime(later, usegmt=True)})
    assert seconds is not None and 100 < seconds <= 120
    past = format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    assert _retry_after({"Retry-After": past}) == 0.0
    # a date without a zone ("-0000") names no instant
    assert _retry_after({"Retry-After": "Wed, 21 Oct 2099 07:28:00 -0000"}) is None


def test_retry_after_counts_only_for_429_and_503() -> None:
    assert _retry_after({"Retry-After": "3"}, status=503) == 3.0
    assert _retry_after({"Retry-After": "3"}, status=500) is None
    assert _retry_after({"Retry-After": "3"}, status=400) is None


# --- more edges (mutation testing) ---------------------------------------------------------


async def test_every_refused_body_was_sent_and_names_the_attempt() -> None:
    long_encoding = "x-" + "e" * 60
    compressed = httpx.Response(200, headers={"Content-Encoding": long_encoding}, content=b"")
    declared = httpx.Response(
        200, headers={"Content-Length": str(MAX_RESPONSE_BYTES + 1)}, content=b""
    )
    streamed = httpx.Response(200, content=_chunks(b"x" * (MAX_RESPONSE_BYTES + 1)))
    for response in (compressed, declared, streamed):
        with pytest.raises(AttemptFailed) as caught:
            await read_capped(response, ACTION, KEY)
        assert caught.value.sent is True
        assert caught.value.retry_after is None
        assert str(caught.value) == str(caught.value.error)
    with pytest.raises(AttemptFailed) as caught:
        await read_capped(compressed, ACTION, KEY)
    assert caught.value.error.message == (
        f"the answer is compressed ({long_encoding[:40]!r}) although it was asked for "
        "uncompressed; it is not inflated, as it could be of any size"
    )


async def test_a_connection_lost_while_reading_says_what_failed() -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"{"
        raise httpx.ReadError("peer closed")

    with pytest.raises(AttemptFailed) as caught:
        await read_capped(httpx.Response(200, content=broken()), ACTION, KEY)
    error = caught.value.error
    assert error.message == "request failed: ReadError: peer closed"
    assert error.action == ACTION


def test_an_excerpt_of_undecodable_bytes_replaces_them() -> None:
    error = _failed(200, b"\xff\xfe not json").error
    assert type(error) is ResponseFormatError
    assert error.excerpt == "\ufffd\ufffd not json"


def test_a_400_with_good_metadata_and_no_error_is_still_an_error() -> None:
    error = _failed(400, {"ResponseMetadata": METADATA}).error
    assert type(error) is InvalidParameterError
    assert error.service_message == "HTTP 400"  # type: ignore[attr-defined]
    assert error.request_id == "req-1"


def test_a_200_without_metadata_names_its_status() -> None:
    assert _failed(200, {"Result": {}}).error.http_status == 200


def test_a_throttling_error_page_keeps_retry_after() -> None:
    failed = _failed(429, b"<html>Too Many Requests</html>", {"Retry-After": "2"})
    assert type(failed.error) is ThrottledError
    assert failed.error.retry_after == 2.0
    assert failed.retry_after == 2.0


async def test_direct_sender_builds_what_the_client_would_send() -> None:
    seen: list[httpx.Request] = []

    async def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"{}")

    mounted = httpx.MockTransport(answer)
    other = httpx.MockTransport(answer)
    async with httpx.AsyncClient(
        transport=other,
        mounts={"https://example.com": mounted},
        timeout=httpx.Timeout(3.0),
        headers={"User-Agent": "test-agent"},
    ) as client:
        sender = DirectSender(client, "https://example.com")
        assert sender.transport is mounted  # the transport client.send would pick
        get = sender.request("GET", "a=1&b=%20", {"X-Date": "d"}, b"")
        assert str(get.url) == "https://example.com/?a=1&b=%20"
        assert get.headers["X-Date"] == "d"
        assert get.headers["User-Agent"] == "test-agent"
        assert "content-length" not in get.headers  # no body, no length
        assert get.extensions["timeout"] == httpx.Timeout(3.0).as_dict()
        post = sender.request("POST", "a=1", {"Content-Type": "application/json"}, b"{}")
        assert post.read() == b"{}"
        assert post.headers["Content-Length"] == "2"
        response = await sender.send(post)
        assert response.request is post
        assert seen == [post]
