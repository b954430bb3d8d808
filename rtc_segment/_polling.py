"""Fan-out and watching: many GetSegmentTask calls, scheduled on top of the client's one call.

Nothing here speaks HTTP. Every poll is ``client._get(key)``, which paces on the client's
limiter, signs, sends and retries; this module only decides *which* key is fetched *when*,
how many are in flight, and how results come back.

Both schedulers are pull-driven: work is started from inside ``__anext__``, so a consumer
that stops iterating stops new work (backpressure), and memory is bounded by the number of
requests in flight rather than by the number of keys. In-flight requests are plain tasks
owned by the iterator; ``aclose()``, leaving ``async with``, cancelling the consumer while it
waits, or dropping the iterator (``break`` out of ``async for``) cancels them. The tasks hold
only a weak reference to their iterator, so dropping it is enough for the garbage collector
to run that cleanup at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import weakref
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias, cast

import attrs

from ._client import validate_key
from ._errors import RtcSegmentError
from ._models import SegmentTask, TaskKey, TaskOutcome

if TYPE_CHECKING:
    from ._client import SegmentClient

__all__ = [
    "OutcomeStream",
    "TaskWatch",
    "WaitTimeoutError",
    "WatchEvent",
    "default_concurrency",
    "gather_outcomes",
    "iter_outcomes",
    "wait_for",
    "watch_one",
]

logger = logging.getLogger("rtc_segment")

KeyLike: TypeAlias = "TaskKey | tuple[str, str, str]"
"""A :class:`TaskKey` or a plain ``(app_id, room_id, task_id)`` tuple."""
KeySource: TypeAlias = "Iterable[KeyLike] | AsyncIterable[KeyLike]"
"""Keys for a fan-out: any iterable or async iterable, consumed lazily."""

# The default number of requests in flight covers this many seconds of latency at the
# ceiling: requests wait their turn at the limiter while earlier ones are on the wire.
_LATENCY_COVER_SECONDS = 1.0
_MIN_CONCURRENCY = 8
_CLOCK_SLACK = 1e-6


def default_concurrency(client: SegmentClient) -> int:
    """Requests kept in flight by default: enough to cover ~1 s of latency at the ceiling.

    ``min(client.max_connections, max(8, ceil(qps)))``: with 60 QPS and 50 ms latency only
    three requests are on the wire at once, the rest wait at the limiter in order; more
    would only hold memory, fewer would leave the pipe idle when latency spikes.
    """
    try:
        wanted = math.ceil(float(client.limiter.qps) * _LATENCY_COVER_SECONDS)
    except (TypeError, ValueError, OverflowError):
        wanted = _MIN_CONCURRENCY
    return max(1, min(client.max_connections, max(_MIN_CONCURRENCY, wanted)))


def _check_concurrency(client: SegmentClient, concurrency: int | None) -> int:
    if concurrency is None:
        return default_concurrency(client)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int):
        raise TypeError(f"concurrency must be an int or None, not {type(concurrency).__name__}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency!r}")
    return concurrency


def _check_interval(poll_interval: float) -> float:
    if isinstance(poll_interval, bool) or not isinstance(poll_interval, (int, float)):
        raise TypeError(f"poll_interval must be a number, not {type(poll_interval).__name__}")
    if not 0 < poll_interval < math.inf:
        raise ValueError(
            f"poll_interval must be a positive number of seconds, got {poll_interval!r}"
        )
    return float(poll_interval)


def _check_keys_argument(keys: object) -> None:
    # A single key is itself an iterable (of three strings): catch that mistake up front
    # instead of answering with three TypeError outcomes.
    if isinstance(keys, (str, bytes)) or (
        isinstance(keys, tuple) and len(keys) == 3 and all(isinstance(p, str) for p in keys)
    ):
        raise TypeError(
            "keys must be an iterable of keys, e.g. [TaskKey(app_id, room_id, task_id)], "
            "not a single key"
        )


def _outcome_key(raw: object) -> TaskKey:
    # The key an invalid input is reported under: as close to what was given as possible.
    if isinstance(raw, TaskKey):
        return raw
    if isinstance(raw, tuple) and len(raw) == 3:
        return TaskKey(*raw)
    return cast(TaskKey, raw)


async def _fetch(client: SegmentClient, key: TaskKey) -> TaskOutcome:
    """One call, with every failure turned into a value. Only cancellation escapes."""
    try:
        task = await client._get(key)
    except Exception as error:  # a bug in one call must not lose its key
        return TaskOutcome(key, error=error)
    return TaskOutcome(key, task=task)


def _outcome_of(task: asyncio.Task[TaskOutcome], key: TaskKey) -> TaskOutcome:
    if task.cancelled():
        # Cancelled by someone else than its owner (which ignores its own cancellations).
        return TaskOutcome(key, error=asyncio.CancelledError("the request was cancelled"))
    error = task.exception()
    if error is not None:  # pragma: no cover - _fetch catches every Exception
        return TaskOutcome(key, error=error)
    return task.result()


def _weak_callback(
    owner: object, method: Callable[[Any, asyncio.Future[Any]], None]
) -> Callable[[asyncio.Future[Any]], None]:
    """A done-callback that does not keep ``owner`` alive (so dropping it cancels the work)."""
    ref = weakref.ref(owner)

    def callback(future: asyncio.Future[Any]) -> None:
        target = ref()
        if target is not None:
            method(target, future)

    return callback


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _cancel_quietly(tasks: Iterable[asyncio.Future[Any]]) -> None:
    for task in tasks:
        # RuntimeError: the loop is already closed (we are in a finaliser).
        with contextlib.suppress(RuntimeError):
            task.cancel()


async def _next_key(source: AsyncIterator[KeyLike]) -> KeyLike:
    return await source.__anext__()


class OutcomeStream:
    """The async iterator returned by ``client.get_segment_tasks(keys)``.

    Yields exactly one :class:`TaskOutcome` per input key, in completion order: the task, or
    the error of that key (an invalid key yields its ``TypeError``/``ValueError`` without a
    request; typed API errors, and even unexpected exceptions, become outcomes too). Keys are
    pulled from ``keys`` only as slots free up, so at most ``concurrency`` keys are ahead of
    the consumer.

    If iterating ``keys`` itself raises, the outcomes of the keys already pulled are yielded
    first and then that exception is raised.

    Stop early with ``break`` (the in-flight requests are cancelled as soon as the iterator is
    dropped), with :meth:`aclose`, or by using it as ``async with ... as outcomes``. Cancelling
    the consumer while it waits for the next outcome also ends the stream (as it would an
    async generator). The client stays usable in every case.
    """

    def __init__(
        self,
        client: SegmentClient,
        keys: KeySource,
        *,
        concurrency: int | None = None,
    ) -> None:
        _check_keys_argument(keys)
        self._iter: Iterator[KeyLike] | None = None
        self._aiter: AsyncIterator[KeyLike] | None = None
        if isinstance(keys, AsyncIterable):
            self._aiter = keys.__aiter__()
        elif isinstance(keys, Iterable):
            self._iter = iter(keys)
        else:
            raise TypeError(
                f"keys must be an iterable or async iterable of task keys, "
                f"not {type(keys).__name__}"
            )
        self._client = client
        self._concurrency = _check_concurrency(client, concurrency)
        self._pulled = 0
        self._ready: deque[tuple[int, TaskOutcome]] = deque()
        self._in_flight: dict[asyncio.Task[TaskOutcome], tuple[int, TaskKey]] = {}
        self._pull: asyncio.Task[KeyLike] | None = None
        self._exhausted = False
        self._source_error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._on_done = _weak_callback(self, OutcomeStream._request_done)
        self._on_pulled = _weak_callback(self, OutcomeStream._key_pulled)

    # -- public surface ---------------------------------------------------------------

    @property
    def concurrency(self) -> int:
        """The most requests this stream keeps in flight."""
        return self._concurrency

    @property
    def keys_pulled(self) -> int:
        """How many keys have been taken from the source so far."""
        return self._pulled

    def __aiter__(self) -> OutcomeStream:
        return self

    async def __anext__(self) -> TaskOutcome:
        return (await self._next_indexed())[1]

    async def __aenter__(self) -> OutcomeStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop: cancel the requests in flight and wait until they have ended."""
        self._closed = True
        self._ready.clear()
        self._iter = None
        self._aiter = None
        pending: list[asyncio.Future[Any]] = list(self._in_flight)
        if self._pull is not None:
            pending.append(self._pull)
            self._pull = None
        self._in_flight.clear()
        if pending:
            _cancel_quietly(pending)
            await asyncio.wait(pending)

    def __del__(self) -> None:
        # Dropped while requests were in flight (e.g. ``break`` out of ``async for``).
        in_flight = getattr(self, "_in_flight", None)
        if in_flight:
            self._closed = True
            _cancel_quietly(list(in_flight))
        pull = getattr(self, "_pull", None)
        if pull is not None:
            _cancel_quietly([pull])

    def __repr__(self) -> str:
        return (
            f"<OutcomeStream pulled={self._pulled} in_flight={len(self._in_flight)} "
            f"ready={len(self._ready)} concurrency={self._concurrency}"
            f"{' closed' if self._closed else ''}>"
        )

    # -- machinery --------------------------------------------------------------------

    async def _next_indexed(self) -> tuple[int, TaskOutcome]:
        """The next outcome with the position of its key in the input."""
        while True:
            if self._ready:
                item = self._ready.popleft()
                self._fill()  # start the next request before handing control back
                return item
            if self._closed:
                raise StopAsyncIteration
            self._fill()
            if self._ready:
                continue
            if not self._in_flight and self._pull is None:
                # Source exhausted and every outcome delivered.
                self._closed = True
                error, self._source_error = self._source_error, None
                if error is not None:
                    raise error
                raise StopAsyncIteration
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            except asyncio.CancelledError:
                await self.aclose()
                raise
            finally:
                self._waiter = None

    def _fill(self) -> None:
        """Pull keys and start requests until ``concurrency`` are pending."""
        if self._closed:
            return
        if self._aiter is not None:
            self._fill_from_async()
            return
        source = self._iter
        while source is not None and len(self._in_flight) + len(self._ready) < self._concurrency:
            try:
                raw = next(source)
            except StopIteration:
                self._exhausted = True
                source = self._iter = None
            except Exception as error:
                self._source_failed(error)
                source = None
            else:
                self._admit(raw)

    def _fill_from_async(self) -> None:
        pull = self._pull
        if pull is not None:
            if not pull.done():
                return
            self._pull = None
            if pull.cancelled():
                self._source_failed(asyncio.CancelledError("iterating the keys was cancelled"))
            elif (error := pull.exception()) is not None:
                if isinstance(error, StopAsyncIteration):
                    self._exhausted = True
                    self._aiter = None
                else:
                    self._source_failed(error)
            else:
                self._admit(pull.result())
        source = self._aiter
        if source is not None and len(self._in_flight) + len(self._ready) < self._concurrency:
            # An async source is read by one task at a time, so a slow source never delays
            # the delivery of outcomes that are already done.
            self._pull = asyncio.get_running_loop().create_task(_next_key(source))
            self._pull.add_done_callback(self._on_pulled)

    def _source_failed(self, error: BaseException) -> None:
        logger.debug("the key source raised %r; finishing the keys already pulled", error)
        self._source_error = error
        self._exhausted = True
        self._iter = None
        self._aiter = None

    def _admit(self, raw: KeyLike) -> None:
        index = self._pulled
        self._pulled += 1
        try:
            key = validate_key(raw)
        except (TypeError, ValueError) as error:
            self._ready.append((index, TaskOutcome(_outcome_key(raw), error=error)))
            return
        task = asyncio.get_running_loop().create_task(_fetch(self._client, key))
        self._in_flight[task] = (index, key)
        task.add_done_callback(self._on_done)

    def _request_done(self, task: asyncio.Future[Any]) -> None:
        entry = self._in_flight.pop(cast("asyncio.Task[TaskOutcome]", task), None)
        if entry is None or self._closed:
            return
        index, key = entry
        self._ready.append((index, _outcome_of(cast("asyncio.Task[TaskOutcome]", task), key)))
        _wake(self._waiter)

    def _key_pulled(self, _task: asyncio.Future[Any]) -> None:
        _wake(self._waiter)


def iter_outcomes(
    client: SegmentClient,
    keys: KeySource,
    *,
    concurrency: int | None = None,
) -> OutcomeStream:
    """Fetch every key's task at the client's ceiling; see :class:`OutcomeStream`."""
    return OutcomeStream(client, keys, concurrency=concurrency)


async def gather_outcomes(
    client: SegmentClient,
    keys: KeySource,
    *,
    concurrency: int | None = None,
) -> list[TaskOutcome]:
    """Fetch every key's task; return the outcomes in the order of the keys."""
    results: list[TaskOutcome | None] = []
    async with OutcomeStream(client, keys, concurrency=concurrency) as stream:
        while True:
            try:
                index, outcome = await stream._next_indexed()
            except StopAsyncIteration:
                break
            if index >= len(results):
                results.extend([None] * (index + 1 - len(results)))
            results[index] = outcome
    # Exactly one outcome per pulled key, so every position is filled.
    return cast("list[TaskOutcome]", results)


# -- waiting for one task ----------------------------------------------------------------


class WaitTimeoutError(RtcSegmentError, TimeoutError):
    """``wait_for_segment_task`` ran out of time before the task ended or failed.

    A :class:`TimeoutError`, so ``except TimeoutError`` catches it.

    Attributes:
        key: The task waited for.
        timeout: The timeout that passed, in seconds.
        last_task: The last state fetched, or ``None`` if no poll succeeded.
        last_error: The error of the last poll, if it failed (transiently).
    """

    hint: ClassVar[str] = (
        "Call wait_for_segment_task again to keep waiting, or pass a larger timeout "
        "(timeout=None waits until the task ends)"
    )

    def __init__(
        self,
        key: TaskKey,
        *,
        timeout: float,
        last_task: SegmentTask | None,
        last_error: BaseException | None,
    ) -> None:
        if last_task is not None:
            seen = f"last status {last_task.status.name}"
        elif last_error is not None:
            seen = f"no state fetched; last poll failed with {type(last_error).__name__}"
        else:
            seen = "no state fetched yet"
        super().__init__(
            f"the task did not end within {timeout:g} s ({seen})",
            action="GetSegmentTask",
            key=key,
        )
        self.timeout = timeout
        self.last_task = last_task
        self.last_error = last_error


@attrs.define
class _LastSeen:
    task: SegmentTask | None = None
    error: BaseException | None = None


def watch_one(
    client: SegmentClient,
    key: TaskKey,
    *,
    poll_interval: float = 5.0,
) -> AsyncIterator[SegmentTask]:
    """Yield the task's state each time it changes (the first state included), until it ends.

    Polls at most once per ``poll_interval`` seconds (measured from the end of one poll to
    the start of the next). A poll that fails transiently (after the client's own retries)
    is skipped and tried again after ``poll_interval``; a permanent error (not found,
    authentication, invalid parameter) is raised.
    """
    interval = _check_interval(poll_interval)
    return _watch_one(client, key, interval, _LastSeen())


async def _watch_one(
    client: SegmentClient, key: TaskKey, interval: float, seen: _LastSeen
) -> AsyncIterator[SegmentTask]:
    last: SegmentTask | None = None
    while True:
        try:
            task = await client._get(key)
        except RtcSegmentError as error:
            if not error.retryable:
                raise
            seen.error = error
            logger.warning(
                "polling %s failed, trying again in %g s: %s", "/".join(key), interval, error
            )
        else:
            seen.task, seen.error = task, None
            if task != last:
                last = task
                yield task
            if task.is_terminal:
                return
        await asyncio.sleep(interval)


async def wait_for(
    client: SegmentClient,
    key: TaskKey,
    *,
    poll_interval: float = 5.0,
    timeout: float | None = None,
) -> SegmentTask:
    """Poll one task until it has ended or failed, and return that final state.

    Raises:
        WaitTimeoutError: ``timeout`` seconds passed first; it carries ``last_task``.
        RtcSegmentError: a permanent error of a poll (transient ones are polled through).
    """
    interval = _check_interval(poll_interval)
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
        if not timeout >= 0:
            raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout!r}")
    seen = _LastSeen()

    async def until_terminal() -> SegmentTask:
        async for task in _watch_one(client, key, interval, seen):
            if task.is_terminal:
                return task
        raise AssertionError("unreachable: the watch ends only after a terminal state")

    if timeout is None:
        return await until_terminal()
    try:
        return await asyncio.wait_for(until_terminal(), timeout)
    except asyncio.TimeoutError:
        raise WaitTimeoutError(
            key, timeout=float(timeout), last_task=seen.task, last_error=seen.error
        ) from None


# -- watching many tasks -----------------------------------------------------------------


@attrs.frozen
class WatchEvent:
    """One event of :class:`TaskWatch`: a new state of a task, or a failed poll.

    Exactly one of ``task`` and ``error`` is set. ``final`` is true when the key has left
    the watch with this event: its task ended or failed, or the error is permanent (not
    found, authentication, invalid key). Transient errors (``error.retryable``) are
    reported and the task stays watched.
    """

    key: TaskKey
    task: SegmentTask | None = None
    error: BaseException | None = None
    final: bool = False

    @property
    def ok(self) -> bool:
        """True when the event carries a task state."""
        return self.error is None


@attrs.define(eq=False)
class _Watched:
    """Per-key state of a watch. Identity matters: a key removed and re-added is a new one."""

    key: TaskKey
    last: SegmentTask | None = None
    last_polled: float | None = None


class TaskWatch:
    """Watch many tasks at once; an async iterator of :class:`WatchEvent`.

    Use it as::

        async with client.watch_segment_tasks(keys, poll_interval=5.0) as watch:
            async for event in watch:
                ...

    * An event is yielded for each task's first state and then whenever its state changes;
      a task whose state ended or failed leaves the watch after its event (``final``).
    * Each task is polled at most once per ``poll_interval`` (from the end of one poll to the
      start of the next). When ``len(keys) / poll_interval`` is more than the limiter's QPS,
      polls go round-robin -- the task polled longest ago goes next -- so every task is polled
      about every ``len(keys) / qps`` seconds and none starves; :attr:`achieved_interval`
      reports the interval actually achieved.
    * A poll that still fails after the client's retries, with a transient error, is yielded
      as an error event and the task stays watched; a permanent error (not found,
      authentication, invalid parameter, an invalid key) is yielded with ``final=True`` and
      the task leaves the watch.
    * :meth:`add` watches more keys, :meth:`discard` stops watching one.
    * Iteration ends when no task is left, unless ``stop_when_empty=False``.

    Polls are started while the consumer waits in ``async for``: a consumer that is busy
    elsewhere delays polling rather than letting events pile up.
    """

    def __init__(
        self,
        client: SegmentClient,
        keys: Iterable[KeyLike],
        *,
        poll_interval: float = 5.0,
        concurrency: int | None = None,
        stop_when_empty: bool = True,
    ) -> None:
        _check_keys_argument(keys)
        if isinstance(keys, AsyncIterable) or not isinstance(keys, Iterable):
            raise TypeError(
                f"keys must be an iterable of task keys, not {type(keys).__name__} "
                "(use add() to watch keys as they come)"
            )
        self._client = client
        self._interval = _check_interval(poll_interval)
        self._concurrency = _check_concurrency(client, concurrency)
        self._stop_when_empty = bool(stop_when_empty)
        self._watched: dict[TaskKey, _Watched] = {}
        # Idle keys by the time they may be polled next; ties in insertion order. Entries of
        # keys removed since are skipped when they surface.
        self._schedule: list[tuple[float, int, _Watched]] = []
        self._order = itertools.count()
        self._in_flight: dict[asyncio.Task[TaskOutcome], _Watched] = {}
        self._events: deque[WatchEvent] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._over_quota_reported = False
        # The achieved interval: a running mean over recent per-key gaps between polls.
        self._gaps: deque[float] = deque()
        self._gap_sum = 0.0
        self._on_done = _weak_callback(self, TaskWatch._poll_done)
        for raw in keys:
            try:
                key = validate_key(raw)
            except (TypeError, ValueError) as error:
                self._events.append(WatchEvent(_outcome_key(raw), error=error, final=True))
                continue
            self._watch(key)
        self._report_over_quota()

    # -- public surface ---------------------------------------------------------------

    @property
    def poll_interval(self) -> float:
        """The shortest interval between two polls of one task, in seconds."""
        return self._interval

    @property
    def achieved_interval(self) -> float | None:
        """The mean interval between two polls of one task, over recent polls, in seconds.

        About ``poll_interval`` (plus latency) while under the quota, about
        ``len(self) / qps`` when over it; ``None`` until some task has been polled twice.
        """
        if not self._gaps:
            return None
        return self._gap_sum / len(self._gaps)

    def __len__(self) -> int:
        """The number of tasks being watched."""
        return len(self._watched)

    def __contains__(self, key: object) -> bool:
        return key in self._watched

    def add(self, key: KeyLike) -> None:
        """Watch one more task (no-op if it is watched already); its first poll is due now.

        Raises:
            TypeError, ValueError: the key is not a valid key.
            RuntimeError: the watch is closed.
        """
        if self._closed:
            raise RuntimeError("this TaskWatch is closed; start a new one")
        valid = validate_key(key)
        if valid in self._watched:
            return
        self._watch(valid)
        self._report_over_quota()
        _wake(self._waiter)

    def discard(self, key: KeyLike) -> None:
        """Stop watching a task (no-op if it is not watched). No event is yielded for it."""
        if isinstance(key, tuple) and len(key) == 3:
            self._watched.pop(TaskKey(*key), None)
            _wake(self._waiter)

    def __aiter__(self) -> TaskWatch:
        return self

    async def __anext__(self) -> WatchEvent:
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise StopAsyncIteration
            wake_at = self._dispatch(loop)
            if self._events:
                return self._events.popleft()
            if not self._watched and self._stop_when_empty:
                await self.aclose()  # only polls of discarded keys can be left
                raise StopAsyncIteration
            waiter = self._waiter = loop.create_future()
            timer = loop.call_at(wake_at, _wake, waiter) if wake_at is not None else None
            try:
                await waiter
            except asyncio.CancelledError:
                await self.aclose()
                raise
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()

    async def __aenter__(self) -> TaskWatch:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop watching: cancel the polls in flight and wait until they have ended."""
        self._closed = True
        self._schedule.clear()
        self._events.clear()
        pending = list(self._in_flight)
        self._in_flight.clear()
        if pending:
            _cancel_quietly(pending)
            await asyncio.wait(pending)

    def __del__(self) -> None:
        in_flight = getattr(self, "_in_flight", None)
        if in_flight:
            self._closed = True
            _cancel_quietly(list(in_flight))

    def __repr__(self) -> str:
        achieved = self.achieved_interval
        shown = "n/a" if achieved is None else f"{achieved:.3g}s"
        return (
            f"<TaskWatch watching={len(self._watched)} in_flight={len(self._in_flight)} "
            f"poll_interval={self._interval:g}s achieved_interval={shown}"
            f"{' closed' if self._closed else ''}>"
        )

    # -- machinery --------------------------------------------------------------------

    def _watch(self, key: TaskKey) -> None:
        state = _Watched(key)
        self._watched[key] = state
        heapq.heappush(self._schedule, (-math.inf, next(self._order), state))

    def _report_over_quota(self) -> None:
        try:
            qps = float(self._client.limiter.qps)
        except (TypeError, ValueError):  # pragma: no cover - a limiter without a numeric qps
            return
        needed = len(self._watched) / self._interval
        if needed <= qps:
            self._over_quota_reported = False
        elif not self._over_quota_reported:
            self._over_quota_reported = True
            logger.warning(
                "watching %d tasks every %g s needs %.1f requests/s, over the limiter's %g: "
                "tasks are polled round-robin, each about every %.3g s",
                len(self._watched),
                self._interval,
                needed,
                qps,
                len(self._watched) / qps,
            )

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> float | None:
        """Start the polls that are due; return when the next one is due (if one can start)."""
        schedule = self._schedule
        # Timers may fire up to a clock tick early (asyncio's clock resolution, looptime's
        # 1 us rounding): a poll due within that is due now, or the wait would spin.
        now = loop.time() + _CLOCK_SLACK
        # Undelivered events bound the polls started: a slow consumer slows polling down.
        while (
            schedule
            and len(self._in_flight) < self._concurrency
            and len(self._events) < self._concurrency
        ):
            due, _, state = schedule[0]
            if self._watched.get(state.key) is not state:
                heapq.heappop(schedule)  # discarded (or re-added since)
                continue
            if due > now:
                return due
            heapq.heappop(schedule)
            task = loop.create_task(_fetch(self._client, state.key))
            self._in_flight[task] = state
            task.add_done_callback(self._on_done)
        return None

    def _poll_done(self, future: asyncio.Future[Any]) -> None:
        task = cast("asyncio.Task[TaskOutcome]", future)
        state = self._in_flight.pop(task, None)
        if state is None or self._closed:
            return
        _wake(self._waiter)
        if self._watched.get(state.key) is not state:
            return  # discarded while the poll was in flight
        now = task.get_loop().time()
        if state.last_polled is not None:
            self._record_gap(now - state.last_polled)
        state.last_polled = now
        outcome = _outcome_of(task, state.key)
        error = outcome.error
        if error is not None:
            if getattr(error, "retryable", False):
                self._events.append(WatchEvent(state.key, error=error))
                self._reschedule(state, now)
            else:
                del self._watched[state.key]
                self._events.append(WatchEvent(state.key, error=error, final=True))
            return
        current = cast(SegmentTask, outcome.task)
        final = current.is_terminal
        if current != state.last:
            state.last = current
            self._events.append(WatchEvent(state.key, task=current, final=final))
        if final:
            del self._watched[state.key]
        else:
            self._reschedule(state, now)

    def _reschedule(self, state: _Watched, now: float) -> None:
        heapq.heappush(self._schedule, (now + self._interval, next(self._order), state))

    def _record_gap(self, gap: float) -> None:
        window = max(64, len(self._watched))
        self._gaps.append(gap)
        self._gap_sum += gap
        while len(self._gaps) > window:
            self._gap_sum -= self._gaps.popleft()
