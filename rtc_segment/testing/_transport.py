"""The in-process delivery: an httpx transport that hands requests to a request handler."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import httpx

from ._envelope import Answer, EmulatorRequest, RequestHandler

__all__ = ["EmulatorTransport"]


class EmulatorTransport(httpx.AsyncBaseTransport):
    """Delivers requests to an :class:`~rtc_segment.testing.Emulator` without sockets.

    Faithful where the client can tell the difference: the time the request takes to reach
    the service (a forward delay) and the answer's delay are slept on the event loop, and
    when together they exceed the request's read timeout the transport waits for the
    timeout and raises :class:`httpx.ReadTimeout` (as a socket transport would: the request
    is written at once, then the client waits to read); a dropped connection raises
    :class:`httpx.RemoteProtocolError`.

    Args:
        handler: What answers the requests: an ``Emulator``, or any
            :class:`~rtc_segment.testing.RequestHandler`.
    """

    def __init__(self, handler: RequestHandler) -> None:
        self.handler = handler
        """The request handler this transport delivers to."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Answer ``request`` through the handler."""
        body = await request.aread()
        url = request.url
        received = EmulatorRequest(
            method=request.method,
            path=url.path,
            query=url.query.decode("ascii", "replace"),
            headers={
                name.decode("latin-1").lower(): value.decode("latin-1")
                for name, value in reversed(request.headers.raw)
            },
            body=body,
        )
        timeouts = request.extensions.get("timeout") or {}
        read_timeout: float | None = timeouts.get("read")
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            answer = await _within(read_timeout, self.handler.handle(received))
        except TimeoutError:
            raise httpx.ReadTimeout("timed out waiting for the answer", request=request) from None
        if answer.delay > 0:
            remaining = None if read_timeout is None else read_timeout - (loop.time() - started)
            if remaining is not None and answer.delay > remaining:
                await asyncio.sleep(max(0.0, remaining))
                raise httpx.ReadTimeout("timed out waiting for the answer", request=request)
            await asyncio.sleep(answer.delay)
        if answer.drop:
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            )
        return httpx.Response(
            answer.status,
            headers=list(answer.headers),
            content=answer.body,
            request=request,
        )


async def _within(timeout: float | None, answer: Awaitable[Answer]) -> Answer:
    """``await answer``, giving up (``TimeoutError``) after ``timeout`` seconds."""
    # No extra task per request, unlike wait_for before 3.12.
    async with asyncio.timeout(timeout):
        return await answer
