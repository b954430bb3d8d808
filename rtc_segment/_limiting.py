"""Client-side pacing: the :class:`RateLimiter` protocol and :class:`LocalRateLimiter`.

The service allows ``qps`` requests per second for an action and judges that where
requests *arrive*. A limiter here must therefore guarantee that no sliding one-second
window holds more than ``qps`` sends -- not merely an average of ``qps`` -- and keep a
little slack for the jitter between send and arrival.

:class:`LocalRateLimiter` paces one process with :class:`aiolimiter.AsyncLimiter`
configured as a leaky bucket that drains at ``rate = utilization * qps`` per second and
holds ``1 + WAKE_UP_SLACK`` units, each request adding one. Requests are therefore spaced
``1 / rate`` apart on an absolute schedule:

* The bucket being a little larger than one request lets a waiter that the event loop
  wakes late (timers fire up to a millisecond or so late, more on a busy loop) go at once
  without the delay being added to every later request. With a capacity of exactly one,
  that lost time accumulates: 96 % of the ceiling at best, about 92 % measured through the
  client on this project's 2-core machine.
* Any window of length ``w`` holds at most ``floor(1 + WAKE_UP_SLACK + w * rate)`` sends.
  For ``w = 1 s`` that is ``qps`` (``1.1 + 59.4 < 61`` at the defaults), from idle as under
  load, and it stays ``qps`` while arrivals at the server are squeezed together by up to
  ``(qps - 1 - WAKE_UP_SLACK) / rate - 1`` seconds: about 8 ms at the defaults.
* Sustained throughput is ``rate``: 99 % of the ceiling by default.
* The first request after a pause is charged one request more: it is the one most likely
  to arrive late (a new connection), and the extra interval keeps it out of the window of
  the requests a second later. Under sustained load there is no pause to charge.

(A plain ``AsyncLimiter(60, 1)`` would admit a burst of 60 and then 60 more within the
same second: 119 in the first sliding second from idle.)
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from aiolimiter import AsyncLimiter

__all__ = ["WAKE_UP_SLACK", "LocalRateLimiter", "RateLimiter"]

#: Extra bucket capacity, as a fraction of one request, that absorbs late timer wake-ups
#: (less when ``qps`` is so low that this would eat the jitter margin).
WAKE_UP_SLACK = 0.1
# A wake-up this close to its due time counts as on time (see _Bucket).
_EARLY_TOLERANCE_SECONDS = 1e-6
# A gap of this many send intervals counts as a pause (see _Bucket.acquire).
_PAUSE_INTERVALS = 2
# How far below "one more request fits" a snapped level is put: far enough that aiolimiter's
# two differently rounded comparisons (level + 1 <= capacity, 1 - capacity + level <= 0)
# both agree that it fits.
_HAIR = 1e-9


class _Bucket(AsyncLimiter):
    """``AsyncLimiter`` that forgives a wake-up a clock tick early, or a rounding error late.

    aiolimiter sets its timer for exactly when the bucket will have drained enough, but
    asyncio runs a timer that is due within the clock's resolution, looptime rounds the
    loop's time to 1 us, and the level is float arithmetic. The waiter then finds a sliver
    left, and aiolimiter sets a timer for that sliver -- due "now" again. On a clock that
    does not move until the loop is idle (looptime) that repeats forever; on a coarse clock
    (Windows, ~16 ms) it spins until the clock ticks. A level within a microsecond's drain
    of letting one more request through is taken as letting it through.
    """

    __slots__ = ("_last_release",)

    def __init__(self, max_rate: float, time_period: float) -> None:
        super().__init__(max_rate, time_period)
        self._last_release = float("-inf")

    async def acquire(self, amount: float = 1) -> None:
        """Acquire ``amount``; the first request after a pause is charged one request more.

        After a pause the first request is the one most likely to reach the server late
        (a new connection, cold caches: ~10 ms even on loopback, more over a network),
        which squeezes it together with the requests a second later. Making the next
        request wait one interval more gives it that margin; under sustained load there is
        no pause, and it costs nothing.
        """
        await super().acquire(amount)
        now = self._loop.time()
        if now - self._last_release > _PAUSE_INTERVALS * amount / self._rate_per_sec:
            self._level += 1
        self._last_release = now

    def _leak(self) -> None:
        super()._leak()
        fits_at = self.max_rate - 1  # the level at which one more request fits
        sliver = self._rate_per_sec * _EARLY_TOLERANCE_SECONDS
        if fits_at - _HAIR < self._level <= fits_at + sliver:
            self._level = fits_at - _HAIR


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
        if isinstance(qps, bool) or not isinstance(qps, (int, float)):
            raise TypeError(f"qps must be a number, not {type(qps).__name__}")
        if not qps > 0 or qps != qps or qps == float("inf"):
            raise ValueError(f"qps must be a positive finite number, got {qps!r}")
        if isinstance(utilization, bool) or not isinstance(utilization, (int, float)):
            raise TypeError(f"utilization must be a number, not {type(utilization).__name__}")
        if not 0 < utilization < 1:
            raise ValueError(f"utilization must be in (0, 1), got {utilization!r}")
        self._qps = float(qps)
        self._utilization = float(utilization)
        # The bound needs 1 + slack + rate < qps + 1; at low qps give the slack at most half
        # of that headroom, so that the other half still absorbs arrival jitter.
        slack = min(WAKE_UP_SLACK, (self._qps - self.rate) / 2)
        # Sends are spaced, never bursted: the bucket holds one request plus the slack.
        capacity = 1 + slack
        self._limiter = _Bucket(capacity, capacity / self.rate)

    @property
    def qps(self) -> float:
        """The ceiling this limiter enforces, in requests per second."""
        return self._qps

    @property
    def rate(self) -> float:
        """The sustained send rate: ``utilization * qps`` requests per second."""
        return self._qps * self._utilization

    async def acquire(self) -> None:
        """Wait until one more request may be sent without exceeding the ceiling."""
        await self._limiter.acquire()

    def __repr__(self) -> str:
        return f"LocalRateLimiter(qps={self._qps!r}, utilization={self._utilization!r})"
