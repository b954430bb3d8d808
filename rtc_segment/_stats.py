"""What ``client.stats`` reports: the counters of the HTTP path and the recent limiter waits."""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable, Mapping

import attrs

__all__ = ["ClientStats", "Counters", "RecentWaits", "ThrottleEpisodes", "limiter_scope"]


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
    limiter_rate: float | None = None
    """The rate the primary action's limiter sends at now, in requests per second: below
    the ceiling by the margin for the path's jitter, and lower still while it backs off
    because throttled answers show that someone else uses the account's quota. ``None``
    for a limiter that does not say."""
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


# Throttles persist when this many come within this many seconds: a stray one (the path's
# jitter beating the margin) does not; another consumer of the quota soon does.
_PERSISTING_THROTTLES = 3
_PERSISTING_SECONDS = 10.0
# An episode ends after this long without a throttle; the next one is warned about again.
_EPISODE_QUIET_SECONDS = 60.0


class ThrottleEpisodes:
    """Tells when throttled answers persist, once per episode (for a warning to the operator).

    :meth:`throttled` is called with the time of every throttled answer; it returns True
    for the one that makes them persist (3 within 10 s), and not again until a minute has
    passed without any.
    """

    __slots__ = ("_recent", "_warned")

    def __init__(self) -> None:
        self._recent: deque[float] = deque(maxlen=_PERSISTING_THROTTLES)
        self._warned = False

    def throttled(self, now: float) -> bool:
        """One throttled answer at ``now``; True when it starts a persisting episode."""
        recent = self._recent
        if recent and now - recent[-1] >= _EPISODE_QUIET_SECONDS:
            self._warned = False
        recent.append(now)
        persisting = len(recent) == _PERSISTING_THROTTLES and now - recent[0] <= _PERSISTING_SECONDS
        if persisting and not self._warned:
            self._warned = True
            return True
        return False


def _nearest_rank(ordered: list[float], fraction: float) -> float:
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def limiter_scope(limiter: object) -> str | None:
    """A limiter's ``scope`` (who shares its ceiling), if it says."""
    scope = getattr(limiter, "scope", None)
    return scope if isinstance(scope, str) else None
