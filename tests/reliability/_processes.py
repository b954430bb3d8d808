"""Processes for the co-tenant tests: the emulator's loopback server, and another consumer.

Run as a script (``python _processes.py server|cotenant ...``), never imported by a test
run: each part gets its own process, so neither the server's work nor the other
consumer's pacing is delayed by the client under test (a loaded 2-core machine still
shares the CPUs, but no event loop and no GIL). Both print one JSON line when ready and
one when stdin says ``stop`` (or closes).

* ``server KEYS QPS LATENCY``: ``Emulator(qps=QPS, latency=LATENCY)`` with tasks
  ``app/room-<i>/task`` for i < KEYS (the client's) and ``other/room-<i>/task`` for
  i < 10 (the other consumer's), on 127.0.0.1. Ready: ``{"url": ...}``; at the end: the
  throttled answers, the most arrivals in a sliding second, how many requests arrived,
  and when the throttled ones of each app arrived.
* ``cotenant URL QPS``: a plain ``httpx.AsyncClient`` signed with ``VolcengineAuth`` that
  starts a GetSegmentTask every ``1 / QPS`` seconds on an absolute schedule, whatever the
  answers (the uncontrolled other consumer of the account). At the end: requests sent and
  answers throttled (HTTP 429).
"""

from __future__ import annotations

import asyncio
import json
import sys

import httpx

from rtc_segment import VolcengineAuth
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator


def say(message: dict[str, object]) -> None:
    print(json.dumps(message), flush=True)


async def stopped() -> None:
    """Until stdin says stop (or closes)."""
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def server(keys: int, qps: float, latency: float) -> None:
    emulator = Emulator(qps=qps, latency=latency, record_limit=None)
    for i in range(keys):
        emulator.add_task("app", f"room-{i}", "task")
    for i in range(10):
        emulator.add_task("other", f"room-{i}", "task")
    async with emulator.serve(port=0) as url:
        say({"url": url})
        await stopped()
        ours = [r.arrival for r in emulator.requests if r.key and r.key.app_id == "app"]
        start = min(ours, default=0.0)
        throttled = {
            app: [
                round(r.arrival - start, 3)
                for r in emulator.requests
                if r.key and r.key.app_id == app and not r.admitted
            ]
            for app in ("app", "other")
        }
        say(
            {
                "throttled": emulator.throttled_count,
                "max_per_second": emulator.max_in_window(1.0),
                "requests": emulator.count(),
                # When each throttled request arrived, from the client's first (seconds).
                "throttled_at": throttled,
            }
        )


async def cotenant(url: str, qps: float) -> None:
    loop = asyncio.get_running_loop()
    auth = VolcengineAuth(DEFAULT_CREDENTIALS, any_host=True)
    sent = throttled = failed = 0
    query = {"Action": "GetSegmentTask", "Version": "2022-06-01", "AppId": "other"}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, auth=auth, limits=limits, timeout=10) as http:

        async def one(index: int) -> None:
            nonlocal throttled, failed
            params = {**query, "RoomId": f"room-{index % 10}", "TaskId": "task"}
            try:
                response = await http.get("/", params=params)
            except httpx.HTTPError:
                failed += 1
                return
            if response.status_code == 429:
                throttled += 1

        # One request first: connections and imports warm before the schedule starts.
        await http.get("/", params={**query, "RoomId": "room-0", "TaskId": "task"})
        stop = asyncio.ensure_future(stopped())
        pending: set[asyncio.Task[None]] = set()
        start = loop.time() + 0.05
        say({"ready": True})
        while not stop.done():
            due = start + sent / qps
            await asyncio.wait([stop], timeout=max(0.0, due - loop.time()))
            if stop.done():
                break
            task = asyncio.ensure_future(one(sent))
            pending.add(task)
            task.add_done_callback(pending.discard)
            sent += 1
        if pending:
            await asyncio.wait(pending)
    say({"sent": sent, "throttled": throttled, "failed": failed})


def main(argv: list[str]) -> None:
    if argv[0] == "server":
        asyncio.run(server(int(argv[1]), float(argv[2]), float(argv[3])))
    elif argv[0] == "cotenant":
        asyncio.run(cotenant(argv[1], float(argv[2])))
    else:
        raise SystemExit(f"unknown part {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
