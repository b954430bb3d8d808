"""Fixtures for the whole suite."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from _short_paths import make_short_directory

from rtc_segment import _remote_credentials, set_call_hooks

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


def pytest_configure(config: pytest.Config) -> None:
    """pytest-redis's ``redis_proc`` keeps its unix socket in its data directory: give it
    one whose path does not grow with the clone's (see ``tests/_short_paths.py``)."""
    if getattr(config.option, "redis_datadir", None) is None and not config.getini("redis_datadir"):
        directory = make_short_directory("rtcs-redis-")
        config.option.redis_datadir = str(directory)
        config.add_cleanup(lambda: shutil.rmtree(directory, ignore_errors=True))


@pytest.fixture(autouse=True)
def no_call_hooks_after_the_test() -> Iterator[None]:
    """Instrumentation hooks are process-wide: whatever a test sets ends with it."""
    yield
    set_call_hooks(None)


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
