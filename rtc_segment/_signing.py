"""The Volcengine "V4" request signature (HMAC-SHA256), byte-equal to the official SDK.

One implementation with three users: :class:`Signer` (what ``SegmentClient`` signs with),
``VolcengineAuth`` (``_auth.py``: an ``httpx.Auth`` for the user's own httpx client, built on
:meth:`Signer.sign_headers`) and the emulator's verifier (``testing/_auth.py``). All of them
build the canonical request with :func:`canonical_request` (or its cached form), the string to
sign with :func:`string_to_sign`, and the key with :func:`signing_key`.

Every rule, including the quirks, follows ``SignerV4.sign`` of the ``volcengine`` Python SDK
1.0.229 byte for byte (``tests/test_signing.py`` checks vectors made with that SDK and compares
against the SDK itself):

- a header is signed iff its name is exactly ``Content-Type``, ``Content-Md5`` or ``Host`` or
  starts with ``X-`` (case-sensitive), and its value is signed verbatim;
- ``:80`` and ``:443`` are dropped from the signed ``Host`` value, whatever the scheme;
- the query is sorted by raw key (stable, so a repeated key keeps the caller's order) and
  percent-encoded with only ``A-Z a-z 0-9 - _ . ~`` left literal;
- a non-GET request without ``Content-Type`` gets
  ``application/x-www-form-urlencoded; charset=utf-8``.

Pure functions and a signer object, no I/O; the clock is always passed in.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from operator import itemgetter
from typing import TypeAlias

import attrs

from ._credentials import REDACTED, Credentials

__all__ = [
    "ALGORITHM",
    "DEFAULT_CONTENT_TYPE",
    "EMPTY_BODY_SHA256",
    "SignedRequest",
    "Signer",
    "canonical_path",
    "canonical_query",
    "canonical_request",
    "check_scope",
    "credential_scope",
    "format_x_date",
    "parse_x_date",
    "quote",
    "signature",
    "signing_key",
    "string_to_sign",
]

#: The algorithm name, first word of ``Authorization`` and first line of the string to sign.
ALGORITHM = "HMAC-SHA256"
#: Hex SHA-256 of an empty body (every GET sends it as ``X-Content-Sha256``).
EMPTY_BODY_SHA256 = hashlib.sha256(b"").hexdigest()
#: What the SDK adds as ``Content-Type`` to a non-GET request that has none.
DEFAULT_CONTENT_TYPE = "application/x-www-form-urlencoded; charset=utf-8"
X_DATE_FORMAT = "%Y%m%dT%H%M%SZ"

#: A query: a mapping (a list/tuple value is a repeated key) or ``(key, value)`` pairs.
Query: TypeAlias = Mapping[str, str | Sequence[str]] | Iterable[tuple[str, str]]

# Header names the SDK signs besides every name starting with "X-" (exact spelling).
_SIGNED_NAMES = frozenset({"Content-Type", "Content-Md5", "Host"})
_first = itemgetter(0)


# --- the pieces every signer and the verifier share --------------------------------------------


@lru_cache(maxsize=4096)
def quote(value: str) -> str:
    """Percent-encode ``value`` as the canonical query does.

    UTF-8, upper-case hex, only ``A-Z a-z 0-9 - _ . ~`` left literal (space is ``%20``).
    Cached: the same keys and ids are encoded again on every request.
    """
    return urllib.parse.quote(value, safe="-_.~")


@lru_cache(maxsize=256)
def canonical_path(path: str) -> str:
    """The request path as the SDK encodes it: in the canonical request and on the wire.

    ``urllib.parse.quote`` with ``/`` kept ("" means "/"). Cached: a client uses few paths.
    """
    if path in ("/", ""):
        return "/"
    # Util.norm_uri; its replaces are no-ops after quote(), kept for fidelity.
    return urllib.parse.quote(path).replace("%2F", "/").replace("+", "%20")


def canonical_query(query: Query) -> str:
    """The canonical query string (also the exact query the signers send).

    Sorted by the raw (unescaped) key in code-point order; the sort is stable, so values of a
    repeated key keep the caller's order. Keys and values go through :func:`quote`; pairs are
    ``key=value`` (``key=`` for an empty value) joined by ``&``.
    """
    if not isinstance(query, Mapping):
        return "&".join([_query_pair(key, value) for key, value in sorted(query, key=_first)])
    # A mapping's keys are unique: sorting them and expanding each list in place is the
    # same stable order, without building and sorting the pairs.
    parts: list[str] = []
    for key in sorted(query):
        value = query[key]
        if isinstance(value, str):
            parts.append(_query_pair(key, value))
        else:
            parts.extend([_query_pair(key, item) for item in value])
    return "&".join(parts)


@lru_cache(maxsize=4096)
def _query_pair(key: str, value: str) -> str:
    # Cached as a pair: one lookup instead of two (the same ids come back on every poll).
    return f"{quote(key)}={quote(value)}"


def format_x_date(now: datetime) -> str:
    """``X-Date`` for ``now`` (an aware datetime): ``YYYYMMDDTHHMMSSZ`` in UTC.

    Raises:
        ValueError: ``now`` is naive (its instant would be a guess).
    """
    if now.tzinfo is UTC:
        utc = now  # the common case (datetime.now(timezone.utc)): skip the conversion
    elif now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    else:
        utc = now.astimezone(UTC)
    if utc.year < 1000:
        # strftime does not zero-pad such years; neither does the SDK, so do as it does.
        return utc.strftime(X_DATE_FORMAT)
    # %-formatting is ~4x faster than strftime and gives the same text for 4-digit years.
    return "%04d%02d%02dT%02d%02d%02dZ" % (  # noqa: UP031
        utc.year,
        utc.month,
        utc.day,
        utc.hour,
        utc.minute,
        utc.second,
    )


def parse_x_date(value: str) -> datetime | None:
    """The instant an ``X-Date`` value names (aware, UTC), or ``None`` if it is malformed."""
    if len(value) != 16:
        return None
    try:
        return datetime.strptime(value, X_DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


@lru_cache(maxsize=64)
def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """The derived key ``kSigning`` for one day, region and service (cached).

    ``kDate = HMAC(secret, date)`` — the raw secret, no prefix — then region, service and the
    literal ``"request"``.
    """
    key = secret.encode()
    for part in (date, region, service, "request"):
        key = hmac.digest(key, part.encode(), "sha256")
    return key


def credential_scope(date: str, region: str, service: str) -> str:
    """``date/region/service/request``: the scope in ``Credential=`` and the string to sign."""
    return f"{date}/{region}/{service}/request"


_REGION_PATTERN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_SERVICE_PATTERN = re.compile(r"[A-Za-z0-9]+(?:[_-][A-Za-z0-9]+)*")


def check_scope(region: object, service: object) -> None:
    """Check the signing region and service before they go into a header.

    Raises:
        ValueError: Either is not a plain name (the message names the argument).
    """
    if not isinstance(region, str) or not _REGION_PATTERN.fullmatch(region):
        raise ValueError(f"region must be a region name such as 'cn-north-1', got {region!r}")
    if not isinstance(service, str) or not _SERVICE_PATTERN.fullmatch(service):
        raise ValueError(f"service must be a service name such as 'rtc', got {service!r}")


def _host_for_signing(value: str) -> str:
    # The SDK splits on ":" and drops the port when it is 80 or 443, whatever the scheme.
    # (IPv6 literals are not handled — neither by the SDK.)
    if ":" in value:
        parts = value.split(":")
        if parts[1] in ("80", "443"):
            return parts[0]
    return value


@lru_cache(maxsize=256)
def _header_template(names: tuple[str, ...]) -> str:
    # The canonical request's header part for these signed names (lower case, in
    # SignedHeaders order): "name:%s\n" per header, a blank line, then SignedHeaders.
    # Cached: a signer sends the same few name sets, a verifier sees the same few.
    escaped = [name.replace("%", "%%") for name in names]  # "%" is a legal name character
    lines = "".join([f"{name}:%s\n" for name in escaped])
    return f"{lines}\n{';'.join(escaped)}"


def _canonical(
    method: str, path: str, query_string: str, template: str, values: tuple[str, ...],
    content_sha256: str,
) -> str:  # fmt: skip
    # ``template`` comes from _header_template; ``values`` have the host rule applied.
    path = "/" if path == "/" else canonical_path(path)
    return f"{method}\n{path}\n{query_string}\n{template % values}\n{content_sha256}"


def canonical_request(
    method: str,
    path: str,
    query_string: str,
    headers: Sequence[tuple[str, str]],
    content_sha256: str,
) -> str:
    """The canonical request: the text whose SHA-256 goes into the string to sign.

    Args:
        method: The HTTP method, as sent.
        path: The decoded request path ("" means "/"); encoded here as the SDK does.
        query_string: The canonical query (see :func:`canonical_query`).
        headers: The signed headers as ``(lower-case name, value)`` in ``SignedHeaders``
            order (a signer sorts them by name); a ``host`` value loses ``:80``/``:443``.
        content_sha256: The hex SHA-256 of the body.
    """
    names = tuple([name for name, _ in headers])
    values = tuple(
        [_host_for_signing(value) if name == "host" else value for name, value in headers]
    )
    return _canonical(method, path, query_string, _header_template(names), values, content_sha256)


def string_to_sign(x_date: str, scope: str, canonical: str) -> str:
    """``HMAC-SHA256\\n<X-Date>\\n<scope>\\n<hex sha256 of the canonical request>``."""
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return f"{ALGORITHM}\n{x_date}\n{scope}\n{digest}"


_Pads: TypeAlias = "tuple[hashlib._Hash, hashlib._Hash]"


@lru_cache(maxsize=64)
def _hmac_pads(key: bytes) -> _Pads:
    # HMAC with the inner and outer pads hashed once per key: a derived key signs every
    # request of a day, and starting from copies saves two of the four SHA-256 blocks.
    if len(key) > 64:  # longer than SHA-256's block: HMAC hashes the key first
        key = hashlib.sha256(key).digest()
    block = key.ljust(64, b"\0")
    return (
        hashlib.sha256(bytes(b ^ 0x36 for b in block)),
        hashlib.sha256(bytes(b ^ 0x5C for b in block)),
    )


def _hmac_hex(pads: _Pads, message: str) -> str:
    inner = pads[0].copy()
    inner.update(message.encode())
    outer = pads[1].copy()
    outer.update(inner.digest())
    return outer.hexdigest()


def signature(key: bytes, to_sign: str) -> str:
    """Lower-case hex ``HMAC-SHA256(key, to_sign)``."""
    return _hmac_hex(_hmac_pads(key), to_sign)


def _body_sha256(body: bytes | str) -> str:
    if not body:
        return EMPTY_BODY_SHA256
    data = body.encode() if isinstance(body, str) else body
    return hashlib.sha256(data).hexdigest()


# --- the client side ---------------------------------------------------------------------------


def _redact_headers(headers: Mapping[str, str]) -> str:
    shown = {
        name: (REDACTED if name.lower() == "x-security-token" else value)
        for name, value in headers.items()
    }
    return repr(shown)


@attrs.frozen
class SignedRequest:
    """The result of signing: what to send and every intermediate (for tests and debugging).

    ``repr`` never shows the session token (in ``headers`` and ``canonical_request``).
    """

    #: The canonical query string; send it verbatim after ``?``.
    query_string: str
    #: Every header to send: the given ones plus X-Date, X-Security-Token (with a token),
    #: X-Content-Sha256, Content-Type (non-GET default) and Authorization.
    headers: dict[str, str] = attrs.field(repr=_redact_headers)
    x_date: str
    content_sha256: str
    signed_headers: str
    canonical_request: str = attrs.field(repr=False)
    string_to_sign: str = attrs.field(repr=False)
    signature: str
    authorization: str


@attrs.frozen
class _Plan:
    """How to sign one set of header names (cached per set: a client reuses a few)."""

    #: Picks the signed headers' values, sorted by lower-case name, from the header dict.
    values: Callable[[Mapping[str, str]], tuple[str, ...]]
    #: Where ``host`` is among them (-1: not signed).
    host_at: int
    #: ``SignedHeaders``.
    signed_headers: str
    #: See _header_template.
    template: str


@lru_cache(maxsize=256)
def _plan(header_names: tuple[str, ...]) -> _Plan:
    chosen: dict[str, str] = {}
    for name in header_names:
        if name in _SIGNED_NAMES or name.startswith("X-"):
            # Two names that lower-case alike: the later wins, as in the SDK's dict.
            chosen[name.lower()] = name
    names = tuple(sorted(chosen))
    return _Plan(
        # A tuple: _sign always signs X-Date and X-Content-Sha256, and itemgetter of two or
        # more names returns one.
        values=itemgetter(*[chosen[name] for name in names]),
        host_at=names.index("host") if "host" in chosen else -1,
        signed_headers=";".join(names),
        template=_header_template(names),
    )


class _Day:
    """What one UTC day of signing shares: the derived key's HMAC pads, the scope, and the
    ``Authorization`` prefix."""

    __slots__ = ("auth_prefix", "credentials", "date", "pads", "scope")

    def __init__(
        self, credentials: Credentials, key: bytes, date: str, scope: str, auth_prefix: str
    ) -> None:
        # The credentials the key was derived from: the cache is valid for them only.
        self.credentials = credentials
        self.pads = _hmac_pads(key)
        self.date = date
        self.scope = scope
        self.auth_prefix = auth_prefix


class Signer:
    """Signs requests with given credentials, region and service.

    The signing key is derived once per UTC day and set of credentials, and the
    signed-header layout once per set of header names. Each signature takes every part
    (key id, secret, session token) from one :class:`Credentials` -- the signer's own, or
    the one passed to :meth:`sign` -- so a refresh can never mix two keys into one
    signature. :meth:`sign` is the client's shape (``Host`` and an optional
    ``Content-Type``); :meth:`sign_headers` takes any header set, as the SDK would hold it.
    """

    __slots__ = ("_credentials", "_day", "_region", "_service")

    def __init__(
        self, credentials: Credentials | None, *, region: str, service: str = "rtc"
    ) -> None:
        # None: every sign() call brings its credentials (the client, asking a provider).
        if credentials is not None and not isinstance(credentials, Credentials):
            raise TypeError(f"credentials must be Credentials, not {type(credentials).__name__}")
        check_scope(region, service)
        self._credentials = credentials
        self._region = region
        self._service = service
        self._day: _Day | None = None

    def __repr__(self) -> str:
        return f"Signer({self._credentials!r}, region={self._region!r}, service={self._service!r})"

    @property
    def credentials(self) -> Credentials | None:
        """The credentials this signer signs with when a call brings none."""
        return self._credentials

    def _own(self) -> Credentials:
        if self._credentials is None:
            raise TypeError("this Signer has no credentials of its own: pass credentials=")
        return self._credentials

    def _day_for(self, date: str, credentials: Credentials) -> _Day:
        day = self._day
        if day is None or day.date != date or day.credentials is not credentials:
            scope = credential_scope(date, self._region, self._service)
            key = signing_key(credentials.secret_access_key, date, self._region, self._service)
            prefix = f"{ALGORITHM} Credential={credentials.access_key_id}/{scope}, "
            # One assignment: a concurrent reader sees the old day or the new, never a mix.
            day = self._day = _Day(credentials, key, date, scope, prefix)
        return day

    def sign(
        self,
        *,
        method: str,
        host: str,
        path: str = "/",
        query: Query,
        body: bytes = b"",
        content_type: str | None = None,
        now: datetime,
        credentials: Credentials | None = None,
    ) -> SignedRequest:
        """Sign one request to ``host`` (sent and signed as ``Host``).

        Args:
            method: The HTTP method (upper case).
            host: The ``Host`` header value (``name`` or ``name:port``).
            path: The request path.
            query: The query parameters; the result's ``query_string`` is what to send.
            body: The raw body.
            content_type: The body's type; a non-GET request without one gets the SDK default.
            now: The signing time (aware datetime).
            credentials: Sign with these instead of the signer's own (what the client does
                with credentials from a provider, asked per attempt).
        """
        headers = {"Host": host}
        if content_type is not None:
            headers["Content-Type"] = content_type
        return self._sign(method, path, query, headers, body, now, credentials or self._own())

    def sign_headers(
        self,
        *,
        method: str,
        path: str = "/",
        query: Query,
        headers: Mapping[str, str],
        body: bytes | str = b"",
        now: datetime,
    ) -> SignedRequest:
        """Sign a request exactly as ``volcengine.auth.SignerV4.sign`` does.

        Args:
            method: The HTTP method, used as given (upper case expected).
            path: The request path ("" means "/").
            query: The query parameters (see :func:`canonical_query`).
            headers: The headers as the SDK would hold them before signing, ``Host``
                included. Which are signed follows the module's rule (exact spelling).
            body: The body; ``str`` is hashed as UTF-8.
            now: The signing time (aware datetime).
        """
        return self._sign(method, path, query, dict(headers), body, now, self._own())

    def _sign(
        self,
        method: str,
        path: str,
        query: Query,
        out: dict[str, str],
        body: bytes | str,
        now: datetime,
        credentials: Credentials,
    ) -> SignedRequest:
        # ``out`` is ours to fill: the headers to send, in the SDK's insertion order (so
        # that names colliding when lower-cased resolve alike).
        x_date = format_x_date(now)
        day = self._day_for(x_date[:8], credentials)
        content_sha256 = _body_sha256(body)
        if method != "GET" and "Content-Type" not in out:
            out["Content-Type"] = DEFAULT_CONTENT_TYPE
        out["X-Date"] = x_date
        token = credentials.session_token
        if token:
            out["X-Security-Token"] = token
        out["X-Content-Sha256"] = content_sha256
        plan = _plan(tuple(out))
        values = plan.values(out)
        at = plan.host_at
        if at >= 0 and ":" in values[at]:
            values = (*values[:at], _host_for_signing(values[at]), *values[at + 1 :])
        query_string = canonical_query(query)
        canonical = _canonical(method, path, query_string, plan.template, values, content_sha256)
        to_sign = string_to_sign(x_date, day.scope, canonical)
        sig = _hmac_hex(day.pads, to_sign)
        authorization = f"{day.auth_prefix}SignedHeaders={plan.signed_headers}, Signature={sig}"
        out["Authorization"] = authorization
        return SignedRequest(
            query_string=query_string,
            headers=out,
            x_date=x_date,
            content_sha256=content_sha256,
            signed_headers=plan.signed_headers,
            canonical_request=canonical,
            string_to_sign=to_sign,
            signature=sig,
            authorization=authorization,
        )
