"""How late the test process's event loop ran: what a real-time ceiling check allows for.

Times read off this process's loop -- a limiter's release times, an in-process server's
arrival stamps -- are squeezed together by a stall of the process (a busy machine
descheduling it, a garbage collection of a large test session's heap) by up to the
stall's length. A ceiling counted on them is therefore checked over windows shorter than
a second by how late the loop was seen to run (at least :data:`WAKE_UP_JITTER`): a slower
machine only shortens the window, never hides a limiter that lets too much through in a
whole second of the true clock by more than the stall it saw.
"""

from __future__ import annotations

import asyncio

#: The least a window is shortened by: timer wake-ups run late by a few ms on any machine.
WAKE_UP_JITTER = 0.02
#: Lateness the probe cannot see: its own timer's resolution, reading an answer.
PROBE_SLACK = 0.005


class LoopLag:
    """How late this event loop ran while the probe watched: the worst lateness of a 1 ms
    timer, and the time lost to stalls (lateness beyond 2 ms, summed)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.lost = 0.0

    async def watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + 0.001
            await asyncio.sleep(0.001)
            late = loop.time() - due
            self.worst = max(self.worst, late)
            self.lost += max(0.0, late - 0.002)

    def window(self, seconds: float = 1.0, *, deliberate: float = 0.0) -> float:
        """A window ``seconds`` long, shortened by how late the loop ran beyond the
        ``deliberate`` stalls a test makes itself (at least :data:`WAKE_UP_JITTER`
        without any)."""
        unseen = max(0.0, self.worst - deliberate) + PROBE_SLACK
        return seconds - (max(WAKE_UP_JITTER, unseen) if deliberate == 0.0 else unseen)
