"""HostRateLimiter: several "processes" (instances on one state file) in virtual time.

Each instance stands for one process: its own mapping of the file, its own margin and
turn, its own owner id. The clock they share is the loop's virtual one (``_clock``), so
the bound, the catch-up and the shares are checked exactly, without real time. Real
processes: tests/test_host_processes.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from pathlib import Path

import pytest

from rtc_segment import Credentials, HostRateLimiter, SegmentClient
from rtc_segment._backoff import KEEP, PLATEAU
from rtc_segment._host import HostState, state_directory
from rtc_segment._host_limiter import MAX_HOST_QPS
from rtc_segment.testing import DEFAULT_CREDENTIALS, Emulator, max_in_window

LATENCY = 0.020


def limiters(directory: Path, count: int, qps: float = 60.0) -> list[HostRateLimiter]:
    clock = asyncio.get_running_loop().time
    return [
        HostRateLimiter("0123456789abcdef-GetSegmentTask", qps, directory=directory, _clock=clock)
        for _ in range(count)
    ]


async def drive(
    limiter: HostRateLimiter,
    sends: int,
    arrivals: list[tuple[float, int]],
    who: int,
    *,
    jitter: float,
    rng: random.Random,
    callers: int = 8,
) -> None:
    """``sends`` requests through ``limiter`` by ``callers`` concurrent callers; each arrives
    after a forward delay in [0, jitter] and is answered LATENCY later, fed back."""
    loop = asyncio.get_running_loop()
    left = [sends]

    async def caller() -> None:
        while left[0] > 0:
            left[0] -= 1
            await limiter.acquire()
            went = loop.time()
            forward = rng.uniform(0.0, jitter)
            arrivals.append((went + forward, who))
            await asyncio.sleep(forward + LATENCY)
            limiter.observe_round_trip(loop.time() - went)

    await asyncio.gather(*(caller() for _ in range(callers)))


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path


@pytest.mark.looptime
@pytest.mark.parametrize("jitter", [0.0, 0.020])
@pytest.mark.parametrize("processes", [1, 4, 8])
async def test_processes_share_the_ceiling_fairly_and_fully(
    directory: Path, processes: int, jitter: float
) -> None:
    rng = random.Random(processes * 100 + int(jitter * 1000))
    arrivals: list[tuple[float, int]] = []
    await asyncio.gather(
        *(
            drive(limiter, 150, arrivals, who, jitter=jitter, rng=rng)
            for who, limiter in enumerate(limiters(directory, processes))
        )
    )
    times = sorted(at for at, _ in arrivals)
    assert len(times) == 150 * processes
    assert max_in_window(times) <= 60
    assert (len(times) - 1) / (times[-1] - times[0]) >= 0.97 * 60
    # Shares while every process still had work: each gets about 1 / processes.
    until = min(max(at for at, who in arrivals if who == w) for w in range(processes))
    counts = [sum(1 for at, who in arrivals if who == w and at <= until) for w in range(processes)]
    for count in counts:
        assert abs(count / sum(counts) - 1 / processes) <= 0.05 / processes * 4


@pytest.mark.looptime
async def test_a_process_with_more_callers_gets_no_more_than_its_share(directory: Path) -> None:
    # One reservation per process at a time: 32 waiting callers do not outrank 2.
    crowded, lean = limiters(directory, 2)
    arrivals: list[tuple[float, int]] = []
    rng = random.Random(5)
    await asyncio.gather(
        drive(crowded, 300, arrivals, 0, jitter=0.0, rng=rng, callers=32),
        drive(lean, 300, arrivals, 1, jitter=0.0, rng=rng, callers=2),
    )
    until = min(max(at for at, who in arrivals if who == w) for w in (0, 1))
    lean_share = sum(1 for at, who in arrivals if who == 1 and at <= until) / sum(
        1 for at, _ in arrivals if at <= until
    )
    assert 0.45 <= lean_share <= 0.55


@pytest.mark.looptime
async def test_an_idle_process_does_not_slow_a_busy_one(directory: Path) -> None:
    busy, idle = limiters(directory, 2)
    arrivals: list[tuple[float, int]] = []
    await idle.acquire()  # it exists, sent once, and has nothing more to do
    await asyncio.sleep(5)
    await drive(busy, 300, arrivals, 0, jitter=0.0, rng=random.Random(1))
    times = sorted(at for at, _ in arrivals)
    assert max_in_window(times) <= 60
    assert (len(times) - 1) / (times[-1] - times[0]) >= 0.98 * 60


@pytest.mark.looptime
async def test_the_bound_holds_across_a_process_joining_and_leaving(directory: Path) -> None:
    first, second, third = limiters(directory, 3)
    arrivals: list[tuple[float, int]] = []
    rng = random.Random(7)

    async def late(limiter: HostRateLimiter, delay: float, who: int) -> None:
        await asyncio.sleep(delay)
        await drive(limiter, 60, arrivals, who, jitter=0.01, rng=rng)

    await asyncio.gather(
        drive(first, 300, arrivals, 0, jitter=0.01, rng=rng),
        late(second, 1.3, 1),
        late(third, 2.7, 2),
    )
    assert max_in_window(sorted(at for at, _ in arrivals)) <= 60


@pytest.mark.looptime
async def test_a_stalled_process_catches_up_without_a_burst_over_the_ceiling(
    directory: Path,
) -> None:
    (limiter,) = limiters(directory, 1)
    loop = asyncio.get_running_loop()
    times: list[float] = []
    for _ in range(120):
        await limiter.acquire()
        times.append(loop.time())
    stall_ends = loop.time() + 0.05
    await asyncio.sleep(0.05)  # three intervals late: made up for by sending at once
    for _ in range(120):
        await limiter.acquire()
        times.append(loop.time())
    after = [t for t in times if t >= stall_ends]
    assert sum(1 for a, b in itertools.pairwise(after) if b - a < 1e-6) >= 2
    assert max_in_window(times) <= 60


@pytest.mark.looptime
async def test_a_cancelled_waiter_gives_its_slot_back(directory: Path) -> None:
    (limiter,) = limiters(directory, 1)
    loop = asyncio.get_running_loop()
    for _ in range(10):  # busy: the next slot lies ahead
        await limiter.acquire()
    waiter = asyncio.ensure_future(limiter.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    before = loop.time()
    await limiter.acquire()
    # It goes at the cancelled waiter's slot, not one interval after it.
    assert loop.time() - before <= 1.5 / limiter.rate


@pytest.mark.looptime
async def test_the_rate_cap_paces_every_process(directory: Path) -> None:
    first, second = limiters(directory, 2)
    assert first.rate_cap is None
    first.set_rate_cap(30.0)
    assert second.rate_cap == 30.0
    arrivals: list[tuple[float, int]] = []
    rng = random.Random(3)
    await asyncio.gather(
        drive(first, 90, arrivals, 0, jitter=0.0, rng=rng),
        drive(second, 90, arrivals, 1, jitter=0.0, rng=rng),
    )
    times = sorted(at for at, _ in arrivals)
    assert (len(times) - 1) / (times[-1] - times[0]) <= 30.0 * 1.01
    assert first.rate <= 30.0
    first.set_rate_cap(None)
    assert second.rate_cap is None
    with pytest.raises(ValueError, match="rate"):
        first.set_rate_cap(0)


@pytest.mark.looptime
async def test_a_throttle_widens_the_margin_and_slows_the_rate(directory: Path) -> None:
    (limiter,) = limiters(directory, 1)
    await limiter.acquire()
    before = limiter.rate
    limiter.observe_throttle()
    await limiter.acquire()
    assert limiter.rate < before


@pytest.mark.looptime
async def test_a_fixed_utilization_paces_at_that_rate(directory: Path) -> None:
    limiter = HostRateLimiter(
        "fixed", 60, utilization=0.5, directory=directory, _clock=asyncio.get_running_loop().time
    )
    assert not limiter.adaptive
    arrivals: list[tuple[float, int]] = []
    await drive(limiter, 60, arrivals, 0, jitter=0.0, rng=random.Random(2))
    times = sorted(at for at, _ in arrivals)
    assert (len(times) - 1) / (times[-1] - times[0]) == pytest.approx(30.0, rel=0.02)


@pytest.mark.looptime
async def test_a_virtual_clock_loop_is_paced_on_its_own(directory: Path) -> None:
    # No clock given: looptime's clock is not the host's, so the loop keeps its own state.
    limiter = HostRateLimiter("virtual", 60, directory=directory)
    loop = asyncio.get_running_loop()
    times = []
    for _ in range(150):
        await limiter.acquire()
        times.append(loop.time())
    assert max_in_window(times) <= 60
    assert (len(times) - 1) / (times[-1] - times[0]) >= 0.97 * 60
    shared = HostState(
        state_directory(directory) / "virtual-60.0.v1", 60.0, clock=time.monotonic, rebuild_window=1
    )
    with shared.transaction() as log:
        assert len(log) == 0  # nothing written to the host's schedule


def test_the_key_is_checked() -> None:
    with pytest.raises(ValueError, match="key must be"):
        HostRateLimiter("../etc/passwd")
    with pytest.raises(ValueError, match="key must be"):
        HostRateLimiter("")
    with pytest.raises(ValueError, match="utilization"):
        HostRateLimiter("ok", utilization=1.0)


def test_key_for_names_the_account_without_its_secret(directory: Path) -> None:
    credentials = Credentials("AKLTkeyid", "very-secret-key")
    key = HostRateLimiter.key_for(credentials)
    assert key.endswith("-GetSegmentTask") and len(key) == 16 + len("-GetSegmentTask")
    assert "AKLT" not in key
    limiter = HostRateLimiter(key, directory=directory)
    other = limiter.for_action("StartSegment", 10.0)
    assert other.key == key.replace("GetSegmentTask", "StartSegment")
    assert other.qps == 10.0
    assert HostRateLimiter("custom", directory=directory).for_action("Stop", 5).key == (
        "custom-Stop"
    )
    assert "secret" not in repr(limiter)
    assert sorted(p.name for p in state_directory(directory).iterdir()) == sorted(
        [f"{key}-60.0.v1", f"{other.key}-10.0.v1", "custom-60.0.v1", "custom-Stop-5.0.v1"]
    )


def test_an_unusable_directory_raises_os_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match="cannot create"):
        HostRateLimiter("key", directory=blocker)


# -- backing off when someone the host cannot see uses the quota (_backoff) -------------


async def pace_for(limiter: HostRateLimiter, seconds: float, times: list[float]) -> None:
    """Acquire back to back for ``seconds``, noting the send times."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        await limiter.acquire()
        times.append(loop.time())


@pytest.mark.looptime
async def test_a_lone_throttle_at_full_pace_only_widens_the_margin(directory: Path) -> None:
    (limiter,) = limiters(directory, 1)
    times: list[float] = []
    await pace_for(limiter, 2.0, times)
    full = limiter.rate
    limiter.observe_round_trip(LATENCY)
    limiter.observe_throttle()
    await pace_for(limiter, 0.2, times)
    assert 0.98 * full < limiter.rate < full


@pytest.mark.looptime
async def test_throttles_below_the_ceiling_back_off_every_process_in_every_second(
    directory: Path,
) -> None:
    # Two processes send half a second at the host's full pace: about 30 sends, well below
    # the ceiling, then both are throttled -- someone else uses the quota. The server's
    # window still holds those 30: the host's next sends must fit beside them, at the
    # lowered rate, climbing towards its plateau below the throttled one.
    first, second = limiters(directory, 2)
    times: list[float] = []
    await asyncio.gather(pace_for(first, 0.5, times), pace_for(second, 0.5, times))
    before = len(times)
    for limiter in (first, second):
        limiter.observe_throttle()
    assert first.rate <= KEEP * before + 1e-6
    cut_at = asyncio.get_running_loop().time()
    await asyncio.gather(pace_for(first, 2.0, times), pace_for(second, 2.0, times))
    after = [t for t in sorted(times) if cut_at < t <= cut_at + 1.5]
    assert after and after[0] - cut_at >= 0.3
    for t in after:
        assert sum(1 for s in times if t - 1.0 < s <= t) <= PLATEAU * before
    # And it climbs back: the rate is above the cut's within seconds.
    await asyncio.gather(pace_for(first, 6.0, times), pace_for(second, 6.0, times))
    assert first.rate > KEEP * before


def test_a_ceiling_above_what_the_shared_state_holds_is_refused(directory: Path) -> None:
    HostRateLimiter("k", MAX_HOST_QPS, directory=directory)  # the most it takes
    with pytest.raises(ValueError, match=r"at most 1000 .* LocalRateLimiter"):
        HostRateLimiter("k", MAX_HOST_QPS * 1.001, directory=directory)


@pytest.mark.looptime
@pytest.mark.parametrize("processes", [2, 4])
async def test_single_calls_go_ahead_of_every_process_s_fan_out(
    directory: Path, processes: int
) -> None:
    # Every "process" fans out 300 keys through its own client; one of them also makes
    # single calls. Each process has one bulk request at a time at the limiter (its bulk
    # gate) and one reservation at a time on the shared schedule, where the processes'
    # reservations take turns. So a single call waits for at most two turns of the
    # processes -- its own process's bulk request's, then its own -- about `2 x processes`
    # intervals, not behind the queue of 300 x processes (seconds).
    emulator = Emulator(qps=60, latency=0.05)
    loop = asyncio.get_running_loop()
    keys = [
        [emulator.add_task("app", f"room{who}-{i}", "task").key for i in range(300)]
        for who in range(processes)
    ]
    single = emulator.add_task("app", "single", "task").key
    clients = [
        SegmentClient(
            DEFAULT_CREDENTIALS,
            transport=emulator.transport(),
            clock=emulator.wall_clock,
            limiter=limiter,
        )
        for limiter in limiters(directory, processes)
    ]
    async with contextlib.AsyncExitStack() as stack:
        for client in clients:
            await stack.enter_async_context(client)
        fan_outs = [
            asyncio.create_task(client.gather_segment_tasks(part))
            for client, part in zip(clients, keys, strict=True)
        ]
        latencies = []
        for _ in range(10):
            await asyncio.sleep(0.5)
            sent = loop.time()
            await clients[0].get_segment_task(*single)
            latencies.append(loop.time() - sent)
        outcomes = [outcome for done in await asyncio.gather(*fan_outs) for outcome in done]
    assert all(outcome.ok for outcome in outcomes)
    interval = 1 / 60
    assert max(latencies) <= 0.05 + (2 * processes + 1) * interval, latencies
    assert emulator.stats.throttled == 0
    assert emulator.max_in_window(1.0) <= 60
