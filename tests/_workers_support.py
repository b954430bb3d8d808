"""Worker processes for tests/test_host_processes.py: spawned, so importable by name.

Each worker makes a default ``SegmentClient`` (no limiter given: the host-wide default)
and fetches its own keys against the emulator's server in the test process, on the event
loop the tests run on (``--event-loop``: asyncio's own or uvloop, whose clock the host
limiter reads in milliseconds).
"""

from __future__ import annotations

import asyncio
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from rtc_segment import Credentials, SegmentClient
from rtc_segment._host import HostState

CREDENTIALS = Credentials("AKLTworkerstest", "workers-test-secret")
APP_ID = "workers-app"


def room(worker: int, index: int) -> str:
    return f"w{worker}-r{index}"


def owner_of(room_id: str) -> int:
    return int(room_id[1:].split("-")[0])


def fetch_keys(
    base_url: str, index: int, keys: int, start: Barrier, results: Any, loop: str = "asyncio"
) -> None:
    """Fetch ``keys`` keys in one fan-out through a default client, on ``loop``; report the
    outcome."""
    factory = None
    if loop == "uvloop":
        import uvloop  # installed by the uvloop nox session only

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        results.put(runner.run(_fetch(base_url, index, keys, start)))


async def _fetch(base_url: str, index: int, keys: int, start: Barrier) -> dict[str, Any]:
    async with SegmentClient(CREDENTIALS, endpoint=base_url) as client:
        await asyncio.to_thread(start.wait, 60)  # every process begins together
        outcomes = await client.gather_segment_tasks(
            [(APP_ID, room(index, i), "task") for i in range(keys)]
        )
        stats = client.stats
    return {
        "loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        "index": index,
        "ok": sum(outcome.ok for outcome in outcomes),
        "throttled": stats.throttled,
        "scope": stats.limiter_scope,
    }


def hold_the_lock(path: str, qps: float, locked: Any) -> None:
    """Take the state file's lock and never let go: the test kills this process."""
    state = HostState(Path(path), qps, clock=time.monotonic, rebuild_window=1.5)
    with state.transaction():
        locked.set()
        time.sleep(600)
