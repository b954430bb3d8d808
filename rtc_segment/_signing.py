"""The Volcengine "V4" request signature (HMAC-SHA256), written to match the official SDK.

Pure functions, no I/O, the clock is always passed in. Every rule — including the quirks
(case-sensitive choice of signed headers, values used verbatim, ``:80``/``:443`` stripped from
the signed host, repeated query keys kept in caller order) — follows ``SignerV4.sign`` of the
``volcengine`` Python SDK 1.0.229 byte for byte; ``tests/test_signing.py`` checks the shared
vectors and compares against the SDK itself.

:func:`sign` is the general form (any headers, as the SDK would have them). :class:`Signer` is
the client's fast path: fixed credentials, region and service, signing key cached per day,
constant strings built once. The server-side helpers (:func:`parse_authorization`,
:func:`canonical_request_for`) let the emulator verify what it receives.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from functools import lru_cache
from operator import itemgetter
from typing import TypeAlias

import attrs

from ._credentials import Credentials

__all__ = [
    "ALGORITHM",
    "DEFAULT_CONTENT_TYPE",
    "EMPTY_BODY_SHA256",
    "ParsedAuthorization",
    "SignedRequest",
    "Signer",
    "canonical_query",
    "canonical_request_for",
    "format_x_date",
    "parse_authorization",
    "quote",
    "sign",
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

# Header dict keys the SDK signs besides every key starting with "X-" (exact spelling).
_SIGNED_NAMES = frozenset({"Content-Type", "Content-Md5", "Host"})
_REDACTED = "***"
_first = itemgetter(0)


@lru_cache(maxsize=4096)
def quote(value: str) -> str:
    """Percent-encode ``value`` as the canonical query does.

    UTF-8, upper-case hex, only ``A-Z a-z 0-9 - _ . ~`` left literal (space is ``%20``).
    Cached: the same keys and ids are encoded again on every request.
    """
    return urllib.parse.quote(value, safe="-_.~")


def _quote_path(path: str) -> str:
    # Util.norm_uri: default safe set ("/" kept); the replaces are no-ops kept for fidelity.
    return urllib.parse.quote(path).replace("%2F", "/").replace("+", "%20")


def _query_pairs(query: Query) -> list[tuple[str, str]]:
    if not isinstance(query, Mapping):
        return list(query)
    pairs: list[tuple[str, str]] = []
    for key, value in query.items():
        if isinstance(value, str):
            pairs.append((key, value))
        else:
            pairs.extend([(key, item) for item in value])
    return pairs


def canonical_query(query: Query) -> str:
    """The canonical query string (also the exact query the client sends).

    Sorted by the raw (unescaped) key in code-point order; the sort is stable, so values of a
    repeated key keep the caller's order. Keys and values go through :func:`quote`; pairs are
    ``key=value`` (``key=`` for an empty value) joined by ``&``.
    """
    pairs = _query_pairs(query)
    pairs.sort(key=_first)
    return "&".join([f"{quote(key)}={quote(value)}" for key, value in pairs])


def format_x_date(now: datetime) -> str:
    """``X-Date`` for ``now`` (an aware datetime): ``YYYYMMDDTHHMMSSZ`` in UTC.

    Raises:
        ValueError: ``now`` is naive (its instant would be a guess).
    """
    if now.tzinfo is timezone.utc:
        utc = now  # the common case (datetime.now(timezone.utc)): skip the conversion
    elif now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    else:
        utc = now.astimezone(timezone.utc)
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


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.digest(key, message.encode(), "sha256")


@lru_cache(maxsize=64)
def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """The derived key ``kSigning`` for one day, region and service (cached).

    ``kDate = HMAC(secret, date)`` — the raw secret, no prefix — then region, service and the
    literal ``"request"``.
    """
    key = _hmac(secret.encode(), date)
    for part in (region, service, "request"):
        key = _hmac(key, part)
    return key


def string_to_sign(x_date: str, credential_scope: str, canonical_request: str) -> str:
    """``HMAC-SHA256\\n<X-Date>\\n<scope>\\n<hex sha256 of the canonical request>``."""
    digest = hashlib.sha256(canonical_request.encode()).hexdigest()
    return f"{ALGORITHM}\n{x_date}\n{credential_scope}\n{digest}"


def signature(key: bytes, string_to_sign: str) -> str:
    """Lower-case hex ``HMAC-SHA256(key, string_to_sign)``."""
    return _hmac(key, string_to_sign).hex()


def _credential_scope(date: str, region: str, service: str) -> str:
    return f"{date}/{region}/{service}/request"


def _authorization(access_key_id: str, scope: str, signed_headers: str, signature: str) -> str:
    return (
        f"{ALGORITHM} Credential={access_key_id}/{scope}, "
        f"SignedHeaders={signed_headers}, Signature={signature}"
    )


def _host_for_signing(value: str) -> str:
    # The SDK splits on ":" and drops the port when it is 80 or 443, whatever the scheme.
    # (IPv6 literals are not handled — neither by the SDK.)
    if ":" in value:
        parts = value.split(":")
        if parts[1] in ("80", "443"):
            return parts[0]
    return value


def _redact_headers(headers: Mapping[str, str]) -> str:
    shown = {
        name: (_REDACTED if name.lower() == "x-security-token" else value)
        for name, value in headers.items()
    }
    return repr(shown)


@attrs.frozen
class SignedRequest:
    """The result of signing: what to send and every intermediate (for tests and debugging).

    ``repr`` never shows the session token (in ``headers`` and ``canonical_request``).
    """

    #: The canonical query string; the client puts it verbatim after ``?``.
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


def _body_sha256(body: bytes | str) -> str:
    if not body:
        return EMPTY_BODY_SHA256
    data = body.encode() if isinstance(body, str) else body
    return hashlib.sha256(data).hexdigest()


def sign(
    *,
    method: str,
    path: str,
    query: Query,
    headers: Mapping[str, str],
    body: bytes | str,
    credentials: Credentials,
    region: str,
    service: str,
    now: datetime,
) -> SignedRequest:
    """Sign a request exactly as ``volcengine.auth.SignerV4.sign`` does.

    Args:
        method: The HTTP method, used as given (upper case expected).
        path: The request path ("" means "/").
        query: The query parameters (see :func:`canonical_query`).
        headers: The headers as the SDK would hold them before signing — the caller includes
            ``Host`` (the SDK's service layer does). A header is signed iff its key is exactly
            ``Content-Type``, ``Content-Md5`` or ``Host`` or starts with ``X-``; values are
            signed verbatim.
        body: The body; ``str`` is hashed as UTF-8.
        credentials: The key pair (and session token, sent as ``X-Security-Token``).
        region: The signing region, e.g. ``cn-north-1``.
        service: The signing service, e.g. ``rtc``.
        now: The signing time (aware datetime).
    """
    x_date = format_x_date(now)
    out = dict(headers)
    # Same insertion order as the SDK, so that colliding lower-cased names resolve alike.
    if method != "GET" and "Content-Type" not in out:
        out["Content-Type"] = DEFAULT_CONTENT_TYPE
    out["X-Date"] = x_date
    if credentials.session_token:
        out["X-Security-Token"] = credentials.session_token
    content_sha256 = _body_sha256(body)
    out["X-Content-Sha256"] = content_sha256

    signed: dict[str, str] = {}
    for name, value in out.items():
        if name in _SIGNED_NAMES or name.startswith("X-"):
            signed[name.lower()] = value
    if "host" in signed:
        signed["host"] = _host_for_signing(signed["host"])
    names = sorted(signed)
    signed_headers = ";".join(names)
    header_block = "".join([f"{name}:{signed[name]}\n" for name in names])
    query_string = canonical_query(query)
    canonical_request = "\n".join(
        [
            method,
            _quote_path(path or "/"),
            query_string,
            header_block,
            signed_headers,
            content_sha256,
        ]
    )
    date = x_date[:8]
    scope = _credential_scope(date, region, service)
    to_sign = string_to_sign(x_date, scope, canonical_request)
    sig = signature(signing_key(credentials.secret_access_key, date, region, service), to_sign)
    authorization = _authorization(credentials.access_key_id, scope, signed_headers, sig)
    out["Authorization"] = authorization
    return SignedRequest(
        query_string=query_string,
        headers=out,
        x_date=x_date,
        content_sha256=content_sha256,
        signed_headers=signed_headers,
        canonical_request=canonical_request,
        string_to_sign=to_sign,
        signature=sig,
        authorization=authorization,
    )


class _DayKey:
    """The signing key of one day, as precomputed HMAC pads (saves two hash setups per call)."""

    __slots__ = ("auth_prefix", "date", "inner", "outer", "scope_line")

    def __init__(self, key: bytes, date: str, scope: str, auth_prefix: str) -> None:
        block = key.ljust(64, b"\0")  # sha256 block size; the derived key is 32 bytes
        self.inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self.outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
        self.date = date
        self.scope_line = f"\n{scope}\n"
        self.auth_prefix = auth_prefix

    def signature(self, message: str) -> str:
        inner = self.inner.copy()
        inner.update(message.encode())
        outer = self.outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()


class Signer:
    """The client's fast signer: fixed credentials, region and service.

    Always sends and signs ``Host``; for the same inputs it produces the same bytes as
    :func:`sign` with ``headers={"Host": host}`` (plus ``Content-Type`` when given). The
    signing key is derived once per UTC day and the
    constant parts of the canonical request and of ``Authorization`` are built once.
    """

    __slots__ = (
        "_credentials",
        "_day",
        "_region",
        "_service",
        "_token_line",
    )

    def __init__(self, credentials: Credentials, *, region: str, service: str = "rtc") -> None:
        if not isinstance(credentials, Credentials):
            raise TypeError(f"credentials must be Credentials, not {type(credentials).__name__}")
        self._credentials = credentials
        self._region = region
        self._service = service
        token = credentials.session_token
        self._token_line = f"x-security-token:{token}\n" if token else ""
        self._day: _DayKey | None = None

    def __repr__(self) -> str:
        return f"Signer({self._credentials!r}, region={self._region!r}, service={self._service!r})"

    @property
    def credentials(self) -> Credentials:
        """The credentials this signer signs with."""
        return self._credentials

    def _day_key(self, date: str) -> _DayKey:
        day = self._day
        if day is None or day.date != date:
            scope = _credential_scope(date, self._region, self._service)
            key = signing_key(
                self._credentials.secret_access_key, date, self._region, self._service
            )
            prefix = f"{ALGORITHM} Credential={self._credentials.access_key_id}/{scope}, "
            day = self._day = _DayKey(key, date, scope, prefix)
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
    ) -> SignedRequest:
        """Sign one request to ``host``; see :func:`sign` for the rules.

        Args:
            method: The HTTP method (upper case).
            host: The ``Host`` header value (``name`` or ``name:port``).
            path: The request path.
            query: The query parameters; the result's ``query_string`` is what to send.
            body: The raw body.
            content_type: The body's type; a non-GET request without one gets the SDK default.
            now: The signing time (aware datetime).
        """
        x_date = format_x_date(now)
        day = self._day_key(x_date[:8])
        content_sha256 = _body_sha256(body) if body else EMPTY_BODY_SHA256
        headers = {"Host": host}
        if content_type is None and method != "GET":
            content_type = DEFAULT_CONTENT_TYPE
        if content_type is not None:
            headers["Content-Type"] = content_type
            ct_line = f"content-type:{content_type}\n"
            names = "content-type;host;x-content-sha256;x-date"
        else:
            ct_line = ""
            names = "host;x-content-sha256;x-date"
        headers["X-Date"] = x_date
        token_line = self._token_line
        if token_line:
            headers["X-Security-Token"] = self._credentials.session_token  # type: ignore[assignment]
            names += ";x-security-token"
        headers["X-Content-Sha256"] = content_sha256
        query_string = canonical_query(query)
        canonical_request = (
            f"{method}\n{_quote_path(path or '/') if path != '/' else '/'}\n{query_string}\n"
            f"{ct_line}host:{_host_for_signing(host)}\nx-content-sha256:{content_sha256}\n"
            f"x-date:{x_date}\n{token_line}\n{names}\n{content_sha256}"
        )
        to_sign = (
            f"{ALGORITHM}\n{x_date}{day.scope_line}"
            f"{hashlib.sha256(canonical_request.encode()).hexdigest()}"
        )
        sig = day.signature(to_sign)
        authorization = f"{day.auth_prefix}SignedHeaders={names}, Signature={sig}"
        headers["Authorization"] = authorization
        return SignedRequest(
            query_string=query_string,
            headers=headers,
            x_date=x_date,
            content_sha256=content_sha256,
            signed_headers=names,
            canonical_request=canonical_request,
            string_to_sign=to_sign,
            signature=sig,
            authorization=authorization,
        )


@attrs.frozen
class ParsedAuthorization:
    """The parts of an ``Authorization: HMAC-SHA256 Credential=…`` header."""

    access_key_id: str
    #: ``YYYYMMDD`` from the credential scope.
    date: str
    region: str
    service: str
    #: The scope's last element; ``"request"`` for a valid V4 signature.
    terminator: str
    signed_headers: tuple[str, ...]
    signature: str

    @property
    def credential_scope(self) -> str:
        """``date/region/service/terminator``, as it goes into the string to sign."""
        return f"{self.date}/{self.region}/{self.service}/{self.terminator}"


_DATE_RE = re.compile(r"[0-9]{8}")
_SIGNATURE_RE = re.compile(r"[0-9a-f]{64}")


def parse_authorization(value: str) -> ParsedAuthorization:
    """Parse an ``Authorization`` header value.

    Raises:
        ValueError: The value is malformed; the message says which part.
    """
    algorithm, _, rest = value.partition(" ")
    if algorithm != ALGORITHM:
        raise ValueError(f"Authorization: algorithm must be {ALGORITHM!r}")
    fields: dict[str, str] = {}
    for component in rest.split(","):
        name, sep, field_value = component.strip().partition("=")
        if not sep:
            raise ValueError("Authorization: each component must be Name=value")
        if name in fields:
            raise ValueError(f"Authorization: {name} appears more than once")
        fields[name] = field_value
    for required in ("Credential", "SignedHeaders", "Signature"):
        if required not in fields:
            raise ValueError(f"Authorization: {required} is missing")
    unknown = sorted(set(fields) - {"Credential", "SignedHeaders", "Signature"})
    if unknown:
        raise ValueError(f"Authorization: unexpected component {unknown[0]!r}")

    scope = fields["Credential"].split("/")
    if len(scope) != 5 or not all(scope):
        raise ValueError(
            "Authorization: Credential must be AccessKeyId/YYYYMMDD/region/service/request"
        )
    access_key_id, date, region, service, terminator = scope
    if not _DATE_RE.fullmatch(date):
        raise ValueError("Authorization: Credential date must be YYYYMMDD")
    signed_headers = tuple(fields["SignedHeaders"].split(";"))
    if not all(signed_headers):
        raise ValueError("Authorization: SignedHeaders must be non-empty names separated by ';'")
    if not _SIGNATURE_RE.fullmatch(fields["Signature"]):
        raise ValueError("Authorization: Signature must be 64 lower-case hex digits")
    return ParsedAuthorization(
        access_key_id=access_key_id,
        date=date,
        region=region,
        service=service,
        terminator=terminator,
        signed_headers=signed_headers,
        signature=fields["Signature"],
    )


def canonical_request_for(
    *,
    method: str,
    path: str,
    query_pairs: Iterable[tuple[str, str]],
    signed_headers: Sequence[str],
    header_lookup: Callable[[str], str | None],
    content_sha256: str,
) -> str:
    """The canonical request a server recomputes from what it received.

    Args:
        method: The request method.
        path: The decoded request path.
        query_pairs: The decoded query parameters in the order received.
        signed_headers: The names from ``SignedHeaders``, in the declared order.
        header_lookup: Returns a received header's value by name (``None`` if absent).
        content_sha256: The body hash to use (normally the received ``X-Content-Sha256``).

    Raises:
        ValueError: A signed header is absent from the request.
    """
    lines = []
    for name in signed_headers:
        value = header_lookup(name)
        if value is None:
            raise ValueError(f"signed header {name!r} is missing from the request")
        if name == "host":
            value = _host_for_signing(value)
        lines.append(f"{name}:{value}\n")
    return "\n".join(
        [
            method,
            _quote_path(path or "/"),
            canonical_query(query_pairs),
            "".join(lines),
            ";".join(signed_headers),
            content_sha256,
        ]
    )
