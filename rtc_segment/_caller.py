"""The one HTTP path: limiter -> sign -> send -> classify -> retry.

Every request of the library goes through :meth:`Caller.call`. The layers above it
(``_actions``, ``_fanout``, ``_watch``, the ``SegmentClient`` facade) decide *what* to ask
and *when*; they depend on the small :class:`Calls` protocol, never on httpx.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import attrs
import httpx

from ._budget import Budget, OutOfTime
from ._compat import warm_up_http_stack
from ._credentials import Credentials
from ._errors import (
    ApiError,
    AuthenticationError,
    ClientClosedError,
    ClientTimeoutError,
    CredentialsError,
    RtcSegmentError,
    ThrottledError,
)
from ._instrumentation import CallDetails, CallObservation, active_call_hooks
from ._limiting import ActionLimiters, RateLimiter, bulk_gate
from ._models import ResponseMetadata, TaskKey
from ._providers import CredentialsProvider, StaticCredentialsProvider
from ._signing import Signer
from ._stats import ClientStats, Counters, RecentWaits, ThrottleEpisodes, limiter_scope
from ._version import __version__
from ._wire import NOT_SENT, AttemptFailed, DirectSender, classify, read_capped, transport_error

__all__ = ["Action", "Backoff", "Caller", "Calls", "Parse"]

logger = logging.getLogger("rtc_segment")
_T = TypeVar("_T")

Parse = Callable[[ResponseMetadata, Any, int, str, "TaskKey | None"], _T]
"""Turns a successful answer ``(metadata, Result, http_status, action, key)`` into a value,
or raises an :class:`RtcSegmentError` for an answer whose content is wrong (not retried)."""


@attrs.frozen
class Action:
    """One OpenAPI action: what the query names, how it is sent, and its ceiling."""

    name: str
    version: str
    method: str
    qps: float
    """The documented ceiling, per account."""


@attrs.frozen
class Backoff:
    """How long to wait between attempts: capped exponential backoff with full jitter.

    The wait before retry ``n`` (1-based) is uniform in ``[0, min(maximum, initial * 2**(n-1))]``.
    When the service says how long to wait (``Retry-After`` / ``retry-after-ms``), that is
    used instead, capped at ``retry_after_cap``.

    ``Backoff.disabled()`` never waits: the switch for tests.
    """

    initial: float = 0.2
    maximum: float = 10.0
    retry_after_cap: float = 30.0
    enabled: bool = True

    @classmethod
    def disabled(cls) -> Backoff:
        """A backoff that never sleeps (for tests)."""
        return cls(enabled=False)

    def delay(self, retry: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        if not self.enabled:
            return 0.0
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.retry_after_cap)
        return rng.uniform(0.0, min(self.maximum, self.initial * (2 ** (retry - 1))))


class Calls(Protocol):
    """What the layers above need of the HTTP path (``Caller`` provides it)."""

    @property
    def max_connections(self) -> int:
        """Upper bound of requests in flight."""
        ...

    def limiter_for(self, action: Action) -> RateLimiter:
        """The limiter the attempts of ``action`` wait on."""
        ...

    async def call(
        self,
        action: Action,
        *,
        query: Mapping[str, str],
        key: TaskKey | None,
        body: bytes = b"",
        parse: Parse[_T],
        retry_if_maybe_sent: bool = True,
        bulk: bool = False,
        deadline: float | None = None,
    ) -> _T:
        """Send one API request with pacing, signing and retries; see :meth:`Caller.call`."""
        ...


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Caller:
    """Sends API requests: paced, signed, retried, classified, counted.

    Owns the ``httpx.AsyncClient`` (connection pool), the signer, the per-action limiters
    and the counters. Arguments are validated by the facade (``SegmentClient``).
    """

    def __init__(
        self,
        credentials: CredentialsProvider,
        *,
        base_url: str,
        host: str,
        region: str,
        limiters: ActionLimiters,
        timeout: float,
        max_retries: int,
        backoff: Backoff,
        transport: httpx.AsyncBaseTransport | None,
        max_connections: int,
        clock: Callable[[], datetime] | None,
    ) -> None:
        self._host = host
        self._limiters = limiters
        self._max_retries = max_retries
        self._backoff = backoff
        self._clock = clock or _utc_now
        self._credentials = credentials
        # A fixed key is the signer's own; a provider's are passed per attempt.
        fixed = None
        if isinstance(credentials, StaticCredentialsProvider):
            fixed = credentials.credentials
        self._signer = Signer(fixed, region=region, service="rtc")
        url = httpx.URL(base_url)
        self._server = (url.host, url.port or (443 if url.scheme == "https" else 80))
        self._rng = random.Random()
        self._counters = Counters()
        # Bounds in-flight requests to the pool size, *before* the limiter: a request that
        # got its limiter slot must never then wait for a connection, or sends would bunch up.
        self._slots = asyncio.Semaphore(max_connections)
        self._max_connections = max_connections
        self._in_flight = 0
        self._waiting = 0
        self._waits = RecentWaits()
        self._throttle_episodes = ThrottleEpisodes()
        self._timeout = timeout
        # What an attempt typically takes: a retry that cannot finish in the deadline left
        # is not started.
        self._typical_round_trip = 0.0
        self._round_trips_seen = False
        self._http = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            follow_redirects=False,
            headers={
                "Accept": "application/json",
                # Decompressing is where a tiny answer becomes gigabytes (the size cap
                # counts decoded bytes); the answers are small, so ask for them plain.
                "Accept-Encoding": "identity",
                "User-Agent": f"rtc-segment/{__version__} httpx/{httpx.__version__}",
            },
        )
        self._sender = DirectSender(self._http, base_url)
        # httpcore mishandles a cancellation that lands while a request is on the wire: the
        # connection can stay checked out of its pool for good (encode/httpcore#1093), and
        # every cancelled call would shrink the pool. On httpcore's transport the exchange
        # therefore runs in a task of its own that the caller's cancellation does not reach:
        # the caller goes at once, the exchange finishes (within the timeout) and then gives
        # back its connection and its slot. aclose() ends any still in flight.
        self._shelter_exchanges = isinstance(self._sender.transport, httpx.AsyncHTTPTransport)
        self._orphans: set[asyncio.Future[Any]] = set()
        self._closed = False
        warm_up_http_stack()

    # -- lifecycle and introspection ---------------------------------------------------

    async def aclose(self) -> None:
        """Close the pool; requests of cancelled calls still on the wire are abandoned."""
        self._closed = True
        orphans = list(self._orphans)
        for exchange in orphans:
            exchange.cancel()
        if orphans:
            await asyncio.wait(orphans)
        await self._http.aclose()

    @property
    def closed(self) -> bool:
        """True after :meth:`aclose`."""
        return self._closed

    def check_open(self) -> None:
        """Raise :class:`ClientClosedError` after :meth:`aclose`."""
        if self._closed:
            raise ClientClosedError("this SegmentClient is closed")

    @property
    def stats(self) -> ClientStats:
        """A snapshot of the counters."""
        c = self._counters
        p50, p99 = self._waits.percentiles()
        return ClientStats(
            requests_sent=c.requests_sent,
            retries=c.retries,
            throttled=c.throttled,
            succeeded=c.succeeded,
            errors=dict(c.errors),
            in_flight=self._in_flight,
            limiter_wait_p50=p50,
            limiter_wait_p99=p99,
            waiting_for_limiter=self._waiting,
            limiter_rate=_rate_of(self._limiters.primary),
            limiter_scope=limiter_scope(self._limiters.primary),
        )

    @property
    def max_connections(self) -> int:
        """Upper bound of requests in flight."""
        return self._max_connections

    @property
    def transport(self) -> httpx.AsyncBaseTransport:
        """The httpx transport requests are handed to."""
        return self._sender.transport

    @property
    def signer(self) -> Signer:
        """The request signer."""
        return self._signer

    def limiter_for(self, action: Action) -> RateLimiter:
        """The limiter the attempts of ``action`` wait on."""
        return self._limiters.get(action.name, action.qps)

    async def exchanges_settled(self) -> None:
        """Wait until the exchanges of cancelled calls still on the wire have ended."""
        while self._orphans:
            await asyncio.wait(list(self._orphans))

    # -- the one HTTP path ---------------------------------------------------------------

    async def call(
        self,
        action: Action,
        *,
        query: Mapping[str, str],
        key: TaskKey | None,
        body: bytes = b"",
        parse: Parse[_T],
        retry_if_maybe_sent: bool = True,
        bulk: bool = False,
        deadline: float | None = None,
    ) -> _T:
        """Send one API request with pacing, signing and retries.

        Returns ``parse(metadata, Result, http_status, action, key)`` of the successful
        answer, or raises the typed error of the last attempt.

        Args:
            retry_if_maybe_sent: ``False`` for actions that are not idempotent: a failure
                after which the request may have reached the service is then raised at
                once, not retried.
            bulk: Part of a fan-out or watch: waits behind single calls at the limiter.
            deadline: Seconds the whole call may take (limiter, attempts, backoff);
                ``None`` for no bound. Raises :class:`DeadlineExceededError` when it runs out.

        The hooks in effect (those set with ``set_call_hooks``, the default telemetry) are
        told of the call, its limiter waits, its retries and its end (see
        ``_instrumentation``).
        """
        self.check_open()
        arguments = (action, query, key, body, parse, retry_if_maybe_sent, bulk, deadline)
        if not active_call_hooks():  # no hook in effect: nothing to tell, nothing built
            return await self._call(*arguments, None)
        details = CallDetails(action.name, key, bulk, *self._server)
        observation = CallObservation.start(details, asyncio.get_running_loop().time)
        if observation is None:
            return await self._call(*arguments, None)
        try:
            value = await self._call(*arguments, observation)
        except BaseException as error:
            observation.end(error)
            raise
        observation.end(None)
        return value

    async def _call(
        self,
        action: Action,
        query: Mapping[str, str],
        key: TaskKey | None,
        body: bytes,
        parse: Parse[_T],
        retry_if_maybe_sent: bool,
        bulk: bool,
        deadline: float | None,
        observation: CallObservation | None,
    ) -> _T:
        limiter = self.limiter_for(action)
        counters = self._counters
        clock = asyncio.get_running_loop().time
        budget = Budget(clock, deadline)
        attempt = 0
        resigned_for_clock = False
        refreshed_for_auth = False
        may_have_arrived = False
        last_error: RtcSegmentError | None = None
        while True:
            attempt += 1
            try:
                metadata, result, status = await self._attempt(
                    action, query, key, body, limiter, bulk, budget, observation
                )
            except OutOfTime as out:
                counters.errors["DeadlineExceededError"] += 1
                raise budget.exceeded(
                    action.name,
                    key,
                    attempt - (0 if out.sent else 1),
                    last_error,
                    ambiguous=may_have_arrived or out.sent,
                ) from None
            except CredentialsError as unavailable:
                # The provider could not supply credentials: nothing was sent.
                unavailable.action = unavailable.action or action.name
                unavailable.key = unavailable.key or key
                counters.errors[type(unavailable).__name__] += 1
                raise
            except AttemptFailed as failed:
                error = last_error = failed.error
                error.attempts = attempt
                may_have_arrived = may_have_arrived or (failed.sent and error.retryable)
                error.ambiguous = may_have_arrived
                if isinstance(error, ThrottledError):
                    counters.throttled += 1
                    _feed_back(limiter, "observe_throttle")
                    if self._throttle_episodes.throttled(clock()):
                        _warn_shared_quota(action, limiter)
                # A stale X-Date (e.g. a long wait between signing and arrival) is cured by
                # signing again; a skewed clock is not, and the second answer says so.
                clock_retry = (
                    isinstance(error, ApiError)
                    and error.code == "InvalidTimestamp"
                    and not resigned_for_clock
                )
                # Temporary credentials the service refused (expired or revoked token) are
                # cured by fetching new ones: once per call, never a loop.
                auth_retry = (
                    not clock_retry
                    and not refreshed_for_auth
                    and _refreshable_refusal(error)
                    and failed.credentials is not None
                    and self._credentials.reject(failed.credentials)
                )
                retry = (
                    clock_retry
                    or auth_retry
                    or (
                        error.retryable
                        and attempt <= self._max_retries
                        and (retry_if_maybe_sent or not failed.sent)
                    )
                )
                resigned_for_clock = resigned_for_clock or clock_retry
                refreshed_for_auth = refreshed_for_auth or auth_retry
                if not retry:
                    counters.errors[type(error).__name__] += 1
                    raise error from None
                delay = self._backoff.delay(attempt, failed.retry_after, self._rng)
                # Never start a retry that cannot finish within the deadline.
                if not budget.covers(delay + self._typical_round_trip):
                    counters.errors["DeadlineExceededError"] += 1
                    raise budget.exceeded(
                        action.name, key, attempt, error, ambiguous=may_have_arrived
                    ) from None
                logger.debug(
                    "%s attempt %d failed (%s); retrying in %.3f s",
                    action.name,
                    attempt,
                    type(error).__name__,
                    delay,
                )
                counters.retries += 1
                if observation is not None:
                    observation.retrying(attempt, error, delay)
                if delay > 0:
                    with budget.spending("backing_off"):
                        await asyncio.sleep(delay)
                continue
            if observation is not None:
                observation.answered(status, metadata.request_id)
            try:
                value = parse(metadata, result, status, action.name, key)
            except RtcSegmentError as error:
                error.attempts = attempt
                error.ambiguous = may_have_arrived
                counters.errors[type(error).__name__] += 1
                raise
            counters.succeeded += 1
            return value

    async def _attempt(
        self,
        action: Action,
        query: Mapping[str, str],
        key: TaskKey | None,
        body: bytes,
        limiter: RateLimiter,
        bulk: bool,
        budget: Budget,
        observation: CallObservation | None,
    ) -> tuple[ResponseMetadata, Any, int]:
        """One attempt: a slot, the limiter, a fresh signature, the exchange, the verdict."""
        # The hot path: fresh credentials are an attribute read. Only when the provider
        # has none usable does the call wait for a fetch -- before its limiter turn, so
        # no send slot is held meanwhile -- and no longer than its deadline.
        credentials = self._credentials.current()
        if credentials is None:
            with budget.spending("queued"):
                bound = budget.bound()
                try:
                    async with bound:
                        credentials = await self._credentials.load(timeout=budget.remaining())
                except TimeoutError:
                    if not bound.expired() and budget.covers(0.0):
                        raise
                    raise OutOfTime(sent=False) from None
        try:
            return await self._attempt_with(
                credentials, action, query, key, body, limiter, bulk, budget, observation
            )
        except AttemptFailed as failed:
            failed.credentials = failed.credentials or credentials
            raise

    async def _attempt_with(
        self,
        credentials: Credentials,
        action: Action,
        query: Mapping[str, str],
        key: TaskKey | None,
        body: bytes,
        limiter: RateLimiter,
        bulk: bool,
        budget: Budget,
        observation: CallObservation | None,
    ) -> tuple[ResponseMetadata, Any, int]:
        asked = budget.now()
        with budget.spending("queued"):
            bound = budget.bound()
            try:
                async with bound:
                    await self._take_turn(limiter, bulk)
            except TimeoutError:
                if not bound.expired():  # the limiter's own, not the deadline
                    raise
                raise OutOfTime(sent=False) from None
        # The round trip counts from here, the moment the limiter counted the send: any
        # delay before the request leaves (signing, a stalled process) delays its arrival
        # too, and the limiter's margin for it must see that.
        turn = budget.now()
        self._waits.add(budget.clock, turn, turn - asked)
        if observation is not None:
            observation.limiter_waited(turn - asked)
        handed_off = False
        try:
            self.check_open()
            if not budget.covers(0.0):  # the turn came just as the deadline ran out
                raise OutOfTime(sent=False)
            # Signed after the wait, so X-Date is fresh on every attempt; the credentials
            # too, if a refresh landed meanwhile.
            credentials = self._credentials.current() or credentials
            # (Every action of the API is at the root: the signer's default path, "/".)
            signed = self._signer.sign(
                method=action.method,
                host=self._host,
                query=query,
                body=body,
                content_type="application/json" if action.method != "GET" else None,
                now=self._clock(),
                credentials=credentials,
            )
            request = self._sender.request(action.method, signed.query_string, signed.headers, body)
            self._counters.requests_sent += 1
            # The attempt may take `timeout`, connect to last byte, and no longer than the
            # call's deadline leaves.
            limit = budget.cap(self._timeout)
            with budget.spending("in_attempts"):
                if not self._shelter_exchanges:
                    bound = asyncio.timeout(limit)
                    try:
                        async with bound:
                            response, payload = await self._exchange(request, action.name, key)
                    except TimeoutError:
                        if not bound.expired():
                            raise
                        raise self._timed_out(action.name, key, budget, limit) from None
                else:
                    exchange = asyncio.ensure_future(
                        self._exchange(request, action.name, key, limit=limit)
                    )
                    try:
                        response, payload = await asyncio.wait_for(asyncio.shield(exchange), limit)
                    except (asyncio.CancelledError, TimeoutError) as stopped:
                        # See __init__: the exchange ends on its own (its body read is
                        # bounded too) and gives its connection and slot back then; the
                        # caller goes at once.
                        handed_off = True
                        self._orphans.add(exchange)
                        exchange.add_done_callback(self._orphan_done)
                        if isinstance(stopped, TimeoutError):
                            raise self._timed_out(action.name, key, budget, limit) from None
                        raise
            elapsed = budget.now() - turn
        finally:
            if not handed_off:
                self._release_slot()
        if self._round_trips_seen:
            self._typical_round_trip += (elapsed - self._typical_round_trip) * _ROUND_TRIP_WEIGHT
        else:
            self._typical_round_trip = elapsed
        self._round_trips_seen = True
        _feed_back(limiter, "observe_round_trip", elapsed)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "%s %s -> HTTP %d in %.1f ms",
                action.name,
                "" if key is None else "/".join(key),
                response.status_code,
                elapsed * 1000,
            )
        try:
            return classify(response, payload, action.name, key)
        except AttemptFailed as failed:
            failed.credentials = credentials  # the ones signed with, should they be refused
            raise

    async def _take_turn(self, limiter: RateLimiter, bulk: bool) -> None:
        """Take a connection slot, then the limiter's next send time.

        The slot comes first: a request that got its send time must never then wait for a
        connection, or sends would bunch up. Bulk work (fan-out, watching) queues at a gate
        first, so at most one bulk request waits at the limiter and a single call made
        meanwhile is next after it, not after the whole fan-out.
        """
        self._waiting += 1
        try:
            if bulk:
                async with bulk_gate(limiter):
                    await self._take_slot_and_send_time(limiter)
            else:
                await self._take_slot_and_send_time(limiter)
        finally:
            self._waiting -= 1

    async def _take_slot_and_send_time(self, limiter: RateLimiter) -> None:
        await self._slots.acquire()
        self._in_flight += 1
        try:
            await limiter.acquire()
        except BaseException:
            self._release_slot()
            raise

    def _timed_out(
        self, action: str, key: TaskKey | None, budget: Budget, limit: float
    ) -> Exception:
        if limit < self._timeout:  # the deadline, not the timeout, cut it short
            return OutOfTime(sent=True)
        return AttemptFailed(
            ClientTimeoutError(
                f"no complete answer within the {self._timeout:g} s timeout",
                action=action,
                key=key,
            ),
            sent=True,
        )

    def _release_slot(self) -> None:
        self._in_flight -= 1
        self._slots.release()

    async def _exchange(
        self,
        request: httpx.Request,
        action: str,
        key: TaskKey | None,
        *,
        limit: float | None = None,
    ) -> tuple[httpx.Response, bytes]:
        """Send one request, read its answer (capped, within ``limit`` s) and close it."""
        try:
            response = await self._sender.send(request)
        except httpx.HTTPError as exc:
            raise AttemptFailed(
                transport_error(exc, action, key), sent=not isinstance(exc, NOT_SENT)
            ) from None
        try:
            # Cancelling a body read is safe for httpcore (the answer is closed below);
            # this bounds an exchange whose caller has already gone on.
            async with asyncio.timeout(limit):
                payload = await read_capped(response, action, key)
        finally:
            await response.aclose()
        return response, payload

    def _orphan_done(self, exchange: asyncio.Future[Any]) -> None:
        self._orphans.discard(exchange)
        self._release_slot()
        if not exchange.cancelled():
            exchange.exception()  # retrieved: its caller is gone, the outcome does not matter


# Authentication failures that new credentials can cure; not a clock problem
# (InvalidTimestamp) nor missing permissions (AccessDenied*, LackPolicy).
_REFRESHABLE_CODES = frozenset(
    {
        "InvalidSecurityToken",
        "InvalidAccessKey",
        "InvalidClientTokenId",
        "InvalidCredential",
        "SignatureDoesNotMatch",
        "ExpiredToken",
    }
)


def _refreshable_refusal(error: RtcSegmentError) -> bool:
    return isinstance(error, AuthenticationError) and error.code in _REFRESHABLE_CODES


# How fast the typical round trip follows new ones (an exponential moving average).
_ROUND_TRIP_WEIGHT = 0.1


def _rate_of(limiter: RateLimiter) -> float | None:
    """The rate ``limiter`` sends at now, if it says (``LocalRateLimiter.rate`` does)."""
    rate = getattr(limiter, "rate", None)
    return float(rate) if isinstance(rate, (int, float)) and not isinstance(rate, bool) else None


def _warn_shared_quota(action: Action, limiter: RateLimiter) -> None:
    """Throttles persist although the limiter paces within the ceiling: say why, once."""
    rate = _rate_of(limiter)
    logger.warning(
        "%s answers keep being throttled although this client paces within the %g QPS "
        "ceiling: something else likely uses the account's quota -- another consumer of "
        "the account (another program, SDK or tool), or processes on other hosts without a "
        "shared limiter (RedisRateLimiter). The limiter (scope: %s) backs off while they go "
        "on%s.",
        action.name,
        limiter.qps,
        limiter_scope(limiter) or "unknown",
        "" if rate is None else f"; it sends {rate:.1f} requests/s now",
    )


def _feed_back(limiter: RateLimiter, hook: str, *args: float) -> None:
    """Tell the limiter what the path did, if it learns from that (this package's do)."""
    observe = getattr(limiter, hook, None)
    if observe is not None:
        observe(*args)
