"""The aiohttp-backed httpx transport (extra ``aiohttp``).

The client always speaks httpx; only the transport under it changes. httpx's own transport
(httpcore) is the default. ``SegmentClient(http_backend="aiohttp")`` puts the
``httpx-aiohttp`` transport under the same ``httpx.AsyncClient``: on a loopback benchmark it
answers a sequential call sooner and keeps its throughput with many requests in flight,
where httpcore's connection pool slows down (encode/httpx#3215).

``httpx-aiohttp`` maps aiohttp's exceptions loosely (a connection refused or closed before
the answer becomes ``httpx.ConnectTimeout``, which would tell the client "never sent" about
a request that may have arrived). :class:`_ExactAiohttpTransport` re-maps every aiohttp
failure to the httpx exception httpcore raises in the same situation, so retries, the
ambiguity flag and the error classes are identical on both backends.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Literal, cast

import httpx

if TYPE_CHECKING:
    import aiohttp

from ._compat import disable_connection_retry
from ._validation import check_int

__all__ = ["HTTP_BACKENDS", "HttpBackend", "aiohttp_transport"]

HttpBackend = Literal["httpcore", "aiohttp"]
"""The HTTP backends a :class:`~rtc_segment.SegmentClient` can be built on."""
HTTP_BACKENDS: tuple[HttpBackend, ...] = ("httpcore", "aiohttp")

# httpx's default keep-alive expiry, so idle connections live equally long on both backends.
_KEEPALIVE_SECONDS = 5.0
_MISSING_EXTRA = (
    "http_backend='aiohttp' needs the aiohttp extra: pip install 'rtc-segment[aiohttp]'"
)


def aiohttp_transport(*, max_connections: int = 100) -> httpx.AsyncBaseTransport:
    """An httpx transport that sends requests with aiohttp (extra ``aiohttp``).

    Errors are raised as the same httpx exceptions httpx's default transport raises in the
    same situation. Cookies are left to httpx (aiohttp's own jar is disabled) and redirects
    are never followed; environment proxy settings are not used.

    Raises:
        ImportError: ``httpx-aiohttp`` is not installed.
    """
    check_int("max_connections", max_connections, minimum=1)
    try:
        _exact_transport_class()
    except ImportError as exc:
        raise ImportError(_MISSING_EXTRA) from exc
    return _exact_transport_class()(max_connections=max_connections)


@functools.cache
def _exact_transport_class() -> Callable[..., httpx.AsyncBaseTransport]:
    """Define the transport class once, on first use (aiohttp is imported only then)."""
    import aiohttp
    import httpx_aiohttp

    # Most specific first: the first aiohttp class an exception is an instance of decides.
    error_map: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
        (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
        (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
        (aiohttp.ClientProxyConnectionError, httpx.ProxyError),
        (aiohttp.ClientConnectorError, httpx.ConnectError),
        # Closed before or during the answer, or an answer that is not HTTP: the request
        # went out, as with httpcore's RemoteProtocolError.
        (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
        (aiohttp.ClientPayloadError, httpx.RemoteProtocolError),
        (aiohttp.ClientResponseError, httpx.RemoteProtocolError),
        (aiohttp.ClientConnectionError, httpx.ReadError),
        (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
        (aiohttp.ClientError, httpx.TransportError),
        # aiohttp's own timeouts are the classes above; a bare one is a read that stalled.
        (asyncio.TimeoutError, httpx.ReadTimeout),
    )
    caught = (httpx.TransportError, aiohttp.ClientError, asyncio.TimeoutError)

    def translate(exc: BaseException, request: httpx.Request) -> BaseException:
        # httpx-aiohttp raises its (loose) httpx exception *from* aiohttp's.
        cause = exc.__cause__ if isinstance(exc, httpx.TransportError) else None
        original = cause if cause is not None else exc
        for aiohttp_type, httpx_type in error_map:
            if isinstance(original, aiohttp_type):
                translated = httpx_type(str(original) or type(original).__name__, request=request)
                translated.__cause__ = original
                return translated
        return exc

    class ExactStream(httpx.AsyncByteStream):
        """The answer's body, with aiohttp's errors re-mapped like the request's."""

        def __init__(self, inner: httpx.AsyncByteStream, request: httpx.Request) -> None:
            self._inner = inner
            self._request = request

        async def __aiter__(self) -> AsyncIterator[bytes]:
            try:
                async for chunk in self._inner:
                    yield chunk
            except caught as exc:
                raise translate(exc, self._request) from None

        async def aclose(self) -> None:
            try:
                await self._inner.aclose()
            except caught as exc:
                raise translate(exc, self._request) from None

    class ExactAiohttpTransport(httpx_aiohttp.AiohttpTransport):
        """``httpx_aiohttp.AiohttpTransport`` with httpcore's exception semantics."""

        def __init__(self, *, max_connections: int) -> None:
            super().__init__(
                limits=httpx.Limits(
                    max_connections=max_connections,
                    max_keepalive_connections=max_connections,
                    keepalive_expiry=_KEEPALIVE_SECONDS,
                ),
                client=self._new_session,
            )
            self._max_connections = max_connections

        def _new_session(self) -> aiohttp.ClientSession:
            # Called on the first request, inside the running event loop. httpx keeps the
            # cookies; aiohttp keeping them too would send them twice.
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                keepalive_timeout=_KEEPALIVE_SECONDS,
                ssl=self.ssl_context,
            )
            session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar()
            )
            # aiohttp silently sends a GET again when the connection fails; that second
            # arrival would bypass the client's limiter, signing and counters. The client
            # retries itself, paced.
            disable_connection_retry(session)
            return session

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            try:
                response = await super().handle_async_request(request)
            except caught as exc:
                raise translate(exc, request) from None
            # The transport answers with an async stream; its type says only "a stream".
            response.stream = ExactStream(cast(httpx.AsyncByteStream, response.stream), request)
            return response

    return ExactAiohttpTransport
