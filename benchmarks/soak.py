"""A long watch at the ceiling: does any second of arrivals ever hold more than 60?

Run: ``python benchmarks/soak.py --minutes 10`` (the issue's soak; not part of CI), with
``--busy 2`` to run two CPU-bound processes beside it. ``--minutes`` may be a fraction.
Needs the ``emulator`` extra (uvicorn).

One default client (``SegmentClient(credentials, endpoint=url)``) watches 2,000 tasks
that never change, polling each every 5 s: 400 polls a second wanted, so the limiter
sends at the ceiling for the whole run (~35,700 requests in 10 minutes). The emulator's
loopback server runs in its own process (60 QPS judged where requests arrive, 50 ms
answers), at a higher priority than the client and the hogs when permitted (niceness
-10): on a starved 2-core machine a server at normal priority stamps arrivals late and in
bunches (in one run beside 2 hogs and four other busy processes it counted 73 in a second
while the client's sends never put more than 60 in one), which measures the machine, not
the client.

Both ends are recorded, on the machine's one monotonic clock (``time.monotonic``):

* the client's: when the limiter let each request go (the default limiter, a
  ``HostRateLimiter`` of the account at 60 QPS as ``SegmentClient()`` makes it, subclassed
  to note it; ``--limiter local`` runs the process-only ``LocalRateLimiter(60)`` instead),
  and when it was handed to httpx's transport (after signing);
* the server's arrival stamps: when the emulator counted each request, after uvicorn
  parsed it.

A second holding more than 60 at the server but at most 60 at the client is the server's
own late time-stamping (or the path), not the client's sends; a second over 60 at the
client is ours. The table gives, for each end, the most in any sliding second, the
seconds that held more than 60, and the delay from send to arrival (p50, p99, max; the
n-th send matched to the n-th arrival, which holds while requests do not overtake).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import contextvars
import multiprocessing
import os
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import describe_machine, percentile, print_table

from rtc_segment import HostRateLimiter, LocalRateLimiter, SegmentClient, TaskKey
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator, max_in_window

QPS = 60
LATENCY = 0.05
TASKS = 2000
POLL_INTERVAL = 5.0


#: The server process's niceness: above the client and the hogs (when permitted), so that
#: what it counts is when requests arrived, not when a starved server got the CPU. The
#: service it stands for runs on other machines, which our busy host cannot slow down.
SERVER_NICENESS = -10


def _serve(conn: Connection, tasks: int) -> None:
    """The server process: answers until told to stop, then sends the arrival stamps."""
    with contextlib.suppress(OSError):  # not permitted: it stays at the normal priority
        os.setpriority(os.PRIO_PROCESS, 0, SERVER_NICENESS)
    niceness = os.getpriority(os.PRIO_PROCESS, 0)

    async def main() -> None:
        emulator = Emulator(qps=QPS, latency=LATENCY, record_limit=None)
        for i in range(tasks):
            emulator.add_task("soak", f"room-{i}", "task")
        loop = asyncio.get_running_loop()
        async with emulator.serve(port=0) as url:
            conn.send((url, niceness))
            await loop.run_in_executor(None, conn.recv)
            # The emulator's clock follows this loop's time; its offset to time.monotonic
            # now is its offset for the whole run (one loop, never re-based).
            offset = time.monotonic() - emulator.clock()
            conn.send(
                {
                    "arrivals": [record.arrival + offset for record in emulator.requests],
                    "throttled": emulator.throttled_count,
                }
            )

    asyncio.run(main())


def _burn(seconds: float) -> None:
    """A CPU-bound process: the busy machine."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sum(i * i for i in range(10_000))


# When the limiter let the current request go (set in the task that sends it; an
# exchange task started for it copies the context).
_GO: contextvars.ContextVar[float] = contextvars.ContextVar("go")


def _stamp_go(gone: array.array[float]) -> None:
    """Note that the limiter let a request go now: in ``gone``, and for its exchange."""
    now = time.monotonic()
    gone.append(now)
    _GO.set(now)


class StampingLocalLimiter(LocalRateLimiter):
    """The process-only limiter (``LocalRateLimiter(60)``), noting when it lets each request go."""

    def __init__(self) -> None:
        super().__init__(QPS)
        self.gone = array.array("d")  # compact: the memory figure is the client's

    async def acquire(self) -> None:
        await super().acquire()
        _stamp_go(self.gone)


class StampingHostLimiter(HostRateLimiter):
    """The default limiter (the host-wide one ``SegmentClient()`` makes for the account and
    action at 60 QPS, in a private directory), noting when it lets each request go."""

    def __init__(self, directory: str) -> None:
        super().__init__(f"soak-{os.getpid()}-GetSegmentTask", QPS, directory=directory)
        self.gone = array.array("d")  # compact: the memory figure is the client's

    async def acquire(self) -> None:
        await super().acquire()
        _stamp_go(self.gone)


class StampingTransport(httpx.AsyncHTTPTransport):
    """httpx's transport, noting when each request is handed to it (and how long after
    the limiter let it go)."""

    def __init__(self) -> None:
        super().__init__()
        # Compact arrays, so the client's memory figure is not the stamps': when each
        # request was handed over, and how long after its go (matched by index).
        self.sent = array.array("d")
        self.late_at = array.array("d")
        self.late_by = array.array("d")

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        now = time.monotonic()
        self.sent.append(now)
        go = _GO.get(None)
        if go is not None:
            self.late_at.append(now)
            self.late_by.append(now - go)
        return await super().handle_async_request(request)


def _rss_mib() -> float:
    """This process's resident memory now, in MiB (Linux; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


async def _sample_memory(into: list[float]) -> None:
    """Note the client process's resident memory every 10 s, to show whether it grows."""
    while True:
        into.append(_rss_mib())
        await asyncio.sleep(10)


async def watch(url: str, seconds: float, kind: str) -> tuple[list[float], dict[str, Any]]:
    transport = StampingTransport()
    rss: list[float] = []
    scratch = tempfile.TemporaryDirectory(prefix="soak-")
    limiter: StampingHostLimiter | StampingLocalLimiter = (
        StampingHostLimiter(scratch.name) if kind == "host" else StampingLocalLimiter()
    )
    keys = [TaskKey("soak", f"room-{i}", "task") for i in range(TASKS)]
    async with SegmentClient(
        DEFAULT_CREDENTIALS, endpoint=url, transport=transport, limiter=limiter
    ) as client:
        sampler = asyncio.create_task(_sample_memory(rss))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                async with client.watch_segment_tasks(keys, poll_interval=POLL_INTERVAL) as tasks:
                    async for _event in tasks:
                        pass
        stats = client.stats
    sampler.cancel()
    scratch.cleanup()
    return list(transport.sent), {
        "throttled": stats.throttled,
        "errors": dict(stats.errors),
        "gone": list(limiter.gone),
        "late": list(zip(transport.late_at, transport.late_by, strict=True)),
        "rss": rss,
    }


def over(stamps: list[float], limit: int = QPS) -> int:
    """How many sends start a sliding second (from that send on) holding more than ``limit``."""
    ordered = sorted(stamps)
    return sum(
        1
        for i in range(len(ordered) - limit)
        if ordered[i + limit] - ordered[i] < 1.0  # limit + 1 within one second
    )


def main(argv: list[str] | None = None) -> int:
    """Run the soak and print what both ends saw."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    parser.add_argument("--busy", type=int, default=0, help="CPU-bound processes beside it")
    parser.add_argument(
        "--limiter",
        choices=("host", "local"),
        default="host",
        help="the default host-wide limiter (default) or the process-only LocalRateLimiter",
    )
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.busy < 0:
        parser.error("--minutes must be positive and --busy not negative")
    seconds = args.minutes * 60
    context = multiprocessing.get_context("spawn")
    conn, child = context.Pipe()
    server = context.Process(target=_serve, args=(child, TASKS), daemon=True)
    server.start()
    burners = [
        context.Process(target=_burn, args=(seconds + 30,), daemon=True) for _ in range(args.busy)
    ]
    try:
        if not conn.poll(60):
            raise RuntimeError("the server process did not start")
        url, server_niceness = conn.recv()
        for burner in burners:
            burner.start()
        load_before = os.getloadavg()
        sent, client = asyncio.run(watch(url, seconds, args.limiter))
        conn.send("stop")
        seen = conn.recv()
    finally:
        for process in (*burners, server):
            if process.is_alive():
                process.kill()
            process.join(10)
    arrivals: list[float] = seen["arrivals"]
    delays = [b - a for a, b in zip(sorted(sent), sorted(arrivals), strict=False)]
    gone: list[float] = client["gone"]
    rows = [
        (
            "client: the limiter's go",
            str(len(gone)),
            str(max_in_window(gone, 1.0)),
            str(over(gone)),
            "",
        ),
        (
            "client: handed to httpx",
            str(len(sent)),
            str(max_in_window(sent, 1.0)),
            str(over(sent)),
            "",
        ),
        (
            "server: counted by the emulator",
            str(len(arrivals)),
            str(max_in_window(arrivals, 1.0)),
            str(over(arrivals)),
            f"{seen['throttled']}",
        ),
    ]
    print(
        f"Soak: {args.minutes:g} min watching {TASKS} tasks at {QPS} QPS, "
        f"limiter={args.limiter}, busy={args.busy}"
    )
    print(describe_machine())
    print(f"load average at the start: {' '.join(f'{v:.2f}' for v in load_before)}")
    print(
        f"server process niceness {server_niceness} (client and hogs at "
        f"{os.getpriority(os.PRIO_PROCESS, 0)})"
    )
    print()
    print_table(("end", "requests", "max/s", "sends opening a second > 60", "throttled"), rows)
    if delays:
        print(
            f"\nsend -> arrival (n-th to n-th): p50 {percentile(delays, 0.5) * 1000:.2f} ms, "
            f"p99 {percentile(delays, 0.99) * 1000:.2f} ms, max {max(delays) * 1000:.2f} ms"
        )
    late = [seconds for _at, seconds in client["late"]]
    if late:
        print(
            f"go -> handed to httpx: p50 {percentile(late, 0.5) * 1000:.2f} ms, "
            f"p99 {percentile(late, 0.99) * 1000:.2f} ms, max {max(late) * 1000:.2f} ms"
        )
    # Every second over the ceiling at the client: how late its requests were handed over.
    ordered = sorted(client["late"])
    stamps = [at for at, _seconds in ordered]
    for i in range(len(stamps) - QPS):
        if stamps[i + QPS] - stamps[i] < 1.0:
            lates = [seconds * 1000 for _at, seconds in ordered[i : i + QPS + 1]]
            print(
                f"61 handed over in {stamps[i + QPS] - stamps[i]:.4f} s: first handed "
                f"{lates[0]:.1f} ms after its go, last {lates[-1]:.1f} ms; most late "
                f"{max(lates):.1f} ms"
            )
    rss = client["rss"]
    if rss:
        print(
            f"client memory (RSS, every 10 s): first {rss[0]:.0f} MiB, after 1 min "
            f"{rss[min(6, len(rss) - 1)]:.0f} MiB, last {rss[-1]:.0f} MiB, most {max(rss):.0f} MiB"
        )
    print(f"client errors: {client['errors'] or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
