"""The CLI's config profiles and the default chain of credentials providers.

The default chain follows the official SDK's order, with our older file slotted in:

1. the environment (``VOLCENGINE_ACCESS_KEY``/``VOLCENGINE_SECRET_KEY``, then
   ``VOLC_ACCESSKEY``/``VOLC_SECRETKEY``);
2. OIDC web identity from the environment (``VOLCENGINE_OIDC_ROLE_TRN`` and
   ``VOLCENGINE_OIDC_TOKEN_FILE``);
3. the CLI's ``~/.volcengine/config.json`` profile;
4. ``~/.volc/credentials`` (the older ``volcengine`` SDK's file, which this library has
   always read): after the official sources, before the instance role, so that a machine
   configured for it keeps working and an explicit file still wins over an ambient role;
5. the ECS instance role, unless ``VOLCENGINE_ECS_METADATA_DISABLED=true``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from ._credentials import Credentials, default_credentials_path
from ._errors import CredentialsError, CredentialsUnavailableError, RtcSegmentError
from ._providers import (
    CredentialsProvider,
    EnvironmentCredentialsProvider,
    StaticCredentialsProvider,
)
from ._remote_credentials import (
    ENV_ECS_DISABLED,
    AssumeRoleCredentialsProvider,
    EcsRoleCredentialsProvider,
    OidcCredentialsProvider,
    ecs_disabled,
    role_trn,
)

__all__ = ["CliConfigCredentialsProvider", "DefaultCredentialsChain"]

logger = logging.getLogger("rtc_segment")

ENV_CLI_CONFIG_FILE = "VOLCENGINE_CLI_CONFIG_FILE"
ENV_PROFILE = "VOLCENGINE_PROFILE"


def default_cli_config_path() -> Path:
    """The CLI's config file: ``~/.volcengine/config.json``."""
    return Path.home() / ".volcengine" / "config.json"


def _field(profile: Mapping[str, Any], name: str) -> str:
    value = profile.get(name)
    return value.strip() if isinstance(value, str) else ""


class CliConfigCredentialsProvider:
    """Credentials of a profile in the Volcengine CLI's ``config.json``.

    The file is ``config_file``, else ``VOLCENGINE_CLI_CONFIG_FILE``, else
    ``~/.volcengine/config.json``; the profile is ``profile``, else ``VOLCENGINE_PROFILE``,
    else the file's ``current``, else ``default``. Modes: ``AK`` (or none), ``StsToken``
    (a session token is required), ``RamRoleArn`` (AssumeRole of ``role-name`` in
    ``account-id`` with the profile's key), ``OIDC`` (``role-trn`` and
    ``oidc-token-file``) and ``EcsRole`` (``role-name``). ``sso`` is not supported: its
    error says so.

    Args:
        profile: The profile to use.
        config_file: The config file.
        sts_endpoint: STS for ``RamRoleArn``/``OIDC`` (host or URL); default the official one.
        metadata_endpoint: Instance metadata for ``EcsRole``.
        transport: An httpx transport for STS and metadata (e.g. an ``Emulator``'s).
        clock: The current time (aware UTC datetime).
        environ: The environment to read; ``os.environ`` when ``None``.

    Raises:
        CredentialsUnavailableError: The file or the profile does not exist.
        CredentialsError: The file is unreadable or malformed, or the profile lacks a
            value its mode needs, or its mode is unsupported (never showing a secret).
    """

    def __init__(
        self,
        profile: str | None = None,
        *,
        config_file: str | os.PathLike[str] | None = None,
        sts_endpoint: str | None = None,
        metadata_endpoint: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], datetime] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        file = Path(config_file or env.get(ENV_CLI_CONFIG_FILE) or default_cli_config_path())
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CredentialsUnavailableError(f"CLI config {str(file)!r} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CredentialsError(
                f"CLI config {str(file)!r} cannot be read ({type(exc).__name__})"
            ) from None
        problem: str | None
        try:
            config = json.loads(text)
        except ValueError as exc:
            # json's message holds only a position (never the text around it).
            problem = f"CLI config {str(file)!r} is not valid JSON ({exc})"
        else:
            problem = None if isinstance(config, dict) else f"{str(file)!r} is not a JSON object"
        if problem is not None:
            raise CredentialsError(problem)
        name = profile or env.get(ENV_PROFILE) or _field(config, "current") or "default"
        profiles = config.get("profiles")
        found = profiles.get(name) if isinstance(profiles, dict) else None
        if not isinstance(found, dict):
            raise CredentialsUnavailableError(f"CLI config {str(file)!r} has no profile {name!r}")
        self._profile: str = name
        self._file: Path = file
        self._mode: str = _field(found, "mode") or "AK"
        self._delegate: CredentialsProvider = self._delegate_for(
            found, sts_endpoint, metadata_endpoint, transport, clock, env
        )

    def _delegate_for(
        self,
        profile: Mapping[str, Any],
        sts_endpoint: str | None,
        metadata_endpoint: str | None,
        transport: httpx.AsyncBaseTransport | None,
        clock: Callable[[], datetime] | None,
        env: Mapping[str, str],
    ) -> CredentialsProvider:
        mode = self._mode.lower()

        def need(*names: str) -> list[str]:
            missing = [name for name in names if not _field(profile, name)]
            if missing:
                raise CredentialsError(
                    f"{self.name}: mode {self._mode} needs {' and '.join(missing)}"
                )
            return [_field(profile, name) for name in names]

        if mode in ("ak", "ststoken"):
            names = ["access-key", "secret-key"] + (["session-token"] if mode == "ststoken" else [])
            values = need(*names)
            token = _field(profile, "session-token") or None
            return StaticCredentialsProvider(Credentials(values[0], values[1], token))
        if mode == "ramrolearn":
            access_key, secret, role, account = need(
                "access-key", "secret-key", "role-name", "account-id"
            )
            return AssumeRoleCredentialsProvider(
                Credentials(access_key, secret),
                role_trn(account, role),
                endpoint=sts_endpoint,
                transport=transport,
                clock=clock,
            )
        if mode == "oidc":
            trn, token_file = need("role-trn", "oidc-token-file")
            return OidcCredentialsProvider(
                trn,
                token_file,
                policy=_field(profile, "policy") or None,
                endpoint=sts_endpoint,
                transport=transport,
                clock=clock,
                environ={},
            )
        if mode == "ecsrole":
            (role,) = need("role-name")
            return EcsRoleCredentialsProvider(
                role, endpoint=metadata_endpoint, transport=transport, clock=clock, environ=env
            )
        if mode == "sso":
            raise CredentialsError(
                f"{self.name}: mode sso is not supported; run `ve sso login` and use a "
                "profile of mode AK, StsToken, RamRoleArn, OIDC or EcsRole"
            )
        raise CredentialsError(f"{self.name}: unsupported mode {self._mode[:40]!r}")

    @property
    def name(self) -> str:
        """``CLI profile <name> (<mode>)``."""
        return f"CLI profile {self._profile!r} ({getattr(self, '_mode', '?')})"

    @property
    def delegate(self) -> CredentialsProvider:
        """The provider the profile's mode uses."""
        return self._delegate

    def current(self) -> Credentials | None:
        """See :meth:`CredentialsProvider.current`."""
        return self._delegate.current()

    async def load(self, *, timeout: float | None = None) -> Credentials:
        """See :meth:`CredentialsProvider.load`."""
        return await self._delegate.load(timeout=timeout)

    def reject(self, credentials: Credentials) -> bool:
        """See :meth:`CredentialsProvider.reject`."""
        return self._delegate.reject(credentials)

    def __repr__(self) -> str:
        return f"CliConfigCredentialsProvider({self._profile!r}, file={str(self._file)!r})"


class _CredentialsFileProvider(StaticCredentialsProvider):
    """The ``[default]`` key of ``~/.volc/credentials``."""

    __slots__ = ("_file",)

    def __init__(self, file: Path) -> None:
        found = Credentials.from_file(file)
        if found is None:
            raise CredentialsUnavailableError(
                f"{str(file)!r} does not exist or has no [default] section"
            )
        super().__init__(found)
        self._file = file

    @property
    def name(self) -> str:
        return f"credentials file {str(self._file)!r}"


_Candidate = tuple[str, Callable[[], CredentialsProvider]]


class DefaultCredentialsChain:
    """The providers the official SDK tries, in its order; the first that works is used.

    Order: environment, OIDC from the environment, the CLI config profile,
    ``~/.volc/credentials``, the ECS instance role (skipped when
    ``VOLCENGINE_ECS_METADATA_DISABLED=true``). Which sources are *configured* is decided
    when the chain is made (local reads only); which one *works* at the first
    :meth:`load`. The provider that worked is asked first from then on; if it fails, the
    others are tried again. When none works, :class:`CredentialsUnavailableError` lists
    every provider and why.

    ``SegmentClient()`` without ``credentials`` uses this chain.

    Args:
        profile: The CLI profile (default: ``VOLCENGINE_PROFILE``, the file's ``current``,
            ``default``).
        config_file: The CLI config file.
        credentials_file: The older INI file; default ``~/.volc/credentials``.
        sts_endpoint: STS for CLI profiles (host or URL); OIDC from the environment uses
            ``VOLCENGINE_OIDC_STS_ENDPOINT``.
        metadata_endpoint: Instance metadata (default ``VOLCENGINE_ECS_METADATA_ENDPOINT``,
            else the real service).
        transport: An httpx transport for STS and metadata (e.g. an ``Emulator``'s).
        clock: The current time (aware UTC datetime).
        environ: The environment to read; ``os.environ`` when ``None``.

    Raises:
        CredentialsUnavailableError: No provider is configured at all.
        CredentialsError: A source is misconfigured (e.g. only one of a key pair is set).
    """

    def __init__(
        self,
        *,
        profile: str | None = None,
        config_file: str | os.PathLike[str] | None = None,
        credentials_file: str | os.PathLike[str] | None = None,
        sts_endpoint: str | None = None,
        metadata_endpoint: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], datetime] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        remote: dict[str, Any] = {"transport": transport, "clock": clock}
        legacy = Path(credentials_file) if credentials_file else default_credentials_path()
        candidates: list[_Candidate] = [
            ("environment", lambda: EnvironmentCredentialsProvider(env)),
            ("OIDC (environment)", lambda: OidcCredentialsProvider(environ=env, **remote)),
            (
                "CLI config",
                lambda: CliConfigCredentialsProvider(
                    profile,
                    config_file=config_file,
                    sts_endpoint=sts_endpoint,
                    metadata_endpoint=metadata_endpoint,
                    environ=env,
                    **remote,
                ),
            ),
            ("credentials file", lambda: _CredentialsFileProvider(legacy)),
        ]
        self._providers: list[CredentialsProvider] = []
        self._skipped: list[str] = []
        for label, make in candidates:
            try:
                self._providers.append(make())
            except CredentialsUnavailableError as exc:
                self._skipped.append(f"{label}: {exc.message}")
        if ecs_disabled(env):
            self._skipped.append(f"ECS instance role: disabled by {ENV_ECS_DISABLED}")
        else:
            self._providers.append(
                EcsRoleCredentialsProvider(endpoint=metadata_endpoint, environ=env, **remote)
            )
        if not self._providers:
            raise CredentialsUnavailableError(self._report([]))
        self._active: CredentialsProvider | None = None
        self._choosing: asyncio.Lock | None = None

    @property
    def name(self) -> str:
        """``default chain`` and the provider in use, once one worked."""
        return "default chain" + (f" ({self._active.name})" if self._active else "")

    @property
    def providers(self) -> list[CredentialsProvider]:
        """The configured providers, in the order they are tried."""
        return list(self._providers)

    @property
    def active(self) -> CredentialsProvider | None:
        """The provider that worked last (``None`` before the first :meth:`load`)."""
        return self._active

    def current(self) -> Credentials | None:
        """The active provider's current credentials (``None`` before one was chosen)."""
        active = self._active
        return None if active is None else active.current()

    async def load(self, *, timeout: float | None = None) -> Credentials:
        """The credentials of the first provider that works (the last that worked first)."""
        active = self._active
        if active is not None:
            credentials = active.current()
            if credentials is not None:
                return credentials
        if self._choosing is None:
            self._choosing = asyncio.Lock()
        async with asyncio.timeout(timeout):
            async with self._choosing:
                return await self._choose()

    async def _choose(self) -> Credentials:
        failures: list[str] = []
        active = self._active
        ordered = (
            self._providers
            if active is None
            else [active] + [provider for provider in self._providers if provider is not active]
        )
        for provider in ordered:
            try:
                credentials = await provider.load()
            except RtcSegmentError as exc:
                failures.append(f"{provider.name}: {exc.message}")
                continue
            if provider is not self._active:
                logger.info("credentials from %s", provider.name)
                self._active = provider
            return credentials
        raise CredentialsUnavailableError(self._report(failures))

    def reject(self, credentials: Credentials) -> bool:
        """Passed on to the active provider."""
        active = self._active
        return False if active is None else active.reject(credentials)

    def _report(self, failures: list[str]) -> str:
        tried = [*failures, *self._skipped]
        return "no credentials found: none were passed as an argument; " + "; ".join(tried)

    def __repr__(self) -> str:
        names = ", ".join(provider.name for provider in self._providers)
        return f"DefaultCredentialsChain([{names}], active={self._active and self._active.name!r})"
