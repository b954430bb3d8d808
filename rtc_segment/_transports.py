"""HTTP backends: the aiohttp-backed httpx transport (extra ``aiohttp``).

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
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Literal, cast

import httpx

if TYPE_CHECKING:
    import aiohttp

__all__ = ["HTTP_BACKENDS", "DirectSender", "HttpBackend", "aiohttp_transport"]

HttpBackend = Literal["httpcore", "aiohttp"]
"""The HTTP backends a :class:`~rtc_segment.SegmentClient` can be built on."""
HTTP_BACKENDS: tuple[HttpBackend, ...] = ("httpcore", "aiohttp")

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
    if isinstance(max_connections, bool) or not isinstance(max_connections, int):
        raise TypeError("max_connections must be an int")
    if max_connections < 1:
        raise ValueError(f"max_connections must be >= 1, got {max_connections!r}")
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
            # retries itself, paced (there is no public switch for this).
            if hasattr(session, "_retry_connection"):
                session._retry_connection = False
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


# httpx's default keep-alive expiry, so idle connections live equally long on both backends.
_KEEPALIVE_SECONDS = 5.0


class DirectSender:
    """Builds and sends the client's requests with the least per-call work httpx allows.

    ``AsyncClient.send`` re-derives, for every request, what is constant for a client that
    always calls one endpoint without auth hooks, redirects or cookies: which transport to
    use, the timeout extension, the default headers, and the URL (httpx parses and re-quotes
    a URL string in ~25 µs). This does each once and hands requests straight to the
    transport ``AsyncClient.send`` would have chosen (a proxy from the environment
    included). What reaches the wire is the same as ``client.send(client.build_request())``
    would send: the signed headers plus the client's default headers.
    """

    __slots__ = ("_default_headers", "_timeout", "_transport", "_url")

    def __init__(self, http: httpx.AsyncClient, base_url: str) -> None:
        root = httpx.URL(f"{base_url}/")
        self._transport = http._transport_for_url(root)
        self._timeout = http.timeout.as_dict()
        self._default_headers = list(http.headers.multi_items())
        self._url = _url_maker(root)

    @property
    def transport(self) -> httpx.AsyncBaseTransport:
        """The transport requests are handed to."""
        return self._transport

    def request(
        self, method: str, query_string: str, headers: Mapping[str, str], body: bytes
    ) -> httpx.Request:
        """The request for ``/?query_string`` (a signed, already-encoded canonical query)."""
        return httpx.Request(
            method,
            self._url(query_string),
            headers=[*headers.items(), *self._default_headers],
            content=body if body else None,
            extensions={"timeout": self._timeout},
        )

    async def send(self, request: httpx.Request) -> httpx.Response:
        """Send ``request``; the response body is streamed (read it, then ``aclose()``)."""
        response = await self._transport.handle_async_request(request)
        response.request = request
        return response


def _url_maker(root: httpx.URL) -> Callable[[str], httpx.URL]:
    """A function from a canonical query string to the URL ``root?query``.

    The signer percent-encodes every byte outside the unreserved set, so the query needs no
    parsing or quoting; the fast path swaps it into the root's parsed form. It is used only
    if it yields exactly what parsing the full URL string yields (else httpx's internals
    changed, and the slow path is used).
    """
    prefix = str(root)

    def parsed(query: str) -> httpx.URL:
        return httpx.URL(f"{prefix}?{query}")

    reference = getattr(root, "_uri_reference", None)
    replace = getattr(reference, "_replace", None)
    if replace is None:
        return parsed

    def swapped(query: str) -> httpx.URL:
        url = httpx.URL.__new__(httpx.URL)
        url._uri_reference = replace(query=query)
        return url

    sample = "Action=GetSegmentTask&AppId=a%40b&RoomId=r.1&TaskId=t-_~1%2F&Version=2022-06-01"
    try:
        fast, slow = swapped(sample), parsed(sample)
        same = fast == slow and fast.raw_path == slow.raw_path and str(fast) == str(slow)
    except Exception:
        same = False
    return swapped if same else parsed
