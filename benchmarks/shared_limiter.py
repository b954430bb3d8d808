"""Several processes, one quota: RedisRateLimiter against the emulator's loopback server.

For 1, 2 and 4 worker processes sharing one Redis key at 60 QPS, each worker runs a
SegmentClient with enough concurrent callers to exceed the ceiling on its own, for about
10 seconds. The emulator (same ceiling, judged on arrival) records every request. Printed
per run: aggregate QPS, utilisation of the ceiling, the most requests in any sliding
1-second window, requests the emulator throttled, each process's share, and the mean Redis
round trip per acquisition as the caller sees it (event-loop scheduling included).

    python benchmarks/shared_limiter.py                 # starts its own redis-server
    python benchmarks/shared_limiter.py --redis-port 6379 --seconds 5 --processes 1 2 4

Needs the `redis` and `emulator` extras and, unless --redis-port is given, redis-server.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtc_segment import Credentials, RedisRateLimiter, RtcSegmentError, SegmentClient
from rtc_segment.testing import Emulator

CREDENTIALS = Credentials("AKLTbenchmarkaccount", "benchmark-secret")
APP_ID, ROOM_ID, TASK_ID = "bench-app", "bench-room", "bench-task"
CALLERS_PER_PROCESS = 32


def worker(
    base_url: str,
    redis_port: int,
    qps: float,
    seconds: float,
    start: Barrier,
    results: Any,
) -> None:
    """One worker process: call as fast as the shared limiter allows until time is up."""
    results.put(asyncio.run(_work(base_url, redis_port, qps, seconds, start)))


async def _work(
    base_url: str, redis_port: int, qps: float, seconds: float, start: Barrier
) -> dict[str, Any]:
    redis = Redis(host="127.0.0.1", port=redis_port)
    limiter = RedisRateLimiter(redis, key=RedisRateLimiter.key_for(CREDENTIALS), qps=qps)
    sent = 0
    errors = 0
    async with SegmentClient(
        CREDENTIALS, endpoint=base_url, limiter=limiter, max_retries=0
    ) as client:
        await asyncio.to_thread(start.wait)  # every process begins together
        deadline = time.monotonic() + seconds

        async def caller() -> None:
            nonlocal sent, errors
            while time.monotonic() < deadline:
                try:
                    await client.get_segment_task(APP_ID, ROOM_ID, TASK_ID)
                except RtcSegmentError:
                    errors += 1
                sent += 1

        await asyncio.gather(*(caller() for _ in range(CALLERS_PER_PROCESS)))
    await redis.aclose()
    stats = limiter.stats
    return {
        "sent": sent,
        "errors": errors,
        "reservations": stats.reservations,
        "round_trip": stats.mean_round_trip,
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def redis_server() -> Iterator[int]:
    """A throwaway redis-server on a free loopback port."""
    executable = shutil.which("redis-server")
    if executable is None:
        sys.exit("redis-server is not installed; install it or pass --redis-port")
    port = free_port()
    with tempfile.TemporaryDirectory() as datadir:
        process = subprocess.Popen(
            [
                executable,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                datadir,
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            yield port
        finally:
            process.terminate()
            process.wait()


async def run(processes: int, qps: float, seconds: float, redis_port: int) -> dict[str, Any]:
    emulator = Emulator(credentials=CREDENTIALS, qps=qps)
    emulator.add_task(APP_ID, ROOM_ID, TASK_ID)
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(processes)
    results = context.Queue()
    async with emulator.serve(port=0) as base_url:
        workers = [
            context.Process(
                target=worker, args=(base_url, redis_port, qps, seconds, start, results)
            )
            for _ in range(processes)
        ]
        for process in workers:
            process.start()
        reports = [await asyncio.to_thread(results.get) for _ in workers]
        for process in workers:
            await asyncio.to_thread(process.join)
    arrivals = sorted(record.arrival for record in emulator.requests)
    span = arrivals[-1] - arrivals[0]
    aggregate = (len(arrivals) - 1) / span
    stats = emulator.stats
    shares = sorted(report["sent"] / len(arrivals) for report in reports)
    reservations = sum(report["reservations"] for report in reports)
    round_trip = sum(r["round_trip"] * r["reservations"] for r in reports) / reservations
    return {
        "processes": processes,
        "requests": len(arrivals),
        "aggregate": aggregate,
        "utilization": aggregate / qps,
        "max_1s": stats.max_in_second,
        "throttled": stats.throttled,
        "shares": shares,
        "round_trip_ms": round_trip * 1000,
        "errors": sum(report["errors"] for report in reports),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--qps", type=float, default=60.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--redis-port", type=int, help="use a running redis-server on 127.0.0.1")
    args = parser.parse_args()

    def go(redis_port: int) -> None:
        print(
            f"RedisRateLimiter, {args.qps:g} QPS ceiling, {args.seconds:g} s per run, "
            f"{CALLERS_PER_PROCESS} callers per process"
        )
        header = (
            f"{'procs':>5} {'requests':>8} {'agg QPS':>8} {'util':>6} {'max/1s':>6} "
            f"{'throttled':>9} {'errors':>6} {'redis RTT':>9}  per-process share"
        )
        print(header)
        print("-" * len(header))
        for count in args.processes:
            row = asyncio.run(run(count, args.qps, args.seconds, redis_port))
            shares = " ".join(f"{share:.1%}" for share in row["shares"])
            print(
                f"{row['processes']:>5} {row['requests']:>8} {row['aggregate']:>8.2f} "
                f"{row['utilization']:>6.1%} {row['max_1s']:>6} {row['throttled']:>9} "
                f"{row['errors']:>6} {row['round_trip_ms']:>7.2f}ms  {shares}"
            )

    if args.redis_port is not None:
        go(args.redis_port)
    else:
        with redis_server() as port:
            go(port)


if __name__ == "__main__":
    main()
