"""Shared benchmark helpers: the emulator served from its own process, and medians.

The server runs in a separate process so that client and server do not share one event
loop or one GIL: with both in one process, every client-side microsecond would also slow
the server down, and the comparison between clients would measure the server's share too.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import sys
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtc_segment import TaskKey
from rtc_segment.testing import Emulator

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
                    emulator.reset_record()
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
    :meth:`configure` sets the ceiling and latency (and clears the record), :meth:`stats`
    reads the record.
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

    def configure(self, *, qps: float | None, latency: float) -> None:
        """Set the server's ceiling (``None``: off) and latency; forget the record."""
        self._call("configure", {"qps": qps, "latency": latency})

    def stats(self) -> dict[str, int]:
        """Requests seen, throttled, and the most arrivals in any sliding second."""
        result: dict[str, int] = self._call("stats", None)
        return result
