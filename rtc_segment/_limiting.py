"""Client-side pacing: the :class:`RateLimiter` protocol and :class:`LocalRateLimiter`.

A limiter must guarantee that no sliding one-second window holds more than ``qps`` sends
-- not merely an average of ``qps`` -- because the service judges the ceiling where
requests arrive. How :class:`LocalRateLimiter` does that with an aiolimiter leaky bucket,
and why its numbers are what they are: ``docs/design/limiter.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from ._compat import PacedBucket
from ._validation import check_number

__all__ = ["WAKE_UP_SLACK", "ActionLimiters", "LocalRateLimiter", "RateLimiter"]

#: Extra bucket capacity, as a fraction of one request, that absorbs late timer wake-ups
#: (less when ``qps`` is so low that this would eat the jitter margin).
WAKE_UP_SLACK = 0.1
# A gap of this many send intervals counts as a pause (see LocalRateLimiter.acquire).
_PAUSE_INTERVALS = 2


@runtime_checkable
class RateLimiter(Protocol):
    """What :class:`~rtc_segment.SegmentClient` needs from a limiter.

    ``acquire`` is awaited once before every attempt (retries included). It returns
    when one request may be sent now. If it is cancelled while waiting it must not
    have consumed any capacity that a later caller could have used -- or, for shared
    limiters where that cannot be undone, at most the one slot it had reserved.
    """

    @property
    def qps(self) -> float:
        """The ceiling, in requests per second, that this limiter enforces."""
        ...

    async def acquire(self) -> None:
        """Wait until one more request may be sent."""
        ...


class LocalRateLimiter:
    """Paces the requests of one process so that no sliding second exceeds ``qps``.

    Args:
        qps: The ceiling in requests per second (the service allows 60 for GetSegmentTask).
        utilization: Fraction of ``qps`` to actually send at, in (0, 1). The rest is the
            margin that absorbs jitter between sending and arrival (see the module docs).

    Share one instance between every client of the same account in the process; give
    processes that share an account a :class:`~rtc_segment.RedisRateLimiter` instead.
    """

    def __init__(self, qps: float = 60.0, *, utilization: float = 0.99) -> None:
        check_number("qps", qps, positive=True)
        check_number("utilization", utilization)
        if not 0 < utilization < 1:
            raise ValueError(f"utilization must be in (0, 1), got {utilization!r}")
        self._qps = float(qps)
        self._utilization = float(utilization)
        # The bound needs 1 + slack + rate < qps + 1; at low qps give the slack at most half
        # of that headroom, so that the other half still absorbs arrival jitter.
        slack = min(WAKE_UP_SLACK, (self._qps - self.rate) / 2)
        # Sends are spaced, never bursted: the bucket holds one request plus the slack.
        capacity = 1 + slack
        self._bucket = PacedBucket(capacity, capacity / self.rate)
        self._last_release = float("-inf")

    @property
    def qps(self) -> float:
        """The ceiling this limiter enforces, in requests per second."""
        return self._qps

    @property
    def rate(self) -> float:
        """The sustained send rate: ``utilization * qps`` requests per second."""
        return self._qps * self._utilization

    async def acquire(self) -> None:
        """Wait until one more request may be sent without exceeding the ceiling.

        The first request after a pause is charged one request more: it is the one most
        likely to reach the server late (a new connection, cold caches: ~10 ms even on
        loopback), which squeezes it together with the requests a second later. Under
        sustained load there is no pause, and it costs nothing.
        """
        bucket = self._bucket
        await bucket.acquire()
        now = bucket.now()
        if now - self._last_release > _PAUSE_INTERVALS / bucket.rate:
            bucket.add(1)
        self._last_release = now

    def __repr__(self) -> str:
        return f"LocalRateLimiter(qps={self._qps!r}, utilization={self._utilization!r})"


class ActionLimiters:
    """The limiter of each action of one client, created on first use.

    ``primary`` (GetSegmentTask) waits on ``primary_limiter``. Every other action is paced
    on its own at its ceiling: by ``overrides[name]`` if given, else by
    ``primary_limiter.for_action(name, qps)`` when the primary limiter offers it (a
    ``RedisRateLimiter`` does, so every action is shared across processes), else by a
    ``LocalRateLimiter(qps)``.

    Raises (at construction):
        ValueError: ``overrides`` names an action not in ``ceilings``.
        TypeError: an override is not a :class:`RateLimiter`.
    """

    def __init__(
        self,
        primary: str,
        primary_limiter: RateLimiter,
        *,
        ceilings: Mapping[str, float],
        overrides: Mapping[str, RateLimiter] | None = None,
    ) -> None:
        self._primary = primary_limiter
        self._by_action: dict[str, RateLimiter] = {primary: primary_limiter}
        for name, given in (overrides or {}).items():
            if name not in ceilings:
                raise ValueError(
                    f"action_limiters: unknown action {name!r}; use one of {', '.join(ceilings)}"
                )
            if not isinstance(given, RateLimiter):
                raise TypeError(f"action_limiters[{name!r}] must be a RateLimiter")
            self._by_action[name] = given
        for name, qps in ceilings.items():
            self.get(name, qps)

    @property
    def primary(self) -> RateLimiter:
        """The limiter of the primary action."""
        return self._primary

    def get(self, action: str, qps: float) -> RateLimiter:
        """The limiter of ``action``; made at ceiling ``qps`` if it has none yet."""
        limiter = self._by_action.get(action)
        if limiter is None:
            derive = getattr(self._primary, "for_action", None)
            limiter = derive(action, qps) if callable(derive) else LocalRateLimiter(qps)
            self._by_action[action] = limiter
        return limiter

    def items(self) -> list[tuple[str, RateLimiter]]:
        """``(action, limiter)`` pairs made so far."""
        return list(self._by_action.items())
