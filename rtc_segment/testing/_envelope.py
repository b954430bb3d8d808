"""What crosses the emulator's boundary: the request, the answer, and the answer's format.

:class:`EmulatorRequest` and :class:`Answer` are independent of how a request is delivered;
a delivery (the in-process transport, the loopback server) hands each request to a
:class:`RequestHandler` -- the emulator -- and delivers the answer it gets back.

Every answer the emulator gives -- success, service error, gateway error or injected
fault -- is built here, so they all share the real envelope::

    {"ResponseMetadata": {"RequestId": ..., "Action": ..., "Version": ...,
                          "Service": "rtc", "Region": "cn-north-1",
                          "Error": {"CodeN": 100010, "Code": "...", "Message": "..."}},
     "Result": ...}

``Error`` appears only on failure and ``Result`` only on success.

Error catalogue: the gateway's public codes
(https://www.volcengine.com/docs/6369/68677) and RTC's own
(https://www.volcengine.com/docs/6348/70426). ``CodeN`` is sent only for gateway errors
whose number is documented; where the number is *unverified* we say so:

=============================================  ====  ======  ===================================
Code                                           HTTP  CodeN   note
=============================================  ====  ======  ===================================
MissingParameter                               400   100002
MissingAuthenticationToken                     401   100003
MissingRequestInfo                             400   100004  X-Date missing or malformed
InvalidTimestamp                               400   100006  400 per the generic table (VOD: 403)
InvalidActionOrVersion                         404   100008
InvalidAccessKey                               401   100009
SignatureDoesNotMatch                          401   100010
InternalError                                  500   100014
InternalServiceTimeout                         504   100016
FlowLimitExceeded                              429   100018  CodeN unverified (third-party code)
InvalidAuthorization                           400   --      status and CodeN unverified; chosen
InvalidSecurityToken                           401   --      not documented; closest wording
MethodNotAllowed                               405   --      CodeN unverified
InternalServiceError                           502   --      CodeN unverified
ServiceUnavailableTemp                         503   --      CodeN unverified
InvalidParameter[.*] (RTC, not gateway)        400   --      RTC status unverified; 400 chosen
InvalidParameter.ErrorActiveTaskNotFound       400   --      closest documented not-found code
=============================================  ====  ======  ===================================
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

import attrs

__all__ = [
    "Answer",
    "EmulatorRequest",
    "Envelope",
    "RequestHandler",
    "ServiceFailure",
    "error_body",
    "success_body",
]

JSON_HEADERS: tuple[tuple[str, str], ...] = (("content-type", "application/json; charset=utf-8"),)


@attrs.frozen
class ServiceFailure(Exception):
    """Raised inside the emulator to answer with an error envelope."""

    status: int
    code: str
    message: str
    code_n: int | None = None
    headers: tuple[tuple[str, str], ...] = ()


class _FailureFactory(Protocol):
    def __call__(
        self, message: str, *, headers: tuple[tuple[str, str], ...] = ()
    ) -> ServiceFailure: ...


def _gateway(status: int, code: str, code_n: int | None) -> _FailureFactory:
    def make(message: str, *, headers: tuple[tuple[str, str], ...] = ()) -> ServiceFailure:
        return ServiceFailure(status, code, message, code_n, headers)

    return make


missing_parameter = _gateway(400, "MissingParameter", 100002)
missing_authentication_token = _gateway(401, "MissingAuthenticationToken", 100003)
missing_request_info = _gateway(400, "MissingRequestInfo", 100004)
invalid_timestamp = _gateway(400, "InvalidTimestamp", 100006)
invalid_action_or_version = _gateway(404, "InvalidActionOrVersion", 100008)
invalid_access_key = _gateway(401, "InvalidAccessKey", 100009)
signature_does_not_match = _gateway(401, "SignatureDoesNotMatch", 100010)
internal_error = _gateway(500, "InternalError", 100014)
internal_service_timeout = _gateway(504, "InternalServiceTimeout", 100016)
flow_limit_exceeded = _gateway(429, "FlowLimitExceeded", 100018)
invalid_authorization = _gateway(400, "InvalidAuthorization", None)
invalid_security_token = _gateway(401, "InvalidSecurityToken", None)
method_not_allowed = _gateway(405, "MethodNotAllowed", None)
internal_service_error = _gateway(502, "InternalServiceError", None)
service_unavailable = _gateway(503, "ServiceUnavailableTemp", None)


def invalid_parameter(message: str, code: str = "InvalidParameter") -> ServiceFailure:
    """An RTC-level parameter error (no ``CodeN``: it is not a gateway error)."""
    return ServiceFailure(400, code, message)


@attrs.frozen
class EmulatorRequest:
    """A request as the emulator sees it, independent of how it was delivered.

    Attributes:
        method: HTTP method (upper case).
        path: The decoded path (always ``/`` for the real API).
        query: The raw (percent-encoded) query string, without ``?``.
        headers: Header values by lower-case name.
        body: The raw body.
    """

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes = b""


@attrs.frozen
class Answer:
    """What the emulator answers to one request, independent of how it is delivered.

    Attributes:
        status: HTTP status.
        headers: Response headers (lower-case names).
        body: The exact bytes to send.
        delay: Seconds to wait (on the emulator's clock) before answering.
        drop: Close the connection instead of completing the answer.
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    delay: float = 0.0
    drop: bool = False


class RequestHandler(Protocol):
    """What a delivery hands every request to: an :class:`~rtc_segment.testing.Emulator`,
    or any object with this one method (a test double, a wrapper that logs).

    The deliveries depend on this protocol only, never on the emulator itself.
    """

    async def handle(self, request: EmulatorRequest) -> Answer:
        """Answer one request; the delivery then waits ``delay`` or drops the connection."""
        ...


def _metadata(
    request_id: str, action: str, version: str, service: str, region: str
) -> dict[str, Any]:
    return {
        "RequestId": request_id,
        "Action": action,
        "Version": version,
        "Service": service,
        "Region": region,
    }


def success_body(
    *, request_id: str, action: str, version: str, service: str, region: str, result: Any
) -> bytes:
    """The body of a successful answer."""
    envelope = {
        "ResponseMetadata": _metadata(request_id, action, version, service, region),
        "Result": result,
    }
    return json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()


def error_body(
    failure: ServiceFailure,
    *,
    request_id: str,
    action: str,
    version: str,
    service: str,
    region: str,
) -> bytes:
    """The body of an error answer."""
    error: dict[str, Any] = {}
    if failure.code_n is not None:
        error["CodeN"] = failure.code_n
    error["Code"] = failure.code
    error["Message"] = failure.message
    metadata = _metadata(request_id, action, version, service, region)
    metadata["Error"] = error
    return json.dumps(
        {"ResponseMetadata": metadata}, ensure_ascii=False, separators=(",", ":")
    ).encode()


@attrs.frozen
class Envelope:
    """The ``ResponseMetadata`` every answer to one request repeats, and the answers built on it.

    Attributes:
        request_id: The ``RequestId`` of the answer.
        action: The request's ``Action`` as given (``""`` when absent).
        version: The request's ``Version`` as given (``""`` when absent).
        service: The service name the emulator reports.
        region: The region the emulator reports.
    """

    request_id: str
    action: str
    version: str
    service: str
    region: str

    def success(self, result: Any) -> Answer:
        """HTTP 200 carrying ``result``."""
        body = success_body(
            request_id=self.request_id,
            action=self.action,
            version=self.version,
            service=self.service,
            region=self.region,
            result=result,
        )
        return Answer(200, JSON_HEADERS, body)

    def failure(self, failure: ServiceFailure) -> Answer:
        """The error answer for ``failure``: its status, its headers, the error envelope."""
        body = error_body(
            failure,
            request_id=self.request_id,
            action=self.action,
            version=self.version,
            service=self.service,
            region=self.region,
        )
        return Answer(failure.status, JSON_HEADERS + failure.headers, body)
