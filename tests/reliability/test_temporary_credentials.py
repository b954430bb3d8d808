"""Guarantee: temporary credentials (OIDC, a RamRoleArn profile, the instance role) sign
the calls and are refreshed before they expire, with no failed call and one STS request
per refresh -- across more than three credential lifetimes.

The emulator issues the credentials (``credentials_lifetime`` short) and refuses them once
expired, as the service does; the client never sees a refusal when refreshing works.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rtc_segment import (
    CliConfigCredentialsProvider,
    DefaultCredentialsChain,
    EcsRoleCredentialsProvider,
    OidcCredentialsProvider,
    RefreshingCredentialsProvider,
    SegmentClient,
    TaskKey,
)
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator, Lifecycle

ROLE = "trn:iam::2100000001:role/segment-reader"
KEY = ("app", "room", "task")


class WallClock:
    """The wall clock of the emulator and the client, moved by the test (real-time tests)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


async def until(condition: Any, *, seconds: float = 10.0) -> None:
    """Wait (bounded) for a background refresh over a real socket to land."""
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition did not come true in time")


def last_call_key(emulator: Emulator) -> str | None:
    """The access key id of the last RTC request."""
    calls = [record for record in emulator.requests if record.action == "GetSegmentTask"]
    return calls[-1].access_key_id


def issued_keys(emulator: Emulator) -> list[str]:
    """The access key ids of the RTC requests, in order, without repeats."""
    seen: list[str] = []
    for record in emulator.requests:
        if record.action == "GetSegmentTask" and record.access_key_id not in seen[-1:]:
            seen.append(record.access_key_id or "")
    return seen


# -- Done when: OIDC from the environment alone --------------------------------------------


async def test_oidc_from_the_environment_alone_signs_and_refreshes_before_expiry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wall = WallClock()
    emulator = Emulator(wall_clock=wall, credentials_lifetime=900)
    emulator.add_task(*KEY)
    emulator.add_oidc_token("token-1")
    token_file = tmp_path / "token"
    write(token_file, "token-1")
    async with emulator.serve() as url:
        # Only these three are set (the suite's guard also disables the instance role).
        monkeypatch.setenv("VOLCENGINE_OIDC_ROLE_TRN", ROLE)
        monkeypatch.setenv("VOLCENGINE_OIDC_TOKEN_FILE", str(token_file))
        monkeypatch.setenv("VOLCENGINE_OIDC_STS_ENDPOINT", url)
        async with SegmentClient(endpoint=url, clock=wall) as client:
            await client.get_segment_task(*KEY)
            chain = client._credentials
            assert isinstance(chain, DefaultCredentialsChain)
            assert isinstance(chain.active, OidcCredentialsProvider)
            first = chain.current()
            assert first is not None and first.session_token
            assert last_call_key(emulator) == first.access_key_id
            assert emulator.count(action="AssumeRoleWithOIDC") == 1

            # 60 s before expiry: the old key still signs, a refresh starts behind it.
            write(token_file, "token-2")
            emulator.add_oidc_token("token-2")
            emulator.remove_oidc_token("token-1")
            wall.advance(900 - 60 + 1)
            await client.get_segment_task(*KEY)
            assert last_call_key(emulator) == first.access_key_id
            await until(lambda: chain.current() is not first)
            assert emulator.count(action="AssumeRoleWithOIDC", ok=True) == 2  # token-2 read
            second = chain.current()
            assert second is not None and second.access_key_id != first.access_key_id

            # Before the first key's expiry, calls already sign with the second.
            wall.advance(30)
            await client.get_segment_task(*KEY)
            assert last_call_key(emulator) == second.access_key_id
            assert client.stats.errors == {} and client.stats.retries == 0
    assert emulator.count(action="GetSegmentTask", ok=False) == 0


# -- Done when: a RamRoleArn profile and the instance role ---------------------------------


@pytest.mark.looptime
async def test_a_ram_role_arn_profile_signs_and_refreshes_before_expiry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator = Emulator(credentials_lifetime=300)
    emulator.add_task(*KEY)
    config = tmp_path / "config.json"
    profile = {
        "mode": "RamRoleArn",
        "access-key": DEFAULT_CREDENTIALS.access_key_id,
        "secret-key": DEFAULT_CREDENTIALS.secret_access_key,
        "role-name": "segment-reader",
        "account-id": "2100000001",
    }
    write(config, json.dumps({"current": "worker", "profiles": {"worker": profile}}))
    monkeypatch.setenv("VOLCENGINE_CLI_CONFIG_FILE", str(config))
    chain = DefaultCredentialsChain(
        sts_endpoint="http://127.0.0.1:1", transport=emulator.transport(), clock=emulator.wall_clock
    )
    async with SegmentClient(
        chain, transport=emulator.transport(), clock=emulator.wall_clock
    ) as client:
        await client.get_segment_task(*KEY)
        assert isinstance(chain.active, CliConfigCredentialsProvider)
        (sts,) = [record for record in emulator.requests if record.action == "AssumeRole"]
        assert sts.access_key_id == DEFAULT_CREDENTIALS.access_key_id  # the profile's key
        for _ in range(10):  # 10 x 100 s: more than three 300 s lifetimes
            await asyncio.sleep(100)
            await client.get_segment_task(*KEY)
            await asyncio.sleep(0)  # let a refresh started by the call land
        await asyncio.sleep(1)
        await client.get_segment_task(*KEY)  # signs with the last refresh's key
        assert client.stats.errors == {} and client.stats.retries == 0
    refreshes = emulator.count(action="AssumeRole")
    assert refreshes >= 4
    assert len(issued_keys(emulator)) == refreshes
    assert emulator.count(action="GetSegmentTask", ok=False) == 0


@pytest.mark.looptime
async def test_the_instance_role_signs_and_refreshes_before_expiry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emulator = Emulator(credentials_lifetime=900)
    emulator.add_task(*KEY)
    emulator.add_instance_role("ecs-worker")
    # The instance role, pointed at a loopback stand-in (the emulator's transport answers).
    monkeypatch.delenv("VOLCENGINE_ECS_METADATA_DISABLED")
    monkeypatch.setenv("VOLCENGINE_ECS_METADATA_ENDPOINT", "http://127.0.0.1:1")
    chain = DefaultCredentialsChain(transport=emulator.transport(), clock=emulator.wall_clock)
    async with SegmentClient(
        chain, transport=emulator.transport(), clock=emulator.wall_clock
    ) as client:
        await client.get_segment_task(*KEY)
        assert isinstance(chain.active, EcsRoleCredentialsProvider)
        for _ in range(20):  # 20 x 150 s: more than three 900 s lifetimes
            await asyncio.sleep(150)
            await client.get_segment_task(*KEY)
            await asyncio.sleep(0)
        await asyncio.sleep(1)
        await client.get_segment_task(*KEY)  # signs with the last refresh's key
        assert client.stats.errors == {} and client.stats.retries == 0
        # Refreshed 300 s before expiry (the instance role's buffer): every 600 s.
        expires_at = chain.active.expires_at
        assert expires_at is not None
        assert (expires_at - emulator.wall_clock()).total_seconds() > 300 - 150
    refreshes = emulator.count(action="imds:credentials")
    assert refreshes >= 5
    assert len(issued_keys(emulator)) == refreshes
    assert emulator.count(action="GetSegmentTask", ok=False) == 0


# -- Done when: a 1,000-call fan-out across three lifetimes ---------------------------------


def oidc_provider(emulator: Emulator, tmp_path: Path, *, buffer: float) -> OidcCredentialsProvider:
    emulator.add_oidc_token("token")
    token_file = tmp_path / "token"
    write(token_file, "token")
    return OidcCredentialsProvider(
        ROLE,
        token_file,
        endpoint="http://127.0.0.1:1",
        transport=emulator.transport(),
        clock=emulator.wall_clock,
        refresh_buffer=buffer,
    )


@pytest.mark.looptime
async def test_a_thousand_call_fan_out_across_three_lifetimes_fails_no_call(
    tmp_path: Path,
) -> None:
    # 1,000 calls at 60 per second take about 17 s; keys last 4 s, refreshed 1 s early.
    emulator = Emulator(credentials_lifetime=4)
    keys = [TaskKey("app", f"room-{n}", f"task-{n}") for n in range(1000)]
    for key in keys:
        emulator.add_task(*key)
    provider = oidc_provider(emulator, tmp_path, buffer=1.0)
    async with SegmentClient(
        provider, transport=emulator.transport(), clock=emulator.wall_clock
    ) as client:
        outcomes = await client.gather_segment_tasks(keys)
        assert client.stats.retries == 0
    assert [outcome.error for outcome in outcomes if outcome.error] == []
    assert emulator.count(action="GetSegmentTask") == 1000  # not one refused and retried
    refreshes = emulator.count(action="AssumeRoleWithOIDC")
    assert refreshes == provider.fetches  # one STS request per refresh
    assert refreshes >= 4  # the run outlived three lifetimes
    assert len(issued_keys(emulator)) == refreshes  # every refresh's key was used


# -- a watch across three lifetimes ---------------------------------------------------------


@pytest.mark.looptime
async def test_a_watch_across_three_lifetimes_fails_no_poll(tmp_path: Path) -> None:
    emulator = Emulator(credentials_lifetime=900)
    emulator.add_task(*KEY, lifecycle=Lifecycle.after_seconds(running=10, ended=3 * 900 + 100))
    provider = oidc_provider(emulator, tmp_path, buffer=60.0)
    assert isinstance(provider, RefreshingCredentialsProvider)
    async with SegmentClient(
        provider, transport=emulator.transport(), clock=emulator.wall_clock
    ) as client:
        states = [task.status.name async for task in client.watch_segment_task(*KEY)]
        assert client.stats.errors == {} and client.stats.retries == 0
    assert states == ["NOT_STARTED", "RUNNING", "ENDED"]
    assert emulator.count(action="GetSegmentTask", ok=False) == 0
    assert emulator.count(action="AssumeRoleWithOIDC") >= 4
