"""How much margin below the ceiling pacing keeps, learnt from the path, and the record
of recent sends that enforces it.

The service counts a request when it *arrives*. Requests sent exactly ``1 / rate`` apart
can arrive closer together when the path's delay varies, and a sliding second at the
server can then hold more than the client sent in any second. If the forward delay varies
by at most ``J`` seconds, any second of arrivals was sent within ``1 + J`` seconds, so at
most ``qps`` sends in any ``1 + J`` second window keeps the ceiling where requests arrive
(:class:`SendLog` checks exactly that; the derivation: ``docs/design/limiter.md``).

:class:`JitterMargin` estimates ``J``: the spread of the client's own round-trip times
(a high quantile minus a low one, over a recent window) bounds the forward path's
variation -- generously, since server time and the return path vary too. A throttled
answer proves the estimate too small: the margin widens at once and relaxes slowly.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

__all__ = ["CATCH_UP", "PAUSE_INTERVALS", "JitterMargin", "SendLog", "paced_rate"]

#: How late, in send intervals, a waiter may be woken without the delay being lost: the
#: bucket holds this much more than one request, so the next waiters catch up at once.
#: A busy or shared machine stalls an event loop for tens of milliseconds now and then;
#: three intervals (50 ms at 60 QPS) catch up most of those. Catching up never breaks
#: the ceiling: the send log checks every window.
CATCH_UP = 3.0
#: A gap of this many send intervals with nobody waiting is a pause (see the limiters'
#: ``acquire``).
PAUSE_INTERVALS = 2

# Round trips kept for the estimate; the quantiles skip the extreme sample at each end.
_WINDOW = 128
_SKIP = 1
# Fewer samples than this say nothing yet: use the starting margin.
_MIN_SAMPLES = 16
# Recompute the quantiles after this many new samples (sorting on every one is waste).
_EVERY = 16
#: The margin before anything was measured: 0.1's fixed margin (1 % of the ceiling).
STARTING_MARGIN = 0.008
#: The least margin: timers fire late by up to about a millisecond on a busy loop.
MIN_MARGIN = 0.002
#: The most margin: a spread beyond this is an outlier-ridden window, not the path.
MAX_MARGIN = 0.5
# A throttled answer widens the margin by at least this, doubling on repeats...
_THROTTLE_STEP = 0.005
# ...and the widening halves every this many seconds without another.
_RELAX_HALF_LIFE = 30.0
# Throttled answers this close together are one event (the same crowded second).
_THROTTLE_EVENT_SECONDS = 1.0


# A send this close to when the log allows it counts as allowed (see SendLog.wait).
_ON_TIME = 1e-6

# The bound is strict: a rate exactly at it could put qps + 1 in one second.
_STRICTLY_BELOW = 1 - 1e-6


def paced_rate(qps: float, margin: float) -> float:
    """The highest send rate that keeps arrivals under ``qps`` despite ``margin`` of jitter:
    sends spaced exactly this far apart put at most ``qps`` in any ``1 + margin`` seconds."""
    return qps / (1.0 + margin) * _STRICTLY_BELOW


class _Send:
    """One send in a :class:`SendLog`: when it counts, when it left, and its round trip."""

    __slots__ = ("at", "round_trip", "sent")

    def __init__(self, at: float, sent: float) -> None:
        self.at = at
        self.sent = sent
        self.round_trip: float | None = None


class SendLog:
    """The last sends, and when one more keeps every window under the ceiling.

    At most ``limit`` sends may fall in any window; how long that window is may depend on
    the oldest of them (its round trip, once answered, says how late it can have arrived),
    so :meth:`wait` takes the window as a function of that round trip (``None`` while
    unknown). Windows must never exceed ``horizon``, how long a send is remembered.
    Times must not go backwards; :meth:`record` keeps them ordered, which is what makes
    checking only the ``limit``-th previous send enough: with ordered times, any
    ``limit + 1`` sends inside one window would include that pair.
    """

    __slots__ = ("_horizon", "_sends")

    def __init__(self, limit: int, horizon: float) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit!r}")
        self._sends: deque[_Send] = deque(maxlen=limit)
        # Forgetting sends older than any window keeps a huge ceiling from holding a
        # huge record (at most `limit` sends either way).
        self._horizon = horizon

    def wait(self, now: float, window: Callable[[float | None], float]) -> float:
        """Seconds from ``now`` until one more send keeps its window under the limit.

        ``window(round_trip)`` is the window that the oldest of the last ``limit`` sends
        needs, given its round trip (``None``: not answered yet).
        """
        sends = self._sends
        if len(sends) < (sends.maxlen or 0):
            return 0.0
        oldest = sends[0]
        wait = oldest.at + window(oldest.round_trip) - now
        # A timer may fire within the clock's resolution of its due time (and looptime's
        # clock moves in whole microseconds): that close counts as due, or a waiter would
        # sleep for a sliver again and again.
        return wait if wait > _ON_TIME else 0.0

    def record(self, at: float, sent: float | None = None) -> None:
        """Count a send that left at ``sent`` (default: ``at``) as if at ``at``.

        ``at`` is moved up to the previous send's, if that is later.
        """
        sends = self._sends
        left = at if sent is None else sent
        if sends and at < sends[-1].at:
            at = sends[-1].at
        sends.append(_Send(at, left))
        # Measured from when this one left, not from when it counts (a first send after a
        # pause counts one interval later): a send forgotten then has no window left, now
        # or at any later check.
        while sends[0].at <= left - self._horizon:
            sends.popleft()

    def answered(self, sent: float, round_trip: float) -> bool:
        """Note the round trip of the latest unanswered send that left by ``sent``.

        Returns False when no send matches (it was forgotten, or never recorded here).
        """
        for entry in reversed(self._sends):
            if entry.sent <= sent + _ON_TIME and entry.round_trip is None:
                entry.round_trip = round_trip
                return True
        return False

    @property
    def last_sent(self) -> float:
        """When the latest send left (``-inf`` before any)."""
        return self._sends[-1].sent if self._sends else float("-inf")

    def __len__(self) -> int:
        return len(self._sends)


class JitterMargin:
    """An estimate of the arrival jitter to allow for, in seconds.

    Two answers, each plus a widening that each throttled answer doubles and that halves
    every 30 s (``now`` is any monotonic clock in seconds: the event loop's):

    * ``margin_for(round_trip, now)``: how much later than the fastest a request with this
      round trip can have arrived -- its round trip minus the least of the recent ones
      (the rest of a round trip, the server and the way back, never took less than in the
      fastest). For a request not answered yet, ``margin(now)``: the spread of recent
      round trips, which bounds any one of them.
    * ``pace(now)``: the margin the send rate allows for on average: the mean of recent
      round trips minus the least.

    Both are at least :data:`MIN_MARGIN`, at most :data:`MAX_MARGIN`; until 16 round
    trips are known, both are :data:`STARTING_MARGIN`.
    """

    __slots__ = ("_boost", "_boost_at", "_floor", "_pending", "_samples", "_spread", "_typical")

    def __init__(self) -> None:
        self._samples: deque[float] = deque(maxlen=_WINDOW)
        self._pending = 0
        self._spread: float | None = None
        self._floor: float | None = None
        self._typical: float | None = None
        self._boost = 0.0
        self._boost_at = 0.0

    def record(self, round_trip: float) -> bool:
        """Add one round-trip time; return True when the estimate was updated."""
        if not math.isfinite(round_trip) or round_trip < 0:
            return False
        self._samples.append(round_trip)
        self._pending += 1
        if self._pending < _EVERY or len(self._samples) < _MIN_SAMPLES:
            return False
        self._pending = 0
        ordered = sorted(self._samples)
        # The inner range of n samples falls short of the range they are drawn from: by
        # (n - 1 - 2 * skip) / (n + 1) of it for a uniform spread (order statistics), which
        # is the shape of a jittery path's forward delay. Scale it back up: 3 % at 128
        # samples, more while few are known -- when an under-estimate is likeliest.
        count = len(ordered)
        inner = ordered[-1 - _SKIP] - ordered[_SKIP]
        self._spread = inner * (count + 1) / (count - 1 - 2 * _SKIP)
        self._floor = ordered[0]
        self._typical = math.fsum(ordered) / count - ordered[0]
        return True

    def throttled(self, now: float) -> None:
        """A throttled answer: the margin was too small; widen it now (once per second)."""
        if self._boost and now - self._boost_at < _THROTTLE_EVENT_SECONDS:
            return
        current = self._relaxed_boost(now)
        self._boost = min(MAX_MARGIN, current + max(current, _THROTTLE_STEP))
        self._boost_at = now

    def margin(self, now: float) -> float:
        """The jitter to allow for now, in seconds: the most any one request may need."""
        spread = STARTING_MARGIN if self._spread is None else self._spread
        return self._bounded(spread, now)

    def margin_for(self, round_trip: float | None, now: float) -> float:
        """The jitter to allow for a request whose round trip was ``round_trip`` seconds.

        ``None`` (not answered yet) gets :meth:`margin`.
        """
        if round_trip is None or self._floor is None:
            return self.margin(now)
        # The least round trip seen only approximates the least forward delay plus the
        # least of the rest: MIN_MARGIN on top covers the difference.
        return self._bounded(max(0.0, round_trip - self._floor) + MIN_MARGIN, now)

    def pace(self, now: float) -> float:
        """The jitter the send rate allows for: what a typical request needs."""
        typical = STARTING_MARGIN if self._typical is None else self._typical + MIN_MARGIN
        return self._bounded(typical, now)

    def _bounded(self, jitter: float, now: float) -> float:
        return min(MAX_MARGIN, max(MIN_MARGIN, jitter) + self._relaxed_boost(now))

    @property
    def spread(self) -> float | None:
        """The measured round-trip spread, or ``None`` before enough samples."""
        return self._spread

    def _relaxed_boost(self, now: float) -> float:
        if not self._boost:
            return 0.0
        elapsed = max(0.0, now - self._boost_at)
        return float(self._boost * 0.5 ** (elapsed / _RELAX_HALF_LIFE))
