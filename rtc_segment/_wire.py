"""The wire: where a request meets httpx, and where an answer is judged.

* :func:`check_endpoint` -- which base URLs the client may call (https, or http to loopback);
* :class:`DirectSender` -- builds and sends requests with the least per-call work httpx allows;
* :func:`read_capped` -- reads an answer's body, refusing compressed or oversized ones;
* :func:`classify` -- turns an answer into ``(metadata, Result, status)`` or a typed error;
* :func:`transport_error` -- turns an httpx failure into a typed error;
* :class:`AttemptFailed` -- how one failed attempt is reported to the retry loop.

Nothing here retries, paces or signs: that is ``_caller``'s job.
"""

from __future__ import annotations

import email.utils
import ipaddress
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx

from ._compat import transport_for_url, url_maker
from ._converter import ShapeError, structure_metadata
from ._credentials import Credentials
from ._errors import (
    ClientTimeoutError,
    ResponseFormatError,
    RtcSegmentError,
    TransportError,
    error_from_service,
)
from ._models import ResponseMetadata, TaskKey

__all__ = [
    "MAX_RESPONSE_BYTES",
    "AttemptFailed",
    "DirectSender",
    "check_endpoint",
    "classify",
    "read_capped",
    "transport_error",
]

#: Answers larger than this are refused (``ResponseFormatError``) without being read further.
MAX_RESPONSE_BYTES = 1 << 20
_EXCERPT_BYTES = 200


class AttemptFailed(Exception):
    """One attempt failed with ``error``; ``sent`` tells whether it may have arrived.

    ``credentials`` are the ones the attempt was signed with (set by the retry loop, which
    tells a provider whose credentials the service refused).
    """

    def __init__(self, error: RtcSegmentError, *, sent: bool, retry_after: float | None = None):
        super().__init__(error)
        self.error = error
        self.sent = sent
        self.retry_after = retry_after
        self.credentials: Credentials | None = None


# Failures that prove the request never left: no connection was made or obtained.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine (plain http is allowed only there)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_endpoint(endpoint: str, allow_insecure_http: bool) -> tuple[str, str]:
    """Return ``(base_url, host)`` of an endpoint the client may call, or raise naming it."""
    if not isinstance(endpoint, str):
        raise TypeError(f"endpoint must be a str, not {type(endpoint).__name__}")
    try:
        url = httpx.URL(endpoint)
    except httpx.InvalidURL as exc:
        raise ValueError(f"endpoint {endpoint!r} is not a valid URL: {exc}") from None
    if url.scheme not in ("https", "http") or not url.host:
        raise ValueError(f"endpoint must be an http(s) URL with a host, got {endpoint!r}")
    if url.userinfo or url.query or url.fragment or url.path not in ("", "/"):
        raise ValueError(
            f"endpoint must be just scheme://host[:port], got {endpoint!r} "
            "(the API path is always /)"
        )
    if url.scheme == "http" and not allow_insecure_http and not is_loopback(url.host):
        raise ValueError(
            f"endpoint: refusing plain http:// to non-loopback host {url.host!r}: requests carry "
            "signatures; use https:// or pass allow_insecure_http=True"
        )
    netloc = url.netloc.decode("ascii")
    return f"{url.scheme}://{netloc}", netloc


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
        self._transport = transport_for_url(http, root)
        self._timeout = http.timeout.as_dict()
        self._default_headers = list(http.headers.multi_items())
        self._url = url_maker(root)

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


def transport_error(exc: httpx.HTTPError, action: str, key: TaskKey | None) -> RtcSegmentError:
    """The typed error for an httpx failure (the retry loop sets ``ambiguous``)."""
    name = type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        what = {
            httpx.ConnectTimeout: "no connection could be made",
            httpx.PoolTimeout: "no connection of the pool became free",
            httpx.WriteTimeout: "the request could not be sent",
        }.get(type(exc), "no answer came")
        return ClientTimeoutError(f"{what} in time ({name})", action=action, key=key)
    if isinstance(exc, httpx.DecodingError):
        return ResponseFormatError(
            f"the body could not be decoded ({name})", action=action, key=key
        )
    detail = str(exc)
    return TransportError(
        f"request failed: {name}" + (f": {detail}" if detail else ""),
        action=action,
        key=key,
    )


async def read_capped(response: httpx.Response, action: str, key: TaskKey | None) -> bytes:
    """Read the body of ``response``, refusing compressed ones and ones over the size cap."""
    encoding = response.headers.get("content-encoding")
    if encoding is not None and encoding.strip().lower() not in ("", "identity"):
        raise AttemptFailed(
            ResponseFormatError(
                f"the answer is compressed ({encoding[:40]!r}) although it was asked for "
                "uncompressed; it is not inflated, as it could be of any size",
                action=action,
                key=key,
                http_status=response.status_code,
            ),
            sent=True,
        )
    declared = response.headers.get("content-length")
    if (
        declared is not None
        and declared.isascii()
        and declared.isdigit()
        and int(declared) > MAX_RESPONSE_BYTES
    ):
        raise AttemptFailed(
            ResponseFormatError(
                f"answer of {int(declared)} bytes is over the {MAX_RESPONSE_BYTES}-byte limit",
                action=action,
                key=key,
                http_status=response.status_code,
            ),
            sent=True,
        )
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise AttemptFailed(
                    ResponseFormatError(
                        f"answer is over the {MAX_RESPONSE_BYTES}-byte limit",
                        action=action,
                        key=key,
                        http_status=response.status_code,
                    ),
                    sent=True,
                )
            chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise AttemptFailed(transport_error(exc, action, key), sent=True) from None
    return b"".join(chunks)


def _excerpt(payload: bytes) -> str:
    return payload[:_EXCERPT_BYTES].decode("utf-8", "replace")


def classify(
    response: httpx.Response, payload: bytes, action: str, key: TaskKey | None
) -> tuple[ResponseMetadata, Any, int]:
    """Classify one answer: return ``(metadata, Result, status)`` or raise ``AttemptFailed``."""
    status = response.status_code
    retry_after = _parse_retry_after(response.headers) if status in (429, 503) else None

    def fail(error: RtcSegmentError) -> AttemptFailed:
        return AttemptFailed(error, sent=True, retry_after=retry_after)

    if 300 <= status < 400:
        target = response.headers.get("location", "")
        raise fail(
            ResponseFormatError(
                f"the endpoint answered with a redirect (to {target[:100]!r}), which is "
                "never followed",
                action=action,
                key=key,
                http_status=status,
            )
        )
    parsed = True
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):
        document = parsed = False
    if not isinstance(document, dict):
        if status >= 400:
            # An error page from a proxy or load balancer: the status is all we know.
            raise fail(
                error_from_service(
                    http_status=status,
                    code="",
                    code_n=None,
                    service_message=f"HTTP {status} without an API error body",
                    action=action,
                    key=key,
                    request_id=None,
                    retry_after=retry_after,
                )
            )
        # ("null" is valid JSON: it is not an object, like a list or a number)
        what = "empty" if not payload else "not a JSON object" if parsed else "not valid JSON"
        raise fail(
            ResponseFormatError(
                f"the answer is {what}",
                excerpt=_excerpt(payload),
                action=action,
                key=key,
                http_status=status,
            )
        )
    raw_metadata = document.get("ResponseMetadata")
    try:
        metadata = structure_metadata(raw_metadata) if raw_metadata is not None else None
    except ShapeError as exc:
        metadata = None
        shape_problem: str | None = str(exc)
    else:
        shape_problem = None if metadata is not None else "no ResponseMetadata"
    error = metadata.error if metadata is not None else None
    if error is not None or status >= 400:
        raise fail(
            error_from_service(
                http_status=status,
                code=error.code if error else "",
                code_n=error.code_n if error else None,
                service_message=error.message if error else f"HTTP {status}",
                action=action,
                key=key,
                request_id=(metadata.request_id or None) if metadata else None,
                retry_after=retry_after,
            )
        )
    if metadata is None:
        raise fail(
            ResponseFormatError(
                f"the answer has {shape_problem}",
                excerpt=_excerpt(payload),
                action=action,
                key=key,
                http_status=status,
            )
        )
    return metadata, document.get("Result"), status


def _parse_retry_after(headers: httpx.Headers) -> float | None:
    seconds = _retry_after_seconds(headers)
    # NaN or infinity would end up in asyncio timers (and ThrottledError.retry_after).
    if seconds is None or not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _retry_after_seconds(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return float(value) / 1000.0
        except ValueError:
            return None
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
