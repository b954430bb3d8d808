"""Credentials providers: what the HTTP path asks, per attempt, for the key to sign with.

A :class:`CredentialsProvider` answers two questions:

* :meth:`~CredentialsProvider.current` -- synchronous, no lock, no I/O: the credentials to
  sign with *now*, or ``None`` when they must be fetched first. This is the hot path: every
  attempt asks it, so while the credentials are fresh it is an attribute read and a clock
  read.
* :meth:`~CredentialsProvider.load` -- the slow path, awaited only when ``current()`` said
  ``None``: fetch (single-flight: however many calls wait, one fetch runs) and return them.

and is told one thing: :meth:`~CredentialsProvider.reject` -- the service refused these
credentials (expired or revoked token); a refreshing provider then fetches new ones.

:class:`StaticCredentialsProvider` serves one fixed :class:`Credentials`;
:class:`RefreshingCredentialsProvider` is the base of every provider of temporary
credentials (STS, instance role): it refreshes ``refresh_buffer`` seconds before expiry in
the background while the old credentials still serve, and only makes calls wait when they
have (nearly) run out.

Each value handed out is one immutable :class:`Credentials`: the key id, the secret and the
session token of a signature always come from the same object, so a refresh can never mix
two generations into one signature.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

import attrs

from ._credentials import ENV_ACCESS_KEY, ENV_SECRET_KEY, ENV_SESSION_TOKEN, Credentials
from ._errors import CredentialsError, CredentialsUnavailableError

__all__ = [
    "OFFICIAL_ENV_ACCESS_KEY",
    "OFFICIAL_ENV_SECRET_KEY",
    "OFFICIAL_ENV_SESSION_TOKEN",
    "CredentialsProvider",
    "EnvironmentCredentialsProvider",
    "IssuedCredentials",
    "RefreshingCredentialsProvider",
    "StaticCredentialsProvider",
    "as_provider",
]

logger = logging.getLogger("rtc_segment")

#: The official SDK's variable names, read before our older ``VOLC_*`` ones.
OFFICIAL_ENV_ACCESS_KEY = "VOLCENGINE_ACCESS_KEY"
OFFICIAL_ENV_SECRET_KEY = "VOLCENGINE_SECRET_KEY"
OFFICIAL_ENV_SESSION_TOKEN = "VOLCENGINE_SESSION_TOKEN"


def utc_now() -> datetime:
    """The current time, aware UTC (the default clock of every provider)."""
    return datetime.now(UTC)


@runtime_checkable
class CredentialsProvider(Protocol):
    """Where a client gets the credentials it signs each attempt with.

    ``SegmentClient(credentials=...)`` takes any object with these members; the library's
    providers are :class:`StaticCredentialsProvider`, :class:`EnvironmentCredentialsProvider`,
    the providers of temporary credentials (OIDC, AssumeRole, CLI profiles, instance role)
    and :class:`DefaultCredentialsChain`.
    """

    @property
    def name(self) -> str:
        """A short description for messages and logs (never a secret)."""
        ...

    def current(self) -> Credentials | None:
        """The credentials to sign with now, or ``None`` when :meth:`load` must fetch them.

        Called on every attempt: must not block, lock or do I/O.
        """
        ...

    async def load(self, *, timeout: float | None = None) -> Credentials:
        """The credentials to sign with, fetched first if needed.

        Args:
            timeout: Seconds the caller may wait (its deadline); ``None``: the provider's own
                bounds only. A fetch that outlives it keeps running for the next caller.

        Raises:
            CredentialsUnavailableError: They could not be obtained.
            TimeoutError: ``timeout`` ran out first.
        """
        ...

    def reject(self, credentials: Credentials) -> bool:
        """The service refused ``credentials`` (e.g. an expired or revoked session token).

        Returns:
            Whether a retry may get different credentials (``False`` for a fixed key, where
            retrying cannot help).
        """
        ...


class StaticCredentialsProvider:
    """One fixed :class:`Credentials` for the client's life (a long-term key, or a session
    token you manage yourself).

    Args:
        credentials: The key to sign with.
    """

    __slots__ = ("_credentials",)

    def __init__(self, credentials: Credentials) -> None:
        if not isinstance(credentials, Credentials):
            raise TypeError(f"credentials must be Credentials, not {type(credentials).__name__}")
        self._credentials = credentials

    @property
    def name(self) -> str:
        """``static key <access key id>``."""
        return f"static key {self._credentials.access_key_id}"

    @property
    def credentials(self) -> Credentials:
        """The fixed credentials."""
        return self._credentials

    def current(self) -> Credentials:
        """The fixed credentials."""
        return self._credentials

    async def load(self, *, timeout: float | None = None) -> Credentials:
        """The fixed credentials (no I/O)."""
        return self._credentials

    def reject(self, credentials: Credentials) -> bool:
        """``False``: a fixed key stays what it is."""
        return False

    def __repr__(self) -> str:
        return f"StaticCredentialsProvider({self._credentials!r})"


def credentials_from_environment(environ: Mapping[str, str]) -> tuple[Credentials, str] | None:
    """Credentials from the official names, else from ``VOLC_*``; with the names used.

    Raises:
        CredentialsError: One of a pair is set without the other.
    """
    for access_name, secret_name, token_name in (
        (OFFICIAL_ENV_ACCESS_KEY, OFFICIAL_ENV_SECRET_KEY, OFFICIAL_ENV_SESSION_TOKEN),
        (ENV_ACCESS_KEY, ENV_SECRET_KEY, ENV_SESSION_TOKEN),
    ):
        access_key_id = environ.get(access_name, "")
        secret = environ.get(secret_name, "")
        if not access_key_id and not secret:
            continue
        if not access_key_id or not secret:
            missing = access_name if not access_key_id else secret_name
            present = secret_name if not access_key_id else access_name
            raise CredentialsError(f"{present} is set in the environment but {missing} is not")
        return Credentials(access_key_id, secret, environ.get(token_name) or None), access_name
    return None


class EnvironmentCredentialsProvider(StaticCredentialsProvider):
    """The key in the environment, read once when the provider is made.

    ``VOLCENGINE_ACCESS_KEY``/``VOLCENGINE_SECRET_KEY`` (+ ``VOLCENGINE_SESSION_TOKEN``), the
    official SDK's names, are read first; then the older ``VOLC_ACCESSKEY``/``VOLC_SECRETKEY``
    (+ ``VOLC_SESSION_TOKEN``).

    Args:
        environ: The mapping to read; ``os.environ`` when ``None``.

    Raises:
        CredentialsUnavailableError: Neither pair is set.
        CredentialsError: One variable of a pair is set without the other (a mistake worth
            reporting rather than silently skipping).
    """

    __slots__ = ("_variable",)

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        found = credentials_from_environment(os.environ if environ is None else environ)
        if found is None:
            raise CredentialsUnavailableError(
                f"{OFFICIAL_ENV_ACCESS_KEY}/{OFFICIAL_ENV_SECRET_KEY} and "
                f"{ENV_ACCESS_KEY}/{ENV_SECRET_KEY} are not set"
            )
        super().__init__(found[0])
        self._variable = found[1]

    @property
    def name(self) -> str:
        """``environment (<variable>)``."""
        return f"environment ({self._variable})"

    def __repr__(self) -> str:
        return f"EnvironmentCredentialsProvider({self._variable}: {self._credentials!r})"


def as_provider(credentials: Credentials | CredentialsProvider) -> CredentialsProvider:
    """``credentials`` as a provider (a :class:`Credentials` becomes a static one).

    Raises:
        TypeError: It is neither.
    """
    if isinstance(credentials, Credentials):
        return StaticCredentialsProvider(credentials)
    if isinstance(credentials, CredentialsProvider):
        return credentials
    raise TypeError(
        "credentials must be a Credentials, a CredentialsProvider or None, "
        f"not {type(credentials).__name__}"
    )


@attrs.frozen(repr=False)
class IssuedCredentials:
    """Temporary credentials as an issuer (STS, instance metadata) handed them out.

    Args:
        credentials: The key, with its session token.
        expires_at: When they stop working (an aware datetime).
    """

    credentials: Credentials
    expires_at: datetime = attrs.field()

    @expires_at.validator
    def _aware(self, _attribute: object, value: datetime) -> None:
        if not isinstance(value, datetime) or value.utcoffset() is None:
            raise ValueError("expires_at must be a timezone-aware datetime")

    def __repr__(self) -> str:
        return f"IssuedCredentials({self.credentials!r}, expires_at={self.expires_at.isoformat()})"


#: Backoff of a background refresh that failed: first wait, cap (seconds).
_RETRY_INITIAL = 1.0
_RETRY_CAP = 30.0


class RefreshingCredentialsProvider:
    """Base of the providers of temporary credentials: caching, refresh, single flight.

    Subclasses implement :meth:`fetch`. Credentials are refreshed once
    ``refresh_buffer`` seconds or less remain: in the background while they still serve
    (calls go on signing with them), and with calls waiting only in the last
    ``min(5, refresh_buffer / 2)`` seconds -- or when none were fetched yet, or the service
    rejected them. However many calls wait, one fetch runs at a time. A background refresh
    that fails is logged (WARNING) and tried again after a backoff; the old credentials
    keep serving until they run out.

    Args:
        refresh_buffer: Seconds before expiry at which to refresh.
        clock: The current time (aware UTC datetime); injectable for tests. Expiry times
            from the issuer are compared with it.
    """

    def __init__(
        self, *, refresh_buffer: float, clock: Callable[[], datetime] | None = None
    ) -> None:
        if not isinstance(refresh_buffer, int | float) or not 0 <= refresh_buffer <= 3600:
            raise ValueError(f"refresh_buffer must be 0-3600 seconds, got {refresh_buffer!r}")
        self._refresh_buffer = float(refresh_buffer)
        self._clock = clock or utc_now
        # POSIX seconds now: time.time for the real clock (20x cheaper than building a
        # datetime on every attempt), else from the injected clock.
        self._now: Callable[[], float] = time.time if clock is None else lambda: clock().timestamp()
        self._current: Credentials | None = None
        # POSIX seconds: refresh in the background after _refresh_at, wait after _usable_until.
        self._refresh_at = 0.0
        self._usable_until = 0.0
        self._expires_at: datetime | None = None
        self._fetching: asyncio.Task[Credentials] | None = None
        self._failures = 0
        self._next_try = 0.0
        self._fetches = 0
        self._rng = random.Random()

    # -- what subclasses provide ----------------------------------------------------------

    @property
    def name(self) -> str:
        """A short description for messages and logs."""
        return type(self).__name__

    async def fetch(self) -> IssuedCredentials:
        """Fetch new credentials from the issuer; what a subclass implements.

        Called by the base class only (one at a time); bound it with timeouts and tries
        of its own. Raise :class:`CredentialsUnavailableError` with a message that names
        no secret when it fails.

        Returns:
            The credentials and when they expire.
        """
        raise NotImplementedError

    # -- the protocol ---------------------------------------------------------------------

    @property
    def expires_at(self) -> datetime | None:
        """When the credentials in use expire (``None`` before the first fetch)."""
        return self._expires_at

    @property
    def fetches(self) -> int:
        """How many fetches were started (each is one STS or metadata exchange)."""
        return self._fetches

    def current(self) -> Credentials | None:
        """The cached credentials while usable; starts a background refresh when due."""
        credentials = self._current
        if credentials is None:
            return None
        now = self._now()
        if now < self._refresh_at:
            return credentials
        if now >= self._usable_until:
            return None
        if self._fetching is None and now >= self._next_try:
            # Outside a running loop there is nothing to run it on: load() refreshes.
            with contextlib.suppress(RuntimeError):
                self._start_fetch()
        return credentials

    async def load(self, *, timeout: float | None = None) -> Credentials:
        """The credentials, fetched first (single flight) when none are usable."""
        credentials = self.current()
        if credentials is not None:
            return credentials
        fetching = self._fetching or self._start_fetch()
        bound = asyncio.timeout(timeout)
        try:
            async with bound:
                # Shielded: a caller that gives up leaves the fetch to the others.
                return await asyncio.shield(fetching)
        except CredentialsError:
            raise
        except TimeoutError:
            if bound.expired():  # the caller's time, not the fetch's own failure
                raise
            raise CredentialsUnavailableError(f"{self.name}: the fetch timed out") from None
        except Exception as exc:
            raise CredentialsUnavailableError(f"{self.name}: {_describe(exc)}") from None

    def reject(self, credentials: Credentials) -> bool:
        """Stop using ``credentials`` if they are the current ones; always ``True``."""
        if credentials is self._current:
            logger.info("%s: credentials refused by the service; refreshing", self.name)
            self._usable_until = 0.0
            self._refresh_at = 0.0
            self._next_try = 0.0
        return True

    # -- refreshing -----------------------------------------------------------------------

    def _start_fetch(self) -> asyncio.Task[Credentials]:
        task = asyncio.get_running_loop().create_task(self._refresh())
        self._fetching = task
        self._fetches += 1
        task.add_done_callback(self._fetch_done)
        return task

    async def _refresh(self) -> Credentials:
        issued = await self.fetch()
        credentials = issued.credentials
        expires = issued.expires_at.timestamp()
        buffer = self._refresh_buffer
        self._current = credentials
        self._expires_at = issued.expires_at
        self._usable_until = expires - min(5.0, buffer / 2)
        self._refresh_at = expires - buffer
        left = expires - self._now()
        if left <= buffer:
            logger.warning(
                "%s: the new credentials last %.0f s, not more than the %.0f s refresh "
                "buffer; every call will refresh them",
                self.name,
                left,
                buffer,
            )
        return credentials

    def _fetch_done(self, task: asyncio.Task[Credentials]) -> None:
        self._fetching = None
        if task.cancelled():
            return
        error = task.exception()  # retrieved here, so never "never retrieved"
        if error is None:
            self._failures = 0
            self._next_try = 0.0
            return
        self._failures += 1
        wait = min(_RETRY_CAP, _RETRY_INITIAL * 2 ** (self._failures - 1))
        wait *= 0.5 + self._rng.random() / 2
        now = self._now()
        self._next_try = now + wait
        if self._current is not None and now < self._usable_until:
            logger.warning(
                "%s: refreshing the credentials failed (%s); the current ones serve for "
                "another %.0f s, next try in %.1f s",
                self.name,
                _describe(error),
                self._usable_until - now,
                wait,
            )


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
