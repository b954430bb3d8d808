"""Backing off when something this client cannot see shares the account's quota.

The service counts every consumer of an account against one ceiling and cannot tell a
client who else is using it: throttled answers are the only signal. A limiter that paces
its own sends within the ceiling and is still throttled shares the quota with someone
(another program or SDK on the account, processes on other hosts without a shared
limiter). :class:`ThrottleBackoff` then lowers this client's sending rate at once and
probes back up over time, so that consumers who do not coordinate settle together at the
ceiling instead of fighting for it.

It is a pure state machine on an injected clock (every method takes ``now``, any monotonic
clock in seconds, e.g. the event loop's), so any limiter can use it:

* On every throttled answer, call :meth:`ThrottleBackoff.on_throttle` with the number of
  sends this limiter made in the last second (:class:`SendCounter` counts them) and, if
  known, when the throttled request left. The verdict says what the throttle means:
  :attr:`ThrottleCause.OWN_PACING` (perhaps this limiter's own margin below the ceiling
  was too thin: widen it), :attr:`ThrottleCause.SHARED_QUOTA` (someone else uses the
  quota: the rate was cut) or :attr:`ThrottleCause.SAME_EPISODE` (the echo of an
  overshoot already acted on: nothing to do).
* Before pacing a send, read :meth:`ThrottleBackoff.rate`: ``None`` when the backoff is
  not engaged, else the most requests per second to send now. Hold it in every sliding
  second of this limiter's sends (:meth:`SendCounter.wait`), not only on average, and
  space sends at the lower of it and the rate the limiter's own pacing allows. It
  changes with time alone, so read it again for every send; successes need not be
  reported.

  Why every second: the server's window holds this client's last second of arrivals
  beside everyone else's. Right after a cut, sends at the lower rate would still be
  refused until enough of the old rate's arrivals have left the window (for a whole
  second when the overshoot began as this client started sending); counting them
  first pauses instead, and lets nothing through that the server would refuse.

The shape (after botocore's "adaptive" retry mode, a client-side token bucket whose rate
follows throttling with a CUBIC curve; see ``docs/design/limiter.md``, "Backoff"):

* **Cut.** On a throttle attributed to a shared quota the rate drops to
  :data:`KEEP` (80 %) of what this client was really sending -- its sends in the last
  second, which is exactly its share of the server's over-full window -- and no more than
  80 % of the rate it was allowed. Throttled answers to requests sent before the cut, or
  within :data:`SETTLE` seconds after it (the server's sliding window still holds the
  old rate's arrivals then), are the same episode and cut nothing; a throttle of a later
  request means the cut was not deep enough, and cuts again. Each cut remembers the rate
  that was throttled.
* **Recovery.** The rate then climbs on a cubic curve: quickly at first, levelling off at
  :data:`PLATEAU` (90 %) of the throttled rate -- known to be too much, so the plateau
  sits just below it -- and after that accelerating again, probing for capacity that may
  have been freed, until it reaches the ceiling and the backoff disengages. The curve's
  steepness is a fixed fraction of the ceiling per second cubed (:data:`GROWTH`), the
  same for every consumer of one ceiling, whatever its own rate: that is what lets
  uncoordinated consumers converge towards equal shares (as in TCP CUBIC).
* **A stray throttle is not a co-tenant.** Pacing at the ceiling, one throttled answer
  may just be this client's own jitter margin proving too thin; that is the limiter's
  business (:attr:`ThrottleCause.OWN_PACING`), and costs no rate. Another throttle within
  :data:`STRAY_WINDOW` seconds, of a request sent after the first came back (so paced
  with the widened margin), is a shared quota; so is any throttle while this client sent
  less than :data:`OWN_SHARE` of the ceiling in the last second (its own jitter cannot
  overfill a window then), or while the backoff is engaged.
"""

from __future__ import annotations

import enum
import math
from collections import deque

__all__ = [
    "GROWTH",
    "KEEP",
    "OWN_SHARE",
    "PLATEAU",
    "SETTLE",
    "STRAY_WINDOW",
    "SendCounter",
    "ThrottleBackoff",
    "ThrottleCause",
]

#: A cut keeps this much of the rate that was throttled.
KEEP = 0.8
#: The recovery levels off at this much of the rate that was throttled.
PLATEAU = 0.9
#: The recovery curve's steepness: this fraction of the ceiling per second cubed. At 60
#: QPS a cut from 30 requests a second reaches its plateau in 2.2 s and passes 30 again
#: 2.2 s later; a cut from 60, in 2.7 s and 2.7 s.
GROWTH = 0.005
#: Seconds after a cut during which throttles of the requests sent are still the same
#: episode. Once the server's window is full, frees come as fast as the ceiling, and a
#: rate that is low enough is not throttled within a few sends; but when the overshoot
#: began less than a second before, the window turns over slower and throttles go on for
#: longer. A quarter of a second is a compromise (measured in virtual time: 0.1 cut too
#: deep when a client started beside a co-tenant, 0.5 cut too late when one arrived).
SETTLE = 0.25
#: Seconds within which another throttle at full pace makes the first no stray one.
STRAY_WINDOW = 5.0
#: Below this share of the ceiling sent in the last second, this client's own jitter
#: cannot overfill a window (that would take more than the widest margin, 50 %).
OWN_SHARE = 2 / 3
#: The rate never drops below this share of the ceiling (1 request per second at 60).
FLOOR_SHARE = 1 / 60
# A wait this short counts as none (see SendCounter.wait).
_ON_TIME = 1e-6
# Without a send time, a throttle within this many seconds of a cut is its echo: the
# server's sliding window remembers a second.
_WINDOW_SECONDS = 1.0


class ThrottleCause(enum.Enum):
    """What :meth:`ThrottleBackoff.on_throttle` made of a throttled answer."""

    OWN_PACING = "own_pacing"
    """Perhaps this client's own margin below the ceiling was too thin (a stray throttle
    while pacing at the ceiling): the limiter should widen its margin. The rate is kept."""
    SHARED_QUOTA = "shared_quota"
    """Someone this client cannot see uses the quota: the rate was cut."""
    SAME_EPISODE = "same_episode"
    """The echo of an overshoot already acted on (a request sent before the last cut took
    effect): nothing to do."""


class SendCounter:
    """How many sends a limiter made in the last (sliding) second.

    Call :meth:`record` at each send and :meth:`count` when a throttle comes.
    """

    __slots__ = ("_sends",)

    def __init__(self) -> None:
        self._sends: deque[float] = deque()

    def record(self, now: float) -> None:
        """One send at ``now``."""
        self._sends.append(now)
        self._forget(now)

    def count(self, now: float) -> int:
        """Sends in the second up to ``now``."""
        self._forget(now)
        return len(self._sends)

    def wait(self, now: float, rate: float) -> float:
        """Seconds from ``now`` until one more send keeps at most ``rate`` (at least one)
        in every sliding second."""
        self._forget(now)
        limit = max(1, math.floor(rate))
        sends = self._sends
        if len(sends) < limit:
            return 0.0
        wait = sends[-limit] + _WINDOW_SECONDS - now
        # Within a clock tick counts as due, or a waiter would sleep for a sliver again and
        # again (looptime's clock moves in whole microseconds).
        return wait if wait > _ON_TIME else 0.0

    def _forget(self, now: float) -> None:
        sends = self._sends
        while sends and sends[0] <= now - _WINDOW_SECONDS:
            sends.popleft()


class ThrottleBackoff:
    """A sending rate that drops when throttled answers show a shared quota and probes back up.

    Args:
        ceiling: The quota's ceiling in requests per second; the rate never exceeds it,
            and the backoff disengages when its curve climbs back to it.

    Typical use by a limiter (``loop.time`` as the clock)::

        verdict = backoff.on_throttle(now, counter.count(now), sent=sent_at)
        if verdict is ThrottleCause.OWN_PACING:
            margin.widen()  # the limiter's own business
        cap = backoff.rate(now)  # before each send
        pace = own_rate if cap is None else min(own_rate, cap)

    See the module's documentation for the curve and how throttles are told apart.
    """

    __slots__ = (
        "_ceiling",
        "_cut_at",
        "_floor",
        "_from",
        "_growth",
        "_plateau",
        "_stray_at",
        "_throttled_rate",
        "_to_plateau",
    )

    def __init__(self, ceiling: float) -> None:
        if not (math.isfinite(ceiling) and ceiling > 0):
            raise ValueError(f"ceiling must be a positive number, got {ceiling!r}")
        self._ceiling = float(ceiling)
        self._floor = self._ceiling * FLOOR_SHARE
        self._growth = GROWTH * self._ceiling
        # Engaged while _cut_at is not None.
        self._cut_at: float | None = None
        self._from = 0.0  # the rate right after the cut
        self._plateau = 0.0
        self._to_plateau = 0.0  # seconds from the cut to the plateau
        self._throttled_rate: float | None = None
        self._stray_at: float | None = None

    @property
    def ceiling(self) -> float:
        """The ceiling the rate never exceeds, in requests per second."""
        return self._ceiling

    @property
    def throttled_rate(self) -> float | None:
        """The sending rate (requests in a second) of the last cut's throttle, or ``None``."""
        return self._throttled_rate

    def engaged(self, now: float) -> bool:
        """Whether the rate is held below the ceiling now."""
        return self.rate(now) is not None

    def rate(self, now: float) -> float | None:
        """The most requests per second to send now; ``None`` when not held back.

        The limiter should send at the lower of this and the rate its own pacing allows.
        """
        if self._cut_at is None:
            return None
        elapsed = max(0.0, now - self._cut_at)
        curve = self._plateau + self._growth * (elapsed - self._to_plateau) ** 3
        if curve >= self._ceiling:
            # Back at the ceiling: the episode is over; the next throttle starts afresh.
            self._cut_at = None
            return None
        return max(self._floor, curve)

    def on_throttle(
        self, now: float, sent_last_second: int, sent: float | None = None
    ) -> ThrottleCause:
        """Take in one throttled answer; cut the rate if it shows a shared quota.

        Args:
            now: When the answer came (the same clock as every other call).
            sent_last_second: How many requests this limiter sent in the second up to
                ``now`` (:class:`SendCounter`).
            sent: When the throttled request left, if known. Without it, any throttle
                within a second of the last cut (or stray throttle) counts as its echo
                (safe, but a cut that was not deep enough is then deepened only a second
                later).

        Returns:
            What the throttle was taken for; see :class:`ThrottleCause`.
        """
        allowed = self.rate(now)
        if allowed is not None:
            assert self._cut_at is not None  # engaged
            if not self._left_after(self._cut_at, now, sent, settle=SETTLE):
                return ThrottleCause.SAME_EPISODE
        elif sent_last_second >= OWN_SHARE * self._ceiling:
            # At full pace: perhaps our own margin, unless it persists.
            if self._stray_at is None or now - self._stray_at >= STRAY_WINDOW:
                self._stray_at = now
                return ThrottleCause.OWN_PACING
            if not self._left_after(self._stray_at, now, sent):
                return ThrottleCause.SAME_EPISODE
        throttled = float(max(1, sent_last_second))
        if allowed is not None:
            throttled = min(throttled, allowed)
        self._cut(now, throttled)
        return ThrottleCause.SHARED_QUOTA

    @staticmethod
    def _left_after(mark: float, now: float, sent: float | None, settle: float = 0.0) -> bool:
        """Whether the throttled request left ``settle`` s after ``mark`` (the rate or
        margin it was sent at already allowed for what happened then); without its send
        time, whether the answer came a second after ``mark``, when the server's window
        has turned over."""
        if sent is not None:
            return sent >= mark + settle
        return now >= mark + _WINDOW_SECONDS

    def _cut(self, now: float, throttled: float) -> None:
        self._throttled_rate = throttled
        self._from = max(self._floor, KEEP * throttled)
        self._plateau = max(self._from, PLATEAU * throttled)
        self._to_plateau = ((self._plateau - self._from) / self._growth) ** (1 / 3)
        self._cut_at = now
        self._stray_at = None

    def __repr__(self) -> str:
        return f"ThrottleBackoff(ceiling={self._ceiling!r})"
