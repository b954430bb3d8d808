"""What ``client.stats`` reports: the counters of the HTTP path and the recent limiter waits."""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable, Mapping

import attrs

__all__ = ["ClientStats", "Counters", "RecentWaits", "limiter_scope"]


@attrs.frozen
class ClientStats:
    """A snapshot of a client's counters (``client.stats``)."""

    requests_sent: int = 0
    """Attempts handed to the transport, retries included."""
    retries: int = 0
    """Attempts that were retries of an earlier one."""
    throttled: int = 0
    """Answers that said the quota was exceeded."""
    succeeded: int = 0
    """Calls that returned a result."""
    errors: Mapping[str, int] = attrs.field(factory=dict)
    """Calls that failed, by error class name."""
    in_flight: int = 0
    """Requests holding a connection slot now (waiting for the limiter, or on the wire)."""
    limiter_wait_p50: float | None = None
    """Median seconds an attempt waited for its turn (a connection slot and the limiter;
    fan-out and watch polls behind each other too), over the attempts of the last minute
    (at most the last 4,096); ``None`` when there were none."""
    limiter_wait_p99: float | None = None
    """The 99th percentile of the same waits, in seconds."""
    waiting_for_limiter: int = 0
    """Calls waiting for their turn now (for a slot, the limiter, or behind other polls)."""
    limiter_scope: str | None = None
    """Who shares the GetSegmentTask limiter's ceiling: ``"host"`` (every process of the
    account on this host: the default), ``"process"`` (this process only: a
    ``LocalRateLimiter``, or the default where the host's shared state cannot be used),
    ``"redis"`` (every process sharing the Redis key); ``None`` for a limiter that does
    not say (its ``scope`` attribute)."""


@attrs.define
class Counters:
    requests_sent: int = 0
    retries: int = 0
    throttled: int = 0
    succeeded: int = 0
    errors: Counter[str] = attrs.field(factory=Counter)


# ClientStats' limiter wait percentiles cover this many seconds, and at most this many waits.
_WAIT_WINDOW = 60.0
_WAIT_SAMPLES = 4096


class RecentWaits:
    """The waits for the limiter of the last minute: one append per attempt, sorted on read."""

    __slots__ = ("_clock", "_samples")

    def __init__(self) -> None:
        # (when the turn came, seconds waited), oldest first; the bound caps the memory.
        self._samples: deque[tuple[float, float]] = deque(maxlen=_WAIT_SAMPLES)
        self._clock: Callable[[], float] | None = None

    def add(self, clock: Callable[[], float], now: float, seconds: float) -> None:
        self._clock = clock
        self._samples.append((now, seconds))

    def percentiles(self) -> tuple[float | None, float | None]:
        """(p50, p99) of the waits of the last minute, by nearest rank."""
        if self._clock is None:
            return None, None
        horizon = self._clock() - _WAIT_WINDOW
        # A copy, not an iteration: the stats may be read from another thread (a progress
        # display) while the loop appends.
        recent = sorted(wait for when, wait in list(self._samples) if when >= horizon)
        if not recent:
            return None, None
        return _nearest_rank(recent, 0.50), _nearest_rank(recent, 0.99)


def _nearest_rank(ordered: list[float], fraction: float) -> float:
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def limiter_scope(limiter: object) -> str | None:
    """A limiter's ``scope`` (who shares its ceiling), if it says."""
    scope = getattr(limiter, "scope", None)
    return scope if isinstance(scope, str) else None
