"""Tests for rtc_segment._credentials: validation, redaction, and where credentials come from."""

from __future__ import annotations

import hashlib
from pathlib import Path

import attrs
import pytest

from rtc_segment._credentials import Credentials
from rtc_segment._errors import CredentialsError

AK = "AKLTtestAccessKeyId"
SK = "c2VjcmV0LXRoYXQtbXVzdC1uZXZlci1sZWFr"
TOKEN = "STS-token-that-must-never-leak"


def write_ini(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- construction and validation -------------------------------------------------------------


def test_fields_are_kept_and_instances_are_frozen() -> None:
    creds = Credentials(AK, SK, TOKEN)
    assert (creds.access_key_id, creds.secret_access_key, creds.session_token) == (AK, SK, TOKEN)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        creds.access_key_id = "other"  # type: ignore[misc]


def test_empty_session_token_means_no_token() -> None:
    assert Credentials(AK, SK, "").session_token is None
    assert Credentials(AK, SK).session_token is None
    assert Credentials(AK, SK, "") == Credentials(AK, SK)


@pytest.mark.parametrize(
    ("kwargs", "error", "argument"),
    [
        ({"access_key_id": "", "secret_access_key": SK}, ValueError, "access_key_id"),
        ({"access_key_id": AK, "secret_access_key": ""}, ValueError, "secret_access_key"),
        ({"access_key_id": 123, "secret_access_key": SK}, TypeError, "access_key_id"),
        ({"access_key_id": AK, "secret_access_key": b"sk"}, TypeError, "secret_access_key"),
        ({"access_key_id": AK, "secret_access_key": SK, "session_token": 5}, TypeError, "token"),
    ],
)
def test_invalid_arguments_are_rejected_by_name(
    kwargs: dict[str, object], error: type[Exception], argument: str
) -> None:
    with pytest.raises(error, match=argument):
        Credentials(**kwargs)  # type: ignore[arg-type]


def test_repr_and_str_show_the_key_id_but_never_the_secret_or_token() -> None:
    creds = Credentials(AK, SK, TOKEN)
    for text in (repr(creds), str(creds), f"{creds}", repr([creds]), repr({"c": creds})):
        assert AK in text
        assert SK not in text
        assert TOKEN not in text
        assert "***" in text


def test_repr_without_token_says_so() -> None:
    assert "session_token=None" in repr(Credentials(AK, SK))
    assert "session_token='***'" in repr(Credentials(AK, SK, TOKEN))


def test_account_fingerprint_is_stable_short_and_secret_free() -> None:
    creds = Credentials(AK, SK)
    fingerprint = creds.account_fingerprint
    assert fingerprint == hashlib.sha256(AK.encode()).hexdigest()[:16]
    assert len(fingerprint) == 16
    assert AK not in fingerprint
    # Depends on the access key only: rotating the secret keeps the same account bucket.
    assert Credentials(AK, "another-secret", TOKEN).account_fingerprint == fingerprint
    assert Credentials(AK + "2", SK).account_fingerprint != fingerprint


# --- environment -------------------------------------------------------------------------------


def test_from_environment_reads_the_sdk_variables() -> None:
    env = {"VOLC_ACCESSKEY": AK, "VOLC_SECRETKEY": SK, "VOLC_SESSION_TOKEN": TOKEN}
    assert Credentials.from_environment(env) == Credentials(AK, SK, TOKEN)


def test_from_environment_without_token() -> None:
    env = {"VOLC_ACCESSKEY": AK, "VOLC_SECRETKEY": SK, "VOLC_SESSION_TOKEN": ""}
    assert Credentials.from_environment(env) == Credentials(AK, SK)


@pytest.mark.parametrize("env", [{}, {"VOLC_ACCESSKEY": "", "VOLC_SECRETKEY": ""}, {"HOME": "/"}])
def test_from_environment_returns_none_when_unset(env: dict[str, str]) -> None:
    assert Credentials.from_environment(env) is None


def test_from_environment_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLC_ACCESSKEY", AK)
    monkeypatch.setenv("VOLC_SECRETKEY", SK)
    monkeypatch.delenv("VOLC_SESSION_TOKEN", raising=False)
    assert Credentials.from_environment() == Credentials(AK, SK)


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({"VOLC_ACCESSKEY": AK}, "VOLC_SECRETKEY"),
        ({"VOLC_SECRETKEY": SK}, "VOLC_ACCESSKEY"),
    ],
)
def test_half_configured_environment_is_an_error(env: dict[str, str], missing: str) -> None:
    with pytest.raises(CredentialsError) as info:
        Credentials.from_environment(env)
    text = str(info.value) + repr(info.value)
    assert missing in text
    assert SK not in text


# --- file --------------------------------------------------------------------------------------


def test_from_file_reads_the_default_section(tmp_path: Path) -> None:
    path = write_ini(
        tmp_path / "credentials",
        f"[default]\naccess_key_id = {AK}\nsecret_access_key = {SK}\n",
    )
    assert Credentials.from_file(path) == Credentials(AK, SK)
    assert Credentials.from_file(str(path)) == Credentials(AK, SK)


def test_from_file_reads_token_and_named_profile(tmp_path: Path) -> None:
    path = write_ini(
        tmp_path / "credentials",
        "[default]\naccess_key_id = AKdefault\nsecret_access_key = skdefault\n\n"
        f"[prod]\naccess_key_id = {AK}\nsecret_access_key = {SK}\nsession_token = {TOKEN}\n",
    )
    assert Credentials.from_file(path, profile="prod") == Credentials(AK, SK, TOKEN)
    assert Credentials.from_file(path) == Credentials("AKdefault", "skdefault")


def test_from_file_takes_percent_signs_literally(tmp_path: Path) -> None:
    secret = "abc%def%(x)s"
    path = write_ini(
        tmp_path / "credentials", f"[default]\naccess_key_id={AK}\nsecret_access_key={secret}\n"
    )
    creds = Credentials.from_file(path)
    assert creds is not None
    assert creds.secret_access_key == secret


def test_from_file_missing_file_or_section_is_none(tmp_path: Path) -> None:
    assert Credentials.from_file(tmp_path / "absent") is None
    path = write_ini(
        tmp_path / "credentials", "[other]\naccess_key_id = a\nsecret_access_key = b\n"
    )
    assert Credentials.from_file(path) is None


def test_from_file_defaults_to_home_volc_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".volc").mkdir()
    write_ini(
        tmp_path / ".volc" / "credentials",
        f"[default]\naccess_key_id = {AK}\nsecret_access_key = {SK}\n",
    )
    assert Credentials.from_file() == Credentials(AK, SK)


@pytest.mark.parametrize(
    "text",
    [
        f"access_key_id = {AK}\nsecret_access_key = {SK}\n",  # no section header
        f"[default]\naccess_key_id = {AK}\n{SK}\n",  # a line that is not key = value
        f"[default]\naccess_key_id = {AK}\naccess_key_id = {SK}\n",  # duplicate option
    ],
)
def test_malformed_file_names_the_path_never_the_contents(tmp_path: Path, text: str) -> None:
    path = write_ini(tmp_path / "credentials", text)
    with pytest.raises(CredentialsError) as info:
        Credentials.from_file(path)
    error = info.value
    assert str(path) in str(error)
    assert "malformed" in str(error)
    for shown in (str(error), repr(error), *map(str, error.args)):
        assert SK not in shown
    # configparser's own message quotes the line: it must not ride along in the traceback.
    assert error.__cause__ is None
    assert error.__suppress_context__


def test_section_without_secret_is_an_error(tmp_path: Path) -> None:
    path = write_ini(tmp_path / "credentials", f"[default]\naccess_key_id = {AK}\n")
    with pytest.raises(CredentialsError, match="secret_access_key"):
        Credentials.from_file(path)


def test_unreadable_files_are_errors(tmp_path: Path) -> None:
    binary = tmp_path / "binary"
    binary.write_bytes(b"[default]\naccess_key_id = \xff\xfe\n")
    with pytest.raises(CredentialsError, match="UTF-8"):
        Credentials.from_file(binary)
    with pytest.raises(CredentialsError, match="cannot be read"):
        Credentials.from_file(tmp_path)  # a directory


# --- resolution order --------------------------------------------------------------------------


@pytest.fixture
def ini_file(tmp_path: Path) -> Path:
    return write_ini(
        tmp_path / "credentials", "[default]\naccess_key_id = AKfile\nsecret_access_key = skfile\n"
    )


ENV = {"VOLC_ACCESSKEY": "AKenv", "VOLC_SECRETKEY": "skenv"}


def test_resolve_prefers_the_explicit_argument(ini_file: Path) -> None:
    given = Credentials(AK, SK)
    assert Credentials.resolve(given, environ=ENV, path=ini_file) is given


def test_resolve_uses_environment_before_file(ini_file: Path) -> None:
    assert Credentials.resolve(environ=ENV, path=ini_file) == Credentials("AKenv", "skenv")


def test_resolve_falls_back_to_the_file(ini_file: Path) -> None:
    assert Credentials.resolve(environ={}, path=ini_file) == Credentials("AKfile", "skfile")


def test_resolve_without_any_source_names_all_three(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(CredentialsError) as info:
        Credentials.resolve(environ={}, path=missing)
    text = str(info.value)
    assert "argument" in text
    assert "VOLC_ACCESSKEY" in text
    assert "VOLC_SECRETKEY" in text
    assert str(missing) in text


def test_resolve_rejects_a_non_credentials_argument() -> None:
    with pytest.raises(TypeError, match="credentials"):
        Credentials.resolve((AK, SK), environ={})  # type: ignore[arg-type]
