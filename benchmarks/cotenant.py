"""Beside another consumer of the account: what one default client gets of what is left.

Run: ``python benchmarks/cotenant.py`` (about 4 minutes: every run is real time), or
``--quick`` for a CI smoke run with tiny sizes. Needs the ``emulator`` extra (uvicorn).

The emulator's loopback server runs in its own process (60 QPS judged where requests
arrive, 20 ms answers), and so does the other consumer: a plain ``httpx.AsyncClient``
signed with ``VolcengineAuth`` that starts a GetSegmentTask every ``1 / R`` s on an
absolute schedule, whatever the answers (it never backs off). It runs for a second and a
half alone, then while ``SegmentClient(credentials, endpoint=url)`` -- every default --
fans out over N keys (600). Interleaved over R = 15, 30 and 45 QPS, each repeated.

Columns: the other consumer's rate; our share (keys per second of wall time) and its
fraction of what the other leaves (60 - R); our wall time; throttled answers in all (ours
+ the other's, as the server counted them); keys lost; the most arrivals in any sliding
second (throttled ones included). The issue's goal (issue 22), at R = 30: no key lost, at
most 30 throttled answers, within 25 s.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from _common import EmulatorProcess, describe_machine, median, print_table, task_keys

from rtc_segment import SegmentClient, TaskKey, VolcengineAuth
from rtc_segment.testing import DEFAULT_CREDENTIALS

QPS = 60.0
LATENCY = 0.02
HEAD_START = 1.5
WINDOW_EMPTY_SECONDS = 1.1
GOAL_THROTTLED = 30
GOAL_WALL = 25.0


@attrs.frozen
class Run:
    """One fan-out beside the other consumer."""

    wall: float
    lost: int
    throttled: int
    theirs: int
    max_per_second: int


def _other_consumer(conn: Connection, url: str, qps: float, key: TaskKey) -> None:
    """The other consumer's process: starts on "start", reports its counts on "stop"."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        auth = VolcengineAuth(DEFAULT_CREDENTIALS, any_host=True)
        params = {
            "Action": "GetSegmentTask",
            "Version": "2022-06-01",
            "AppId": key.app_id,
            "RoomId": key.room_id,
            "TaskId": key.task_id,
        }
        sent = throttled = 0
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=url, auth=auth, limits=limits, timeout=10) as http:

            async def one() -> None:
                nonlocal throttled
                try:
                    response = await http.get("/", params=params)
                except httpx.HTTPError:
                    return
                throttled += response.status_code == 429

            await http.get("/", params=params)  # warm: connection, imports
            conn.send("ready")
            await loop.run_in_executor(None, conn.recv)  # "start"
            stop = asyncio.ensure_future(loop.run_in_executor(None, conn.recv))
            pending: set[asyncio.Task[None]] = set()
            start = loop.time()
            while not stop.done():
                due = start + sent / qps
                await asyncio.wait([stop], timeout=max(0.0, due - loop.time()))
                if stop.done():
                    break
                task = asyncio.ensure_future(one())
                pending.add(task)
                task.add_done_callback(pending.discard)
                sent += 1
            if pending:
                await asyncio.wait(pending)
        conn.send({"sent": sent, "throttled": throttled})

    asyncio.run(main())


async def fan_out(url: str, keys: list[TaskKey]) -> tuple[float, int]:
    async with SegmentClient(DEFAULT_CREDENTIALS, endpoint=url) as client:
        started = time.perf_counter()
        outcomes = await client.gather_segment_tasks(keys)
        wall = time.perf_counter() - started
    return wall, sum(1 for outcome in outcomes if outcome.error is not None)


def one_run(server: EmulatorProcess, other_qps: float, keys: list[TaskKey]) -> Run:
    server.configure(qps=QPS, latency=LATENCY)
    context = multiprocessing.get_context("spawn")
    conn, child = context.Pipe()
    process = context.Process(
        target=_other_consumer, args=(child, server.url, other_qps, keys[0]), daemon=True
    )
    process.start()
    try:
        if not conn.poll(60):
            raise RuntimeError("the other consumer did not start")
        conn.recv()
        conn.send("start")
        time.sleep(HEAD_START)
        wall, lost = asyncio.run(fan_out(server.url, keys))
        conn.send("stop")
        theirs = conn.recv()
    finally:
        process.join(30)
        if process.is_alive():
            process.kill()
    stats = server.stats()
    time.sleep(WINDOW_EMPTY_SECONDS)
    return Run(wall, lost, stats["throttled"], theirs["throttled"], stats["max_per_second"])


def spread(values: list[float], fmt: str) -> str:
    middle, low, high = (format(v, fmt) for v in (median(values), min(values), max(values)))
    return middle if low == high else f"{middle} ({low}-{high})"


COLUMNS = (
    "other consumer",
    "our share",
    "of what is left",
    "wall",
    "throttled (theirs)",
    "lost",
    "max/s",
    "goal",
    "met",
)


def main(argv: list[str] | None = None) -> int:
    """Run the table and print it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a CI smoke run")
    parser.add_argument("--repeats", type=int, default=None, help="runs per rate (default 3)")
    parser.add_argument("--keys", type=int, default=None, help="keys per fan-out (default 600)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    count = args.keys or (60 if args.quick else 600)
    rates = (30.0,) if args.quick else (15.0, 30.0, 45.0)
    if repeats < 1 or count < 1:
        parser.error("--repeats and --keys must be at least 1")
    keys = task_keys(count)
    started = time.perf_counter()
    load_before = os.getloadavg()
    runs: dict[float, list[Run]] = {rate: [] for rate in rates}
    with EmulatorProcess(tasks=count) as server:
        for _ in range(repeats):
            for rate in rates:
                runs[rate].append(one_run(server, rate, keys))
    rows: list[tuple[str, ...]] = [
        (
            f"fan-out of {count} keys beside another consumer at R QPS, {QPS:.0f} QPS ceiling, "
            f"{LATENCY * 1000:.0f} ms answers; median (range) of {repeats}",
        )
    ]
    for rate, results in runs.items():
        shares = [count / run.wall for run in results]
        goal, met = "", ""
        if rate == 30 and count == 600:
            goal = f"0 lost, <= {GOAL_THROTTLED} throttled, <= {GOAL_WALL:g} s"
            ok = all(
                r.lost == 0 and r.throttled <= GOAL_THROTTLED and r.wall <= GOAL_WALL
                for r in results
            )
            met = "yes" if ok else "NO"
        rows.append(
            (
                f"{rate:g} QPS",
                spread(shares, ".1f") + "/s",
                spread([share / (QPS - rate) for share in shares], ".0%"),
                spread([run.wall for run in results], ".1f") + " s",
                spread([run.throttled for run in results], "g")
                + f" ({spread([run.theirs for run in results], 'g')})",
                spread([run.lost for run in results], "g"),
                spread([run.max_per_second for run in results], "g"),
                goal,
                met,
            )
        )
    quick = " (--quick: smoke sizes, figures not meaningful)" if args.quick else ""
    print(f"Beside another consumer of the account{quick}")
    print(describe_machine())
    load = " ".join(f"{v:.2f}" for v in load_before)
    print(f"load average (1, 5, 15 min) at the start: {load}")
    print()
    print_table(COLUMNS, rows)
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
