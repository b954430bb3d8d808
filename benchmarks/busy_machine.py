"""The ceiling on a busy machine: the demo's fan-out while other processes hog the CPUs.

Each run polls ``--keys`` tasks at 60 QPS through the emulator's loopback server in this
process (as ``rtc-segment demo`` does), with the default client and limiter, while
``--hogs`` busy processes compete for the cores. A busy machine deschedules this process
for whole time slices at moments the limiter cannot choose; the limiter must still keep
every sliding second at or under 60 arrivals. Printed per number of hogs: runs with any
throttled request, the most arrivals in one second over all runs, the median wall time
over the ideal (keys / 60), and the median of each run's worst event-loop lag.

    python benchmarks/busy_machine.py                  # 20 runs each of 600 keys, 0 and 2 hogs
    python benchmarks/busy_machine.py --runs 40 --hogs 2 3
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import LagProbe, describe_machine, median, print_table

from rtc_segment import SegmentClient
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator

QPS = 60.0


def hog() -> None:
    """Keep one core busy, allocating as a real neighbour would (and as Python's GC sees)."""
    while True:
        garbage = [list(range(1000)) for _ in range(3000)]
        del garbage


async def one_run(keys: int, seed: int) -> tuple[int, int, float, float]:
    """Throttled count, most arrivals in one second, wall seconds, worst loop lag."""
    emulator = Emulator(qps=QPS, seed=seed)
    seeded = emulator.seed_rooms(keys)
    async with (
        emulator.serve(port=0) as base_url,
        LagProbe(0.001) as probe,
        SegmentClient(DEFAULT_CREDENTIALS, endpoint=base_url, qps=QPS) as client,
    ):
        started = time.perf_counter()
        outcomes = [outcome async for outcome in client.get_segment_tasks(seeded)]
        wall = time.perf_counter() - started
    if len(outcomes) != keys or not all(outcome.ok for outcome in outcomes):
        raise SystemExit(f"a run lost or failed keys: {len(outcomes)} outcomes of {keys}")
    return emulator.throttled_count, emulator.max_in_window(1.0), wall, max(probe.lags)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a CI smoke run")
    parser.add_argument("--runs", type=int, default=20, help="runs per number of hogs (20)")
    parser.add_argument("--keys", type=int, default=600, help="keys per run (600)")
    parser.add_argument(
        "--hogs", type=int, nargs="+", default=[0, 2], help="busy processes (0 and 2)"
    )
    args = parser.parse_args(argv)
    runs, keys, hog_counts = (1, 90, [0, 1]) if args.quick else (args.runs, args.keys, args.hogs)
    print(describe_machine())
    print(f"{runs} runs of {keys} keys at {QPS:g} QPS, in-process loopback emulator\n")
    context = multiprocessing.get_context("spawn")
    rows = []
    for hogs in hog_counts:
        processes = [context.Process(target=hog, daemon=True) for _ in range(hogs)]
        for process in processes:
            process.start()
        try:
            results = [asyncio.run(one_run(keys, seed)) for seed in range(runs)]
        finally:
            for process in processes:
                process.terminate()
                process.join()
        throttled_runs = sum(1 for throttled, *_ in results if throttled)
        rows.append(
            (
                str(hogs),
                f"{throttled_runs} of {runs}",
                str(max(most for _, most, _, _ in results)),
                f"{median([wall for _, _, wall, _ in results]) / (keys / QPS):.3f}x",
                f"{median([lag for *_, lag in results]) * 1000:.1f} ms",
            )
        )
    print_table(
        ("hogs", "runs throttled", "most in 1 s", "wall / ideal (median)", "worst lag (median)"),
        rows,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
