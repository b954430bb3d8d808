"""Tests for rtc_segment._errors: the hierarchy's new members and the deprecated alias."""

from __future__ import annotations

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
