"""The emulator's default clocks: a monotonic one, and a wall clock that it drives.

The monotonic clock follows the running event loop's ``loop.time()`` -- so that looptime's
virtual time drives lifecycles, the QPS window and latency in tests -- and falls back to
:func:`time.monotonic` outside a loop. When the time source changes (another loop: a new
test, or ``asyncio.run`` after seeding) or the same loop's time goes *backwards* (looptime
switches a loop from real to virtual time, which starts at 0, when the test body starts --
after an async fixture already read the real time), the clock re-bases: it carries on from
the last value it gave out, so it never runs backwards, never freezes, and schedules made
earlier stay meaningful.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

__all__ = ["RESOLUTION", "StitchedClock", "anchored_wall_clock"]

#: Instants closer than this (seconds) are one instant. Times are floats built by adding
#: offsets, so two requests sent exactly 1 s apart can come out 0.99999999999994 s apart;
#: the ceiling and the record both treat such a gap as the full second, so that a client
#: pacing at exactly the ceiling is not refused a request over noise.
RESOLUTION = 1e-9


class StitchedClock:
    """Monotonic seconds from the running loop's clock, continuous across time sources."""

    __slots__ = ("_base_source", "_base_value", "_last", "_last_source", "_source")

    def __init__(self) -> None:
        self._source: weakref.ref[asyncio.AbstractEventLoop] | None = None
        self._base_source = time.monotonic()
        self._base_value = 0.0
        self._last = 0.0
        self._last_source = self._base_source

    def __call__(self) -> float:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        source_now = loop.time() if loop is not None else time.monotonic()
        current = self._source() if self._source is not None else None
        if current is not loop or source_now < self._last_source:
            # A different time source, or the same one restarted from an earlier origin:
            # carry on from the last value we gave out.
            self._source = weakref.ref(loop) if loop is not None else None
            self._base_source = source_now
            self._base_value = self._last
        self._last_source = source_now
        value = self._base_value + (source_now - self._base_source)
        if value > self._last:
            self._last = value
        return self._last


def anchored_wall_clock(monotonic: Callable[[], float]) -> Callable[[], datetime]:
    """A UTC wall clock that starts at the real time now and advances with ``monotonic``.

    So that under virtual time the tasks' ``StartTime``/``EndTime`` and the ``X-Date``
    check move with the loop, not with the machine's clock.
    """
    anchor_wall = datetime.now(UTC)
    anchor = monotonic()

    def wall_clock() -> datetime:
        return anchor_wall + timedelta(seconds=monotonic() - anchor)

    return wall_clock
