"""``VolcengineAuth``: the V4 signature as an ``httpx.Auth``, for any request of your own client.

Built on :meth:`Signer.sign_headers <rtc_segment._signing.Signer.sign_headers>` (the same
signer ``SegmentClient`` uses), plus what a general-purpose Auth needs beyond signing: it
signs for one host only, and keeps the signature from following a redirect elsewhere.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Generator
from datetime import UTC, datetime
from typing import TypeAlias

import httpx

from ._credentials import Credentials
from ._endpoints import RTC_HOSTS
from ._signing import Signer, canonical_path, check_scope

__all__ = ["UnsafeRedirectError", "VolcengineAuth"]

#: The documented RTC OpenAPI host of each signing region: VolcengineAuth's default pin.
#: What VolcengineAuth sets; none of it may follow a redirect to another origin.
_SIGNATURE_HEADERS = ("Authorization", "X-Date", "X-Content-Sha256", "X-Security-Token")
_SIGNATURE_NAMES = frozenset(name.lower() for name in _SIGNATURE_HEADERS)
_SIGNED_LOWER = frozenset({"host", "content-type", "content-md5"})
#: Request extension naming the origin a request was signed for. httpx copies a request's
#: extensions into the requests it builds for redirects, which is how the guard knows them.
_SIGNED_FOR = "rtc_segment.signed_for"
_DEFAULT_PORTS = {"http": 80, "https": 443}

_Origin: TypeAlias = tuple[str, str, int]


def _origin(url: httpx.URL) -> _Origin:
    return url.scheme, url.host, url.port or _DEFAULT_PORTS.get(url.scheme, 0)


def _may_carry_signature(signed_for: _Origin, url: httpx.URL) -> bool:
    # httpx's own rule for Authorization: the same origin, or http -> https on the same host
    # and default ports (the signature is still for that host).
    target = _origin(url)
    if target == signed_for:
        return True
    scheme, host, port = signed_for
    return (scheme, port) == ("http", 80) and target == ("https", host, 443)


def _strip_signature(headers: httpx.Headers) -> None:
    for name in _SIGNATURE_HEADERS:
        headers.pop(name, None)


class UnsafeRedirectError(httpx.RequestError):
    """A client following redirects sent a signed request's headers to another origin."""


class VolcengineAuth(httpx.Auth):
    """Signs every request of your own ``httpx.AsyncClient`` or ``httpx.Client``.

    The same V4 signature as the official SDK, byte for byte, for any Volcengine OpenAPI
    action: the method, path, query, ``Host``, ``Content-Type`` and body that httpx will send
    are what is signed. To make that exact, the request goes out with the path and query in
    the SDK's encoding (parameters sorted by name, ``%20`` for a space).

    Example::

        import httpx
        from rtc_segment import VolcengineAuth

        auth = VolcengineAuth(region="cn-north-1")  # credentials from the environment
        async with httpx.AsyncClient(
            base_url="https://rtc.volcengineapi.com", auth=auth
        ) as client:
            response = await client.get(
                "/", params={"Action": "GetRecordTask", "Version": "2023-11-01", ...}
            )

    **One host.** It signs for the host it was made for and refuses any other with a
    ``ValueError`` before anything is sent: ``host`` when given, else the documented RTC
    endpoint of ``region`` (``rtc.volcengineapi.com`` for ``cn-north-1``). Pass
    ``any_host=True`` to sign for whatever host a request goes to.

    **Redirects.** The service does not redirect, and a signed request must not be re-sent
    elsewhere. With httpx's default ``follow_redirects=False``, the ``next_request`` of a
    redirect answer carries none of the signature headers (``Authorization``, ``X-Date``,
    ``X-Content-Sha256``, ``X-Security-Token``); sending it through this Auth signs it
    afresh, host check included. A client that follows redirects builds and sends the
    next request before the Auth sees the answer, and httpx strips only ``Authorization``
    from it: add :meth:`redirect_guard` (``httpx.Client``) or :meth:`async_redirect_guard`
    (``httpx.AsyncClient``) to the client's request hooks, and they strip all four from any
    redirect that leaves the origin. Without the guard, such a redirect raises
    :class:`UnsafeRedirectError` (an ``httpx.RequestError``) when the answer arrives.

    Args:
        credentials: The access key; ``None`` resolves it as ``SegmentClient`` does (the
            environment, then ``~/.volc/credentials``).
        region: The signing region.
        service: The signing service (``rtc`` for RTC; other Volcengine services have their
            own names and hosts).
        host: The only host (``name`` or ``name:port``) this Auth signs for. Default: the
            documented RTC endpoint of ``region`` when ``service`` is ``rtc``; required
            otherwise (or ``any_host``).
        any_host: Sign requests to any host.
        clock: Returns the current time (aware) for ``X-Date``; injectable for tests.

    Raises:
        TypeError, ValueError: An argument is malformed (the message names it).
        CredentialsError: ``credentials`` is ``None`` and none are configured.
    """

    requires_request_body = True

    def __init__(
        self,
        credentials: Credentials | None = None,
        *,
        region: str = "cn-north-1",
        service: str = "rtc",
        host: str | None = None,
        any_host: bool = False,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        check_scope(region, service)
        if not isinstance(any_host, bool):
            raise TypeError(f"any_host must be a bool, not {type(any_host).__name__}")
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be a callable returning a datetime, not {clock!r}")
        if any_host and host is not None:
            raise ValueError("pass host= or any_host=True, not both")
        if host is None and not any_host:
            host = RTC_HOSTS.get(region) if service == "rtc" else None
            if host is None:
                raise ValueError(
                    f"host: no documented endpoint for service {service!r} in region "
                    f"{region!r}; pass host= (the host your client sends to) or any_host=True"
                )
        self._host = host
        self._pin = None if host is None else _parse_host(host)
        self._signer = Signer(Credentials.resolve(credentials), region=region, service=service)
        self._region = region
        self._service = service
        self._clock = clock or _utc_now

    def __repr__(self) -> str:
        where = "any_host=True" if self._host is None else f"host={self._host!r}"
        return (
            f"VolcengineAuth({self._signer.credentials!r}, region={self._region!r}, "
            f"service={self._service!r}, {where})"
        )

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Sign ``request``; keep the signature off anything a redirect answer leads to."""
        signed_for = self._sign(request)
        response = yield request
        for hop in (*response.history[1:], response):
            sent = hop.request
            if not _may_carry_signature(signed_for, sent.url) and any(
                name in sent.headers for name in _SIGNATURE_HEADERS
            ):
                raise UnsafeRedirectError(
                    f"the client followed a redirect to {sent.url.host!r} and sent it this "
                    "request's signature headers; use follow_redirects=False (httpx's default) "
                    "or add VolcengineAuth.redirect_guard / async_redirect_guard to the "
                    "client's request event hooks",
                    request=sent,
                )
        if response.next_request is not None:
            _strip_signature(response.next_request.headers)

    def redirect_guard(self, request: httpx.Request) -> None:
        """A request event hook for an ``httpx.Client`` that follows redirects.

        Strips the signature headers from a redirect to another origin (httpx itself strips
        only ``Authorization``)::

            httpx.Client(auth=auth, follow_redirects=True,
                         event_hooks={"request": [auth.redirect_guard]})
        """
        signed_for = request.extensions.get(_SIGNED_FOR)
        if signed_for is not None and not _may_carry_signature(signed_for, request.url):
            _strip_signature(request.headers)

    async def async_redirect_guard(self, request: httpx.Request) -> None:
        """:meth:`redirect_guard` for an ``httpx.AsyncClient``."""
        self.redirect_guard(request)

    def _sign(self, request: httpx.Request) -> _Origin:
        url = request.url
        if self._pin is not None and not _pin_allows(self._pin, url):
            raise ValueError(
                f"VolcengineAuth signs requests to {self._host!r} only, and this one goes to "
                f"{url.netloc.decode('ascii')!r}; make another VolcengineAuth with host= for "
                "that host, or pass any_host=True"
            )
        headers = request.headers
        given, names = _header_dict(headers)
        if not names.isdisjoint(_SIGNATURE_NAMES):
            # A request sent again (e.g. a next_request) is signed afresh.
            _strip_signature(headers)
        if request.method != "GET" and "Content-Type" not in given and "content-type" in names:
            # Spelled otherwise, the SDK would add a second Content-Type (its rule is
            # case-sensitive); one header with the SDK's spelling is what it would sign.
            headers["Content-Type"] = headers["content-type"]
            given, names = _header_dict(headers)
        pairs = url.params.multi_items()
        signed = self._signer.sign_headers(
            method=request.method,
            path=url.path,
            query=pairs,
            headers=given,
            body=request.content,
            now=self._clock(),
        )
        for name, value in signed.headers.items():
            if name not in given:
                headers[name] = value
        path = canonical_path(url.path)
        raw_path = f"{path}?{signed.query_string}" if signed.query_string else path
        request.url = url.copy_with(raw_path=raw_path.encode("ascii"))
        signed_for = _origin(request.url)
        request.extensions[_SIGNED_FOR] = signed_for
        return signed_for


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _parse_host(host: object) -> tuple[str, int | None]:
    if not isinstance(host, str):
        raise TypeError(f"host must be a str or None, not {type(host).__name__}")
    problem = (
        f"host must be a host name with an optional port, such as '127.0.0.1:8080', got {host!r}"
    )
    if not host or any(c in host for c in "/?#@ \\") or not host.isascii():
        raise ValueError(problem)
    try:
        url = httpx.URL(f"https://{host}/")
        port = urllib.parse.urlsplit(f"//{host}").port
    except (httpx.InvalidURL, ValueError):
        raise ValueError(problem) from None
    return url.host, port


def _pin_allows(pin: tuple[str, int | None], url: httpx.URL) -> bool:
    host, port = pin
    if url.host != host:
        return False
    if port is None:  # pinned without a port: the scheme's default
        return url.port is None
    return (url.port or _DEFAULT_PORTS.get(url.scheme)) == port


def _header_dict(headers: httpx.Headers) -> tuple[dict[str, str], set[str]]:
    # The headers as the SDK would hold them (names as spelled, one value each) without the
    # ones the Auth sets, and every name present, lower-cased.
    given: dict[str, str] = {}
    names: set[str] = set()
    for raw_name, raw_value in headers.raw:
        name = raw_name.decode("ascii")
        lower = name.lower()
        if lower in names and (lower in _SIGNED_LOWER or lower.startswith("x-")):
            raise ValueError(
                f"header {name!r} appears more than once; a signed header must appear once"
            )
        names.add(lower)
        if lower not in _SIGNATURE_NAMES:
            given[name] = raw_value.decode(headers.encoding)
    return given, names
