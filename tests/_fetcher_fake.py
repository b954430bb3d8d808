"""A stand-in for the client's actions with just what the schedulers use (a TaskFetcher).

``fetch_task`` paces on a real :class:`LocalRateLimiter` (virtual time under looptime), records
when each key was sent, sleeps ``latency`` and then answers from ``script``: a per-task-id
callable ``(key, now) -> SegmentTask`` that may raise. Lets the scheduling be tested
exactly, independent of HTTP; the emulator tests cover the real path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from rtc_segment._limiting import LocalRateLimiter
from rtc_segment._models import SegmentTask, TaskKey, TaskStatus

# Re-exported for the scheduling tests: the one sliding-window count, as the emulator counts.
from rtc_segment.testing import max_in_window as max_in_window

Script = Callable[[TaskKey, float], SegmentTask]

RUNNING = SegmentTask(start_time=1_700_000_000_000, status=TaskStatus.RUNNING)


class FakeClient:
    def __init__(
        self,
        *,
        qps: float = 60.0,
        max_connections: int = 100,
        latency: float = 0.05,
        script: dict[str, Script] | None = None,
    ) -> None:
        self.limiter = LocalRateLimiter(qps)
        self.max_connections = max_connections
        self.latency = latency
        self.script = script or {}
        self.sent: list[tuple[float, TaskKey]] = []
        self.active = 0
        self.peak_active = 0
        self.cancelled = 0

    @property
    def qps(self) -> float:
        return self.limiter.qps

    async def fetch_task(self, key: TaskKey, **_: object) -> SegmentTask:
        loop = asyncio.get_running_loop()
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)
        try:
            await self.limiter.acquire()
            now = loop.time()
            self.sent.append((now, key))
            if self.latency:
                await asyncio.sleep(self.latency)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.active -= 1
        answer = self.script.get(key.task_id)
        return answer(key, now) if answer is not None else RUNNING

    def sends_of(self, key: TaskKey) -> list[float]:
        return [when for when, sent in self.sent if sent == key]
