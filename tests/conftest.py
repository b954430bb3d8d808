"""Fixtures for the whole suite."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest
from _short_paths import make_short_directory

from rtc_segment import set_call_hooks
from rtc_segment._host import DIRECTORY_ENV


def pytest_configure(config: pytest.Config) -> None:
    """pytest-redis's ``redis_proc`` keeps its unix socket in its data directory: give it
    one whose path does not grow with the clone's (see ``tests/_short_paths.py``).

    The default limiter shares each account's ceiling with every process of the host
    (``HostRateLimiter``): a test session gets a directory of its own for that state, so
    that two sessions on one machine -- or the application's own workers -- do not slow
    each other down. Worker processes the tests start inherit it.
    """
    if DIRECTORY_ENV not in os.environ:
        limiter_directory = tempfile.mkdtemp(prefix="rtcs-limiter-")
        os.environ[DIRECTORY_ENV] = limiter_directory
        config.add_cleanup(lambda: shutil.rmtree(limiter_directory, ignore_errors=True))
    if getattr(config.option, "redis_datadir", None) is None and not config.getini("redis_datadir"):
        directory = make_short_directory("rtcs-redis-")
        config.option.redis_datadir = str(directory)
        config.add_cleanup(lambda: shutil.rmtree(directory, ignore_errors=True))


@pytest.fixture(autouse=True)
def no_call_hooks_after_the_test() -> Iterator[None]:
    """Instrumentation hooks are process-wide: whatever a test sets ends with it."""
    yield
    set_call_hooks(None)
