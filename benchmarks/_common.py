"""Shared benchmark helpers: the emulator served from its own process, signed requests for
the bare-httpx peers, medians and a plain table printer.

The server runs in a separate process so that client and server do not share one event
loop or one GIL: with both in one process, every client-side microsecond would also slow
the server down, and the comparison between clients would measure the server's share too.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtc_segment import TaskKey
from rtc_segment._signing import Signer
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator, Fault, Latency

APP_ID = "bench-app"


def task_keys(count: int) -> list[TaskKey]:
    """The keys of the tasks every :class:`EmulatorProcess` registers."""
    return [TaskKey(APP_ID, f"room-{i}", f"task-{i}") for i in range(count)]


def median(values: Sequence[float]) -> float:
    """The median (a thin alias, so every script reports the same statistic)."""
    return statistics.median(values)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


class LagProbe:
    """How late the event loop runs a task: a probe sleeping ``interval`` s over and over.

    ``async with LagProbe(0.001) as probe: ...`` -- afterwards ``probe.lags`` holds how late
    each wake-up came, in seconds: the loop's stalls (work, garbage collection, a busy
    machine) during the block.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.lags: list[float] = []
        self._stopped = False
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LagProbe:
        self._task = asyncio.ensure_future(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stopped = True
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while not self._stopped:
            start = time.perf_counter()
            await asyncio.sleep(self.interval)
            self.lags.append(time.perf_counter() - start - self.interval)


def bench_signer() -> Signer:
    """A signer for the emulator's default key pair, as a peer built on bare httpx uses it."""
    return Signer(DEFAULT_CREDENTIALS, region="cn-north-1", service="rtc")


def signed_get(signer: Signer, url: str, key: TaskKey) -> tuple[str, dict[str, str]]:
    """A GetSegmentTask of ``key`` at ``url`` signed now: the full URL and the headers."""
    query = {
        "Action": "GetSegmentTask",
        "Version": "2022-06-01",
        "AppId": key.app_id,
        "RoomId": key.room_id,
        "TaskId": key.task_id,
    }
    host = url.split("://", 1)[1]
    signed = signer.sign(method="GET", host=host, query=query, now=datetime.now(UTC))
    return f"{url}/?{signed.query_string}", signed.headers


def print_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print ``rows`` under ``columns``, aligned; a one-cell row is a section title."""
    full = [row for row in rows if len(row) > 1]
    widths = [max(len(col), *(len(row[i]) for row in full)) for i, col in enumerate(columns)]
    line = "  ".join(f"{col:<{w}}" for col, w in zip(columns, widths, strict=True))
    print(line)
    print("-" * len(line))
    for row in rows:
        if len(row) == 1:
            print(row[0])
            continue
        print("  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths, strict=True)).rstrip())


def describe_machine() -> str:
    """Python, OS, CPUs, memory and httpx version: the line above every table."""
    try:
        import psutil

        memory = f", {psutil.virtual_memory().total / 2**30:.1f} GiB RAM"
    except ImportError:
        memory = ""
    cpu = platform.processor() or platform.machine()
    return (
        f"Python {platform.python_version()} on {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs ({cpu}){memory}; httpx {httpx.__version__}"
    )


def _serve(conn: Connection, tasks: int) -> None:
    """The server process: the emulator on 127.0.0.1, driven by commands on ``conn``."""

    async def main() -> None:
        emulator = Emulator(qps=None, record_limit=None)
        for key in task_keys(tasks):
            emulator.add_task(*key)
        loop = asyncio.get_running_loop()
        async with emulator.serve(port=0) as url:
            conn.send(url)
            while True:
                command, arguments = await loop.run_in_executor(None, conn.recv)
                if command == "stop":
                    conn.send(None)
                    return
                if command == "configure":
                    emulator.qps = arguments["qps"]
                    emulator.latency = arguments["latency"]
                    jitter = arguments["forward_jitter"]
                    emulator.forward_delay = Latency.uniform(0.0, jitter) if jitter else None
                    emulator.reset_record()
                    conn.send(None)
                elif command == "stray_throttle":
                    # One 429 for the next request about this room: a throttle that no
                    # pacing of ours caused (retried after the emulator's Retry-After).
                    emulator.faults.next(1, Fault.HTTP_429, room_id=arguments["room_id"])
                    conn.send(None)
                elif command == "stats":
                    conn.send(
                        {
                            "requests": emulator.count(),
                            "throttled": emulator.throttled_count,
                            "max_per_second": emulator.max_in_window(1.0),
                            "max_admitted_per_second": emulator.max_in_window(
                                1.0, admitted_only=True
                            ),
                        }
                    )

    asyncio.run(main())


class EmulatorProcess:
    """The emulator's loopback server in a child process.

    ``with EmulatorProcess(tasks=1000) as server:`` -- ``server.url`` is the endpoint;
    :meth:`configure` sets the ceiling, latency and forward jitter (and clears the record),
    :meth:`stats` reads the record.
    """

    def __init__(self, *, tasks: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, tasks), daemon=True)
        self._tasks = tasks
        self.url = ""

    def __enter__(self) -> EmulatorProcess:
        self._process.start()
        if not self._conn.poll(60):
            self._process.kill()
            raise RuntimeError("the emulator's server process did not start")
        self.url = self._conn.recv()
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._call("stop", None)
        finally:
            self._process.join(10)
            if self._process.is_alive():
                self._process.kill()

    def _call(self, command: str, arguments: Any) -> Any:
        self._conn.send((command, arguments))
        return self._conn.recv()

    def configure(self, *, qps: float | None, latency: float, forward_jitter: float = 0.0) -> None:
        """Set the server's ceiling (``None``: off), latency and forward jitter; forget the record.

        With ``forward_jitter`` J > 0 every request reaches the service (and is counted
        against the ceiling) after a delay drawn uniformly from 0..J seconds: a jittery path.
        """
        self._call("configure", {"qps": qps, "latency": latency, "forward_jitter": forward_jitter})

    def stray_throttle(self, room_id: str) -> None:
        """Answer the next request about ``room_id`` with one HTTP 429 (until configure)."""
        self._call("stray_throttle", {"room_id": room_id})

    def stats(self) -> dict[str, int]:
        """Requests seen, throttled, and the most arrivals in any sliding second."""
        result: dict[str, int] = self._call("stats", None)
        return result
