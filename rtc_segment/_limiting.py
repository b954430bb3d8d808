"""Client-side pacing: the :class:`RateLimiter` protocol, :class:`LocalRateLimiter`, and
which limiter each client and action waits on.

A limiter must guarantee that no sliding one-second window holds more than ``qps`` sends
-- not merely an average of ``qps`` -- because the service judges the ceiling where
requests arrive. How :class:`LocalRateLimiter` does that with an aiolimiter leaky bucket,
and why its numbers are what they are: ``docs/design/limiter.md``.

Clients made without a ``limiter`` share one limiter per account, action and ceiling
(:func:`shared_limiter`): a :class:`~rtc_segment.HostRateLimiter`, so any number of clients
of one account, in any number of processes on the host, stay under each action's ceiling
together (a :class:`LocalRateLimiter` per process where the host's shared state cannot be
used). A limiter keeps its asyncio state per
event loop (a closed loop's is dropped when the next loop arrives), so no state crosses
loops.
"""

from __future__ import annotations

import asyncio
import logging
import math
import weakref
from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

import attrs

from ._backoff import SendCounter, ThrottleBackoff, ThrottleCause
from ._compat import PacedBucket
from ._host import DIRECTORY_ENV
from ._host_limiter import MAX_HOST_QPS, HostRateLimiter, account_fingerprint
from ._loops import PerLoop as _PerLoop
from ._pacing import (
    CATCH_UP,
    MAX_MARGIN,
    PAUSE_INTERVALS,
    STARTING_MARGIN,
    JitterMargin,
    SendLog,
    paced_rate,
)
from ._validation import check_number

__all__ = [
    "CATCH_UP",
    "ActionLimiters",
    "LocalRateLimiter",
    "PacingFeedback",
    "RateLimiter",
    "bulk_gate",
    "shared_limiter",
]

# A throttle reported within this many seconds of a round trip is that round trip's answer.
_SAME_STEP = 0.001

logger = logging.getLogger("rtc_segment")


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


class PacingFeedback(Protocol):
    """Optional hooks a :class:`RateLimiter` may add to learn from the path.

    The client calls ``observe_round_trip(seconds)`` after every answer and
    ``observe_throttle()`` after every answer that says the quota was exceeded, on the
    limiter the request waited on, when the limiter has them. :class:`LocalRateLimiter`
    (adaptive) uses them to set its margin below the ceiling.
    """

    def observe_round_trip(self, seconds: float) -> None:
        """One request took ``seconds`` from its turn (``acquire`` returning) to the end of
        its answer."""
        ...

    def observe_throttle(self) -> None:
        """The service answered that the quota was exceeded."""
        ...


@attrs.define
class _LoopPacer:
    """A limiter's state in one event loop."""

    bucket: PacedBucket
    sends: SendLog
    # The window the oldest of the last `limit` sends needs, given its round trip.
    window: Callable[[float | None], float]
    margin: JitterMargin
    # Lowers the rate while throttles show that someone else uses the quota (_backoff).
    backoff: ThrottleBackoff
    recent: SendCounter = attrs.field(factory=SendCounter)
    # When the request whose round trip was reported last left, and when that report
    # came: the caller reports a throttled answer's round trip just before the throttle.
    answered: tuple[float, float] | None = None
    # One waiter at a time checks the log and the bucket, so nothing can be sent between
    # its check and its send (and waiters go in arrival order).
    turn: asyncio.Lock = attrs.field(factory=asyncio.Lock)


class LocalRateLimiter:
    """Paces the requests of one process so that no sliding second exceeds ``qps``.

    Args:
        qps: The ceiling in requests per second (the service allows 60 for GetSegmentTask).
        utilization: ``None`` (the default) adapts to the path, from the round trips the
            clients report (:meth:`observe_round_trip`), and widens its margins at once
            when an answer says the quota was exceeded (:meth:`observe_throttle`). A
            number in (0, 1) fixes the rate at ``utilization * qps`` and every window at
            ``1 / utilization`` seconds instead (0.1's behaviour, at 0.99).

    A record of the last ``qps`` sends makes sure that no ``qps + 1`` of them arrive
    within one second: a send waits until the one ``qps`` sends before it is one second
    plus *its* margin old -- how much later than the fastest request it can have arrived,
    which its own round trip bounds (the spread of recent round trips while it is not
    answered yet). Requests are spaced ``1 / rate`` apart, ``rate`` allowing for what a
    typical request needs. (Below 1 QPS: one request per ``(1 + margin) / qps`` seconds.)

    Clients of one account made without a ``limiter`` share a
    :class:`~rtc_segment.HostRateLimiter` with every process of the host instead; pass this
    one to pace a process on its own, and a :class:`~rtc_segment.RedisRateLimiter` to share
    a ceiling across hosts.
    State is kept per event loop: one instance used from two loops (or threads) paces each
    loop on its own.
    """

    #: Who shares this limiter's ceiling: the clients of this process.
    scope = "process"

    def __init__(self, qps: float = 60.0, *, utilization: float | None = None) -> None:
        check_number("qps", qps, positive=True)
        if utilization is not None:
            check_number("utilization", utilization)
            if not 0 < utilization < 1:
                raise ValueError(f"utilization must be in (0, 1), got {utilization!r}")
        self._qps = float(qps)
        self._utilization = None if utilization is None else float(utilization)
        # The log allows `limit` sends per `unit * (1 + margin)` seconds: qps per second,
        # or one per 1 / qps seconds below 1 QPS.
        self._limit = max(1, math.floor(self._qps))
        self._unit = max(1.0, 1.0 / self._qps)
        self._first_rate = (
            self._qps * self._utilization
            if self._utilization is not None
            else paced_rate(self._qps, STARTING_MARGIN)
        )
        self._pacers = _PerLoop(self._new_pacer)

    @property
    def qps(self) -> float:
        """The ceiling this limiter enforces, in requests per second."""
        return self._qps

    @property
    def adaptive(self) -> bool:
        """Whether the send rate follows the observed path (``utilization=None``)."""
        return self._utilization is None

    @property
    def rate(self) -> float:
        """The sustained send rate now, in requests per second (in the running loop): the
        pace the margin allows, or less while throttles show a shared quota (backoff)."""
        pacer = self._pacers.running()
        if pacer is None:
            return self._first_rate
        if self.adaptive:
            return self._paced(pacer)
        return pacer.bucket.rate

    @property
    def margin(self) -> float | None:
        """The arrival jitter the send rate allows for now, in seconds: what a typical
        request needs (adaptive limiters, in a loop; see :class:`LocalRateLimiter`)."""
        pacer = self._pacers.running()
        if pacer is None or not self.adaptive:
            return None
        return pacer.margin.pace(pacer.bucket.now())

    async def acquire(self) -> None:
        """Wait until one more request may be sent without exceeding the ceiling.

        The first request after a pause counts in the window as if sent one interval
        later: it is the one most likely to reach the server late (a new connection, cold
        caches: ~10 ms even on loopback), which would squeeze it together with the
        requests a second later. Under sustained load there is no pause, and it costs
        nothing.
        """
        pacer = self._pacers.get()
        bucket = pacer.bucket
        # A pause is nobody asking for a while -- not a waiter the loop woke late (a stall:
        # that one catches up).
        paused = (
            not pacer.turn.locked()
            and bucket.now() - pacer.sends.last_sent > PAUSE_INTERVALS / bucket.rate
        )
        async with pacer.turn:
            # The log first: waiting on it consumes nothing, so a cancelled waiter leaves
            # no trace. Time only frees the log, and nobody else sends while we hold the
            # turn, so it still agrees once the bucket lets us go. (A loop on the clock, not
            # an event: feedback may widen the window while we sleep.)
            while (wait := self._log_wait(pacer)) > 0:  # noqa: ASYNC110
                await asyncio.sleep(wait)
            await bucket.acquire()
            now = bucket.now()
            if paused:
                # A pause leaves no credit to catch up with: the next send is one interval
                # away, as from a standing start.
                bucket.add(max(0.0, 1 + CATCH_UP - bucket.level))
                pacer.sends.record(now + 1 / bucket.rate, sent=now)
            else:
                pacer.sends.record(now)
            pacer.recent.record(now)

    def _log_wait(self, pacer: _LoopPacer) -> float:
        now = pacer.bucket.now()
        wait = pacer.sends.wait(now, pacer.window)
        backed_off = pacer.backoff.rate(now)
        if backed_off is not None:
            # While someone else uses the quota: the backoff's rate in every second of our
            # sends, spaced evenly.
            wait = max(wait, pacer.recent.wait(now, backed_off))
        if self._utilization is None:
            # The pace changes with time alone -- the backoff climbs, and ends; a throttle's
            # widening of the margin relaxes -- so it is set again before every send (else a
            # backoff that ended while nobody sent would leave the bucket at its lowered rate).
            self._repace(pacer)
        return wait

    def observe_round_trip(self, seconds: float) -> None:
        """Feedback from a client: one request took ``seconds`` from its turn to its answer."""
        if self._utilization is None:
            pacer = self._pacers.get()
            now = pacer.bucket.now()
            pacer.sends.answered(now - seconds, seconds)
            pacer.answered = (now - seconds, now)
            if pacer.margin.record(seconds):
                self._repace(pacer)

    def observe_throttle(self) -> None:
        """Feedback from a client: the service said the quota was exceeded.

        A stray throttle while pacing at the ceiling widens the margin (the jitter was
        underestimated); throttles that persist, or come while this process sends well
        below the ceiling, show that someone else uses the quota, and lower the rate
        instead until they stop (``_backoff.ThrottleBackoff``; docs/design/limiter.md).
        """
        if self._utilization is None:
            pacer = self._pacers.get()
            now = pacer.bucket.now()
            # The round trip reported just before, in the same step, is this answer's.
            answered, pacer.answered = pacer.answered, None
            sent = answered[0] if answered is not None and now - answered[1] < _SAME_STEP else None
            verdict = pacer.backoff.on_throttle(now, pacer.recent.count(now), sent)
            if verdict is ThrottleCause.OWN_PACING:
                pacer.margin.throttled(now)
            self._repace(pacer)

    def _paced(self, pacer: _LoopPacer) -> float:
        now = pacer.bucket.now()
        rate = paced_rate(self._qps, pacer.margin.pace(now))
        cap = pacer.backoff.rate(now)
        return rate if cap is None else min(rate, cap)

    def _repace(self, pacer: _LoopPacer) -> None:
        pacer.bucket.rate = self._paced(pacer)

    def _new_pacer(self) -> _LoopPacer:
        capacity = 1 + CATCH_UP
        longest_window = self._unit * (
            1 / self._utilization if self._utilization is not None else 1 + MAX_MARGIN
        )
        bucket = PacedBucket(capacity, capacity / self._first_rate)
        margin = JitterMargin()
        if self._utilization is not None:
            fixed = self._unit / self._utilization

            def window(round_trip: float | None) -> float:
                return fixed

        else:

            def window(round_trip: float | None) -> float:
                # A send's window: a second plus how late it can have arrived.
                return self._unit * (1.0 + margin.margin_for(round_trip, bucket.now()))

        return _LoopPacer(
            bucket,
            SendLog(self._limit, horizon=longest_window),
            window,
            margin,
            ThrottleBackoff(self._qps),
        )

    def __repr__(self) -> str:
        return f"LocalRateLimiter(qps={self._qps!r}, utilization={self._utilization!r})"


_SHARED: dict[tuple[str, str, float], RateLimiter] = {}
# The warning that the host's shared state cannot be used is logged once per process.
_warned_process_only = False


def shared_limiter(account: str, action: str, qps: float) -> RateLimiter:
    """The default limiter for ``action`` of ``account`` at ``qps``: one per process.

    A :class:`~rtc_segment.HostRateLimiter`, so every process of the account on this host
    shares the ceiling; where the host's shared state cannot be used (no runtime or
    temporary directory, a read-only file system, no ``fcntl``/``mmap``), a
    :class:`LocalRateLimiter` for this process alone, with one warning that says so. A
    ceiling above :data:`~rtc_segment._host_limiter.MAX_HOST_QPS` (the service's are 60
    to 150) is paced per process too: the shared state keeps the last ``qps`` sends.
    Every client made without an explicit limiter waits on this one.
    """
    key = (account, action, float(qps))
    limiter = _SHARED.get(key)
    if limiter is None:
        limiter = _SHARED[key] = _default_limiter(account, action, qps)
    return limiter


def _default_limiter(account: str, action: str, qps: float) -> RateLimiter:
    global _warned_process_only
    if qps > MAX_HOST_QPS:
        return LocalRateLimiter(qps)
    try:
        return HostRateLimiter(f"{account_fingerprint(account)}-{action}", qps)
    except OSError as exc:
        if not _warned_process_only:
            _warned_process_only = True
            logger.warning(
                "rtc_segment: cannot share the rate limit with the other processes on this "
                "host (%s); pacing each process on its own, so N processes of one account "
                "can together exceed its ceiling N times over. Set %s to a private, writable "
                "directory, or give the clients a RedisRateLimiter.",
                exc,
                DIRECTORY_ENV,
            )
        return LocalRateLimiter(qps)


_GATES: weakref.WeakKeyDictionary[object, _PerLoop[asyncio.Lock]] = weakref.WeakKeyDictionary()
_GATES_OF_UNREFERENCEABLE: _PerLoop[asyncio.Lock] = _PerLoop(asyncio.Lock)


def bulk_gate(limiter: RateLimiter) -> asyncio.Lock:
    """The lock bulk work (fan-out, watching) holds while it waits on ``limiter``.

    Bulk work queues here, one waiter at a time at the limiter, so a single interactive
    call is never queued behind more than one bulk request. One lock per limiter and
    event loop, shared by every client that uses the limiter.
    """
    try:
        gates = _GATES.get(limiter)
        if gates is None:
            gates = _GATES[limiter] = _PerLoop(asyncio.Lock)
    except TypeError:  # a limiter that cannot be weakly referenced: one gate per loop
        gates = _GATES_OF_UNREFERENCEABLE
    return gates.get()


class ActionLimiters:
    """The limiter of each action of one client, created on first use.

    ``primary`` (GetSegmentTask) waits on ``primary_limiter`` if one was given, else on
    the default shared limiter for ``account`` at ``qps`` (:func:`shared_limiter`). Every
    other action is paced on its own at its ceiling: by ``overrides[name]`` if given, else by
    ``primary_limiter.for_action(name, qps)`` when the given limiter offers it (a
    ``RedisRateLimiter`` does, so every action is shared across processes), else by the
    default shared limiter for that action of ``account``.

    Raises (at construction):
        ValueError: ``overrides`` names an action not in ``ceilings``.
        TypeError: an override is not a :class:`RateLimiter`.
    """

    def __init__(
        self,
        primary: str,
        primary_limiter: RateLimiter | None,
        *,
        account: str,
        qps: float,
        ceilings: Mapping[str, float],
        overrides: Mapping[str, RateLimiter] | None = None,
    ) -> None:
        self._account = account
        self._derive = getattr(primary_limiter, "for_action", None)
        if primary_limiter is None:
            primary_limiter = shared_limiter(account, primary, qps)
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
        for name, ceiling in ceilings.items():
            self.get(name, ceiling)

    @property
    def primary(self) -> RateLimiter:
        """The limiter of the primary action."""
        return self._primary

    def get(self, action: str, qps: float) -> RateLimiter:
        """The limiter of ``action``; made at ceiling ``qps`` if it has none yet."""
        limiter = self._by_action.get(action)
        if limiter is None:
            derive = self._derive
            limiter = (
                derive(action, qps)
                if callable(derive)
                else shared_limiter(self._account, action, qps)
            )
            self._by_action[action] = limiter
        return limiter

    def items(self) -> list[tuple[str, RateLimiter]]:
        """``(action, limiter)`` pairs made so far."""
        return list(self._by_action.items())
