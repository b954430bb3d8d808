"""Fan-out at the ceiling, and the memory of a long lazy fan-out.

1. **Ceiling.** ``client.gather_segment_tasks`` over N keys (default 600) against the
   emulator's loopback server (in its own process, 60 QPS ceiling, 50 ms latency), with the
   client's default limiter and concurrency. Prints the wall time against the ideal
   ``N / qps``, the utilisation (ideal / wall), what the server throttled, and the most
   requests it received in any sliding second.
2. **Memory.** ``client.get_segment_tasks`` over a *generator* of N keys (default 100,000)
   at ``qps=5000`` against the in-process emulator (record kept short), consuming and
   dropping each outcome. Prints the peak growth of the process's RSS over a warmed-up
   baseline, for N/10 and N keys: flat when nothing is held per key.

    python benchmarks/fanout.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import EmulatorProcess, task_keys

from rtc_segment import Backoff, SegmentClient, TaskKey
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator

CEILING_QPS = 60
LATENCY = 0.050
MEMORY_QPS = 5000.0
MEMORY_ROOMS = 1000


async def ceiling_run(url: str, n: int) -> dict[str, float]:
    keys = task_keys(n)
    async with SegmentClient(DEFAULT_CREDENTIALS, endpoint=url, qps=CEILING_QPS) as client:
        started = time.perf_counter()
        outcomes = await client.gather_segment_tasks(keys)
        wall = time.perf_counter() - started
        stats = client.stats
    ideal = n / CEILING_QPS
    return {
        "wall": wall,
        "ideal": ideal,
        "utilisation": ideal / wall,
        "ok": sum(o.ok for o in outcomes),
        "retries": stats.retries,
    }


def cycling_keys(n: int) -> Iterator[TaskKey]:
    """``n`` keys over a fixed set of rooms: a generator, never a list."""
    rooms = itertools.cycle(range(MEMORY_ROOMS))
    for _ in range(n):
        i = next(rooms)
        yield TaskKey("mem-app", f"room-{i}", f"task-{i}")


async def memory_run(emulator: Emulator, client: SegmentClient, n: int) -> dict[str, float]:
    process = psutil.Process()
    gc.collect()
    baseline = process.memory_info().rss
    peak = baseline
    done = False

    async def sample() -> None:
        nonlocal peak
        while not done:
            peak = max(peak, process.memory_info().rss)
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    ok = 0
    started = time.perf_counter()
    async for outcome in client.get_segment_tasks(cycling_keys(n)):
        ok += outcome.ok
    wall = time.perf_counter() - started
    done = True
    await sampler
    peak = max(peak, process.memory_info().rss)
    return {"n": n, "ok": ok, "wall": wall, "growth_mb": (peak - baseline) / 2**20}


async def memory_runs(sizes: list[int]) -> list[dict[str, float]]:
    emulator = Emulator(qps=None, record_limit=1000)
    for i in range(MEMORY_ROOMS):
        emulator.add_task("mem-app", f"room-{i}", f"task-{i}")
    async with SegmentClient(
        DEFAULT_CREDENTIALS,
        transport=emulator.transport(),
        qps=MEMORY_QPS,
        backoff=Backoff.disabled(),
    ) as client:
        await memory_run(emulator, client, 2000)  # warm up: imports, pools, caches
        return [await memory_run(emulator, client, n) for n in sizes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    args = parser.parse_args()
    n_ceiling = 120 if args.quick else 600
    n_memory = 10_000 if args.quick else 100_000

    with EmulatorProcess(tasks=n_ceiling) as server:
        server.configure(qps=CEILING_QPS, latency=LATENCY)
        ceiling = asyncio.run(ceiling_run(server.url, n_ceiling))
        served = server.stats()

    memory = asyncio.run(memory_runs([n_memory // 10, n_memory]))

    print(
        f"Fan-out at the ceiling: {n_ceiling} keys, {CEILING_QPS} QPS, "
        f"{LATENCY * 1000:.0f} ms latency, loopback server in its own process"
    )
    rows = [
        ("wall time", f"{ceiling['wall']:.2f} s"),
        ("ideal (N / qps)", f"{ceiling['ideal']:.2f} s"),
        ("utilisation", f"{ceiling['utilisation'] * 100:.1f} %"),
        ("outcomes ok", f"{ceiling['ok']:.0f} / {n_ceiling}"),
        ("throttled by the server", f"{served['throttled']}"),
        ("client retries", f"{ceiling['retries']:.0f}"),
        ("max requests in any 1 s", f"{served['max_per_second']} (ceiling {CEILING_QPS})"),
    ]
    for name, value in rows:
        print(f"  {name:<26} {value:>18}")
    print()
    print(f"Lazy fan-out memory: generator of keys, qps={MEMORY_QPS:g}, in-process emulator")
    print(f"  {'keys':>9} {'ok':>9} {'wall':>9} {'keys/s':>9} {'peak RSS growth':>16}")
    for row in memory:
        print(
            f"  {row['n']:>9.0f} {row['ok']:>9.0f} {row['wall']:>8.1f}s "
            f"{row['n'] / row['wall']:>9.0f} {row['growth_mb']:>13.1f} MB"
        )
    print(f"(cpus: {os.cpu_count()}, python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
