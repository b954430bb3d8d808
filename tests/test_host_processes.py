"""Real processes on one host share the default limiter: against the emulator's server.

The server is the emulator in this test's process (its own event loop, judging the 60 QPS
ceiling where requests arrive, answering after 20 ms); the workers are spawned processes,
each with a default ``SegmentClient``. The ceiling is checked at the server, exactly; the
throughput only with one-sided floors that leave room for a loaded 2-core CI machine.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from multiprocessing.context import SpawnContext, SpawnProcess
from pathlib import Path
from typing import Any

import pytest
from _workers_support import APP_ID, CREDENTIALS, fetch_keys, hold_the_lock, owner_of, room
from conftest import chosen_loop

from rtc_segment import HostRateLimiter
from rtc_segment._host import HostState, state_directory
from rtc_segment.testing import Emulator

LATENCY = 0.020
pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def spawn() -> Iterator[tuple[SpawnContext, list[SpawnProcess]]]:
    """A spawn context and the processes started with it, all killed at the end."""
    context = multiprocessing.get_context("spawn")
    started: list[SpawnProcess] = []
    try:
        yield context, started
    finally:
        for process in started:
            if process.is_alive():
                process.kill()
            process.join(10)


@pytest.fixture
def loop(request: pytest.FixtureRequest) -> str:
    """The event loop the workers run on: the one the tests run on (``--event-loop``)."""
    return chosen_loop(request.config)


def emulator_for(processes: int, keys: int) -> Emulator:
    emulator = Emulator(credentials=CREDENTIALS, qps=60, latency=LATENCY)
    for index in range(processes):
        for i in range(keys):
            emulator.add_task(APP_ID, room(index, i), "task")
    return emulator


async def collect(results: Any, count: int, workers: list[SpawnProcess]) -> list[dict[str, Any]]:
    reports = []
    deadline = time.monotonic() + 150
    while len(reports) < count:
        try:
            reports.append(await asyncio.to_thread(results.get, True, 1.0))
        except Exception:  # queue.Empty: check that nobody died
            dead = [p.exitcode for p in workers if p.exitcode not in (None, 0)]
            assert not dead, f"a worker died: exit codes {dead}"
            assert time.monotonic() < deadline, "the workers did not finish"
    return reports


@pytest.mark.parametrize(("processes", "keys"), [(4, 150), (8, 75)])
async def test_worker_processes_with_default_clients_share_the_ceiling(
    spawn: tuple[SpawnContext, list[SpawnProcess]], loop: str, processes: int, keys: int
) -> None:
    context, started = spawn
    emulator = emulator_for(processes, keys)
    start = context.Barrier(processes)
    results = context.Queue()
    async with emulator.serve(port=0) as base_url:
        for index in range(processes):
            process = context.Process(
                target=fetch_keys, args=(base_url, index, keys, start, results, loop)
            )
            process.start()
            started.append(process)
        reports = await collect(results, processes, started)
    assert sum(r["ok"] for r in reports) == processes * keys
    assert {r["scope"] for r in reports} == {"host"}
    assert {r["loop"] for r in reports} == {loop}
    stats = emulator.stats
    assert stats.throttled == 0
    assert stats.max_in_second <= 60
    arrivals = sorted(r.arrival for r in emulator.requests)
    assert (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) >= 0.90 * 60
    # Fair: each process's share of the arrivals while every process still had work.
    records = [r for r in emulator.requests if r.key is not None]
    last = {
        w: max(r.arrival for r in records if owner_of(r.key.room_id) == w) for w in range(processes)
    }  # type: ignore[union-attr]
    until = min(last.values())
    counts = [
        sum(1 for r in records if r.arrival <= until and owner_of(r.key.room_id) == w)  # type: ignore[union-attr]
        for w in range(processes)
    ]
    for count in counts:
        assert 0.6 / processes <= count / sum(counts) <= 1.4 / processes, counts


async def test_a_worker_killed_mid_run_costs_the_others_nothing(
    spawn: tuple[SpawnContext, list[SpawnProcess]], loop: str
) -> None:
    context, started = spawn
    processes, keys = 3, 600  # more than the run lasts: every worker is busy throughout
    emulator = emulator_for(processes, keys)
    start = context.Barrier(processes)
    results = context.Queue()
    async with emulator.serve(port=0) as base_url:
        for index in range(processes):
            process = context.Process(
                target=fetch_keys, args=(base_url, index, keys, start, results, loop)
            )
            process.start()
            started.append(process)
        while len(emulator.requests) < 120:  # two seconds of traffic at the ceiling
            assert all(p.exitcode is None for p in started), "a worker died early"
            await asyncio.sleep(0.05)
        victim = started[0]
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)  # most likely waiting for its slot in acquire
        await asyncio.to_thread(victim.join, 10)
        killed_at = emulator.clock()  # the clock the arrivals are on
        while emulator.clock() < killed_at + 4.0:  # noqa: ASYNC110 - the traffic goes on meanwhile
            await asyncio.sleep(0.05)
        for process in started[1:]:
            process.kill()
    stats = emulator.stats
    assert stats.throttled == 0
    assert stats.max_in_second <= 60
    # Within a second of the kill the two others go on at the ceiling between them.
    after = [
        r.arrival for r in emulator.requests if killed_at + 1.0 <= r.arrival <= killed_at + 4.0
    ]
    assert len(after) >= 0.85 * 60 * 3.0
    survivors = {
        owner_of(r.key.room_id) for r in emulator.requests if r.key and r.arrival > killed_at + 1.0
    }
    assert survivors == {1, 2}


async def test_a_process_killed_holding_the_lock_leaves_nothing_locked(
    spawn: tuple[SpawnContext, list[SpawnProcess]], tmp_path: Path
) -> None:
    context, started = spawn
    key = "0123456789abcdef-GetSegmentTask"
    path = state_directory(tmp_path) / f"{key}-60.0.v1"
    HostState(path, 60.0, clock=time.monotonic, rebuild_window=1.5).close()
    locked = context.Event()
    holder = context.Process(target=hold_the_lock, args=(str(path), 60.0, locked))
    holder.start()
    started.append(holder)
    assert await asyncio.to_thread(locked.wait, 60)
    assert holder.pid is not None
    os.kill(holder.pid, signal.SIGKILL)
    await asyncio.to_thread(holder.join, 10)
    limiter = HostRateLimiter(key, directory=tmp_path)
    began = time.monotonic()
    await limiter.acquire()  # would block forever on a lock left behind
    assert time.monotonic() - began < 1.0
