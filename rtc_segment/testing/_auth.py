"""Server-side verification of the V4 signature, in the order a gateway checks it.

1. no ``Authorization``                      -> MissingAuthenticationToken (401)
2. ``Authorization`` malformed               -> InvalidAuthorization (400)
3. access key id unknown                     -> InvalidAccessKey (401)
4. ``X-Date`` missing or malformed           -> MissingRequestInfo (400)
5. ``X-Date`` more than 15 minutes off       -> InvalidTimestamp (400)
6. session token missing/unexpected/wrong,
   or the temporary key has expired          -> InvalidSecurityToken (401)
7. credential scope, signed-header set,
   ``X-Content-Sha256`` vs body, signature  -> SignatureDoesNotMatch (401)

A ``SignatureDoesNotMatch`` message says *which* part differs. For a plain signature
mismatch the server cannot tell a wrong secret from a different canonical request, so it
says so and shows its own canonical request (which holds no secret; a session token in
it is masked) and that request's SHA-256, for the caller to diff against theirs.
Nothing here ever formats a secret key or a session token.

The server's half of the signature lives here (parsing ``Authorization``, rebuilding the
canonical request from what arrived); the canonical request itself, the string to sign and
the key come from ``rtc_segment._signing``, the same code the client signs with.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

import attrs

from .._credentials import REDACTED, Credentials
from .._signing import (
    ALGORITHM,
    canonical_query,
    canonical_request,
    credential_scope,
    format_x_date,
    parse_x_date,
    signature,
    signing_key,
    string_to_sign,
)
from . import _envelope as errors

__all__ = [
    "AccessKey",
    "ParsedAuthorization",
    "RequestView",
    "authenticate",
    "canonical_request_for",
    "parse_authorization",
]

#: ``X-Date`` may differ from the emulator's clock by this much (X-Expires default, 900 s).
MAX_SKEW_SECONDS = 900.0
#: Headers that must be signed whenever they are sent.
_MUST_SIGN = ("host", "x-date", "x-content-sha256", "x-security-token")


@attrs.frozen
class AccessKey:
    """An access key the emulator accepts, and the account whose quota it uses."""

    credentials: Credentials
    account: str
    #: When temporary credentials (issued by the emulator's STS) stop working.
    expires_at: datetime | None = None


@attrs.frozen
class RequestView:
    """What the verifier needs from a request, whatever delivered it."""

    method: str
    path: str
    query_pairs: Sequence[tuple[str, str]]
    header: Callable[[str], str | None]
    body: bytes


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
    headers = []
    for name in signed_headers:
        value = header_lookup(name)
        if value is None:
            raise ValueError(f"signed header {name!r} is missing from the request")
        headers.append((name, value))
    return canonical_request(method, path, canonical_query(query_pairs), headers, content_sha256)


def _describe_skew(seconds: float) -> str:
    direction = "ahead of" if seconds > 0 else "behind"
    return f"{abs(seconds):.0f} s {direction}"


def authenticate(
    request: RequestView,
    *,
    lookup: Callable[[str], AccessKey | None],
    now: datetime,
    region: str,
    service: str,
    max_skew: float = MAX_SKEW_SECONDS,
) -> AccessKey:
    """Verify the request's signature; return the access key or raise ``ServiceFailure``."""
    header = request.header
    authorization = header("authorization")
    if not authorization:
        raise errors.missing_authentication_token(
            "The request has no Authorization header; sign it with your access key"
        )
    try:
        parsed = parse_authorization(authorization)
    except ValueError as exc:
        raise errors.invalid_authorization(
            f"The Authorization header is malformed: {exc}"
        ) from None
    key = lookup(parsed.access_key_id)
    if key is None:
        raise errors.invalid_access_key(
            f"The access key id {parsed.access_key_id!r} does not exist or is disabled"
        )

    x_date = header("x-date")
    if not x_date:
        raise errors.missing_request_info("The X-Date header is missing")
    signed_at = parse_x_date(x_date)
    if signed_at is None:
        raise errors.missing_request_info(
            f"The X-Date header {x_date[:40]!r} is not in the format YYYYMMDDTHHMMSSZ"
        )
    skew = (signed_at - now).total_seconds()
    if abs(skew) > max_skew:
        raise errors.invalid_timestamp(
            f"The request's X-Date {x_date} is {_describe_skew(skew)} the server's time "
            f"{format_x_date(now)}; at most {max_skew:.0f} s of difference is accepted"
        )

    token = header("x-security-token")
    expected_token = key.credentials.session_token
    if expected_token is None and token is not None:
        raise errors.invalid_security_token(
            f"The request carries an X-Security-Token, but access key {parsed.access_key_id!r} "
            "is not a temporary (STS) key"
        )
    if expected_token is not None:
        if token is None:
            raise errors.invalid_security_token(
                f"Access key {parsed.access_key_id!r} is temporary: the request must carry its "
                "session token in X-Security-Token"
            )
        if not hmac.compare_digest(token.encode(), expected_token.encode()):
            raise errors.invalid_security_token(
                f"The X-Security-Token does not match the session token of access key "
                f"{parsed.access_key_id!r}"
            )
    if key.expires_at is not None and now >= key.expires_at:
        raise errors.invalid_security_token(
            f"The session token of temporary access key {parsed.access_key_id!r} has expired "
            f"(at {key.expires_at.isoformat(timespec='seconds')}); get new credentials"
        )

    date = x_date[:8]
    expected_scope = credential_scope(date, region, service)
    if parsed.credential_scope != expected_scope:
        parts = []
        for what, theirs, ours in (
            ("date (must be the date of X-Date)", parsed.date, date),
            ("region", parsed.region, region),
            ("service", parsed.service, service),
            ("terminator", parsed.terminator, "request"),
        ):
            if theirs != ours:
                parts.append(f"{what} is {theirs!r}, expected {ours!r}")
        raise errors.signature_does_not_match(
            f"The credential scope differs: the request's is {parsed.credential_scope!r}, the "
            f"server's is {expected_scope!r} ({'; '.join(parts)})"
        )

    names = parsed.signed_headers
    unsigned = [name for name in _MUST_SIGN if name not in names and header(name) is not None]
    if unsigned:
        raise errors.signature_does_not_match(
            f"The signed headers differ: SignedHeaders={';'.join(names)} leaves out "
            f"{', '.join(unsigned)}, which must be signed when sent"
        )
    absent = [name for name in names if header(name) is None]
    if absent:
        raise errors.signature_does_not_match(
            f"The signed headers differ: SignedHeaders lists {', '.join(absent)}, which the "
            "request does not carry"
        )

    body_sha256 = hashlib.sha256(request.body).hexdigest()
    declared = header("x-content-sha256")
    if declared is not None and declared != body_sha256:
        raise errors.signature_does_not_match(
            f"X-Content-Sha256 differs from the body: the header says {declared[:64]!r}, the "
            f"{len(request.body)}-byte body hashes to {body_sha256!r}"
        )

    canonical = canonical_request_for(
        method=request.method,
        path=request.path,
        query_pairs=request.query_pairs,
        signed_headers=names,
        header_lookup=header,
        content_sha256=body_sha256,
    )
    to_sign = string_to_sign(x_date, expected_scope, canonical)
    secret = key.credentials.secret_access_key
    expected = signature(signing_key(secret, date, region, service), to_sign)
    if not hmac.compare_digest(expected, parsed.signature):
        shown = canonical
        if token is not None:
            shown = shown.replace(f"x-security-token:{token}\n", f"x-security-token:{REDACTED}\n")
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        raise errors.signature_does_not_match(
            "The signature differs although the credential scope "
            f"({expected_scope}) and the signed headers ({';'.join(names)}) agree: either the "
            f"secret access key of {parsed.access_key_id!r} is wrong, or your canonical request "
            f"differs from the server's, whose SHA-256 is {digest} and which reads:\n{shown}"
        )
    return key
