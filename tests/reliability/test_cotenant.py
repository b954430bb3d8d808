"""Guarantee: beside another consumer of the account, a default client takes what is left.

Issue 22's case: another consumer (not ours, paced at a fixed rate, never backing off)
uses the account's 60 QPS for the whole run while one default client fans out 600 keys.
Throttled answers are the only sign of it; the client must lose no key, cause at most 30
throttled answers in all, and finish within 25 s (at least 80 % of the 30 QPS left).

* In virtual time against the in-process emulator (20 ms answers), the other consumer a
  plain httpx client signed with ``VolcengineAuth`` at 15, 30 and 45 QPS: deterministic.
* In real time against the emulator's loopback server, with the server and the other
  consumer (30 QPS) each in a process of their own, so that a loaded machine delays
  neither the other consumer's pacing nor the server's answers behind the client's work.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rtc_segment import LocalRateLimiter, SegmentClient, TaskKey, VolcengineAuth
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator

KEYS, QPS, LATENCY = 600, 60, 0.02
# The bounds, for 600 keys beside a 30 QPS consumer; the same throttle bound is
# held at 15 and 45 QPS, and the same share of what is left.
MAX_THROTTLED = 30
LEFT_SHARE = 0.8
# The other consumer runs alone this long first: the server's window holds its traffic.
HEAD_START = 1.5


async def other_consumer(
    http: httpx.AsyncClient, qps: float, stop: asyncio.Event, throttled: list[int]
) -> None:
    """A GetSegmentTask every 1 / qps s on an absolute schedule until ``stop``; 429s counted."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    pending: set[asyncio.Task[None]] = set()

    async def one(index: int) -> None:
        params = {
            "Action": "GetSegmentTask",
            "Version": "2022-06-01",
            "AppId": "other",
            "RoomId": f"room-{index % 10}",
            "TaskId": "task",
        }
        response = await http.get("/", params=params)
        if response.status_code == 429:
            throttled.append(index)

    while not stop.is_set():
        await asyncio.sleep(max(0.0, start + sent / qps - loop.time()))
        task = asyncio.ensure_future(one(sent))
        pending.add(task)
        task.add_done_callback(pending.discard)
        sent += 1
    if pending:
        await asyncio.wait(pending)


async def fan_out_beside(
    other_qps: float, rates: list[float | None] | None = None, **client_args: Any
) -> tuple[float, int, int, int]:
    """Wall time, keys lost, our throttled answers and the other consumer's, in virtual time;
    ``client.stats.limiter_rate`` every second from the third into ``rates``, if given."""
    emulator = Emulator(qps=QPS, latency=LATENCY)
    keys = [emulator.add_task("app", f"room-{i}", "task").key for i in range(KEYS)]
    for i in range(10):
        emulator.add_task("other", f"room-{i}", "task")
    loop = asyncio.get_running_loop()
    auth = VolcengineAuth(DEFAULT_CREDENTIALS, any_host=True, clock=emulator.wall_clock)
    stop = asyncio.Event()
    theirs: list[int] = []
    async with httpx.AsyncClient(
        transport=emulator.transport(), base_url="https://rtc.volcengineapi.com", auth=auth
    ) as http:
        other = asyncio.ensure_future(other_consumer(http, other_qps, stop, theirs))
        await asyncio.sleep(HEAD_START)
        async with SegmentClient(
            DEFAULT_CREDENTIALS,
            transport=emulator.transport(),
            clock=emulator.wall_clock,
            **client_args,
        ) as client:
            start = loop.time()
            work = asyncio.ensure_future(client.gather_segment_tasks(keys))
            if rates is not None:
                await asyncio.sleep(2.0)
                while not work.done():
                    rates.append(client.stats.limiter_rate)
                    await asyncio.wait([work], timeout=1.0)
            outcomes = await work
            wall = loop.time() - start
            ours = client.stats.throttled
        stop.set()
        await other
    assert emulator.stats.throttled == ours + len(theirs)
    return wall, sum(not outcome.ok for outcome in outcomes), ours, len(theirs)


@pytest.mark.looptime
@pytest.mark.parametrize("other_qps", [15, 30, 45])
async def test_a_default_client_takes_what_another_consumer_leaves(other_qps: float) -> None:
    wall, lost, ours, theirs = await fan_out_beside(other_qps)
    assert lost == 0
    assert ours + theirs <= MAX_THROTTLED
    assert KEYS / wall >= LEFT_SHARE * (QPS - other_qps)
    if other_qps == 30:
        assert wall <= 25.0


@pytest.mark.looptime
async def test_the_operator_is_told_once_and_sees_the_rate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rates: list[float | None] = []
    with caplog.at_level(logging.WARNING, logger="rtc_segment"):
        await fan_out_beside(30, rates=rates)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "another consumer of the account" in message
    assert "other hosts without a shared limiter" in message
    # client.stats shows the lowered rate while the other consumer takes its half.
    known = [rate for rate in rates if rate is not None]
    assert known and max(known) <= 0.6 * QPS
    assert statistics.median(known) <= 0.55 * QPS


@pytest.mark.looptime
async def test_a_limiter_that_does_not_back_off_fights_the_other_consumer() -> None:
    # Guards the test above: the case really needs the backoff (0.1's fixed pace has none).
    _wall, _lost, ours, theirs = await fan_out_beside(
        30, limiter=LocalRateLimiter(QPS, utilization=0.99)
    )
    assert ours + theirs > 5 * MAX_THROTTLED


# -- real time, over the loopback server ----------------------------------------------

_PROCESSES = Path(__file__).with_name("_processes.py")


@contextlib.contextmanager
def part(*args: str) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """One of _processes.py's parts in its own process: its ready message, and (filled in
    on leaving) its final one. Stopped and reaped whatever happens."""
    process = subprocess.Popen(
        [sys.executable, str(_PROCESSES), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    final: list[dict[str, Any]] = []
    try:
        ready = json.loads(process.stdout.readline() or "{}")
        yield ready, final
        process.stdin.write("stop\n")
        process.stdin.flush()
        line = process.stdout.readline()
        if line:
            final.append(json.loads(line))
    finally:
        with contextlib.suppress(OSError):
            process.stdin.close()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def fan_out(url: str) -> tuple[float, int, int]:
    keys = [TaskKey("app", f"room-{i}", "task") for i in range(KEYS)]
    async with SegmentClient(DEFAULT_CREDENTIALS, endpoint=url) as client:
        start = time.perf_counter()
        outcomes = await client.gather_segment_tasks(keys)
        wall = time.perf_counter() - start
        return wall, sum(not outcome.ok for outcome in outcomes), client.stats.throttled


def test_beside_a_30_qps_consumer_over_the_loopback_server() -> None:
    with part("server", str(KEYS), str(QPS), str(LATENCY)) as (server, server_end):
        url = server["url"]
        with part("cotenant", url, "30") as (ready, other_end):
            assert ready == {"ready": True}
            time.sleep(HEAD_START)
            wall, lost, ours = asyncio.run(fan_out(url))
    assert other_end and server_end, "a process ended without its report"
    other, seen = other_end[0], server_end[0]
    # Shown with pytest -s: the figures the issue asks about.
    print(f"\nwall {wall:.1f} s, lost {lost}, throttled {ours} ours + {other['throttled']} theirs")
    print(f"server: {seen}; the other consumer: {other}")
    assert other["failed"] == 0
    # The server's count and the two consumers' agree (nobody else sent anything).
    assert seen["throttled"] == ours + other["throttled"]
    assert lost == 0
    # In real time, beside the rest of the suite on a loaded machine, the exact
    # figures (at most 30 throttled, within 25 s: met by 11-24 and 20-23 s when the machine
    # is quiet) are the benchmark's to measure (benchmarks/cotenant.py), and the virtual-time
    # tests above hold them deterministically. Here a client that did not back off would
    # see ~290 throttled answers: twice the bounds still tell the two apart.
    assert seen["throttled"] <= 2 * MAX_THROTTLED
    assert wall <= 30.0
