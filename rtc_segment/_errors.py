"""The exception hierarchy, and the mapping from a service error to its class.

Every error says what happened, which request it was (action, task key, request id,
attempts) and what to do next (``hint``). Nothing here ever formats a credential.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from ._models import SegmentTask, TaskKey

__all__ = [
    "ApiError",
    "AuthenticationError",
    "ClientClosedError",
    "ClientTimeoutError",
    "CredentialsError",
    "CredentialsUnavailableError",
    "DeadlineExceededError",
    "InvalidParameterError",
    "RateLimiterUnavailableError",
    "ResponseFormatError",
    "RtcSegmentError",
    "ServerError",
    "TaskNotFoundError",
    "ThrottledError",
    "TransportError",
    "WaitTimeoutError",
    "error_from_service",
]


class RtcSegmentError(Exception):
    """Base class of every error raised by :mod:`rtc_segment`.

    Attributes:
        action: The API action of the failed request (``"GetSegmentTask"``), if any.
        key: The task the request was about, if any.
        request_id: ``ResponseMetadata.RequestId`` of the failing answer, if the service sent one.
        http_status: The HTTP status of the failing answer, if there was one.
        attempts: How many attempts were made before giving up.
        retryable: Whether the client treats this failure as transient (and retries it).
        ambiguous: True when an attempt of the failed call may nevertheless have reached the
            service (a timeout or dropped connection after sending, or a 5xx answer). Matters
            for actions that change state (StartSegment, StopSegment).
    """

    retryable: ClassVar[bool] = False
    #: What the caller should do next; appended to the message.
    hint: ClassVar[str] = ""

    def __init__(
        self,
        message: str,
        *,
        action: str | None = None,
        key: TaskKey | None = None,
        request_id: str | None = None,
        http_status: int | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.action = action
        self.key = key
        self.request_id = request_id
        self.http_status = http_status
        self.attempts = attempts
        self.ambiguous = False

    def _context(self) -> str:
        parts: list[str] = []
        if self.action:
            parts.append(self.action)
        if self.key is not None:
            parts.append(
                f"app_id={self.key.app_id!r} room_id={self.key.room_id!r} "
                f"task_id={self.key.task_id!r}"
            )
        if self.http_status is not None:
            parts.append(f"HTTP {self.http_status}")
        if self.request_id:
            parts.append(f"request_id={self.request_id}")
        if self.attempts > 1:
            parts.append(f"after {self.attempts} attempts")
        return ", ".join(parts)

    def _hint(self) -> str:
        return self.hint

    def __str__(self) -> str:
        text = self.message
        context = self._context()
        if context:
            text = f"{text} [{context}]"
        hint = self._hint()
        if hint:
            text = f"{text}. {hint}"
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class CredentialsError(RtcSegmentError, ValueError):
    """No usable credentials were given or found."""

    hint = (
        "Pass Credentials(...), set VOLC_ACCESSKEY and VOLC_SECRETKEY, "
        "or write them to ~/.volc/credentials"
    )


class CredentialsUnavailableError(CredentialsError):
    """A credentials provider could not supply credentials.

    Raised when no provider of a chain is configured (the message lists every provider
    tried and why it gave none), or when fetching temporary credentials failed (STS or
    instance metadata unreachable or refusing). Never shows a secret, a session token or
    an OIDC token.
    """

    hint = (
        "Pass Credentials(...) or a provider, set VOLCENGINE_ACCESS_KEY and "
        "VOLCENGINE_SECRET_KEY (or VOLC_ACCESSKEY and VOLC_SECRETKEY), configure OIDC or a CLI "
        "profile, or run where an instance role is attached (see docs/credentials.md)"
    )


class ClientClosedError(RtcSegmentError, RuntimeError):
    """The client was used after :meth:`SegmentClient.aclose`."""

    hint = "Create a new SegmentClient, or keep the client open for as long as you use it"


class RateLimiterUnavailableError(RtcSegmentError):
    """The shared rate limiter could not be reached; nothing was sent.

    Called ``RateLimiterUnavailable`` before 0.2.0; that name still works, with a
    ``DeprecationWarning``.
    """

    retryable = False
    hint = (
        "Check the Redis server, or construct the limiter with a local fallback "
        "(fallback_fraction=...) to keep going at a reduced rate"
    )


class ApiError(RtcSegmentError):
    """The service (or its gateway) answered with an error.

    Attributes:
        code: The service's error code, e.g. ``"SignatureDoesNotMatch"``.
        code_n: The gateway's numeric code (``CodeN``), when present.
        service_message: The service's own message text.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "",
        code_n: int | None = None,
        service_message: str = "",
        action: str | None = None,
        key: TaskKey | None = None,
        request_id: str | None = None,
        http_status: int | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(
            message,
            action=action,
            key=key,
            request_id=request_id,
            http_status=http_status,
            attempts=attempts,
        )
        self.code = code
        self.code_n = code_n
        self.service_message = service_message


class AuthenticationError(ApiError):
    """Signature, access key, clock or permission problem. Never retried."""

    hint = "Check the access key id and secret (and session token), and the account's permissions"


class InvalidParameterError(ApiError):
    """The service rejected a parameter. Never retried."""

    hint = "Check the AppId, RoomId and TaskId values"


class TaskNotFoundError(InvalidParameterError):
    """No such task (or, for GetSegmentTask, it started more than 72 hours ago; for
    UpdateSegment and StopSegment, it has already ended). Never retried."""

    hint = (
        "Check the ids; only tasks started within the last 72 hours can be queried, and for "
        "auto-segment tasks the TaskId is the user's UserId"
    )

    def _hint(self) -> str:
        if self.action in ("UpdateSegment", "StopSegment"):
            return "Check the ids; the task may also have ended already"
        return self.hint


class ThrottledError(ApiError):
    """The request was over the QPS quota (HTTP 429 / ``FlowLimitExceeded*``). Retried.

    Attributes:
        retry_after: Seconds the service asked to wait, if it said.
    """

    retryable = True
    hint = (
        "Another client may share this account's quota: share one RedisRateLimiter "
        "between processes, or lower qps"
    )

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class ServerError(ApiError):
    """The service failed or did not answer in time (5xx, ``InternalError*``, timeout). Retried."""

    retryable = True
    hint = "This is usually transient; retry later, or raise max_retries or timeout"


class TransportError(RtcSegmentError):
    """The request could not be delivered (DNS, connect, TLS, dropped connection). Retried.

    ``ambiguous`` tells whether the request may nevertheless have reached the service.
    """

    retryable = True
    hint = "Check the endpoint and the network; the request may or may not have reached the service"


class ClientTimeoutError(TransportError):
    """An attempt ran out of the client's ``timeout`` (connecting, waiting for a free
    connection, sending, or waiting for the answer). Retried.

    ``ambiguous`` is true when the request had been sent, so it may have reached the service.
    """

    hint = (
        "The service or the network is slow; raise timeout (it bounds each attempt, "
        "connect to last byte) or max_retries"
    )


class ResponseFormatError(RtcSegmentError):
    """The answer could not be understood (not JSON, wrong shape, truncated, too large).

    Attributes:
        excerpt: The first bytes of the body, for diagnosis.
    """

    hint = "The endpoint may not be the Volcengine OpenAPI gateway, or a proxy altered the answer"

    def __init__(self, message: str, *, excerpt: str = "", **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.excerpt = excerpt

    def __str__(self) -> str:
        text = super().__str__()
        if self.excerpt:
            text = f"{text} Body starts: {self.excerpt!r}"
        return text


class DeadlineExceededError(RtcSegmentError, TimeoutError):
    """A call's ``deadline`` ran out before it finished. A :class:`TimeoutError`.

    No retry is started that could not finish within the deadline, so this is raised as
    soon as the budget cannot cover another attempt. ``ambiguous`` is true when an attempt
    was sent and may have reached the service.

    Attributes:
        deadline: The budget, in seconds.
        queued: Seconds spent waiting for the rate limiter (and a connection slot).
        in_attempts: Seconds spent sending and waiting for answers.
        backing_off: Seconds spent waiting between attempts.
        last_error: The error of the last attempt, if one failed.
    """

    hint: ClassVar[str] = (
        "Raise the deadline, lower the load on this account's quota, or pass deadline=None "
        "to wait as long as retries take"
    )

    def __init__(
        self,
        *,
        deadline: float,
        queued: float,
        in_attempts: float,
        backing_off: float,
        last_error: RtcSegmentError | None,
        action: str | None,
        key: TaskKey | None,
        attempts: int,
    ) -> None:
        spent = [
            f"{queued:.3g} s queued for the limiter",
            f"{in_attempts:.3g} s in {attempts} attempt{'s' if attempts != 1 else ''}",
            f"{backing_off:.3g} s backing off",
        ]
        last = f"; last attempt: {type(last_error).__name__}" if last_error else ""
        super().__init__(
            f"the {deadline:g} s deadline ran out ({', '.join(spent)}{last})",
            action=action,
            key=key,
            attempts=attempts,
        )
        self.deadline = deadline
        self.queued = queued
        self.in_attempts = in_attempts
        self.backing_off = backing_off
        self.last_error = last_error


class WaitTimeoutError(RtcSegmentError, TimeoutError):
    """``wait_for_segment_task`` ran out of time before the task ended or failed.

    A :class:`TimeoutError`, so ``except TimeoutError`` catches it.

    Attributes:
        key: The task waited for.
        timeout: The timeout that passed, in seconds.
        last_task: The last state fetched, or ``None`` if no poll succeeded.
        last_error: The error of the last poll, if it failed (transiently).
    """

    hint: ClassVar[str] = (
        "Call wait_for_segment_task again to keep waiting, or pass a larger timeout "
        "(timeout=None waits until the task ends)"
    )

    def __init__(
        self,
        key: TaskKey,
        *,
        timeout: float,
        last_task: SegmentTask | None,
        last_error: BaseException | None,
    ) -> None:
        if last_task is not None:
            seen = f"last status {last_task.status.name}"
        elif last_error is not None:
            seen = f"no state fetched; last poll failed with {type(last_error).__name__}"
        else:
            seen = "no state fetched yet"
        super().__init__(
            f"the task did not end within {timeout:g} s ({seen})",
            action="GetSegmentTask",
            key=key,
        )
        self.timeout = timeout
        self.last_task = last_task
        self.last_error = last_error


_AUTH_CODES = frozenset(
    {
        "MissingAuthenticationToken",
        "MissingRequestInfo",
        "MissingSignature",
        "InvalidTimestamp",
        "InvalidAccessKey",
        "InvalidClientTokenId",
        "InvalidAuthorization",
        "SignatureDoesNotMatch",
        "LackPolicy",
        "InvalidCredential",
        "InvalidSecurityToken",
    }
)
_SERVER_CODES = frozenset(
    {
        "InternalError",
        "InternalServiceTimeout",
        "ServiceUnavailableTemp",
        "FailToConnect",
        "InternalServiceError",
        "UndefinedError",
    }
)
_PARAMETER_CODES = frozenset({"MissingParameter", "InvalidActionOrVersion", "MethodNotAllowed"})

_CLOCK_HINT = (
    "The request's X-Date was rejected: check that this machine's clock is correct "
    "(it must be within 15 minutes of real UTC time)"
)


def error_class_for(http_status: int | None, code: str) -> type[ApiError]:
    """Choose the error class for an HTTP status and a service error code."""
    throttled = http_status == 429 or code.startswith(
        ("FlowLimitExceeded", "AccountFlowLimitExceeded")
    )
    # TaskNumberOverLimit is a quota on tasks, not on requests: waiting does not cure it.
    if throttled and code != "FlowLimitExceeded.TaskNumberOverLimit":
        return ThrottledError
    if code == "InvalidParameter.ErrorActiveTaskNotFound":
        return TaskNotFoundError
    if code in _AUTH_CODES or code.startswith("AccessDenied"):
        return AuthenticationError
    if code.startswith("InvalidParameter") or code in _PARAMETER_CODES:
        return InvalidParameterError
    if code.startswith("InternalError") or code in _SERVER_CODES:
        return ServerError
    if http_status is not None and (http_status >= 500):
        return ServerError
    if http_status in {401, 403}:
        return AuthenticationError
    return (
        InvalidParameterError if http_status is not None and 400 <= http_status < 500 else ApiError
    )


def error_from_service(
    *,
    http_status: int | None,
    code: str,
    code_n: int | None,
    service_message: str,
    action: str | None,
    key: TaskKey | None,
    request_id: str | None,
    retry_after: float | None = None,
) -> ApiError:
    """Build the typed error for an error answer of the service."""
    cls = error_class_for(http_status, code)
    message = f"{code or 'Error'}"
    if code_n is not None:
        message = f"{message} ({code_n})"
    if service_message:
        message = f"{message}: {service_message}"
    if code == "InvalidTimestamp":
        message = f"{message}. {_CLOCK_HINT}"
    kwargs: dict[str, object] = {
        "code": code,
        "code_n": code_n,
        "service_message": service_message,
        "action": action,
        "key": key,
        "request_id": request_id,
        "http_status": http_status,
    }
    if cls is ThrottledError:
        return ThrottledError(message, retry_after=retry_after, **kwargs)
    return cls(message, **kwargs)  # type: ignore[arg-type]


_DEPRECATED_NAMES = {"RateLimiterUnavailable": RateLimiterUnavailableError}


def deprecated_name(module: str, name: str) -> type[RtcSegmentError]:
    """Resolve a deprecated alias, warning the caller; ``AttributeError`` for anything else."""
    new = _DEPRECATED_NAMES.get(name)
    if new is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    warnings.warn(f"{name} is deprecated; use {new.__name__}", DeprecationWarning, stacklevel=3)
    return new


def __getattr__(name: str) -> type[RtcSegmentError]:
    return deprecated_name(__name__, name)
