"""STS (AssumeRole, AssumeRoleWithOIDC) and instance-role providers, against the emulator,
and the client's one refresh-and-retry after the service refuses a temporary key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rtc_segment import (
    AssumeRoleCredentialsProvider,
    AuthenticationError,
    Credentials,
    CredentialsUnavailableError,
    EcsRoleCredentialsProvider,
    OidcCredentialsProvider,
    SegmentClient,
    role_trn,
)
from rtc_segment._caller import Backoff
from rtc_segment._providers import StaticCredentialsProvider
from rtc_segment._remote_credentials import sts_base_url
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator, Fault

pytestmark = pytest.mark.looptime

KEY = ("app", "room", "task")
ROLE = role_trn("2100000001", "segment-reader")
LOOPBACK = "http://127.0.0.1:1"  # never contacted: the emulator's transport answers


def emulator_with_task(**options: Any) -> Emulator:
    emulator = Emulator(**options)
    emulator.add_task(*KEY)
    return emulator


def oidc(emulator: Emulator, token_file: Path, **options: Any) -> OidcCredentialsProvider:
    return OidcCredentialsProvider(
        ROLE,
        token_file,
        endpoint=LOOPBACK,
        transport=emulator.transport(),
        clock=emulator.wall_clock,
        **options,
    )


def client(emulator: Emulator, credentials: Any, **options: Any) -> SegmentClient:
    return SegmentClient(
        credentials,
        transport=emulator.transport(),
        clock=emulator.wall_clock,
        backoff=Backoff.disabled(),
        **options,
    )


def rotate(token_file: Path, token: str) -> None:
    token_file.write_text(token, encoding="utf-8")


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    file = tmp_path / "token"
    file.write_text("oidc-token-1\n", encoding="utf-8")
    return file


# -- endpoints ----------------------------------------------------------------------------


def test_an_sts_endpoint_is_a_host_or_a_url_with_http_only_to_loopback() -> None:
    assert sts_base_url(None) == "https://sts.volcengineapi.com"
    assert sts_base_url("sts.example.com") == "https://sts.example.com"
    assert sts_base_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080"
    assert sts_base_url("https://sts.example.com:8443/") == "https://sts.example.com:8443"
    with pytest.raises(ValueError, match="non-loopback"):
        sts_base_url("http://sts.example.com")
    with pytest.raises(ValueError, match="just scheme://host"):
        sts_base_url("https://sts.example.com/path")


def test_the_metadata_endpoint_must_be_loopback_for_plain_http() -> None:
    with pytest.raises(ValueError, match="non-loopback"):
        EcsRoleCredentialsProvider(endpoint="http://169.254.169.254")
    assert EcsRoleCredentialsProvider(endpoint="http://[::1]:8080").endpoint == "http://[::1]:8080"


# -- OIDC ---------------------------------------------------------------------------------


async def test_oidc_credentials_sign_the_calls(token_file: Path) -> None:
    emulator = emulator_with_task()
    emulator.add_oidc_token("oidc-token-1")
    provider = oidc(emulator, token_file)
    async with client(emulator, provider) as rtc:
        await rtc.get_segment_task(*KEY)
    used = provider.current()
    assert used is not None and used.session_token
    assert emulator.requests[-1].access_key_id == used.access_key_id
    assert used.access_key_id.startswith("AKTP")
    assert emulator.count(action="AssumeRoleWithOIDC") == 1


async def test_the_token_file_is_read_again_at_each_refresh(token_file: Path) -> None:
    emulator = emulator_with_task(credentials_lifetime=900)
    emulator.add_oidc_token("oidc-token-1")
    provider = oidc(emulator, token_file)
    first = await provider.load()
    # The kubelet rotates the token; the old one stops working.
    rotate(token_file, "oidc-token-2")
    emulator.add_oidc_token("oidc-token-2")
    emulator.remove_oidc_token("oidc-token-1")
    assert provider.reject(first)
    second = await provider.load()
    assert second.access_key_id != first.access_key_id
    assert emulator.count(action="AssumeRoleWithOIDC", ok=True) == 2


async def test_an_unknown_oidc_token_is_not_retried_and_never_shown(token_file: Path) -> None:
    emulator = emulator_with_task()
    provider = oidc(emulator, token_file)
    with pytest.raises(CredentialsUnavailableError, match="InvalidIdentityToken") as caught:
        await provider.load()
    assert emulator.count(action="AssumeRoleWithOIDC") == 1
    assert "oidc-token-1" not in str(caught.value) and "oidc-token-1" not in repr(provider)


def test_oidc_needs_a_role_and_a_token_file() -> None:
    with pytest.raises(CredentialsUnavailableError, match="VOLCENGINE_OIDC_TOKEN_FILE not set"):
        OidcCredentialsProvider(environ={"VOLCENGINE_OIDC_ROLE_TRN": ROLE})


async def test_an_unreadable_token_file_is_named(tmp_path: Path) -> None:
    provider = OidcCredentialsProvider(ROLE, tmp_path / "missing", endpoint=LOOPBACK)
    with pytest.raises(CredentialsUnavailableError, match="cannot be read"):
        await provider.load()


# -- AssumeRole ---------------------------------------------------------------------------


def assume_role(
    emulator: Emulator, source: Credentials = DEFAULT_CREDENTIALS, **options: Any
) -> Any:
    return AssumeRoleCredentialsProvider(
        source,
        ROLE,
        endpoint=LOOPBACK,
        transport=emulator.transport(),
        clock=emulator.wall_clock,
        **options,
    )


async def test_assume_role_is_signed_with_the_long_term_key() -> None:
    emulator = emulator_with_task()
    provider = assume_role(emulator)
    async with client(emulator, provider) as rtc:
        await rtc.get_segment_task(*KEY)
    (sts,) = [record for record in emulator.requests if record.action == "AssumeRole"]
    assert sts.access_key_id == DEFAULT_CREDENTIALS.access_key_id and sts.ok
    assert emulator.requests[-1].access_key_id not in (None, DEFAULT_CREDENTIALS.access_key_id)


async def test_assume_role_with_a_wrong_secret_says_why() -> None:
    emulator = emulator_with_task()
    wrong = Credentials(DEFAULT_CREDENTIALS.access_key_id, "not-the-secret")
    with pytest.raises(CredentialsUnavailableError, match="SignatureDoesNotMatch"):
        await assume_role(emulator, wrong).load()
    assert emulator.count(action="AssumeRole") == 1  # an authentication error: not retried


async def test_a_transient_sts_failure_is_retried_within_the_fetch() -> None:
    emulator = emulator_with_task()
    emulator.faults.next(2, Fault.HTTP_500, action="AssumeRole")
    credentials = await assume_role(emulator).load()
    assert credentials.access_key_id.startswith("AKTP")
    assert emulator.count(action="AssumeRole") == 3


async def test_sts_calls_have_their_own_timeout_and_tries() -> None:
    emulator = emulator_with_task()
    emulator.faults.slow_seconds = 30.0
    emulator.faults.next(3, Fault.SLOW, action="AssumeRole")
    with pytest.raises(CredentialsUnavailableError, match=r"no answer within 2 s \(after 3 tries"):
        await assume_role(emulator, timeout=2.0, attempts=3).load()


async def test_the_call_deadline_bounds_the_wait_for_credentials() -> None:
    emulator = emulator_with_task()
    emulator.faults.slow_seconds = 30.0
    emulator.faults.next(3, Fault.SLOW, action="AssumeRole")
    async with client(emulator, assume_role(emulator, timeout=20.0)) as rtc:
        with pytest.raises(TimeoutError, match="deadline"):
            await rtc.get_segment_task(*KEY, deadline=1.0)
    assert emulator.count(action="GetSegmentTask") == 0


# -- the instance role -------------------------------------------------------------------


def ecs(emulator: Emulator, **options: Any) -> EcsRoleCredentialsProvider:
    return EcsRoleCredentialsProvider(
        endpoint=LOOPBACK, transport=emulator.transport(), clock=emulator.wall_clock, **options
    )


async def test_the_instance_role_is_found_and_its_credentials_sign() -> None:
    emulator = emulator_with_task()
    emulator.add_instance_role("ecs-worker")
    provider = ecs(emulator)
    async with client(emulator, provider) as rtc:
        await rtc.get_segment_task(*KEY)
    assert [record.action for record in emulator.requests] == [
        "imds:token",
        "imds:roles",
        "imds:credentials",
        "GetSegmentTask",
    ]
    assert emulator.requests[-1].ok


async def test_a_named_instance_role_skips_the_role_list() -> None:
    emulator = emulator_with_task()
    emulator.add_instance_role("ecs-worker")
    await ecs(emulator, environ={"VOLCENGINE_ECS_METADATA": "ecs-worker"}).load()
    assert emulator.count(action="imds:roles") == 0
    with pytest.raises(CredentialsUnavailableError, match="HTTP 404"):
        await ecs(emulator, role_name="other-role").load()


async def test_an_instance_without_a_role_says_so() -> None:
    with pytest.raises(CredentialsUnavailableError, match="no role is attached"):
        await ecs(emulator_with_task()).load()


# -- refused credentials: one refresh, one retry, never a loop -----------------------------


async def test_a_refused_temporary_key_is_refreshed_and_the_call_retried_once(
    token_file: Path,
) -> None:
    emulator = emulator_with_task()
    emulator.add_oidc_token("oidc-token-1")
    provider = oidc(emulator, token_file)
    async with client(emulator, provider) as rtc:
        await rtc.get_segment_task(*KEY)
        assert emulator.expire_issued_credentials() == 1  # revoked behind the client's back
        await rtc.get_segment_task(*KEY)
        assert rtc.stats.retries == 1
    assert emulator.count(action="AssumeRoleWithOIDC") == 2
    assert emulator.count(action="GetSegmentTask", error_code="InvalidSecurityToken") == 1


class AlwaysRefused(StaticCredentialsProvider):
    """Claims a retry could help, but every key it hands out is unknown to the service."""

    def __init__(self) -> None:
        super().__init__(Credentials("AKTPunknown", "secret", "token"))
        self.rejected = 0

    def reject(self, credentials: Credentials) -> bool:
        self.rejected += 1
        return self.rejected < 10  # keeps a looping client from hanging the test


async def test_refused_credentials_are_retried_once_never_in_a_loop() -> None:
    emulator = emulator_with_task()
    provider = AlwaysRefused()
    async with client(emulator, provider, max_retries=5) as rtc:
        with pytest.raises(AuthenticationError, match="InvalidAccessKey"):
            await rtc.get_segment_task(*KEY)
    assert provider.rejected == 1
    assert emulator.count(action="GetSegmentTask") == 2


async def test_a_fixed_key_that_is_refused_is_not_retried() -> None:
    emulator = emulator_with_task()
    wrong = Credentials(DEFAULT_CREDENTIALS.access_key_id, "wrong-secret")
    async with client(emulator, wrong, max_retries=5) as rtc:
        with pytest.raises(AuthenticationError, match="SignatureDoesNotMatch"):
            await rtc.get_segment_task(*KEY)
    assert emulator.count(action="GetSegmentTask") == 1
