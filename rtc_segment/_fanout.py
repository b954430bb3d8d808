"""Fan-out: many GetSegmentTask calls at the ceiling, one outcome per key.

``client.get_segment_tasks(keys)`` returns an :class:`OutcomeStream`;
``client.gather_segment_tasks(keys)`` collects it in input order (:func:`gather_outcomes`).
The machinery shared with watching is in ``_scheduling``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any, cast

from ._models import TaskKey, TaskOutcome
from ._scheduling import (
    KeyLike,
    KeySource,
    PollSource,
    Scheduler,
    TaskFetcher,
    check_concurrency,
    check_deadline,
    check_keys_argument,
    fetcher_of,
    outcome_key,
    outcome_of,
)
from ._validation import validate_key

__all__ = ["OutcomeStream", "gather_outcomes"]

logger = logging.getLogger("rtc_segment")


async def _next_key(source: AsyncIterator[KeyLike]) -> KeyLike:
    return await source.__anext__()


class OutcomeStream(Scheduler):
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

    _run_kind = "fan-out"

    def __init__(
        self,
        source: PollSource,
        keys: KeySource,
        *,
        concurrency: int | None = None,
        deadline: float | None = None,
    ) -> None:
        check_keys_argument(keys)
        check_deadline(deadline)
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
        fetcher = fetcher_of(source)
        self._concurrency = check_concurrency(fetcher, concurrency)
        super().__init__(fetcher, deadline)
        self._pulled = 0
        self._ready: deque[tuple[int, TaskOutcome]] = deque()
        self._pull: asyncio.Task[KeyLike] | None = None
        self._source_error: BaseException | None = None

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
        return (await self.next_indexed())[1]

    def __repr__(self) -> str:
        return (
            f"<OutcomeStream pulled={self._pulled} in_flight={len(self._in_flight)} "
            f"ready={len(self._ready)} concurrency={self._concurrency}"
            f"{' closed' if self._closed else ''}>"
        )

    async def next_indexed(self) -> tuple[int, TaskOutcome]:
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
                self._end_run()
                error, self._source_error = self._source_error, None
                if error is not None:
                    raise error
                raise StopAsyncIteration
            await self._wait()

    # -- machinery --------------------------------------------------------------------

    def _on_close(self) -> list[asyncio.Future[Any]]:
        self._ready.clear()
        self._iter = None
        self._aiter = None
        pull, self._pull = self._pull, None
        return [] if pull is None else [pull]

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
            self._pull.add_done_callback(self._on_news)

    def _source_failed(self, error: BaseException) -> None:
        logger.debug("the key source raised %r; finishing the keys already pulled", error)
        self._source_error = error
        self._iter = None
        self._aiter = None

    def _admit(self, raw: KeyLike) -> None:
        index = self._pulled
        self._pulled += 1
        try:
            key = validate_key(raw)
        except (TypeError, ValueError) as error:
            self._ready.append((index, TaskOutcome(outcome_key(raw), error=error)))
            return
        self._start(key, (index, key))

    def _poll_done(self, task: asyncio.Future[Any], entry: Any) -> None:
        index, key = cast("tuple[int, TaskKey]", entry)
        self._ready.append((index, outcome_of(task, key)))


async def gather_outcomes(
    source: TaskFetcher,
    keys: KeySource,
    *,
    concurrency: int | None = None,
    deadline: float | None = None,
) -> list[TaskOutcome]:
    """Fetch every key's task; return the outcomes in the order of the keys."""
    results: list[TaskOutcome | None] = []
    async with OutcomeStream(source, keys, concurrency=concurrency, deadline=deadline) as stream:
        while True:
            try:
                index, outcome = await stream.next_indexed()
            except StopAsyncIteration:
                break
            if index >= len(results):
                results.extend([None] * (index + 1 - len(results)))
            results[index] = outcome
    # Exactly one outcome per pulled key, so every position is filled.
    return cast("list[TaskOutcome]", results)
