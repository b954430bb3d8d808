"""Guarantee 2: hostile responses.

Whatever comes back -- random JSON, wrong types in every field, huge numbers, deep
nesting, invalid UTF-8, gigantic or compressed bodies, a missing ``ResponseMetadata``,
odd ``Content-Length``/``Retry-After`` headers -- the call returns a ``SegmentTask`` or
raises an :class:`RtcSegmentError`; it never hangs and never pulls more than the 1 MiB cap
(plus one chunk) from the body.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtc_segment import (
    Backoff,
    ResponseFormatError,
    RtcSegmentError,
    SegmentClient,
    SegmentTask,
    ThrottledError,
)
from rtc_segment._wire import MAX_RESPONSE_BYTES
from rtc_segment.testing import DEFAULT_CREDENTIALS

KEY = ("app", "room", "task")
CHUNK = 64 * 1024
# Every call is bounded by this (real) time: an answer is served at once, so a call that
# takes longer is stuck.
CALL_DEADLINE = 10.0


class CountingStream(httpx.AsyncByteStream):
    """A response body handed out in chunks, counting how much the client pulled."""

    def __init__(self, body: bytes, *, endless: bool = False, chunk: int = CHUNK) -> None:
        self.body = body
        self.endless = endless
        self.chunk = chunk
        self.pulled = 0
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            for start in range(0, len(self.body), self.chunk):
                piece = self.body[start : start + self.chunk]
                self.pulled += len(piece)
                yield piece
            if not self.endless:
                return

    async def aclose(self) -> None:
        self.closed = True


class ScriptedTransport(httpx.AsyncBaseTransport):
    """Answers every request with the same hostile response (a fresh stream each time)."""

    def __init__(
        self,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        endless: bool = False,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.endless = endless
        self.streams: list[CountingStream] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        stream = CountingStream(self.body, endless=self.endless)
        self.streams.append(stream)
        # Raw bytes, as a socket transport hands them over (any latin-1 octet can arrive).
        raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in self.headers]
        return httpx.Response(self.status, headers=raw, stream=stream, request=request)


async def call(transport: ScriptedTransport, *, max_retries: int = 1) -> object:
    """One get_segment_task through ``transport``: its result, or the exception it raised."""
    async with SegmentClient(
        DEFAULT_CREDENTIALS,
        transport=transport,
        max_retries=max_retries,
        backoff=Backoff.disabled(),
        qps=1000.0,
    ) as client:
        try:
            return await asyncio.wait_for(client.get_segment_task(*KEY), CALL_DEADLINE)
        except TimeoutError:  # pragma: no cover - the failure this guards against
            pytest.fail("the call hung on a hostile response")
        except BaseException as exc:
            return exc


def check_contained(result: object, transport: ScriptedTransport) -> None:
    """The guarantee for one answer: a task or our own error, and the cap respected."""
    if isinstance(result, BaseException):
        assert isinstance(result, RtcSegmentError), repr(result)
        str(result), repr(result)  # formatting the error must not fail either
    else:
        assert isinstance(result, SegmentTask), repr(result)
    for stream in transport.streams:
        assert stream.pulled <= MAX_RESPONSE_BYTES + CHUNK
        assert stream.closed


def run(coro: Any) -> Any:
    # Hypothesis drives a synchronous test; each example gets its own short-lived loop.
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


# -- strategies ------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
TASK_FIELDS = (
    "StartTime",
    "EndTime",
    "Status",
    "StopReason",
    "MaxIdleTime",
    "TargetStreams",
    "Duration",
    "Identifier",
    "Handle",
    "Control",
    "StorageConfig",
)


@st.composite
def envelopes(draw: st.DrawFn) -> bytes:
    """A plausible envelope with any part replaced by something of the wrong shape."""
    task: dict[str, Any] = {
        "StartTime": 1700000000000,
        "EndTime": 0,
        "Status": 2,
        "StopReason": "",
        "Duration": 20,
        "StorageConfig": {"Type": 0, "TosConfig": {"AccountId": "1", "Bucket": "b"}},
    }
    for name in draw(st.lists(st.sampled_from(TASK_FIELDS), max_size=4, unique=True)):
        task[name] = draw(json_values)
    metadata: Any = {"RequestId": "r", "Action": "GetSegmentTask", "Version": "2022-06-01"}
    if draw(st.booleans()):
        metadata = draw(st.sampled_from([None, "x", 5, [], {"Error": draw(json_values)}]))
    document: dict[str, Any] = {"Result": {"SegmentTask": task}}
    if draw(st.booleans()):
        document["Result"] = draw(st.sampled_from([None, [], "ok", {"SegmentTask": None}]))
    if metadata is not None:
        document["ResponseMetadata"] = metadata
    return json.dumps(document, allow_nan=True).encode()


def deep_nesting(depth: int) -> bytes:
    return b'{"Result":' + b"[" * depth + b"]" * depth + b"}"


bodies = st.one_of(
    envelopes(),
    json_values.map(lambda value: json.dumps(value, allow_nan=True).encode()),
    st.binary(max_size=200),  # invalid UTF-8 and everything else
    st.integers(min_value=1, max_value=200_000).map(deep_nesting),
    st.integers(min_value=4000, max_value=50_000).map(lambda n: b"9" * n),  # a huge number
    st.sampled_from([b"", b"null", b"{}", b"[]", b'"', b"\xff\xfe{}", b"{" * 10]),
)
odd_numbers = st.sampled_from(
    ["", " ", "-1", "1.5", "1e400", "nan", "inf", "-inf", "0x10", "abc", "9" * 40, "\t3", "3 3"]
)
odd_dates = st.sampled_from(
    [
        "Wed, 21 Oct 2015 07:28:00 GMT",
        "Fri, 31 Dec 9999 23:59:59 GMT",
        "Mon, 32 Foo 99999 99:99:99 +9999",
        "Tue, 01 Jan 0001 00:00:00 -2400",
        "Tue, 01 Jan 2030 00:00:00",  # no zone
    ]
)
headers = st.lists(
    st.tuples(
        st.sampled_from(["content-length", "retry-after", "retry-after-ms", "content-type"]),
        odd_numbers | odd_dates | st.text(st.characters(codec="latin-1"), max_size=20),
    ),
    max_size=3,
)
statuses = st.sampled_from([200, 201, 204, 299, 301, 302, 304, 307, 400, 401, 403, 404, 429])
statuses |= st.sampled_from([500, 502, 503, 504, 599])


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(status=statuses, headers=headers, body=bodies)
def test_any_answer_yields_a_task_or_our_own_error(
    status: int, headers: list[tuple[str, str]], body: bytes
) -> None:
    # Content-Length is part of the fuzz: the client must not trust it either way.
    transport = ScriptedTransport(status, headers, body)
    check_contained(run(call(transport)), transport)


# -- size ------------------------------------------------------------------------------


@pytest.mark.parametrize("declared", [None, "10", str(MAX_RESPONSE_BYTES), "abc"])
async def test_an_endless_body_is_cut_off_at_the_cap(declared: str | None) -> None:
    headers = [("content-type", "application/json")]
    if declared is not None:
        headers.append(("content-length", declared))
    transport = ScriptedTransport(200, headers, b'{"a":"' + b"x" * CHUNK, endless=True)
    result = await call(transport, max_retries=0)
    assert isinstance(result, ResponseFormatError)
    assert "limit" in str(result)
    check_contained(result, transport)
    assert transport.streams[0].pulled > MAX_RESPONSE_BYTES  # the cut really happened


async def test_a_declared_oversize_answer_is_not_read_at_all() -> None:
    transport = ScriptedTransport(
        200, [("content-length", str(10 * MAX_RESPONSE_BYTES))], b"x" * CHUNK, endless=True
    )
    result = await call(transport, max_retries=0)
    assert isinstance(result, ResponseFormatError)
    assert transport.streams[0].pulled == 0


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_compression_bomb_is_not_inflated_into_memory(encoding: str) -> None:
    # 64 MiB of zeros compress to ~64 KiB: under the cap on the wire, far over it inflated.
    inflated = 64 * MAX_RESPONSE_BYTES
    raw = b'{"Result":"' + b"0" * inflated + b'"}'
    body = gzip.compress(raw, 9) if encoding == "gzip" else zlib.compress(raw, 9)
    assert len(body) < MAX_RESPONSE_BYTES
    transport = ScriptedTransport(
        200, [("content-type", "application/json"), ("content-encoding", encoding)], body
    )
    tracemalloc.start()
    try:
        result = await call(transport, max_retries=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(result, ResponseFormatError)
    check_contained(result, transport)
    assert peak < 8 * MAX_RESPONSE_BYTES, f"peak {peak / MAX_RESPONSE_BYTES:.0f} MiB"


# -- headers ---------------------------------------------------------------------------


THROTTLED_BODY = json.dumps(
    {
        "ResponseMetadata": {
            "RequestId": "r",
            "Error": {"Code": "FlowLimitExceeded", "Message": "slow down"},
        }
    }
).encode()


@pytest.mark.looptime
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("retry-after", "inf"),
        ("retry-after", "1e400"),
        ("retry-after", "nan"),
        ("retry-after", "-5"),
        ("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT"),
        ("retry-after", "Mon, 32 Foo 99999 99:99:99 +9999"),
        ("retry-after-ms", "1e400"),
        ("retry-after-ms", "-1"),
        ("retry-after-ms", "nan"),
        ("retry-after", "9" * 400),
    ],
)
async def test_odd_retry_after_never_stalls_past_the_cap(name: str, value: str) -> None:
    transport = ScriptedTransport(429, [(name, value)], THROTTLED_BODY)
    backoff = Backoff(retry_after_cap=30.0)
    loop = asyncio.get_running_loop()
    async with SegmentClient(
        DEFAULT_CREDENTIALS, transport=transport, max_retries=2, backoff=backoff, qps=1000.0
    ) as client:
        started = loop.time()
        with pytest.raises(ThrottledError) as caught:
            await client.get_segment_task(*KEY)
        waited = loop.time() - started
    assert caught.value.attempts == 3
    assert waited <= 2 * backoff.retry_after_cap + 0.1
    retry_after = caught.value.retry_after
    # What users may sleep on is a finite, non-negative number of seconds (or unknown).
    assert retry_after is None or (math.isfinite(retry_after) and retry_after >= 0)
