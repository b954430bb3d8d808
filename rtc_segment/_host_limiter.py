""":class:`HostRateLimiter`: one ceiling for every process of one account on one host.

Each acquisition takes the host's shared state (:mod:`rtc_segment._host`) twice, for a few
microseconds each, and never across an ``await``: once to reserve the next slot of the
shared schedule (GCRA at the send rate, with :data:`~rtc_segment._pacing.CATCH_UP`
intervals of tolerance for late wake-ups), and once, when that slot has come, to check
the shared send log -- no ``qps + 1`` sends within any send's window -- and log the send
at the moment it really goes. Why that bounds every sliding second of arrivals, across
processes: ``docs/design/limiter.md``.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import re
import time
from collections.abc import Callable
from typing import Protocol

import attrs

from ._backoff import ThrottleBackoff, ThrottleCause
from ._host import COARSE_CLOCK_TOLERANCE, LAYOUT_VERSION, HostState, state_directory
from ._loops import PerLoop
from ._pacing import (
    CATCH_UP,
    MAX_MARGIN,
    MIN_MARGIN,
    PAUSE_INTERVALS,
    STARTING_MARGIN,
    JitterMargin,
    paced_rate,
)
from ._validation import check_number

__all__ = ["MAX_HOST_QPS", "HostRateLimiter"]

#: The highest ceiling a host-wide limiter takes. Its shared state keeps the last ``qps``
#: sends and is checked whole in every transaction, so its cost grows with the ceiling:
#: about 30 us a transaction at 1,000 (32 KB), 20 ms at a million (32 MB: 200 requests
#: then took 23 s). The service's ceilings are 60 to 150 QPS.
MAX_HOST_QPS = 1000.0

_KEY = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_DERIVED_KEY = re.compile(r"([0-9a-f]{16})-[A-Za-z0-9]+")
# A loop whose clock is this far from the host's monotonic clock keeps its own time
# (looptime's virtual clock, say): its sends cannot be placed on the shared schedule.
_CLOCK_AGREEMENT_SECONDS = 0.25
# A throttle reported within this many seconds of a round trip is that round trip's answer.
_SAME_STEP = 0.001
# The host-wide fastest round trip is forgotten after this long (a path can get slower).
_FASTEST_MEMORY_SECONDS = 30.0


class _AccountCredentials(Protocol):
    @property
    def access_key_id(self) -> str: ...


def account_fingerprint(access_key_id: str) -> str:
    """The first 16 hex digits of the SHA-256 of an access key id: names the account,
    reveals nothing about its credentials."""
    return hashlib.sha256(access_key_id.encode("utf-8")).hexdigest()[:16]


@attrs.define
class _HostPacer:
    """A limiter's state in one event loop."""

    state: HostState
    clock: Callable[[], float]
    margin: JitterMargin = attrs.field(factory=JitterMargin)
    # One waiter of this loop at a time holds a reservation: the processes' reservations
    # interleave, so every process that has work gets an equal share of the slots.
    turn: asyncio.Lock = attrs.field(factory=asyncio.Lock)
    rate: float = 0.0
    # When this loop's latest send left (-inf before any).
    last_sent: float = float("-inf")
    # Lowers this process's rate while throttles show that someone the host's processes
    # cannot see uses the quota (_backoff; made with the pacer, at the ceiling).
    backoff: ThrottleBackoff | None = None
    # (when the request went, when its answer came) of the latest round trip reported: the
    # caller reports a throttled answer's round trip just before the throttle.
    answered: tuple[float, float] | None = None
    # How far the loop's clock, which times the round trips, may read before ours.
    tolerance: float = 1e-6


class HostRateLimiter:
    """Paces every process of one account on this host so that together no sliding second
    holds more than ``qps`` sends. No server to run: the processes share a small file.

    It is the default: a :class:`~rtc_segment.SegmentClient` made without a ``limiter``
    uses one per action, keyed by its account, so ``uvicorn --workers 4`` or a supervisor
    running N workers stays under the account's ceiling together. Processes that do not
    share a host -- or a runtime directory, as separate containers do -- need a
    :class:`~rtc_segment.RedisRateLimiter`.

    Args:
        key: Which budget to share: every process using the same key, ``qps`` and
            directory shares one ceiling. :meth:`key_for` derives it from the account and
            action. Letters, digits, ``_``, ``.`` and ``-`` only.
        qps: The ceiling in requests per second (the service allows 60 for GetSegmentTask);
            at most :data:`MAX_HOST_QPS` (1,000).
        utilization: ``None`` (the default) adapts like :class:`LocalRateLimiter`: each
            process spaces the slots it reserves by a margin learnt from its own round
            trips (:meth:`observe_round_trip`), widened at once by a throttled answer
            (:meth:`observe_throttle`), and gives each of its sends a window of a second
            plus how late that send can have arrived. A number in (0, 1) fixes the rate
            at ``utilization * qps`` and every window at ``1 / utilization`` seconds.
        directory: Where to keep the shared state: a directory ``rtc_segment-<uid>`` is
            made under it. Default: ``$RTC_SEGMENT_LIMITER_DIR``, else
            ``$XDG_RUNTIME_DIR``, else the temporary directory. Processes share a budget
            only if they use the same directory.

    Raises:
        ValueError: ``key``, ``qps`` or ``utilization`` is invalid (``qps`` above
            :data:`MAX_HOST_QPS` included).
        OSError: The shared state cannot be used here (no such directory, read-only file
            system, a directory or file not private to this user, no ``fcntl``/``mmap``).

    The state holds only times on the host's monotonic clock and, in its name, the key
    (for :meth:`key_for`, a fingerprint of the access key id); the file is ``0600`` in a
    ``0700`` directory, and another user's file, directory or a symlink is refused. A
    process killed at any moment leaves no lock behind and costs at most its one reserved
    slot. In an event loop whose clock is not the host's monotonic clock (a virtual clock
    in tests), the limiter paces that loop on its own.
    """

    #: Who shares this limiter's ceiling: every process of the account on this host.
    scope = "host"

    def __init__(
        self,
        key: str,
        qps: float = 60.0,
        *,
        utilization: float | None = None,
        directory: str | os.PathLike[str] | None = None,
        _clock: Callable[[], float] | None = None,
    ) -> None:
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ValueError(f"key must be 1-128 letters, digits, '_', '.' or '-', got {key!r}")
        check_number("qps", qps, positive=True)
        if qps > MAX_HOST_QPS:
            raise ValueError(
                f"qps must be at most {MAX_HOST_QPS:g} for a HostRateLimiter (its shared state "
                f"keeps the last qps sends), got {qps!r}; use a LocalRateLimiter above that"
            )
        if utilization is not None:
            check_number("utilization", utilization)
            if not 0 < utilization < 1:
                raise ValueError(f"utilization must be in (0, 1), got {utilization!r}")
        self._key = key
        self._qps = float(qps)
        self._utilization = None if utilization is None else float(utilization)
        self._directory = directory
        # A send's window spans `unit` seconds plus its margin (one per 1 / qps below 1 QPS).
        self._unit = max(1.0, 1.0 / self._qps)
        self._first_rate = (
            self._qps * self._utilization
            if self._utilization is not None
            else paced_rate(self._qps, STARTING_MARGIN)
        )
        self._given_clock = _clock
        self._clock = _clock if _clock is not None else time.monotonic
        self._salt = int.from_bytes(os.urandom(4), "little")
        path = state_directory(directory) / f"{key}-{self._qps!r}.v{LAYOUT_VERSION}"
        self._state = HostState(
            path, self._qps, clock=self._clock, rebuild_window=self._longest_window()
        )
        self._pacers = PerLoop(self._new_pacer)

    @staticmethod
    def key_for(credentials: _AccountCredentials, action: str = "GetSegmentTask") -> str:
        """The key for ``action`` of the account that ``credentials`` belong to.

        ``<fingerprint>-<action>``: the fingerprint is the first 16 hex digits of the
        SHA-256 of the access key id (the same as :meth:`RedisRateLimiter.key_for`'s).
        """
        fingerprint = getattr(credentials, "account_fingerprint", None)
        if not isinstance(fingerprint, str):
            fingerprint = account_fingerprint(credentials.access_key_id)
        return f"{fingerprint}-{action}"

    def for_action(self, action: str, qps: float) -> HostRateLimiter:
        """A limiter for another action of the same account: same directory and settings.

        :class:`~rtc_segment.SegmentClient` calls this to pace the other actions at their
        own ceilings. A key made by :meth:`key_for` gets the other action's name in place
        of its own; any other key gets ``-<action>`` appended.
        """
        derived = _DERIVED_KEY.fullmatch(self._key)
        key = f"{derived.group(1)}-{action}" if derived else f"{self._key}-{action}"
        return HostRateLimiter(
            key,
            qps,
            utilization=self._utilization,
            directory=self._directory,
            _clock=self._given_clock,
        )

    @property
    def qps(self) -> float:
        """The ceiling this limiter enforces, in requests per second."""
        return self._qps

    @property
    def key(self) -> str:
        """The key whose budget this limiter shares."""
        return self._key

    @property
    def adaptive(self) -> bool:
        """Whether the send rate follows the observed path (``utilization=None``)."""
        return self._utilization is None

    @property
    def rate(self) -> float:
        """This process's send rate now, in requests per second (in the running loop): the
        rate from its margin, capped by :attr:`rate_cap`, and lower while it backs off
        because throttles show that someone else uses the quota."""
        pacer = self._pacers.running()
        if pacer is None or not pacer.rate:
            return self._first_rate
        with pacer.state.transaction() as log:
            cap = log.rate_cap
        return self._send_rate(pacer, cap, pacer.clock())

    @property
    def rate_cap(self) -> float | None:
        """The host-wide cap on the send rate (requests per second), or ``None``."""
        with self._state.transaction() as log:
            return log.rate_cap

    def set_rate_cap(self, rate: float | None) -> None:
        """Cap the send rate of every process sharing this limiter (``None``: no cap).

        For a backoff when something else uses the account's quota: the cap lives in the
        shared state, so one process's setting paces all of them.

        Raises:
            ValueError: ``rate`` is not a positive number or ``None``.
        """
        if rate is not None:
            check_number("rate", rate, positive=True)
            rate = float(rate)
        with self._state.transaction() as log:
            log.rate_cap = rate

    def _send_rate(self, pacer: _HostPacer, cap: float | None, now: float) -> float:
        """The rate this process spaces its reservations at: the one place it is computed."""
        if self._utilization is not None:
            rate = self._qps * self._utilization
        else:
            rate = paced_rate(self._qps, pacer.margin.pace(now))
        backed_off = self._backed_off_rate(pacer, now)
        for limit in (cap, backed_off):
            if limit is not None:
                rate = min(rate, limit)
        pacer.rate = rate
        return rate

    def _window(
        self,
        pacer: _HostPacer,
        round_trip: float | None,
        now: float,
        fastest: float = math.inf,
    ) -> float:
        """The window one send needs: a second plus how late it can have arrived.

        An answered send (``round_trip`` from when it was logged) can have arrived at most
        ``round_trip - fastest`` later than the fastest request on the host: ``fastest``
        is the least round trip any process sharing the state saw lately, a floor that a
        process sending an eighth of the requests would learn only slowly on its own.
        Until this process has 16 round trips, the whole round trip bounds it.
        """
        if self._utilization is not None:
            return self._unit / self._utilization
        margin = pacer.margin.margin_for(round_trip, now)
        if round_trip is not None:
            # A floor from a few samples is no floor: until this process knows its spread,
            # the whole round trip bounds how late the request can have arrived.
            settled = pacer.margin.spread is not None and fastest < math.inf
            known = round_trip - fastest + MIN_MARGIN if settled else round_trip
            margin = max(margin, min(MAX_MARGIN, known))
        return self._unit * (1.0 + margin)

    def _longest_window(self) -> float:
        if self._utilization is not None:
            return self._unit / self._utilization
        return self._unit * (1.0 + MAX_MARGIN)

    def _owner(self) -> int:
        # Per process (a forked child gets its own) and per instance; never 0 (rebuilds).
        return ((os.getpid() * 2654435761) ^ self._salt) & 0xFFFFFFFF or 1

    async def acquire(self) -> None:
        """Wait until one more request may be sent without exceeding the ceiling.

        Reserves the next slot of the shared schedule, sleeps until it, then checks the
        shared send log and logs the send. The first request after a pause counts in the
        log one interval later than it goes, as in :class:`LocalRateLimiter` -- a pause
        of this process: its connection and caches are cold whatever the others did -- and
        after a pause of the whole host it leaves no catch-up credit. Cancelled while
        waiting, it gives its slot back if nobody reserved one after it.
        """
        pacer = self._pacers.get()
        async with pacer.turn:
            state, clock = pacer.state, pacer.clock
            with state.transaction() as log:
                # Read under the lock: the times of the log are in the order it was written.
                now = clock()
                interval = 1.0 / self._send_rate(pacer, log.rate_cap, now)
                scheduled = log.next_slot
                # This process's first send after a pause of its own is the likeliest to
                # arrive late (a new connection, cold caches), whatever the others do.
                cold = now - pacer.last_sent > PAUSE_INTERVALS * interval
                # Nothing reserved ahead and nobody sent lately -- or this process starts
                # (again) while the host is idle: no catch-up credit, as after a pause of
                # one process's LocalRateLimiter.
                paused = scheduled <= now and (
                    cold or now - log.last_sent > PAUSE_INTERVALS * interval
                )
                tolerance = CATCH_UP * interval
                slot = max(now, scheduled - tolerance)
                reserved = max(scheduled, slot) + interval + (tolerance if paused else 0.0)
                log.next_slot = reserved
            try:
                if slot > now:
                    await asyncio.sleep(slot - clock())
                while True:
                    with state.transaction() as log:
                        now = clock()
                        wait = log.wait(now)
                        backed_off = self._backed_off_rate(pacer, now)
                        if backed_off is not None:
                            # Backing off: the lowered rate in every second of the host's
                            # sends, not only on average (the server's window still holds
                            # the old rate's arrivals right after a cut).
                            wait = max(wait, log.wait_for_rate(now, backed_off))
                        if wait <= 0:
                            log.record(
                                now + interval if cold else now,
                                sent=now,
                                window=self._window(pacer, None, now),
                                owner=self._owner(),
                            )
                            pacer.last_sent = now
                            return
                    await asyncio.sleep(wait)
            except asyncio.CancelledError:
                with state.transaction() as log:
                    if log.next_slot == reserved:
                        log.next_slot = scheduled
                raise

    def observe_round_trip(self, seconds: float) -> None:
        """Feedback from a client: one request took ``seconds`` from its turn to its answer.

        Updates this process's margin, and narrows (or widens) the window of that send in
        the shared log to what its own round trip says it needs, if it is still there.
        """
        if self._utilization is None and math.isfinite(seconds) and seconds >= 0:
            pacer = self._pacers.get()
            with pacer.state.transaction() as log:
                now = pacer.clock()
                pacer.answered = (now - seconds, now)
                # The window counts from when the send was logged, which the caller's round
                # trip (from its turn) can miss a moment of: a process descheduled in between.
                fastest = log.fastest(now, _FASTEST_MEMORY_SECONDS)
                log.answered(
                    self._owner(),
                    now - seconds,
                    now,
                    lambda since_sent: self._window(pacer, since_sent, now, fastest),
                    pacer.tolerance,
                )
                log.saw_round_trip(seconds, now, _FASTEST_MEMORY_SECONDS)
            pacer.margin.record(seconds)

    def observe_throttle(self) -> None:
        """Feedback from a client: the service said the quota was exceeded.

        A stray throttle while the host sends at full pace widens this process's margin;
        throttles that persist, or come while the host sends well below the ceiling, show
        that someone the host's processes cannot see uses the quota, and lower this
        process's rate until they stop (``_backoff.ThrottleBackoff``, as
        :class:`LocalRateLimiter` does). Every process that is throttled backs off.
        """
        if self._utilization is None:
            pacer = self._pacers.get()
            backoff = self._backoff(pacer)
            with pacer.state.transaction() as log:
                now = pacer.clock()
                sent_last_second = log.sent_since(now - 1.0)
            answered, pacer.answered = pacer.answered, None
            sent = answered[0] if answered is not None and now - answered[1] < _SAME_STEP else None
            verdict = backoff.on_throttle(now, sent_last_second, sent)
            if verdict is ThrottleCause.OWN_PACING:
                pacer.margin.throttled(now)

    def _backoff(self, pacer: _HostPacer) -> ThrottleBackoff:
        if pacer.backoff is None:
            pacer.backoff = ThrottleBackoff(self._qps)
        return pacer.backoff

    def _backed_off_rate(self, pacer: _HostPacer, now: float) -> float | None:
        """The rate the backoff allows this process now (``None``: not backing off)."""
        if pacer.backoff is None or self._utilization is not None:
            return None
        return pacer.backoff.rate(now)

    def _new_pacer(self) -> _HostPacer:
        if self._given_clock is None:
            loop = asyncio.get_running_loop()
            if abs(loop.time() - time.monotonic()) > _CLOCK_AGREEMENT_SECONDS:
                private = HostState(
                    None, self._qps, clock=loop.time, rebuild_window=self._longest_window()
                )
                return _HostPacer(private, loop.time)
            if type(loop).time is not asyncio.BaseEventLoop.time:
                # Not asyncio's own time.monotonic(): e.g. uvloop's, in milliseconds.
                return _HostPacer(self._state, self._clock, tolerance=COARSE_CLOCK_TOLERANCE)
        return _HostPacer(self._state, self._clock)

    def close(self) -> None:
        """Unmap this process's view of the shared state (the file stays for the others)."""
        self._state.close()

    def __repr__(self) -> str:
        return (
            f"HostRateLimiter(key={self._key!r}, qps={self._qps!r}, "
            f"utilization={self._utilization!r})"
        )
