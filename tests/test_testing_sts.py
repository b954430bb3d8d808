"""The emulator's STS and instance metadata (``rtc_segment/testing/_sts.py``), spoken to
directly: what they accept, what they refuse, and the expiry of what they issue."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

from rtc_segment import (
    AuthenticationError,
    Backoff,
    CredentialsUnavailableError,
    EcsRoleCredentialsProvider,
    OidcCredentialsProvider,
    SegmentClient,
)
from rtc_segment._signing import Signer
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator, Fault

pytestmark = pytest.mark.looptime

ROLE = "trn:iam::2100000001:role/reader"
BASE = "http://127.0.0.1:1"


def http(emulator: Emulator) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=emulator.transport(), base_url=BASE)


def assume_role_query(emulator: Emulator, **params: str) -> tuple[str, dict[str, str]]:
    query = {
        "Action": "AssumeRole",
        "Version": "2018-01-01",
        "RoleTrn": ROLE,
        "RoleSessionName": "s",
        **params,
    }
    signed = Signer(DEFAULT_CREDENTIALS, region="cn-north-1", service="sts").sign(
        method="GET", host="127.0.0.1:1", query=query, now=emulator.wall_clock()
    )
    return signed.query_string, signed.headers


async def test_assume_role_issues_keys_that_expire_after_the_lifetime() -> None:
    emulator = Emulator(credentials_lifetime=120)
    emulator.add_task("a", "r", "t")
    query, headers = assume_role_query(emulator, DurationSeconds="3600")
    async with http(emulator) as client:
        answer = (await client.get(f"/?{query}", headers=headers)).json()
    issued = answer["Result"]["Credentials"]
    assert answer["ResponseMetadata"]["Service"] == "sts"
    assert set(issued) == {"AccessKeyId", "SecretAccessKey", "SessionToken", "ExpiredTime"}
    expires = datetime.fromisoformat(issued["ExpiredTime"])
    assert expires - emulator.wall_clock() <= timedelta(seconds=120)
    assert emulator.issued_credentials == 1


async def test_sts_refuses_what_the_service_refuses() -> None:
    emulator = Emulator()
    async with http(emulator) as client:
        query, headers = assume_role_query(emulator, DurationSeconds="60")
        short = (await client.get(f"/?{query}", headers=headers)).json()
        query, headers = assume_role_query(emulator, RoleTrn="reader")
        bad_role = (await client.get(f"/?{query}", headers=headers)).json()
        unsigned = await client.get("/?Action=AssumeRole&Version=2018-01-01&RoleTrn=x")
        oidc = await client.post(
            "/?Action=AssumeRoleWithOIDC&Version=2018-01-01",
            data={"RoleTrn": ROLE, "RoleSessionName": "s", "OIDCToken": "unknown"},
        )
    assert short["ResponseMetadata"]["Error"]["Code"] == "InvalidParameter.DurationSeconds"
    assert bad_role["ResponseMetadata"]["Error"]["Code"] == "InvalidParameter.RoleTrn"
    assert unsigned.status_code == 401
    assert oidc.json()["ResponseMetadata"]["Error"]["Code"] == "InvalidIdentityToken"
    assert emulator.issued_credentials == 0


async def test_an_issued_key_cannot_assume_a_role() -> None:
    emulator = Emulator()
    emulator.add_instance_role("worker")
    temporary = await EcsRoleCredentialsProvider(
        endpoint=BASE, transport=emulator.transport(), clock=emulator.wall_clock
    ).load()
    query = {"Action": "AssumeRole", "Version": "2018-01-01", "RoleTrn": ROLE}
    signed = Signer(temporary, region="cn-north-1", service="sts").sign(
        method="GET", host="127.0.0.1:1", query={**query, "RoleSessionName": "s"},
        now=emulator.wall_clock(),
    )  # fmt: skip
    async with http(emulator) as client:
        answer = await client.get(f"/?{signed.query_string}", headers=signed.headers)
    assert answer.json()["ResponseMetadata"]["Error"]["Code"] == "InvalidParameter.TemporaryKey"


async def test_instance_metadata_needs_its_session_token() -> None:
    emulator = Emulator()
    emulator.add_instance_role("worker")
    async with http(emulator) as client:
        no_ttl = await client.get("/latest/api/token")
        no_token = await client.get("/volcstack/latest/iam/security_credentials?type=user")
        token = (
            await client.get(
                "/latest/api/token", headers={"X-volc-ecs-metadata-token-ttl-seconds": "21600"}
            )
        ).text
        headers = {"X-volc-ecs-metadata-token": token}
        roles = await client.get("/volcstack/latest/iam/security_credentials", headers=headers)
        wrong_method = await client.get(
            "/volcstack/latest/iam/security_credentials/worker", headers=headers
        )
        credentials = await client.post(
            "/volcstack/latest/iam/security_credentials/worker", headers=headers
        )
    assert (no_ttl.status_code, no_token.status_code) == (400, 401)
    assert json.loads(roles.text) == ["worker"]
    assert wrong_method.status_code == 405
    assert "ExpiredTime" in credentials.json()
    assert emulator.count(action="imds:credentials") == 2


async def test_the_metadata_service_is_served_over_loopback_http_too() -> None:
    emulator = Emulator()
    emulator.add_instance_role("worker")
    async with emulator.serve() as url:
        provider = EcsRoleCredentialsProvider(endpoint=url, timeout=5.0)
        credentials = await provider.load()
    assert credentials.session_token and emulator.count(action="imds:token") == 1


async def test_an_expired_key_is_refused_as_an_invalid_security_token() -> None:
    emulator = Emulator(credentials_lifetime=100)
    emulator.add_task("a", "r", "t")
    emulator.add_instance_role("worker")
    key = await EcsRoleCredentialsProvider(
        endpoint=BASE, transport=emulator.transport(), clock=emulator.wall_clock
    ).load()
    async with SegmentClient(
        key, transport=emulator.transport(), clock=emulator.wall_clock, backoff=Backoff.disabled()
    ) as client:
        await client.get_segment_task("a", "r", "t")
        await asyncio.sleep(100)
        with pytest.raises(AuthenticationError, match=r"InvalidSecurityToken.*has expired"):
            await client.get_segment_task("a", "r", "t")


async def test_instance_metadata_takes_faults_like_any_action() -> None:
    emulator = Emulator()
    emulator.add_instance_role("worker")
    emulator.faults.next(2, Fault.HTTP_503, action="imds:credentials")
    provider = EcsRoleCredentialsProvider(
        endpoint=BASE, transport=emulator.transport(), clock=emulator.wall_clock
    )
    assert (await provider.load()).session_token
    assert emulator.count(action="imds:credentials") == 3  # two faults, then the answer


async def test_sts_goes_through_the_environments_proxy_and_metadata_never_does(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    emulator = Emulator()
    emulator.add_instance_role("worker")
    emulator.add_oidc_token("token")
    token_file = tmp_path / "token"
    token_file.write_text("token", encoding="utf-8")
    async with emulator.serve() as url:
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # a closed loopback port
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        metadata = EcsRoleCredentialsProvider(endpoint=url, timeout=5.0)
        assert (await metadata.load()).session_token
        oidc = OidcCredentialsProvider(ROLE, token_file, endpoint=url, attempts=1)
        with pytest.raises(CredentialsUnavailableError, match=r"ConnectError|ProxyError"):
            await oidc.load()
    assert emulator.count(action="AssumeRoleWithOIDC") == 0
