"""Fixtures for the whole suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rtc_segment import set_call_hooks


@pytest.fixture(autouse=True)
def no_call_hooks_after_the_test() -> Iterator[None]:
    """Instrumentation hooks are process-wide: whatever a test sets ends with it."""
    yield
    set_call_hooks(None)
