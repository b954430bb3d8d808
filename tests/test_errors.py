"""Tests for rtc_segment._errors: the hierarchy's new members and the deprecated alias."""

from __future__ import annotations

from pathlib import Path

import pytest

import rtc_segment
from rtc_segment import (
    ClientTimeoutError,
    RateLimiterUnavailableError,
    RtcSegmentError,
    ServerError,
    TaskKey,
    TransportError,
    WaitTimeoutError,
    _errors,
)


def test_a_client_timeout_is_a_transport_error_not_a_service_error() -> None:
    error = ClientTimeoutError("no answer came in time", action="GetSegmentTask")
    assert isinstance(error, TransportError)
    assert not isinstance(error, ServerError)
    assert error.retryable
    assert "raise timeout" in str(error)


def test_wait_timeout_is_a_timeout_error_of_ours() -> None:
    error = WaitTimeoutError(TaskKey("a", "r", "t"), timeout=3, last_task=None, last_error=None)
    assert isinstance(error, TimeoutError)
    assert isinstance(error, RtcSegmentError)
    assert "within 3 s" in str(error)


@pytest.mark.parametrize("module", [rtc_segment, _errors])
def test_the_old_limiter_error_name_still_works_with_a_warning(module: object) -> None:
    with pytest.warns(DeprecationWarning, match="RateLimiterUnavailableError"):
        old = module.RateLimiterUnavailable  # type: ignore[attr-defined]
    assert old is RateLimiterUnavailableError


def test_unknown_names_are_still_attribute_errors() -> None:
    with pytest.raises(AttributeError, match="Nope"):
        rtc_segment.Nope  # type: ignore[attr-defined]  # noqa: B018
    assert "RateLimiterUnavailable" not in rtc_segment.__all__


# --- what mutation testing found untested (docs/testing.md#mutation-testing) -------------

from rtc_segment import (  # noqa: E402
    ApiError,
    AuthenticationError,
    ClientClosedError,
    CredentialsError,
    DeadlineExceededError,
    InvalidParameterError,
    ResponseFormatError,
    TaskNotFoundError,
    ThrottledError,
)
from rtc_segment._errors import error_class_for, error_from_service  # noqa: E402
from rtc_segment._models import TaskStatus  # noqa: E402

KEY = TaskKey("app", "room", "task")

AUTH_CODES = [
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
    "AccessDenied",
    "AccessDenied.Anything",
]
SERVER_CODES = [
    "InternalError",
    "InternalError.Anything",
    "InternalServiceTimeout",
    "ServiceUnavailableTemp",
    "FailToConnect",
    "InternalServiceError",
    "UndefinedError",
]
PARAMETER_CODES = [
    "InvalidParameter",
    "InvalidParameter.AccountIdMismatch",
    "MissingParameter",
    "InvalidActionOrVersion",
    "MethodNotAllowed",
]


@pytest.mark.parametrize(
    ("http_status", "code", "expected"),
    [
        # throttling: by status or by code, before anything the code says
        (429, "", ThrottledError),
        (429, "InvalidParameter.ErrorActiveTaskNotFound", ThrottledError),
        (429, "SignatureDoesNotMatch", ThrottledError),
        (200, "FlowLimitExceeded", ThrottledError),
        (None, "FlowLimitExceeded.Anything", ThrottledError),
        (400, "AccountFlowLimitExceeded", ThrottledError),
        # a quota on tasks, not requests: not throttling, whatever the status
        (429, "FlowLimitExceeded.TaskNumberOverLimit", InvalidParameterError),
        (None, "FlowLimitExceeded.TaskNumberOverLimit", ApiError),
        (400, "InvalidParameter.ErrorActiveTaskNotFound", TaskNotFoundError),
        (None, "InvalidParameter.ErrorActiveTaskNotFound", TaskNotFoundError),
        *[(500, code, AuthenticationError) for code in AUTH_CODES],
        *[(500, code, InvalidParameterError) for code in PARAMETER_CODES],
        *[(400, code, ServerError) for code in SERVER_CODES],
        # unknown codes: the status decides, at the edges of its ranges
        (500, "Unknown", ServerError),
        (599, "", ServerError),
        (499, "Unknown", InvalidParameterError),
        (400, "", InvalidParameterError),
        (401, "Unknown", AuthenticationError),
        (403, "", AuthenticationError),
        (399, "Unknown", ApiError),
        (200, "", ApiError),
        (None, "Unknown", ApiError),
    ],
)
def test_error_class_for_status_and_code(
    http_status: int | None, code: str, expected: type[ApiError]
) -> None:
    assert error_class_for(http_status, code) is expected


def test_error_from_service_keeps_everything_the_answer_said() -> None:
    error = error_from_service(
        http_status=400,
        code="InvalidParameter.AccountIdMismatch",
        code_n=100004,
        service_message="AppId does not belong to the account",
        action="GetSegmentTask",
        key=KEY,
        request_id="req-1",
        retry_after=7.0,  # ignored: not a throttling answer
    )
    assert type(error) is InvalidParameterError
    assert error.message == (
        "InvalidParameter.AccountIdMismatch (100004): AppId does not belong to the account"
    )
    assert (error.code, error.code_n, error.service_message) == (
        "InvalidParameter.AccountIdMismatch",
        100004,
        "AppId does not belong to the account",
    )
    assert (error.action, error.key, error.request_id, error.http_status) == (
        "GetSegmentTask",
        KEY,
        "req-1",
        400,
    )
    assert error.attempts == 1
    assert error.ambiguous is False
    assert not error.retryable
    assert not hasattr(error, "retry_after")
    assert str(error) == (
        "InvalidParameter.AccountIdMismatch (100004): AppId does not belong to the account "
        "[GetSegmentTask, app_id='app' room_id='room' task_id='task', HTTP 400, "
        f"request_id=req-1]. {InvalidParameterError.hint}"
    )


@pytest.mark.parametrize("retry_after", [None, 2.5])
def test_a_throttling_answer_carries_retry_after(retry_after: float | None) -> None:
    error = error_from_service(
        http_status=429,
        code="FlowLimitExceeded",
        code_n=None,
        service_message="",
        action="GetSegmentTask",
        key=None,
        request_id=None,
        retry_after=retry_after,
    )
    assert type(error) is ThrottledError
    assert error.retry_after == retry_after
    assert error.retryable
    assert (error.code, error.code_n, error.http_status) == ("FlowLimitExceeded", None, 429)
    assert error.message == "FlowLimitExceeded"
    assert str(error) == f"FlowLimitExceeded [GetSegmentTask, HTTP 429]. {ThrottledError.hint}"


def test_an_answer_without_a_code_is_called_error() -> None:
    error = error_from_service(
        http_status=502,
        code="",
        code_n=None,
        service_message="bad gateway",
        action=None,
        key=None,
        request_id=None,
    )
    assert type(error) is ServerError
    assert error.message == "Error: bad gateway"
    assert error.retryable


def test_a_rejected_timestamp_says_to_check_the_clock() -> None:
    error = error_from_service(
        http_status=401,
        code="InvalidTimestamp",
        code_n=None,
        service_message="expired",
        action=None,
        key=None,
        request_id=None,
    )
    assert type(error) is AuthenticationError
    assert error.message.startswith("InvalidTimestamp: expired. The request's X-Date was rejected")
    assert "within 15 minutes of real UTC time" in error.message
    assert error.service_message == "expired"


def test_context_shows_only_what_is_known() -> None:
    assert str(ServerError("boom")) == f"boom. {ServerError.hint}"
    error = ServerError("boom", action="StopSegment", attempts=2, request_id="")
    assert str(error) == f"boom [StopSegment, after 2 attempts]. {ServerError.hint}"
    assert repr(error) == f"ServerError({str(error)!r})"
    assert error.attempts == 2
    assert str(ApiError("plain", http_status=0)) == "plain [HTTP 0]"


def test_retryable_and_builtin_bases() -> None:
    retried = [ThrottledError, ServerError, TransportError, ClientTimeoutError]
    never = [
        ApiError,
        AuthenticationError,
        InvalidParameterError,
        TaskNotFoundError,
        CredentialsError,
        ClientClosedError,
        RateLimiterUnavailableError,
        ResponseFormatError,
        DeadlineExceededError,
        WaitTimeoutError,
    ]
    assert all(cls.retryable for cls in retried)
    assert not any(cls.retryable for cls in never)
    assert issubclass(CredentialsError, ValueError)
    assert issubclass(ClientClosedError, RuntimeError)
    assert issubclass(DeadlineExceededError, TimeoutError)


# The advice each error ends with is part of what a user reads: pinned, so that a change
# to it is deliberate.
HINTS: dict[type[RtcSegmentError], str] = {
    CredentialsError: "Pass Credentials(...), set VOLC_ACCESSKEY and VOLC_SECRETKEY, "
    "or write them to ~/.volc/credentials",
    ClientClosedError: "Create a new SegmentClient, or keep the client open for as long as "
    "you use it",
    RateLimiterUnavailableError: "Check the Redis server, or construct the limiter with a "
    "local fallback (fallback_fraction=...) to keep going at a reduced rate",
    AuthenticationError: "Check the access key id and secret (and session token), and the "
    "account's permissions",
    InvalidParameterError: "Check the AppId, RoomId and TaskId values",
    TaskNotFoundError: "Check the ids; only tasks started within the last 72 hours can be "
    "queried, and for auto-segment tasks the TaskId is the user's UserId",
    ThrottledError: "Another client may share this account's quota: share one "
    "RedisRateLimiter between processes, or lower qps",
    ServerError: "This is usually transient; retry later, or raise max_retries or timeout",
    TransportError: "Check the endpoint and the network; the request may or may not have "
    "reached the service",
    ClientTimeoutError: "The service or the network is slow; raise timeout (it bounds each "
    "attempt, connect to last byte) or max_retries",
    ResponseFormatError: "The endpoint may not be the Volcengine OpenAPI gateway, or a proxy "
    "altered the answer",
}


@pytest.mark.parametrize(("cls", "hint"), HINTS.items(), ids=lambda c: getattr(c, "__name__", ""))
def test_every_error_ends_with_its_advice(cls: type[RtcSegmentError], hint: str) -> None:
    assert str(cls("went wrong")) == f"went wrong. {hint}"


@pytest.mark.parametrize(
    ("action", "hint"),
    [
        ("UpdateSegment", "Check the ids; the task may also have ended already"),
        ("StopSegment", "Check the ids; the task may also have ended already"),
        ("GetSegmentTask", HINTS[TaskNotFoundError]),
        (None, HINTS[TaskNotFoundError]),
    ],
)
def test_task_not_found_advice_depends_on_the_action(action: str | None, hint: str) -> None:
    assert str(TaskNotFoundError("gone", action=action)).endswith(f"]. {hint}" if action else hint)


def test_response_format_error_shows_the_start_of_the_body() -> None:
    error = ResponseFormatError("not JSON", excerpt="<html>", action="GetSegmentTask")
    assert error.excerpt == "<html>"
    assert str(error) == (
        f"not JSON [GetSegmentTask]. {HINTS[ResponseFormatError]} Body starts: '<html>'"
    )
    assert str(ResponseFormatError("empty")) == f"empty. {HINTS[ResponseFormatError]}"


@pytest.mark.parametrize(
    ("attempts", "last_error", "spent"),
    [
        (1, None, "0.25 s queued for the limiter, 1.5 s in 1 attempt, 0 s backing off"),
        (
            3,
            ServerError("x"),
            "0.25 s queued for the limiter, 1.5 s in 3 attempts, 0 s backing off; "
            "last attempt: ServerError",
        ),
    ],
)
def test_deadline_exceeded_says_where_the_time_went(
    attempts: int, last_error: RtcSegmentError | None, spent: str
) -> None:
    error = DeadlineExceededError(
        deadline=2,
        queued=0.25,
        in_attempts=1.5,
        backing_off=0,
        last_error=last_error,
        action="GetSegmentTask",
        key=KEY,
        attempts=attempts,
    )
    assert error.message == f"the 2 s deadline ran out ({spent})"
    assert (error.deadline, error.queued, error.in_attempts, error.backing_off) == (2, 0.25, 1.5, 0)
    assert error.last_error is last_error
    assert (error.action, error.key, error.attempts) == ("GetSegmentTask", KEY, attempts)
    assert str(error).endswith(
        "Raise the deadline, lower the load on this account's quota, or pass deadline=None "
        "to wait as long as retries take"
    )


def test_wait_timeout_says_what_was_last_seen() -> None:
    task = type("Task", (), {"status": TaskStatus.RUNNING})()
    seen = WaitTimeoutError(KEY, timeout=1.5, last_task=task, last_error=None)  # type: ignore[arg-type]
    assert seen.message == "the task did not end within 1.5 s (last status RUNNING)"
    assert (seen.action, seen.key, seen.timeout, seen.last_task) == (
        "GetSegmentTask",
        KEY,
        1.5,
        task,
    )
    failed = WaitTimeoutError(KEY, timeout=2, last_task=None, last_error=ServerError("x"))
    assert failed.message == (
        "the task did not end within 2 s (no state fetched; last poll failed with ServerError)"
    )
    assert isinstance(failed.last_error, ServerError)
    nothing = WaitTimeoutError(KEY, timeout=2, last_task=None, last_error=None)
    assert nothing.message == "the task did not end within 2 s (no state fetched yet)"
    assert str(nothing).endswith(
        "Call wait_for_segment_task again to keep waiting, or pass a larger timeout "
        "(timeout=None waits until the task ends)"
    )


def test_the_deprecated_name_warning_names_the_new_name_and_the_callers_line() -> None:
    with pytest.warns(DeprecationWarning, match="RateLimiterUnavailable") as caught:
        _errors.RateLimiterUnavailable  # type: ignore[attr-defined]  # noqa: B018
    (warning,) = caught
    assert str(warning.message) == (
        "RateLimiterUnavailable is deprecated; use RateLimiterUnavailableError"
    )
    # It points at the code that used the old name, not into the library. (Not `== __file__`:
    # mutation testing's trampolines add a frame between the two.)
    assert Path(warning.filename).name != "_errors.py"
    with pytest.raises(AttributeError) as missing:
        _errors.deprecated_name("some.module", "Nope")
    assert str(missing.value) == "module 'some.module' has no attribute 'Nope'"
    with pytest.raises(AttributeError) as missing:
        _errors.Nope  # type: ignore[attr-defined]  # noqa: B018
    assert str(missing.value) == "module 'rtc_segment._errors' has no attribute 'Nope'"


def test_an_error_built_by_hand_has_empty_service_fields_and_its_message_as_args() -> None:
    error = ApiError("by hand")
    assert (error.code, error.code_n, error.service_message) == ("", None, "")
    assert error.args == ("by hand",)
    assert (error.action, error.key, error.request_id, error.http_status) == (None,) * 4
