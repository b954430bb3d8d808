"""Watching: polling tasks until they end, yielding each change.

``client.wait_for_segment_task`` (:func:`wait_for`), ``client.watch_segment_task``
(:func:`watch_one`) and ``client.watch_segment_tasks`` (:class:`TaskWatch`). The machinery
shared with fan-out is in ``_scheduling``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable
from typing import Any, cast

import attrs

from ._errors import RtcSegmentError, WaitTimeoutError
from ._instrumentation import RunObservation
from ._models import SegmentTask, TaskKey
from ._scheduling import (
    POLLED_ACTION,
    KeyLike,
    PollSource,
    Scheduler,
    TaskFetcher,
    check_concurrency,
    check_deadline,
    check_interval,
    check_keys_argument,
    fetcher_of,
    is_transient,
    outcome_key,
    outcome_of,
)
from ._validation import check_number, validate_key

__all__ = ["TaskWatch", "WatchEvent", "wait_for", "watch_one"]

logger = logging.getLogger("rtc_segment")

# Timers may fire up to a clock tick early (asyncio's clock resolution, looptime's 1 us
# rounding): a poll due within this is due now, or the wait would spin.
_CLOCK_SLACK = 1e-6


@attrs.define
class _LastSeen:
    task: SegmentTask | None = None
    error: BaseException | None = None


def watch_one(
    source: TaskFetcher,
    key: TaskKey,
    *,
    poll_interval: float = 5.0,
    deadline: float | None = None,
) -> AsyncIterator[SegmentTask]:
    """Yield the task's state each time it changes (the first state included), until it ends.

    Polls at most once per ``poll_interval`` seconds (measured from the end of one poll to
    the start of the next). A poll that fails transiently (after the client's own retries)
    is skipped and tried again after ``poll_interval``; a permanent error (not found,
    authentication, invalid parameter) is raised. ``deadline`` bounds each poll; a poll
    that runs out of it counts as a transient failure.
    """
    interval = check_interval(poll_interval)
    return _watch_one(source, key, interval, check_deadline(deadline), _LastSeen())


async def _watch_one(
    source: TaskFetcher, key: TaskKey, interval: float, deadline: float | None, seen: _LastSeen
) -> AsyncGenerator[SegmentTask, None]:
    last: SegmentTask | None = None
    run = RunObservation.start("watch", POLLED_ACTION)  # None without instrumentation hooks
    try:
        while True:
            try:
                task = await _poll(source, key, deadline, run)
            except RtcSegmentError as error:
                if not is_transient(error):
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
    finally:
        if run is not None:
            run.end()


async def _poll(
    source: TaskFetcher, key: TaskKey, deadline: float | None, run: RunObservation | None
) -> SegmentTask:
    if run is None:
        return await source.fetch_task(key, bulk=True, deadline=deadline)
    # A task of its own, so that the poll runs in the run's context (what the hooks set
    # there); cancelling this coroutine cancels it.
    return await asyncio.get_running_loop().create_task(
        source.fetch_task(key, bulk=True, deadline=deadline), context=run.call_context()
    )


async def wait_for(
    source: TaskFetcher,
    key: TaskKey,
    *,
    poll_interval: float = 5.0,
    timeout: float | None = None,
    deadline: float | None = None,
) -> SegmentTask:
    """Poll one task until it has ended or failed, and return that final state.

    Raises:
        WaitTimeoutError: ``timeout`` seconds passed first; it carries ``last_task``.
        RtcSegmentError: a permanent error of a poll (transient ones are polled through).
    """
    interval = check_interval(poll_interval)
    if timeout is not None:
        check_number("timeout", timeout, minimum=0)
    per_poll = check_deadline(deadline)
    seen = _LastSeen()

    async def until_terminal() -> SegmentTask:
        # Closed at once, not when collected: its end is the end of the run hooks see.
        async with contextlib.aclosing(_watch_one(source, key, interval, per_poll, seen)) as polls:
            async for task in polls:
                if task.is_terminal:
                    return task
        raise AssertionError("unreachable: the watch ends only after a terminal state")

    if timeout is None:
        return await until_terminal()
    try:
        return await asyncio.wait_for(until_terminal(), timeout)
    except TimeoutError:
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


class TaskWatch(Scheduler):
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

    _run_kind = "watch"

    def __init__(
        self,
        source: PollSource,
        keys: Iterable[KeyLike],
        *,
        poll_interval: float = 5.0,
        concurrency: int | None = None,
        stop_when_empty: bool = True,
        deadline: float | None = None,
    ) -> None:
        check_keys_argument(keys)
        if isinstance(keys, AsyncIterable) or not isinstance(keys, Iterable):
            raise TypeError(
                f"keys must be an iterable of task keys, not {type(keys).__name__} "
                "(use add() to watch keys as they come)"
            )
        self._interval = check_interval(poll_interval)
        fetcher = fetcher_of(source)
        self._concurrency = check_concurrency(fetcher, concurrency)
        super().__init__(fetcher, check_deadline(deadline))
        self._stop_when_empty = bool(stop_when_empty)
        self._watched: dict[TaskKey, _Watched] = {}
        # Idle keys by the time they may be polled next; ties in insertion order. Entries of
        # keys removed since are skipped when they surface.
        self._schedule: list[tuple[float, int, _Watched]] = []
        self._order = itertools.count()
        self._events: deque[WatchEvent] = deque()
        self._over_quota_reported = False
        # The achieved interval: a running mean over recent per-key gaps between polls.
        self._gaps: deque[float] = deque()
        self._gap_sum = 0.0
        for raw in keys:
            try:
                key = validate_key(raw)
            except (TypeError, ValueError) as error:
                self._events.append(WatchEvent(outcome_key(raw), error=error, final=True))
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
        self._wake()

    def discard(self, key: KeyLike) -> None:
        """Stop watching a task (no-op if it is not watched). No event is yielded for it."""
        if isinstance(key, tuple) and len(key) == 3:
            self._watched.pop(TaskKey(*key), None)
            self._wake()

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
            await self._wait(wake_at)

    def __repr__(self) -> str:
        achieved = self.achieved_interval
        shown = "n/a" if achieved is None else f"{achieved:.3g}s"
        return (
            f"<TaskWatch watching={len(self._watched)} in_flight={len(self._in_flight)} "
            f"poll_interval={self._interval:g}s achieved_interval={shown}"
            f"{' closed' if self._closed else ''}>"
        )

    # -- machinery --------------------------------------------------------------------

    def _on_close(self) -> list[asyncio.Future[Any]]:
        self._schedule.clear()
        self._events.clear()
        return []

    def _watch(self, key: TaskKey) -> None:
        state = _Watched(key)
        self._watched[key] = state
        heapq.heappush(self._schedule, (-math.inf, next(self._order), state))

    def _report_over_quota(self) -> None:
        try:
            qps = float(self._source.qps)
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
            self._start(state.key, state)
        return None

    def _poll_done(self, task: asyncio.Future[Any], entry: Any) -> None:
        state = cast(_Watched, entry)
        if self._watched.get(state.key) is not state:
            return  # discarded while the poll was in flight
        now = task.get_loop().time()
        if state.last_polled is not None:
            self._record_gap(now - state.last_polled)
        state.last_polled = now
        outcome = outcome_of(task, state.key)
        error = outcome.error
        if error is not None:
            if is_transient(error):
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
