"""Temporary credentials from STS (AssumeRole, AssumeRoleWithOIDC) and the instance role.

These providers reach STS and the instance-metadata service with their own small HTTP
exchanges (signed with ``_signing``, checked and classified with ``_wire``), never through
``_caller``: that stays the one paced path of the RTC actions, and asks these providers for
credentials per attempt. Each exchange has its own timeout and a few tries with backoff; a
caller waiting for a fetch is bounded by its own deadline as well (see ``_providers``).

Secrets (secret keys, session tokens, the OIDC token) are never formatted into a message
or a log line; the OIDC token file is read at each fetch and never copied anywhere.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
import urllib.parse
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from ._credentials import Credentials
from ._errors import (
    CredentialsUnavailableError,
    ResponseFormatError,
    RtcSegmentError,
    ServerError,
)
from ._providers import (
    CredentialsProvider,
    IssuedCredentials,
    RefreshingCredentialsProvider,
    as_provider,
)
from ._signing import Signer, canonical_query
from ._version import __version__
from ._wire import AttemptFailed, check_endpoint, classify, read_capped

__all__ = [
    "ECS_METADATA_ENDPOINT",
    "AssumeRoleCredentialsProvider",
    "EcsRoleCredentialsProvider",
    "OidcCredentialsProvider",
    "role_trn",
    "sts_base_url",
]

logger = logging.getLogger("rtc_segment")

#: The STS host the official SDK calls.
STS_HOST = "sts.volcengineapi.com"
STS_VERSION = "2018-01-01"
#: The instance-metadata service (IMDSv2). Tests must never reach it: they point the
#: provider at a loopback stand-in or disable it (``VOLCENGINE_ECS_METADATA_DISABLED``).
ECS_METADATA_ENDPOINT = "http://100.96.0.96"

ENV_OIDC_ROLE_TRN = "VOLCENGINE_OIDC_ROLE_TRN"
ENV_OIDC_TOKEN_FILE = "VOLCENGINE_OIDC_TOKEN_FILE"
ENV_OIDC_SESSION_NAME = "VOLCENGINE_OIDC_ROLE_SESSION_NAME"
ENV_OIDC_POLICY = "VOLCENGINE_OIDC_ROLE_POLICY"
ENV_OIDC_STS_ENDPOINT = "VOLCENGINE_OIDC_STS_ENDPOINT"
ENV_ECS_ROLE = "VOLCENGINE_ECS_METADATA"
ENV_ECS_DISABLED = "VOLCENGINE_ECS_METADATA_DISABLED"
ENV_ECS_ENDPOINT = "VOLCENGINE_ECS_METADATA_ENDPOINT"

_IMDS_TOKEN_PATH = "/latest/api/token"
_IMDS_ROLES_PATH = "/volcstack/latest/iam/security_credentials"
_IMDS_TTL_HEADER = "X-volc-ecs-metadata-token-ttl-seconds"
_IMDS_TOKEN_HEADER = "X-volc-ecs-metadata-token"
_IMDS_TTL_SECONDS = "21600"
_HEADERS = {
    "Accept": "application/json",
    "Accept-Encoding": "identity",
    "User-Agent": f"rtc-segment/{__version__} httpx/{httpx.__version__}",
}


def role_trn(account_id: str, role_name: str) -> str:
    """``trn:iam::<account_id>:role/<role_name>``, the role name STS expects."""
    return f"trn:iam::{account_id}:role/{role_name}"


def sts_base_url(endpoint: str | None, *, what: str = "STS endpoint") -> str:
    """The base URL of STS: a host (https) or a full URL (http only to loopback).

    Raises:
        ValueError: Not a usable host or URL (the message names ``what``).
    """
    if endpoint is None or endpoint == "":
        return f"https://{STS_HOST}"
    if not isinstance(endpoint, str):
        raise TypeError(f"{what} must be a str, not {type(endpoint).__name__}")
    url = endpoint if "://" in endpoint else f"https://{endpoint}"
    try:
        return check_endpoint(url, False)[0]
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None


def _parse_time(value: object, what: str) -> datetime:
    if not isinstance(value, str):
        raise CredentialsUnavailableError(f"{what}: the answer has no expiry time")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise CredentialsUnavailableError(
            f"{what}: the expiry time {value[:40]!r} is not ISO 8601"
        ) from None
    if parsed.tzinfo is None:  # the services always say; assume UTC if one does not
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _issued(document: object, expiry_field: str, what: str) -> IssuedCredentials:
    """Credentials from ``{AccessKeyId, SecretAccessKey, SessionToken, <expiry_field>}``."""
    if not isinstance(document, Mapping):
        raise CredentialsUnavailableError(f"{what}: the answer holds no credentials")
    fields = [document.get(name) for name in ("AccessKeyId", "SecretAccessKey")]
    if not all(isinstance(value, str) and value for value in fields):
        raise CredentialsUnavailableError(f"{what}: the answer lacks AccessKeyId/SecretAccessKey")
    token = document.get("SessionToken")
    try:
        credentials = Credentials(
            str(fields[0]), str(fields[1]), token if isinstance(token, str) else None
        )
    except (TypeError, ValueError) as exc:  # the messages name the field, never the value
        raise CredentialsUnavailableError(f"{what}: unusable credentials ({exc})") from None
    return IssuedCredentials(credentials, _parse_time(document.get(expiry_field), what))


class _Remote:
    """A few bounded HTTP exchanges with one service (STS or instance metadata)."""

    def __init__(
        self,
        base_url: str,
        *,
        transport: httpx.AsyncBaseTransport | None,
        timeout: float,
        attempts: int,
        what: str,
        trust_env: bool,
    ) -> None:
        if not isinstance(timeout, int | float) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number, got {timeout!r}")
        if not isinstance(attempts, int) or attempts < 1:
            raise ValueError(f"attempts must be an int >= 1, got {attempts!r}")
        self.base_url = base_url
        self._transport = transport
        self._timeout = float(timeout)
        self._attempts = attempts
        self._what = what
        self._trust_env = trust_env
        self._rng = random.Random()

    async def exchange(
        self, make_request: Callable[[], httpx.Request], judge: Callable[[int, bytes], Any]
    ) -> Any:
        """Send ``make_request()`` (made afresh per try) and return ``judge(status, body)``.

        ``judge`` raises :class:`AttemptFailed` for a bad answer (retried when its error is
        retryable). Transport failures and timeouts are retried; the last failure is
        raised as :class:`CredentialsUnavailableError`.
        """
        problem = ""
        for attempt in range(1, self._attempts + 1):
            if attempt > 1:
                await asyncio.sleep(self._rng.uniform(0.0, min(2.0, 0.2 * 2 ** (attempt - 1))))
            request = make_request()
            try:
                async with asyncio.timeout(self._timeout):
                    status, payload = await self._send(request)
            except TimeoutError:
                problem = f"no answer within {self._timeout:g} s"
                continue
            except httpx.HTTPError as exc:
                problem = f"request failed ({type(exc).__name__})"
                continue
            except AttemptFailed as failed:  # the body was refused (compressed, too large)
                problem = str(failed.error)
                continue
            try:
                return judge(status, payload)
            except AttemptFailed as failed:
                problem = str(failed.error)
                if not failed.error.retryable:
                    break
        raise CredentialsUnavailableError(
            f"{self._what} at {self.base_url}: {problem} "
            f"(after {attempt} {'try' if attempt == 1 else 'tries'})"
        )

    async def _send(self, request: httpx.Request) -> tuple[int, bytes]:
        if self._transport is not None:
            return await _round_trip(self._transport, request)
        # Fetches are rare (about one an hour): a connection of their own, closed after.
        # STS goes through the proxy the environment names, as the RTC requests do; the
        # metadata service is on the instance's own link, never behind a proxy.
        async with httpx.AsyncClient(trust_env=self._trust_env, follow_redirects=False) as http:
            response = await http.send(request, stream=True)
            try:
                payload = await read_capped(response, "credentials", None)
            finally:
                await response.aclose()
            return response.status_code, payload

    def request(
        self,
        method: str,
        path: str,
        query_string: str,
        headers: Mapping[str, str],
        body: bytes = b"",
    ) -> httpx.Request:
        """A request to ``base_url + path?query_string`` (the query already encoded)."""
        url = f"{self.base_url}{path}" + (f"?{query_string}" if query_string else "")
        timeout = {"connect": self._timeout, "read": self._timeout}
        timeout.update(write=self._timeout, pool=self._timeout)
        return httpx.Request(
            method,
            url,
            headers=[*headers.items(), *_HEADERS.items()],
            content=body or None,
            extensions={"timeout": timeout},
        )


async def _round_trip(
    transport: httpx.AsyncBaseTransport, request: httpx.Request
) -> tuple[int, bytes]:
    response = await transport.handle_async_request(request)
    response.request = request
    try:
        payload = await read_capped(response, "credentials", None)
    finally:
        await response.aclose()
    return response.status_code, payload


def _sts_judge(action: str) -> Callable[[int, bytes], Any]:
    def judge(status: int, payload: bytes) -> Any:
        response = httpx.Response(status)
        _, result, _ = classify(response, payload, action, None)
        return result

    return judge


class _StsProvider(RefreshingCredentialsProvider):
    """What the two STS providers share: endpoint, region, duration, the exchange."""

    def __init__(
        self,
        *,
        endpoint: str | None,
        region: str,
        duration_seconds: int,
        role_session_name: str | None,
        policy: str | None,
        refresh_buffer: float,
        timeout: float,
        attempts: int,
        transport: httpx.AsyncBaseTransport | None,
        clock: Callable[[], datetime] | None,
    ) -> None:
        super().__init__(refresh_buffer=refresh_buffer, clock=clock)
        if not isinstance(duration_seconds, int) or not 900 <= duration_seconds <= 43200:
            raise ValueError(f"duration_seconds must be 900-43200, got {duration_seconds!r}")
        if policy is not None and not isinstance(policy, str):
            raise TypeError(f"policy must be a str or None, not {type(policy).__name__}")
        self._remote = _Remote(
            sts_base_url(endpoint),
            transport=transport,
            timeout=timeout,
            attempts=attempts,
            what="STS",
            trust_env=True,
        )
        self._region = region
        self._duration = duration_seconds
        self._session_name = role_session_name
        self._policy = policy
        self._host = httpx.URL(self._remote.base_url).netloc.decode("ascii")

    @property
    def endpoint(self) -> str:
        """The STS base URL."""
        return self._remote.base_url

    def _params(self, trn: str) -> dict[str, str]:
        params = {
            "DurationSeconds": str(self._duration),
            "RoleSessionName": self._session_name or f"rtc-segment-{time.time_ns() // 1000}",
            "RoleTrn": trn,
        }
        if self._policy:
            params["Policy"] = self._policy
        return params


class AssumeRoleCredentialsProvider(_StsProvider):
    """Temporary credentials of a role, assumed with a long-term key (STS ``AssumeRole``).

    The ``RamRoleArn`` mode of a CLI profile. Requests are GETs signed with ``source``
    (service ``sts``).

    Args:
        source: The long-term key (or a provider of it) that may assume the role.
        role_trn: ``trn:iam::<account id>:role/<role name>`` (see :func:`role_trn`).
        role_session_name: Names the session in the role's audit trail; default
            ``rtc-segment-<microseconds>``.
        duration_seconds: How long each set lasts (900-43200; 3600).
        policy: An inline policy narrowing the role's permissions (JSON text).
        endpoint: STS: a host (https) or a URL (http only to loopback);
            default ``sts.volcengineapi.com``.
        region: Signing region of STS (``cn-north-1``).
        refresh_buffer: Seconds before expiry to refresh (60).
        timeout: Seconds each STS exchange may take (5).
        attempts: Tries per fetch (3), with backoff between them.
        transport: An httpx transport for STS (e.g. an ``Emulator``'s).
        clock: The current time (aware UTC datetime), for expiry and ``X-Date``.
    """

    def __init__(
        self,
        source: Credentials | CredentialsProvider,
        role_trn: str,
        *,
        role_session_name: str | None = None,
        duration_seconds: int = 3600,
        policy: str | None = None,
        endpoint: str | None = None,
        region: str = "cn-north-1",
        refresh_buffer: float = 60.0,
        timeout: float = 5.0,
        attempts: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        super().__init__(
            endpoint=endpoint,
            region=region,
            duration_seconds=duration_seconds,
            role_session_name=role_session_name,
            policy=policy,
            refresh_buffer=refresh_buffer,
            timeout=timeout,
            attempts=attempts,
            transport=transport,
            clock=clock,
        )
        if not isinstance(role_trn, str) or not role_trn.startswith("trn:"):
            raise ValueError(f"role_trn must be trn:iam::<account>:role/<name>, got {role_trn!r}")
        self._source = as_provider(source)
        self._role_trn = role_trn

    @property
    def name(self) -> str:
        """``AssumeRole <role trn>``."""
        return f"AssumeRole {self._role_trn}"

    def __repr__(self) -> str:
        return f"AssumeRoleCredentialsProvider({self._role_trn!r}, endpoint={self.endpoint!r})"

    async def fetch(self) -> IssuedCredentials:
        source = await self._source.load()
        signer = Signer(source, region=self._region, service="sts")
        query = {"Action": "AssumeRole", "Version": STS_VERSION, **self._params(self._role_trn)}

        def make() -> httpx.Request:
            signed = signer.sign(
                method="GET", host=self._host, path="/", query=query, now=self._clock()
            )
            return self._remote.request("GET", "/", signed.query_string, signed.headers)

        result = await self._remote.exchange(make, _sts_judge("AssumeRole"))
        what = f"{self.name}: STS AssumeRole"
        found = result.get("Credentials") if isinstance(result, Mapping) else None
        return _issued(found, "ExpiredTime", what)


class OidcCredentialsProvider(_StsProvider):
    """Temporary credentials for a Kubernetes workload identity (STS ``AssumeRoleWithOIDC``).

    Each fetch reads the projected OIDC token from ``token_file`` afresh (the kubelet
    rotates it) and POSTs it, unsigned, to STS. Arguments left out come from the
    environment the official SDK reads.

    Args:
        role_trn: The role to assume; default ``VOLCENGINE_OIDC_ROLE_TRN``.
        token_file: The OIDC token file; default ``VOLCENGINE_OIDC_TOKEN_FILE``.
        role_session_name: Default ``VOLCENGINE_OIDC_ROLE_SESSION_NAME``, else
            ``rtc-segment-<microseconds>``.
        policy: Inline policy; default ``VOLCENGINE_OIDC_ROLE_POLICY``.
        endpoint: STS host or URL; default ``VOLCENGINE_OIDC_STS_ENDPOINT``, else
            ``sts.volcengineapi.com``.
        duration_seconds: How long each set lasts (900-43200; 3600).
        region: STS region (``cn-beijing``, as the official SDK).
        refresh_buffer: Seconds before expiry to refresh (60).
        timeout: Seconds each STS exchange may take (5).
        attempts: Tries per fetch (3).
        transport: An httpx transport for STS.
        clock: The current time (aware UTC datetime).
        environ: The environment to read; ``os.environ`` when ``None``.

    Raises:
        CredentialsUnavailableError: No role or no token file is configured.
    """

    def __init__(
        self,
        role_trn: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
        *,
        role_session_name: str | None = None,
        policy: str | None = None,
        endpoint: str | None = None,
        duration_seconds: int = 3600,
        region: str = "cn-beijing",
        refresh_buffer: float = 60.0,
        timeout: float = 5.0,
        attempts: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], datetime] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        trn = role_trn or env.get(ENV_OIDC_ROLE_TRN, "")
        file = token_file or env.get(ENV_OIDC_TOKEN_FILE, "")
        if not trn or not file:
            missing = [
                name
                for name, value in ((ENV_OIDC_ROLE_TRN, trn), (ENV_OIDC_TOKEN_FILE, file))
                if not value
            ]
            raise CredentialsUnavailableError(f"{' and '.join(missing)} not set")
        super().__init__(
            endpoint=endpoint or env.get(ENV_OIDC_STS_ENDPOINT) or None,
            region=region,
            duration_seconds=duration_seconds,
            role_session_name=role_session_name or env.get(ENV_OIDC_SESSION_NAME) or None,
            policy=policy if policy is not None else (env.get(ENV_OIDC_POLICY) or None),
            refresh_buffer=refresh_buffer,
            timeout=timeout,
            attempts=attempts,
            transport=transport,
            clock=clock,
        )
        self._role_trn = trn
        self._token_file = Path(file)

    @property
    def name(self) -> str:
        """``OIDC <role trn>``."""
        return f"OIDC {self._role_trn}"

    def __repr__(self) -> str:
        return (
            f"OidcCredentialsProvider({self._role_trn!r}, token_file={str(self._token_file)!r}, "
            f"endpoint={self.endpoint!r})"
        )

    def _read_token(self) -> str:
        try:
            token = self._token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise CredentialsUnavailableError(
                f"{self.name}: the OIDC token file {str(self._token_file)!r} cannot be read "
                f"({type(exc).__name__})"
            ) from None
        if not token:
            raise CredentialsUnavailableError(
                f"{self.name}: the OIDC token file {str(self._token_file)!r} is empty"
            )
        return token

    async def fetch(self) -> IssuedCredentials:
        form = {**self._params(self._role_trn), "OIDCToken": self._read_token()}
        body = urllib.parse.urlencode(form).encode()
        query = canonical_query({"Action": "AssumeRoleWithOIDC", "Version": STS_VERSION})
        headers = {"Content-Type": "application/x-www-form-urlencoded"}

        def make() -> httpx.Request:
            return self._remote.request("POST", "/", query, headers, body)

        result = await self._remote.exchange(make, _sts_judge("AssumeRoleWithOIDC"))
        what = f"{self.name}: STS AssumeRoleWithOIDC"
        found = result.get("Credentials") if isinstance(result, Mapping) else None
        return _issued(found, "Expiration", what)


def _metadata_base_url(endpoint: str) -> str:
    if endpoint == ECS_METADATA_ENDPOINT:
        return endpoint  # the one plain-http address that is not loopback: the metadata service
    base_url, _ = check_endpoint(endpoint, False)
    return base_url


class EcsRoleCredentialsProvider(RefreshingCredentialsProvider):
    """The role attached to this ECS instance, from instance metadata (IMDSv2).

    Each fetch asks the metadata service for a session token, then (unless given) the
    instance's first role name, then that role's credentials.

    Args:
        role_name: The role; default ``VOLCENGINE_ECS_METADATA``, else the first one the
            metadata service lists.
        endpoint: The metadata service; default ``VOLCENGINE_ECS_METADATA_ENDPOINT``, else
            ``http://100.96.0.96``. Any other plain-http address must be loopback.
        refresh_buffer: Seconds before expiry to refresh (300, as the official SDK).
        timeout: Seconds each exchange may take (1).
        attempts: Tries per exchange (3).
        transport: An httpx transport (e.g. an ``Emulator``'s).
        clock: The current time (aware UTC datetime).
        environ: The environment to read; ``os.environ`` when ``None``.
    """

    def __init__(
        self,
        role_name: str | None = None,
        *,
        endpoint: str | None = None,
        refresh_buffer: float = 300.0,
        timeout: float = 1.0,
        attempts: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], datetime] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(refresh_buffer=refresh_buffer, clock=clock)
        env = os.environ if environ is None else environ
        self._role = role_name or env.get(ENV_ECS_ROLE, "").strip() or None
        chosen = endpoint or env.get(ENV_ECS_ENDPOINT) or ECS_METADATA_ENDPOINT
        base_url = _metadata_base_url(chosen)
        self._remote = _Remote(
            base_url,
            transport=transport,
            timeout=timeout,
            attempts=attempts,
            what="instance metadata",
            trust_env=False,
        )

    @property
    def name(self) -> str:
        """``ECS instance role [<role>]``."""
        return "ECS instance role" + (f" {self._role}" if self._role else "")

    @property
    def endpoint(self) -> str:
        """The metadata service's base URL."""
        return self._remote.base_url

    def __repr__(self) -> str:
        return f"EcsRoleCredentialsProvider(role_name={self._role!r}, endpoint={self.endpoint!r})"

    async def fetch(self) -> IssuedCredentials:
        remote = self._remote

        def make_token_request() -> httpx.Request:
            ttl = {_IMDS_TTL_HEADER: _IMDS_TTL_SECONDS}
            return remote.request("GET", _IMDS_TOKEN_PATH, "", ttl)

        token: str = await remote.exchange(make_token_request, _text("session token"))
        if not token.isascii() or not token.isprintable():
            raise CredentialsUnavailableError(f"{self.name}: unusable metadata session token")
        headers = {_IMDS_TOKEN_HEADER: token}
        role = self._role
        if role is None:

            def make_roles_request() -> httpx.Request:
                return remote.request("GET", _IMDS_ROLES_PATH, "type=user", headers)

            role = _first_role(await remote.exchange(make_roles_request, _text("role list")))
            if role is None:
                raise CredentialsUnavailableError(f"{self.name}: no role is attached")
        path = f"{_IMDS_ROLES_PATH}/{urllib.parse.quote(role, safe='')}"

        def make_credentials_request() -> httpx.Request:
            return remote.request("POST", path, "", headers)

        text = await remote.exchange(make_credentials_request, _text("credentials"))
        try:
            document = json.loads(text)
        except ValueError:
            document = None
        return _issued(document, "ExpiredTime", f"{self.name}: instance metadata")


def _text(what: str) -> Callable[[int, bytes], str]:
    def judge(status: int, payload: bytes) -> str:
        if status != 200:
            error = _metadata_error(status, what)
            raise AttemptFailed(error, sent=True)
        return payload.decode("utf-8", "replace").strip()

    return judge


def _metadata_error(status: int, what: str) -> RtcSegmentError:
    message = f"the {what} request was answered HTTP {status}"
    if status >= 500 or status == 429:
        return ServerError(message, http_status=status)  # transient: tried again
    return ResponseFormatError(message, http_status=status)


def _first_role(text: str) -> str | None:
    try:
        roles: Any = json.loads(text)
    except ValueError:
        roles = text.splitlines()
    if isinstance(roles, Mapping):
        roles = roles.get("RoleName") or roles.get("roles") or []
    if isinstance(roles, str):
        roles = [roles]
    if not isinstance(roles, list):
        return None
    names = [str(role).strip() for role in roles if str(role).strip()]
    if len(names) > 1:
        logger.warning(
            "several roles are attached to this instance; using %r (set %s to choose)",
            names[0],
            ENV_ECS_ROLE,
        )
    return names[0] if names else None


def ecs_disabled(environ: Mapping[str, str]) -> bool:
    """Whether ``VOLCENGINE_ECS_METADATA_DISABLED`` turns the instance role off."""
    return environ.get(ENV_ECS_DISABLED, "").strip().lower() in ("1", "true", "yes", "on")
