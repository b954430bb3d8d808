"""Fixtures for the whole suite, and the event loop the async tests run on.

``--event-loop=uvloop`` (or ``RTC_SEGMENT_TEST_LOOP=uvloop``) runs the async tests on
uvloop, the loop ``uvicorn[standard]`` runs applications on; the default is asyncio's own.
Tests in virtual time (``@pytest.mark.looptime``) are skipped on uvloop: looptime patches
asyncio's loop classes, and uvloop's compiled loop cannot be patched, so they would run in
real time and sleep for real (see docs/testing.md). The ``uvloop`` nox session runs the
loop-sensitive suites this way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Mapping

import pytest
from _loop_lag import LoopLag
from _short_paths import make_short_directory

from rtc_segment import _remote_credentials, set_call_hooks, set_default_telemetry
from rtc_segment._host import DIRECTORY_ENV

#: Variables of the official credential chain that a developer's shell may hold: no test
#: may pick them up by accident.
_CHAIN_VARIABLES = (
    "VOLCENGINE_ACCESS_KEY",
    "VOLCENGINE_SECRET_KEY",
    "VOLCENGINE_SESSION_TOKEN",
    "VOLCENGINE_OIDC_ROLE_TRN",
    "VOLCENGINE_OIDC_TOKEN_FILE",
    "VOLCENGINE_OIDC_ROLE_SESSION_NAME",
    "VOLCENGINE_OIDC_ROLE_POLICY",
    "VOLCENGINE_OIDC_STS_ENDPOINT",
    "VOLCENGINE_PROFILE",
    "VOLCENGINE_ECS_METADATA",
    "VOLCENGINE_ECS_METADATA_ENDPOINT",
)

LOOPS = ("asyncio", "uvloop")
LOOP_VARIABLE = "RTC_SEGMENT_TEST_LOOP"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--event-loop",
        choices=LOOPS,
        default=None,
        help=f"the event loop async tests run on (default: ${LOOP_VARIABLE}, else asyncio)",
    )


def chosen_loop(config: pytest.Config) -> str:
    """The loop the async tests run on: the option's, else the environment's, else asyncio."""
    loop = config.getoption("event_loop") or os.environ.get(LOOP_VARIABLE) or "asyncio"
    if loop not in LOOPS:
        raise pytest.UsageError(f"{LOOP_VARIABLE}={loop!r}: expected one of {', '.join(LOOPS)}")
    return str(loop)


def pytest_report_header(config: pytest.Config) -> str:
    return f"event loop: {chosen_loop(config)}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if chosen_loop(config) != "uvloop":
        return
    skip = pytest.mark.skip(
        reason="virtual time (looptime) patches asyncio's loop only; it runs on asyncio's loop"
    )
    for item in items:
        if item.get_closest_marker("looptime") is not None:
            item.add_marker(skip)


class UvloopFactory:
    """pytest-asyncio's loop factory hook (pytest-asyncio >= 1.4): every async test on a
    new uvloop loop. Registered only when uvloop is chosen."""

    @staticmethod
    def pytest_asyncio_loop_factories(
        config: pytest.Config, item: pytest.Item
    ) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
        import uvloop  # installed by the uvloop nox session only: not a dependency

        return {"uvloop": uvloop.new_event_loop}


def choose_event_loop(config: pytest.Config) -> None:
    if chosen_loop(config) != "uvloop":
        return
    if getattr(config.hook, "pytest_asyncio_loop_factories", None) is None:
        raise pytest.UsageError("running the tests on uvloop needs pytest-asyncio >= 1.4")
    config.pluginmanager.register(UvloopFactory(), "rtc-segment-uvloop")


def pytest_configure(config: pytest.Config) -> None:
    """Register the loop chosen. And pytest-redis's ``redis_proc`` keeps its unix socket in
    its data directory: give it one whose path does not grow with the clone's (see
    ``tests/_short_paths.py``).

    The default limiter shares each account's ceiling with every process of the host
    (``HostRateLimiter``): a test session gets a directory of its own for that state, so
    that two sessions on one machine -- or the application's own workers -- do not slow
    each other down. Worker processes the tests start inherit it.
    """
    choose_event_loop(config)
    if DIRECTORY_ENV not in os.environ:
        limiter_directory = tempfile.mkdtemp(prefix="rtcs-limiter-")
        os.environ[DIRECTORY_ENV] = limiter_directory

        def forget_the_limiter_directory() -> None:
            # Gone with the session, and no longer named: a later session in this process
            # (mutmut runs several) makes a directory of its own instead of a missing one.
            shutil.rmtree(limiter_directory, ignore_errors=True)
            if os.environ.get(DIRECTORY_ENV) == limiter_directory:
                del os.environ[DIRECTORY_ENV]

        config.add_cleanup(forget_the_limiter_directory)
    if getattr(config.option, "redis_datadir", None) is None and not config.getini("redis_datadir"):
        directory = make_short_directory("rtcs-redis-")
        config.option.redis_datadir = str(directory)
        config.add_cleanup(lambda: shutil.rmtree(directory, ignore_errors=True))


@pytest.fixture(autouse=True)
def no_call_hooks_after_the_test() -> Iterator[None]:
    """Instrumentation hooks are process-wide: whatever a test sets ends with it (the
    default telemetry goes back to the environment's choice)."""
    yield
    set_call_hooks(None)
    set_default_telemetry(None)


@pytest.fixture(autouse=True)
def never_the_real_instance_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach the cloud's instance-metadata address, nor read the developer's
    own credentials: the default chain's instance role is disabled (a test that wants it
    deletes the variable and points it at a loopback stand-in), the default address itself
    is replaced by a closed loopback port, and the CLI config is a file that does not exist.
    """
    monkeypatch.setenv("VOLCENGINE_ECS_METADATA_DISABLED", "true")
    monkeypatch.setattr(_remote_credentials, "ECS_METADATA_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("VOLCENGINE_CLI_CONFIG_FILE", "/nonexistent/rtc-segment-tests/config.json")
    for name in _CHAIN_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def loop_lag() -> AsyncIterator[LoopLag]:
    """A probe of the event loop's lateness, watching for the whole test
    (``tests/_loop_lag.py``: what real-time ceiling checks allow for)."""
    lag = LoopLag()
    watcher = asyncio.create_task(lag.watch())
    yield lag
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
