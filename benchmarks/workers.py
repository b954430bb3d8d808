"""Worker processes with default clients, one account, one host: the default limiter shares.

For 1, 2, 4 and 8 worker processes, each with a default ``SegmentClient()`` (no limiter
given: the host-wide ``HostRateLimiter``) fetching its own keys in one fan-out, against
the emulator's loopback server in this process (60 QPS ceiling judged on arrival, 20 ms
answer latency). Printed per run: requests, those the emulator throttled, the most arrivals
in any sliding second, utilization of the ceiling (arrivals over their span), and each
process's share of the arrivals while every process still had work. Then the cost of one
acquisition's shared-state work (lock + mmap + checks), measured without sleeping.

    python benchmarks/workers.py                        # 1 2 4 8 processes, 150 keys each
    python benchmarks/workers.py --processes 4 --repeat 3
    python benchmarks/workers.py --quick                # CI smoke run: 1 and 2, 30 keys
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtc_segment import Credentials, HostRateLimiter, SegmentClient
from rtc_segment._host import DIRECTORY_ENV, HostState, state_directory
from rtc_segment.testing import Emulator

CREDENTIALS = Credentials("AKLTworkersbenchmark", "workers-benchmark-secret")
APP_ID = "bench-app"
LATENCY = 0.020


def room(worker: int, index: int) -> str:
    return f"w{worker}-r{index}"


def worker(base_url: str, index: int, keys: int, start: Barrier, results: Any) -> None:
    """One worker process: fetch its keys through a default client."""
    results.put(asyncio.run(_work(base_url, index, keys, start)))


async def _work(base_url: str, index: int, keys: int, start: Barrier) -> dict[str, Any]:
    async with SegmentClient(CREDENTIALS, endpoint=base_url) as client:
        await asyncio.to_thread(start.wait)  # every process begins together
        outcomes = await client.gather_segment_tasks(
            [(APP_ID, room(index, i), "task") for i in range(keys)]
        )
        stats = client.stats
    return {
        "index": index,
        "ok": sum(outcome.ok for outcome in outcomes),
        "throttled": stats.throttled,
        "scope": stats.limiter_scope,
    }


def shares_while_all_busy(emulator: Emulator, processes: int) -> list[float]:
    """Each process's share of the arrivals up to the first process's last one."""
    records = [r for r in emulator.requests if r.key is not None]
    last: dict[int, float] = {}
    for record in records:
        assert record.key is not None
        owner = int(record.key.room_id[1:].split("-")[0])
        last[owner] = max(last.get(owner, 0.0), record.arrival)
    until = min(last.values())
    counts = [0] * processes
    for record in records:
        assert record.key is not None
        if record.arrival <= until:
            counts[int(record.key.room_id[1:].split("-")[0])] += 1
    total = sum(counts)
    return [count / total for count in counts]


async def run(processes: int, keys: int, qps: float) -> dict[str, Any]:
    emulator = Emulator(credentials=CREDENTIALS, qps=qps, latency=LATENCY)
    for index in range(processes):
        for i in range(keys):
            emulator.add_task(APP_ID, room(index, i), "task")
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(processes)
    results = context.Queue()
    async with emulator.serve(port=0) as base_url:
        workers = [
            context.Process(target=worker, args=(base_url, index, keys, start, results))
            for index in range(processes)
        ]
        for process in workers:
            process.start()
        try:
            reports = [await asyncio.to_thread(results.get, True, 300) for _ in workers]
        finally:
            for process in workers:
                await asyncio.to_thread(process.join, 30)
                if process.is_alive():
                    process.kill()
    arrivals = sorted(record.arrival for record in emulator.requests)
    span = arrivals[-1] - arrivals[0]
    stats = emulator.stats
    return {
        "processes": processes,
        "requests": len(arrivals),
        "ok": sum(report["ok"] for report in reports),
        "throttled": stats.throttled,
        "max_1s": stats.max_in_second,
        "utilization": (len(arrivals) - 1) / span / qps if span > 0 else float("nan"),
        "shares": shares_while_all_busy(emulator, processes),
        "scopes": sorted({report["scope"] for report in reports}),
    }


def acquire_cost(iterations: int) -> float:
    """Mean seconds of shared-state work per acquisition: the two transactions of
    ``acquire`` (reserve; check and log) and the one of ``observe_round_trip``, run on a
    clock that jumps a second per step so that nothing ever waits."""
    fake_now = [time.monotonic()]

    def clock() -> float:
        return fake_now[0]

    limiter = HostRateLimiter(f"costprobe-{uuid.uuid4().hex}", 60.0, _clock=clock)

    async def main() -> float:
        started = time.perf_counter()
        for _ in range(iterations):
            fake_now[0] += 1.0
            await limiter.acquire()
            limiter.observe_round_trip(0.0)
        return (time.perf_counter() - started) / iterations

    try:
        return asyncio.run(main())
    finally:
        limiter.close()


def transaction_cost(iterations: int) -> float:
    """Mean seconds of one locked transaction: flock, checks (CRC-32 included), a read."""
    directory = state_directory()
    state = HostState(
        directory / f"costprobe-{uuid.uuid4().hex}-60.0.v1",
        60.0,
        clock=time.monotonic,
        rebuild_window=1.5,
    )
    try:
        started = time.perf_counter()
        for _ in range(iterations):
            with state.transaction() as log:
                log.wait(time.monotonic())
        return (time.perf_counter() - started) / iterations
    finally:
        state.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--keys", type=int, default=150, help="keys per process")
    parser.add_argument("--qps", type=float, default=60.0)
    parser.add_argument("--repeat", type=int, default=1, help="runs per row (median shown)")
    parser.add_argument("--quick", action="store_true", help="CI smoke run: 1 and 2, 30 keys")
    args = parser.parse_args()
    if args.quick:
        args.processes, args.keys, args.repeat = [1, 2], 30, 1
    # A directory of this run's own: the workers share it, nothing else does.
    directory = tempfile.mkdtemp(prefix="rtcs-workers-")
    os.environ[DIRECTORY_ENV] = directory

    print(
        f"Default clients (HostRateLimiter), {args.qps:g} QPS ceiling judged on arrival, "
        f"{LATENCY * 1000:g} ms latency, {args.keys} keys per process"
        + (f", median of {args.repeat} runs" if args.repeat > 1 else "")
    )
    header = (
        f"{'procs':>5} {'requests':>8} {'ok':>6} {'throttled':>9} {'max/1s':>6} {'util':>6}  "
        "per-process share while all busy"
    )
    print(header)
    print("-" * len(header))
    for count in args.processes:
        rows = [asyncio.run(run(count, args.keys, args.qps)) for _ in range(args.repeat)]
        row = sorted(rows, key=lambda r: r["utilization"])[len(rows) // 2]
        shares = " ".join(f"{share:.1%}" for share in row["shares"])
        worst = max(r["max_1s"] for r in rows)
        throttled = max(r["throttled"] for r in rows)
        print(
            f"{count:>5} {row['requests']:>8} {row['ok']:>6} {throttled:>9} {worst:>6} "
            f"{row['utilization']:>6.1%}  {shares}"
        )
        if any(r["scopes"] != ["host"] for r in rows):
            print(f"      (limiter scope: {sorted({s for r in rows for s in r['scopes']})})")
    iterations = 200 if args.quick else 5000
    print(
        f"\none locked transaction (flock + mmap + checks): "
        f"{transaction_cost(iterations * 4) * 1e6:.1f} us; one request's limiter work "
        f"(acquire's 2 transactions + the answer's 1, asyncio included): "
        f"{acquire_cost(iterations) * 1e6:.1f} us (means of {iterations * 4} and {iterations})"
    )
    if args.repeat > 1:
        print(f"(max/1s and throttled: the worst of {args.repeat} runs)")


if __name__ == "__main__":
    main()
