"""Guarantee 5: transport hygiene.

TLS verification is on by default; plain HTTP goes only to loopback unless opted in;
redirects are never followed (the signed request never leaves for another host); the
connection pool and the requests in flight are bounded; ``aclose()`` closes the pool, and a
closed client raises :class:`ClientClosedError` from every entry point without sending.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import httpx
import pytest

from rtc_segment import (
    ClientClosedError,
    ResponseFormatError,
    SegmentClient,
    StorageConfig,
    TosConfig,
)
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator

from ._support import emulator_client

KEY = ("app", "room", "task")


def ssl_context_of(client: SegmentClient) -> ssl.SSLContext:
    transport = client._caller.transport
    if isinstance(transport, httpx.AsyncHTTPTransport):
        return transport._pool._ssl_context  # type: ignore[attr-defined,no-any-return]
    return transport.ssl_context  # type: ignore[attr-defined,no-any-return]


@pytest.mark.parametrize("backend", ["httpcore", "aiohttp"])
def test_tls_is_verified_by_default(backend: str) -> None:
    client = SegmentClient(DEFAULT_CREDENTIALS, http_backend=backend)  # type: ignore[arg-type]
    context = ssl_context_of(client)
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2 or (
        context.minimum_version is ssl.TLSVersion.MINIMUM_SUPPORTED
        and not context.options & ssl.OP_NO_TLSv1_2
    )


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://rtc.volcengineapi.com",
        "http://10.0.0.1",
        "http://localhost.example.com",
        "http://127.0.0.1.nip.io",
        "http://[2001:db8::1]",
    ],
)
def test_plain_http_is_refused_for_other_hosts(endpoint: str) -> None:
    with pytest.raises(ValueError, match="allow_insecure_http"):
        SegmentClient(DEFAULT_CREDENTIALS, endpoint=endpoint)
    # ... unless the caller says so, explicitly.
    SegmentClient(DEFAULT_CREDENTIALS, endpoint=endpoint, allow_insecure_http=True)


@pytest.mark.parametrize(
    "endpoint",
    ["http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:9", "http://127.9.9.9"],
)
def test_plain_http_is_fine_for_loopback(endpoint: str) -> None:
    assert SegmentClient(DEFAULT_CREDENTIALS, endpoint=endpoint).endpoint == endpoint


class RedirectingTransport(httpx.AsyncBaseTransport):
    """The endpoint redirects elsewhere; records every request it gets, by host."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.host == "rtc.volcengineapi.com":
            location = "https://evil.example.com/?steal=1"
            return httpx.Response(self.status, headers={"location": location})
        return httpx.Response(200, json={"ResponseMetadata": {}, "Result": {}})


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_are_never_followed(status: int) -> None:
    transport = RedirectingTransport(status)
    async with SegmentClient(DEFAULT_CREDENTIALS, transport=transport, max_retries=3) as client:
        with pytest.raises(ResponseFormatError, match="redirect") as caught:
            await client.get_segment_task(*KEY)
        with pytest.raises(ResponseFormatError):
            await client.stop_segment(*KEY)
    assert caught.value.http_status == status
    assert {request.url.host for request in transport.requests} == {"rtc.volcengineapi.com"}
    assert all("authorization" in request.headers for request in transport.requests)
    assert len(transport.requests) == 2  # not retried either


def test_the_pool_is_bounded() -> None:
    client = SegmentClient(DEFAULT_CREDENTIALS, max_connections=7)
    pool = client._caller.transport._pool  # type: ignore[attr-defined]
    assert pool._max_connections == 7
    assert pool._max_keepalive_connections <= 7


class CountingTransport(httpx.AsyncBaseTransport):
    """The emulator's transport, counting how many requests are in flight at once."""

    def __init__(self, emulator: Emulator) -> None:
        self.inner = emulator.transport()
        self.in_flight = 0
        self.peak = 0
        self.closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            return await self.inner.handle_async_request(request)
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        self.closed = True


@pytest.mark.looptime
async def test_requests_in_flight_never_exceed_max_connections() -> None:
    emulator = Emulator(qps=None, latency=0.5)
    emulator.add_task(*KEY)
    transport = CountingTransport(emulator)
    async with SegmentClient(
        DEFAULT_CREDENTIALS,
        transport=transport,
        max_connections=5,
        qps=10_000.0,
        clock=emulator.wall_clock,
    ) as client:
        await asyncio.gather(*(client.get_segment_task(*KEY) for _ in range(50)))
    assert transport.peak == 5
    assert transport.closed  # aclose() closed the transport too


async def test_aclose_closes_the_pool_and_every_connection() -> None:
    emulator = Emulator(qps=None)
    emulator.add_task(*KEY)
    async with emulator.serve() as url:
        client = SegmentClient(DEFAULT_CREDENTIALS, endpoint=url, max_connections=4)
        await asyncio.gather(*(client.get_segment_task(*KEY) for _ in range(8)))
        pool = client._caller.transport._pool  # type: ignore[attr-defined]
        assert 1 <= len(pool.connections) <= 4
        await client.aclose()
        assert client.closed
        assert pool.connections == []


async def test_aclose_with_calls_in_flight_ends_them_with_our_errors() -> None:
    emulator = Emulator(qps=None, latency=0.2)
    emulator.add_task(*KEY)
    async with emulator.serve() as url:
        client = SegmentClient(DEFAULT_CREDENTIALS, endpoint=url, qps=20.0, max_retries=0)
        calls = [asyncio.create_task(client.get_segment_task(*KEY)) for _ in range(10)]
        await asyncio.sleep(0.1)  # some are on the wire, the rest wait at the limiter
        await client.aclose()
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors, "aclose() ended the waiting calls"
    for error in errors:
        assert isinstance(error, ClientClosedError) or (
            isinstance(error, Exception) and type(error).__module__.startswith("rtc_segment")
        ), repr(error)


CLOSED_CALLS: dict[str, Any] = {
    "get_segment_task": lambda c: c.get_segment_task(*KEY),
    "gather_segment_tasks": lambda c: c.gather_segment_tasks([KEY]),
    "get_segment_tasks": lambda c: c.get_segment_tasks([KEY]),
    "wait_for_segment_task": lambda c: c.wait_for_segment_task(*KEY),
    "watch_segment_task": lambda c: c.watch_segment_task(*KEY).__anext__(),
    "watch_segment_tasks": lambda c: c.watch_segment_tasks([KEY]),
    "start_segment": lambda c: c.start_segment(
        *KEY, storage_config=StorageConfig(tos_config=TosConfig(account_id="1", bucket="b"))
    ),
    "update_segment": lambda c: c.update_segment(*KEY, duration=5),
    "stop_segment": lambda c: c.stop_segment(*KEY),
    "async with": lambda c: c.__aenter__(),
}


@pytest.mark.parametrize("entry", list(CLOSED_CALLS))
async def test_a_closed_client_raises_a_clear_error(entry: str) -> None:
    emulator = Emulator()
    emulator.add_task(*KEY)
    client = emulator_client(emulator)
    await client.aclose()

    async def use() -> None:
        result = CLOSED_CALLS[entry](client)
        if hasattr(result, "__await__"):
            await result

    with pytest.raises(ClientClosedError, match="closed"):
        await use()
    assert emulator.count() == 0
    await client.aclose()  # closing twice is harmless
