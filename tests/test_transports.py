"""The client behaves identically on both HTTP backends (httpcore and aiohttp).

respx cannot intercept the aiohttp transport, so every test here talks over real loopback
sockets: to the emulator's server, or to a scripted raw HTTP server for answers the
emulator never gives (redirects, oversized bodies, connections closed before an answer).
Each test runs once per backend and asserts the same outcome for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from rtc_segment import Backoff, SegmentClient
from rtc_segment._aiohttp import HTTP_BACKENDS, aiohttp_transport
from rtc_segment._credentials import Credentials
from rtc_segment._errors import (
    AuthenticationError,
    ClientTimeoutError,
    ResponseFormatError,
    ServerError,
    ThrottledError,
    TransportError,
)
from rtc_segment._models import TaskStatus
from rtc_segment._wire import MAX_RESPONSE_BYTES
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator, Fault


@pytest.fixture(params=HTTP_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each test that takes ``backend`` runs once per HTTP backend."""
    return str(request.param)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def make_client(backend: str, endpoint: str, **kwargs: Any) -> SegmentClient:
    kwargs.setdefault("credentials", DEFAULT_CREDENTIALS)
    kwargs.setdefault("max_retries", 0)
    kwargs.setdefault("backoff", Backoff.disabled())
    kwargs.setdefault("qps", 10_000.0)
    return SegmentClient(endpoint=endpoint, http_backend=backend, **kwargs)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A loopback server that reads each request's head and lets ``handler`` answer."""
    heads: list[bytes] = []
    handlers: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            heads.append(await reader.readuntil(b"\r\n\r\n"))
            await handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            handlers.discard(task)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", heads
    finally:
        server.close()
        # Before Python 3.12 wait_closed() does not wait for the connection handlers: end
        # them here, or one still answering (a trickle) outlives the event loop.
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


def answer(status: str, headers: dict[str, str], body: bytes = b"") -> Handler:
    async def handler(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lines = [f"HTTP/1.1 {status}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await writer.drain()

    return handler


@pytest.fixture
async def emulator() -> Emulator:
    emulator = Emulator(qps=None)
    emulator.add_task("app", "room", "task", status=TaskStatus.RUNNING)
    emulator.add_task("app.1", "room@2", "task-3_x", status=TaskStatus.ENDED)
    return emulator


async def test_success_is_typed_and_signed(backend: str, emulator: Emulator) -> None:
    async with emulator.serve() as url, make_client(backend, url) as client:
        task = await client.get_segment_task("app", "room", "task")
        # Ids with characters outside the plain alphabet survive URL handling unchanged,
        # or the signature would not match.
        other = await client.get_segment_task("app.1", "room@2", "task-3_x")
    assert task.status is TaskStatus.RUNNING
    assert other.status is TaskStatus.ENDED
    assert emulator.count(ok=True) == 2
    assert client.stats.succeeded == 2


async def test_signature_failure_is_an_authentication_error(
    backend: str, emulator: Emulator
) -> None:
    wrong = Credentials(DEFAULT_CREDENTIALS.access_key_id, "bm90LXRoZS1yaWdodC1zZWNyZXQ=")
    async with emulator.serve() as url, make_client(backend, url, credentials=wrong) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.get_segment_task("app", "room", "task")
    assert caught.value.code == "SignatureDoesNotMatch"
    assert caught.value.http_status == 401


async def test_throttling_carries_retry_after(backend: str, emulator: Emulator) -> None:
    emulator.faults.next(1, Fault.HTTP_429, retry_after=7)
    async with emulator.serve() as url, make_client(backend, url) as client:
        with pytest.raises(ThrottledError) as caught:
            await client.get_segment_task("app", "room", "task")
    assert caught.value.http_status == 429
    assert caught.value.retry_after == 7.0
    assert client.stats.throttled == 1


async def test_server_errors_are_retried_until_success(backend: str, emulator: Emulator) -> None:
    emulator.faults.next(1, Fault.HTTP_503)
    emulator.faults.next(1, Fault.HTTP_500)
    async with emulator.serve() as url, make_client(backend, url, max_retries=2) as client:
        task = await client.get_segment_task("app", "room", "task")
    assert task.status is TaskStatus.RUNNING
    assert emulator.count() == 3
    assert client.stats.retries == 2


async def test_no_answer_in_time_is_a_client_timeout(backend: str, emulator: Emulator) -> None:
    emulator.faults.next(1, Fault.SLOW, slow_seconds=1)
    async with emulator.serve() as url, make_client(backend, url, timeout=0.2) as client:
        with pytest.raises(ClientTimeoutError) as caught:
            await client.get_segment_task("app", "room", "task")
    # A TransportError, not a service error with an invented code; the request was sent.
    assert isinstance(caught.value, TransportError)
    assert not isinstance(caught.value, ServerError)
    assert caught.value.retryable
    assert caught.value.ambiguous


async def test_connection_dropped_mid_answer_is_an_ambiguous_transport_error(
    backend: str, emulator: Emulator
) -> None:
    emulator.faults.next(1, Fault.DROP)
    async with emulator.serve() as url, make_client(backend, url) as client:
        with pytest.raises(TransportError) as caught:
            await client.get_segment_task("app", "room", "task")
        # The broken connection is not reused: the next call succeeds.
        task = await client.get_segment_task("app", "room", "task")
    assert caught.value.ambiguous
    assert task.status is TaskStatus.RUNNING


async def test_connection_closed_before_an_answer_may_have_arrived(backend: str) -> None:
    async def close(_reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        return None

    async with raw_server(close) as (url, heads), make_client(backend, url) as client:
        with pytest.raises(TransportError) as caught:
            await client.get_segment_task("app", "room", "task")
    assert len(heads) == 1
    assert caught.value.ambiguous  # the request was sent: it may have been acted on


async def test_refused_connection_was_never_sent(backend: str) -> None:
    async with raw_server(answer("200 OK", {})) as (url, _heads):
        pass  # closed again: nothing listens on that port now
    async with make_client(backend, url) as client:
        with pytest.raises(TransportError, match="ConnectError") as caught:
            await client.get_segment_task("app", "room", "task")
    assert not caught.value.ambiguous


async def test_an_answer_that_is_not_http_is_a_transport_error(backend: str) -> None:
    async def garbage(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()

    async with raw_server(garbage) as (url, _heads), make_client(backend, url) as client:
        with pytest.raises(TransportError) as caught:
            await client.get_segment_task("app", "room", "task")
    assert caught.value.ambiguous


@pytest.mark.parametrize(
    ("fault", "fragment"),
    [
        (Fault.HTML_BODY, "not valid JSON"),
        (Fault.TRUNCATED_BODY, "not valid JSON"),
        (Fault.EMPTY_BODY, "empty"),
    ],
)
async def test_bodies_that_are_not_the_envelope(
    backend: str, emulator: Emulator, fault: Fault, fragment: str
) -> None:
    emulator.faults.next(1, fault)
    async with emulator.serve() as url, make_client(backend, url) as client:
        with pytest.raises(ResponseFormatError, match=fragment) as caught:
            await client.get_segment_task("app", "room", "task")
    assert caught.value.http_status == 200


async def test_redirects_are_not_followed(backend: str) -> None:
    elsewhere = answer("302 Found", {"Location": "http://127.0.0.1:9/", "Content-Length": "0"})
    async with raw_server(elsewhere) as (url, heads), make_client(backend, url) as client:
        with pytest.raises(ResponseFormatError, match="redirect") as caught:
            await client.get_segment_task("app", "room", "task")
    assert caught.value.http_status == 302
    assert len(heads) == 1


async def test_declared_oversized_answer_is_refused(backend: str) -> None:
    size = MAX_RESPONSE_BYTES + 1
    big = answer("200 OK", {"Content-Length": str(size)}, b"{" + b" " * (size - 2) + b"}")
    async with raw_server(big) as (url, _heads), make_client(backend, url) as client:
        with pytest.raises(ResponseFormatError, match="limit"):
            await client.get_segment_task("app", "room", "task")


async def test_undeclared_oversized_answer_is_cut_off(backend: str) -> None:
    async def endless(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 65536
        with contextlib.suppress(ConnectionError):
            for _ in range(MAX_RESPONSE_BYTES // len(chunk) * 4):
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()

    async with raw_server(endless) as (url, _heads), make_client(backend, url) as client:
        with pytest.raises(ResponseFormatError, match="limit"):
            await client.get_segment_task("app", "room", "task")


async def test_a_json_body_at_the_limit_is_read(backend: str) -> None:
    body = json.dumps({"Result": {}, "pad": ""}).encode()
    body = body.replace(b'""', b'"' + b"x" * (MAX_RESPONSE_BYTES - len(body)) + b'"')
    assert len(body) == MAX_RESPONSE_BYTES
    exact = answer("200 OK", {"Content-Length": str(len(body))}, body)
    async with raw_server(exact) as (url, _heads), make_client(backend, url) as client:
        # Read in full, then judged on content: no ResponseMetadata.
        with pytest.raises(ResponseFormatError, match="ResponseMetadata"):
            await client.get_segment_task("app", "room", "task")


def test_explicit_transport_wins_over_the_backend(backend: str) -> None:
    emulator = Emulator()
    transport = emulator.transport()
    client = SegmentClient(DEFAULT_CREDENTIALS, transport=transport, http_backend=backend)  # type: ignore[arg-type]
    assert client._caller.transport is transport


def test_unknown_backend_is_refused(backend: str) -> None:
    with pytest.raises(ValueError, match="http_backend"):
        SegmentClient(DEFAULT_CREDENTIALS, http_backend=backend + "2")  # type: ignore[arg-type]


def test_missing_extra_says_how_to_install_it(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rtc_segment import _aiohttp

    _aiohttp._exact_transport_class.cache_clear()
    monkeypatch.setitem(sys.modules, "httpx_aiohttp", None)
    try:
        with pytest.raises(ImportError, match=r"rtc-segment\[aiohttp\]"):
            aiohttp_transport()
        if backend == "httpcore":  # the default backend needs nothing extra
            SegmentClient(DEFAULT_CREDENTIALS, http_backend=backend)  # type: ignore[arg-type]
        else:
            with pytest.raises(ImportError, match=r"rtc-segment\[aiohttp\]"):
                SegmentClient(DEFAULT_CREDENTIALS, http_backend=backend)  # type: ignore[arg-type]
    finally:
        _aiohttp._exact_transport_class.cache_clear()


def test_backend_transport_type(backend: str) -> None:
    client = SegmentClient(DEFAULT_CREDENTIALS, http_backend=backend)  # type: ignore[arg-type]
    default = isinstance(client._caller.transport, httpx.AsyncHTTPTransport)
    assert default is (backend == "httpcore")


async def test_the_same_headers_reach_the_wire(backend: str) -> None:
    async with (
        raw_server(answer("200 OK", {"Content-Length": "2"}, b"{}")) as (url, heads),
        make_client(backend, url) as client,
    ):
        with pytest.raises(ResponseFormatError):
            await client.get_segment_task("app", "room", "task")
    lines = heads[0].decode("latin-1").split("\r\n")[1:]
    headers = {
        name.lower(): value for name, value in (line.split(": ", 1) for line in lines if line)
    }
    assert headers["accept"] == "application/json"
    assert headers["user-agent"].startswith("rtc-segment/")
    # Uncompressed answers only, whichever library sends it (no decompression bombs).
    assert headers["accept-encoding"] == "identity"
    assert {"host", "x-date", "x-content-sha256", "authorization"} <= headers.keys()


def trickle(body_size: int, every: float) -> Handler:
    """Headers at once, then the body two bytes at a time: each read is quick, the whole slow."""

    async def handler(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {body_size}\r\n\r\n"
        writer.write(head.encode())
        await writer.drain()
        for _ in range(body_size // 2):
            await asyncio.sleep(every)
            writer.write(b"  ")
            await writer.drain()

    return handler


async def test_timeout_bounds_the_whole_attempt_not_each_read(backend: str) -> None:
    # 300 bytes at 2 bytes per 0.1 s take 15 s; every single read takes 0.1 s, well within
    # the timeout, so only a bound on the whole attempt ends the call.
    async with (
        raw_server(trickle(300, 0.1)) as (url, _heads),
        make_client(backend, url, timeout=1.0) as client,
    ):
        call = client.get_segment_task("app", "room", "task")
        with pytest.raises(ClientTimeoutError, match="1 s timeout") as caught:
            await asyncio.wait_for(call, timeout=6.0)
        assert caught.value.ambiguous  # it was sent
        # The connection and its slot come back: the client goes on working.
        await asyncio.wait_for(client._caller.exchanges_settled(), timeout=6.0)
        assert client.stats.in_flight == 0
