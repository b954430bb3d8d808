"""How much margin below the ceiling pacing keeps: learnt from the path, not fixed.

The service counts a request when it *arrives*. Requests sent exactly ``1 / rate`` apart
can arrive closer together when the path's delay varies, and a sliding second at the
server can then hold more than the client sent in any second. If the forward delay varies
by at most ``J`` seconds, sends paced at ``rate`` never put more than
``1 + slack + (1 + J) * rate`` arrivals in one second, so ``rate < (qps - slack) / (1 + J)``
keeps the ceiling (the derivation: ``docs/design/limiter.md``).

:class:`JitterMargin` estimates ``J``: the spread of the client's own round-trip times
(a high quantile minus a low one, over a recent window) bounds the forward path's
variation -- generously, since server time and the return path vary too. A throttled
answer proves the estimate too small: the margin widens at once and relaxes slowly.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["JitterMargin", "paced_rate"]

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


# The bound is strict: a rate exactly at it could put qps + 1 in one second.
_STRICTLY_BELOW = 1 - 1e-6


def paced_rate(qps: float, slack: float, margin: float) -> float:
    """The highest send rate that keeps arrivals under ``qps`` despite ``margin`` of jitter."""
    return (qps - slack) / (1.0 + margin) * _STRICTLY_BELOW


class JitterMargin:
    """An estimate of the arrival jitter to allow for, in seconds.

    ``margin(now)`` is the spread of recent round trips (at least :data:`MIN_MARGIN`),
    plus a widening that each throttled answer doubles and that halves every 30 s.
    ``now`` is any monotonic clock in seconds (the event loop's).
    """

    __slots__ = ("_boost", "_boost_at", "_pending", "_samples", "_spread")

    def __init__(self) -> None:
        self._samples: deque[float] = deque(maxlen=_WINDOW)
        self._pending = 0
        self._spread: float | None = None
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
        self._spread = ordered[-1 - _SKIP] - ordered[_SKIP]
        return True

    def throttled(self, now: float) -> None:
        """A throttled answer: the margin was too small; widen it now (once per second)."""
        if self._boost and now - self._boost_at < _THROTTLE_EVENT_SECONDS:
            return
        current = self._relaxed_boost(now)
        self._boost = min(MAX_MARGIN, current + max(current, _THROTTLE_STEP))
        self._boost_at = now

    def margin(self, now: float) -> float:
        """The jitter to allow for now, in seconds."""
        spread = STARTING_MARGIN if self._spread is None else self._spread
        return min(MAX_MARGIN, max(MIN_MARGIN, spread) + self._relaxed_boost(now))

    @property
    def spread(self) -> float | None:
        """The measured round-trip spread, or ``None`` before enough samples."""
        return self._spread

    def _relaxed_boost(self, now: float) -> float:
        if not self._boost:
            return 0.0
        elapsed = max(0.0, now - self._boost_at)
        return float(self._boost * 0.5 ** (elapsed / _RELAX_HALF_LIFE))
