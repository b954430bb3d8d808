"""The in-process delivery: an httpx transport that hands requests to the emulator."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httpx

from ._emulator import EmulatorRequest

if TYPE_CHECKING:
    from ._emulator import Emulator

__all__ = ["EmulatorTransport"]


class EmulatorTransport(httpx.AsyncBaseTransport):
    """Delivers requests to an :class:`~rtc_segment.testing.Emulator` without sockets.

    Faithful where the client can tell the difference: the answer's delay is slept on the
    event loop, and when it is longer than the request's read timeout the transport waits
    for the timeout and raises :class:`httpx.ReadTimeout` (as a socket transport would); a
    dropped connection raises :class:`httpx.RemoteProtocolError`.
    """

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Answer ``request`` through the emulator."""
        body = await request.aread()
        url = request.url
        answer = self.emulator.handle(
            EmulatorRequest(
                method=request.method,
                path=url.path,
                query=url.query.decode("ascii", "replace"),
                headers={
                    name.decode("latin-1").lower(): value.decode("latin-1")
                    for name, value in reversed(request.headers.raw)
                },
                body=body,
            )
        )
        if answer.delay > 0:
            timeouts = request.extensions.get("timeout") or {}
            read_timeout = timeouts.get("read")
            if read_timeout is not None and answer.delay > read_timeout:
                await asyncio.sleep(read_timeout)
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
