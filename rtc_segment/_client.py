"""SegmentClient: the public facade. It checks arguments and wires the layers below.

Behaviour lives below: the one HTTP path in ``_caller``, the per-action rules in
``_actions``, fan-out in ``_fanout``, watching in ``_watch``. See ``docs/architecture.md``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Literal

import httpx

from ._actions import (
    ACTIONS,
    DEFAULT_API_VERSION,
    GET_SEGMENT_TASK,
    SegmentActions,
    check_api_version,
    start_segment_body,
    stop_segment_body,
    update_segment_body,
)
from ._aiohttp import HTTP_BACKENDS, HttpBackend, aiohttp_transport
from ._caller import Backoff, Caller
from ._chain import DefaultCredentialsChain
from ._credentials import Credentials
from ._endpoints import DEFAULT_ENDPOINT
from ._fanout import OutcomeStream, gather_outcomes
from ._limiting import ActionLimiters, RateLimiter
from ._models import (
    ActionResult,
    Control,
    SegmentTask,
    StartOutcome,
    StorageConfig,
    Stream,
    TargetStreams,
    TaskKey,
    TaskOutcome,
)
from ._other_actions import call_action
from ._providers import CredentialsProvider, StaticCredentialsProvider, as_provider
from ._scheduling import KeyLike, check_deadline
from ._signing import check_scope
from ._stats import ClientStats
from ._validation import check_int, check_number, task_key
from ._watch import TaskWatch, wait_for, watch_one
from ._wire import check_endpoint

__all__ = ["SegmentClient"]


Keys = Iterable[KeyLike] | AsyncIterator[KeyLike]


class SegmentClient:
    """Asyncio client for the Volcengine RTC segment-task API.

    Use it as an async context manager (or call :meth:`aclose`). One client per process is
    the cheapest (one connection pool), but several are safe: clients of one account made
    without a ``limiter`` share one limiter per action in the process, so together they
    never exceed an action's ceiling -- a web app may build a client per request.

    Args:
        credentials: A :class:`Credentials` (a fixed key), or a
            :class:`CredentialsProvider` asked on every attempt (e.g.
            :class:`OidcCredentialsProvider`, whose temporary credentials are refreshed
            before they expire). ``None`` uses :class:`DefaultCredentialsChain`: the
            environment (``VOLCENGINE_ACCESS_KEY``/``VOLCENGINE_SECRET_KEY``, then
            ``VOLC_ACCESSKEY``/``VOLC_SECRETKEY``), OIDC from the environment, the CLI's
            config profile, ``~/.volc/credentials``, then the ECS instance role (see
            ``docs/credentials.md``); its STS and metadata requests use ``clock`` too.
        endpoint: Base URL of the OpenAPI gateway. ``http://`` is accepted only for loopback
            hosts (e.g. the emulator) unless ``allow_insecure_http`` is set.
        region: Signing region (``cn-north-1`` for the default endpoint).
        api_version: The OpenAPI version of the four segment actions: ``"2022-06-01"``
            (the default) or ``"2023-11-01"`` (the service's latest). Requests and answers
            are the same in both; only :meth:`start_segment` on a task that is already
            running differs (an error in 2022-06-01, :attr:`StartOutcome.ALREADY_RUNNING`
            in 2023-11-01). Both share each action's ceiling.
        qps: GetSegmentTask ceiling when ``limiter`` is not given. The clients of one
            account with the same ``qps``, in every process of the host, share one adaptive
            :class:`HostRateLimiter` (its margin below the ceiling follows the observed
            round-trip jitter; per process, with one warning, where the host's shared state
            cannot be used).
        limiter: Any :class:`RateLimiter` for GetSegmentTask, instead of the shared one;
            give processes on several hosts one ``RedisRateLimiter`` key.
        action_limiters: Limiters for the other actions, by action name. By default each
            action is paced on its own at its documented ceiling (StartSegment 60,
            UpdateSegment and StopSegment 150): with ``limiter.for_action(name, qps)`` when
            ``limiter`` offers it (``RedisRateLimiter`` does, so every action is shared
            across processes), else with the host's shared limiter of that action.
        timeout: Seconds one attempt may take, connecting to last byte of the answer.
        max_retries: Retries after the first attempt, for transient failures only.
        deadline: Default budget of each call, in seconds, covering the wait for the
            limiter, every attempt and the backoff between them; ``None`` (the default)
            for no bound. Each method takes its own ``deadline`` too (``None`` there means
            this default). When it runs out the call raises
            :class:`~rtc_segment.DeadlineExceededError`, a ``TimeoutError`` that says where
            the time went; a retry that could not finish in what is left is not started.
        backoff: Waits between attempts; ``Backoff.disabled()`` for tests.
        http_backend: What sends the requests under httpx: ``"httpcore"`` (httpx's own
            transport, the default) or ``"aiohttp"`` (extra ``aiohttp``; faster, and keeps
            its speed with many requests in flight). Errors, retries and timeouts behave the
            same on both. Ignored when ``transport`` is given.
        transport: An httpx transport, e.g. ``Emulator().transport()`` for tests; it wins
            over ``http_backend``.
        max_connections: Upper bound of concurrently open connections (and in-flight requests).
        allow_insecure_http: Permit ``http://`` to a non-loopback host.
        clock: Returns the current UTC time for ``X-Date``; injectable for tests.
    """

    def __init__(
        self,
        credentials: Credentials | CredentialsProvider | None = None,
        *,
        endpoint: str = DEFAULT_ENDPOINT,
        region: str = "cn-north-1",
        api_version: str = DEFAULT_API_VERSION,
        qps: float = 60.0,
        limiter: RateLimiter | None = None,
        action_limiters: Mapping[str, RateLimiter] | None = None,
        timeout: float = 10.0,
        max_retries: int = 3,
        deadline: float | None = None,
        backoff: Backoff | None = None,
        http_backend: HttpBackend = "httpcore",
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 100,
        allow_insecure_http: bool = False,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be a callable returning a datetime, not {clock!r}")
        if credentials is None:
            provider: CredentialsProvider = DefaultCredentialsChain(clock=clock)
        else:
            provider = as_provider(credentials)
        check_scope(region, "rtc")  # signed into the credential scope
        if backoff is not None and not isinstance(backoff, Backoff):
            raise TypeError(f"backoff must be a Backoff or None, not {type(backoff).__name__}")
        base_url, host = check_endpoint(endpoint, allow_insecure_http)
        check_api_version(api_version)
        if limiter is None:
            check_number("qps", qps, positive=True)
        elif not isinstance(limiter, RateLimiter):
            raise TypeError("limiter must provide `qps` and `async acquire()` (see RateLimiter)")
        # Clients of one account share the process's limiters: a fixed key names its
        # account; a provider's keys change with each refresh, so it is named by itself.
        if isinstance(provider, StaticCredentialsProvider):
            account = provider.credentials.access_key_id
        else:
            account = f"provider:{provider.name}"
        self._limiters = ActionLimiters(
            GET_SEGMENT_TASK.name,
            limiter,
            account=account,
            qps=qps,
            ceilings={action.name: action.qps for action in ACTIONS},
            overrides=action_limiters,
        )
        # A wrong type is a ValueError for these two, as in 0.1.
        check_number("timeout", timeout, positive=True, type_error=ValueError)
        check_int("max_retries", max_retries, minimum=0, type_error=ValueError)
        check_int("max_connections", max_connections, minimum=1)
        check_deadline(deadline)
        if http_backend not in HTTP_BACKENDS:
            raise ValueError(
                f"http_backend must be one of {', '.join(map(repr, HTTP_BACKENDS))}, "
                f"got {http_backend!r}"
            )
        if transport is None and http_backend == "aiohttp":
            transport = aiohttp_transport(max_connections=max_connections)
        self._region = region
        self._credentials_shown = (
            f"access_key_id={account!r}"
            if isinstance(provider, StaticCredentialsProvider)
            else f"credentials={provider.name!r}"
        )
        self._credentials = provider
        self._caller = Caller(
            provider,
            base_url=base_url,
            host=host,
            region=region,
            limiters=self._limiters,
            timeout=float(timeout),
            max_retries=max_retries,
            backoff=backoff if backoff is not None else Backoff(),
            transport=transport,
            max_connections=max_connections,
            clock=clock,
        )
        self._base_url = base_url
        self._deadline = deadline
        self._actions = SegmentActions(
            self._caller, max_retries=max_retries, deadline=deadline, api_version=api_version
        )
        # What OutcomeStream(client, ...) and TaskWatch(client, ...) poll with.
        self._task_fetcher = self._actions

    # -- lifecycle and introspection ---------------------------------------------------

    async def __aenter__(self) -> SegmentClient:
        self._caller.check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool. Further calls raise :class:`ClientClosedError`.

        Requests of cancelled calls that are still on the wire are abandoned.
        """
        await self._caller.aclose()

    @property
    def closed(self) -> bool:
        """True after :meth:`aclose`."""
        return self._caller.closed

    @property
    def stats(self) -> ClientStats:
        """A snapshot of the counters: requests sent, retries, throttled, errors by class."""
        return self._caller.stats

    @property
    def limiter(self) -> RateLimiter:
        """The rate limiter every GetSegmentTask attempt of this client waits on."""
        return self._limiters.primary

    @property
    def api_version(self) -> str:
        """The OpenAPI version the segment actions are called at."""
        return self._actions.api_version

    @property
    def endpoint(self) -> str:
        """The base URL requests go to."""
        return self._base_url

    @property
    def max_connections(self) -> int:
        """Upper bound of in-flight requests."""
        return self._caller.max_connections

    def __repr__(self) -> str:
        return (
            f"SegmentClient(endpoint={self._base_url!r}, region={self._region!r}, "
            f"{self._credentials_shown}, limiter={self.limiter!r})"
        )

    # -- one task ----------------------------------------------------------------------

    async def get_segment_task(
        self, app_id: str, room_id: str, task_id: str, *, deadline: float | None = None
    ) -> SegmentTask:
        """Fetch the state of one segment task.

        A single call goes ahead of fan-out and watch polls waiting on the same limiter.

        Raises:
            TypeError, ValueError: an id is not a valid id (nothing is sent).
            TaskNotFoundError: no such task, or it started more than 72 hours ago.
            DeadlineExceededError: ``deadline`` (or the client's) ran out.
            RtcSegmentError: any other failure, as its subclass (AuthenticationError,
                InvalidParameterError, ThrottledError, ServerError, TransportError,
                ResponseFormatError); transient ones were retried ``max_retries`` times first.
        """
        key = task_key(app_id, room_id, task_id)
        return await self._actions.fetch_task(key, deadline=check_deadline(deadline))

    async def start_segment(
        self,
        app_id: str,
        room_id: str,
        task_id: str,
        *,
        storage_config: StorageConfig,
        target_streams: TargetStreams | Sequence[Stream] | None = None,
        duration: int = 20,
        max_idle_time: int = 180,
        handle: bool = True,
        identifier: str | None = None,
        control: Control | None = None,
        business_id: str | None = None,
        deadline: float | None = None,
    ) -> StartOutcome:
        """Start an audio-segment task (StartSegment).

        Arguments are checked against the documented ranges before anything is sent:
        ``duration`` 1-600 s, ``max_idle_time`` 1-86400 s, at most 17 target streams with
        unique indexes (none: every stream in the room), ids and ``identifier`` from
        ``[A-Za-z0-9_@.-]``, and the config object matching ``storage_config.type``.

        Starting is not idempotent, so it is never retried blindly. When an attempt fails
        in a way that leaves open whether it reached the service (timeout or dropped
        connection after sending, 5xx answer), the client asks GetSegmentTask: a task that
        exists and has not ended means the start landed, and the call returns; no such task
        means it did not, and the start is sent again (within ``max_retries``); otherwise
        the original error is raised with ``ambiguous=True``. ``deadline`` bounds the
        whole, read-backs included.

        Returns:
            :attr:`StartOutcome.STARTED`, or on API version 2023-11-01
            :attr:`StartOutcome.ALREADY_RUNNING` when a task with this TaskId was already
            running (the service answers with a notice, and the task is unchanged).

        Raises:
            InvalidParameterError: e.g. ``InvalidParameter.TaskAlreadyExists`` (2022-06-01:
                a task with this TaskId is already running).
        """
        key = task_key(app_id, room_id, task_id)
        budget = check_deadline(deadline)
        body = start_segment_body(
            key,
            storage_config=storage_config,
            target_streams=target_streams,
            duration=duration,
            max_idle_time=max_idle_time,
            handle=handle,
            identifier=identifier,
            control=control,
            business_id=business_id,
        )
        return await self._actions.start(key, body, deadline=budget)

    async def update_segment(
        self,
        app_id: str,
        room_id: str,
        task_id: str,
        *,
        identifier: str | None = None,
        handle: bool | None = None,
        duration: int | None = None,
        business_id: str | None = None,
        deadline: float | None = None,
    ) -> None:
        """Change a running task (UpdateSegment); give at least one of
        ``identifier``, ``handle``, ``duration`` (1-600 s; changing it restarts the slice
        timer). Setting values is idempotent, so transient failures are retried."""
        key = task_key(app_id, room_id, task_id)
        budget = check_deadline(deadline)
        body = update_segment_body(
            key, identifier=identifier, handle=handle, duration=duration, business_id=business_id
        )
        await self._actions.update(key, body, deadline=budget)

    async def stop_segment(
        self,
        app_id: str,
        room_id: str,
        task_id: str,
        *,
        business_id: str | None = None,
        deadline: float | None = None,
    ) -> None:
        """Stop a task (StopSegment). Transient failures are retried; when a
        retry finds the task already gone after an earlier attempt may have stopped it,
        that counts as success (the task is stopped either way).

        Raises:
            TaskNotFoundError: no running task with these ids.
        """
        key = task_key(app_id, room_id, task_id)
        budget = check_deadline(deadline)
        body = stop_segment_body(key, business_id=business_id)
        await self._actions.stop(key, body, deadline=budget)

    # -- any other action --------------------------------------------------------------

    async def call(
        self,
        action: str,
        version: str,
        *,
        qps: float,
        query: Mapping[str, str] | None = None,
        json: Any = None,
        method: Literal["GET", "POST"] | None = None,
        idempotent: bool = False,
        deadline: float | None = None,
    ) -> ActionResult:
        """Call any RTC OpenAPI action through this client's limiter, signer and retries.

        ``qps`` is the action's documented ceiling: the action gets a limiter of its own at
        that rate (the first ``qps`` given for an action is kept). ``query`` adds query
        parameters (``Action`` and ``Version`` are set for you); ``json`` is sent as a POST
        body (without it the request is a GET; ``method`` overrides). ``idempotent=True``
        lets failures after which the request may have landed be retried; leave it off for
        actions that change state. Returns the answer's ``Result`` as decoded JSON, with
        its request id. Raises ``TypeError``/``ValueError`` before sending for a malformed
        argument, and the typed errors of every method (an unknown action or version is
        ``InvalidParameterError`` with code ``InvalidActionOrVersion``). Guide:
        ``docs/other-actions.md``.
        """
        budget = check_deadline(deadline)
        return await call_action(
            self._caller,
            action,
            version,
            qps=qps,
            query=query,
            json_body=json,
            method=method,
            idempotent=idempotent,
            deadline=self._deadline if budget is None else budget,
        )

    # -- many tasks --------------------------------------------------------------------

    def get_segment_tasks(
        self, keys: Keys, *, concurrency: int | None = None, deadline: float | None = None
    ) -> OutcomeStream:
        """Fetch many tasks at the ceiling; yield one :class:`TaskOutcome` per key as each ends.

        Keys (``TaskKey`` or plain 3-tuples, from any iterable or async iterable) are pulled
        lazily; every key yields exactly one outcome, errors included. ``concurrency`` bounds
        the requests in flight (default: enough to keep the ceiling busy). Use ``async with``
        on the result to cancel the work in flight deterministically when leaving early.
        ``deadline`` bounds each key's call. These calls wait behind single calls made
        meanwhile, and use all the quota those leave. See :class:`rtc_segment.OutcomeStream`.
        """
        self._caller.check_open()
        return OutcomeStream(self._actions, keys, concurrency=concurrency, deadline=deadline)

    async def gather_segment_tasks(
        self, keys: Keys, *, concurrency: int | None = None, deadline: float | None = None
    ) -> list[TaskOutcome]:
        """Like :meth:`get_segment_tasks`, but return every outcome in input order."""
        self._caller.check_open()
        return await gather_outcomes(
            self._actions, keys, concurrency=concurrency, deadline=deadline
        )

    async def wait_for_segment_task(
        self,
        app_id: str,
        room_id: str,
        task_id: str,
        *,
        poll_interval: float = 5.0,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> SegmentTask:
        """Poll one task until it has ended or failed, and return its final state.

        ``timeout`` bounds the whole wait; ``deadline`` each poll (a poll that runs out of
        it is polled again, like a transient failure).

        Raises:
            WaitTimeoutError: ``timeout`` seconds passed first (a ``TimeoutError``; its
                ``last_task`` attribute holds the last state seen).
        """
        key = task_key(app_id, room_id, task_id)
        return await wait_for(
            self._actions, key, poll_interval=poll_interval, timeout=timeout, deadline=deadline
        )

    def watch_segment_task(
        self,
        app_id: str,
        room_id: str,
        task_id: str,
        *,
        poll_interval: float = 5.0,
        deadline: float | None = None,
    ) -> AsyncIterator[SegmentTask]:
        """Yield the task's state each time it changes (the first state included), until it
        has ended or failed. ``deadline`` bounds each poll."""
        key = task_key(app_id, room_id, task_id)
        return watch_one(self._actions, key, poll_interval=poll_interval, deadline=deadline)

    def watch_segment_tasks(
        self,
        keys: Iterable[TaskKey | tuple[str, str, str]],
        *,
        poll_interval: float = 5.0,
        concurrency: int | None = None,
        stop_when_empty: bool = True,
        deadline: float | None = None,
    ) -> TaskWatch:
        """Watch many tasks at once, yielding a :class:`rtc_segment.WatchEvent` for each
        task's first state and every change; ``deadline`` bounds each poll. See
        :class:`rtc_segment.TaskWatch`."""
        self._caller.check_open()
        return TaskWatch(
            self._actions,
            keys,
            poll_interval=poll_interval,
            concurrency=concurrency,
            stop_when_empty=stop_when_empty,
            deadline=deadline,
        )
