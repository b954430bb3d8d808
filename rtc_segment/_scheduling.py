"""What fan-out (``_fanout``) and watching (``_watch``) share: the scheduling base.

Nothing here speaks HTTP. Every poll is ``source.fetch_task(key)`` on a
:class:`TaskFetcher` (the client's actions), which paces, signs, sends and retries; the
schedulers only decide *which* key is fetched *when*, how many are in flight, and how
results come back.

Both schedulers are pull-driven: work is started from inside ``__anext__``, so a consumer
that stops iterating stops new work (backpressure), and memory is bounded by the number of
requests in flight rather than by the number of keys. In-flight requests are plain tasks
owned by the scheduler; ``aclose()``, leaving ``async with``, cancelling the consumer while
it waits, or dropping the iterator (``break`` out of ``async for``) cancels them. The tasks
hold only a weak reference to their scheduler, so dropping it is enough for the garbage
collector to run that cleanup at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import weakref
from collections.abc import AsyncIterable, Callable, Iterable
from types import TracebackType
from typing import Any, ClassVar, Protocol, TypeAlias, TypeVar, cast

from ._errors import DeadlineExceededError
from ._instrumentation import RunKind, RunObservation
from ._models import SegmentTask, TaskKey, TaskOutcome
from ._validation import check_int, check_number

__all__ = [
    "POLLED_ACTION",
    "KeyLike",
    "KeySource",
    "PollSource",
    "Scheduler",
    "TaskFetcher",
    "check_deadline",
    "check_interval",
    "check_keys_argument",
    "default_concurrency",
    "fetcher_of",
    "is_transient",
    "outcome_key",
]

KeyLike: TypeAlias = "TaskKey | tuple[str, str, str]"
"""A :class:`TaskKey` or a plain ``(app_id, room_id, task_id)`` tuple."""
KeySource: TypeAlias = "Iterable[KeyLike] | AsyncIterable[KeyLike]"
"""Keys for a fan-out: any iterable or async iterable, consumed lazily."""

#: What the schedulers' polls call (told to instrumentation hooks with each run).
POLLED_ACTION = "GetSegmentTask"

# The default number of requests in flight covers this many seconds of latency at the
# ceiling: requests wait their turn at the limiter while earlier ones are on the wire.
_LATENCY_COVER_SECONDS = 1.0
_MIN_CONCURRENCY = 8

_S = TypeVar("_S", bound="Scheduler")


class TaskFetcher(Protocol):
    """What the schedulers poll with (``SegmentActions`` provides it)."""

    @property
    def qps(self) -> float:
        """The ceiling the polls are paced at."""
        ...

    @property
    def max_connections(self) -> int:
        """Upper bound of requests in flight."""
        ...

    async def fetch_task(
        self, key: TaskKey, *, bulk: bool = False, deadline: float | None = None
    ) -> SegmentTask:
        """GetSegmentTask for a validated key; ``bulk`` polls wait behind single calls."""
        ...


class _HasTaskFetcher(Protocol):
    """A ``SegmentClient``: it hands its actions to the schedulers built on it."""

    @property
    def _task_fetcher(self) -> TaskFetcher: ...


PollSource: TypeAlias = "TaskFetcher | _HasTaskFetcher"
"""What a scheduler polls with: a ``SegmentClient``, or any :class:`TaskFetcher`."""


def fetcher_of(source: PollSource) -> TaskFetcher:
    """The :class:`TaskFetcher` of ``source`` (a ``SegmentClient``'s actions, or itself)."""
    return cast(TaskFetcher, getattr(source, "_task_fetcher", source))


def default_concurrency(source: TaskFetcher) -> int:
    """Requests kept in flight by default: enough to cover ~1 s of latency at the ceiling.

    ``min(max_connections, max(8, ceil(qps)))``: with 60 QPS and 50 ms latency only three
    requests are on the wire at once, the rest wait at the limiter in order; more would
    only hold memory, fewer would leave the pipe idle when latency spikes.
    """
    try:
        wanted = math.ceil(float(source.qps) * _LATENCY_COVER_SECONDS)
    except (TypeError, ValueError, OverflowError):
        wanted = _MIN_CONCURRENCY
    return max(1, min(source.max_connections, max(_MIN_CONCURRENCY, wanted)))


def check_concurrency(source: TaskFetcher, concurrency: int | None) -> int:
    """``concurrency`` if it is a valid bound, the default for ``None``."""
    if concurrency is None:
        return default_concurrency(source)
    return check_int("concurrency", concurrency, minimum=1)


def check_deadline(deadline: object) -> float | None:
    """``deadline`` as positive finite seconds, or ``None``."""
    return None if deadline is None else check_number("deadline", deadline, positive=True)


def check_interval(poll_interval: object) -> float:
    """``poll_interval`` as positive finite seconds."""
    return check_number("poll_interval", poll_interval, positive=True)


def check_keys_argument(keys: object) -> None:
    """Refuse a single key where an iterable of keys is expected.

    A single key is itself an iterable (of three strings): catch that mistake up front
    instead of answering with three ``TypeError`` outcomes.
    """
    if isinstance(keys, (str, bytes)) or (
        isinstance(keys, tuple) and len(keys) == 3 and all(isinstance(p, str) for p in keys)
    ):
        raise TypeError(
            "keys must be an iterable of keys, e.g. [TaskKey(app_id, room_id, task_id)], "
            "not a single key"
        )


def is_transient(error: BaseException) -> bool:
    """Whether a failed poll is worth polling again: a retryable error, or a poll that ran
    out of its deadline (the next one may not)."""
    return bool(getattr(error, "retryable", False)) or isinstance(error, DeadlineExceededError)


def outcome_key(raw: object) -> TaskKey:
    """The key an invalid input is reported under: as close to what was given as possible."""
    if isinstance(raw, TaskKey):
        return raw
    if isinstance(raw, tuple) and len(raw) == 3:
        return TaskKey(*raw)
    return cast(TaskKey, raw)


async def fetch_outcome(
    source: TaskFetcher, key: TaskKey, deadline: float | None = None
) -> TaskOutcome:
    """One bulk call, with every failure turned into a value. Only cancellation escapes."""
    try:
        task = await source.fetch_task(key, bulk=True, deadline=deadline)
    except Exception as error:  # a bug in one call must not lose its key
        return TaskOutcome(key, error=error)
    return TaskOutcome(key, task=task)


def outcome_of(task: asyncio.Future[Any], key: TaskKey) -> TaskOutcome:
    """The outcome of a finished poll task."""
    if task.cancelled():
        # Cancelled by someone else than its owner (which ignores its own cancellations).
        return TaskOutcome(key, error=asyncio.CancelledError("the request was cancelled"))
    error = task.exception()
    if error is not None:  # pragma: no cover - _fetch catches every Exception
        return TaskOutcome(key, error=error)
    return cast(TaskOutcome, task.result())


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


def _cancel_quietly(tasks: Iterable[asyncio.Future[Any]]) -> None:
    for task in tasks:
        # RuntimeError: the loop is already closed (we are in a finaliser).
        with contextlib.suppress(RuntimeError):
            task.cancel()


class Scheduler:
    """Base of the schedulers: polls in flight, the consumer's waiter, closing.

    A subclass starts polls with :meth:`_start`, is told of each finished one through
    :meth:`_poll_done`, waits for news with :meth:`_wait`, and drops its own state in
    :meth:`_on_close` (returning any extra task to cancel). It calls :meth:`_end_run` when
    it runs out of work without being closed.
    """

    #: How instrumentation hooks are told of this scheduler's run.
    _run_kind: ClassVar[RunKind]

    def __init__(self, source: TaskFetcher, deadline: float | None = None) -> None:
        self._source = source
        self._deadline = deadline
        self._in_flight: dict[asyncio.Future[Any], Any] = {}
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        # The hooks' view of this run (None without hooks): its polls run in its context.
        self._run = RunObservation.start(self._run_kind, POLLED_ACTION)
        # Done-callbacks hold the scheduler weakly, so dropping it cancels its work at once.
        self._on_done = _weak_callback(self, type(self)._poll_finished)
        self._on_news = _weak_callback(self, Scheduler._wake)

    async def __aenter__(self: _S) -> _S:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop: cancel the polls in flight and wait until they have ended."""
        self._closed = True
        pending = [*self._in_flight, *self._on_close()]
        self._in_flight.clear()
        if pending:
            _cancel_quietly(pending)
            await asyncio.wait(pending)
        self._end_run()

    def __del__(self) -> None:
        # Dropped while polls were in flight (e.g. ``break`` out of ``async for``).
        in_flight = getattr(self, "_in_flight", None)
        if in_flight is None:  # __init__ did not get that far
            return
        self._closed = True
        _cancel_quietly([*in_flight, *self._on_close()])
        self._end_run()

    # -- for subclasses ----------------------------------------------------------------

    def _on_close(self) -> list[asyncio.Future[Any]]:
        """Drop the subclass's state; return any further task to cancel."""
        return []

    def _end_run(self) -> None:
        """Tell the hooks the run has ended (once; nothing without hooks)."""
        run, self._run = self._run, None
        if run is not None:
            run.end()

    def _start(self, key: TaskKey, entry: object) -> None:
        """Start polling ``key``; ``entry`` comes back to :meth:`_poll_done`."""
        run = self._run
        task = asyncio.get_running_loop().create_task(
            fetch_outcome(self._source, key, self._deadline),
            context=None if run is None else run.call_context(),
        )
        self._in_flight[task] = entry
        task.add_done_callback(self._on_done)

    def _poll_finished(self, task: asyncio.Future[Any]) -> None:
        entry = self._in_flight.pop(task, None)
        if entry is None or self._closed:
            return
        self._wake()
        self._poll_done(task, entry)

    def _poll_done(self, task: asyncio.Future[Any], entry: Any) -> None:
        """A poll started with ``entry`` has finished (the scheduler is open)."""
        raise NotImplementedError

    def _wake(self, _future: object = None) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, wake_at: float | None = None) -> None:
        """Wait for news (a poll done, a key pulled, or the loop time ``wake_at``).

        A consumer cancelled while it waits closes the scheduler, as an async generator's
        would.
        """
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_at(wake_at, self._wake) if wake_at is not None else None
        try:
            await waiter
        except asyncio.CancelledError:
            await self.aclose()
            raise
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()
