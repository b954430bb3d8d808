"""The CLI config profiles (every mode) and the default chain (order, memory, errors)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rtc_segment import (
    AssumeRoleCredentialsProvider,
    CliConfigCredentialsProvider,
    Credentials,
    CredentialsError,
    CredentialsUnavailableError,
    DefaultCredentialsChain,
    EcsRoleCredentialsProvider,
    EnvironmentCredentialsProvider,
    OidcCredentialsProvider,
    SegmentClient,
    StaticCredentialsProvider,
)
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator

pytestmark = pytest.mark.looptime

SECRET = "CANARYprofileSECRET000000"
LOOPBACK = "http://127.0.0.1:1"


def config_file(tmp_path: Path, profiles: dict[str, Any], current: str | None = None) -> Path:
    document: dict[str, Any] = {"profiles": profiles}
    if current is not None:
        document["current"] = current
    file = tmp_path / "config.json"
    file.write_text(json.dumps(document), encoding="utf-8")
    return file


def write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def ak(access_key: str = "AKprofile", **extra: str) -> dict[str, str]:
    return {"mode": "AK", "access-key": access_key, "secret-key": SECRET, **extra}


# -- CLI config ---------------------------------------------------------------------------


def test_the_profile_is_chosen_by_argument_then_environment_then_current(tmp_path: Path) -> None:
    profiles = {"default": ak("AKdefault"), "cur": ak("AKcurrent"), "env": ak("AKenv")}
    file = config_file(tmp_path, profiles, current="cur")

    def chosen(profile: str | None, environ: dict[str, str]) -> str:
        provider = CliConfigCredentialsProvider(profile, config_file=file, environ=environ)
        credentials = provider.current()
        assert credentials is not None
        return credentials.access_key_id

    assert chosen("default", {"VOLCENGINE_PROFILE": "env"}) == "AKdefault"
    assert chosen(None, {"VOLCENGINE_PROFILE": "env"}) == "AKenv"
    assert chosen(None, {}) == "AKcurrent"
    no_current = config_file(tmp_path, {"default": ak("AKdefault")})
    provider = CliConfigCredentialsProvider(config_file=no_current, environ={})
    assert provider.current() == Credentials("AKdefault", SECRET)


def test_the_config_file_comes_from_the_environment(tmp_path: Path) -> None:
    file = config_file(tmp_path, {"default": ak()})
    provider = CliConfigCredentialsProvider(environ={"VOLCENGINE_CLI_CONFIG_FILE": str(file)})
    assert isinstance(provider.delegate, StaticCredentialsProvider)


def test_sts_token_mode_needs_its_token(tmp_path: Path) -> None:
    with_token = ak(mode="StsToken", **{"session-token": "tok"})
    file = config_file(tmp_path, {"default": with_token})
    provider = CliConfigCredentialsProvider(config_file=file, environ={})
    assert provider.current() == Credentials("AKprofile", SECRET, "tok")
    file = config_file(tmp_path, {"default": ak(mode="StsToken")})
    with pytest.raises(CredentialsError, match="StsToken needs session-token"):
        CliConfigCredentialsProvider(config_file=file, environ={})


def test_the_role_modes_delegate(tmp_path: Path) -> None:
    profiles = {
        "ram": ak(mode="RamRoleArn", **{"role-name": "reader", "account-id": "2100"}),
        "oidc": {"mode": "OIDC", "role-trn": "trn:iam::2100:role/r", "oidc-token-file": "/t"},
        "ecs": {"mode": "EcsRole", "role-name": "ecs-worker"},
    }
    file = config_file(tmp_path, profiles)
    options: dict[str, Any] = {"config_file": file, "environ": {}, "sts_endpoint": LOOPBACK}
    ram = CliConfigCredentialsProvider("ram", **options)
    assert isinstance(ram.delegate, AssumeRoleCredentialsProvider)
    assert ram.delegate.name == "AssumeRole trn:iam::2100:role/reader"
    oidc = CliConfigCredentialsProvider("oidc", **options)
    assert isinstance(oidc.delegate, OidcCredentialsProvider)
    assert oidc.delegate.endpoint == LOOPBACK
    ecs = CliConfigCredentialsProvider("ecs", metadata_endpoint=LOOPBACK, **options)
    assert isinstance(ecs.delegate, EcsRoleCredentialsProvider)
    assert ecs.delegate.name == "ECS instance role ecs-worker"


async def test_an_ecs_role_profile_gets_the_instances_credentials(tmp_path: Path) -> None:
    emulator = Emulator()
    emulator.add_instance_role("ecs-worker")
    file = config_file(tmp_path, {"default": {"mode": "EcsRole", "role-name": "ecs-worker"}})
    provider = CliConfigCredentialsProvider(
        config_file=file,
        metadata_endpoint=LOOPBACK,
        transport=emulator.transport(),
        clock=emulator.wall_clock,
        environ={},
    )
    credentials = await provider.load()
    assert credentials.session_token and emulator.count(action="imds:credentials") == 1


def test_sso_and_unknown_modes_are_refused_clearly(tmp_path: Path) -> None:
    file = config_file(tmp_path, {"sso": {"mode": "sso"}, "odd": {"mode": "Wat"}})
    with pytest.raises(CredentialsError, match="mode sso is not supported"):
        CliConfigCredentialsProvider("sso", config_file=file, environ={})
    with pytest.raises(CredentialsError, match="unsupported mode 'Wat'"):
        CliConfigCredentialsProvider("odd", config_file=file, environ={})


def test_a_missing_value_is_named_and_no_secret_is_shown(tmp_path: Path) -> None:
    profile = ak(mode="RamRoleArn", **{"role-name": "reader"})
    file = config_file(tmp_path, {"default": profile})
    with pytest.raises(CredentialsError, match="needs account-id") as caught:
        CliConfigCredentialsProvider(config_file=file, environ={})
    assert SECRET not in str(caught.value)


def test_a_missing_file_or_profile_is_unavailable_and_a_broken_file_an_error(
    tmp_path: Path,
) -> None:
    with pytest.raises(CredentialsUnavailableError, match="does not exist"):
        CliConfigCredentialsProvider(config_file=tmp_path / "none.json", environ={})
    file = config_file(tmp_path, {"default": ak()})
    with pytest.raises(CredentialsUnavailableError, match="no profile 'other'"):
        CliConfigCredentialsProvider("other", config_file=file, environ={})
    file.write_text('{"profiles": {"default": {"secret-key": "' + SECRET, encoding="utf-8")
    with pytest.raises(CredentialsError, match="not valid JSON") as caught:
        CliConfigCredentialsProvider(config_file=file, environ={})
    assert SECRET not in str(caught.value)


# -- the default chain --------------------------------------------------------------------


def chain(tmp_path: Path, environ: dict[str, str], **options: Any) -> DefaultCredentialsChain:
    options.setdefault("config_file", tmp_path / "no-config.json")
    options.setdefault("credentials_file", tmp_path / "no-credentials")
    environ.setdefault("VOLCENGINE_ECS_METADATA_DISABLED", "true")
    return DefaultCredentialsChain(environ=environ, **options)


async def test_the_environment_comes_first(tmp_path: Path) -> None:
    file = config_file(tmp_path, {"default": ak("AKprofile")})
    found = chain(
        tmp_path,
        {"VOLCENGINE_ACCESS_KEY": "AKenv", "VOLCENGINE_SECRET_KEY": "s"},
        config_file=file,
    )
    assert isinstance(found.providers[0], EnvironmentCredentialsProvider)
    assert (await found.load()).access_key_id == "AKenv"
    assert found.name == "default chain (environment (VOLCENGINE_ACCESS_KEY))"


async def test_the_order_is_environment_oidc_cli_file_then_instance_role(tmp_path: Path) -> None:
    legacy = tmp_path / "credentials"
    legacy.write_text("[default]\naccess_key_id = AKfile\nsecret_access_key = s\n")
    environ = {
        "VOLC_ACCESSKEY": "AKenv",
        "VOLC_SECRETKEY": "s",
        "VOLCENGINE_OIDC_ROLE_TRN": "trn:iam::1:role/r",
        "VOLCENGINE_OIDC_TOKEN_FILE": str(tmp_path / "token"),
        "VOLCENGINE_ECS_METADATA_DISABLED": "false",
        "VOLCENGINE_ECS_METADATA_ENDPOINT": LOOPBACK,
    }
    found = chain(
        tmp_path, environ, config_file=config_file(tmp_path, {"default": ak()}),
        credentials_file=legacy,
    )  # fmt: skip
    assert [provider.name.split(" ")[0] for provider in found.providers] == [
        "environment",
        "OIDC",
        "CLI",
        "credentials",
        "ECS",
    ]


async def test_the_provider_that_worked_is_remembered_and_failures_fall_through(
    tmp_path: Path,
) -> None:
    emulator = Emulator()
    emulator.add_instance_role("ecs-worker")
    # OIDC is configured but STS refuses its token: the chain goes on to the role.
    token = tmp_path / "token"
    write(token, "unknown-token")
    environ = {
        "VOLCENGINE_OIDC_ROLE_TRN": "trn:iam::1:role/r",
        "VOLCENGINE_OIDC_TOKEN_FILE": str(token),
        "VOLCENGINE_OIDC_STS_ENDPOINT": LOOPBACK,
        "VOLCENGINE_ECS_METADATA_DISABLED": "no",
        "VOLCENGINE_ECS_METADATA_ENDPOINT": LOOPBACK,
    }
    found = chain(tmp_path, environ, transport=emulator.transport(), clock=emulator.wall_clock)
    first = await found.load()
    assert isinstance(found.active, EcsRoleCredentialsProvider)
    assert found.current() is first
    assert found.reject(first) is True
    await found.load()
    # The remembered provider was asked first: the OIDC one was not tried again.
    assert emulator.count(action="imds:credentials") == 2
    assert emulator.count(action="AssumeRoleWithOIDC") == 1


async def test_when_nothing_works_every_provider_and_its_reason_is_listed(tmp_path: Path) -> None:
    environ = {
        "VOLCENGINE_OIDC_ROLE_TRN": "trn:iam::1:role/r",
        "VOLCENGINE_OIDC_TOKEN_FILE": str(tmp_path / "missing-token"),
        "VOLCENGINE_OIDC_STS_ENDPOINT": LOOPBACK,
    }
    found = chain(tmp_path, environ)
    with pytest.raises(CredentialsUnavailableError) as caught:
        await found.load()
    message = str(caught.value)
    assert message.startswith("no credentials found")
    for reason in (
        "OIDC trn:iam::1:role/r: the OIDC token file",
        "environment: VOLCENGINE_ACCESS_KEY/VOLCENGINE_SECRET_KEY and VOLC_ACCESSKEY",
        "CLI config: CLI config",
        "credentials file: ",
        "ECS instance role: disabled by VOLCENGINE_ECS_METADATA_DISABLED",
    ):
        assert reason in message


def test_no_configured_provider_fails_when_the_client_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("VOLC_ACCESSKEY", raising=False)
    monkeypatch.delenv("VOLC_SECRETKEY", raising=False)
    with pytest.raises(CredentialsUnavailableError, match="no credentials found") as caught:
        SegmentClient()
    assert ".volc" in str(caught.value) and "VOLC_ACCESSKEY" in str(caught.value)


def test_a_half_set_environment_stops_the_chain(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="VOLC_SECRETKEY is not"):
        chain(tmp_path, {"VOLC_ACCESSKEY": "AK"})


async def test_the_older_credentials_file_still_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("VOLC_ACCESSKEY", raising=False)
    monkeypatch.delenv("VOLC_SECRETKEY", raising=False)
    (tmp_path / ".volc").mkdir()
    (tmp_path / ".volc" / "credentials").write_text(
        f"[default]\naccess_key_id = {DEFAULT_CREDENTIALS.access_key_id}\n"
        f"secret_access_key = {DEFAULT_CREDENTIALS.secret_access_key}\n"
    )
    emulator = Emulator()
    emulator.add_task("a", "r", "t")
    async with SegmentClient(transport=emulator.transport(), clock=emulator.wall_clock) as client:
        await client.get_segment_task("a", "r", "t")
        assert "credentials file" in client._credentials.name


def test_the_suite_never_reaches_the_real_instance_metadata(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # tests/conftest.py: the chain skips the instance role, and even a provider made
    # directly defaults to a closed loopback port instead of the cloud's address.
    assert "100.96.0.96" not in EcsRoleCredentialsProvider().endpoint
    assert EcsRoleCredentialsProvider().endpoint.startswith("http://127.0.0.1:")
    monkeypatch.setenv("VOLC_ACCESSKEY", "AK")
    monkeypatch.setenv("VOLC_SECRETKEY", "s")
    chain = DefaultCredentialsChain()
    assert not [p for p in chain.providers if isinstance(p, EcsRoleCredentialsProvider)]
