"""Credentials providers: the static and environment ones, and the refreshing base
(cache, background refresh, single flight, failures, rejection)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import pytest

from rtc_segment import (
    Credentials,
    CredentialsError,
    CredentialsProvider,
    CredentialsUnavailableError,
    EnvironmentCredentialsProvider,
    IssuedCredentials,
    RefreshingCredentialsProvider,
    StaticCredentialsProvider,
)
from rtc_segment._providers import as_provider

KEY = Credentials("AKLTstatic", "static-secret")
START = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Issuer(RefreshingCredentialsProvider):
    """Issues ``AKTP<n>`` keys lasting ``lifetime`` s; can be made to fail or to stall."""

    def __init__(self, clock: Clock, *, lifetime: float = 900.0, buffer: float = 60.0) -> None:
        super().__init__(refresh_buffer=buffer, clock=clock)
        self.lifetime = lifetime
        self.calls = 0
        self.fail: Exception | None = None
        self.gate: asyncio.Event | None = None

    async def fetch(self) -> IssuedCredentials:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        credentials = Credentials(
            f"AKTP{self.calls}", f"secret-{self.calls}", f"token-{self.calls}"
        )
        expires = self._clock() + timedelta(seconds=self.lifetime)
        return IssuedCredentials(credentials, expires)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# -- static and environment ---------------------------------------------------------------


async def test_a_static_provider_serves_its_key_and_never_asks_for_a_retry() -> None:
    provider = StaticCredentialsProvider(KEY)
    assert provider.current() is KEY
    assert await provider.load() is KEY
    assert provider.reject(KEY) is False
    assert isinstance(provider, CredentialsProvider)
    assert "static-secret" not in repr(provider) and "AKLTstatic" in provider.name


def test_as_provider_wraps_credentials_and_refuses_other_types() -> None:
    wrapped = as_provider(KEY)
    assert isinstance(wrapped, StaticCredentialsProvider) and wrapped.current() is KEY
    issuer = Issuer(Clock())
    assert as_provider(issuer) is issuer
    with pytest.raises(TypeError, match="Credentials, a CredentialsProvider or None"):
        as_provider("AKLT...")  # type: ignore[arg-type]


def test_the_environment_reads_the_official_names_first() -> None:
    both = {
        "VOLCENGINE_ACCESS_KEY": "AKofficial",
        "VOLCENGINE_SECRET_KEY": "official-secret",
        "VOLCENGINE_SESSION_TOKEN": "official-token",
        "VOLC_ACCESSKEY": "AKolder",
        "VOLC_SECRETKEY": "older-secret",
    }
    provider = EnvironmentCredentialsProvider(both)
    assert provider.current() == Credentials("AKofficial", "official-secret", "official-token")
    assert provider.name == "environment (VOLCENGINE_ACCESS_KEY)"
    older = EnvironmentCredentialsProvider({"VOLC_ACCESSKEY": "AKolder", "VOLC_SECRETKEY": "s"})
    assert older.current() == Credentials("AKolder", "s")


def test_the_environment_reports_a_half_set_pair_and_an_empty_one() -> None:
    with pytest.raises(CredentialsError, match="VOLCENGINE_SECRET_KEY is not") as half:
        EnvironmentCredentialsProvider({"VOLCENGINE_ACCESS_KEY": "AK"})
    assert not isinstance(half.value, CredentialsUnavailableError)
    with pytest.raises(CredentialsUnavailableError, match="are not set"):
        EnvironmentCredentialsProvider({})


# -- the refreshing base -------------------------------------------------------------------


async def test_a_thousand_waiting_calls_cause_one_fetch() -> None:
    issuer = Issuer(Clock())
    issuer.gate = asyncio.Event()
    waiting = [asyncio.ensure_future(issuer.load()) for _ in range(1000)]
    await settle()
    issuer.gate.set()
    results = await asyncio.gather(*waiting)
    assert issuer.calls == 1 and issuer.fetches == 1
    assert {credentials.access_key_id for credentials in results} == {"AKTP1"}


async def test_fresh_credentials_are_served_without_a_fetch() -> None:
    clock = Clock()
    issuer = Issuer(clock)
    first = await issuer.load()
    clock.advance(900 - 60 - 1)  # one second before the refresh point
    assert issuer.current() is first
    await settle()
    assert issuer.calls == 1


async def test_due_credentials_keep_serving_while_a_background_refresh_runs() -> None:
    clock = Clock()
    issuer = Issuer(clock)
    first = await issuer.load()
    clock.advance(900 - 60 + 1)  # inside the refresh buffer, still valid
    issuer.gate = asyncio.Event()
    assert issuer.current() is first  # no waiting: the old key serves
    assert issuer.current() is first
    await settle()
    assert issuer.calls == 2 and issuer.fetches == 2  # one refresh, however often asked
    issuer.gate.set()
    await settle()
    assert issuer.current() is not first
    assert issuer.current().access_key_id == "AKTP2"  # type: ignore[union-attr]


async def test_credentials_about_to_expire_make_calls_wait_for_new_ones() -> None:
    clock = Clock()
    issuer = Issuer(clock)
    await issuer.load()
    clock.advance(900 - 1)  # within the last seconds: not to be sent any more
    assert issuer.current() is None
    renewed = await issuer.load()
    assert renewed.access_key_id == "AKTP2"


async def test_a_failed_background_refresh_only_logs_and_backs_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    issuer = Issuer(clock)
    first = await issuer.load()
    clock.advance(900 - 60 + 1)
    issuer.fail = RuntimeError("STS is down")
    with caplog.at_level(logging.WARNING, logger="rtc_segment"):
        assert issuer.current() is first
        await settle()
    assert issuer.calls == 2
    assert "refreshing the credentials failed" in caplog.text and "STS is down" in caplog.text
    # Backing off: asking again at once starts no second fetch.
    assert issuer.current() is first
    await settle()
    assert issuer.calls == 2
    clock.advance(31)  # past the longest first backoff
    issuer.fail = None
    assert issuer.current() is first
    await settle()
    assert issuer.calls == 3 and issuer.current().access_key_id == "AKTP3"  # type: ignore[union-attr]


async def test_a_failed_fetch_that_calls_wait_for_is_reported_with_the_provider() -> None:
    issuer = Issuer(Clock())
    issuer.fail = RuntimeError("connection refused")
    with pytest.raises(CredentialsUnavailableError, match="Issuer: RuntimeError: connection"):
        await issuer.load()


async def test_a_rejected_key_is_replaced_once_however_many_calls_report_it() -> None:
    issuer = Issuer(Clock())
    first = await issuer.load()
    assert all(issuer.reject(first) for _ in range(100))
    assert issuer.current() is None
    second = await issuer.load()
    assert issuer.reject(first) is True  # a late report about the old key
    assert issuer.current() is second
    assert issuer.calls == 2


async def test_a_caller_that_runs_out_of_time_leaves_the_fetch_to_the_next() -> None:
    issuer = Issuer(Clock())
    issuer.gate = asyncio.Event()
    with pytest.raises(TimeoutError):
        await issuer.load(timeout=0.01)
    issuer.gate.set()
    assert (await issuer.load()).access_key_id == "AKTP1"
    assert issuer.calls == 1


def test_the_refresh_buffer_is_checked() -> None:
    with pytest.raises(ValueError, match="refresh_buffer"):
        Issuer(Clock(), buffer=-1)


def test_issued_credentials_need_an_aware_expiry_and_hide_the_secret() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        IssuedCredentials(KEY, datetime(2026, 1, 1))
    issued = IssuedCredentials(KEY, START)
    assert "static-secret" not in repr(issued) and "2026-01-01T00:00:00+00:00" in repr(issued)
