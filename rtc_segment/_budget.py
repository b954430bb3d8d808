"""A call's deadline: how much time is left, and where the time went.

``Caller.call`` makes one :class:`Budget` per call; the attempt loop asks it whether a retry
still fits (:meth:`Budget.covers`), bounds waits with it (:meth:`Budget.bound`,
:meth:`Budget.cap`), books every wait under "queued", "in attempts" or "backing off"
(:meth:`Budget.spending`), and turns it into the :class:`DeadlineExceededError` that says so.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator

from ._errors import DeadlineExceededError, RtcSegmentError
from ._models import TaskKey

__all__ = ["Budget", "OutOfTime"]


class OutOfTime(Exception):
    """The call's deadline ran out; ``sent`` tells whether the attempt had been sent."""

    def __init__(self, *, sent: bool) -> None:
        super().__init__()
        self.sent = sent


class Budget:
    """A call's deadline, and where its time went (for :class:`DeadlineExceededError`)."""

    __slots__ = ("_clock", "_ends", "_seconds", "backing_off", "in_attempts", "queued")

    def __init__(self, clock: Callable[[], float], seconds: float | None) -> None:
        self._clock = clock
        self._seconds = seconds
        self._ends = None if seconds is None else clock() + seconds
        self.queued = self.in_attempts = self.backing_off = 0.0

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

    def now(self) -> float:
        return self._clock()

    def remaining(self) -> float | None:
        return None if self._ends is None else self._ends - self._clock()

    def covers(self, seconds: float) -> bool:
        """Whether ``seconds`` more still fit in the budget."""
        left = self.remaining()
        return left is None or seconds < left

    def cap(self, seconds: float) -> float:
        left = self.remaining()
        return seconds if left is None else max(0.0, min(seconds, left))

    def bound(self) -> asyncio.Timeout:
        """A context that raises ``TimeoutError`` when the budget runs out."""
        return asyncio.timeout_at(self._ends)

    @contextlib.contextmanager
    def spending(self, account: str) -> Iterator[None]:
        started = self._clock()
        try:
            yield
        finally:
            setattr(self, account, getattr(self, account) + self._clock() - started)

    def exceeded(
        self,
        action: str,
        key: TaskKey | None,
        attempts: int,
        last_error: RtcSegmentError | None,
        *,
        ambiguous: bool,
    ) -> DeadlineExceededError:
        error = DeadlineExceededError(
            deadline=float(self._seconds or 0.0),
            queued=self.queued,
            in_attempts=self.in_attempts,
            backing_off=self.backing_off,
            last_error=last_error,
            action=action,
            key=key,
            attempts=attempts,
        )
        error.ambiguous = ambiguous
        return error
